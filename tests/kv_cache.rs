//! KV-cached decoding gives the same logits as recomputing the whole sequence, and a batch of
//! sequences gives each one the logits it gets alone: bitwise, because every kernel reduces in an
//! order independent of batch size.

mod common;

use common::available_kernels;
use inferneo_runtime::{Gpt2, KvCache, Logits, Preset, SeqInput, WeightDtype};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn cached_decode_equals_full_recompute() {
    for k in available_kernels() {
        let model = Gpt2::random(Preset::Tiny, 3, k, WeightDtype::F32);
        let tokens: Vec<u32> = (0..40).map(|i| (i * 1231 + 17) % 50257).collect();
        // Full recompute: one prefill of all 40 positions.
        let mut cache = KvCache::new(model.config());
        let full = model.forward(&mut [SeqInput { tokens: &tokens, cache: &mut cache, logits: Logits::All }]).unwrap();
        // Cached: a prefill chunk of 5, a chunk of 16 that crosses a block boundary, then one by one.
        let mut cache = KvCache::new(model.config());
        let mut got = Vec::new();
        let mut pos = 0;
        for chunk in [5usize, 16].into_iter().chain(std::iter::repeat_n(1, 19)) {
            let input = SeqInput { tokens: &tokens[pos..pos + chunk], cache: &mut cache, logits: Logits::All };
            got.extend(model.forward(&mut [input]).unwrap());
            pos += chunk;
        }
        assert_eq!(pos, tokens.len());
        assert!(bits(&got) == bits(&full), "{}: cached decode differs from full recompute", k.isa());
    }
}

#[test]
fn batched_sequences_equal_each_alone() {
    let model = Gpt2::random(Preset::Tiny, 4, inferneo_kernels::kernels().unwrap(), WeightDtype::F32);
    let prompts: Vec<Vec<u32>> =
        (0..5).map(|s| (0..(3 + 7 * s)).map(|i| ((i * 97 + s * 1000) % 50257) as u32).collect()).collect();
    let alone: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| {
            let mut c = KvCache::new(model.config());
            model.forward(&mut [SeqInput { tokens: p, cache: &mut c, logits: Logits::Last }]).unwrap()
        })
        .collect();
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new(model.config())).collect();
    let mut batch: Vec<SeqInput> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, c)| SeqInput { tokens: p, cache: c, logits: Logits::Last })
        .collect();
    let together = model.forward(&mut batch).unwrap();
    let vocab = model.config().vocab_size;
    for (i, a) in alone.iter().enumerate() {
        assert!(bits(a) == bits(&together[i * vocab..][..vocab]), "sequence {i} differs when batched");
    }
}

#[test]
fn context_limit_is_an_error_and_leaves_the_cache_alone() {
    let model = Gpt2::random(Preset::Tiny, 5, inferneo_kernels::kernels().unwrap(), WeightDtype::F32);
    let n = model.config().n_positions;
    let mut cache = KvCache::new(model.config());
    let tokens = vec![1u32; n - 2];
    model.forward(&mut [SeqInput { tokens: &tokens, cache: &mut cache, logits: Logits::None }]).unwrap();
    let err =
        model.forward(&mut [SeqInput { tokens: &[1, 2, 3], cache: &mut cache, logits: Logits::Last }]).unwrap_err();
    assert!(err.to_string().contains("context length exceeded"), "{err}");
    assert_eq!(cache.len(), n - 2);
    let err = model.forward(&mut [SeqInput { tokens: &[50257], cache: &mut cache, logits: Logits::Last }]).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    // Exactly at the limit is fine.
    model.forward(&mut [SeqInput { tokens: &[1, 2], cache: &mut cache, logits: Logits::Last }]).unwrap();
    assert_eq!(cache.len(), n);
}
