//! AVX2 + FMA [`Simd`] implementation (8 lanes of `f32` in a `__m256`).

use super::{IntDot, Simd, W4Dot};
use std::arch::x86_64::*;

/// Token proving the CPU supports AVX2, FMA and F16C (every AVX2 CPU has F16C).
#[derive(Clone, Copy, Debug)]
pub struct Avx2 {
    _private: (),
}

impl Avx2 {
    /// Returns the token if the running CPU (and OS) support AVX2 and FMA.
    pub fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
            .then_some(Avx2 { _private: () })
    }

    /// # Safety
    /// The caller must have established that AVX2 and FMA are available, e.g. by running inside
    /// a `#[target_feature(enable = "avx2,fma")]` function that is only called after [`Avx2::detect`].
    #[inline(always)]
    pub unsafe fn assume() -> Self {
        Avx2 { _private: () }
    }
}

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` holds 8 floats (checked by the slice above); AVX proven by the token.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m256) {
        let s = &mut s[..8];
        // SAFETY: `s` holds 8 floats (checked by the slice above); AVX proven by the token.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_f16(self, s: &[half::f16]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` holds 8 halves = 16 bytes (checked above); F16C proven by the token.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_bf16(self, s: &[half::bf16]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` holds 8 bf16 = 16 bytes (checked above); AVX2 proven by the token.
        unsafe {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(s.as_ptr().cast()))))
        }
    }
    #[inline(always)]
    fn load_bf16_even(self, s: &[u32]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` holds 8 words = 32 bytes (checked above); AVX2 proven by the token.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_loadu_si256(s.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn load_bf16_odd(self, s: &[u32]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` holds 8 words = 32 bytes (checked above); AVX2 proven by the token.
        unsafe {
            let w = _mm256_loadu_si256(s.as_ptr().cast());
            _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(0xFFFF_0000u32 as i32)))
        }
    }
    #[inline(always)]
    fn load_i8(self, s: &[i8]) -> __m256 {
        let s = &s[..8];
        // SAFETY: `s` holds 8 bytes (checked above); `_mm_loadl_epi64` reads exactly 8; AVX2 proven.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(s.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: the token proves FMA is available.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn fma1(self, a: f32, b: f32, c: f32) -> f32 {
        // Inlined into `#[target_feature(enable = "fma")]` code this is one `vfmadd` instruction.
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn round(self, a: __m256) -> __m256 {
        // SAFETY: the token proves AVX is available.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn pow2i(self, n: __m256) -> __m256 {
        // SAFETY: the token proves AVX2 is available (integer shifts on ymm).
        unsafe {
            let i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(i))
        }
    }
    #[inline(always)]
    fn hsum(self, v: __m256) -> f32 {
        // SAFETY: the token proves AVX is available.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn hmax(self, v: __m256) -> f32 {
        // SAFETY: the token proves AVX is available.
        unsafe {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn prefetch<T>(self, s: &[T], i: usize) {
        // SAFETY: PREFETCHT0 is a hint that never faults, whatever the address; the pointer is
        // formed with `wrapping_add` and never dereferenced.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(s.as_ptr().wrapping_add(i).cast()) }
    }
}

/// `vpmaddwd` on sign-extended pairs: exact (no `maddubs` saturation), 16 multiply-adds per
/// instruction pair, on every AVX2 CPU.
impl IntDot for Avx2 {
    type S = Avx2;
    type I = __m256i;
    const KQ: usize = 2;
    const OFFSET: i32 = 0;
    const NAME: &'static str = "avx2 vpmaddwd";

    #[inline(always)]
    fn simd(self) -> Avx2 {
        self
    }
    #[inline(always)]
    fn izero(self) -> __m256i {
        // SAFETY: the token proves AVX2 is available.
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    fn load_q(self, w: &[i8]) -> __m256i {
        let w = &w[..16];
        // SAFETY: `w` holds 16 bytes (checked by the slice above); AVX2 proven by the token.
        unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(w.as_ptr().cast())) }
    }
    #[inline(always)]
    fn dot_q(self, acc: __m256i, x: i32, w: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2 is available.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(w, _mm256_set1_epi32(x))) }
    }
    #[inline(always)]
    fn to_f32(self, acc: __m256i, corr: &[i32]) -> __m256 {
        let corr = &corr[..8];
        // SAFETY: `corr` holds 8 i32 (checked by the slice above); AVX2 proven by the token.
        unsafe { _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, _mm256_loadu_si256(corr.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn act_word(x: &[i8]) -> i32 {
        // Two i16 lanes, little-endian: what `vpmaddwd` pairs with a column's two k.
        (x[0] as i16 as u16 as u32 | ((x[1] as i16 as u16 as u32) << 16)) as i32
    }
}

/// `vpmaddubsw` (unsigned weight nibbles times signed activation bytes, pairs summed to 16
/// bits), the group's 16-bit sums added with `vpaddw`, then one `vpmaddwd` by ones per group
/// widens them to 32 bits. Per 32 k and 8 columns that is 8 + 7 + 1 instructions, where
/// `vpmaddwd` on widened pairs (as `w8a8` does) takes 16 multiplies and 16 adds: `vpmaddubsw`
/// does twice the multiply-adds per instruction, and it cannot saturate here (a pair is at
/// most `2 * 15 * 127 = 3810`, eight of them `30480 < 2^15`), which is why the weights are
/// the unsigned operand and why a group is 8 steps.
impl W4Dot for Avx2 {
    type S = Avx2;
    type W = __m256i;
    type P = __m256i;
    const NAME: &'static str = "avx2 vpmaddubsw";

    #[inline(always)]
    fn simd(self) -> Avx2 {
        self
    }
    #[inline(always)]
    fn pzero(self) -> __m256i {
        // SAFETY: the token proves AVX2 is available.
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    fn load_w4(self, w: &[u8]) -> (__m256i, __m256i) {
        let w = &w[..32];
        // SAFETY: `w` holds 32 bytes (checked by the slice above); AVX2 proven by the token.
        unsafe {
            let v = _mm256_loadu_si256(w.as_ptr().cast());
            let mask = _mm256_set1_epi8(0x0f);
            // A 32-bit shift moves the next byte's low bits into each byte's top: the mask
            // drops them.
            (_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi32::<4>(v), mask))
        }
    }
    #[inline(always)]
    fn dot_w4(self, acc: __m256i, x: i32, w: __m256i) -> __m256i {
        // SAFETY: the token proves AVX2 is available.
        unsafe { _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, _mm256_set1_epi32(x))) }
    }
    #[inline(always)]
    fn group_f32(self, acc: __m256i, corr: i32) -> __m256 {
        // SAFETY: the token proves AVX2 is available.
        unsafe {
            let sum = _mm256_madd_epi16(acc, _mm256_set1_epi16(1));
            _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, _mm256_set1_epi32(corr)))
        }
    }
}
