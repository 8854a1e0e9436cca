//! `inferneo serve` as users run it: the real binary on a loopback port, flags, SIGTERM drain,
//! and the official `openai` Python client against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Served {
    child: Child,
    addr: SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `inferneo serve --port 0 ARGS` and waits for "ready".
fn serve(args: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferneo"))
        .args(["serve", "--port", "0"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start inferneo serve");
    let (tx, log) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr = None;
    let t0 = Instant::now();
    loop {
        let line = log.recv_timeout(Duration::from_secs(60)).expect("server output");
        if let Some(rest) = line.strip_prefix("listening on http://") {
            addr = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
        if line.starts_with("ready") {
            break;
        }
        assert!(!line.starts_with("error"), "{line}");
        assert!(t0.elapsed() < Duration::from_secs(60));
    }
    Served { child, addr: addr.expect("listening line"), log }
}

fn tiny_model(dir: &std::path::Path) -> String {
    let d = dir.join("tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_inferneo"))
        .args(["init", "--preset", "tiny", "--out", d.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    format!("tiny={}", d.display())
}

/// Runs `inferneo serve ARGS` with `env`, killing it after 20 s (a flag that slipped through
/// would leave it serving); returns whether it exited by itself with success, and its stderr.
fn serve_bounded(args: &[&str], env: &[(&str, &str)]) -> (Option<bool>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferneo"))
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s.success());
        }
        if t0.elapsed().as_secs() > 20 {
            child.kill().unwrap();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, err)
}

/// Every numeric flag has a range, checked before anything is allocated or bound: each bad
/// value is a one-line error naming its flag, and the process exits at once without listening.
#[test]
fn bad_serve_flags_are_one_line_errors() {
    let huge = u64::MAX.to_string();
    for (args, needle) in [
        (vec!["--model", "/nonexistent/dir"], "not a directory"),
        (vec!["--threads", "nope=2"], "no model named 'nope'"),
        (vec!["--threads", "gpt2=0"], "--threads"),
        (vec!["--threads", "gpt2=100000"], "--threads"),
        (vec!["--dtype", "int3"], "--dtype"),
        (vec!["--kv-dtype", "f8"], "--kv-dtype"),
        (vec!["--request-timeout", "0"], "--request-timeout"),
        (vec!["--request-timeout", "1e300"], "--request-timeout"),
        (vec!["--request-timeout", "NaN"], "--request-timeout"),
        (vec!["--drain-timeout=-1"], "--drain-timeout"),
        (vec!["--drain-delay=-1"], "--drain-delay"),
        (vec!["--metrics-compat", "tgi"], "--metrics-compat"),
        (vec!["--max-seqs", "0"], "--max-seqs"),
        (vec!["--max-seqs", "10000000"], "--max-seqs"),
        (vec!["--max-batch-tokens", "0"], "--max-batch-tokens"),
        (vec!["--max-queue", "100000000"], "--max-queue"),
        (vec!["--max-body-bytes", "0"], "--max-body-bytes"),
        (vec!["--max-connections", "0"], "--max-connections"),
        (vec!["--max-connections", "10", "--max-connections-per-ip", "11"], "--max-connections-per-ip"),
        (vec!["--first-byte-timeout", "0"], "--first-byte-timeout"),
        (vec!["--kv-cache-mb", "0"], "--kv-cache-mb"),
        // Larger than the machine's memory, and a value whose bytes overflow 64 bits.
        (vec!["--kv-cache-mb", "100000000"], "--kv-cache-mb"),
        (vec!["--kv-cache-mb", &huge], "--kv-cache-mb"),
        // Too small for one full-context sequence of the embedded model (72 MB with f32 KV).
        (vec!["--kv-cache-mb", "8"], "needs at least 72 MB"),
        (vec!["--kv-cache-mb", "30", "--kv-dtype", "f16"], "needs at least 36 MB"),
        (vec!["--port", "70000"], "--port"),
        (vec!["--models-dir", "/nonexistent/models"], "--models-dir"),
        (vec!["--max-loaded-models", "100000000"], "--max-loaded-models"),
        (vec!["--models-memory-mb", "100000000"], "--models-memory-mb"),
        (vec!["--load-wait", "0"], "--load-wait"),
        (vec!["--keep-alive=-1"], "--keep-alive"),
        (vec!["--pin", "nope"], "--pin nope"),
        (vec!["--api-key", ""], "--api-key"),
        (vec!["--api-key", "  "], "--api-key"),
    ] {
        let mut full = vec!["--port", "0"];
        full.extend(&args);
        let (status, err) = serve_bounded(&full, &[]);
        assert_eq!(status, Some(false), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // The environment's key is checked like the flag's.
    let (status, err) = serve_bounded(&["--port", "0"], &[("INFERNEO_API_KEY", "")]);
    assert_eq!(status, Some(false), "{err}");
    assert!(err.contains("INFERNEO_API_KEY"), "{err}");
}

/// `--models-dir`: ready at once (nothing pinned), every model listed unloaded, the first request
/// loads one.
#[test]
fn models_dir_serves_its_models_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let s = serve(&["--models-dir", dir.path().to_str().unwrap(), "--kv-cache-mb", "8", "--max-loaded-models", "1"]);
    let listed = http_get(s.addr, "/v1/models");
    assert!(listed.contains("\"id\":\"tiny\"") && listed.contains("\"state\":\"unloaded\""), "{listed}");
    let body = r#"{"model": "tiny", "prompt": "Hello", "max_tokens": 2}"#;
    let out = http_body(s.addr, "/v1/completions", body);
    assert!(out.contains("\"text_completion\""), "{out}");
    let listed = http_get(s.addr, "/v1/models/tiny");
    assert!(listed.contains("\"state\":\"ready\""), "{listed}");
}

/// When every configured model fails to load nothing can ever be served: the process exits
/// non-zero (for its supervisor) instead of answering /health forever.
#[test]
fn every_model_failing_to_load_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    let model = format!("broken={}", dir.path().display());
    let (status, err) = serve_bounded(&["--port", "0", "--model", &model], &[]);
    assert_eq!(status, Some(false), "serve must exit, non-zero: {err}");
    assert!(err.contains("every configured model failed to load"), "{err}");
}

/// SIGTERM while a stream is running: no new connections, the stream still finishes, exit 0.
#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    // The embedded 124M model: slow enough that the stream is mid-way when the signal lands.
    let mut s = serve(&[]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    let body = r#"{"model": "gpt2", "prompt": "Hello", "max_tokens": 60, "stream": true}"#;
    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let status = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    // The listener closes at once.
    let t0 = Instant::now();
    while TcpStream::connect(s.addr).is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(5), "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("data: [DONE]"), "stream cut short: {text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    let code = wait_exit(&mut s.child, Instant::now(), "after draining");
    assert!(code.success(), "exit status {code}");
    let log: Vec<String> = s.log.try_iter().collect();
    assert!(log.iter().any(|l| l.starts_with("shutting down")), "{log:?}");
}

/// Waits (up to 30 s from `since`) for the server to exit by itself.
fn wait_exit(child: &mut Child, since: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "did not exit {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn http_status(addr: SocketAddr, req: &str) -> Option<u16> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    c.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

fn http_body(addr: SocketAddr, path: &str, body: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

/// `--model NAME=FILE.gguf` and `--model FILE.gguf` (served under the file's stem) serve a
/// llama.cpp GGUF file, tokenizer from its metadata included.
#[test]
fn serves_gguf_files() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
    let (f32_file, q8_file) = (data.join("hub-micro-f32.gguf"), data.join("hub-micro-q8_0.gguf"));
    let named = format!("micro={}", f32_file.display());
    let s = serve(&["--model", &named, "--model", q8_file.to_str().unwrap(), "--kv-cache-mb", "8"]);
    for model in ["micro", "hub-micro-q8_0"] {
        let tokenized =
            http_body(s.addr, "/tokenize", &format!(r#"{{"model": "{model}", "prompt": "!<|endoftext|>"}}"#));
        assert!(tokenized.starts_with("HTTP/1.1 200"), "{model}: {tokenized}");
        assert!(tokenized.contains(r#""tokens":[0,999]"#), "{model}: {tokenized}");
        let body = format!(r#"{{"model": "{model}", "prompt": "Hello", "max_tokens": 4, "temperature": 0}}"#);
        let done = http_body(s.addr, "/v1/completions", &body);
        assert!(done.starts_with("HTTP/1.1 200") && done.contains(r#""completion_tokens":"#), "{model}: {done}");
    }
}

/// With `--drain-delay`, SIGTERM makes `/ready` 503 at once while requests are still
/// accepted and answered, until the delay ends; then the listener closes and the process
/// drains and exits 0.
#[test]
fn sigterm_turns_ready_503_before_the_listener_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let mut s = serve(&["--model", &model, "--drain-delay", "3"]);
    let ready = "GET /ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    assert_eq!(http_status(s.addr, ready), Some(200));
    let status = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let t0 = Instant::now();
    while http_status(s.addr, ready) != Some(503) {
        assert!(t0.elapsed() < Duration::from_secs(2), "/ready still 200 after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Still serving: a completion succeeds during the delay.
    let body = r#"{"prompt": "Hello", "max_tokens": 4}"#;
    let post = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(http_status(s.addr, &post), Some(200));
    assert!(t0.elapsed() < Duration::from_secs(3), "the checks above must run within the delay");
    // Then it stops accepting and exits 0.
    let code = wait_exit(&mut s.child, t0, "after the delay");
    assert!(code.success(), "exit status {code}");
    assert!(t0.elapsed() >= Duration::from_millis(2500), "stopped before the delay ended");
}

/// `--log-format json`: one JSON line per request, with the client's request id (echoed in
/// the response), the model, status, token counts, TTFT, total time and finish reason.
#[test]
fn one_json_log_line_per_request() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let s = serve(&["--model", &model, "--log-format", "json"]);
    let send = |id: &str, body: &str| {
        let req = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-Id: {id}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text
    };
    let ok = send("trace-me-1", r#"{"prompt": "Hello", "max_tokens": 5, "stream": true}"#);
    assert!(ok.to_ascii_lowercase().contains("x-request-id: trace-me-1"), "{ok}");
    send("trace-me-2", r#"{"prompt": "Hello", "max_tokens": -1}"#);
    let line_for = |id: &str| -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let line = s.log.recv_timeout(Duration::from_secs(10)).expect("a log line");
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["request_id"] == id {
                    return v;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no log line for {id}");
        }
    };
    let v = line_for("trace-me-1");
    assert_eq!((v["status"].as_u64(), v["model"].as_str()), (Some(200), Some("tiny")), "{v}");
    assert_eq!((v["prompt_tokens"].as_u64(), v["completion_tokens"].as_u64()), (Some(1), Some(5)), "{v}");
    assert!(v["ttft_ms"].as_f64().unwrap() > 0.0 && v["total_ms"].as_f64() >= v["ttft_ms"].as_f64(), "{v}");
    assert_eq!(v["finish_reason"], "length", "{v}");
    let v = line_for("trace-me-2");
    assert_eq!((v["status"].as_u64(), v["route"].as_str()), (Some(400), Some("/v1/completions")), "{v}");
}

/// The official `openai` client, where Python has it: `INFERNEO_E2E_PYTHON` names the
/// interpreter (CI sets it and installs `openai`); otherwise `python3` is tried.
#[test]
fn official_openai_python_client() {
    let required = std::env::var("INFERNEO_E2E_PYTHON").ok();
    let python = required.clone().unwrap_or_else(|| "python3".into());
    let has_openai = Command::new(&python).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !has_openai {
        assert!(required.is_none(), "INFERNEO_E2E_PYTHON={python} cannot import openai");
        println!("notice: skipped, no Python with the openai package (set INFERNEO_E2E_PYTHON)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/chat-templates/plain.jinja");
    let s = serve(&["--model", &tiny_model(dir.path()), "--chat-template", template]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/openai_client.py");
    let out = Command::new(&python).args([script, &format!("http://{}", s.addr), "tiny"]).output().unwrap();
    let all = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openai e2e failed:\n{all}");
    println!("{all}");
}
