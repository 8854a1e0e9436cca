//! Prompt log-probabilities (OpenAI's `echo` with `logprobs`): the engine reports each prompt
//! token's log-probability equal to the log-softmax of HuggingFace's logits at the position
//! before it, with the prompt prefilled in chunks, after its prefix was cached by another
//! request, and for a request that only scores its prompt (`max_tokens` 0).

mod common;

use common::{log_softmax, Golden};
use inferneo_runtime::scheduler::Limits;
use inferneo_runtime::{
    Engine, EngineConfig, Event, Finish, GenerateRequest, Gpt2, Preset, PromptLogprob, WeightDtype,
};

fn prompt_logprobs(engine: &Engine, prompt: &[u32], max_tokens: usize) -> (Vec<PromptLogprob>, usize) {
    let req = GenerateRequest {
        prompt: prompt.to_vec(),
        max_tokens,
        top_logprobs: 3,
        prompt_logprobs: true,
        ..GenerateRequest::default()
    };
    let h = engine.submit(req).unwrap();
    let mut got = None;
    let mut tokens = 0;
    loop {
        match h.events.recv_timeout(std::time::Duration::from_secs(60)).expect("engine answers") {
            Event::PromptLogprobs(list) => {
                assert!(got.is_none(), "prompt logprobs sent twice");
                assert_eq!(tokens, 0, "prompt logprobs after a token");
                got = Some(list);
            }
            Event::Token { .. } => tokens += 1,
            Event::Finished { reason, .. } => {
                assert!(matches!(reason, Finish::Done(_)), "{reason:?}");
                return (got.expect("prompt logprobs"), tokens);
            }
        }
    }
}

#[test]
fn prompt_logprobs_equal_hf_log_softmax_in_chunks_and_after_a_cache_hit() {
    let g = Golden::load("tiny");
    let model = Gpt2::random(Preset::Tiny, g.seed(), inferneo_kernels::kernels().unwrap(), WeightDtype::F32);
    // Chunks of 3 tokens: the 8-token prompt is prefilled over three steps.
    let config = EngineConfig {
        limits: Limits { max_batch_tokens: 3, max_seqs: 4 },
        kv_cache_bytes: 8 << 20,
        ..EngineConfig::default()
    };
    let engine = Engine::start(model, None, config).unwrap();
    let check = |list: &[PromptLogprob]| {
        assert_eq!(list.len(), g.tokens.len() - 1);
        for (i, p) in list.iter().enumerate() {
            let want = log_softmax(&g.logits[i * g.vocab..(i + 1) * g.vocab]);
            assert_eq!(p.id, g.tokens[i + 1]);
            let err = (p.logprob as f64 - want[p.id as usize]).abs();
            assert!(err < 1e-4, "position {}: {} vs HF {} ({err:.1e})", i + 1, p.logprob, want[p.id as usize]);
            assert_eq!(p.top.len(), 3);
            let best = want.iter().cloned().fold(f64::MIN, f64::max);
            assert!((p.top[0].1 as f64 - best).abs() < 1e-4, "position {}: top {:?} vs HF best {best}", i + 1, p.top);
            assert!(p.top.windows(2).all(|w| w[0].1 >= w[1].1));
        }
    };
    // Scoring only: no token is generated.
    let (list, tokens) = prompt_logprobs(&engine, &g.tokens, 0);
    assert_eq!(tokens, 0);
    check(&list);
    let (again, tokens) = prompt_logprobs(&engine, &g.tokens, 3);
    assert_eq!(tokens, 3);
    assert_eq!(again, list, "not bitwise equal to the first computation");
}

#[test]
fn a_cached_prefix_is_recomputed_for_its_logprobs() {
    let model = Gpt2::random(Preset::Tiny, 5, inferneo_kernels::kernels().unwrap(), WeightDtype::F32);
    // Three full KV blocks and a bit: a plain request caches them first.
    let prompt: Vec<u32> = (0..53u32).map(|i| (i * 7919 + 13) % 50257).collect();
    let mut cache = inferneo_runtime::KvCache::new(model.config());
    let vocab = model.config().vocab_size;
    let logits = model.forward_one(&mut cache, &prompt, inferneo_runtime::Logits::All).unwrap();
    let config = EngineConfig {
        limits: Limits { max_batch_tokens: 16, max_seqs: 4 },
        kv_cache_bytes: 8 << 20,
        ..EngineConfig::default()
    };
    let engine = Engine::start(model, None, config).unwrap();
    let plain = GenerateRequest { prompt: prompt.clone(), max_tokens: 1, ..GenerateRequest::default() };
    let h = engine.submit(plain).unwrap();
    while !matches!(h.events.recv().unwrap(), Event::Finished { .. }) {}
    let hits = engine.stats().prefix_cache_hits;
    let (list, _) = prompt_logprobs(&engine, &prompt, 1);
    assert_eq!(engine.stats().prefix_cache_hits, hits, "the prompt-logprobs request reused cached blocks");
    assert_eq!(list.len(), prompt.len() - 1);
    for (i, p) in list.iter().enumerate() {
        let want = log_softmax(&logits[i * vocab..(i + 1) * vocab])[prompt[i + 1] as usize];
        assert!((p.logprob as f64 - want).abs() < 1e-5, "position {}: {} vs {want}", i + 1, p.logprob);
    }
    // A later plain request still finds the blocks cached.
    let plain = GenerateRequest { prompt, max_tokens: 1, ..GenerateRequest::default() };
    let h = engine.submit(plain).unwrap();
    while !matches!(h.events.recv().unwrap(), Event::Finished { .. }) {}
    // The engine publishes its counters after the step that sent `Finished`: wait (bounded) for
    // that snapshot rather than read the one before it.
    let hit = (0..200).any(|_| {
        let hit = engine.stats().prefix_cache_hits > hits;
        if !hit {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        hit
    });
    assert!(hit, "no prefix-cache hit for the third request");
}
