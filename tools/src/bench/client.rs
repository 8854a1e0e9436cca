//! One streamed completion over HTTP/1.1 (hyper's client connection), timed chunk by chunk:
//! time to first token, every later token chunk, token counts from the final usage chunk.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A loopback OpenAI-compatible endpoint.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: String,
    pub model: String,
    pub api_key: Option<String>,
}

impl Target {
    /// `http://HOST:PORT` on a loopback address only: the bench never loads other machines.
    pub fn parse(url: &str, model: &str, api_key: Option<String>) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("--url '{url}': expected http://HOST:PORT"))?;
        let hostport = rest.trim_end_matches('/').trim_end_matches("/v1");
        let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h).trim_matches(['[', ']']);
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(format!(
                "--url '{url}': only loopback addresses (127.0.0.1, ::1, localhost) may be benchmarked"
            ));
        }
        let addr = if hostport.contains(':') && !hostport.ends_with(']') {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        Ok(Target { addr, model: model.to_string(), api_key })
    }
}

/// What happened to one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub latency: f64,
    pub ttft: Option<f64>,
    /// Mean time per output token after the first (the inter-token latency a reader sees).
    pub itl: Option<f64>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// The `max_tokens` asked for: with `ignore_eos` every request should generate exactly that.
    pub asked_tokens: usize,
    /// `None` on success; else the kind (`http_429`, `connect`, `timeout`, ...).
    pub error: Option<String>,
}

pub struct Workload {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

fn body(t: &Target, w: &Workload) -> String {
    serde_json::json!({
        "model": t.model,
        "prompt": w.prompt,
        "max_tokens": w.max_tokens,
        "temperature": w.temperature,
        "top_p": w.top_p,
        "seed": w.seed,
        "stream": true,
        "stream_options": {"include_usage": true},
        // Every request generates exactly max_tokens, as the workload says (vLLM's name, also
        // understood by llama.cpp's server); a server that ignores it shows up as short
        // completions in the report.
        "ignore_eos": true,
    })
    .to_string()
}

pub async fn send(t: &Target, w: &Workload, timeout: Duration) -> Outcome {
    let sent = Instant::now();
    let mut out = Outcome {
        latency: 0.0,
        ttft: None,
        itl: None,
        prompt_tokens: w.prompt.len(),
        completion_tokens: 0,
        asked_tokens: w.max_tokens,
        error: None,
    };
    let result = tokio::time::timeout(timeout, stream(t, w, sent, &mut out)).await;
    out.latency = sent.elapsed().as_secs_f64();
    match result {
        Err(_) => out.error = Some("timeout".into()),
        Ok(Err(kind)) => out.error = Some(kind),
        Ok(Ok(())) => {}
    }
    out
}

async fn stream(t: &Target, w: &Workload, sent: Instant, out: &mut Outcome) -> Result<(), String> {
    let tcp = TcpStream::connect(&t.addr).await.map_err(|_| "connect".to_string())?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|_| "handshake".to_string())?;
    tokio::spawn(conn);
    let mut req = Request::post("/v1/completions").header("host", &t.addr).header("content-type", "application/json");
    if let Some(k) = &t.api_key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req.body(Full::new(Bytes::from(body(t, w)))).map_err(|_| "request".to_string())?;
    let resp = sender.send_request(req).await.map_err(|_| "send".to_string())?;
    if !resp.status().is_success() {
        return Err(format!("http_{}", resp.status().as_u16()));
    }
    let mut body = resp.into_body();
    let mut pending = String::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut done = false;
    // Servers that send no usage chunk stream one token per chunk; count those instead.
    let (mut chunks, mut usage_seen) = (0usize, false);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "body".to_string())?;
        let Some(data) = frame.data_ref() else { continue };
        let now = Instant::now();
        pending.push_str(&String::from_utf8_lossy(data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(payload) = event.trim().strip_prefix("data: ") else { continue };
            if payload == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(payload).map_err(|_| "bad_event".to_string())?;
            if v.get("error").is_some() {
                return Err("stream_error".into());
            }
            if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                usage_seen = true;
                out.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                out.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
            }
            let has_text = v["choices"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["text"].as_str().is_some_and(|t| !t.is_empty())));
            if has_text {
                chunks += 1;
                first.get_or_insert(now);
                last = Some(now);
            }
        }
    }
    if !done {
        return Err("truncated".into());
    }
    if !usage_seen {
        out.completion_tokens = chunks;
    }
    if let Some(f) = first {
        out.ttft = Some((f - sent).as_secs_f64());
        if let Some(l) = last.filter(|_| out.completion_tokens > 1) {
            out.itl = Some((l - f).as_secs_f64() / (out.completion_tokens - 1) as f64);
        }
    }
    Ok(())
}
