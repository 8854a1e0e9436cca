//! Prefix caching in the paged KV pool: committed full blocks are found again by their exact
//! token prefix (never the block holding the last token), idle cached blocks count as free and
//! are evicted tail first, reuse gives bitwise the logits of recomputing, and under random use
//! no block leaks, is freed twice, or is handed out holding another prefix's keys and values.

use inferneo_runtime::kv_cache::BLOCK_TOKENS;
use inferneo_runtime::{BlockTable, Gpt2, KvCache, KvDtype, KvPool, Logits, Preset, SeqInput, WeightDtype};
use proptest::prelude::*;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn in_use(pool: &KvPool) -> usize {
    pool.total_blocks() - pool.free_blocks()
}

/// Grows `table` to `tokens.len()` positions without a model (the contents do not matter here).
fn fill(pool: &mut KvPool, table: &mut BlockTable, tokens: &[u32]) {
    let n = tokens.len() - table.len();
    pool.grow(table, n).unwrap();
    pool.commit_full_blocks(table, tokens);
}

#[test]
fn lookup_reuses_committed_full_blocks_but_not_the_last_tokens_block() {
    let config = Preset::Tiny.config();
    let mut pool = KvPool::new(&config, 8).unwrap();
    let tokens: Vec<u32> = (0..50).collect(); // 3 full blocks and 2 positions
    let mut a = pool.sequence();
    fill(&mut pool, &mut a, &tokens);
    assert_eq!((pool.cached_blocks(), in_use(&pool)), (3, 4), "the partial block is not committed");
    let shared = pool.lookup_prefix(&tokens);
    assert_eq!(shared.len(), 48);
    assert_eq!(shared.blocks(), &a.blocks()[..3], "reuse shares, allocating nothing");
    assert_eq!(in_use(&pool), 4);
    drop((a, shared));
    assert_eq!(pool.free_blocks(), pool.total_blocks(), "cached blocks nobody uses count as free");
    assert_eq!(pool.cached_blocks(), 3, "and are still cached");
    // The block holding the last token is computed again (its logits are needed).
    assert_eq!(pool.lookup_prefix(&tokens[..48]).len(), 32);
    assert_eq!(pool.lookup_prefix(&tokens[..49]).len(), 48);
    assert_eq!(pool.lookup_prefix(&tokens[..16]).len(), 0);
    // A difference anywhere in a block stops the match there, whatever follows.
    let mut other = tokens.clone();
    other[20] = 999;
    assert_eq!(pool.lookup_prefix(&other).len(), 16);
    other[0] = 999;
    assert_eq!(pool.lookup_prefix(&other).len(), 0);
    // A block's tokens under a different prefix are a different block.
    let mut b = pool.sequence();
    fill(&mut pool, &mut b, &[[7u32; 16], [8; 16], [9; 16]].concat());
    assert_eq!(pool.lookup_prefix(&[&[7u32; 16][..], &[8; 16], &[1]].concat()).len(), 32);
    assert_eq!(pool.lookup_prefix(&[&[7u32; 16][..], &tokens[16..32], &[1]].concat()).len(), 16);
    drop(b);
    pool.set_prefix_caching(false);
    assert_eq!(pool.lookup_prefix(&tokens).len(), 0, "off: nothing is found");
}

#[test]
fn taking_blocks_evicts_idle_cached_ones_tail_first() {
    let config = Preset::Tiny.config();
    let mut pool = KvPool::new(&config, 6).unwrap();
    let tokens: Vec<u32> = (100..165).collect(); // 4 full blocks and 1 position
    let mut a = pool.sequence();
    fill(&mut pool, &mut a, &tokens);
    drop(a);
    assert_eq!((pool.cached_blocks(), pool.free_blocks()), (4, 6));
    // Needing 3 blocks takes the 2 never-cached ones, then evicts the sequence's last block.
    let mut b = pool.sequence();
    pool.grow(&mut b, 3 * BLOCK_TOKENS).unwrap();
    assert_eq!((pool.cached_blocks(), pool.free_blocks()), (3, 3));
    assert_eq!(pool.lookup_prefix(&tokens).len(), 48, "the head of the prefix is still there");
    pool.grow(&mut b, 2 * BLOCK_TOKENS).unwrap();
    assert_eq!(pool.lookup_prefix(&tokens).len(), 16);
    pool.grow(&mut b, BLOCK_TOKENS).unwrap();
    assert_eq!((pool.cached_blocks(), pool.free_blocks()), (0, 0));
    assert!(pool.grow(&mut b, 1).is_err(), "nothing left to evict");
    drop(b);
    assert_eq!(pool.free_blocks(), pool.total_blocks());
}

#[test]
fn a_prefix_computed_twice_at_once_ends_up_shared() {
    let config = Preset::Tiny.config();
    let mut pool = KvPool::new(&config, 8).unwrap();
    let tokens: Vec<u32> = (0..40).collect();
    let (mut a, mut b) = (pool.sequence(), pool.sequence());
    pool.grow(&mut a, 40).unwrap();
    pool.grow(&mut b, 40).unwrap();
    assert_eq!(in_use(&pool), 6);
    pool.commit_full_blocks(&mut a, &tokens);
    pool.commit_full_blocks(&mut b, &tokens);
    assert_eq!(a.blocks()[..2], b.blocks()[..2], "b's copies were swapped for a's committed blocks");
    assert_ne!(a.blocks()[2], b.blocks()[2]);
    assert_eq!((in_use(&pool), pool.cached_blocks()), (4, 2));
    // The partial last block fills up and is committed like any other.
    pool.grow(&mut a, 8).unwrap();
    pool.commit_full_blocks(&mut a, &(0..48).collect::<Vec<u32>>());
    assert_eq!(pool.cached_blocks(), 3);
    drop((a, b));
    assert_eq!(pool.free_blocks(), pool.total_blocks());
}

#[test]
fn truncating_into_a_committed_block_and_rewriting_it_keeps_the_cache_exact() {
    let config = Preset::Tiny.config();
    let mut pool = KvPool::new(&config, 8).unwrap();
    let tokens: Vec<u32> = (0..33).collect();
    let mut a = pool.sequence();
    fill(&mut pool, &mut a, &tokens);
    assert_eq!(pool.cached_blocks(), 2);
    // Alone in its block: the block leaves the cache before being written again.
    a.truncate(20);
    pool.grow(&mut a, 1).unwrap();
    assert_eq!(pool.cached_blocks(), 1);
    assert_eq!(pool.lookup_prefix(&tokens).len(), 16);
    // Shared with a lookup: copied on write instead.
    let mut b = pool.sequence();
    fill(&mut pool, &mut b, &tokens);
    let reused = pool.lookup_prefix(&tokens);
    assert_eq!(reused.len(), 32);
    b.truncate(20);
    pool.grow(&mut b, 1).unwrap();
    assert_ne!(b.blocks()[1], reused.blocks()[1]);
    assert_eq!(pool.lookup_prefix(&tokens).len(), 32);
}

/// Runs `tokens` through the model in `pool` from what `table` already holds, then commits.
fn run(model: &Gpt2, pool: &mut KvPool, table: &mut BlockTable, tokens: &[u32]) -> Vec<f32> {
    let new = &tokens[table.len()..];
    pool.grow(table, new.len()).unwrap();
    let logits = model.forward(pool, &[SeqInput { tokens: new, cache: table, logits: Logits::Last }]).unwrap();
    pool.commit_full_blocks(table, tokens);
    logits
}

#[test]
fn reused_prefix_blocks_give_the_logits_of_recomputing_bitwise() {
    let model = Gpt2::random(Preset::Tiny, 13, inferneo_kernels::kernels().unwrap(), WeightDtype::F32);
    let prefix: Vec<u32> = (0..40).map(|i| (i * 4099 + 3) % 50257).collect();
    for dtype in [KvDtype::F32, KvDtype::F16] {
        let mut pool = KvPool::with_dtype(model.config(), 32, dtype).unwrap();
        // The first sequence computes the prefix in uneven chunks, then a decode.
        let first: Vec<u32> = [&prefix[..], &[11, 12, 13]].concat();
        let mut a = pool.sequence();
        for end in [7, 35, 43] {
            run(&model, &mut pool, &mut a, &first[..end]);
        }
        drop(a);
        for suffix in [&[500u32][..], &[600, 601, 602, 603, 604, 605, 606, 607, 608, 609], &[11, 12, 13, 14]] {
            let tokens: Vec<u32> = [&prefix[..], suffix].concat();
            let mut b = pool.lookup_prefix(&tokens);
            let reused = b.len();
            assert_eq!(reused, 32, "the first sequence's third block was never full");
            let got = run(&model, &mut pool, &mut b, &tokens);
            let mut fresh = KvPool::with_dtype(model.config(), 32, dtype).unwrap();
            fresh.set_prefix_caching(false);
            let mut c = fresh.sequence();
            let want = run(&model, &mut fresh, &mut c, &tokens);
            assert!(bits(&got) == bits(&want), "{dtype:?}, {} reused positions: logits differ", reused);
            // And a decode after it.
            let next: Vec<u32> = [&tokens[..], &[77]].concat();
            assert!(bits(&run(&model, &mut pool, &mut b, &next)) == bits(&run(&model, &mut fresh, &mut c, &next)));
        }
    }
    // The single-sequence cache agrees too.
    let mut cache = KvCache::new(model.config());
    let tokens: Vec<u32> = [&prefix[..], &[500]].concat();
    let alone = model.forward_one(&mut cache, &tokens, Logits::Last).unwrap();
    let mut pool = KvPool::new(model.config(), 16).unwrap();
    let mut a = pool.sequence();
    run(&model, &mut pool, &mut a, &tokens);
    drop(a);
    let mut b = pool.lookup_prefix(&tokens);
    assert_eq!(b.len(), 32);
    assert!(bits(&run(&model, &mut pool, &mut b, &tokens)) == bits(&alone));
}

#[derive(Debug, Clone)]
enum Op {
    /// A sequence: base `.0` with the token at `.1` changed (if in range), looked up with its
    /// first `.2` tokens as the prompt.
    New(usize, usize, usize),
    Grow(usize, usize),
    Commit(usize),
    Share(usize),
    /// Truncate, then change the token at the new length so regrowing writes other contents.
    Truncate(usize, usize),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..3, 0usize..160, 1usize..100).prop_map(|(b, m, p)| Op::New(b, m, p)),
        3 => (0usize..8, 1usize..40).prop_map(|(s, n)| Op::Grow(s, n)),
        3 => (0usize..8).prop_map(Op::Commit),
        1 => (0usize..8).prop_map(Op::Share),
        1 => (0usize..8, 0usize..100).prop_map(|(s, n)| Op::Truncate(s, n)),
        2 => (0usize..8).prop_map(Op::Drop),
    ]
}

/// What the stand-in model writes at `pos`: a function of every token up to it, so a block
/// reached through a wrong prefix shows.
fn contents(tokens: &[u32], pos: usize, n_embd: usize) -> Vec<f32> {
    let h = tokens[..=pos].iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &t| (h ^ t as u64).wrapping_mul(0x100_0000_01b3));
    let mut row = vec![0.0; n_embd];
    row[0] = tokens[pos] as f32;
    row[1] = (h >> 40) as f32; // 24 bits: exact in f32
    row[2] = pos as f32;
    row
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random lookups, growth (writing stand-in keys and values), commits, shares,
    /// truncations with rewrites and drops over a small pool, so blocks are cached, reused,
    /// copied and evicted: every table always reads the contents of its own tokens, each holds
    /// exactly the blocks its length needs, in-use plus free blocks is the pool (cached idle
    /// blocks are free), and dropping everything frees everything.
    #[test]
    fn prefix_cache_never_leaks_or_serves_wrong_contents(
        patterns in proptest::collection::vec(proptest::collection::vec(0u32..2, 7), 3),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        // Bases made of two block patterns, so equal blocks recur under different prefixes.
        let bases: Vec<Vec<u32>> = patterns
            .iter()
            .map(|p| p.iter().flat_map(|&k| (0..BLOCK_TOKENS as u32).map(move |j| k * 2 + j % 2)).take(100).collect())
            .collect();
        let config = Preset::Tiny.config();
        let n_embd = config.n_embd;
        let mut pool = KvPool::new(&config, 12).unwrap();
        // Each sequence: its block table and its tokens (what its positions hold, and beyond).
        let mut seqs: Vec<(BlockTable, Vec<u32>)> = Vec::new();
        for op in ops {
            match op {
                Op::New(b, m, p) => {
                    let mut tokens = bases[b].clone();
                    if m < tokens.len() {
                        tokens[m] = 9;
                    }
                    let before = pool.free_blocks();
                    let table = pool.lookup_prefix(&tokens[..p]);
                    prop_assert!(table.len() < p && table.len().is_multiple_of(BLOCK_TOKENS));
                    prop_assert!(pool.free_blocks() + table.blocks().len() >= before);
                    seqs.push((table, tokens));
                }
                Op::Grow(i, n) if i < seqs.len() => {
                    let (table, tokens) = &mut seqs[i];
                    let n = n.min(tokens.len() - table.len());
                    if n > 0 && pool.grow(table, n).is_ok() {
                        for pos in table.len() - n..table.len() {
                            let row = contents(tokens, pos, n_embd);
                            for layer in 0..config.n_layer {
                                pool.write(table, layer, pos, &row, &row);
                            }
                        }
                    }
                }
                Op::Commit(i) if i < seqs.len() => {
                    let (table, tokens) = &mut seqs[i];
                    pool.commit_full_blocks(table, tokens);
                }
                Op::Share(i) if i < seqs.len() => {
                    let shared = (seqs[i].0.share(), seqs[i].1.clone());
                    seqs.push(shared);
                }
                Op::Truncate(i, n) if i < seqs.len() => {
                    let (table, tokens) = &mut seqs[i];
                    table.truncate(n);
                    if let Some(t) = tokens.get_mut(table.len()) {
                        *t = (*t + 1) % 4;
                    }
                }
                Op::Drop(i) if i < seqs.len() => {
                    seqs.swap_remove(i);
                }
                _ => {}
            }
            let mut distinct: Vec<u32> = Vec::new();
            for (table, tokens) in &seqs {
                prop_assert_eq!(table.blocks().len(), table.len().div_ceil(BLOCK_TOKENS));
                distinct.extend(table.blocks());
                for layer in 0..config.n_layer {
                    for kv in 0..2 {
                        let inferneo_runtime::kv_cache::LayerBlocks::F32(blocks) = pool.layer_blocks(table, layer, kv)
                        else {
                            unreachable!("f32 pool")
                        };
                        for pos in 0..table.len() {
                            let got = &blocks[pos / BLOCK_TOKENS][(pos % BLOCK_TOKENS) * n_embd..][..3];
                            prop_assert_eq!(got, &contents(tokens, pos, n_embd)[..3], "position {}", pos);
                        }
                    }
                }
            }
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len() + pool.free_blocks(), pool.total_blocks());
            prop_assert!(pool.cached_blocks() <= pool.total_blocks());
        }
        drop(seqs);
        prop_assert_eq!(pool.free_blocks(), pool.total_blocks());
    }
}
