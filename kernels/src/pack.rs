//! Weight packing: a `[K, N]` matrix rearranged once, at load time, into panels of `NR` columns
//! (the ISA's register-tile width) so the microkernel reads each panel as one contiguous stream,
//! optionally converted to a narrower storage type.
//!
//! Layout: panel `p` holds columns `p*NR .. p*NR+NR` as `[K][NR]` (row `k` of the panel is
//! `W[k, p*NR .. p*NR+NR]`), panels back to back; the last panel is zero-padded to `NR` columns.

use crate::buffer::{HugeBuf, Zeroed};
use half::{bf16, f16};
use rayon::prelude::*;
use std::fmt;
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
        assert!(dtype != WeightDtype::W8a8, "pack: w8a8 needs its ISA's QFormat (pack_int_dot)");
        assert!(dtype != WeightDtype::W4a8, "pack: w4a8 needs its ISA's W4Format (pack_w4)");
        assert!(nr > 0 && nr <= crate::ops::matmul::MAX_NR, "pack: unsupported panel width {nr}");
        let at = reader(w, layout, k, n);
        let padded = n.div_ceil(nr) * nr;
        let panels = match dtype {
            WeightDtype::F32 => Panels::F32(fill(k, n, nr, at)),
            WeightDtype::F16 => Panels::F16(fill(k, n, nr, |kk, c| f16::from_f32(at(kk, c)))),
            WeightDtype::Bf16 => Panels::Bf16(fill(k, n, nr, |kk, c| bf16::from_f32(at(kk, c)))),
            WeightDtype::Int8 => {
                let scale = column_scales(k, n, padded, &at);
                let q = fill(k, n, nr, |kk, c| quantize(at(kk, c), scale[c]));
                Panels::Int8 { q, scale }
            }
            WeightDtype::Bf16dot => Panels::Bf16Pairs(fill(k.div_ceil(2), n, nr, |i, c| {
                let hi = if 2 * i + 1 < k { bf16_bits(at(2 * i + 1, c)) } else { 0 };
                hi << 16 | bf16_bits(at(2 * i, c))
            })),
            WeightDtype::W8a8 | WeightDtype::W4a8 => unreachable!("checked above"),
        };
        PackedKn { k, n, nr, panels }
    }

    /// Packs `w` for an integer-dot kernel of format `f`: int8 values exactly as
    /// [`WeightDtype::Int8`] quantizes them, for products whose activations are quantized as
    /// `acts` says (`w8a8`, or `int8` where the kernel takes 24-bit activations).
    pub fn pack_int_dot(w: &[f32], layout: Layout, k: usize, n: usize, f: QFormat, acts: ActQuant) -> PackedKn {
        let QFormat { nr, kq, offset } = f;
        assert!(nr > 0 && kq > 0, "pack_int_dot: bad format {f:?}");
        let at = reader(w, layout, k, n);
        let padded = n.div_ceil(nr) * nr;
        let scale = column_scales(k, n, padded, &at);
        let groups = k.div_ceil(kq);
        // As in `fill`: the weights exist, so only an out-of-memory failure can reach here.
        let mut q = HugeBuf::<i8>::zeroed(padded * groups * kq).unwrap_or_else(|e| e.abort());
        if k > 0 {
            q.par_chunks_mut(groups * nr * kq).enumerate().for_each(|(p, panel)| {
                for c in 0..(n - p * nr).min(nr) {
                    for kk in 0..k {
                        panel[q_offset(kk, c, f)] = quantize(at(kk, p * nr + c), scale[p * nr + c]);
                    }
                }
            });
        }
        let corr = (0..padded)
            .into_par_iter()
            .map(|c| {
                let panel = &q[c / nr * groups * nr * kq..];
                offset * (0..k).map(|kk| panel[q_offset(kk, c % nr, f)] as i32).sum::<i32>()
            })
            .collect();
        PackedKn { k, n, nr, panels: Panels::IntDot { q, scale, corr, format: f, acts } }
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

/// `W[kk, col]` of `w` stored as `layout`.
fn reader(w: &[f32], layout: Layout, k: usize, n: usize) -> impl Fn(usize, usize) -> f32 + Sync + '_ {
    assert_eq!(w.len(), k * n, "pack: weights are not {k} x {n}");
    move |kk, col| match layout {
        Layout::KN => w[kk * n + col],
        Layout::NK => w[col * k + kk],
    }
}

/// Where weight `(kk, c)` of a `w8a8` panel lies within it: `[groups][nr][kq]`.
fn q_offset(kk: usize, c: usize, f: QFormat) -> usize {
    (kk / f.kq * f.nr + c) * f.kq + kk % f.kq
}

/// Symmetric per-column int8 scales (`max |w| / 127`), zero for the padding columns.
fn column_scales(k: usize, n: usize, padded: usize, at: &(impl Fn(usize, usize) -> f32 + Sync)) -> Vec<f32> {
    (0..padded)
        .into_par_iter()
        .map(|c| if c < n { (0..k).fold(0.0f32, |m, kk| m.max(at(kk, c).abs())) / 127.0 } else { 0.0 })
        .collect()
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

fn quantize(v: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        0
    } else {
        (v / scale).round().clamp(-127.0, 127.0) as i8
    }
}

/// Builds the panel array, one panel per rayon task.
fn fill<T: Zeroed>(k: usize, n: usize, nr: usize, value: impl Fn(usize, usize) -> T + Sync) -> HugeBuf<T> {
    let panels = n.div_ceil(nr);
    // The caller's weights are `k * n` values, so only an out-of-memory failure can reach here.
    let mut data = HugeBuf::zeroed(panels * k * nr).unwrap_or_else(|e| e.abort());
    if k > 0 {
        data.par_chunks_mut(k * nr).enumerate().for_each(|(p, panel)| {
            let c0 = p * nr;
            let width = (n - c0).min(nr);
            for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
                for (i, v) in row[..width].iter_mut().enumerate() {
                    *v = value(kk, c0 + i);
                }
            }
        });
    }
    data
}
