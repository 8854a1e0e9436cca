//! Weight packing: a `[K, N]` matrix rearranged once, at load time, into panels of `NR` columns
//! (the ISA's register-tile width) so the microkernel reads each panel as one contiguous stream,
//! optionally converted to a narrower storage type.
//!
//! Layout: panel `p` holds columns `p*NR .. p*NR+NR` as `[K][NR]` (row `k` of the panel is
//! `W[k, p*NR .. p*NR+NR]`), panels back to back; the last panel is zero-padded to `NR` columns.
//!
//! A [`PackBuilder`] fills the panels a slice at a time (whole rows, or whole columns), so a
//! loader reads and converts one slice of a matrix's source while the packed copy grows: the
//! 50257 x 768 tied `wte` is never held in f32 beside its packed copy.

use crate::buffer::{HugeBuf, Zeroed};
use crate::quant::{QuantForm, Quantized};
use half::{bf16, f16};
use rayon::prelude::*;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Storage type of packed weights. Activations and accumulation are always f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    #[default]
    F32,
    F16,
    Bf16,
    /// Symmetric int8 with one f32 scale per output column (weight-only quantization).
    Int8,
    /// The same int8 weights with int8 activations: each product quantizes its input rows
    /// (symmetric, one scale per row, at run time) and reduces in exact integer dot products
    /// (AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddwd`).
    W8a8,
    /// 4-bit weights, one f32 scale per group of 32 k and column (`pack_w4.rs`), with int8
    /// activations as `w8a8`; each group's exact integer dot is scaled and summed in f32.
    W4a8,
    /// bf16 weights times activations rounded to bf16, one pair of k at a time, summed in f32:
    /// AVX512-BF16's `vdpbf16ps` where the CPU has it, the same arithmetic on f32 FMAs
    /// elsewhere (see `reference::matmul_bf16dot` for exactly what is rounded where).
    Bf16dot,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 7] = [
        WeightDtype::F32,
        WeightDtype::F16,
        WeightDtype::Bf16,
        WeightDtype::Int8,
        WeightDtype::W8a8,
        WeightDtype::W4a8,
        WeightDtype::Bf16dot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Int8 => "int8",
            WeightDtype::W8a8 => "w8a8",
            WeightDtype::W4a8 => "w4a8",
            WeightDtype::Bf16dot => "bf16dot",
        }
    }

    /// How `inferneo convert` stores this dtype's matrices; `None` for the float dtypes, which
    /// a checkpoint already holds. Dtypes of one form share their stored weights.
    pub fn stored_form(self) -> Option<QuantForm> {
        match self {
            WeightDtype::F32 | WeightDtype::F16 | WeightDtype::Bf16 | WeightDtype::Bf16dot => None,
            WeightDtype::Int8 | WeightDtype::W8a8 => Some(QuantForm::Q8),
            WeightDtype::W4a8 => Some(QuantForm::Q4),
        }
    }

    /// Bytes per stored weight, scales included (`w4a8`: half a byte per value and a 4-byte
    /// scale per 32).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            WeightDtype::F32 => 4.0,
            WeightDtype::F16 | WeightDtype::Bf16 | WeightDtype::Bf16dot => 2.0,
            WeightDtype::Int8 | WeightDtype::W8a8 => 1.0,
            WeightDtype::W4a8 => 0.5 + 4.0 / crate::pack_w4::W4_GROUP as f64,
        }
    }
}

impl FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WeightDtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown weight dtype '{s}' (expected f32, f16, bf16, int8, w8a8, w4a8 or bf16dot)"))
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the source matrix is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[k, n]` row-major (GPT-2 `Conv1D` weights).
    KN,
    /// `[n, k]` row-major, i.e. the transpose (the tied `lm_head` = `wte`).
    NK,
}

/// Packed panel values, per storage type.
pub enum Panels {
    F32(HugeBuf<f32>),
    F16(HugeBuf<f16>),
    Bf16(HugeBuf<bf16>),
    /// `bf16dot` weights: each panel `[ceil(k / 2)][nr]` words, a word holding the bf16 bits of
    /// `W[2i, c]` in its low half and of `W[2i + 1, c]` in its high half (zero past `k`): the
    /// operand layout of `vdpbf16ps`. Values rounded as [`bf16_bits`] says.
    Bf16Pairs(HugeBuf<u32>),
    /// Quantized values and one scale per column (padded to whole panels).
    Int8 {
        q: HugeBuf<i8>,
        scale: Vec<f32>,
    },
    /// For an integer-dot kernel: the int8 values in panels of `[groups][nr][kq]` (k padded
    /// with zeros to whole groups), per-column scales, and `offset * column sum` per column (see
    /// [`QFormat`]); `acts` says how products quantize their activations.
    IntDot {
        q: HugeBuf<i8>,
        scale: Vec<f32>,
        corr: Vec<i32>,
        format: QFormat,
        acts: ActQuant,
    },
    /// `w4a8`: 4-bit values two per byte, and per panel `[groups][nr]` scales (see
    /// [`W4Format`](crate::W4Format)).
    W4 {
        q: HugeBuf<u8>,
        scale: HugeBuf<f32>,
        format: crate::W4Format,
    },
}

/// How the products of [`Panels::IntDot`] weights quantize their activations, per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    /// To int8: the `w8a8` dtype.
    Int8,
    /// To 24 bits, fed to the integer dot as three byte digits: the weight-only `int8` dtype on
    /// CPUs whose integer dot takes unsigned activation bytes (VNNI). Its rounding (half a step
    /// of `max |x| / (2^23 - 1)` per value) is below f32's over a row.
    Int24,
}

/// How an ISA's integer-dot kernel wants `w8a8` weights: panel width, k per group, and the
/// activation offset its instruction needs (VNNI: 128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QFormat {
    pub nr: usize,
    pub kq: usize,
    pub offset: i32,
}

/// A `[k, n]` weight matrix in panel layout.
pub struct PackedKn {
    k: usize,
    n: usize,
    nr: usize,
    panels: Panels,
}

impl PackedKn {
    /// Packs `w` (laid out as `layout`) into panels `nr` columns wide, stored as `dtype` (use
    /// [`Kernels::pack`](crate::Kernels::pack) for the width and format its ISA wants). `w8a8`
    /// takes its format from [`PackedKn::pack_int_dot`].
    pub fn pack(w: &[f32], layout: Layout, k: usize, n: usize, nr: usize, dtype: WeightDtype) -> PackedKn {
        let mut b = PackBuilder::new(k, n, nr, dtype);
        b.put_matrix(w, layout);
        b.finish()
    }

    /// Packs `w` for an integer-dot kernel of format `f`: int8 values exactly as
    /// [`WeightDtype::Int8`] quantizes them, for products whose activations are quantized as
    /// `acts` says (`w8a8`, or `int8` where the kernel takes 24-bit activations).
    pub fn pack_int_dot(w: &[f32], layout: Layout, k: usize, n: usize, f: QFormat, acts: ActQuant) -> PackedKn {
        let mut b = PackBuilder::int_dot(k, n, f, acts);
        b.put_matrix(w, layout);
        b.finish()
    }

    pub(crate) fn from_panels(k: usize, n: usize, nr: usize, panels: Panels) -> PackedKn {
        PackedKn { k, n, nr, panels }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Panel width.
    pub fn nr(&self) -> usize {
        self.nr
    }

    pub fn dtype(&self) -> WeightDtype {
        match self.panels {
            Panels::F32(_) => WeightDtype::F32,
            Panels::F16(_) => WeightDtype::F16,
            Panels::Bf16(_) => WeightDtype::Bf16,
            Panels::Bf16Pairs(_) => WeightDtype::Bf16dot,
            Panels::Int8 { .. } | Panels::IntDot { acts: ActQuant::Int24, .. } => WeightDtype::Int8,
            Panels::IntDot { acts: ActQuant::Int8, .. } => WeightDtype::W8a8,
            Panels::W4 { .. } => WeightDtype::W4a8,
        }
    }

    pub fn panels(&self) -> &Panels {
        &self.panels
    }

    /// Bytes held (values and scales).
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(v) => v.len() * 4,
            Panels::F16(v) => v.len() * 2,
            Panels::Bf16(v) => v.len() * 2,
            Panels::Bf16Pairs(v) => v.len() * 4,
            Panels::Int8 { q, scale } => q.len() + scale.len() * 4,
            Panels::IntDot { q, scale, corr, .. } => q.len() + scale.len() * 4 + corr.len() * 4,
            Panels::W4 { q, scale, .. } => q.len() + scale.len() * 4,
        }
    }

    /// Column `col` (all `k` values) as f32, dequantized: the embedding row of a tied
    /// `lm_head` packed from `wte` with [`Layout::NK`].
    pub fn column_into(&self, col: usize, out: &mut [f32]) {
        assert!(col < self.n && out.len() == self.k, "column_into: column {col} of {} x {}", self.k, self.n);
        let (base, off) = ((col / self.nr) * self.k * self.nr, col % self.nr);
        let idx = |kk: usize| base + kk * self.nr + off;
        match &self.panels {
            Panels::F32(v) => out.iter_mut().enumerate().for_each(|(kk, o)| *o = v[idx(kk)]),
            Panels::F16(v) => out.iter_mut().enumerate().for_each(|(kk, o)| *o = v[idx(kk)].to_f32()),
            Panels::Bf16(v) => out.iter_mut().enumerate().for_each(|(kk, o)| *o = v[idx(kk)].to_f32()),
            Panels::Bf16Pairs(v) => {
                let panel = &v[(col / self.nr) * self.k.div_ceil(2) * self.nr..];
                for (kk, o) in out.iter_mut().enumerate() {
                    let word = panel[kk / 2 * self.nr + off];
                    *o = f32::from_bits(if kk % 2 == 0 { word << 16 } else { word & 0xFFFF_0000 });
                }
            }
            Panels::Int8 { q, scale } => {
                out.iter_mut().enumerate().for_each(|(kk, o)| *o = q[idx(kk)] as f32 * scale[col])
            }
            Panels::IntDot { q, scale, format, .. } => {
                let panel = &q[(col / self.nr) * self.k.div_ceil(format.kq) * format.kq * self.nr..];
                for (kk, o) in out.iter_mut().enumerate() {
                    *o = panel[q_offset(kk, off, *format)] as f32 * scale[col];
                }
            }
            Panels::W4 { q, scale, format } => crate::pack_w4::w4_column(q, scale, *format, self.k, col, out),
        }
    }
}

/// A [`PackedKn`] being filled: its panels exist (zeroed) from the start and each `put_*`
/// call writes the part of them its slice covers, so a loader can read a matrix a slice at a
/// time. Every row (or every column) must be put exactly once before [`PackBuilder::finish`];
/// the panels' padding columns stay zero. Results do not depend on the slicing: each value is
/// converted or quantized on its own (quantization per whole column), so any slicing gives the
/// bits of packing the whole matrix at once.
pub struct PackBuilder {
    packed: PackedKn,
}

impl PackBuilder {
    /// Panels `nr` wide for the float kernels' `dtype` (for `w8a8` see
    /// [`PackBuilder::int_dot`]). Ends the process, as `Vec` does, if the memory cannot be had.
    pub fn new(k: usize, n: usize, nr: usize, dtype: WeightDtype) -> PackBuilder {
        assert!(dtype != WeightDtype::W8a8, "pack: w8a8 needs its ISA's QFormat (pack_int_dot)");
        assert!(dtype != WeightDtype::W4a8, "pack: w4a8 needs its ISA's W4Format (PackBuilder::w4)");
        assert!(nr > 0 && nr <= crate::ops::matmul::MAX_NR, "pack: unsupported panel width {nr}");
        let len = n.div_ceil(nr) * nr * k;
        let padded = n.div_ceil(nr) * nr;
        let panels = match dtype {
            WeightDtype::F32 => Panels::F32(zeroed(len)),
            WeightDtype::F16 => Panels::F16(zeroed(len)),
            WeightDtype::Bf16 => Panels::Bf16(zeroed(len)),
            WeightDtype::Int8 => Panels::Int8 { q: zeroed(len), scale: vec![0.0; padded] },
            WeightDtype::Bf16dot => Panels::Bf16Pairs(zeroed(n.div_ceil(nr) * nr * k.div_ceil(2))),
            WeightDtype::W8a8 | WeightDtype::W4a8 => unreachable!("checked above"),
        };
        PackBuilder { packed: PackedKn { k, n, nr, panels } }
    }

    /// Panels of an integer-dot kernel of format `f` (`[groups][nr][kq]`, k padded with zeros
    /// to whole groups) for activations quantized as `acts`.
    pub fn int_dot(k: usize, n: usize, f: QFormat, acts: ActQuant) -> PackBuilder {
        let QFormat { nr, kq, .. } = f;
        assert!(nr > 0 && kq > 0, "pack_int_dot: bad format {f:?}");
        let padded = n.div_ceil(nr) * nr;
        let q = zeroed(padded * k.div_ceil(kq) * kq);
        let panels = Panels::IntDot { q, scale: vec![0.0; padded], corr: vec![0; padded], format: f, acts };
        PackBuilder { packed: PackedKn { k, n, nr, panels } }
    }

    /// Panels of `w4a8` weights in format `f`.
    pub fn w4(k: usize, n: usize, f: crate::W4Format) -> PackBuilder {
        PackBuilder { packed: crate::pack_w4::empty_w4(k, n, f) }
    }

    /// The dtype being packed.
    pub fn dtype(&self) -> WeightDtype {
        self.packed.dtype()
    }

    /// The whole matrix at once.
    pub fn put_matrix(&mut self, w: &[f32], layout: Layout) {
        let (k, n) = (self.packed.k, self.packed.n);
        match (self.dtype().stored_form(), layout) {
            (Some(form), _) => self.put_quantized(0, &Quantized::quantize(form, w, layout, k, n)),
            (None, Layout::KN) => self.put_rows(0, w),
            (None, Layout::NK) => self.put_columns(0, w),
        }
    }

    /// Rows `k0..` (whole rows: `w` is `[rows, n]`) of a float dtype. Quantized dtypes need
    /// whole columns (their scales): see [`Quantized::quantize_kn_rows`].
    pub fn put_rows(&mut self, k0: usize, w: &[f32]) {
        let PackedKn { k, n, nr, .. } = self.packed;
        let rows = w.len().checked_div(n).unwrap_or(0);
        assert!(
            w.len() == rows * n && k0 + rows <= k,
            "put_rows: {} values are not whole rows from {k0} of {k} x {n}",
            w.len()
        );
        let at = |kk: usize, c: usize| w[(kk - k0) * n + c];
        let (cols, krange) = (0..n, k0..k0 + rows);
        match &mut self.packed.panels {
            Panels::F32(v) => place(v, k, nr, cols, krange, at),
            Panels::F16(v) => place(v, k, nr, cols, krange, |kk, c| f16::from_f32(at(kk, c))),
            Panels::Bf16(v) => place(v, k, nr, cols, krange, |kk, c| bf16::from_f32(at(kk, c))),
            Panels::Bf16Pairs(v) => place_halves(v, k, nr, cols, krange, |kk, c| bf16_bits(at(kk, c))),
            _ => panic!("put_rows: {} weights are quantized per whole column", self.packed.dtype()),
        }
    }

    /// Columns `c0..` with all their values: `w` is `[cols, k]` (a slice of the rows of an
    /// `[n, k]` matrix such as the tied `wte`). Quantized dtypes quantize each column.
    pub fn put_columns(&mut self, c0: usize, w: &[f32]) {
        let PackedKn { k, n, nr, .. } = self.packed;
        let cols = w.len().checked_div(k).unwrap_or(0);
        assert!(
            w.len() == cols * k && c0 + cols <= n,
            "put_columns: {} values are not whole columns from {c0} of {k} x {n}",
            w.len()
        );
        if let Some(form) = self.dtype().stored_form() {
            return self.put_quantized(c0, &Quantized::quantize(form, w, Layout::NK, k, cols));
        }
        let at = |kk: usize, c: usize| w[(c - c0) * k + kk];
        let range = c0..c0 + cols;
        match &mut self.packed.panels {
            Panels::F32(v) => place(v, k, nr, range, 0..k, at),
            Panels::F16(v) => place(v, k, nr, range, 0..k, |kk, c| f16::from_f32(at(kk, c))),
            Panels::Bf16(v) => place(v, k, nr, range, 0..k, |kk, c| bf16::from_f32(at(kk, c))),
            Panels::Bf16Pairs(v) => place_halves(v, k, nr, range, 0..k, |kk, c| bf16_bits(at(kk, c))),
            _ => unreachable!("quantized dtypes returned above"),
        }
    }

    /// Columns `c0..` from their stored quantized form, which must be this dtype's.
    pub fn put_quantized(&mut self, c0: usize, quantized: &Quantized) {
        let PackedKn { k, n, nr, .. } = self.packed;
        let dtype = self.dtype();
        assert_eq!(dtype.stored_form(), Some(quantized.form()), "put_quantized: {dtype} weights from another form");
        let cols = quantized.cols();
        assert!(c0 + cols <= n, "put_quantized: columns {c0}..{} of {n}", c0 + cols);
        let (src, src_scale) = match quantized {
            Quantized::Q8 { q, scale } => (q, scale),
            Quantized::Q4(v) => {
                assert_eq!(v.k(), k, "put_quantized: w4a8 values of k = {}, not {k}", v.k());
                let Panels::W4 { q, scale, format } = &mut self.packed.panels else {
                    unreachable!("w4a8 builders hold w4 panels")
                };
                return crate::pack_w4::place_w4_columns(q, scale, *format, k, c0, v);
            }
        };
        assert_eq!(src.len(), cols * k, "put_quantized: {} values are not {cols} columns of {k}", src.len());
        let range = c0..c0 + cols;
        match &mut self.packed.panels {
            Panels::Int8 { q, scale } => {
                place(q, k, nr, range, 0..k, |kk, c| src[(c - c0) * k + kk]);
                scale[c0..c0 + cols].copy_from_slice(src_scale);
            }
            Panels::IntDot { q, scale, corr, format, .. } => {
                let f = *format;
                let panel_len = k.div_ceil(f.kq) * f.kq * nr;
                if panel_len > 0 && cols > 0 {
                    let panels = c0 / nr..(c0 + cols).div_ceil(nr);
                    q[panels.start * panel_len..panels.end * panel_len].par_chunks_mut(panel_len).enumerate().for_each(
                        |(i, panel)| {
                            let p = panels.start + i;
                            for c in (p * nr).max(c0)..((p + 1) * nr).min(c0 + cols) {
                                for kk in 0..k {
                                    panel[q_offset(kk, c % nr, f)] = src[(c - c0) * k + kk];
                                }
                            }
                        },
                    );
                }
                scale[c0..c0 + cols].copy_from_slice(src_scale);
                // The integer kernels subtract `offset * column sum` (see `QFormat`).
                for (i, corr) in corr[c0..c0 + cols].iter_mut().enumerate() {
                    *corr = f.offset * src[i * k..][..k].iter().map(|&v| v as i32).sum::<i32>();
                }
            }
            _ => unreachable!("the int8 dtypes' panels hold the q8 form"),
        }
    }

    pub fn finish(self) -> PackedKn {
        self.packed
    }
}

/// `len` zeros for panels. The caller has the weights, so only an out-of-memory failure (or
/// a dimension no matrix has) can reach the abort.
fn zeroed<T: Zeroed>(len: usize) -> HugeBuf<T> {
    HugeBuf::zeroed(len).unwrap_or_else(|e| e.abort())
}

/// Where weight `(kk, c)` of a `w8a8` panel lies within it: `[groups][nr][kq]`.
fn q_offset(kk: usize, c: usize, f: QFormat) -> usize {
    (kk / f.kq * f.nr + c) * f.kq + kk % f.kq
}

/// Writes `value(kk, c)` for the rows `rows` and columns `cols` of `[K][nr]` panels, one rayon
/// task per panel the columns touch.
fn place<T: Zeroed>(
    data: &mut [T],
    k: usize,
    nr: usize,
    cols: Range<usize>,
    rows: Range<usize>,
    value: impl Fn(usize, usize) -> T + Sync,
) {
    if k == 0 || cols.is_empty() {
        return;
    }
    let first = cols.start / nr;
    let panels = first..cols.end.div_ceil(nr);
    data[panels.start * k * nr..panels.end * k * nr].par_chunks_mut(k * nr).enumerate().for_each(|(i, panel)| {
        let p = first + i;
        let (from, to) = ((p * nr).max(cols.start), ((p + 1) * nr).min(cols.end));
        for kk in rows.clone() {
            let row = &mut panel[kk * nr..][..nr];
            for c in from..to {
                row[c - p * nr] = value(kk, c);
            }
        }
    });
}

/// The bf16 bits of `v` as `bf16dot` rounds weights and activations: to nearest, ties to even;
/// subnormal inputs to a zero of their sign (as AVX512-BF16's conversions treat them, so the
/// result is never a bf16 subnormal); NaN stays NaN (quiet). The independent definition is
/// `reference::bf16_round`.
#[inline(always)]
pub(crate) fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x7F80_0000 == 0 {
        (b >> 16) & 0x8000
    } else if v.is_nan() {
        (b >> 16) | 0x0040
    } else {
        // Adding 0x7FFF plus the lowest kept bit rounds half to even; a carry out of the
        // mantissa bumps the exponent (up to infinity), which is the correct rounding.
        (b + 0x7FFF + ((b >> 16) & 1)) >> 16
    }
}

/// [`place`] for `bf16dot`'s pair words (`[ceil(K / 2)][nr]` per panel): writes the bf16 bits
/// `value(kk, c)` into the low (even `kk`) or high (odd) half of its word, so any slicing of
/// rows or columns gives the bits of packing the whole matrix.
fn place_halves(
    data: &mut [u32],
    k: usize,
    nr: usize,
    cols: Range<usize>,
    rows: Range<usize>,
    value: impl Fn(usize, usize) -> u32 + Sync,
) {
    let pairs = k.div_ceil(2);
    if pairs == 0 || cols.is_empty() {
        return;
    }
    let first = cols.start / nr;
    let panels = first..cols.end.div_ceil(nr);
    data[panels.start * pairs * nr..panels.end * pairs * nr].par_chunks_mut(pairs * nr).enumerate().for_each(
        |(i, panel)| {
            let p = first + i;
            let (from, to) = ((p * nr).max(cols.start), ((p + 1) * nr).min(cols.end));
            for kk in rows.clone() {
                let (row, shift) = (&mut panel[kk / 2 * nr..][..nr], 16 * (kk % 2) as u32);
                for c in from..to {
                    let word = &mut row[c - p * nr];
                    *word = (*word & !(0xFFFF << shift)) | value(kk, c) << shift;
                }
            }
        },
    );
}
