//! Layer normalisation over one row (biased variance, two passes, as PyTorch computes it).

use super::{map_vectors, sum_by};
use crate::simd::Simd;

#[inline(always)]
pub fn layernorm<S: Simd>(s: S, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    let mean = sum_by!(s, x, |v| v, |v| v) / n as f32;
    let mv = s.splat(mean);
    let var = sum_by!(
        s,
        x,
        |v| {
            let d = s.sub(v, mv);
            s.mul(d, d)
        },
        |v| (v - mean) * (v - mean),
    ) / n as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    out.copy_from_slice(x);
    let rv = s.splat(rstd);
    // Normalise in place, then apply the affine part with gamma/beta loaded at the same offsets.
    map_vectors!(s, out, |v| s.mul(s.sub(v, mv), rv));
    let l = S::LANES;
    let nv = n / l * l;
    let mut i = 0;
    while i < nv {
        let v = s.fma(s.load(&out[i..]), s.load(&gamma[i..]), s.load(&beta[i..]));
        s.store(&mut out[i..], v);
        i += l;
    }
    for j in nv..n {
        out[j] = s.fma1(out[j], gamma[j], beta[j]);
    }
}
