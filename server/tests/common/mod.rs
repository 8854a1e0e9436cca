//! A real server on a loopback port, in-process, over a tiny random model; and a minimal
//! HTTP/1.1 client on std sockets (so tests can also send what no well-behaved client sends).
#![allow(dead_code)]

use inferneo_runtime::init::{write_model_dir, StoreDtype};
use inferneo_runtime::scheduler::Limits;
use inferneo_runtime::{EngineConfig, LoadOptions, ModelSource, Preset};
use inferneo_server::{ModelSpec, Server, ServerConfig};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A tiny model directory (2 layers, 64 wide, real GPT-2 vocabulary and tokenizer), made once.
pub fn tiny_dir(seed: u64) -> PathBuf {
    static DIRS: OnceLock<std::sync::Mutex<Vec<(u64, tempfile::TempDir)>>> = OnceLock::new();
    let mut dirs = DIRS.get_or_init(Default::default).lock().unwrap();
    if let Some((_, d)) = dirs.iter().find(|(s, _)| *s == seed) {
        return d.path().to_path_buf();
    }
    let d = tempfile::tempdir().expect("tempdir");
    write_model_dir(d.path(), &Preset::Tiny.config(), seed, StoreDtype::F32).expect("tiny model");
    let path = d.path().to_path_buf();
    dirs.push((seed, d));
    path
}

pub fn spec(name: &str, source: ModelSource) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        source,
        load: LoadOptions { threads: Some(1), ..LoadOptions::default() },
        engine: EngineConfig {
            limits: Limits { max_batch_tokens: 256, max_seqs: 16 },
            kv_cache_bytes: 16 << 20,
            ..EngineConfig::default()
        },
        max_queue: 64,
        chat_template: None,
    }
}

pub fn config() -> ServerConfig {
    ServerConfig {
        port: 0,
        models: vec![spec("tiny", ModelSource::Dir(tiny_dir(0)))],
        fault_injection: true,
        header_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(2),
        drain_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    }
}

/// A running server; stopped (drained) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts the server and waits until `/ready` (or, with `wait_ready` false, only listening).
    pub fn start(config: ServerConfig, wait_ready: bool) -> TestServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let server = Server::bind(config).await.expect("bind");
                addr_tx.send(server.local_addr().unwrap()).unwrap();
                server
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx.recv().expect("server address");
        let server = TestServer { addr, stop: Some(stop), thread: Some(thread) };
        if wait_ready {
            let t0 = Instant::now();
            while get(addr, "/ready").status != 200 {
                assert!(t0.elapsed() < Duration::from_secs(60), "server not ready");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent-event stream.
    pub fn events(&self) -> Vec<String> {
        self.body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
    }

    /// Asserts an OpenAI-shaped error with this status; returns its `error` object.
    pub fn error(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.body);
        assert!(e["type"].is_string(), "{}", self.body);
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{}", self.body);
        e
    }
}

/// Sends raw bytes, reads the whole response (the request asks the server to close).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(request).expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

pub fn parse(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head: {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Reply { status, headers, body }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    request(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

pub fn complete(addr: SocketAddr, body: Value) -> Value {
    let r = post(addr, "/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// One metric's value from `/metrics` (the series with exactly these labels).
pub fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let text = get(addr, "/metrics").body;
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}
