//! Attention for a step's rows: how the causal multi-head attention of a batch is split over
//! the team's threads, beside the products' split in `grid.rs`. Each task runs
//! [`Kernels::attend_heads`] for one row and one group of heads.

use crate::{team, Attention, Kernels, KvView};
use half::f16;
use std::cell::RefCell;

/// One sequence's cached keys and values for one layer, in the KV cache's storage type.
pub enum LayerKv<'a> {
    F32 { k: KvView<'a, f32>, v: KvView<'a, f32> },
    F16 { k: KvView<'a, f16>, v: KvView<'a, f16> },
}

/// The attention of a step's rows, each against its own sequence's cache.
pub struct AttentionRows<'a> {
    /// `[rows, 3 * n_head * head_dim]`: each row's query, key and value side by side (only the
    /// queries are read; the keys and values are already in the cache).
    pub qkv: &'a [f32],
    /// Per row: its sequence's index in `kv` and its position (it attends to positions
    /// `0..=pos`).
    pub rows: &'a [(usize, usize)],
    pub kv: &'a [LayerKv<'a>],
    pub n_head: usize,
    pub head_dim: usize,
}

thread_local! {
    /// A thread's attention scores for one task's heads (its size: heads x the context).
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Kernels {
    /// `out` (`[rows, n_head * head_dim]`, heads side by side) gets every row's attention. One
    /// task per row and group of heads: all heads of a group read each cached K/V row once,
    /// contiguously. Rows alone give enough tasks for batches; a lone row is split into head
    /// groups, as few as give every thread one, since the longer each cached token's contiguous
    /// run, the faster the cache streams (two groups a thread, 3 heads each on 2 threads, made
    /// batch-1 w8a8 decode 1.03-1.74x slower at 500-950 positions). How the heads are grouped
    /// never changes a result: each head performs exactly [`Kernels::attend`]'s operations.
    pub fn attention(&self, a: &AttentionRows, out: &mut [f32]) {
        let (nh, hd) = (a.n_head, a.head_dim);
        let e = nh * hd;
        assert!(a.qkv.len() >= a.rows.len() * 3 * e && out.len() >= a.rows.len() * e, "attention: short qkv or out");
        assert!(a.rows.iter().all(|&(s, _)| s < a.kv.len()), "attention: a row names no sequence");
        let scale = 1.0 / (hd as f32).sqrt();
        let want = team::threads().div_ceil(a.rows.len().max(1));
        let groups = (1..=nh).find(|&g| nh.is_multiple_of(g) && g >= want).unwrap_or(nh);
        let per = nh / groups;
        team::for_each_chunk_mut(&mut out[..a.rows.len() * e], per * hd, |idx, out| {
            let (r, group) = (idx / groups, idx % groups);
            let (seq, pos) = a.rows[r];
            let head_offset = group * per * hd;
            let q = &a.qkv[r * 3 * e + head_offset..][..per * hd];
            let len = pos + 1;
            SCORES.with_borrow_mut(|scores| {
                if scores.len() < per * len {
                    scores.resize(per * len, 0.0);
                }
                match a.kv[seq] {
                    LayerKv::F32 { k, v } => {
                        let at = Attention { q, k, v, head_offset, head_dim: hd, len, scale };
                        self.attend_heads(&at, per, out, scores);
                    }
                    LayerKv::F16 { k, v } => {
                        let at = Attention { q, k, v, head_offset, head_dim: hd, len, scale };
                        self.attend_heads_f16(&at, per, out, scores);
                    }
                }
            })
        });
    }
}
