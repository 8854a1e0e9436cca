//! `w4a8` weights: symmetric 4-bit values in groups of [`W4_GROUP`] consecutive k per output
//! column, one f32 scale per (group, column), stored two values per byte in an ISA's panel
//! layout (see [`W4Format`]).
//!
//! Two steps, so a converter can save the quantized values and pack them later for whatever ISA
//! loads them: [`W4Values`] holds the ISA-independent values (`[k, n]` 4-bit integers and
//! `[groups, n]` scales), [`PackedKn::pack_w4`] lays them out for one ISA.
//!
//! Quantization (llama.cpp's `q4_0` rule, chosen over `-7..=7` for its lower KL, see
//! [`W4Values::quantize`]): per group, `d = m / -8` where `m` is the value of largest magnitude
//! (the first in k order on ties), each value `q = round(w / d)` (half away from zero) clamped
//! to `-8..=7`; `w ~ q * d`. The largest value is exact (`q = -8`) and all 16 levels are used.

use crate::buffer::HugeBuf;
use crate::pack::{Layout, PackedKn, Panels};
use rayon::prelude::*;

/// Consecutive k sharing one scale per column.
pub const W4_GROUP: usize = 32;

/// Consecutive k per i32 lane of an unpacked weight vector and per activation word (4 bytes).
pub const W4_KQ: usize = 4;

/// Added to each 4-bit value when it is stored: nibbles are unsigned (`0..=15`), which is what
/// both `vpmaddubsw` (AVX2) and `vpdpbusd` (VNNI) take as their unsigned operand, so the
/// activations stay signed and no nibble needs sign extension. The kernels subtract
/// `W4_OFFSET * sum(x)` per row and group (exact integers) from each group's dot product.
pub const W4_OFFSET: i32 = 8;

/// How an ISA's kernel wants `w4a8` panels: `nr` columns per panel. Within a panel, for each
/// pair of [`W4_KQ`]-deep k steps (`2 * W4_KQ` consecutive k, never straddling a group), `nr *
/// W4_KQ` bytes `[nr][W4_KQ]`: byte `(c, j)` holds `W4_OFFSET + q` of column `c` at the pair's
/// k `j` in its low nibble and at k `W4_KQ + j` in its high nibble. A load of `LANES * W4_KQ`
/// bytes thus unpacks (mask, shift and mask) into the weight vectors of two consecutive steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct W4Format {
    pub nr: usize,
}

/// Bytes of one panel's group: `W4_GROUP / 2` bytes per column.
pub(crate) fn group_bytes(nr: usize) -> usize {
    W4_GROUP / 2 * nr
}

/// `(byte, high nibble?)` of weight `(kk, c)` within its panel.
fn nibble_at(kk: usize, c: usize, f: W4Format) -> (usize, bool) {
    ((kk / (2 * W4_KQ) * f.nr + c) * W4_KQ + kk % W4_KQ, (kk / W4_KQ) % 2 == 1)
}

/// `w4a8` weights before packing, independent of any ISA: `q` is `[k, n]` row-major with every
/// value in `-8..=7`, `scale` is `[k.div_ceil(W4_GROUP), n]`; weight `(kk, c)` stands for
/// `q[kk * n + c] * scale[(kk / W4_GROUP) * n + c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct W4Values {
    k: usize,
    n: usize,
    q: Vec<i8>,
    scale: Vec<f32>,
}

impl W4Values {
    /// Quantizes `w` (`[k, n]` as `layout`): per group of [`W4_GROUP`] k and column, `d = m /
    /// -8` with `m` the value of largest magnitude (first on ties), `q = round(w / d)` half away
    /// from zero, clamped to `-8..=7` (`d = 0`: all zero).
    ///
    /// Why this rule and not `-7..=7` with `d = max |w| / 7`: it spends all 16 levels (the
    /// group's largest value is stored exactly as -8), a finer step for the same range. Mean
    /// KL(f32 || w4a8) over 64 positions (tests/dtype_quality.rs), this rule against `-7..=7`:
    /// 1.17e-2 against 1.49e-2 on the 124M GPT-2 shape with random weights, 1.00e-2 against
    /// 1.30e-2 on distilgpt2's, 8.1e-5 against 1.2e-4 on the hub-micro fixture.
    pub fn quantize(w: &[f32], layout: Layout, k: usize, n: usize) -> W4Values {
        assert_eq!(w.len(), k * n, "W4Values::quantize: weights are not {k} x {n}");
        let at = |kk: usize, c: usize| match layout {
            Layout::KN => w[kk * n + c],
            Layout::NK => w[c * k + kk],
        };
        let groups = k.div_ceil(W4_GROUP);
        let scale: Vec<f32> = (0..groups * n)
            .into_par_iter()
            .map(|i| {
                let (g, c) = (i / n, i % n);
                let m = (g * W4_GROUP..k.min(g * W4_GROUP + W4_GROUP)).map(|kk| at(kk, c)).fold(0.0f32, |m, v| {
                    if v.abs() > m.abs() {
                        v
                    } else {
                        m
                    }
                });
                m / -8.0
            })
            .collect();
        let mut q = vec![0i8; k * n];
        q.par_chunks_mut(n.max(1)).enumerate().for_each(|(kk, row)| {
            for (c, v) in row.iter_mut().enumerate() {
                *v = quantize4(at(kk, c), scale[kk / W4_GROUP * n + c]);
            }
        });
        W4Values { k, n, q, scale }
    }

    /// Values quantized elsewhere (a saved model): `q` `[k, n]` in `-8..=7`, `scale` `[groups,
    /// n]` finite. Errors name the first value out of range.
    pub fn new(k: usize, n: usize, q: Vec<i8>, scale: Vec<f32>) -> Result<W4Values, String> {
        let groups = k.div_ceil(W4_GROUP);
        if q.len() != k * n {
            return Err(format!("w4a8 values: {} values for a {k} x {n} matrix", q.len()));
        }
        if scale.len() != groups * n {
            return Err(format!("w4a8 scales: {} for {groups} groups x {n} columns", scale.len()));
        }
        if let Some(i) = q.iter().position(|v| !(-8..=7).contains(v)) {
            return Err(format!("w4a8 value {} at ({}, {}) is outside -8..=7", q[i], i / n, i % n));
        }
        if let Some(i) = scale.iter().position(|s| !s.is_finite()) {
            return Err(format!("w4a8 scale {} at group {}, column {} is not finite", scale[i], i / n, i % n));
        }
        Ok(W4Values { k, n, q, scale })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// `[k, n]` values in `-8..=7`.
    pub fn q(&self) -> &[i8] {
        &self.q
    }

    /// `[k.div_ceil(W4_GROUP), n]` scales.
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }
}

/// `round(v / d)` half away from zero, clamped to `-8..=7`; 0 when `d` is 0.
fn quantize4(v: f32, d: f32) -> i8 {
    if d == 0.0 {
        0
    } else {
        (v / d).round().clamp(-8.0, 7.0) as i8
    }
}

impl PackedKn {
    /// Packs quantized `w4a8` values into panels of format `f` (use
    /// [`Kernels::pack`](crate::Kernels::pack) or [`Kernels::pack_w4`](crate::Kernels::pack_w4)
    /// for the format its ISA wants). k is padded with zeros to whole groups, n to whole panels
    /// (scale 0).
    pub fn pack_w4(v: &W4Values, f: W4Format) -> PackedKn {
        let W4Values { k, n, .. } = *v;
        let nr = f.nr;
        assert!(nr > 0 && nr <= crate::ops::matmul::MAX_NR, "pack_w4: unsupported panel width {nr}");
        let (groups, panels) = (k.div_ceil(W4_GROUP), n.div_ceil(nr));
        let panel_len = groups * group_bytes(nr);
        // The weights exist, so only an out-of-memory failure can reach here.
        let mut q = HugeBuf::<u8>::zeroed(panels * panel_len).unwrap_or_else(|e| e.abort());
        let mut scale = HugeBuf::<f32>::zeroed(panels * groups * nr).unwrap_or_else(|e| e.abort());
        if panel_len > 0 {
            q.par_chunks_mut(panel_len).enumerate().for_each(|(p, panel)| {
                // Zero is stored as the offset: padding k and columns hold q = 0.
                panel.fill(0x88);
                for c in 0..(n - p * nr).min(nr) {
                    for kk in 0..k {
                        let (byte, high) = nibble_at(kk, c, f);
                        let u = (v.q[kk * n + p * nr + c] as i32 + W4_OFFSET) as u8;
                        panel[byte] = if high { (panel[byte] & 0x0f) | u << 4 } else { (panel[byte] & 0xf0) | u };
                    }
                }
            });
            scale.par_chunks_mut(groups * nr).enumerate().for_each(|(p, s)| {
                for g in 0..groups {
                    for c in 0..(n - p * nr).min(nr) {
                        s[g * nr + c] = v.scale[g * n + p * nr + c];
                    }
                }
            });
        }
        PackedKn::from_panels(k, n, nr, Panels::W4 { q, scale, format: f })
    }

    /// The ISA-independent values of `w4a8` weights (`None` for any other dtype): what a
    /// converter saves, and what [`PackedKn::pack_w4`] packs again, bitwise the same.
    pub fn w4_values(&self) -> Option<W4Values> {
        let Panels::W4 { q, scale, format } = self.panels() else { return None };
        let (k, n, nr) = (self.k(), self.n(), format.nr);
        let groups = k.div_ceil(W4_GROUP);
        let panel_len = groups * group_bytes(nr);
        let mut values = vec![0i8; k * n];
        let mut scales = vec![0.0f32; groups * n];
        for c in 0..n {
            let (p, off) = (c / nr, c % nr);
            for kk in 0..k {
                let (byte, high) = nibble_at(kk, off, *format);
                let b = q[p * panel_len + byte];
                values[kk * n + c] = (if high { b >> 4 } else { b & 0x0f }) as i8 - W4_OFFSET as i8;
            }
            for g in 0..groups {
                scales[g * n + c] = scale[(p * groups + g) * nr + off];
            }
        }
        Some(W4Values { k, n, q: values, scale: scales })
    }
}

/// Column `col` of packed `w4a8` weights (`k` values), dequantized.
pub(crate) fn w4_column(q: &[u8], scale: &[f32], f: W4Format, k: usize, col: usize, out: &mut [f32]) {
    let groups = k.div_ceil(W4_GROUP);
    let (p, off) = (col / f.nr, col % f.nr);
    let panel = &q[p * groups * group_bytes(f.nr)..];
    for (kk, o) in out.iter_mut().enumerate() {
        let (byte, high) = nibble_at(kk, off, f);
        let u = if high { panel[byte] >> 4 } else { panel[byte] & 0x0f };
        *o = (u as i32 - W4_OFFSET) as f32 * scale[(p * groups + kk / W4_GROUP) * f.nr + off];
    }
}

/// `[k, n]` `w4a8` panels of format `f` holding zeros (every nibble the offset, every scale 0),
/// for a [`PackBuilder`](crate::PackBuilder) to fill.
pub(crate) fn empty_w4(k: usize, n: usize, f: W4Format) -> PackedKn {
    let (groups, panels) = (k.div_ceil(W4_GROUP), n.div_ceil(f.nr));
    // The caller has the weights, so only an out-of-memory failure can reach the aborts.
    let mut q = HugeBuf::<u8>::zeroed(panels * groups * group_bytes(f.nr)).unwrap_or_else(|e| e.abort());
    q.fill(0x88);
    let scale = HugeBuf::<f32>::zeroed(panels * groups * f.nr).unwrap_or_else(|e| e.abort());
    PackedKn::from_panels(k, n, f.nr, Panels::W4 { q, scale, format: f })
}

/// Writes the columns of `v` (`[k, cols]` values and scales) into `w4a8` panels at columns
/// `c0..c0 + cols`, bit for bit as [`PackedKn::pack_w4`] places them.
pub(crate) fn place_w4_columns(q: &mut [u8], scale: &mut [f32], f: W4Format, k: usize, c0: usize, v: &W4Values) {
    let (groups, cols) = (k.div_ceil(W4_GROUP), v.n);
    let panel_len = groups * group_bytes(f.nr);
    for c in 0..cols {
        let (p, off) = ((c0 + c) / f.nr, (c0 + c) % f.nr);
        let panel = &mut q[p * panel_len..][..panel_len];
        for kk in 0..k {
            let (byte, high) = nibble_at(kk, off, f);
            let u = (v.q[kk * cols + c] as i32 + W4_OFFSET) as u8;
            panel[byte] = if high { (panel[byte] & 0x0f) | u << 4 } else { (panel[byte] & 0xf0) | u };
        }
        for g in 0..groups {
            scale[(p * groups + g) * f.nr + off] = v.scale[g * cols + c];
        }
    }
}
