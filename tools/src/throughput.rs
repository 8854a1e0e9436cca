//! `inferneo throughput`: the engine without HTTP, on the seed workload (50-token prompts,
//! 100 generated tokens, temperature 0.7, top-p 0.9), at several concurrency levels: N
//! requests submitted together, measured until all finish.

use inferneo_runtime::{Engine, EngineConfig, Event, GenerateRequest, Gpt2, SamplingParams};
use std::time::Instant;

pub struct Workload {
    pub prompt_tokens: usize,
    pub max_tokens: usize,
}

/// One batch: `n` requests submitted together on a fresh engine, measured until all finish.
#[derive(Clone, Copy, Debug)]
pub struct BatchFigures {
    pub concurrent: usize,
    pub tokens_per_s: f64,
    pub requests_per_s: f64,
    pub mean_itl_ms: f64,
    pub p50_ttft_ms: f64,
    pub wall_s: f64,
}

/// Runs each concurrency level on a fresh engine over `make_model()`, `rounds` sweeps in turn;
/// prints a Markdown table of each level's fastest round.
pub fn run(
    make_model: impl Fn() -> Gpt2,
    levels: &[usize],
    rounds: usize,
    w: &Workload,
    config: EngineConfig,
) -> Result<(), String> {
    if rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let mut runs: Vec<Vec<BatchFigures>> = vec![Vec::new(); levels.len()];
    for round in 1..=rounds {
        for (&n, runs) in levels.iter().zip(&mut runs) {
            let f = measure(make_model(), n, w, config)?;
            if rounds > 1 {
                eprintln!("note: round {round}/{rounds}, {n} concurrent: {:.1} tok/s", f.tokens_per_s);
            }
            runs.push(f);
        }
    }
    println!(
        "| concurrent | generated tok/s | requests/s | mean inter-token latency (ms) | p50 TTFT (ms) | wall (s) | tok/s per round |"
    );
    println!("|---|---|---|---|---|---|---|");
    for runs in &runs {
        let f = runs.iter().max_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s)).expect("rounds >= 1");
        let each: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.tokens_per_s)).collect();
        println!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.0} | {:.2} | {} |",
            f.concurrent,
            f.tokens_per_s,
            f.requests_per_s,
            f.mean_itl_ms,
            f.p50_ttft_ms,
            f.wall_s,
            each.join(" / ")
        );
    }
    Ok(())
}

/// `n` concurrent requests of the seed workload on a fresh engine over `model`.
pub fn measure(model: Gpt2, n: usize, w: &Workload, config: EngineConfig) -> Result<BatchFigures, String> {
    let engine = Engine::start(model, None, config).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let handles = (0..n)
        .map(|i| {
            let prompt = (0..w.prompt_tokens).map(|t| ((t * 389 + i * 7919 + 11) % 50257) as u32).collect();
            let sampling =
                SamplingParams { temperature: 0.7, top_k: 0, top_p: 0.9, seed: i as u64, ..SamplingParams::default() };
            engine.submit(GenerateRequest {
                prompt,
                max_tokens: w.max_tokens,
                sampling,
                stop_tokens: vec![],
                top_logprobs: 0,
                prompt_logprobs: false,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let mut ttft = Vec::new();
    let mut itl_sum = 0.0;
    let mut itl_n = 0usize;
    let mut tokens = 0usize;
    // Each request's stream is drained by its own thread so arrival times are real.
    let results: Vec<(f64, f64, usize, usize)> = std::thread::scope(|s| {
        let joins: Vec<_> = handles
            .into_iter()
            .map(|h| {
                s.spawn(move || {
                    let (mut first, mut last, mut gaps, mut n) = (None, start.elapsed().as_secs_f64(), 0.0, 0usize);
                    while let Ok(ev) = h.events.recv() {
                        let now = start.elapsed().as_secs_f64();
                        match ev {
                            Event::Token { .. } => {
                                if first.is_none() {
                                    first = Some(now);
                                } else {
                                    gaps += now - last;
                                }
                                last = now;
                                n += 1;
                            }
                            Event::Finished { .. } => break,
                            Event::PromptLogprobs(_) => {}
                        }
                    }
                    (first.unwrap_or(0.0), gaps, n.saturating_sub(1), n)
                })
            })
            .collect();
        joins.into_iter().map(|j| j.join().expect("reader thread")).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    for (first, gaps, ngaps, n) in results {
        ttft.push(first);
        itl_sum += gaps;
        itl_n += ngaps;
        tokens += n;
    }
    ttft.sort_by(f64::total_cmp);
    Ok(BatchFigures {
        concurrent: n,
        tokens_per_s: tokens as f64 / wall,
        requests_per_s: n as f64 / wall,
        mean_itl_ms: itl_sum / itl_n.max(1) as f64 * 1e3,
        p50_ttft_ms: ttft[ttft.len() / 2] * 1e3,
        wall_s: wall,
    })
}
