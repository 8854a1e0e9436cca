//! The paged KV cache and the batched forward pass: cached decoding equals a full recompute,
//! a batch gives each sequence the logits it gets alone (bitwise), shared prefixes are
//! copied on write, and the block allocator never leaks or double-frees under random use.

mod common;

use common::available_kernels;
use inferneo_runtime::kv_cache::BLOCK_TOKENS;
use inferneo_runtime::{BlockTable, Error, Gpt2, KvCache, KvDtype, KvPool, Logits, Preset, SeqInput, WeightDtype};
use proptest::prelude::*;

/// Grows each table by its tokens, as the scheduler does for a step, then runs the batch.
fn step(model: &Gpt2, pool: &mut KvPool, seqs: Vec<(&[u32], &mut BlockTable, Logits)>) -> Result<Vec<f32>, Error> {
    let mut seqs = seqs;
    for (tokens, table, _) in seqs.iter_mut() {
        pool.grow(table, tokens.len())?;
    }
    let inputs: Vec<SeqInput> =
        seqs.iter().map(|(tokens, table, logits)| SeqInput { tokens, cache: table, logits: *logits }).collect();
    model.forward(pool, &inputs)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn tiny(seed: u64) -> Gpt2 {
    Gpt2::random(Preset::Tiny, seed, inferneo_kernels::kernels().unwrap(), WeightDtype::F32)
}

#[test]
fn cached_decode_equals_full_recompute() {
    for k in available_kernels() {
        let model = Gpt2::random(Preset::Tiny, 3, k, WeightDtype::F32);
        let tokens: Vec<u32> = (0..40).map(|i| (i * 1231 + 17) % 50257).collect();
        // Full recompute: one prefill of all 40 positions.
        let mut cache = KvCache::new(model.config());
        let full = model.forward_one(&mut cache, &tokens, Logits::All).unwrap();
        // Cached: a prefill chunk of 5, a chunk of 16 that crosses a block boundary, then one by one.
        let mut cache = KvCache::new(model.config());
        let mut got = Vec::new();
        let mut pos = 0;
        for chunk in [5usize, 16].into_iter().chain(std::iter::repeat_n(1, 19)) {
            got.extend(model.forward_one(&mut cache, &tokens[pos..pos + chunk], Logits::All).unwrap());
            pos += chunk;
        }
        assert_eq!(pos, tokens.len());
        assert!(bits(&got) == bits(&full), "{}: cached decode differs from full recompute", k.isa());
    }
}

#[test]
fn batched_sequences_equal_each_alone() {
    let model = tiny(4);
    let prompts: Vec<Vec<u32>> =
        (0..5).map(|s| (0..(3 + 7 * s)).map(|i| ((i * 97 + s * 1000) % 50257) as u32).collect()).collect();
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| model.forward_one(&mut KvCache::new(model.config()), p, Logits::Last).unwrap())
        .collect();
    let mut pool = KvPool::new(model.config(), 64).unwrap();
    let mut tables: Vec<BlockTable> = prompts.iter().map(|_| pool.sequence()).collect();
    let batch = prompts.iter().zip(tables.iter_mut()).map(|(p, c)| (&p[..], c, Logits::Last)).collect();
    let together = step(&model, &mut pool, batch).unwrap();
    let vocab = model.config().vocab_size;
    for (i, a) in alone.iter().enumerate() {
        assert!(bits(a) == bits(&together[i * vocab..][..vocab]), "sequence {i} differs when batched");
    }
    // A decode step mixing sequences at different positions, again equal to each alone.
    let next: Vec<[u32; 1]> = (0..5).map(|i| [1000 + i as u32]).collect();
    let batch = next.iter().zip(tables.iter_mut()).map(|(t, c)| (&t[..], c, Logits::Last)).collect();
    let decoded = step(&model, &mut pool, batch).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let mut cache = KvCache::new(model.config());
        model.forward_one(&mut cache, p, Logits::None).unwrap();
        let alone = model.forward_one(&mut cache, &next[i], Logits::Last).unwrap();
        assert!(bits(&alone) == bits(&decoded[i * vocab..][..vocab]), "decode of sequence {i} differs when batched");
    }
}

#[test]
fn shared_prefix_is_copied_on_write() {
    let model = tiny(8);
    let prompt: Vec<u32> = (0..20).map(|i| i * 31 + 5).collect(); // 1 full block + 4 positions
    let mut pool = KvPool::new(model.config(), 16).unwrap();
    let mut a = pool.sequence();
    step(&model, &mut pool, vec![(&prompt, &mut a, Logits::None)]).unwrap();
    let used = pool.total_blocks() - pool.free_blocks();
    let mut b = a.share();
    assert_eq!(pool.total_blocks() - pool.free_blocks(), used, "sharing allocates nothing");
    // Diverge: each writes position 20 into the shared, partly filled second block.
    let la = step(&model, &mut pool, vec![(&[7], &mut a, Logits::Last)]).unwrap();
    let lb = step(&model, &mut pool, vec![(&[9], &mut b, Logits::Last)]).unwrap();
    assert_eq!(a.blocks()[0], b.blocks()[0], "the full first block stays shared");
    assert_ne!(a.blocks()[1], b.blocks()[1], "the written block was copied");
    let alone = |t: u32| {
        let mut c = KvCache::new(model.config());
        model.forward_one(&mut c, &prompt, Logits::None).unwrap();
        model.forward_one(&mut c, &[t], Logits::Last).unwrap()
    };
    assert!(bits(&la) == bits(&alone(7)) && bits(&lb) == bits(&alone(9)));
    drop((a, b));
    assert_eq!(pool.free_blocks(), pool.total_blocks(), "every block returned on drop");
}

#[test]
fn exhaustion_is_an_error_that_changes_nothing() {
    let model = tiny(9);
    let mut pool = KvPool::new(model.config(), 2).unwrap();
    let mut a = pool.sequence();
    let tokens: Vec<u32> = (0..(2 * BLOCK_TOKENS as u32 + 1)).collect();
    let err = step(&model, &mut pool, vec![(&tokens, &mut a, Logits::Last)]).unwrap_err();
    assert!(err.to_string().contains("KV cache exhausted: 3 blocks needed, 2 free"), "{err}");
    assert_eq!((a.len(), pool.free_blocks()), (0, 2));
    step(&model, &mut pool, vec![(&tokens[..32], &mut a, Logits::Last)]).unwrap();
    assert_eq!(pool.free_blocks(), 0);
}

#[test]
fn context_limit_is_an_error_and_leaves_the_cache_alone() {
    let model = tiny(5);
    let n = model.config().n_positions;
    let mut cache = KvCache::new(model.config());
    let tokens = vec![1u32; n - 2];
    model.forward_one(&mut cache, &tokens, Logits::None).unwrap();
    let err = model.forward_one(&mut cache, &[1, 2, 3], Logits::Last).unwrap_err();
    assert!(err.to_string().contains("context length exceeded"), "{err}");
    assert_eq!(cache.len(), n - 2);
    let err = model.forward_one(&mut cache, &[50257], Logits::Last).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    // Exactly at the limit is fine.
    model.forward_one(&mut cache, &[1, 2], Logits::Last).unwrap();
    assert_eq!(cache.len(), n);
}

#[derive(Debug, Clone)]
enum Op {
    New,
    Grow(usize, usize),
    Share(usize),
    Truncate(usize, usize),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::New),
        (0usize..8, 1usize..40).prop_map(|(s, n)| Op::Grow(s, n)),
        (0usize..8).prop_map(Op::Share),
        (0usize..8, 0usize..60).prop_map(|(s, n)| Op::Truncate(s, n)),
        (0usize..8).prop_map(Op::Drop),
    ]
}

proptest! {
    /// Random new / grow / share / truncate / drop: a failed grow changes nothing, each table
    /// holds exactly the blocks its length needs, in-use blocks are accounted for exactly
    /// (no leak, no double free), and dropping everything returns every block.
    #[test]
    fn block_allocator_never_leaks(ops in proptest::collection::vec(op(), 1..60)) {
        let config = Preset::Tiny.config();
        let mut pool = KvPool::new(&config, 12).unwrap();
        let mut tables: Vec<BlockTable> = Vec::new();
        for op in ops {
            match op {
                Op::New => tables.push(pool.sequence()),
                Op::Grow(i, n) if i < tables.len() => {
                    let before = (tables[i].len(), tables[i].blocks().to_vec(), pool.free_blocks());
                    let need = pool.blocks_needed(&tables[i], n);
                    match pool.grow(&mut tables[i], n) {
                        Ok(start) => prop_assert_eq!(start, before.0),
                        Err(_) => {
                            prop_assert!(need > before.2);
                            prop_assert_eq!((tables[i].len(), tables[i].blocks().to_vec(), pool.free_blocks()), before);
                        }
                    }
                }
                Op::Share(i) if i < tables.len() => {
                    let t = tables[i].share();
                    tables.push(t);
                }
                Op::Truncate(i, n) if i < tables.len() => tables[i].truncate(n),
                Op::Drop(i) if i < tables.len() => {
                    tables.swap_remove(i);
                }
                _ => {}
            }
            let mut distinct: Vec<u32> = tables.iter().flat_map(|t| t.blocks().iter().copied()).collect();
            for t in &tables {
                prop_assert_eq!(t.blocks().len(), t.len().div_ceil(BLOCK_TOKENS));
            }
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len() + pool.free_blocks(), pool.total_blocks());
        }
        drop(tables);
        prop_assert_eq!(pool.free_blocks(), pool.total_blocks());
    }
}

/// The f16 KV cache: logits stay close to the f32 cache's, and batching is still bitwise
/// invariant (every sequence's K/V are rounded the same way whatever the batch).
#[test]
fn f16_kv_cache_is_close_to_f32_and_batch_invariant() {
    let model = tiny(11);
    let vocab = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> =
        (0..4).map(|s| (0..(9 + 11 * s)).map(|i| ((i * 613 + s * 77) % 50257) as u32).collect()).collect();
    let run = |dtype: KvDtype, which: &[usize]| -> Vec<f32> {
        let mut pool = KvPool::with_dtype(model.config(), 32, dtype).unwrap();
        let mut tables: Vec<BlockTable> = which.iter().map(|_| pool.sequence()).collect();
        let batch = which.iter().zip(tables.iter_mut()).map(|(&i, c)| (&prompts[i][..], c, Logits::Last)).collect();
        step(&model, &mut pool, batch).unwrap();
        let next: Vec<[u32; 1]> = which.iter().map(|&i| [500 + i as u32]).collect();
        let batch = next.iter().zip(tables.iter_mut()).map(|(t, c)| (&t[..], c, Logits::Last)).collect();
        step(&model, &mut pool, batch).unwrap()
    };
    let all = [0, 1, 2, 3];
    let (f32_logits, f16_logits) = (run(KvDtype::F32, &all), run(KvDtype::F16, &all));
    let max_diff = f32_logits.iter().zip(&f16_logits).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("f16 KV: max abs logit difference vs f32 KV {max_diff:.2e}");
    assert!(max_diff < 5e-3, "f16 KV drifts too far: {max_diff}");
    for i in all {
        let alone = run(KvDtype::F16, &[i]);
        assert!(bits(&alone) == bits(&f16_logits[i * vocab..][..vocab]), "f16 sequence {i} differs when batched");
    }
}
