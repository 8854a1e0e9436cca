//! The scenarios: seeded workloads, open-loop (Poisson) and closed-loop drivers, and a scraper
//! of the server's `/metrics` gauges while a level runs.

use super::client::{send, Outcome, Target, Workload};
use super::stats::Summary;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deterministic randomness for prompts, lengths and arrival times (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        inferneo_runtime::init::splitmix64(self.0)
    }

    /// Uniform in (0, 1].
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub fn exponential(&mut self, rate: f64) -> f64 {
        -self.unit().ln() / rate
    }

    pub fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }

    /// Token ids of ordinary text-ish tokens (never end-of-text).
    pub fn prompt(&mut self, len: usize) -> Vec<u32> {
        (0..len).map(|_| (self.next_u64() % 50_000) as u32 + 100).collect()
    }
}

/// The request shape of a scenario.
#[derive(Clone, Debug)]
pub struct Shape {
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    /// Production mix: lengths drawn from log-normal distributions around these medians.
    pub mixed: bool,
    pub context: usize,
}

impl Shape {
    pub fn request(&self, rng: &mut Rng, seed: u64) -> Workload {
        let (p, m) = if self.mixed {
            let draw = |rng: &mut Rng, median: f64, sigma: f64, lo: usize, hi: usize| {
                ((median.ln() + sigma * rng.normal()).exp().round() as usize).clamp(lo, hi)
            };
            let p = draw(rng, self.prompt_tokens as f64, 0.8, 4, self.context / 2);
            let m = draw(rng, self.max_tokens as f64, 0.7, 4, self.context - p);
            (p, m)
        } else {
            (self.prompt_tokens, self.max_tokens)
        };
        Workload { prompt: rng.prompt(p), max_tokens: m, temperature: self.temperature, top_p: self.top_p, seed }
    }
}

/// Peaks of the server's gauges while a level ran (absent for servers without our metrics).
#[derive(Clone, Debug, Default)]
pub struct Peaks {
    pub queue_depth: Option<f64>,
    pub running: Option<f64>,
    pub kv_blocks_used: Option<f64>,
    pub kv_blocks_free_min: Option<f64>,
}

impl Peaks {
    fn fold(&mut self, text: &str, model: &str) {
        let series = |name: &str| {
            let prefix = format!("{name}{{model=\"{model}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
        };
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let min = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.queue_depth = max(self.queue_depth, series("inferneo_queue_depth"));
        self.running = max(self.running, series("inferneo_running_sequences"));
        self.kv_blocks_used = max(self.kv_blocks_used, series("inferneo_kv_blocks_used"));
        self.kv_blocks_free_min = min(self.kv_blocks_free_min, series("inferneo_kv_blocks_free"));
    }

    pub fn json(&self) -> Value {
        json!({"queue_depth_max": self.queue_depth, "running_max": self.running,
               "kv_blocks_used_max": self.kv_blocks_used, "kv_blocks_free_min": self.kv_blocks_free_min})
    }
}

/// The server's `/metrics` text, if it serves one.
pub(super) async fn scrape_text(t: &Target) -> Option<String> {
    use http_body_util::{BodyExt, Empty};
    let tcp = tokio::net::TcpStream::connect(&t.addr).await.ok()?;
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics").header("host", &t.addr).body(Empty::<bytes::Bytes>::new()).ok()?;
    let resp = s.send_request(req).await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// One measured level of a scenario.
#[derive(Clone, Debug)]
pub struct Level {
    pub scenario: &'static str,
    /// Target rate (throughput, production) or clients (concurrency, latency: 1).
    pub x: f64,
    pub target_rps: Option<f64>,
    pub wall: f64,
    pub outcomes: Vec<Outcome>,
    pub peaks: Peaks,
}

impl Level {
    pub fn ok(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| o.error.is_none())
    }

    pub fn success_rate(&self) -> f64 {
        if self.outcomes.is_empty() {
            return 0.0;
        }
        self.ok().count() as f64 / self.outcomes.len() as f64
    }

    pub fn achieved_rps(&self) -> f64 {
        self.ok().count() as f64 / self.wall.max(1e-9)
    }

    pub fn tokens_per_s(&self) -> f64 {
        self.ok().map(|o| o.completion_tokens).sum::<usize>() as f64 / self.wall.max(1e-9)
    }

    pub fn latency(&self) -> Summary {
        Summary::of(&self.ok().map(|o| o.latency).collect::<Vec<_>>())
    }

    pub fn ttft(&self) -> Summary {
        Summary::of(&self.ok().filter_map(|o| o.ttft).collect::<Vec<_>>())
    }

    pub fn itl(&self) -> Summary {
        Summary::of(&self.ok().filter_map(|o| o.itl).collect::<Vec<_>>())
    }

    /// Successful requests that generated fewer tokens than asked: the server ended them early
    /// although the bench sends `ignore_eos` (it ignored the parameter).
    pub fn short(&self) -> usize {
        self.ok().filter(|o| o.completion_tokens < o.asked_tokens).count()
    }

    pub fn errors(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in self.outcomes.iter().filter_map(|o| o.error.clone()) {
            *m.entry(e).or_default() += 1;
        }
        m
    }

    pub fn json(&self) -> Value {
        json!({
            "x": self.x,
            "target_rps": self.target_rps,
            "requests": self.outcomes.len(),
            "succeeded": self.ok().count(),
            "success_rate": self.success_rate(),
            "errors": self.errors(),
            "wall_s": self.wall,
            "achieved_rps": self.achieved_rps(),
            "generated_tokens_per_s": self.tokens_per_s(),
            "latency": self.latency().json_ms(),
            "ttft": self.ttft().json_ms(),
            "inter_token_latency": self.itl().json_ms(),
            "prompt_tokens": self.ok().map(|o| o.prompt_tokens).sum::<usize>(),
            "completion_tokens": self.ok().map(|o| o.completion_tokens).sum::<usize>(),
            "short_completions": self.short(),
            "gauges": self.peaks.json(),
        })
    }
}

/// Run-wide settings of the drivers.
pub struct Driver {
    pub target: Target,
    pub timeout: Duration,
    /// After a level stops sending, requests still running get this long, then are abandoned
    /// (counted as `unfinished`): a level past saturation must not run for the whole backlog.
    pub drain: Duration,
    pub seed: u64,
}

/// Longest wait for the server to go idle before a level (see [`Driver::settle`]).
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// How requests are issued during a level.
pub enum Load {
    /// `clients` closed loops, each sending its next request when the last one finished.
    Closed { clients: usize },
    /// Poisson arrivals at `rps`, whatever the server's pace.
    Open { rps: f64 },
    /// Exactly `n` requests, one after another.
    Sequential { n: usize },
}

impl Driver {
    /// Waits until the server reports no queued and no running sequence, so a level is not
    /// measured (nor its gauges read) while the server still works off or cancels what the
    /// previous level abandoned. Servers without our gauges are not waited for; a server that
    /// does not go idle within [`SETTLE_MAX`] gets a notice and the level runs anyway.
    async fn settle(&self) {
        let start = Instant::now();
        loop {
            let Some(text) = scrape_text(&self.target).await else { return };
            let mut now = Peaks::default();
            now.fold(&text, &self.target.model);
            match (now.queue_depth, now.running) {
                (Some(q), Some(r)) if q > 0.0 || r > 0.0 => {}
                _ => return,
            }
            if start.elapsed() > SETTLE_MAX {
                eprintln!("  note: the server still had work from the previous level after {} s", SETTLE_MAX.as_secs());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs one level: requests start during `duration` (or `n` sequential ones), then the
    /// level waits for them, bounded by the request timeout.
    pub async fn level(&self, scenario: &'static str, load: Load, duration: Duration, shape: &Shape) -> Level {
        self.settle().await;
        let origin = Instant::now();
        let done: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let peaks: Arc<Mutex<Peaks>> = Arc::default();
        let (x, target_rps) = match load {
            Load::Closed { clients } => (clients as f64, None),
            Load::Open { rps } => (rps, Some(rps)),
            Load::Sequential { .. } => (1.0, None),
        };
        let label = match load {
            Load::Closed { clients } => format!("{clients} clients"),
            Load::Open { rps } => format!("{rps} req/s"),
            Load::Sequential { n } => format!("{n} sequential"),
        };
        let monitor = {
            let (t, done, peaks, label) = (self.target.clone(), done.clone(), peaks.clone(), label.clone());
            let tty = std::io::stderr().is_terminal();
            tokio::spawn(async move {
                loop {
                    if let Some(text) = scrape_text(&t).await {
                        peaks.lock().unwrap().fold(&text, &t.model);
                    }
                    if tty {
                        let (n, e) = {
                            let d = done.lock().unwrap();
                            (d.len(), d.iter().filter(|o| o.error.is_some()).count())
                        };
                        let el = origin.elapsed().as_secs_f64();
                        eprint!("\r\x1b[2K  {scenario} {label}: {el:.0} s, {n} done, {e} errors");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        let mut rng = Rng::new(self.seed ^ (x.to_bits().rotate_left(17)) ^ scenario.len() as u64);
        let mut tasks = tokio::task::JoinSet::new();
        let end = origin + duration;
        match load {
            Load::Sequential { n } => {
                for i in 0..n {
                    let w = shape.request(&mut rng, self.seed + i as u64);
                    let o = send(&self.target, &w, self.timeout).await;
                    done.lock().unwrap().push(o);
                }
            }
            Load::Open { rps } => {
                let mut at = origin;
                let mut i = 0u64;
                loop {
                    at += Duration::from_secs_f64(rng.exponential(rps));
                    if at >= end {
                        break;
                    }
                    tokio::time::sleep_until(at.into()).await;
                    let (t, w, done, timeout) =
                        (self.target.clone(), shape.request(&mut rng, self.seed + i), done.clone(), self.timeout);
                    tasks.spawn(async move {
                        let o = send(&t, &w, timeout).await;
                        done.lock().unwrap().push(o);
                    });
                    i += 1;
                }
            }
            Load::Closed { clients } => {
                for c in 0..clients {
                    let (t, done, timeout, shape) = (self.target.clone(), done.clone(), self.timeout, shape.clone());
                    let mut rng = Rng::new(self.seed.wrapping_add(c as u64 * 7919) ^ rng.next_u64());
                    let seed = self.seed;
                    tasks.spawn(async move {
                        let mut i = 0u64;
                        while Instant::now() < end {
                            let w = shape.request(&mut rng, seed + c as u64 * 1_000_003 + i);
                            let o = send(&t, &w, timeout).await;
                            done.lock().unwrap().push(o);
                            i += 1;
                        }
                    });
                }
            }
        }
        let sending_ends = end.max(Instant::now());
        let drained = tokio::time::timeout_at((sending_ends + self.drain).into(), async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            // Each task left holds one request in flight; dropping it closes the connection,
            // which cancels the request on the server.
            let left = tasks.len();
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let unfinished = Outcome {
                latency: 0.0,
                ttft: None,
                itl: None,
                prompt_tokens: 0,
                completion_tokens: 0,
                asked_tokens: 0,
                error: Some("unfinished".into()),
            };
            done.lock().unwrap().extend(std::iter::repeat_n(unfinished, left));
        }
        // Rates are over the whole offered window, even if the last request finished early.
        let wall = origin.elapsed().max(duration).as_secs_f64();
        monitor.abort();
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
        let outcomes = std::mem::take(&mut *done.lock().unwrap());
        let peaks = peaks.lock().unwrap().clone();
        let level = Level { scenario, x, target_rps, wall, outcomes, peaks };
        eprintln!(
            "  {scenario} {label}: {} requests, {:.1}% ok, {:.2} req/s, {:.1} tok/s, p50 {:.0} ms",
            level.outcomes.len(),
            level.success_rate() * 100.0,
            level.achieved_rps(),
            level.tokens_per_s(),
            level.latency().p50 * 1e3
        );
        level
    }
}
