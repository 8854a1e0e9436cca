//! AVX-512F [`Simd`] implementation (16 lanes of `f32` in a `__m512`).

use super::{Bf16Dot, IntDot, IntDot24, Simd, W4Dot};
use std::arch::x86_64::*;

/// Token proving the CPU supports AVX-512F (and the AVX2/FMA/F16C it implies on every such CPU).
#[derive(Clone, Copy, Debug)]
pub struct Avx512 {
    _private: (),
}

impl Avx512 {
    /// Returns the token if the running CPU (and OS) support AVX-512F.
    pub fn detect() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
        .then_some(Avx512 { _private: () })
    }

    /// # Safety
    /// The caller must have established that AVX-512F is available, e.g. by running inside a
    /// `#[target_feature(enable = "avx512f")]` function only called after [`Avx512::detect`].
    #[inline(always)]
    pub unsafe fn assume() -> Self {
        Avx512 { _private: () }
    }
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m512 {
        let s = &s[..16];
        // SAFETY: `s` holds 16 floats (checked by the slice above); AVX-512F proven by the token.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m512) {
        let s = &mut s[..16];
        // SAFETY: `s` holds 16 floats (checked by the slice above); AVX-512F proven by the token.
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_f16(self, s: &[half::f16]) -> __m512 {
        let s = &s[..16];
        // SAFETY: `s` holds 16 halves = 32 bytes (checked above); AVX-512F proven by the token.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().cast())) }
    }
    #[inline(always)]
    fn load_bf16(self, s: &[half::bf16]) -> __m512 {
        let s = &s[..16];
        // SAFETY: `s` holds 16 bf16 = 32 bytes (checked above); AVX-512F proven by the token.
        unsafe {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().cast()))))
        }
    }
    #[inline(always)]
    fn load_bf16_even(self, s: &[u32]) -> __m512 {
        let s = &s[..16];
        // SAFETY: `s` holds 16 words = 64 bytes (checked above); AVX-512F proven by the token.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_loadu_si512(s.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn load_bf16_odd(self, s: &[u32]) -> __m512 {
        let s = &s[..16];
        // SAFETY: `s` holds 16 words = 64 bytes (checked above); AVX-512F proven by the token.
        unsafe {
            let w = _mm512_loadu_si512(s.as_ptr().cast());
            _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(0xFFFF_0000u32 as i32)))
        }
    }
    #[inline(always)]
    fn load_i8(self, s: &[i8]) -> __m512 {
        let s = &s[..16];
        // SAFETY: `s` holds 16 bytes (checked above); AVX-512F proven by the token.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(s.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn fma1(self, a: f32, b: f32, c: f32) -> f32 {
        // Inlined into `#[target_feature(enable = "avx512f")]` code this is one `vfmadd`.
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn round(self, a: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn pow2i(self, n: __m512) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe {
            let i = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(i))
        }
    }
    #[inline(always)]
    fn hsum(self, v: __m512) -> f32 {
        // SAFETY: the token proves AVX-512F (and so AVX) is available.
        unsafe {
            // Fixed tree: halves, then the AVX 8-lane tree.
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            let h = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
            let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn hmax(self, v: __m512) -> f32 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_reduce_max_ps(v) }
    }
    #[inline(always)]
    fn prefetch<T>(self, s: &[T], i: usize) {
        // SAFETY: PREFETCHT0 is a hint that never faults, whatever the address; the pointer is
        // formed with `wrapping_add` and never dereferenced.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(s.as_ptr().wrapping_add(i).cast()) }
    }
}

/// Token proving the CPU supports AVX-512 VNNI on top of [`Avx512`].
#[derive(Clone, Copy, Debug)]
pub struct Vnni512 {
    f: Avx512,
}

impl Vnni512 {
    pub fn detect() -> Option<Self> {
        let f = Avx512::detect()?;
        (is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw")).then_some(Vnni512 { f })
    }

    /// # Safety
    /// The caller must have established that AVX-512F, BW and VNNI are available, e.g. by
    /// running inside a `#[target_feature]` function only called after [`Vnni512::detect`].
    #[inline(always)]
    pub unsafe fn assume() -> Self {
        // SAFETY: forwarded to our caller (AVX-512F is part of what it established).
        Vnni512 { f: unsafe { Avx512::assume() } }
    }
}

/// `vpdpbusd`: 64 multiply-adds per instruction. Its first operand is unsigned, so activations
/// are packed with +128 and `128 * column sum` is subtracted in the epilogue.
impl IntDot for Vnni512 {
    type S = Avx512;
    type I = __m512i;
    const KQ: usize = 4;
    const OFFSET: i32 = 128;
    const NAME: &'static str = "avx512-vnni vpdpbusd";

    #[inline(always)]
    fn simd(self) -> Avx512 {
        self.f
    }
    #[inline(always)]
    fn izero(self) -> __m512i {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    fn load_q(self, w: &[i8]) -> __m512i {
        let w = &w[..64];
        // SAFETY: `w` holds 64 bytes (checked by the slice above); AVX-512F proven by the token.
        unsafe { _mm512_loadu_si512(w.as_ptr().cast()) }
    }
    #[inline(always)]
    fn dot_q(self, acc: __m512i, x: i32, w: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512 VNNI is available.
        unsafe { _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(x), w) }
    }
    #[inline(always)]
    fn to_f32(self, acc: __m512i, corr: &[i32]) -> __m512 {
        let corr = &corr[..16];
        // SAFETY: `corr` holds 16 i32 (checked by the slice above); AVX-512F proven by the token.
        unsafe { _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_loadu_si512(corr.as_ptr().cast()))) }
    }
    #[inline(always)]
    fn act_word(x: &[i8]) -> i32 {
        i32::from_le_bytes([0, 1, 2, 3].map(|j| (x[j] as i32 + 128) as u8))
    }
    #[inline(always)]
    fn act_words(self, x: &[i8], out: &mut [i32]) {
        // `q + 128` as a byte is `q ^ 0x80`: four bytes at once, one XOR per word.
        for (w, g) in out.iter_mut().zip(x.chunks_exact(4)) {
            *w = i32::from_le_bytes([g[0] as u8, g[1] as u8, g[2] as u8, g[3] as u8]) ^ 0x8080_8080u32 as i32;
        }
    }
}

impl IntDot24 for Vnni512 {
    #[inline(always)]
    fn combine24(self, a0: __m512i, a1: __m512i, a2: __m512i, corr: &[i32]) -> __m512 {
        let corr = &corr[..16];
        // SAFETY: `corr` holds 16 i32 (checked by the slice above); AVX-512F proven by the token.
        unsafe {
            let a2 = _mm512_sub_epi32(a2, _mm512_loadu_si512(corr.as_ptr().cast()));
            // Every term and partial sum is an integer below 2^53: exact in f64, one rounding
            // to f32 at the end.
            let (b1, b2) = (_mm512_set1_pd(256.0), _mm512_set1_pd(65536.0));
            let half = |lo: __m256i, mid: __m256i, hi: __m256i| {
                let low = _mm512_fmadd_pd(_mm512_cvtepi32_pd(mid), b1, _mm512_cvtepi32_pd(lo));
                _mm512_cvtpd_ps(_mm512_fmadd_pd(_mm512_cvtepi32_pd(hi), b2, low))
            };
            let lo = half(_mm512_castsi512_si256(a0), _mm512_castsi512_si256(a1), _mm512_castsi512_si256(a2));
            let hi = half(
                _mm512_extracti64x4_epi64::<1>(a0),
                _mm512_extracti64x4_epi64::<1>(a1),
                _mm512_extracti64x4_epi64::<1>(a2),
            );
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                _mm256_castps_pd(hi),
            ))
        }
    }

    #[inline(always)]
    fn digit_words(self, q: &[f32], out: &mut [i32]) {
        // Offset, then a 4 x 4 byte transpose within each group of four values (one 128-bit
        // lane): byte `i` of word `j` is byte `j` of value `i`.
        let n = q.len().min(out.len()) / 16 * 16;
        // SAFETY: the token proves AVX-512F is available.
        let (mask, offset) = unsafe {
            let mask = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            (_mm512_broadcast_i32x4(mask), _mm512_set1_epi32(1 << 23))
        };
        for (o, g) in out[..n].chunks_exact_mut(16).zip(q[..n].chunks_exact(16)) {
            // SAFETY: `g` and `o` hold 16 values each (exact chunks); AVX-512BW proven by the
            // token. The conversion is exact: the values are integers below 2^23.
            unsafe {
                let u = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_loadu_ps(g.as_ptr())), offset);
                _mm512_storeu_si512(o.as_mut_ptr().cast(), _mm512_shuffle_epi8(u, mask));
            }
        }
        super::digit_words_of(&q[n..], &mut out[n..]);
    }
}

/// Token proving the CPU supports AVX512-BF16 (`vdpbf16ps`) on top of AVX-512F.
#[derive(Clone, Copy, Debug)]
pub struct Bf16Avx512 {
    _private: (),
}

impl Bf16Avx512 {
    /// Returns the token if the running CPU (and OS) support AVX-512F and AVX512-BF16.
    pub fn detect() -> Option<Self> {
        (Avx512::detect().is_some() && is_x86_feature_detected!("avx512bf16")).then_some(Bf16Avx512 { _private: () })
    }

    /// # Safety
    /// The caller must have established that AVX-512F and AVX512-BF16 are available, e.g. by
    /// running inside a `#[target_feature]` function only called after [`Bf16Avx512::detect`].
    #[inline(always)]
    pub unsafe fn assume() -> Self {
        Bf16Avx512 { _private: () }
    }
}

impl Bf16Dot for Bf16Avx512 {
    type S = Avx512;
    type W = __m512i;
    const NAME: &'static str = "vdpbf16ps";

    #[inline(always)]
    fn simd(self) -> Avx512 {
        // SAFETY: AVX512-BF16 implies AVX-512F (checked by `detect`).
        unsafe { Avx512::assume() }
    }
    #[inline(always)]
    fn load_pairs(self, w: &[u32]) -> __m512i {
        let w = &w[..16];
        // SAFETY: `w` holds 16 words = 64 bytes (checked above); AVX-512F proven by the token.
        unsafe { _mm512_loadu_si512(w.as_ptr().cast()) }
    }
    #[inline(always)]
    fn dot_pairs(self, acc: __m512, x: u32, w: __m512i) -> __m512 {
        // SAFETY: the token proves AVX512-BF16; `__m512bh` and `__m512i` are both 64 bytes of
        // plain bits, so the transmutes only retype them.
        unsafe {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(x as i32));
            let w: __m512bh = std::mem::transmute(w);
            _mm512_dpbf16_ps(acc, x, w)
        }
    }
}

/// `vpdpbusd` with the weight nibbles as its unsigned operand and the activations signed: 64
/// multiply-adds per instruction straight into 32-bit sums, so the only work beyond `w8a8`'s
/// per 4 k is the unpacking (mask, shift, mask per two weight vectors).
impl W4Dot for Vnni512 {
    type S = Avx512;
    type W = __m512i;
    type P = __m512i;
    const NAME: &'static str = "avx512-vnni vpdpbusd";

    #[inline(always)]
    fn simd(self) -> Avx512 {
        self.f
    }
    #[inline(always)]
    fn pzero(self) -> __m512i {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    fn load_w4(self, w: &[u8]) -> (__m512i, __m512i) {
        let w = &w[..64];
        // SAFETY: `w` holds 64 bytes (checked by the slice above); AVX-512F proven by the token.
        unsafe {
            let v = _mm512_loadu_si512(w.as_ptr().cast());
            let mask = _mm512_set1_epi8(0x0f);
            // A 32-bit shift moves the next byte's low bits into each byte's top: the mask
            // drops them.
            (_mm512_and_si512(v, mask), _mm512_and_si512(_mm512_srli_epi32::<4>(v), mask))
        }
    }
    #[inline(always)]
    fn dot_w4(self, acc: __m512i, x: i32, w: __m512i) -> __m512i {
        // SAFETY: the token proves AVX-512 VNNI is available.
        unsafe { _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(x)) }
    }
    #[inline(always)]
    fn group_f32(self, acc: __m512i, corr: i32) -> __m512 {
        // SAFETY: the token proves AVX-512F is available.
        unsafe { _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(corr))) }
    }
}
