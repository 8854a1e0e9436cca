//! Weight packing: GPT-2 `Conv1D` weights `[K, N]` rearranged once, at load time, into panels
//! of `KN_NR` columns so the microkernel reads each panel as one contiguous stream.
//!
//! Layout: panel `p` holds columns `p*NR .. p*NR+NR` as `[K][NR]` (row `k` of the panel is
//! `W[k, p*NR .. p*NR+NR]`), panels back to back; the last panel is zero-padded to `NR` columns.

use crate::ops::matmul::KN_NR;
use rayon::prelude::*;

/// A `[k, n]` weight matrix in panel layout.
pub struct PackedKn {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedKn {
    /// Packs row-major `w` (`[k, n]`).
    pub fn pack(w: &[f32], k: usize, n: usize) -> PackedKn {
        assert_eq!(w.len(), k * n, "pack: weights are not [{k}, {n}]");
        let panels = n.div_ceil(KN_NR);
        let mut data = vec![0.0f32; panels * k * KN_NR];
        if k > 0 {
            data.par_chunks_mut(k * KN_NR).enumerate().for_each(|(p, panel)| {
                let c0 = p * KN_NR;
                let width = (n - c0).min(KN_NR);
                for (kk, row) in panel.chunks_exact_mut(KN_NR).enumerate() {
                    row[..width].copy_from_slice(&w[kk * n + c0..][..width]);
                }
            });
        }
        PackedKn { k, n, data }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
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
