//! Kernel bodies, each written once and generic over [`Simd`](crate::simd::Simd).
//!
//! No intrinsics and no `unsafe` here: the ISA files instantiate these bodies inside
//! `#[target_feature]` functions, where `#[inline(always)]` lets LLVM emit the ISA's instructions.

pub mod attention;
pub mod elementwise;
pub mod matmul;
pub mod norm;

use crate::simd::Simd;

/// Applies `f` to `x` one vector at a time; the ragged tail goes through the same vector code via
/// a padded copy, so every element sees exactly the same arithmetic whatever its position.
#[inline(always)]
pub(crate) fn map_vectors<S: Simd>(s: S, x: &mut [f32], mut f: impl FnMut(S::V) -> S::V) {
    let l = S::LANES;
    let mut chunks = x.chunks_exact_mut(l);
    for c in &mut chunks {
        let v = f(s.load(c));
        s.store(c, v);
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let mut pad = [0.0f32; 16];
        pad[..tail.len()].copy_from_slice(tail);
        let v = f(s.load(&pad));
        s.store(&mut pad, v);
        tail.copy_from_slice(&pad[..tail.len()]);
    }
}

/// Sum of `f(x[i])` in a fixed order: lane-wise over whole vectors, then the lanes in a fixed
/// tree, then the tail sequentially.
#[inline(always)]
pub(crate) fn sum_by<S: Simd>(s: S, x: &[f32], f: impl Fn(S::V) -> S::V, f1: impl Fn(f32) -> f32) -> f32 {
    let l = S::LANES;
    let mut acc = s.zero();
    let mut chunks = x.chunks_exact(l);
    for c in &mut chunks {
        acc = s.add(acc, f(s.load(c)));
    }
    let mut total = s.hsum(acc);
    for &v in chunks.remainder() {
        total += f1(v);
    }
    total
}

/// Dot product in the kernels' fixed order (lane-wise FMA, tree sum, sequential tail).
#[inline(always)]
pub(crate) fn dot<S: Simd>(s: S, a: &[f32], b: &[f32]) -> f32 {
    let l = S::LANES;
    let n = a.len().min(b.len());
    let nv = n / l * l;
    let mut acc = s.zero();
    let mut i = 0;
    while i < nv {
        acc = s.fma(s.load(&a[i..]), s.load(&b[i..]), acc);
        i += l;
    }
    let mut total = s.hsum(acc);
    for j in nv..n {
        total = s.fma1(a[j], b[j], total);
    }
    total
}
