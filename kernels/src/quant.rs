//! Quantized weights in their stored, ISA-independent form: what `inferneo convert` writes and
//! a converted model's loader reads, and the one place a float matrix is quantized.
//!
//! A quantized matrix of the graph's `[k, n]` (`k` inputs, `n` output columns) is held column
//! by column: each output column's `k` values are contiguous (row-major `[n, k]`, the layout of
//! `nn.Linear` and of the tied `wte`), with that column's scales beside them. Packing for an
//! ISA (panels, integer-dot groups, column sums) happens at load, from this form
//! ([`crate::PackBuilder::put_quantized`]); packing from f32 goes through it too, so a matrix
//! quantized here and stored gives the same packed bits as the f32 matrix packed directly.
//!
//! Adding a form (say group-wise 4-bit along `k`): a [`QuantForm`] variant (its name is the
//! stored tensors' suffix), a [`Quantized`] variant holding its values and scales, its
//! quantizer in [`Quantized::quantize`] and [`Quantized::quantize_kn_rows`], and its placement
//! in the panels of the dtype that uses it (`pack.rs`).

use crate::{Layout, W4Values, W4_GROUP};
use rayon::prelude::*;
use std::ops::Range;

/// How a quantized dtype's matrices are stored. Dtypes with the same form store the same
/// values: `int8` and `w8a8` quantize weights identically and differ only in what their products
/// do with the activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantForm {
    /// Symmetric int8, one f32 scale per output column (`max |w| / 127`).
    Q8,
    /// `w4a8`'s 4-bit values in groups of [`W4_GROUP`] k, one f32 scale per group and column
    /// ([`W4Values`]).
    Q4,
}

impl QuantForm {
    /// The form's name, also the suffix of its stored value tensors (`h.0.mlp.c_fc.weight.q8`).
    pub fn name(self) -> &'static str {
        match self {
            QuantForm::Q8 => "q8",
            QuantForm::Q4 => "q4",
        }
    }
}

/// Whole columns of a quantized matrix, in [`QuantForm`] `form`'s stored layout.
#[derive(Clone, Debug, PartialEq)]
pub enum Quantized {
    /// [`QuantForm::Q8`]: `q` is `[cols, k]` row-major (column `c`'s values at `q[c * k..][..k]`),
    /// `scale` one per column.
    Q8 { q: Vec<i8>, scale: Vec<f32> },
    /// [`QuantForm::Q4`]: the columns as [`W4Values`] of `k` rows and `cols` columns (its own
    /// layout: `[k, cols]` values, `[groups, cols]` scales).
    Q4(W4Values),
}

impl Quantized {
    pub fn form(&self) -> QuantForm {
        match self {
            Quantized::Q8 { .. } => QuantForm::Q8,
            Quantized::Q4(_) => QuantForm::Q4,
        }
    }

    /// Number of columns held.
    pub fn cols(&self) -> usize {
        match self {
            Quantized::Q8 { scale, .. } => scale.len(),
            Quantized::Q4(v) => v.n(),
        }
    }

    /// Quantizes `cols` whole columns of `k` values each, `w` laid out as `layout` (`[k, cols]`
    /// or `[cols, k]`).
    pub fn quantize(form: QuantForm, w: &[f32], layout: Layout, k: usize, cols: usize) -> Quantized {
        assert_eq!(w.len(), k * cols, "quantize: weights are not {k} x {cols}");
        let at = |kk: usize, c: usize| match layout {
            Layout::KN => w[kk * cols + c],
            Layout::NK => w[c * k + kk],
        };
        match form {
            QuantForm::Q8 => {
                let scale: Vec<f32> = (0..cols)
                    .into_par_iter()
                    .map(|c| (0..k).fold(0.0f32, |m, kk| absmax(m, at(kk, c))) / 127.0)
                    .collect();
                let mut q = vec![0i8; k * cols];
                if k > 0 {
                    q.par_chunks_mut(k).enumerate().for_each(|(c, col)| {
                        for (kk, v) in col.iter_mut().enumerate() {
                            *v = quantize_q8(at(kk, c), scale[c]);
                        }
                    });
                }
                Quantized::Q8 { q, scale }
            }
            QuantForm::Q4 => Quantized::Q4(W4Values::quantize(w, layout, k, cols)),
        }
    }

    /// Columns `cols` of these (`k` values each), as their own [`Quantized`].
    pub fn columns(&self, k: usize, cols: Range<usize>) -> Quantized {
        match self {
            Quantized::Q8 { q, scale } => {
                Quantized::Q8 { q: q[cols.start * k..cols.end * k].to_vec(), scale: scale[cols].to_vec() }
            }
            Quantized::Q4(v) => {
                let n = v.n();
                let pick = |a: &[f32], rows: usize| -> Vec<f32> {
                    (0..rows).flat_map(|r| a[r * n..][cols.clone()].iter().copied()).collect()
                };
                let q: Vec<i8> = (0..k).flat_map(|r| v.q()[r * n..][cols.clone()].iter().copied()).collect();
                let scale = pick(v.scale(), k.div_ceil(W4_GROUP));
                Quantized::Q4(W4Values::new(k, cols.len(), q, scale).expect("columns of valid values"))
            }
        }
    }

    /// [`Quantized::quantize`] of a `[k, n]` matrix read `step` rows at a time, so its f32
    /// values are never held whole: `rows(range)` returns those rows (`[range.len(), n]`). It
    /// is called twice per slice for [`QuantForm::Q8`] (the column scales, then the values) and
    /// once for [`QuantForm::Q4`] (whose slices are rounded up to whole groups of k), in order.
    /// Bitwise equal to quantizing the whole matrix.
    pub fn quantize_kn_rows<E>(
        form: QuantForm,
        k: usize,
        n: usize,
        step: usize,
        mut rows: impl FnMut(Range<usize>) -> Result<Vec<f32>, E>,
    ) -> Result<Quantized, E> {
        assert!(step > 0, "quantize_kn_rows: empty slices");
        let slices = || (0..k).step_by(step).map(move |k0| k0..(k0 + step).min(k));
        match form {
            QuantForm::Q8 => {
                // Each column's running max over k in increasing order: the same fold as
                // `quantize`, so the same scale to the bit.
                let mut scale = vec![0.0f32; n];
                for r in slices() {
                    let w = rows(r.clone())?;
                    assert_eq!(w.len(), r.len() * n, "quantize_kn_rows: a slice is not {} x {n}", r.len());
                    scale.par_chunks_mut(256).enumerate().for_each(|(chunk, m)| {
                        for row in w.chunks_exact(n) {
                            for (i, m) in m.iter_mut().enumerate() {
                                *m = absmax(*m, row[chunk * 256 + i]);
                            }
                        }
                    });
                }
                scale.iter_mut().for_each(|s| *s /= 127.0);
                let mut q = vec![0i8; k * n];
                for r in slices() {
                    let w = rows(r.clone())?;
                    assert_eq!(w.len(), r.len() * n, "quantize_kn_rows: a slice is not {} x {n}", r.len());
                    if k > 0 {
                        q.par_chunks_mut(k).enumerate().for_each(|(c, col)| {
                            for (kk, v) in col[r.clone()].iter_mut().enumerate() {
                                *v = quantize_q8(w[kk * n + c], scale[c]);
                            }
                        });
                    }
                }
                Ok(Quantized::Q8 { q, scale })
            }
            QuantForm::Q4 => {
                // Each slice is whole groups, and a group's values and scale depend on it alone.
                let step = step.next_multiple_of(W4_GROUP);
                let (mut q, mut scale) = (Vec::with_capacity(k * n), Vec::new());
                for r in (0..k).step_by(step).map(|k0| k0..(k0 + step).min(k)) {
                    let w = rows(r.clone())?;
                    assert_eq!(w.len(), r.len() * n, "quantize_kn_rows: a slice is not {} x {n}", r.len());
                    let v = W4Values::quantize(&w, Layout::KN, r.len(), n);
                    q.extend_from_slice(v.q());
                    scale.extend_from_slice(v.scale());
                }
                Ok(Quantized::Q4(W4Values::new(k, n, q, scale).expect("values of a quantizer")))
            }
        }
    }

    /// The f32 value of weight `kk` of column `c` (`q * scale`), as products and embedding
    /// lookups use it.
    pub fn dequantize(&self, k: usize, kk: usize, c: usize) -> f32 {
        match self {
            Quantized::Q8 { q, scale } => q[c * k + kk] as f32 * scale[c],
            Quantized::Q4(v) => {
                let n = v.n();
                v.q()[kk * n + c] as f32 * v.scale()[kk / W4_GROUP * n + c]
            }
        }
    }
}

fn absmax(m: f32, v: f32) -> f32 {
    m.max(v.abs())
}

/// Rounds `v / scale` to the nearest int8 in `[-127, 127]`; a zero scale (an all-zero column)
/// gives zeros.
pub(crate) fn quantize_q8(v: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        0
    } else {
        (v / scale).round().clamp(-127.0, 127.0) as i8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(k: usize, n: usize) -> Vec<f32> {
        (0..k * n).map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 1e-3).collect()
    }

    #[test]
    fn layouts_and_row_slices_quantize_alike() {
        for (k, n) in [(1, 1), (5, 3), (64, 37), (33, 100)] {
            let w = matrix(k, n);
            let mut t = vec![0.0f32; k * n];
            for kk in 0..k {
                for c in 0..n {
                    t[c * k + kk] = w[kk * n + c];
                }
            }
            for form in [QuantForm::Q8, QuantForm::Q4] {
                let kn = Quantized::quantize(form, &w, Layout::KN, k, n);
                assert_eq!(kn, Quantized::quantize(form, &t, Layout::NK, k, n));
                for step in [1, 2, 7, 64] {
                    let mut calls = 0;
                    let sliced = Quantized::quantize_kn_rows::<()>(form, k, n, step, |r| {
                        calls += 1;
                        Ok(w[r.start * n..r.end * n].to_vec())
                    })
                    .unwrap();
                    assert_eq!(sliced, kn, "{form:?} k {k} n {n} step {step}");
                    let passes = if form == QuantForm::Q8 {
                        2 * k.div_ceil(step)
                    } else {
                        k.div_ceil(step.next_multiple_of(32))
                    };
                    assert_eq!(calls, passes);
                    // Column slices put back together are the whole.
                    let mid = n / 2;
                    let (a, b) = (kn.columns(k, 0..mid), kn.columns(k, mid..n));
                    assert_eq!((a.cols(), b.cols()), (mid, n - mid));
                    for c in 0..n {
                        let part = if c < mid { (&a, c) } else { (&b, c - mid) };
                        for kk in 0..k {
                            assert_eq!(part.0.dequantize(k, kk, part.1).to_bits(), kn.dequantize(k, kk, c).to_bits());
                        }
                    }
                }
            }
            let kn = Quantized::quantize(QuantForm::Q8, &w, Layout::KN, k, n);
            // The largest magnitude of each column maps to +-127, and values round-trip
            // within half a step.
            let Quantized::Q8 { q, scale } = &kn else { unreachable!("quantized as q8") };
            for c in 0..n {
                let col = &q[c * k..][..k];
                assert_eq!(col.iter().map(|v| v.unsigned_abs()).max(), Some(127), "column {c}");
                for kk in 0..k {
                    let err = (kn.dequantize(k, kk, c) - w[kk * n + c]).abs();
                    assert!(err <= scale[c] * 0.5 + 1e-7, "({kk}, {c}): error {err}");
                }
            }
        }
    }

    #[test]
    fn zero_columns_have_zero_scales_and_values() {
        let q = Quantized::quantize(QuantForm::Q8, &[0.0; 6], Layout::KN, 3, 2);
        assert_eq!(q, Quantized::Q8 { q: vec![0; 6], scale: vec![0.0; 2] });
    }

    #[test]
    fn a_reader_error_stops_quantizing() {
        let r = Quantized::quantize_kn_rows(QuantForm::Q8, 4, 2, 2, |r| {
            if r.start == 2 {
                Err("bad")
            } else {
                Ok(vec![1.0; 4])
            }
        });
        assert_eq!(r, Err("bad"));
    }
}
