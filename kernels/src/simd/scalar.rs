//! One-lane [`Simd`] implementation: the portable fallback every machine can run.

use super::{IntDot, Simd, W4Dot};

/// Token for plain scalar code; always available.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

impl Simd for Scalar {
    const LANES: usize = 1;
    type V = f32;

    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> f32 {
        s[0]
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: f32) {
        s[0] = v;
    }
    #[inline(always)]
    fn load_f16(self, s: &[half::f16]) -> f32 {
        s[0].to_f32()
    }
    #[inline(always)]
    fn load_bf16(self, s: &[half::bf16]) -> f32 {
        s[0].to_f32()
    }
    #[inline(always)]
    fn load_i8(self, s: &[i8]) -> f32 {
        s[0] as f32
    }
    #[inline(always)]
    fn load_bf16_even(self, s: &[u32]) -> f32 {
        f32::from_bits(s[0] << 16)
    }
    #[inline(always)]
    fn load_bf16_odd(self, s: &[u32]) -> f32 {
        f32::from_bits(s[0] & 0xFFFF_0000)
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn fma(self, a: f32, b: f32, c: f32) -> f32 {
        // Two roundings on purpose: without the FMA feature `mul_add` is a libm call that is
        // ~20x slower, and this path exists for CPUs that lack FMA.
        a * b + c
    }
    #[inline(always)]
    fn fma1(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        a.min(b)
    }
    #[inline(always)]
    fn round(self, a: f32) -> f32 {
        a.round_ties_even()
    }
    #[inline(always)]
    fn pow2i(self, n: f32) -> f32 {
        f32::from_bits((((n as i32) + 127) as u32) << 23)
    }
    #[inline(always)]
    fn hsum(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn hmax(self, v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn prefetch<T>(self, _s: &[T], _i: usize) {}
}

impl IntDot for Scalar {
    type S = Scalar;
    type I = i32;
    const KQ: usize = 4;
    const OFFSET: i32 = 0;
    const NAME: &'static str = "scalar";

    #[inline(always)]
    fn simd(self) -> Scalar {
        self
    }
    #[inline(always)]
    fn izero(self) -> i32 {
        0
    }
    #[inline(always)]
    fn load_q(self, w: &[i8]) -> i32 {
        i32::from_le_bytes([w[0] as u8, w[1] as u8, w[2] as u8, w[3] as u8])
    }
    #[inline(always)]
    fn dot_q(self, acc: i32, x: i32, w: i32) -> i32 {
        let (x, w) = (x.to_le_bytes(), w.to_le_bytes());
        acc + (0..4).map(|j| x[j] as i8 as i32 * w[j] as i8 as i32).sum::<i32>()
    }
    #[inline(always)]
    fn to_f32(self, acc: i32, corr: &[i32]) -> f32 {
        (acc - corr[0]) as f32
    }
    #[inline(always)]
    fn act_word(x: &[i8]) -> i32 {
        i32::from_le_bytes([x[0] as u8, x[1] as u8, x[2] as u8, x[3] as u8])
    }
}

impl W4Dot for Scalar {
    type S = Scalar;
    type W = [u8; 4];
    type P = i32;
    const NAME: &'static str = "scalar";

    #[inline(always)]
    fn simd(self) -> Scalar {
        self
    }
    #[inline(always)]
    fn pzero(self) -> i32 {
        0
    }
    #[inline(always)]
    fn load_w4(self, w: &[u8]) -> ([u8; 4], [u8; 4]) {
        let w = &w[..4];
        ([0, 1, 2, 3].map(|j| w[j] & 0x0f), [0, 1, 2, 3].map(|j| w[j] >> 4))
    }
    #[inline(always)]
    fn dot_w4(self, acc: i32, x: i32, w: [u8; 4]) -> i32 {
        let x = x.to_le_bytes();
        acc + (0..4).map(|j| w[j] as i32 * x[j] as i8 as i32).sum::<i32>()
    }
    #[inline(always)]
    fn group_f32(self, acc: i32, corr: i32) -> f32 {
        (acc - corr) as f32
    }
}
