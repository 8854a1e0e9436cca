//! Paged KV cache: one pool of fixed-size blocks shared by all sequences, and a block table per
//! sequence.
//!
//! A block holds `BLOCK_TOKENS` positions of every layer's keys and values:
//! `[n_layer][2 (k, v)][BLOCK_TOKENS][n_embd]`. Attention reads it through
//! [`inferneo_kernels::KvView`]. Blocks are reference-counted so sequences can share a prefix;
//! writing into a shared block copies it first (copy-on-write). A [`BlockTable`] returns its
//! blocks when dropped, so cancellation and error paths cannot leak them.
//!
//! Prefix caching: a full block whose keys and values are final can be committed under its
//! prefix (the committed prefix before it plus its own tokens). Another sequence starting with
//! the same tokens then shares it instead of recomputing it ([`KvPool::lookup_prefix`]). A
//! committed block nobody uses is kept, still findable, until its space is needed: it counts as
//! free, and taking a block evicts the least recently released one. Reuse is exact, not
//! approximate: the kernels compute a position's keys and values bitwise the same however the
//! positions are batched or chunked, so a shared block holds what recomputing would write.

use crate::config::Config;
use crate::error::{Error, Result};
use half::f16;
use inferneo_kernels::{AllocError, HugeBuf, KvView};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;

/// Free list, reference counts and the prefix cache. Shared (behind a mutex) with every block
/// table, which is what lets a table hand its blocks back on drop from any thread.
#[derive(Debug)]
struct Allocator {
    refcount: Vec<u32>,
    /// Unused blocks holding nothing worth keeping.
    free: Vec<u32>,
    prefix: PrefixCache,
}

/// Identifies a full block's contents exactly: the node of the committed prefix before it (0 at
/// the start of a sequence) and its tokens. The map compares whole keys, so distinct prefixes
/// can never be confused, whatever their hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PrefixKey {
    parent: u64,
    tokens: [u32; BLOCK_TOKENS],
}

#[derive(Clone, Copy, Debug)]
struct Committed {
    /// Names the prefix ending with this block; never reused, so a key naming an evicted
    /// parent can never match again.
    node: u64,
    block: u32,
}

#[derive(Debug)]
struct PrefixCache {
    map: HashMap<PrefixKey, Committed>,
    /// Per block: its key while committed.
    key: Vec<Option<PrefixKey>>,
    /// Committed blocks with no user, by release time: the eviction order.
    idle: BTreeMap<u64, u32>,
    /// Per block: its key in `idle` while there.
    idle_since: Vec<u64>,
    clock: u64,
    next_node: u64,
}

impl Allocator {
    fn new(n_blocks: usize) -> Allocator {
        Allocator {
            refcount: vec![0; n_blocks],
            free: (0..n_blocks as u32).rev().collect(),
            prefix: PrefixCache {
                map: HashMap::new(),
                key: vec![None; n_blocks],
                idle: BTreeMap::new(),
                idle_since: vec![0; n_blocks],
                clock: 0,
                next_node: 1,
            },
        }
    }

    /// Blocks that can be taken: the free ones and the idle committed ones.
    fn available(&self) -> usize {
        self.free.len() + self.prefix.idle.len()
    }

    /// A block for new contents: a free one, else the least recently released committed one,
    /// which leaves the prefix cache.
    fn take(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.prefix.idle.pop_first()?;
                self.uncommit(b);
                b
            }
        };
        debug_assert_eq!(self.refcount[b as usize], 0);
        self.refcount[b as usize] = 1;
        Some(b)
    }

    /// One more user of block `b` (which may be idle in the cache).
    fn acquire(&mut self, b: u32) {
        let rc = &mut self.refcount[b as usize];
        if *rc == 0 {
            let removed = self.prefix.idle.remove(&self.prefix.idle_since[b as usize]);
            debug_assert_eq!(removed, Some(b), "unused committed block {b} is idle");
        }
        *rc += 1;
    }

    fn release(&mut self, b: u32) {
        let rc = &mut self.refcount[b as usize];
        assert!(*rc > 0, "KV block {b} released twice");
        *rc -= 1;
        if *rc == 0 {
            if self.prefix.key[b as usize].is_some() {
                self.prefix.clock += 1;
                self.prefix.idle.insert(self.prefix.clock, b);
                self.prefix.idle_since[b as usize] = self.prefix.clock;
            } else {
                self.free.push(b);
            }
        }
    }

    /// Removes block `b` from the prefix cache (if there), so it can be overwritten.
    fn uncommit(&mut self, b: u32) {
        if let Some(key) = self.prefix.key[b as usize].take() {
            self.prefix.map.remove(&key);
        }
    }
}

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// Half the memory and memory traffic; values rounded to f16 when written.
    F16,
}

impl KvDtype {
    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<KvDtype, String> {
        match s {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            other => Err(format!("unknown KV dtype '{other}' (expected f32 or f16)")),
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        })
    }
}

/// On 2 MiB pages and touched at creation: attention streams the cache like the weights, and a
/// lazily faulted pool made the first requests after start-up pay the page faults (7% of a
/// 32-sequence run's time). The whole budget is resident from the start, as stated.
enum Storage {
    F32(HugeBuf<f32>),
    F16(HugeBuf<f16>),
}

/// One layer's key or value blocks of a sequence, as stored.
pub enum LayerBlocks<'a> {
    F32(Vec<&'a [f32]>),
    F16(Vec<&'a [f16]>),
}

/// The block pool: storage for `n_blocks` blocks and their allocator.
pub struct KvPool {
    n_embd: usize,
    block_len: usize,
    n_blocks: usize,
    storage: Storage,
    alloc: Arc<Mutex<Allocator>>,
    prefix_caching: bool,
}

/// One sequence's blocks, in position order, and how many positions are filled.
pub struct BlockTable {
    blocks: Vec<u32>,
    len: usize,
    /// Prefix-cache nodes of the leading blocks committed so far (see [`KvPool::commit_full_blocks`]).
    nodes: Vec<u64>,
    alloc: Arc<Mutex<Allocator>>,
}

impl KvPool {
    /// A pool of `n_blocks` f32 blocks for `config`'s shape.
    pub fn new(config: &Config, n_blocks: usize) -> Result<KvPool> {
        KvPool::with_dtype(config, n_blocks, KvDtype::F32)
    }

    /// A pool of `n_blocks` blocks stored as `dtype`. Fails, holding nothing, when the memory
    /// cannot be had.
    pub fn with_dtype(config: &Config, n_blocks: usize, dtype: KvDtype) -> Result<KvPool> {
        KvPool::allocate(config, n_blocks, dtype)
            .map_err(|source| Error::Memory { what: format!("a KV cache of {n_blocks} blocks"), source })
    }

    fn allocate(config: &Config, n_blocks: usize, dtype: KvDtype) -> std::result::Result<KvPool, AllocError> {
        let block_len = config.n_layer * 2 * BLOCK_TOKENS * config.n_embd;
        let len = n_blocks.checked_mul(block_len).ok_or(AllocError::Overflow { len: n_blocks, size: block_len })?;
        Ok(KvPool {
            n_embd: config.n_embd,
            block_len,
            n_blocks,
            storage: match dtype {
                KvDtype::F32 => Storage::F32(HugeBuf::zeroed(len)?),
                KvDtype::F16 => Storage::F16(HugeBuf::zeroed(len)?),
            },
            alloc: Arc::new(Mutex::new(Allocator::new(n_blocks))),
            prefix_caching: true,
        })
    }

    /// Bytes one block takes for `config`'s shape stored as `dtype`.
    pub fn block_bytes(config: &Config, dtype: KvDtype) -> usize {
        config.n_layer * 2 * BLOCK_TOKENS * config.n_embd * dtype.size()
    }

    /// A pool sized from a memory budget in bytes.
    pub fn with_budget(config: &Config, bytes: usize, dtype: KvDtype) -> Result<KvPool> {
        KvPool::with_dtype(config, bytes / KvPool::block_bytes(config, dtype), dtype)
    }

    pub fn dtype(&self) -> KvDtype {
        match self.storage {
            Storage::F32(_) => KvDtype::F32,
            Storage::F16(_) => KvDtype::F16,
        }
    }

    pub fn total_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Blocks a table can still get, counting the unused ones the prefix cache keeps (they are
    /// evicted when taken).
    pub fn free_blocks(&self) -> usize {
        self.lock().available()
    }

    /// Turns prefix caching on (the default) or off. Off, [`KvPool::lookup_prefix`] finds nothing
    /// and [`KvPool::commit_full_blocks`] keeps nothing; what is already cached stays findable
    /// only once it is turned back on.
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.prefix_caching = on;
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// Committed blocks currently in the prefix cache, in use or not.
    pub fn cached_blocks(&self) -> usize {
        self.lock().prefix.map.len()
    }

    fn lock(&self) -> MutexGuard<'_, Allocator> {
        // A panic elsewhere cannot leave the allocator half-updated (every method is a few
        // plain assignments), so a poisoned lock is still consistent.
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `table` is one of this pool's.
    pub fn holds(&self, table: &BlockTable) -> bool {
        Arc::ptr_eq(&self.alloc, &table.alloc)
    }

    /// An empty block table for a new sequence.
    pub fn sequence(&self) -> BlockTable {
        BlockTable { blocks: Vec::new(), len: 0, nodes: Vec::new(), alloc: self.alloc.clone() }
    }

    /// A table for a sequence of `tokens`, sharing the longest run of committed full blocks that
    /// starts it; its length is the positions reused. The block holding the last token is never
    /// reused, so at least one position is left to compute the next token's logits from.
    pub fn lookup_prefix(&self, tokens: &[u32]) -> BlockTable {
        let mut table = self.sequence();
        if !self.prefix_caching {
            return table;
        }
        let mut alloc = self.lock();
        let mut parent = 0;
        for chunk in tokens[..tokens.len().saturating_sub(1)].chunks_exact(BLOCK_TOKENS) {
            let key = PrefixKey { parent, tokens: chunk.try_into().expect("chunk of BLOCK_TOKENS") };
            let Some(&Committed { node, block }) = alloc.prefix.map.get(&key) else { break };
            alloc.acquire(block);
            table.blocks.push(block);
            table.nodes.push(node);
            parent = node;
        }
        table.len = table.blocks.len() * BLOCK_TOKENS;
        table
    }

    /// Commits `table`'s full blocks not yet committed to the prefix cache; `tokens` are the
    /// table's tokens (at least its length; more are ignored). Call it once their keys and
    /// values are written (after the forward pass). A block whose prefix is already cached in
    /// another block (two sequences computed it at once) is swapped for that one, so the copy
    /// goes back to the pool and the sequences share.
    pub fn commit_full_blocks(&self, table: &mut BlockTable, tokens: &[u32]) {
        assert!(Arc::ptr_eq(&self.alloc, &table.alloc), "block table from another pool");
        assert!(tokens.len() >= table.len, "{} tokens for a table of {} positions", tokens.len(), table.len);
        if !self.prefix_caching {
            return;
        }
        let mut alloc = self.lock();
        for i in table.nodes.len()..table.len / BLOCK_TOKENS {
            let parent = table.nodes.last().copied().unwrap_or(0);
            let chunk = &tokens[i * BLOCK_TOKENS..][..BLOCK_TOKENS];
            let key = PrefixKey { parent, tokens: chunk.try_into().expect("chunk of BLOCK_TOKENS") };
            let b = table.blocks[i];
            let node = match alloc.prefix.map.get(&key) {
                Some(&Committed { node, block }) => {
                    if block != b {
                        alloc.acquire(block);
                        alloc.release(b);
                        table.blocks[i] = block;
                    }
                    node
                }
                // Committed under another prefix: `tokens` are not what the table holds.
                None if alloc.prefix.key[b as usize].is_some() => break,
                None => {
                    let node = alloc.prefix.next_node;
                    alloc.prefix.next_node += 1;
                    alloc.prefix.map.insert(key, Committed { node, block: b });
                    alloc.prefix.key[b as usize] = Some(key);
                    node
                }
            };
            table.nodes.push(node);
        }
    }

    /// Blocks `table` needs to hold `extra` more positions, counting a copy of a shared last
    /// block that would be written into.
    pub fn blocks_needed(&self, table: &BlockTable, extra: usize) -> usize {
        let grow = (table.len + extra).div_ceil(BLOCK_TOKENS).saturating_sub(table.blocks.len());
        let cow = !table.len.is_multiple_of(BLOCK_TOKENS)
            && extra > 0
            && self.is_shared(table.blocks[table.len / BLOCK_TOKENS]);
        grow + cow as usize
    }

    fn is_shared(&self, b: u32) -> bool {
        self.lock().refcount[b as usize] > 1
    }

    /// Makes room for `extra` positions in `table` and returns the first new position.
    /// Fails, changing nothing, if the pool lacks the blocks.
    pub fn grow(&mut self, table: &mut BlockTable, extra: usize) -> Result<usize> {
        assert!(Arc::ptr_eq(&self.alloc, &table.alloc), "block table from another pool");
        let need = self.blocks_needed(table, extra);
        let mut alloc = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        if need > alloc.available() {
            return Err(Error::KvExhausted { need, free: alloc.available() });
        }
        // Copy-on-write: the partially filled last block is about to be written.
        if !table.len.is_multiple_of(BLOCK_TOKENS) && extra > 0 {
            let i = table.len / BLOCK_TOKENS;
            let old = table.blocks[i];
            // Only after a truncation can a committed block be partly filled; its cached
            // contents must not change, and no one else uses it, so it just leaves the cache.
            if alloc.refcount[old as usize] == 1 {
                alloc.uncommit(old);
            }
            if alloc.refcount[old as usize] > 1 {
                let new = alloc.take().expect("counted above");
                let (o, n, len) = (old as usize * self.block_len, new as usize * self.block_len, self.block_len);
                match &mut self.storage {
                    Storage::F32(v) => v.copy_within(o..o + len, n),
                    Storage::F16(v) => v.copy_within(o..o + len, n),
                }
                alloc.release(old);
                table.blocks[i] = new;
            }
        }
        let start = table.len;
        table.len += extra;
        while table.blocks.len() * BLOCK_TOKENS < table.len {
            table.blocks.push(alloc.take().expect("counted above"));
        }
        Ok(start)
    }

    fn offset(&self, layer: usize, kv: usize, pos: usize) -> usize {
        ((layer * 2 + kv) * BLOCK_TOKENS + pos % BLOCK_TOKENS) * self.n_embd
    }

    /// Stores the key and value rows (`[n_embd]` each) of position `pos` of `table` in `layer`.
    pub fn write(&mut self, table: &BlockTable, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let base = table.blocks[pos / BLOCK_TOKENS] as usize * self.block_len;
        let (ko, vo, c) = (base + self.offset(layer, 0, pos), base + self.offset(layer, 1, pos), self.n_embd);
        match &mut self.storage {
            Storage::F32(s) => {
                s[ko..ko + c].copy_from_slice(k);
                s[vo..vo + c].copy_from_slice(v);
            }
            Storage::F16(s) => {
                s[ko..ko + c].iter_mut().zip(k).for_each(|(d, &x)| *d = f16::from_f32(x));
                s[vo..vo + c].iter_mut().zip(v).for_each(|(d, &x)| *d = f16::from_f32(x));
            }
        }
    }

    /// Block slices of `layer`'s keys (`kv = 0`) or values (`kv = 1`) of `table`.
    pub fn layer_blocks(&self, table: &BlockTable, layer: usize, kv: usize) -> LayerBlocks<'_> {
        let span = BLOCK_TOKENS * self.n_embd;
        let start = (layer * 2 + kv) * span;
        let at = |b: u32| b as usize * self.block_len + start;
        match &self.storage {
            Storage::F32(s) => LayerBlocks::F32(table.blocks.iter().map(|&b| &s[at(b)..][..span]).collect()),
            Storage::F16(s) => LayerBlocks::F16(table.blocks.iter().map(|&b| &s[at(b)..][..span]).collect()),
        }
    }

    pub fn view<'a, E>(&self, blocks: &'a [&'a [E]]) -> KvView<'a, E> {
        KvView { blocks, block_tokens: BLOCK_TOKENS, token_stride: self.n_embd }
    }
}

impl BlockTable {
    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// A second table over the same blocks (shared, reference-counted): the prefix of a
    /// sequence that another will extend. Writes into shared blocks copy them first.
    pub fn share(&self) -> BlockTable {
        let mut alloc = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        for &b in &self.blocks {
            alloc.acquire(b);
        }
        BlockTable { blocks: self.blocks.clone(), len: self.len, nodes: self.nodes.clone(), alloc: self.alloc.clone() }
    }

    /// Forgets positions `len..`, returning blocks no longer needed.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.nodes.truncate(self.len / BLOCK_TOKENS);
        let keep = self.len.div_ceil(BLOCK_TOKENS);
        let mut alloc = self.alloc.lock().unwrap_or_else(|p| p.into_inner());
        // Last block first, so the cache evicts a sequence's tail before its head: a block whose
        // prefix was evicted can no longer be found.
        for b in self.blocks.drain(keep..).rev() {
            alloc.release(b);
        }
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        self.truncate(0);
    }
}

/// A single sequence with its own pool, growing as needed: the convenience for one-shot
/// generation and tests. Serving shares one [`KvPool`] between sequences instead.
pub struct KvCache {
    pub(crate) pool: KvPool,
    pub(crate) table: BlockTable,
}

impl KvCache {
    /// A cache able to hold the model's whole context.
    pub fn new(config: &Config) -> KvCache {
        KvCache::with_positions(config, config.n_positions)
    }

    /// A cache able to hold `positions` positions (whole blocks; at most the model's context):
    /// what one generation needs, rather than the whole context, since the pool is resident
    /// from the start (75 MB for the 124M shape's 1024 positions, 629 MB for gpt2-xl's).
    pub fn with_positions(config: &Config, positions: usize) -> KvCache {
        let blocks = positions.clamp(1, config.n_positions.max(1)).div_ceil(BLOCK_TOKENS);
        // As `Vec` does, a cache that cannot be allocated ends the process: a few MB per
        // sequence for the models this holds, and no caller could do better than report it.
        let pool = KvPool::allocate(config, blocks, KvDtype::F32).unwrap_or_else(|e| e.abort());
        let table = pool.sequence();
        KvCache { pool, table }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn truncate(&mut self, len: usize) {
        self.table.truncate(len);
    }
}
