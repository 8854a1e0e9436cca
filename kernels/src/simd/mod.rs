//! The small SIMD vocabulary every kernel body is written in.
//!
//! A kernel body is written once, `#[inline(always)]` and generic over [`Simd`]; each ISA file
//! only instantiates it inside a `#[target_feature]` function. An ISA type is a zero-sized
//! *token*: holding one proves the CPU supports the ISA, so its methods are safe to call and the
//! bodies need no `unsafe`. Tokens are only minted by `dispatch.rs` after feature detection.

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

/// Integer dot products of int8 weights with int8 activations (the `w8a8` dtype): each i32
/// lane accumulates `KQ` consecutive k of one column. Every implementation computes the exact
/// integer sum, so results never depend on the ISA or the order of the k groups.
pub trait IntDot: Copy {
    /// The float side (epilogue) of the same ISA.
    type S: Simd;
    /// `Self::S::LANES` i32 accumulators.
    type I: Copy;
    /// Consecutive k per lane and per activation word.
    const KQ: usize;
    /// Added to every activation byte before it is packed (VNNI multiplies unsigned by signed
    /// bytes); the kernel subtracts `OFFSET * column sum` again, exactly.
    const OFFSET: i32;
    /// The instruction it reduces with, for reports.
    const NAME: &'static str;

    fn simd(self) -> Self::S;
    fn izero(self) -> Self::I;
    /// The weights of `LANES` columns x `KQ` k, stored `[column][KQ]` (`LANES * KQ` bytes).
    fn load_q(self, w: &[i8]) -> Self::I;
    /// `acc + sum_j x_j * w_j` per lane, `x` one activation word ([`IntDot::act_word`]) for
    /// all lanes.
    fn dot_q(self, acc: Self::I, x: i32, w: Self::I) -> Self::I;
    /// `(acc - corr)` per lane as f32 (`corr`: `LANES` values).
    fn to_f32(self, acc: Self::I, corr: &[i32]) -> <Self::S as Simd>::V;
    /// Packs `KQ` quantized activations (each in -127..=127) into the word `dot_q` takes.
    fn act_word(x: &[i8]) -> i32;

    /// [`IntDot::act_word`] of each group of `KQ` values of `x` (ISAs override it with a
    /// vectorised loop).
    #[inline(always)]
    fn act_words(self, x: &[i8], out: &mut [i32]) {
        for (w, g) in out.iter_mut().zip(x.chunks_exact(Self::KQ)) {
            *w = Self::act_word(g);
        }
    }
}

/// An [`IntDot`] whose activation bytes are unsigned (VNNI's `vpdpbusd`), so it can take a
/// 24-bit activation as three byte digits, one dot product each: the weight-only `int8`
/// products on such CPUs (`ops::matmul_q`), at a quarter of the instructions of widening every
/// weight to f32 for an FMA.
pub trait IntDot24: IntDot {
    /// `65536 (a2 - corr) + 256 a1 + a0` per lane as f32, rounded once (the sum is exact in
    /// f64, so this is the same value on every ISA).
    fn combine24(self, a0: Self::I, a1: Self::I, a2: Self::I, corr: &[i32]) -> <Self::S as Simd>::V;

    /// The digit words of quantized activations `q` (integers within `+-(2^23 - 1)`, as f32),
    /// each offset by 2^23 into `0..2^24`, `KQ` = 4 per group: for group `g`, `out[4g + j]` is
    /// the word of byte `j` of its four values (`j < 3`; `out[4g + 3]`, their zero top bytes,
    /// is 0). (A NaN, in a row whose scale is NaN anyway, gives arbitrary digits.)
    fn digit_words(self, q: &[f32], out: &mut [i32]);
}

/// [`IntDot24::digit_words`], one group of four at a time: the tail after an ISA's vectors.
#[inline(always)]
pub(crate) fn digit_words_of(q: &[f32], out: &mut [i32]) {
    for (o, g) in out.chunks_exact_mut(4).zip(q.chunks_exact(4)) {
        let u = [0, 1, 2, 3].map(|i| g[i] as i32 + (1 << 23));
        for (j, w) in o.iter_mut().enumerate() {
            *w = i32::from_le_bytes([0, 1, 2, 3].map(|i| (u[i] >> (8 * j)) as u8));
        }
    }
}

/// The pair product of AVX512-BF16's `vdpbf16ps`: each f32 lane takes a word of two bf16
/// weights (even k low, odd k high) and the same word of two activations for every lane, and
/// adds `x_odd * w_odd`, then `x_even * w_even`: each product exact (8-bit significands), each
/// sum rounded to nearest even (Intel's definition of the instruction).
pub trait Bf16Dot: Copy {
    /// The float side (epilogue) of the same ISA.
    type S: Simd;
    /// `LANES` pair words.
    type W: Copy;
    /// The instruction it reduces with, for reports.
    const NAME: &'static str;

    fn simd(self) -> Self::S;
    /// Loads `LANES` pair words.
    fn load_pairs(self, w: &[u32]) -> Self::W;
    /// `acc + x_odd * w_odd + x_even * w_even` per lane, summed in that order, for the
    /// activation pair word `x`.
    fn dot_pairs(self, acc: <Self::S as Simd>::V, x: u32, w: Self::W) -> <Self::S as Simd>::V;
}

/// Integer dot products of unsigned 4-bit weights (`w4a8`, stored `q + 8` in `0..=15`, see
/// `pack_w4.rs`) with signed int8 activations, over one group of 32 k at a time. Each lane is
/// one column; every implementation computes the exact integer sum, so a group's dot product is
/// the same on every ISA.
pub trait W4Dot: Copy {
    /// The float side (per-group scaling, epilogue) of the same ISA.
    type S: Simd;
    /// One unpacked weight vector: `LANES` columns x 4 k, unsigned bytes `[column][4]`.
    type W: Copy;
    /// A group's running sums (AVX2 keeps them as 16-bit pairs until the group ends).
    type P: Copy;
    /// The instructions it reduces with, for reports.
    const NAME: &'static str;

    fn simd(self) -> Self::S;
    fn pzero(self) -> Self::P;
    /// The two weight vectors packed in `LANES * 4` bytes: the low nibbles (the first 4-k
    /// step), then the high nibbles (the next).
    fn load_w4(self, w: &[u8]) -> (Self::W, Self::W);
    /// `acc + sum_j w_j * x_j` per column over 4 k, `x` four int8 activations (little-endian)
    /// for all lanes. At most 8 calls per group (32 k) on one `acc`.
    fn dot_w4(self, acc: Self::P, x: i32, w: Self::W) -> Self::P;
    /// The group's dot product per column, `acc - corr`, as f32 (exact: below 2^24).
    fn group_f32(self, acc: Self::P, corr: i32) -> <Self::S as Simd>::V;
}

/// One SIMD register's worth of `f32` lanes and the operations kernels need.
pub trait Simd: Copy {
    /// Number of `f32` lanes in [`Simd::V`].
    const LANES: usize;
    type V: Copy;

    fn splat(self, x: f32) -> Self::V;
    /// Loads the first `LANES` values of `s` (panics if `s` is shorter).
    fn load(self, s: &[f32]) -> Self::V;
    /// Stores into the first `LANES` values of `s` (panics if `s` is shorter).
    fn store(self, s: &mut [f32], v: Self::V);
    /// Loads `LANES` IEEE half floats, widened to f32.
    fn load_f16(self, s: &[half::f16]) -> Self::V;
    /// Loads `LANES` bfloat16 values, widened to f32 (exact: a shift).
    fn load_bf16(self, s: &[half::bf16]) -> Self::V;
    /// Loads `LANES` signed bytes, converted to f32 (exact).
    fn load_i8(self, s: &[i8]) -> Self::V;
    /// Loads `LANES` bf16 pair words (`Panels::Bf16Pairs`) and widens their low halves (the
    /// even k) to f32: exact, a shift.
    fn load_bf16_even(self, s: &[u32]) -> Self::V;
    /// [`Simd::load_bf16_even`] for the high halves (the odd k): exact, a mask.
    fn load_bf16_odd(self, s: &[u32]) -> Self::V;
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c` (a single rounding where the ISA has FMA).
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Scalar `a * b + c`, rounded exactly like one lane of [`Simd::fma`] (so ragged tails give
    /// the same bits as full vectors would).
    fn fma1(self, a: f32, b: f32, c: f32) -> f32;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// Round to nearest integer (ties to even), still as float.
    fn round(self, a: Self::V) -> Self::V;
    /// `2^n` for lanes holding integral values in [-126, 127].
    fn pow2i(self, n: Self::V) -> Self::V;
    /// Sum of all lanes, in a fixed tree order (part of the batch-invariance contract).
    fn hsum(self, v: Self::V) -> f32;
    fn hmax(self, v: Self::V) -> f32;
    /// Hints that the cache line holding `s[i]` will be read soon (out of range is harmless:
    /// a prefetch never faults).
    fn prefetch<T>(self, s: &[T], i: usize);

    #[inline(always)]
    fn zero(self) -> Self::V {
        self.splat(0.0)
    }

    /// `e^x`, max relative error ~2e-7 for x in [-87, 88]; clamps outside that range
    /// (so `exp(-inf)` is ~0 and never NaN from the range reduction).
    #[inline(always)]
    fn exp(self, x: Self::V) -> Self::V {
        // Cody-Waite: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 Taylor/minimax polynomial.
        let x = self.min(self.max(x, self.splat(-87.3)), self.splat(88.3));
        let n = self.round(self.mul(x, self.splat(std::f32::consts::LOG2_E)));
        let r = self.fma(n, self.splat(-0.693_145_75), x);
        let r = self.fma(n, self.splat(-1.428_606_8e-6), r);
        let mut p = self.splat(1.0 / 720.0);
        p = self.fma(p, r, self.splat(1.0 / 120.0));
        p = self.fma(p, r, self.splat(1.0 / 24.0));
        p = self.fma(p, r, self.splat(1.0 / 6.0));
        p = self.fma(p, r, self.splat(0.5));
        p = self.fma(p, r, self.splat(1.0));
        p = self.fma(p, r, self.splat(1.0));
        // n may be 128 at the top of the clamp: split the scale so 2^n never overflows early.
        let half = self.round(self.mul(n, self.splat(0.5)));
        let rest = self.sub(n, half);
        self.mul(self.mul(p, self.pow2i(half)), self.pow2i(rest))
    }

    /// `tanh(x)` via `1 - 2 / (e^{2x} + 1)`; absolute error below 3e-7.
    #[inline(always)]
    fn tanh(self, x: Self::V) -> Self::V {
        let x = self.min(self.max(x, self.splat(-9.0)), self.splat(9.0));
        let e = self.exp(self.add(x, x));
        let one = self.splat(1.0);
        self.sub(one, self.div(self.splat(2.0), self.add(e, one)))
    }
}
