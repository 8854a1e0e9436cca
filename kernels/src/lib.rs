//! Inferneo's compute kernels: the only crate with `unsafe` and intrinsics.
//!
//! Reading order: [`reference`] (the naive oracle every fast kernel is tested against) →
//! `dispatch.rs` ([`Kernels`], chosen once per process from [`Isa`]) → `rows.rs` (activations
//! packed for a product) and `grid.rs` (a product's output cut for the threads) → `ops/`
//! (bodies written once, generic over `simd::Simd`) → `isa/` (one file per ISA instantiating
//! the bodies and naming its block sizes).
//! No model knowledge lives here: only shapes, slices and arithmetic.

// Kernels index several arrays with one counter (rows, lanes, k); iterator zips would hide that.
#![allow(clippy::needless_range_loop)]

mod attention_split;
pub mod buffer;
pub mod cpu;
mod dispatch;
mod grid;
mod isa;
mod ops;
mod pack;
mod pack_w4;
mod quant;
pub mod reference;
mod rows;
mod simd;
pub mod team;

pub use attention_split::{AttentionRows, LayerKv};
pub use buffer::{AllocError, HugeBuf};
pub use cpu::{default_threads, Isa, ISA_ENV};
pub use dispatch::{kernels, Epilogue, Kernels};
pub use grid::Dims;
pub use pack::{ActQuant, Layout, PackBuilder, PackedKn, Panels, QFormat, WeightDtype};
pub use pack_w4::{W4Format, W4Values, W4_GROUP};
pub use quant::{QuantForm, Quantized};
pub use rows::Norm;
pub use team::Team;

/// Arguments of one column chunk of `y = x · W (+ b) (+ y)`, `W` packed (see [`PackedKn`]).
pub struct MatmulKn<'a> {
    /// The `m` activation rows: row-major `[m, k]` when `x_mr == 0`, else packed in blocks of
    /// `x_mr` rows, each block `[k][x_mr]` (rows interleaved, zero-padded past `m`), so a
    /// register tile broadcasts its rows' values from one contiguous run per k.
    pub x: &'a [f32],
    pub x_mr: usize,
    pub k: usize,
    /// Packed `[k, n]` weights ([`PackedKn::panels`]).
    pub w: &'a Panels,
    pub n: usize,
    /// `[n]`, added after the reduction.
    pub bias: Option<&'a [f32]>,
    /// First weight column of this chunk (a multiple of the panel width).
    pub col0: usize,
    /// Apply `gelu_new` after the bias (the fused MLP activation).
    pub gelu: bool,
    /// Add the result to the output instead of overwriting it.
    pub accumulate: bool,
}

/// Arguments of one column chunk of an integer-dot product ([`Panels::IntDot`]): activations
/// quantized per row, weights packed in `kq`-deep groups, reduced in exact integers.
pub struct MatmulQ<'a> {
    /// Activation words, `groups` runs per row: `w8a8`'s ([`simd`]'s `IntDot::act_word`)
    /// row-major `[m][groups]` when `x_mr == 0`, else blocks of `x_mr` rows, each
    /// `[groups][x_mr]`; 24-bit activations' always in blocks, each `[groups][x_mr][4]` (the
    /// digit words of `ops::matmul_q::quantize_rows24`).
    pub x: &'a [i32],
    pub x_mr: usize,
    /// Per-row activation scales: row `r`'s values are `x_q * x_scale[r]`.
    pub x_scale: &'a [f32],
    /// `ceil(k / kq)`.
    pub groups: usize,
    /// Panels of `nr` columns, each `[groups][nr][kq]` bytes.
    pub w: &'a [i8],
    /// Per-column weight scales and integer corrections, padded to whole panels.
    pub w_scale: &'a [f32],
    pub corr: &'a [i32],
    pub n: usize,
    pub bias: Option<&'a [f32]>,
    pub col0: usize,
    pub gelu: bool,
    pub accumulate: bool,
}

/// Arguments of one column chunk of a `w4a8` product ([`Panels::W4`]): activations quantized
/// per row to int8, weights 4-bit in groups of [`W4_GROUP`] k, each group's exact integer dot
/// scaled and summed in f32 in group order.
pub struct MatmulW4<'a> {
    /// Activation words (4 int8 values each, little-endian) and per-group corrections, `9`
    /// words per row and group (8 words, then `W4_OFFSET * sum` of the group's values):
    /// row-major `[m][groups][9]` when `x_mr == 0`, else blocks of `x_mr` rows, each
    /// `[groups][9][x_mr]` (see `ops::matmul_w4::quantize_rows_w4`).
    pub x: &'a [i32],
    pub x_mr: usize,
    /// Per-row activation scales.
    pub x_scale: &'a [f32],
    /// `ceil(k / W4_GROUP)`.
    pub groups: usize,
    /// Panels of `nr` columns, each `groups * 16 * nr` bytes ([`W4Format`]).
    pub w: &'a [u8],
    /// Per panel `[groups][nr]` scales.
    pub w_scale: &'a [f32],
    pub n: usize,
    pub bias: Option<&'a [f32]>,
    pub col0: usize,
    pub gelu: bool,
    pub accumulate: bool,
}

/// A sequence's cached keys or values for one layer, stored in fixed-size blocks:
/// token `t` lives in `blocks[t / block_tokens]` at offset `(t % block_tokens) * token_stride`.
/// Values are f32 or, for the f16 KV cache, `half::f16`.
#[derive(Clone, Copy)]
pub struct KvView<'a, E = f32> {
    pub blocks: &'a [&'a [E]],
    pub block_tokens: usize,
    pub token_stride: usize,
}

impl<'a, E> KvView<'a, E> {
    /// The `len` values at `offset` of token `t`.
    #[inline(always)]
    pub fn row(&self, t: usize, offset: usize, len: usize) -> &'a [E] {
        // Shifts instead of two integer divisions per token when the block size allows
        // (it does in the runtime): the divisions dominated short attention rows.
        let bt = self.block_tokens;
        let (block, within) =
            if bt.is_power_of_two() { (t >> bt.trailing_zeros(), t & (bt - 1)) } else { (t / bt, t % bt) };
        let start = within * self.token_stride + offset;
        &self.blocks[block][start..start + len]
    }

    /// Whether tokens `0..len` exist with at least `width` values each.
    pub fn covers(&self, len: usize, width: usize) -> bool {
        width <= self.token_stride
            && self.blocks.len() * self.block_tokens >= len
            && self.blocks.iter().all(|b| b.len() >= self.block_tokens * self.token_stride)
    }
}

/// One query head attending to the first `len` tokens of `k`/`v`.
pub struct Attention<'a, E = f32> {
    /// `[head_dim]` query.
    pub q: &'a [f32],
    pub k: KvView<'a, E>,
    pub v: KvView<'a, E>,
    /// Offset of this head inside each token's row.
    pub head_offset: usize,
    pub head_dim: usize,
    /// Number of positions attended to (causality is the caller's choice of `len`).
    pub len: usize,
    /// Usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}
