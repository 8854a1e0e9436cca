//! Causal attention of one query head over K/V held in fixed-size blocks (the paged KV cache).
//!
//! Two passes over the keys: scores and their max, then `exp` and the weighted sum of values.
//! The scores scratch buffer is the caller's, so the hot loop allocates nothing.

use super::{dot, map_vectors, sum_by, Elem};
use crate::simd::Simd;
use crate::Attention;

#[inline(always)]
pub fn attend<S: Simd, E: Elem>(s: S, a: &Attention<E>, out: &mut [f32], scores: &mut [f32]) {
    let hd = a.head_dim;
    let scores = &mut scores[..a.len];
    let mut max = f32::NEG_INFINITY;
    for (t, sc) in scores.iter_mut().enumerate() {
        let k = a.k.row(t, a.head_offset, hd);
        *sc = dot(s, a.q, k) * a.scale;
        max = max.max(*sc);
    }
    let maxv = s.splat(max);
    map_vectors!(s, scores, |v| s.exp(s.sub(v, maxv)));
    let sum = sum_by!(s, scores, |v| v, |v| v);
    let out = &mut out[..hd];
    out.fill(0.0);
    let l = S::LANES;
    let hv = hd / l * l;
    for (t, &p) in scores.iter().enumerate() {
        let v = a.v.row(t, a.head_offset, hd);
        let pv = s.splat(p);
        let mut i = 0;
        while i < hv {
            let o = s.fma(pv, E::load(s, &v[i..]), s.load(&out[i..]));
            s.store(&mut out[i..], o);
            i += l;
        }
        for j in hv..hd {
            out[j] = s.fma1(p, v[j].to_f32(), out[j]);
        }
    }
    let inv = s.splat(1.0 / sum);
    map_vectors!(s, out, |v| s.mul(v, inv));
}
