//! Weight packing: GPT-2 `Conv1D` weights `[K, N]` rearranged once, at load time, into panels
//! of `NR` columns (the ISA's register-tile width) so the microkernel reads each panel as one
//! contiguous stream.
//!
//! Layout: panel `p` holds columns `p*NR .. p*NR+NR` as `[K][NR]` (row `k` of the panel is
//! `W[k, p*NR .. p*NR+NR]`), panels back to back; the last panel is zero-padded to `NR` columns.

use rayon::prelude::*;

/// A `[k, n]` weight matrix in panel layout.
pub struct PackedKn {
    k: usize,
    n: usize,
    nr: usize,
    data: Vec<f32>,
}

impl PackedKn {
    /// Packs row-major `w` (`[k, n]`) into panels `nr` columns wide (use
    /// [`Kernels::pack_kn`](crate::Kernels::pack_kn) for the width its ISA wants).
    pub fn pack(w: &[f32], k: usize, n: usize, nr: usize) -> PackedKn {
        assert!(nr > 0 && nr <= crate::ops::matmul::MAX_NR, "pack: unsupported panel width {nr}");
        assert_eq!(w.len(), k * n, "pack: weights are not [{k}, {n}]");
        let panels = n.div_ceil(nr);
        let mut data = vec![0.0f32; panels * k * nr];
        if k > 0 {
            data.par_chunks_mut(k * nr).enumerate().for_each(|(p, panel)| {
                let c0 = p * nr;
                let width = (n - c0).min(nr);
                for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
                    row[..width].copy_from_slice(&w[kk * n + c0..][..width]);
                }
            });
        }
        PackedKn { k, n, nr, data }
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

    /// The packed values (panels back to back).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}
