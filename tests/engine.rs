//! The continuous-batching engine: every request's tokens and logprobs are bitwise the same
//! whether it runs alone or with others, under preemption from KV exhaustion, with prefix-cache
//! hits and with cancellations; the scheduler respects its budgets, admits first come first
//! served and never leaks blocks.

use inferneo_runtime::engine::EventSink;
use inferneo_runtime::kv_cache::BLOCK_TOKENS;
use inferneo_runtime::scheduler::{Limits, Scheduler};
use inferneo_runtime::{
    Engine, EngineConfig, Event, Finish, GenerateRequest, Gpt2, KvPool, Preset, SamplingParams, WeightDtype,
};
use proptest::prelude::*;

fn model() -> Gpt2 {
    model_of(WeightDtype::F32)
}

fn model_of(dtype: WeightDtype) -> Gpt2 {
    Gpt2::random(Preset::Tiny, 21, inferneo_kernels::kernels().unwrap(), dtype)
}

/// Block bytes of the tiny model (2 layers x k,v x 16 positions x 64 floats).
const TINY_BLOCK_BYTES: usize = 2 * 2 * BLOCK_TOKENS * 64 * 4;

fn request(i: u64, prompt_len: usize, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: (0..prompt_len as u64).map(|t| ((t * 131 + i * 977) % 50257) as u32).collect(),
        max_tokens,
        sampling: if i.is_multiple_of(2) {
            SamplingParams::default()
        } else {
            SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.9, seed: i, ..SamplingParams::default() }
        },
        stop_tokens: vec![],
        top_logprobs: 0,
        prompt_logprobs: false,
    }
}

/// Runs a request's stream to the end: (tokens, logprob bits, finish).
fn collect(events: &std::sync::mpsc::Receiver<Event>) -> (Vec<u32>, Vec<u32>, Finish) {
    let (mut toks, mut lps) = (Vec::new(), Vec::new());
    loop {
        match events.recv_timeout(std::time::Duration::from_secs(60)).expect("engine answers") {
            Event::Token { id, logprob, .. } => {
                toks.push(id);
                lps.push(logprob.to_bits());
            }
            Event::Finished { reason, .. } => return (toks, lps, reason),
            Event::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
        }
    }
}

/// Polls the stats until the engine is idle with every block free (they are published after
/// each step, so just after the last event they may lag by one step).
fn wait_idle(engine: &Engine) -> inferneo_runtime::Stats {
    let start = std::time::Instant::now();
    loop {
        let s = engine.stats();
        if (s.running, s.waiting, s.kv_blocks_free) == (0, 0, s.kv_blocks_total) {
            return s;
        }
        assert!(start.elapsed().as_secs() < 10, "engine not idle: {s:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn with_prompt(i: u64, prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { prompt, ..request(i, 1, max_tokens) }
}

/// Each request run by itself, every prompt computed in full (no prefix cache): the reference.
fn alone(reqs: &[GenerateRequest]) -> Vec<(Vec<u32>, Vec<u32>, Finish)> {
    alone_with(WeightDtype::F32, reqs)
}

fn alone_with(dtype: WeightDtype, reqs: &[GenerateRequest]) -> Vec<(Vec<u32>, Vec<u32>, Finish)> {
    let engine =
        Engine::start(model_of(dtype), None, EngineConfig { prefix_caching: false, ..EngineConfig::default() })
            .expect("engine starts");
    reqs.iter().map(|r| collect(&engine.submit(r.clone()).unwrap().events)).collect()
}

/// For f32 weights and for `w8a8`, whose activations are quantized per row at run time (so
/// each row's quantization must not see the rows batched with it).
#[test]
fn concurrent_requests_equal_each_alone_bitwise() {
    for dtype in [WeightDtype::F32, WeightDtype::W8a8] {
        concurrent_equal_alone(dtype);
    }
}

fn concurrent_equal_alone(dtype: WeightDtype) {
    let reqs: Vec<GenerateRequest> = (0..12).map(|i| request(i, 3 + (i as usize * 7) % 40, 20)).collect();
    let expected = alone_with(dtype, &reqs);
    // Small token budget: prompts are split into chunks and mixed with decodes.
    let config = EngineConfig { limits: Limits { max_batch_tokens: 24, max_seqs: 8 }, ..EngineConfig::default() };
    let engine = Engine::start(model_of(dtype), None, config).expect("engine starts");
    let handles: Vec<_> = reqs.iter().map(|r| engine.submit(r.clone()).unwrap()).collect();
    for (i, h) in handles.iter().enumerate() {
        let got = collect(&h.events);
        assert_eq!(got, expected[i], "{dtype}: request {i} differs when batched");
        assert_eq!(got.2, Finish::Done(inferneo_runtime::FinishReason::Length));
    }
}

#[test]
fn kv_exhaustion_preempts_and_every_request_completes_identically() {
    let reqs: Vec<GenerateRequest> = (0..8).map(|i| request(i, 20, 30)).collect(); // 4 blocks each
    let expected = alone(&reqs);
    let config = EngineConfig {
        limits: Limits { max_batch_tokens: 64, max_seqs: 8 },
        kv_cache_bytes: 6 * TINY_BLOCK_BYTES,
        ..EngineConfig::default()
    };
    let engine = Engine::start(model(), None, config).expect("engine starts");
    let handles: Vec<_> = reqs.iter().map(|r| engine.submit(r.clone()).unwrap()).collect();
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(collect(&h.events), expected[i], "request {i} differs after preemption");
    }
    let stats = wait_idle(&engine);
    assert!(stats.preemptions > 0, "6 blocks for 8 x 4 blocks must preempt: {stats:?}");
}

/// Records every event it is sent. After its first token it can hold the engine's thread
/// until released (so a test acts at a known step), and it can report its receiver gone after
/// `gone_after` tokens.
struct Probe {
    events: std::sync::Arc<std::sync::Mutex<Vec<Event>>>,
    hold: Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>,
    gone_after: usize,
}

impl EventSink for Probe {
    fn send(&mut self, event: Event) -> bool {
        let mut events = self.events.lock().unwrap();
        events.push(event);
        let tokens = events.iter().filter(|e| matches!(e, Event::Token { .. })).count();
        drop(events);
        if let Some((reached, release)) = self.hold.take() {
            reached.send(()).unwrap();
            release.recv().unwrap();
        }
        tokens < self.gone_after
    }
}

fn tokens_and_finish(events: &[Event]) -> (usize, Option<Finish>) {
    let tokens = events.iter().filter(|e| matches!(e, Event::Token { .. })).count();
    let finish = events.iter().find_map(|e| match e {
        Event::Finished { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    (tokens, finish)
}

/// Cancellation at a known step: the engine is held inside the long request's first token
/// event while the test cancels it, so the cancel is handled before the next step, and exactly
/// one token was generated. A receiver that goes away after three tokens cancels there too.
/// Neither outcome can happen without cancellation (each asks for 100 tokens).
#[test]
fn cancel_frees_blocks_and_others_continue() {
    let engine = Engine::start(model(), None, EngineConfig::default()).expect("engine starts");
    let (reached_tx, reached) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let long_events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = Probe { events: long_events.clone(), hold: Some((reached_tx, release_rx)), gone_after: usize::MAX };
    let long = engine.submit_with(request(2, 10, 100), Box::new(probe)).unwrap();
    let other = engine.submit(request(4, 10, 10)).unwrap();
    reached.recv_timeout(std::time::Duration::from_secs(60)).expect("first token");
    engine.cancel(long);
    release.send(()).unwrap();
    assert_eq!(collect(&other.events).0.len(), 10);
    let stats = wait_idle(&engine);
    assert_eq!(tokens_and_finish(&long_events.lock().unwrap()), (1, Some(Finish::Cancelled)));
    assert_eq!(stats.kv_blocks_free, stats.kv_blocks_total);

    let gone_events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = Probe { events: gone_events.clone(), hold: None, gone_after: 3 };
    engine.submit_with(request(6, 10, 100), Box::new(probe)).unwrap();
    let last = engine.submit(request(8, 5, 3)).unwrap();
    assert_eq!(collect(&last.events).0.len(), 3);
    let stats = wait_idle(&engine);
    assert_eq!(tokens_and_finish(&gone_events.lock().unwrap()), (3, Some(Finish::Cancelled)));
    assert_eq!(stats.kv_blocks_free, stats.kv_blocks_total);
}

/// Limits that would leave requests waiting forever (or allocate absurdly) are refused when
/// the engine starts, each naming the limit.
#[test]
fn zero_and_absurd_limits_are_refused_at_start() {
    let cases = [
        (EngineConfig { limits: Limits { max_seqs: 0, max_batch_tokens: 64 }, ..EngineConfig::default() }, "max_seqs"),
        (
            EngineConfig { limits: Limits { max_seqs: 1 << 20, max_batch_tokens: 64 }, ..EngineConfig::default() },
            "max_seqs",
        ),
        (
            EngineConfig { limits: Limits { max_seqs: 4, max_batch_tokens: 0 }, ..EngineConfig::default() },
            "max_batch_tokens",
        ),
        (EngineConfig { threads: Some(0), ..EngineConfig::default() }, "threads"),
        (EngineConfig { threads: Some(1 << 20), ..EngineConfig::default() }, "threads"),
        (EngineConfig { kv_cache_bytes: 0, ..EngineConfig::default() }, "KV cache"),
        (EngineConfig { kv_cache_bytes: TINY_BLOCK_BYTES - 1, ..EngineConfig::default() }, "KV cache"),
    ];
    for (config, name) in cases {
        let err = Engine::start(model(), None, config).err().expect("refused").to_string();
        assert!(err.contains(name), "{config:?}: {err}");
    }
    // One block is enough to start (and to refuse what cannot fit, at submit).
    Engine::start(model(), None, EngineConfig { kv_cache_bytes: TINY_BLOCK_BYTES, ..EngineConfig::default() })
        .expect("one block starts");
}

#[test]
fn impossible_requests_are_refused_at_submit() {
    let config = EngineConfig { kv_cache_bytes: 2 * TINY_BLOCK_BYTES, ..EngineConfig::default() };
    let engine = Engine::start(model(), None, config).expect("engine starts");
    let err = |r: GenerateRequest| engine.submit(r).err().expect("refused").to_string();
    assert!(err(request(0, 100, 100)).contains("context length exceeded"));
    assert!(err(request(0, 40, 10)).contains("KV cache exhausted"));
    assert!(err(GenerateRequest { prompt: vec![], max_tokens: 1, ..request(0, 1, 1) }).contains("empty"));
    assert!(err(GenerateRequest { prompt: vec![60000], max_tokens: 1, ..request(0, 1, 1) }).contains("vocabulary"));
}

#[derive(Debug, Clone)]
enum Op {
    Submit(usize, usize),
    Step,
    Cancel(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The scheduler alone, with a stand-in for the model (append a token when logits are
    /// due): budgets hold every step, blocks are never leaked, and every request
    /// that is not cancelled finishes.
    #[test]
    fn scheduler_respects_budgets_and_finishes_everything(
        ops in proptest::collection::vec(prop_oneof![
            (1usize..50, 1usize..20).prop_map(|(p, g)| Op::Submit(p, g)),
            Just(Op::Step),
            (0usize..20).prop_map(Op::Cancel),
        ], 1..80),
        budget in 1usize..40,
        max_seqs in 1usize..6,
    ) {
        let config = Preset::Tiny.config();
        let limits = Limits { max_batch_tokens: budget, max_seqs };
        let mut sched = Scheduler::new(limits, KvPool::new(&config, 10).unwrap());
        let mut goals: Vec<(u64, usize)> = Vec::new(); // (id, total length when done)
        let mut next = 0u64;
        let step = |sched: &mut Scheduler, goals: &mut Vec<(u64, usize)>| -> Result<(), TestCaseError> {
            let batch = sched.schedule();
            prop_assert!(batch.tokens() <= budget);
            prop_assert!(sched.n_running() <= max_seqs);
            for s in &batch.seqs {
                prop_assert_eq!(s.start, sched.get(s.id).unwrap().computed);
                prop_assert_eq!(s.table.len(), s.start + s.tokens.len(), "the table holds the step's positions");
            }
            let logits: Vec<u64> = batch.seqs.iter().filter(|s| s.logits).map(|s| s.id).collect();
            // All-zero prompts: later requests (and preempted ones) reuse cached blocks.
            sched.complete(batch, true);
            for id in logits {
                sched.get_mut(id).unwrap().tokens.push(1);
            }
            goals.retain(|&(id, total)| {
                let done = sched.get(id).is_some_and(|s| s.tokens.len() >= total);
                if done {
                    sched.remove(id);
                }
                !done
            });
            Ok(())
        };
        for op in ops {
            match op {
                Op::Submit(prompt, gen) => {
                    // Admission control as the engine does it: never more than the pool.
                    if (prompt + gen).div_ceil(BLOCK_TOKENS) <= sched.pool().total_blocks() {
                        sched.add(next, vec![0; prompt]);
                        goals.push((next, prompt + gen));
                    }
                    next += 1;
                }
                Op::Step => step(&mut sched, &mut goals)?,
                Op::Cancel(i) => {
                    if i < goals.len() {
                        let (id, _) = goals.remove(i);
                        sched.remove(id);
                    }
                }
            }
        }
        let mut steps = 0;
        while !goals.is_empty() {
            step(&mut sched, &mut goals)?;
            steps += 1;
            prop_assert!(steps < 10_000, "requests never finish: {:?}", goals);
        }
        prop_assert!(sched.is_idle());
        prop_assert_eq!(sched.pool().free_blocks(), sched.pool().total_blocks());
    }
}

#[test]
fn top_logprobs_are_reported_per_token() {
    let engine = Engine::start(model(), None, EngineConfig::default()).expect("engine starts");
    let req = GenerateRequest { top_logprobs: 5, ..request(0, 6, 8) }; // greedy
    let h = engine.submit(req).unwrap();
    let mut seen = 0;
    while let Event::Token { id, logprob, top, .. } = h.events.recv().unwrap() {
        assert_eq!(top.len(), 5);
        assert_eq!((top[0].0, top[0].1.to_bits()), (id, logprob.to_bits()), "greedy token is the most likely");
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "sorted: {top:?}");
        assert!(top.iter().map(|t| (t.1 as f64).exp()).sum::<f64>() <= 1.0 + 1e-6);
        seen += 1;
    }
    assert_eq!(seen, 8);
}

/// Requests sharing a 40-token prefix: later ones reuse its first two blocks (and a follow-up
/// reuses blocks holding generated tokens), one after another and all at once, with prompts
/// chunked so two compute the same block concurrently; outputs are bitwise those of each alone
/// without the cache.
#[test]
fn shared_prefixes_hit_the_cache_and_equal_each_alone_bitwise() {
    let prefix: Vec<u32> = (0..40).map(|t| (t * 313 + 7) % 50257).collect();
    let reqs: Vec<GenerateRequest> = (0..4u64)
        .map(|i| {
            let suffix = (0..3 + 2 * i).map(|t| ((t * 71 + i * 1009 + 3) % 50257) as u32);
            with_prompt(i, prefix.iter().copied().chain(suffix).collect(), 12)
        })
        .collect();
    let expected = alone(&reqs);

    let engine = Engine::start(model(), None, EngineConfig::default()).expect("engine starts");
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(collect(&engine.submit(r.clone()).unwrap().events), expected[i], "request {i} after the others");
    }
    let s = wait_idle(&engine);
    // Prompts of 43, 45, 47 and 49 tokens look up 2, 2, 2 and 3 blocks; all but the first
    // request find the prefix's 2 full blocks (their third blocks hold their own suffixes).
    assert_eq!((s.prefix_cache_queries, s.prefix_cache_hits), (9, 6), "{s:?}");
    // A follow-up: the first request's prompt and output and 2 more tokens. Its first 48
    // positions (3 blocks, 5 of the generated tokens) were computed and cached already.
    let mut follow_up = reqs[0].prompt.clone();
    follow_up.extend(&expected[0].0);
    follow_up.extend([5, 6]);
    let follow_up = with_prompt(5, follow_up, 8);
    let want = alone(std::slice::from_ref(&follow_up)).remove(0);
    assert_eq!(collect(&engine.submit(follow_up).unwrap().events), want, "follow-up");
    assert_eq!(wait_idle(&engine).prefix_cache_hits, 6 + 3);

    let config = EngineConfig { limits: Limits { max_batch_tokens: 24, max_seqs: 8 }, ..EngineConfig::default() };
    let engine = Engine::start(model(), None, config).expect("engine starts");
    for round in 0..2 {
        let handles: Vec<_> = reqs.iter().map(|r| engine.submit(r.clone()).unwrap()).collect();
        for (i, h) in handles.iter().enumerate() {
            assert_eq!(collect(&h.events), expected[i], "round {round}: request {i} batched");
        }
        let s = wait_idle(&engine);
        assert!(s.prefix_cache_hits > 0, "round {round}: {s:?}");
    }
}

/// 32 requests in 4 groups sharing prefixes, a KV pool far too small for them (preemption,
/// recomputation from cached blocks, eviction), submitted in order and in reverse so each
/// sits at another position in the batch: every output is bitwise that of running alone.
#[test]
fn thirty_two_requests_with_shared_prefixes_under_preemption_equal_each_alone() {
    let prefixes: Vec<Vec<u32>> =
        (0..4u64).map(|g| (0..16 + 12 * g).map(|t| ((t * 211 + g * 4999 + 1) % 50257) as u32).collect()).collect();
    let reqs: Vec<GenerateRequest> = (0..32u64)
        .map(|i| {
            let suffix = (0..1 + i % 5).map(|t| ((t * 37 + i * 613) % 50257) as u32);
            let prompt = prefixes[i as usize % 4].iter().copied().chain(suffix).collect();
            with_prompt(i, prompt, 10 + i as usize % 7)
        })
        .collect();
    let expected = alone(&reqs);
    for reverse in [false, true] {
        let config = EngineConfig {
            limits: Limits { max_batch_tokens: 64, max_seqs: 32 },
            kv_cache_bytes: 16 * TINY_BLOCK_BYTES,
            ..EngineConfig::default()
        };
        let engine = Engine::start(model(), None, config).expect("engine starts");
        let mut order: Vec<usize> = (0..reqs.len()).collect();
        if reverse {
            order.reverse();
        }
        let handles: Vec<_> = order.iter().map(|&i| (i, engine.submit(reqs[i].clone()).unwrap())).collect();
        for (i, h) in &handles {
            assert_eq!(collect(&h.events), expected[*i], "request {i} (reversed: {reverse})");
        }
        let s = wait_idle(&engine);
        assert!(s.preemptions > 0 && s.prefix_cache_hits > 0, "{s:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Steady load: a closed loop keeps `max_seqs + extra` requests in the system, submitting
    /// a new one whenever one finishes. Requests are admitted in submission order (first come
    /// first served, whatever the prefix cache finds and whoever is preempted), and with blocks
    /// to spare a request's wait is bounded by the load, not by how long the loop runs: within
    /// `g_max` steps every running sequence finishes, so each such window admits `max_seqs`
    /// more from the queue ahead of it.
    #[test]
    fn admission_is_fcfs_and_waiting_is_bounded_under_steady_load(
        reqs in proptest::collection::vec((1usize..=40, 1usize..=20, 0u32..3), 60),
        max_seqs in 1usize..6,
        extra in 1usize..8,
        small in proptest::option::of(1usize..40),
    ) {
        let config = Preset::Tiny.config();
        // Small: 4 blocks (one request's most) + 2, any budget, so there is preemption.
        // Otherwise every running sequence gets its whole prompt or a decode each step.
        let (pool, budget) = match small {
            Some(budget) => (KvPool::new(&config, 6).unwrap(), budget),
            None => (KvPool::new(&config, 64).unwrap(), 40 * max_seqs),
        };
        let mut sched = Scheduler::new(Limits { max_batch_tokens: budget, max_seqs }, pool);
        let in_flight = max_seqs + extra;
        let g_max = reqs.iter().map(|r| r.1).max().unwrap();
        // Per request: (total length when done, step submitted, step first admitted).
        let mut life: Vec<(usize, usize, Option<usize>)> = Vec::new();
        let mut live: Vec<u64> = Vec::new();
        let mut admitted: Vec<u64> = Vec::new();
        let mut step = 0;
        while life.len() < reqs.len() || !live.is_empty() {
            while live.len() < in_flight && life.len() < reqs.len() {
                let (prompt, gen, group) = reqs[life.len()];
                let id = life.len() as u64;
                sched.add(id, (0..prompt as u32).map(|t| group * 100 + t % 7).collect());
                life.push((prompt + gen, step, None));
                live.push(id);
            }
            let batch = sched.schedule();
            for s in &batch.seqs {
                let first = &mut life[s.id as usize].2;
                if first.is_none() {
                    *first = Some(step);
                    admitted.push(s.id);
                }
            }
            let logits: Vec<u64> = batch.seqs.iter().filter(|s| s.logits).map(|s| s.id).collect();
            sched.complete(batch, true);
            for id in logits {
                sched.get_mut(id).unwrap().tokens.push(1);
            }
            live.retain(|&id| {
                let done = sched.get(id).unwrap().tokens.len() >= life[id as usize].0;
                if done {
                    sched.remove(id);
                }
                !done
            });
            step += 1;
            prop_assert!(step < 100_000, "requests never finish");
        }
        prop_assert!(admitted.windows(2).all(|w| w[0] < w[1]), "admitted out of order: {:?}", admitted);
        prop_assert_eq!(sched.pool().free_blocks(), sched.pool().total_blocks());
        if small.is_none() {
            prop_assert_eq!(sched.preemptions, 0);
            let bound = (in_flight.div_ceil(max_seqs) + 1) * g_max;
            for (id, &(_, submitted, first)) in life.iter().enumerate() {
                let wait = first.unwrap() - submitted;
                prop_assert!(wait <= bound, "request {} waited {} steps (bound {})", id, wait, bound);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Random mixes: prompt and output lengths, shared prefixes, arrival gaps, a small pool
    /// (so preemption happens) and cancellations at random points. Every request that is not
    /// cancelled produces bitwise what it produces alone; a cancelled one produced a prefix of it.
    #[test]
    fn random_mixes_with_arrivals_and_cancellations_are_batch_invariant(
        specs in prop::collection::vec((1usize..40, 1usize..24, 0u64..3, 0u64..4, prop::option::weighted(0.3, 0usize..12)), 2..14),
        blocks in 10usize..40,
    ) {
        let reqs: Vec<GenerateRequest> = specs
            .iter()
            .enumerate()
            .map(|(i, &(plen, max, group, _, _))| {
                let shared = (0..plen / 2).map(|t| ((t as u64 * 389 + group * 7001) % 50257) as u32);
                let own = (0..plen - plen / 2).map(|t| ((t as u64 * 97 + i as u64 * 1231 + 5) % 50257) as u32);
                with_prompt(i as u64, shared.chain(own).collect(), max)
            })
            .collect();
        let expected = alone(&reqs);
        let config = EngineConfig {
            limits: Limits { max_batch_tokens: 48, max_seqs: 8 },
            kv_cache_bytes: blocks * TINY_BLOCK_BYTES,
            ..EngineConfig::default()
        };
        let engine = Engine::start(model(), None, config).expect("engine starts");
        let mut handles = Vec::new();
        for (r, &(_, _, _, gap_ms, _)) in reqs.iter().zip(&specs) {
            std::thread::sleep(std::time::Duration::from_millis(gap_ms));
            handles.push(engine.submit(r.clone()).unwrap());
        }
        for (i, (h, &(_, _, _, _, cancel_after))) in handles.iter().zip(&specs).enumerate() {
            let (mut toks, mut lps) = (Vec::new(), Vec::new());
            let finish = loop {
                match h.events.recv_timeout(std::time::Duration::from_secs(60)).expect("engine answers") {
                    Event::Token { id, logprob, .. } => {
                        toks.push(id);
                        lps.push(logprob.to_bits());
                        if cancel_after == Some(toks.len()) {
                            engine.cancel(h.id);
                        }
                    }
                    Event::Finished { reason, .. } => break reason,
                    Event::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
                }
            };
            let (want_t, want_l, want_f) = &expected[i];
            if finish == Finish::Cancelled {
                prop_assert!(cancel_after.is_some(), "request {i} cancelled without being asked");
                prop_assert_eq!(&toks[..], &want_t[..toks.len()], "request {}", i);
                prop_assert_eq!(&lps[..], &want_l[..lps.len()], "request {}", i);
            } else {
                prop_assert_eq!((&toks, &lps, &finish), (want_t, want_l, want_f), "request {}", i);
            }
        }
        wait_idle(&engine);
    }
}
