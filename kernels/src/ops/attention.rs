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
    for (t, &p) in scores.iter().enumerate() {
        axpy(s, p, a.v.row(t, a.head_offset, hd), out);
    }
    let inv = s.splat(1.0 / sum);
    map_vectors!(s, out, |v| s.mul(v, inv));
}

/// `heads` consecutive query heads (starting at `a.head_offset`) over the same positions, each
/// exactly as [`attend`] computes it (same operations in the same order, so the same bits), but
/// reading each cached K and V row once for all the heads: one contiguous `heads * head_dim`
/// run per token instead of `heads` short strided ones. `scores` holds `heads * len` floats.
#[inline(always)]
pub fn attend_heads<S: Simd, E: Elem>(s: S, a: &Attention<E>, heads: usize, out: &mut [f32], scores: &mut [f32]) {
    let (hd, len) = (a.head_dim, a.len);
    let width = heads * hd;
    let scores = &mut scores[..heads * len];
    // GPT-2's heads are 64 wide: 4 AVX-512 or 8 AVX2 vectors, so a group of heads keeps its
    // queries (scores pass) or its output sums (values pass) in registers. Other widths, and
    // the heads past the last whole group, take the plain loops (same arithmetic either way).
    let grouped = match (hd % S::LANES, hd / S::LANES) {
        (0, 4) => group_scores::<S, E, 4, 6>(s, a, heads, scores),
        (0, 8) => group_scores::<S, E, 8, 3>(s, a, heads, scores),
        _ => 0,
    };
    if grouped < heads {
        for t in 0..len {
            let k = a.k.row(t, a.head_offset, width);
            for h in grouped..heads {
                scores[h * len + t] = dot(s, &a.q[h * hd..][..hd], &k[h * hd..][..hd]) * a.scale;
            }
        }
    }
    let mut sums = [0.0f32; MAX_HEADS];
    for (h, sc) in scores.chunks_exact_mut(len).enumerate() {
        let max = sc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let maxv = s.splat(max);
        map_vectors!(s, sc, |v| s.exp(s.sub(v, maxv)));
        sums[h] = sum_by!(s, sc, |v| v, |v| v);
    }
    let out = &mut out[..width];
    let grouped = match (hd % S::LANES, hd / S::LANES) {
        (0, 4) => weighted_values::<S, E, 4, 6>(s, a, heads, scores, out),
        (0, 8) => weighted_values::<S, E, 8, 3>(s, a, heads, scores, out),
        _ => 0,
    };
    out[grouped * hd..].fill(0.0);
    if grouped < heads {
        for t in 0..len {
            let v = a.v.row(t, a.head_offset, width);
            for h in grouped..heads {
                axpy(s, scores[h * len + t], &v[h * hd..][..hd], &mut out[h * hd..][..hd]);
            }
        }
    }
    for (h, o) in out.chunks_exact_mut(hd).enumerate() {
        let inv = s.splat(1.0 / sums[h]);
        map_vectors!(s, o, |v| s.mul(v, inv));
    }
}

/// Scores of the whole groups of `G` heads of `HV` vectors (returns how many heads that is):
/// the group's queries stay in registers over all positions; each score is [`dot`]'s chain
/// (lane-wise FMA from zero in order, tree sum, times the scale), so the same bits.
#[inline(always)]
fn group_scores<S: Simd, E: Elem, const HV: usize, const G: usize>(
    s: S,
    a: &Attention<E>,
    heads: usize,
    scores: &mut [f32],
) -> usize {
    let (l, len) = (S::LANES, a.len);
    let hd = HV * l;
    let groups = heads / G;
    for grp in 0..groups {
        let h0 = grp * G;
        let mut q = [[s.zero(); HV]; G];
        for gi in 0..G {
            for c in 0..HV {
                q[gi][c] = s.load(&a.q[(h0 + gi) * hd + c * l..]);
            }
        }
        for t in 0..len {
            let k = a.k.row(t, a.head_offset + h0 * hd, G * hd);
            for gi in 0..G {
                let mut acc = s.zero();
                for c in 0..HV {
                    acc = s.fma(q[gi][c], E::load(s, &k[gi * hd + c * l..]), acc);
                }
                scores[(h0 + gi) * len + t] = s.hsum(acc) * a.scale;
            }
        }
    }
    groups * G
}

/// `out[h] = sum over t of p[h][t] * v[t][h]` for the whole groups of `G` heads of `HV` vectors
/// (returns how many heads that is), the group's sums in registers: each is the FMA chain
/// [`axpy`] computes from zero in the same order of t, so the same bits, without a load and a
/// store of the output per FMA.
#[inline(always)]
fn weighted_values<S: Simd, E: Elem, const HV: usize, const G: usize>(
    s: S,
    a: &Attention<E>,
    heads: usize,
    scores: &[f32],
    out: &mut [f32],
) -> usize {
    let (l, len) = (S::LANES, a.len);
    let hd = HV * l;
    let groups = heads / G;
    for grp in 0..groups {
        let h0 = grp * G;
        let mut acc = [[s.zero(); HV]; G];
        for t in 0..len {
            let v = a.v.row(t, a.head_offset + h0 * hd, G * hd);
            for gi in 0..G {
                let p = s.splat(scores[(h0 + gi) * len + t]);
                for c in 0..HV {
                    acc[gi][c] = s.fma(p, E::load(s, &v[gi * hd + c * l..]), acc[gi][c]);
                }
            }
        }
        for gi in 0..G {
            for c in 0..HV {
                s.store(&mut out[(h0 + gi) * hd + c * l..], acc[gi][c]);
            }
        }
    }
    groups * G
}

/// `out += p * v`, vectors then a scalar tail (the one order both attention kernels share).
#[inline(always)]
fn axpy<S: Simd, E: Elem>(s: S, p: f32, v: &[E], out: &mut [f32]) {
    let l = S::LANES;
    let n = out.len();
    let nv = n / l * l;
    let pv = s.splat(p);
    let mut i = 0;
    while i < nv {
        let acc = s.fma(pv, E::load(s, &v[i..]), s.load(&out[i..]));
        s.store(&mut out[i..], acc);
        i += l;
    }
    for j in nv..n {
        out[j] = s.fma1(p, v[j].to_f32(), out[j]);
    }
}

/// Most heads one [`attend_heads`] call handles (GPT-2 large has 20).
pub const MAX_HEADS: usize = 64;
