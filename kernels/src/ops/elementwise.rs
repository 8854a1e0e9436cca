//! Activation, softmax and vector add bodies.

use super::{map_vectors, sum_by};
use crate::simd::Simd;

/// `sqrt(2 / pi)`, the constant in GPT-2's tanh-approximated GELU.
const GELU_C: f32 = 0.797_884_6;

/// GPT-2's `gelu_new`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, in place.
/// Max abs error vs the f64 formula: below 1e-6 for |x| <= 10 (from the tanh approximation).
#[inline(always)]
pub fn gelu_new<S: Simd>(s: S, x: &mut [f32]) {
    map_vectors!(s, x, |v| gelu_vec(s, v));
}

/// `gelu_new` of one vector (also the fused GEMM epilogue, so both give the same bits).
#[inline(always)]
pub fn gelu_vec<S: Simd>(s: S, v: S::V) -> S::V {
    let inner = s.mul(s.splat(GELU_C), s.fma(s.mul(s.splat(0.044_715), v), s.mul(v, v), v));
    s.mul(s.mul(s.splat(0.5), v), s.add(s.splat(1.0), s.tanh(inner)))
}

/// Largest value (NaN-free input; `-inf` for an empty row).
#[inline(always)]
pub fn max<S: Simd>(s: S, x: &[f32]) -> f32 {
    let mut mv = s.splat(f32::NEG_INFINITY);
    let mut chunks = x.chunks_exact(S::LANES);
    for c in &mut chunks {
        mv = s.max(mv, s.load(c));
    }
    chunks.remainder().iter().fold(s.hmax(mv), |m, &v| m.max(v))
}

/// `out[i] = exp((x[i] - shift) * scale)`; returns their sum. The sampling weights and the
/// log-sum-exp of a row of logits: one vectorised pass instead of a libm call per token.
#[inline(always)]
pub fn exp_shifted<S: Simd>(s: S, x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f32 {
    let (sv, kv) = (s.splat(shift), s.splat(scale));
    let l = S::LANES;
    let n = x.len().min(out.len());
    let nv = n / l * l;
    let mut acc = s.zero();
    for (xc, oc) in x[..nv].chunks_exact(l).zip(out[..nv].chunks_exact_mut(l)) {
        let e = s.exp(s.mul(s.sub(s.load(xc), sv), kv));
        s.store(oc, e);
        acc = s.add(acc, e);
    }
    // The tail through one padded vector (the padding's exp is stored, then ignored), so every
    // value comes from the same vector exp.
    let mut total = s.hsum(acc);
    if nv < n {
        let mut tmp = [shift; 64];
        tmp[..n - nv].copy_from_slice(&x[nv..n]);
        let e = s.exp(s.mul(s.sub(s.load(&tmp), sv), kv));
        s.store(&mut tmp, e);
        for (o, &e) in out[nv..n].iter_mut().zip(&tmp) {
            *o = e;
            total += e;
        }
    }
    total
}

/// Numerically stable softmax of one row, in place.
#[inline(always)]
pub fn softmax<S: Simd>(s: S, x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let mut mv = s.splat(f32::NEG_INFINITY);
    let mut chunks = x.chunks_exact(S::LANES);
    for c in &mut chunks {
        mv = s.max(mv, s.load(c));
    }
    let max = chunks.remainder().iter().fold(s.hmax(mv), |m, &v| m.max(v));
    let maxv = s.splat(max);
    map_vectors!(s, x, |v| s.exp(s.sub(v, maxv)));
    let sum = sum_by!(s, x, |v| v, |v| v);
    let inv = s.splat(1.0 / sum);
    map_vectors!(s, x, |v| s.mul(v, inv));
}

/// `out = a + b`.
#[inline(always)]
pub fn add<S: Simd>(s: S, a: &[f32], b: &[f32], out: &mut [f32]) {
    out.copy_from_slice(a);
    let l = S::LANES;
    let n = out.len();
    let nv = n / l * l;
    let mut i = 0;
    while i < nv {
        let v = s.add(s.load(&out[i..]), s.load(&b[i..]));
        s.store(&mut out[i..], v);
        i += l;
    }
    for j in nv..n {
        out[j] += b[j];
    }
}

/// Sum of a slice (the read-bandwidth probe: one load and one add per vector).
#[inline(always)]
pub fn sum<S: Simd>(s: S, x: &[f32]) -> f32 {
    // Four independent accumulators so the add latency never limits the stream.
    let l = S::LANES;
    let mut acc = [s.zero(); 4];
    let mut chunks = x.chunks_exact(4 * l);
    for c in &mut chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = s.add(*a, s.load(&c[i * l..]));
        }
    }
    let total = s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3]));
    s.hsum(total) + chunks.remainder().iter().sum::<f32>()
}

/// Runs `iters` rounds of 12 independent vector FMA chains (the FLOP-peak probe); returns a
/// value derived from the result so the work cannot be optimised away.
#[inline(always)]
pub fn fma_probe<S: Simd>(s: S, iters: usize, seed: f32) -> f32 {
    let a = s.splat(0.999_999);
    let b = s.splat(seed * 1e-7);
    let mut acc = [s.splat(seed); 12];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = s.fma(*v, a, b);
        }
    }
    let mut t = s.zero();
    for v in acc {
        t = s.add(t, v);
    }
    s.hsum(t)
}
