//! Kernel bodies, each written once and generic over [`Simd`](crate::simd::Simd).
//!
//! No intrinsics and no `unsafe` here: the ISA files instantiate these bodies inside
//! `#[target_feature]` functions, where `#[inline(always)]` lets LLVM emit the ISA's instructions.

pub mod attention;
pub mod elementwise;
pub mod matmul;
pub mod matmul_bf16;
pub mod matmul_q;
pub mod matmul_w4;
pub mod norm;

use crate::simd::Simd;

// The two helpers below are macros, not functions taking closures: a closure is compiled
// without the caller's `#[target_feature]`s, and when LLVM declines to inline it (exp/tanh bodies
// are big) every intrinsic inside becomes a call. A macro pastes the body into the caller.
// Both expect the caller's `Simd` type parameter to be named `S`.

/// Runs `body` with the constant `$r` equal to the run-time tile height `$rows` (1 to 12, the
/// largest `MR`; 1 for anything else). A register tile needs its height as a constant, so that
/// its accumulators are an array the compiler keeps in registers; this one match instantiates
/// every height for the float and the integer products alike.
macro_rules! with_tile_rows {
    ($rows:expr, $r:ident => $body:expr) => {
        match $rows {
            12 => {
                const $r: usize = 12;
                $body
            }
            11 => {
                const $r: usize = 11;
                $body
            }
            10 => {
                const $r: usize = 10;
                $body
            }
            9 => {
                const $r: usize = 9;
                $body
            }
            8 => {
                const $r: usize = 8;
                $body
            }
            7 => {
                const $r: usize = 7;
                $body
            }
            6 => {
                const $r: usize = 6;
                $body
            }
            5 => {
                const $r: usize = 5;
                $body
            }
            4 => {
                const $r: usize = 4;
                $body
            }
            3 => {
                const $r: usize = 3;
                $body
            }
            2 => {
                const $r: usize = 2;
                $body
            }
            _ => {
                const $r: usize = 1;
                $body
            }
        }
    };
}
pub(crate) use with_tile_rows;

/// Applies `|v| body` to `x` one vector at a time; the ragged tail goes through the same vector
/// code via a padded copy, so every element sees exactly the same arithmetic.
macro_rules! map_vectors {
    ($s:expr, $x:expr, |$v:ident| $body:expr) => {{
        let x: &mut [f32] = $x;
        let mut chunks = x.chunks_exact_mut(S::LANES);
        for c in &mut chunks {
            let $v = $s.load(c);
            let r = $body;
            $s.store(c, r);
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let mut pad = [0.0f32; 16];
            pad[..tail.len()].copy_from_slice(tail);
            let $v = $s.load(&pad);
            let r = $body;
            $s.store(&mut pad, r);
            tail.copy_from_slice(&pad[..tail.len()]);
        }
    }};
}
pub(crate) use map_vectors;

/// Sum of `f(x[i])` in a fixed order: lane-wise over whole vectors (`|v| vector body`), then the
/// lanes in a fixed tree, then the tail sequentially (`|e| scalar body`).
macro_rules! sum_by {
    ($s:expr, $x:expr, |$v:ident| $vbody:expr, |$e:ident| $ebody:expr $(,)?) => {{
        let x: &[f32] = $x;
        let mut acc = $s.zero();
        let mut chunks = x.chunks_exact(S::LANES);
        for c in &mut chunks {
            let $v = $s.load(c);
            acc = $s.add(acc, $vbody);
        }
        let mut total = $s.hsum(acc);
        for &$e in chunks.remainder() {
            total += $ebody;
        }
        total
    }};
}
pub(crate) use sum_by;

/// Dot product in the kernels' fixed order (lane-wise FMA, tree sum, sequential tail); `b` may
/// be stored narrower than f32.
#[inline(always)]
pub(crate) fn dot<S: Simd, E: Elem>(s: S, a: &[f32], b: &[E]) -> f32 {
    let l = S::LANES;
    let n = a.len().min(b.len());
    let nv = n / l * l;
    let mut acc = s.zero();
    let mut i = 0;
    while i < nv {
        acc = s.fma(s.load(&a[i..]), E::load(s, &b[i..]), acc);
        i += l;
    }
    let mut total = s.hsum(acc);
    for j in nv..n {
        total = s.fma1(a[j], b[j].to_f32(), total);
    }
    total
}

/// A stored value type the kernels widen to f32 lanes.
pub(crate) trait Elem: Copy {
    fn load<S: Simd>(s: S, p: &[Self]) -> S::V;
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn load<S: Simd>(s: S, p: &[f32]) -> S::V {
        s.load(p)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for half::f16 {
    #[inline(always)]
    fn load<S: Simd>(s: S, p: &[half::f16]) -> S::V {
        s.load_f16(p)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}

impl Elem for half::bf16 {
    #[inline(always)]
    fn load<S: Simd>(s: S, p: &[half::bf16]) -> S::V {
        s.load_bf16(p)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
}

impl Elem for i8 {
    #[inline(always)]
    fn load<S: Simd>(s: S, p: &[i8]) -> S::V {
        s.load_i8(p)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }
}
