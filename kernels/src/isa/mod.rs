//! Per-ISA instantiations of the kernel bodies: one file per ISA, each building a [`Table`].

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

use crate::{Attention, MatmulKn, MatmulQ, MatmulW4, QFormat, W4Format};

/// Writes the `bf16dot` shims of a [`Bf16Dot`](crate::simd::Bf16Dot) token (`vdpbf16ps`) under
/// the given attributes and a `pairs_bf16_table()` listing them.
macro_rules! instantiate_bf16 {
    ($(#[$attr:meta])* dot: $dot:ty, token: $token:expr, vecs: $c:literal, mr: $mr:literal, decode_vecs: $q1:literal) => {
        $(#[$attr])*
        fn matmul_pairs_bf16(a: &crate::MatmulKn, out: &mut [&mut [f32]]) {
            crate::ops::matmul_bf16::matmul_bf16dot::<_, $c, $mr, $q1>(crate::ops::matmul_bf16::Pairs($token), a, out)
        }
        $(#[$attr])*
        fn pairs_bf16_probe(iters: usize, seed: f32) -> f32 {
            crate::ops::matmul_bf16::pair_probe(crate::ops::matmul_bf16::Pairs($token), iters, seed)
        }

        fn pairs_bf16_table() -> super::Bf16Table {
            super::Bf16Table {
                words: true,
                matmul: matmul_pairs_bf16,
                probe: pairs_bf16_probe,
                name: <$dot as crate::simd::Bf16Dot>::NAME,
            }
        }
    };
}
pub(crate) use instantiate_bf16;

/// Function pointers for one ISA. Entries may be `#[target_feature]` functions, hence `unsafe fn`:
/// calling one is sound only on a CPU with that ISA, which `dispatch.rs` checks before it hands a
/// table out.
/// `layernorm(x, gamma, beta, eps, out)`.
pub type LayerNormFn = unsafe fn(&[f32], &[f32], &[f32], f32, &mut [f32]);

/// The `w8a8` (integer-dot) entries of one ISA.
#[derive(Clone, Copy)]
pub struct QTable {
    /// How weights are packed for `matmul`.
    pub format: QFormat,
    /// Rows per register tile (and per block of packed activation words).
    pub mr: usize,
    /// Columns of the one-row (decode) tile.
    pub decode_cols: usize,
    /// i32 lanes per vector.
    pub lanes: usize,
    pub name: &'static str,
    /// `quantize(x, k, mr, words, scales)`: see `ops::matmul_q::quantize_rows`.
    pub quantize: unsafe fn(&[f32], usize, usize, &mut [i32], &mut [f32]),
    pub matmul: unsafe fn(&MatmulQ, &mut [&mut [f32]]),
    /// `probe(iters, seed)`: see `ops::matmul_q::dot_probe`.
    pub probe: unsafe fn(usize, i32) -> f32,
    /// The weight-only `int8` products on the same packed weights, where this integer dot
    /// takes 24-bit activations as byte digits (VNNI); else `int8` uses the float kernels.
    pub int8: Option<Q24Table>,
}

/// The `int8` entries of an integer dot with unsigned activation bytes (`ops::matmul_q`'s
/// `Digits`).
#[derive(Clone, Copy)]
pub struct Q24Table {
    /// Rows per register tile (each three rows of accumulators).
    pub mr: usize,
    /// Columns of the one-row (decode) tile.
    pub decode_cols: usize,
    /// `quantize(x, k, mr, words, scales)`: see `ops::matmul_q::quantize_rows24`.
    pub quantize: unsafe fn(&[f32], usize, usize, &mut [i32], &mut [f32]),
    pub matmul: unsafe fn(&MatmulQ, &mut [&mut [f32]]),
}

/// The `bf16dot` entries of one ISA.
#[derive(Clone, Copy)]
pub struct Bf16Table {
    /// Whether `matmul` takes its activations as pair words (else as bf16-valued floats): see
    /// `ops::matmul_bf16::PairReduce::WORDS`.
    pub words: bool,
    pub matmul: unsafe fn(&MatmulKn, &mut [&mut [f32]]),
    /// `probe(iters, seed)`: see `ops::matmul_bf16::pair_probe`.
    pub probe: unsafe fn(usize, f32) -> f32,
    pub name: &'static str,
}

/// The `w4a8` entries of one ISA (`ops::matmul_w4`).
#[derive(Clone, Copy)]
pub struct W4Table {
    /// How weights are packed for `matmul`.
    pub format: W4Format,
    /// Rows per register tile (and per block of packed activation words).
    pub mr: usize,
    /// Columns of the one-row (decode) tile.
    pub decode_cols: usize,
    pub name: &'static str,
    /// `quantize(x, k, mr, words, scales)`: see `ops::matmul_w4::quantize_rows_w4`.
    pub quantize: unsafe fn(&[f32], usize, usize, &mut [i32], &mut [f32]),
    pub matmul: unsafe fn(&MatmulW4, &mut [&mut [f32]]),
}

#[derive(Clone, Copy)]
pub struct Table {
    /// Columns per packed `kn` panel: the width of one register tile.
    pub kn_nr: usize,
    /// Rows per `kn` register tile.
    pub kn_mr: usize,
    /// Columns of the one-row (decode) tile, which walks several panels at once.
    pub kn_decode_cols: usize,
    pub matmul_kn: unsafe fn(&MatmulKn, &mut [&mut [f32]]),
    pub w8a8: QTable,
    pub bf16dot: Bf16Table,
    pub w4a8: W4Table,
    pub layernorm: LayerNormFn,
    pub gelu_new: unsafe fn(&mut [f32]),
    pub softmax: unsafe fn(&mut [f32]),
    pub add: unsafe fn(&[f32], &[f32], &mut [f32]),
    pub attend: unsafe fn(&Attention, &mut [f32], &mut [f32]),
    pub attend_f16: unsafe fn(&Attention<half::f16>, &mut [f32], &mut [f32]),
    pub attend_heads: unsafe fn(&Attention, usize, &mut [f32], &mut [f32]),
    pub attend_heads_f16: unsafe fn(&Attention<half::f16>, usize, &mut [f32], &mut [f32]),
    pub sum: unsafe fn(&[f32]) -> f32,
    pub max: unsafe fn(&[f32]) -> f32,
    pub exp_shifted: unsafe fn(&[f32], f32, f32, &mut [f32]) -> f32,
    pub fma_probe: unsafe fn(usize, f32) -> f32,
}

/// Writes one shim per op that binds a body to an ISA token, under the given attributes
/// (`#[target_feature(...)]` for SIMD ISAs), and a `table()` listing them.
macro_rules! instantiate {
    ($(#[$attr:meta])* simd: $simd:ty, token: $token:expr, kn_vecs: $c:literal, kn_mr: $mr:literal, decode_vecs: ($q1:literal, $q2:literal)) => {
        use crate::ops;
        use crate::{Attention, MatmulKn};

        $(#[$attr])*
        fn matmul_kn(a: &MatmulKn, out: &mut [&mut [f32]]) {
            ops::matmul::matmul_kn::<_, $c, $mr, $q1, $q2>($token, a, out)
        }
        $(#[$attr])*
        fn matmul_widened_bf16(a: &MatmulKn, out: &mut [&mut [f32]]) {
            ops::matmul_bf16::matmul_bf16dot::<_, $c, $mr, $q1>(ops::matmul_bf16::Widened($token), a, out)
        }
        $(#[$attr])*
        fn widened_bf16_probe(iters: usize, seed: f32) -> f32 {
            ops::matmul_bf16::pair_probe(ops::matmul_bf16::Widened($token), iters, seed)
        }
        /// `bf16dot` on f32 FMAs over widened halves (see `ops::matmul_bf16::Widened`).
        #[allow(dead_code)]
        fn widened_bf16_table() -> super::Bf16Table {
            super::Bf16Table {
                words: false,
                matmul: matmul_widened_bf16,
                probe: widened_bf16_probe,
                name: "fma (bf16 widened)",
            }
        }
        $(#[$attr])*
        fn layernorm(x: &[f32], g: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
            ops::norm::layernorm($token, x, g, b, eps, out)
        }
        $(#[$attr])*
        fn gelu_new(x: &mut [f32]) {
            ops::elementwise::gelu_new($token, x)
        }
        $(#[$attr])*
        fn softmax(x: &mut [f32]) {
            ops::elementwise::softmax($token, x)
        }
        $(#[$attr])*
        fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
            ops::elementwise::add($token, a, b, out)
        }
        $(#[$attr])*
        fn attend(a: &Attention, out: &mut [f32], scores: &mut [f32]) {
            ops::attention::attend($token, a, out, scores)
        }
        $(#[$attr])*
        fn attend_f16(a: &Attention<half::f16>, out: &mut [f32], scores: &mut [f32]) {
            ops::attention::attend($token, a, out, scores)
        }
        $(#[$attr])*
        fn attend_heads(a: &Attention, heads: usize, out: &mut [f32], scores: &mut [f32]) {
            ops::attention::attend_heads($token, a, heads, out, scores)
        }
        $(#[$attr])*
        fn attend_heads_f16(a: &Attention<half::f16>, heads: usize, out: &mut [f32], scores: &mut [f32]) {
            ops::attention::attend_heads($token, a, heads, out, scores)
        }

        $(#[$attr])*
        fn sum(x: &[f32]) -> f32 {
            ops::elementwise::sum($token, x)
        }
        $(#[$attr])*
        fn max(x: &[f32]) -> f32 {
            ops::elementwise::max($token, x)
        }
        $(#[$attr])*
        fn exp_shifted(x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f32 {
            ops::elementwise::exp_shifted($token, x, shift, scale, out)
        }
        $(#[$attr])*
        fn fma_probe(iters: usize, seed: f32) -> f32 {
            ops::elementwise::fma_probe($token, iters, seed)
        }

        pub fn table() -> super::Table {
            super::Table {
                kn_nr: $c * <$simd as crate::simd::Simd>::LANES,
                kn_mr: $mr,
                kn_decode_cols: $q1 * <$simd as crate::simd::Simd>::LANES,
                matmul_kn,
                w8a8: w8a8_table(),
                bf16dot: bf16dot_table(),
                w4a8: w4a8_table(),
                layernorm,
                gelu_new,
                softmax,
                add,
                attend,
                attend_f16,
                attend_heads,
                attend_heads_f16,
                sum,
                max,
                exp_shifted,
                fma_probe,
            }
        }
    };
}
pub(crate) use instantiate;

/// Writes the `w8a8` shims of one integer-dot token under the given attributes and a
/// `q_table()` listing them.
macro_rules! instantiate_q {
    ($(#[$attr:meta])* dot: $dot:ty, token: $token:expr, vecs: $c:literal, mr: $mr:literal, decode_vecs: $q1:literal) => {
        $(#[$attr])*
        fn quantize_rows(x: &[f32], k: usize, mr: usize, words: &mut [i32], scales: &mut [f32]) {
            crate::ops::matmul_q::quantize_rows($token, x, k, mr, words, scales)
        }
        $(#[$attr])*
        fn dot_probe(iters: usize, seed: i32) -> f32 {
            crate::ops::matmul_q::dot_probe($token, iters, seed)
        }
        $(#[$attr])*
        fn matmul_q(a: &crate::MatmulQ, out: &mut [&mut [f32]]) {
            crate::ops::matmul_q::matmul_q::<_, crate::ops::matmul_q::Bytes, $c, $mr, $q1>($token, a, out)
        }

        pub fn q_table() -> super::QTable {
            use crate::simd::{IntDot, Simd};
            super::QTable {
                format: crate::QFormat {
                    nr: $c * <<$dot as IntDot>::S as Simd>::LANES,
                    kq: <$dot as IntDot>::KQ,
                    offset: <$dot as IntDot>::OFFSET,
                },
                mr: $mr,
                decode_cols: $q1 * <<$dot as IntDot>::S as Simd>::LANES,
                lanes: <<$dot as IntDot>::S as Simd>::LANES,
                name: <$dot as IntDot>::NAME,
                quantize: quantize_rows,
                matmul: matmul_q,
                probe: dot_probe,
                int8: int8_table(),
            }
        }
    };
}
pub(crate) use instantiate_q;

/// Writes the `int8` shims of an [`IntDot24`](crate::simd::IntDot24) token (24-bit activations
/// as byte digits) under the given attributes and an `int8_table()` returning them.
macro_rules! instantiate_q24 {
    ($(#[$attr:meta])* dot: $dot:ty, token: $token:expr, vecs: $c:literal, mr: $mr:literal, decode_vecs: $q1:literal) => {
        $(#[$attr])*
        fn quantize_rows24(x: &[f32], k: usize, mr: usize, words: &mut [i32], scales: &mut [f32]) {
            crate::ops::matmul_q::quantize_rows24($token, x, k, mr, words, scales)
        }
        $(#[$attr])*
        fn matmul_q24(a: &crate::MatmulQ, out: &mut [&mut [f32]]) {
            crate::ops::matmul_q::matmul_q::<_, crate::ops::matmul_q::Digits, $c, $mr, $q1>($token, a, out)
        }

        fn int8_table() -> Option<super::Q24Table> {
            use crate::simd::{IntDot, Simd};
            Some(super::Q24Table {
                mr: $mr,
                decode_cols: $q1 * <<$dot as IntDot>::S as Simd>::LANES,
                quantize: quantize_rows24,
                matmul: matmul_q24,
            })
        }
    };
}
pub(crate) use instantiate_q24;

/// Writes the `w4a8` shims of one [`W4Dot`](crate::simd::W4Dot) token under the given
/// attributes and a `w4_table()` listing them.
macro_rules! instantiate_w4 {
    ($(#[$attr:meta])* dot: $dot:ty, token: $token:expr, vecs: $c:literal, mr: $mr:literal, decode_vecs: $q1:literal) => {
        $(#[$attr])*
        fn quantize_rows_w4(x: &[f32], k: usize, mr: usize, words: &mut [i32], scales: &mut [f32]) {
            use crate::simd::W4Dot;
            crate::ops::matmul_w4::quantize_rows_w4($token.simd(), x, k, mr, words, scales)
        }
        $(#[$attr])*
        fn matmul_w4(a: &crate::MatmulW4, out: &mut [&mut [f32]]) {
            crate::ops::matmul_w4::matmul_w4::<_, $c, $mr, $q1>($token, a, out)
        }

        pub fn w4_table() -> super::W4Table {
            use crate::simd::{Simd, W4Dot};
            super::W4Table {
                format: crate::W4Format { nr: $c * <<$dot as W4Dot>::S as Simd>::LANES },
                mr: $mr,
                decode_cols: $q1 * <<$dot as W4Dot>::S as Simd>::LANES,
                name: <$dot as W4Dot>::NAME,
                quantize: quantize_rows_w4,
                matmul: matmul_w4,
            }
        }
    };
}
pub(crate) use instantiate_w4;
