//! `inferneo bench`: the seed report's scenarios (latency, throughput, concurrency, batch,
//! production) against any loopback OpenAI-compatible `/v1/completions` endpoint, or our own
//! server started in-process. Seeded, bounded in time; Markdown on stdout, JSON and SVG files
//! (with `--peers`, the peers harness's results drawn on the same axes).

mod chart;
mod client;
mod figures;
mod peers;
mod report;
mod run;
mod soak;
mod stats;

use crate::throughput;
use clap::Args;
use client::Target;
use inferneo_runtime::scheduler::Limits;
use inferneo_runtime::{EngineConfig, Isa, LoadOptions, ModelSource, WeightDtype};
use inferneo_server::{ModelSpec, Server, ServerConfig};
use run::{Driver, Level, Load, Shape};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SCENARIOS: [&str; 5] = ["latency", "throughput", "concurrency", "batch", "production"];
/// Checks rather than measurements: run only when named, never by `all`.
const CHECKS: [&str; 1] = ["soak"];

#[derive(Args)]
pub struct BenchArgs {
    /// An OpenAI-compatible server on loopback (http://127.0.0.1:PORT). Default: start ours
    /// in-process with --model.
    #[arg(long)]
    url: Option<String>,
    /// The `model` field sent with each request (default: the local server's model name).
    #[arg(long)]
    model_name: Option<String>,
    /// Local server only: a HuggingFace directory to serve (default: the embedded model).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Local server only: weight storage (f32, f16, bf16, int8, w8a8, w4a8, bf16dot). Default: f32, or the
    /// model directory's own dtype if it was written by `inferneo convert`.
    #[arg(long)]
    dtype: Option<WeightDtype>,
    /// Local server only: sequences per engine step.
    #[arg(long, default_value_t = 64)]
    max_seqs: usize,
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    #[arg(long, default_value_t = 512)]
    kv_cache_mb: usize,
    #[arg(long, env = "INFERNEO_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Comma-separated scenarios: latency, throughput, concurrency, batch, production, or all;
    /// `none` measures nothing and only draws the --peers results into --svg; and `soak`, a check run only when named: --duration seconds of mixed traffic
    /// (streaming, plain, cancelled, malformed) that fails on an unexpected status, memory
    /// growth past --soak-rss-growth-mb after the warm-up, or gauges not back to zero.
    #[arg(long, default_value = "all")]
    scenarios: String,
    #[arg(long, default_value_t = 50)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 100)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    /// Seeds prompts, lengths, arrival times and sampling: same seed, same run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Latency scenario: requests, one at a time.
    #[arg(long, default_value_t = 10)]
    requests: usize,
    /// Throughput scenario: target request rates (Poisson arrivals); then doubling until saturated.
    #[arg(long, default_value = "1,2,5,10,20")]
    rates: String,
    /// Concurrency scenario: closed-loop clients.
    #[arg(long, default_value = "1,4,8,16,32")]
    concurrency: String,
    /// Batch scenario (engine, no HTTP; local model only): requests submitted together.
    #[arg(long, default_value = "1,4,8,16,32")]
    batch_sizes: String,
    /// Seconds each throughput/concurrency level sends new requests.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds of discarded warm-up requests before measuring.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Production scenario: seconds of mixed-length Poisson traffic.
    #[arg(long, default_value_t = 60.0)]
    soak: f64,
    /// Production scenario: request rate.
    #[arg(long, default_value_t = 1.0)]
    production_rate: f64,
    /// Seconds a level waits for its requests after it stops sending; then they are abandoned
    /// and counted as unfinished (bounds a run past saturation).
    #[arg(long, default_value_t = 60.0)]
    drain: f64,
    /// Seconds before one request counts as failed (timeout).
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Soak: concurrent clients.
    #[arg(long, default_value_t = 8)]
    soak_clients: usize,
    /// Soak: resident memory may grow this many MB from the end of the warm-up (a fifth of
    /// the run, at least 5 s) to the end.
    #[arg(long, default_value_t = 64.0)]
    soak_rss_growth_mb: f64,
    /// The server's pid, for its peak RSS (a local server is this process).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write every figure and the machine description here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write SVG charts into this directory: throughput vs concurrency, tokens/s against
    /// p50/p99 time to first token, throughput vs batch size, latency vs offered load.
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
    /// The peers harness's results (tools/peers/run_all.sh: target/peers/results): draw every
    /// system in them on the --svg charts beside this run, each on the chart of its mode (HTTP
    /// server or offline batch). Failed peers and unreadable files are listed under the charts.
    #[arg(long, value_name = "DIR")]
    peers: Option<PathBuf>,
    /// A smoke run: tiny durations and levels (for tests).
    #[arg(long)]
    quick: bool,
}

fn list<T: std::str::FromStr>(flag: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|x| {
            x.trim().parse::<T>().map_err(|_| format!("--{flag} '{v}': expected a comma-separated list of numbers"))
        })
        .collect()
}

fn secs(flag: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{flag} {v}: expected seconds >= 0"))
}

pub fn run(mut a: BenchArgs, isa: Option<Isa>) -> Result<(), String> {
    // A wrong --peers directory fails now, not after minutes of measuring.
    if let Some(dir) = &a.peers {
        if a.svg.is_none() {
            return Err(format!("--peers {}: needs --svg DIR, the directory its charts are written to", dir.display()));
        }
        peers::result_files(dir)?;
    }
    if a.scenarios.trim() == "none" {
        return draw_peers_only(&a);
    }
    if a.quick {
        (a.requests, a.duration, a.warmup, a.soak) = (3, 1.0, 0.0, 2.0);
        (a.rates, a.concurrency, a.batch_sizes) = ("2,4".into(), "1,2".into(), "1,2".into());
        (a.production_rate, a.drain) = (2.0, 10.0);
    }
    let mut scenarios: Vec<&str> =
        if a.scenarios == "all" { SCENARIOS.to_vec() } else { a.scenarios.split(',').map(str::trim).collect() };
    // The batch scenario loads its own copies of the model; run it last so the server's peak
    // RSS is read before them.
    scenarios.sort_by_key(|s| *s == "batch");
    if let Some(bad) = scenarios.iter().find(|s| !SCENARIOS.contains(s) && !CHECKS.contains(s)) {
        return Err(format!(
            "--scenarios: unknown scenario '{bad}' (expected {}, {} or all)",
            SCENARIOS.join(", "),
            CHECKS.join(", ")
        ));
    }
    if a.soak_clients == 0 {
        return Err("--soak-clients must be > 0".into());
    }
    let rates: Vec<f64> = list("rates", &a.rates)?;
    let positive = |r: f64| r > 0.0 && r.is_finite();
    if !rates.iter().all(|&r| positive(r)) || !positive(a.production_rate) {
        return Err("--rates and --production-rate must be > 0".into());
    }
    let clients: Vec<usize> = list("concurrency", &a.concurrency)?;
    let batches: Vec<usize> = list("batch-sizes", &a.batch_sizes)?;
    if clients.contains(&0) || batches.contains(&0) || a.max_tokens == 0 || a.prompt_tokens == 0 {
        return Err("clients, batch sizes, --prompt-tokens and --max-tokens must be > 0".into());
    }
    let (duration, warmup, soak, timeout) =
        (secs("duration", a.duration)?, secs("warmup", a.warmup)?, secs("soak", a.soak)?, secs("timeout", a.timeout)?);
    let drain = secs("drain", a.drain)?;
    let load = LoadOptions { dtype: a.dtype, isa, threads: None };
    let kernels = load.kernels().map_err(|e| e.to_string())?;
    let local_name =
        a.model.as_ref().and_then(|d| d.file_name()).map_or("gpt2".into(), |n| n.to_string_lossy().into_owned());
    let model_name = a.model_name.clone().unwrap_or(local_name.clone());
    let engine = EngineConfig {
        limits: Limits { max_batch_tokens: a.max_batch_tokens, max_seqs: a.max_seqs },
        kv_cache_bytes: a.kv_cache_mb.checked_mul(1 << 20).ok_or("--kv-cache-mb: too large")?,
        ..EngineConfig::default()
    };
    let source = ModelSource::from_path(a.model.clone());
    let dtype = inferneo_runtime::served_dtype(&source, &load).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let shape = Shape {
        prompt_tokens: a.prompt_tokens,
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        mixed: false,
        context: 1024,
    };
    let mut results = serde_json::Map::new();
    let mut levels_by: Vec<(&str, Vec<Level>)> = Vec::new();
    let mut batch_rows = Vec::new();
    let mut server_rss = None;
    let mut soak_failure = None;
    // The batch scenario runs the engine without HTTP: asked alone, no server is started, so
    // the process holds one model at a time (a large model twice would not fit beside it).
    let serve = a.url.is_some() || scenarios.iter().any(|s| *s != "batch");
    rt.block_on(async {
        // Our server in-process unless --url names one.
        let (url, stop) = match &a.url {
            Some(u) => (Some(u.clone()), None),
            None if !serve => (None, None),
            None => {
                let spec = ModelSpec {
                    name: local_name.clone(),
                    source: source.clone(),
                    load,
                    engine,
                    max_queue: 4096,
                    chat_template: None,
                };
                let config = ServerConfig { port: 0, models: vec![spec], ..ServerConfig::default() };
                let server = Server::bind(config).await.map_err(|e| format!("cannot start the server: {e}"))?;
                let addr = server.local_addr().map_err(|e| e.to_string())?;
                while !server.ready() {
                    if let Some(e) = server.failure() {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                tokio::spawn(server.run(async {
                    let _ = rx.await;
                }));
                (Some(format!("http://{addr}")), Some(tx))
            }
        };
        let driver = match &url {
            Some(url) => {
                let target = Target::parse(url, &model_name, a.api_key.clone())?;
                eprintln!(
                    "bench: {url}, model '{model_name}', {} prompt + {} generated tokens, seed {}",
                    a.prompt_tokens, a.max_tokens, a.seed
                );
                let driver = Driver { target, timeout, drain, seed: a.seed };
                if !warmup.is_zero() {
                    driver.level("warmup", Load::Closed { clients: 1 }, warmup, &shape).await;
                }
                Some(driver)
            }
            None => {
                eprintln!(
                    "bench: the engine alone (no server), {} prompt + {} generated tokens",
                    a.prompt_tokens, a.max_tokens
                );
                None
            }
        };
        for &scenario in &scenarios {
            if scenario == "batch" {
                server_rss = server_rss.or_else(|| if serve { report::peak_rss_mb(None) } else { None });
                if a.url.is_some() {
                    eprintln!("  batch: skipped (engine-level, needs the local model; not available with --url)");
                    continue;
                }
                let w = throughput::Workload { prompt_tokens: a.prompt_tokens, max_tokens: a.max_tokens };
                for &n in &batches {
                    let model = inferneo_runtime::load(&source, &load).map_err(|e| e.to_string())?.model;
                    let config =
                        EngineConfig { limits: Limits { max_seqs: n.max(a.max_seqs), ..engine.limits }, ..engine };
                    let f = tokio::task::block_in_place(|| throughput::measure(model, n, &w, config))?;
                    eprintln!("  batch {n}: {:.1} tok/s, mean ITL {:.1} ms", f.tokens_per_s, f.mean_itl_ms);
                    batch_rows.push(f);
                }
                continue;
            }
            let driver = driver.as_ref().expect("a server is there for every scenario but batch");
            let mut levels = Vec::new();
            match scenario {
                "latency" => levels
                    .push(driver.level("latency", Load::Sequential { n: a.requests }, Duration::ZERO, &shape).await),
                "throughput" => {
                    // Every listed rate (past saturation too: that is where latency breaks), then
                    // doubling until the server saturates (completes under 80% of the offered
                    // rate or fails requests), at most four more levels.
                    let saturated = |l: &Level| l.achieved_rps() < 0.8 * l.x || l.success_rate() < 0.95;
                    for &rps in &rates {
                        levels.push(driver.level("throughput", Load::Open { rps }, duration, &shape).await);
                    }
                    let mut rps = rates.last().copied().unwrap_or(1.0);
                    for _ in 0..4 {
                        if levels.last().is_none_or(saturated) {
                            break;
                        }
                        rps *= 2.0;
                        levels.push(driver.level("throughput", Load::Open { rps }, duration, &shape).await);
                    }
                }
                "concurrency" => {
                    for &c in &clients {
                        levels.push(driver.level("concurrency", Load::Closed { clients: c }, duration, &shape).await);
                    }
                }
                "production" => {
                    let mixed = Shape { mixed: true, ..shape.clone() };
                    levels.push(driver.level("production", Load::Open { rps: a.production_rate }, soak, &mixed).await);
                }
                "soak" => {
                    let plan = soak::Plan {
                        duration,
                        clients: a.soak_clients,
                        seed: a.seed,
                        server_pid: if a.url.is_some() { a.server_pid } else { None },
                        rss_growth_mb: a.soak_rss_growth_mb,
                    };
                    if a.url.is_some() && a.server_pid.is_none() {
                        eprintln!("  soak: the server's memory is not checked (pass --server-pid)");
                    }
                    let report = soak::run(&driver.target, &plan).await;
                    match report {
                        Ok(r) => {
                            results.insert("soak".into(), r);
                        }
                        Err(e) => soak_failure = Some(e),
                    }
                }
                _ => unreachable!("checked above"),
            }
            if !levels.is_empty() {
                results.insert(scenario.to_string(), Value::Array(levels.iter().map(Level::json).collect()));
                levels_by.push((scenario, levels));
            }
        }
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        Ok::<(), String>(())
    })?;
    if !batch_rows.is_empty() {
        results.insert(
            "batch".into(),
            batch_rows
                .iter()
                .map(|f| {
                    json!({"batch": f.concurrent, "generated_tokens_per_s": f.tokens_per_s, "requests_per_s": f.requests_per_s,
                           "mean_inter_token_latency_ms": f.mean_itl_ms, "p50_ttft_ms": f.p50_ttft_ms, "wall_s": f.wall_s})
                })
                .collect(),
        );
    }
    let rss = match (&a.url, a.server_pid) {
        (Some(_), None) => None,
        (Some(_), pid) => report::peak_rss_mb(pid),
        // In-process: this process's peak before the batch scenario's model copies.
        (None, _) if serve => server_rss.or_else(|| report::peak_rss_mb(None)),
        (None, _) => None,
    };
    // Without a server: the process's peak is the engine's (one model, its KV pool, a batch).
    let engine_rss = (!serve).then(|| report::peak_rss_mb(None)).flatten();

    for (scenario, levels) in &levels_by {
        println!("\n### {scenario}\n\n{}", report::table(levels));
        let (short, total): (usize, usize) =
            levels.iter().fold((0, 0), |(s, t), l| (s + l.short(), t + l.ok().count()));
        if short > 0 {
            println!(
                "\nwarning: {short} of {total} {scenario} requests generated fewer tokens than asked: the server \
                 ignored `ignore_eos` (its tok/s and latencies cover shorter generations)"
            );
        }
    }
    if !batch_rows.is_empty() {
        println!("\n### batch (engine, no HTTP)\n\n| batch | gen tok/s | req/s | mean ITL (ms) | p50 TTFT (ms) | wall (s) |\n|---|---|---|---|---|---|");
        for f in &batch_rows {
            println!(
                "| {} | {:.1} | {:.2} | {:.1} | {:.0} | {:.2} |",
                f.concurrent, f.tokens_per_s, f.requests_per_s, f.mean_itl_ms, f.p50_ttft_ms, f.wall_s
            );
        }
    }
    match engine_rss {
        Some(m) => println!("\nEngine peak RSS (no server): {m:.0} MB"),
        None => println!(
            "\nServer peak RSS: {}",
            rss.map_or("unknown (pass --server-pid)".into(), |m| format!("{m:.0} MB"))
        ),
    }

    let doc = json!({
            "machine": report::machine(&kernels.isa().to_string()),
            "target": {"url": a.url, "model": model_name, "local": a.url.is_none(), "dtype": dtype.name()},
            "workload": {"prompt_tokens": a.prompt_tokens, "max_tokens": a.max_tokens, "temperature": a.temperature,
                         "top_p": a.top_p, "seed": a.seed, "duration_s": a.duration, "warmup_s": a.warmup,
                         "soak_s": a.soak, "production_rate": a.production_rate},
            "scenarios": results,
            "server_peak_rss_mb": rss,
            "engine_peak_rss_mb": engine_rss,
            "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    let mut result = match &a.json {
        Some(path) => std::fs::write(path, serde_json::to_string_pretty(&doc).expect("json"))
            .map_err(|e| format!("{}: {e}", path.display())),
        None => Ok(()),
    };
    if let Some(dir) = &a.svg {
        result = result.and(draw_run(&a, dir, &doc));
    }
    match soak_failure {
        Some(e) => Err(e),
        None => result,
    }
}

/// `--scenarios none`: the charts of stored results only, nothing measured (how the peers
/// harness draws its charts at the end of a run, and how docs/bench is redrawn).
fn draw_peers_only(a: &BenchArgs) -> Result<(), String> {
    let (Some(dir), Some(out)) = (&a.peers, &a.svg) else {
        return Err(
            "--scenarios none: nothing to measure, and nothing to draw without --peers DIR and --svg DIR".into()
        );
    };
    let p = peers::load(dir)?;
    for note in &p.notes {
        eprintln!("  peers: {note}");
    }
    for path in figures::write(out, &p.series, &p.notes)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// `--svg DIR` after a run: this run's lines, drawn from its JSON document, and the --peers
/// results beside them.
fn draw_run(a: &BenchArgs, dir: &Path, doc: &Value) -> Result<(), String> {
    let p = match &a.peers {
        Some(d) => peers::load(d)?,
        None => peers::Peers::default(),
    };
    for note in &p.notes {
        eprintln!("  peers: {note}");
    }
    // The peers' directory usually holds an inferneo run of its own (run_all.sh benches ours
    // too), so this run's lines say which they are.
    let name = a.peers.as_ref().map(|_| match &a.url {
        None => format!("inferneo {}, this run", doc["target"]["dtype"].as_str().unwrap_or("f32")),
        Some(url) => format!("{url}, this run"),
    });
    // Err only says this run has no figures to draw: then only peers are drawn.
    let mut series = figures::from_result(doc, "this run", name.as_deref()).unwrap_or_default();
    series.extend(p.series);
    let mut notes = figures::failed_levels(doc, "this run", name.as_deref());
    notes.extend(p.notes);
    let paths = figures::write(dir, &series, &notes)?;
    for path in paths {
        eprintln!("  wrote {}", path.display());
    }
    Ok(())
}
