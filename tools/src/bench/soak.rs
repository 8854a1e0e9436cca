//! The soak check: mixed traffic for a fixed time (streaming and not, random lengths, clients
//! that cancel mid-request, malformed requests), with the server's resident memory and
//! gauges sampled throughout. It fails when a request ends in a status its kind does not
//! allow, when resident memory grows past a bound after the warm-up, when the gauges do not
//! return to zero once the traffic stops, or when the server's per-route HTTP counter does not
//! count every request exactly once.

use super::client::{send, Target, Workload};
use super::run::Rng;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// What a soak run is asked to do.
pub struct Plan {
    pub duration: Duration,
    pub clients: usize,
    pub seed: u64,
    /// The server's pid for its memory; `None`: this process (the in-process server).
    pub server_pid: Option<u32>,
    /// Resident memory may grow this much (MB) from the end of the warm-up to the end.
    pub rss_growth_mb: f64,
}

/// The kinds of request the soak sends, and the outcomes each may end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Stream,
    Plain,
    /// A stream whose client leaves after its first chunk.
    CancelledStream,
    /// A plain request whose client leaves after a random wait.
    CancelledPlain,
    /// Malformed: must be a 4xx.
    Bad,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Plain => "plain",
            Kind::CancelledStream => "cancelled_stream",
            Kind::CancelledPlain => "cancelled_plain",
            Kind::Bad => "bad",
        }
    }

    fn draw(rng: &mut Rng) -> Kind {
        match rng.next_u64() % 20 {
            0..=7 => Kind::Stream,
            8..=12 => Kind::Plain,
            13..=15 => Kind::CancelledStream,
            16..=17 => Kind::CancelledPlain,
            _ => Kind::Bad,
        }
    }

    /// Whether `outcome` is one this kind may end in.
    fn allows(self, outcome: &str) -> bool {
        match self {
            Kind::Stream | Kind::Plain => outcome == "200",
            // Left before the end, or the server finished first.
            Kind::CancelledStream | Kind::CancelledPlain => outcome == "cancelled" || outcome == "200",
            Kind::Bad => outcome.starts_with('4'),
        }
    }
}

#[derive(Default)]
struct Tally {
    /// (kind, outcome) -> count
    outcomes: BTreeMap<(Kind, String), u64>,
    unexpected: Vec<String>,
    sent: u64,
}

/// Runs the soak against `t` and returns its report; `Err` when a check failed (the report is
/// printed either way).
pub async fn run(t: &Target, plan: &Plan) -> Result<Value, String> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let counted_before = completion_responses(t).await;
    let start = Instant::now();
    let end = start + plan.duration;
    let warmup = (plan.duration / 5).max(Duration::from_secs(5)).min(plan.duration);
    let clients: Vec<_> = (0..plan.clients)
        .map(|c| {
            let (t, tally) = (t.clone(), tally.clone());
            let mut rng = Rng::new(plan.seed ^ (c as u64).wrapping_mul(0x9E37_79B9));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let kind = Kind::draw(&mut rng);
                    let outcome = one(&t, kind, &mut rng).await;
                    let mut tally = tally.lock().unwrap_or_else(|p| p.into_inner());
                    tally.sent += 1;
                    if !kind.allows(&outcome) && tally.unexpected.len() < 20 {
                        tally.unexpected.push(format!("{}: {outcome}", kind.name()));
                    }
                    *tally.outcomes.entry((kind, outcome)).or_insert(0) += 1;
                }
            })
        })
        .collect();
    // Memory and gauges once a second while the traffic runs.
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut rss_after_warmup = None;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(rss) = rss_mb(plan.server_pid) else { continue };
        samples.push((start.elapsed().as_secs_f64(), rss));
        if rss_after_warmup.is_none() && start.elapsed() >= warmup {
            rss_after_warmup = Some(rss);
        }
    }
    for c in clients {
        let _ = c.await;
    }
    // Everything finished or cancelled: the gauges must come back to zero.
    let idle = [
        "inferneo_requests_in_flight",
        "inferneo_running_sequences",
        "inferneo_queue_depth",
        "inferneo_kv_blocks_used",
    ];
    let settle = Instant::now();
    let mut gauges = BTreeMap::new();
    loop {
        if let Some(text) = super::run::scrape_text(t).await {
            for name in idle {
                gauges.insert(name, series(&text, &format!("{name}{{model=\"{}\"}}", t.model)));
            }
        }
        if gauges.values().all(|v| *v == Some(0.0)) || settle.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_end = rss_mb(plan.server_pid);
    let counted_after = completion_responses(t).await;

    let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    let mut failures: Vec<String> = Vec::new();
    if !tally.unexpected.is_empty() {
        failures.push(format!("unexpected outcomes: {}", tally.unexpected.join("; ")));
    }
    let growth = match (rss_after_warmup, rss_end) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    if growth.is_some_and(|g| g > plan.rss_growth_mb) {
        failures.push(format!(
            "resident memory grew {:.0} MB after the warm-up (bound {:.0} MB)",
            growth.unwrap_or(0.0),
            plan.rss_growth_mb
        ));
    }
    for (name, v) in &gauges {
        if *v != Some(0.0) {
            failures.push(format!("{name} is {v:?} after the traffic stopped, not 0"));
        }
    }
    let counted = match (counted_before, counted_after) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    if counted.is_some_and(|c| c != tally.sent as f64) {
        failures
            .push(format!("the server counted {:?} /v1/completions responses for {} requests", counted, tally.sent));
    }

    let outcomes: Vec<Value> =
        tally.outcomes.iter().map(|((k, o), n)| json!({"kind": k.name(), "outcome": o, "count": n})).collect();
    let report = json!({
        "duration_s": plan.duration.as_secs_f64(),
        "clients": plan.clients,
        "requests": tally.sent,
        "outcomes": outcomes,
        "rss_mb": {"after_warmup": rss_after_warmup, "end": rss_end,
                   "max": samples.iter().map(|s| s.1).fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
                   "growth_after_warmup": growth, "bound": plan.rss_growth_mb},
        "gauges_after": gauges.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "server_counted": counted,
        "failures": failures,
    });
    println!("\n### soak\n");
    println!("| kind | outcome | count |\n|---|---|---|");
    for ((k, o), n) in &tally.outcomes {
        println!("| {} | {o} | {n} |", k.name());
    }
    println!(
        "\n{} requests in {:.0} s from {} clients; RSS after warm-up {}, at the end {} (growth {}, bound {:.0} MB); \
         gauges after: {}; server counted {} responses",
        tally.sent,
        plan.duration.as_secs_f64(),
        plan.clients,
        mb(rss_after_warmup),
        mb(rss_end),
        mb(growth),
        plan.rss_growth_mb,
        gauges
            .iter()
            .map(|(k, v)| format!("{k} {}", v.map_or("?".into(), |v| v.to_string())))
            .collect::<Vec<_>>()
            .join(", "),
        counted.map_or("?".into(), |c| c.to_string()),
    );
    if failures.is_empty() {
        println!("soak: passed");
        Ok(report)
    } else {
        Err(format!("soak failed: {}", failures.join("; ")))
    }
}

fn mb(v: Option<f64>) -> String {
    v.map_or("unknown".into(), |v| format!("{v:.0} MB"))
}

fn series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The server's count of `/v1/completions` responses, every status summed.
async fn completion_responses(t: &Target) -> Option<f64> {
    let text = super::run::scrape_text(t).await?;
    let prefix = "inferneo_http_requests_total{route=\"/v1/completions\",";
    Some(text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}

/// Current resident memory (`VmRSS`) of `pid` (this process when `None`), in MB.
fn rss_mb(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or("/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Sends one request of `kind`; returns its outcome: the HTTP status, `cancelled`, or an error
/// kind (`connect`, `truncated`, ...).
async fn one(t: &Target, kind: Kind, rng: &mut Rng) -> String {
    let prompt_len = 4 + (rng.next_u64() % 60) as usize;
    let prompt = rng.prompt(prompt_len);
    let max_tokens = 4 + (rng.next_u64() % 40) as usize;
    let seed = rng.next_u64();
    match kind {
        Kind::Stream => {
            let w = Workload { prompt, max_tokens, temperature: 0.8, top_p: 0.95, seed };
            let o = send(t, &w, Duration::from_secs(120)).await;
            o.error.map_or("200".into(), |e| e.strip_prefix("http_").unwrap_or(&e).to_string())
        }
        Kind::Plain => {
            let body = json!({"model": t.model, "prompt": prompt, "max_tokens": max_tokens, "seed": seed,
                              "temperature": 0.8, "logit_bias": {"50256": -100}});
            post(t, body.to_string(), false).await
        }
        Kind::CancelledPlain => {
            let body = json!({"model": t.model, "prompt": prompt, "max_tokens": max_tokens, "seed": seed});
            post_and_leave(t, body.to_string(), Duration::from_millis(20 + rng.next_u64() % 300)).await
        }
        Kind::CancelledStream => {
            let body =
                json!({"model": t.model, "prompt": prompt, "max_tokens": max_tokens, "seed": seed, "stream": true});
            post(t, body.to_string(), true).await
        }
        Kind::Bad => {
            let bodies = [
                "{\"prompt\": ".to_string(),
                json!({"model": t.model, "prompt": "x", "max_tokens": -1}).to_string(),
                json!({"model": t.model, "prompt": [[99999999]]}).to_string(),
                json!({"model": t.model, "prompt": "x", "temperature": "hot"}).to_string(),
                json!({"model": "no-such-model", "prompt": "x"}).to_string(),
                json!({"model": t.model, "prompt": "x", "max_tokens": 100000}).to_string(),
            ];
            let body = bodies[(rng.next_u64() % bodies.len() as u64) as usize].clone();
            post(t, body, false).await
        }
    }
}

/// Writes a whole POST of `body` on a raw socket (so the server surely has the request), waits
/// up to `leave_after` for the response's status line, and closes the connection.
async fn post_and_leave(t: &Target, body: String, leave_after: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut tcp) = TcpStream::connect(&t.addr).await else { return "connect".into() };
    let auth = t.api_key.as_ref().map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n",
        t.addr,
        body.len()
    );
    if tcp.write_all(head.as_bytes()).await.is_err() || tcp.write_all(body.as_bytes()).await.is_err() {
        return "send".into();
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(leave_after, tcp.read(&mut buf)).await {
        // The status line came first: the server finished before the client left.
        Ok(Ok(n)) if n >= 12 => String::from_utf8_lossy(&buf[9..12]).into_owned(),
        Ok(_) => "truncated".into(),
        Err(_) => "cancelled".into(),
    }
}

/// POSTs `body` to `/v1/completions` and reads the response; with `leave_at_first_chunk`, the
/// client closes the connection after the response's first body chunk.
async fn post(t: &Target, body: String, leave_at_first_chunk: bool) -> String {
    let exchange = async {
        let tcp = TcpStream::connect(&t.addr).await.map_err(|_| "connect".to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|_| "handshake".to_string())?;
        tokio::spawn(conn);
        let mut req =
            Request::post("/v1/completions").header("host", &t.addr).header("content-type", "application/json");
        if let Some(k) = &t.api_key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|_| "request".to_string())?;
        let resp = sender.send_request(req).await.map_err(|_| "send".to_string())?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if leave_at_first_chunk && status == 200 {
            // Dropping the body and the connection here is the client leaving.
            let _ = body.frame().await;
            return Ok::<String, String>("cancelled".into());
        }
        body.collect().await.map_err(|_| "body".to_string())?;
        Ok(status.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(120), exchange).await {
        Ok(r) => r.unwrap_or_else(|e| e),
        Err(_) => "timeout".into(),
    }
}
