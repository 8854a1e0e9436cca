//! Per-sequence KV cache in fixed-size blocks.
//!
//! A block holds `BLOCK_TOKENS` positions of every layer's keys and values:
//! `[n_layer][2 (k, v)][BLOCK_TOKENS][n_embd]`. Attention kernels read it through
//! [`inferneo_kernels::KvView`], so the layout is shared with the paged pool that serves batches.

use crate::config::Config;
use inferneo_kernels::KvView;

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;

pub struct KvCache {
    n_layer: usize,
    n_embd: usize,
    blocks: Vec<Box<[f32]>>,
    len: usize,
}

impl KvCache {
    pub fn new(config: &Config) -> KvCache {
        KvCache { n_layer: config.n_layer, n_embd: config.n_embd, blocks: Vec::new(), len: 0 }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn block_len(&self) -> usize {
        self.n_layer * 2 * BLOCK_TOKENS * self.n_embd
    }

    /// Makes room for `extra` more positions (allocating blocks) and returns the first new one.
    pub fn grow(&mut self, extra: usize) -> usize {
        let start = self.len;
        self.len += extra;
        while self.blocks.len() * BLOCK_TOKENS < self.len {
            self.blocks.push(vec![0.0; self.block_len()].into_boxed_slice());
        }
        start
    }

    /// Drops positions `len..`, keeping the blocks.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn offset(&self, layer: usize, kv: usize, pos: usize) -> usize {
        ((layer * 2 + kv) * BLOCK_TOKENS + pos % BLOCK_TOKENS) * self.n_embd
    }

    /// Stores the key and value rows (`[n_embd]` each) of position `pos` in `layer`.
    pub fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (ko, vo, c) = (self.offset(layer, 0, pos), self.offset(layer, 1, pos), self.n_embd);
        let block = &mut self.blocks[pos / BLOCK_TOKENS];
        block[ko..ko + c].copy_from_slice(k);
        block[vo..vo + c].copy_from_slice(v);
    }

    /// Block slices of `layer`'s keys (`kv = 0`) or values (`kv = 1`), for building a [`KvView`].
    pub fn layer_blocks(&self, layer: usize, kv: usize) -> Vec<&[f32]> {
        let span = BLOCK_TOKENS * self.n_embd;
        let start = (layer * 2 + kv) * span;
        self.blocks.iter().map(|b| &b[start..start + span]).collect()
    }

    pub fn view<'a>(&self, blocks: &'a [&'a [f32]]) -> KvView<'a> {
        KvView { blocks, block_tokens: BLOCK_TOKENS, token_stride: self.n_embd }
    }
}
