//! Activation, softmax and vector add bodies.

use super::map_vectors;
use crate::simd::Simd;

/// `sqrt(2 / pi)`, the constant in GPT-2's tanh-approximated GELU.
const GELU_C: f32 = 0.797_884_6;

/// GPT-2's `gelu_new`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, in place.
/// Max abs error vs the f64 formula: below 1e-6 for |x| <= 10 (from the tanh approximation).
#[inline(always)]
pub fn gelu_new<S: Simd>(s: S, x: &mut [f32]) {
    let c = s.splat(GELU_C);
    let c3 = s.splat(0.044_715);
    let half = s.splat(0.5);
    let one = s.splat(1.0);
    map_vectors(s, x, |v| {
        let inner = s.mul(c, s.fma(s.mul(c3, v), s.mul(v, v), v));
        s.mul(s.mul(half, v), s.add(one, s.tanh(inner)))
    });
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
    map_vectors(s, x, |v| s.exp(s.sub(v, maxv)));
    let sum = super::sum_by(s, x, |v| v, |v| v);
    let inv = s.splat(1.0 / sum);
    map_vectors(s, x, |v| s.mul(v, inv));
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
