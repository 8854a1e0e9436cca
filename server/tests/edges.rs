//! Hardened edges, each against a real server: bad input of every kind, auth, overload,
//! timeouts, slow and idle clients, disconnects, panics, failed loads, several models.

mod common;

use common::*;
use inferneo_runtime::ModelSource;
use inferneo_server::ServerConfig;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn bad_requests_get_openai_errors_with_the_right_status() {
    let s = TestServer::start(config(), true);
    let cases: Vec<(serde_json::Value, u16, Option<&str>)> = vec![
        (json!({"prompt": "x", "max_tokens": -5}), 400, Some("max_tokens")),
        (json!({"prompt": "x", "max_tokens": 1_000_000_000u64}), 400, Some("max_tokens")),
        (json!({"prompt": "x", "n": 0}), 400, Some("n")),
        (json!({"prompt": "x", "n": 17}), 400, Some("n")),
        (json!({"prompt": "x", "temperature": -1}), 400, Some("temperature")),
        (json!({"prompt": "x", "top_p": 0}), 400, Some("top_p")),
        (json!({"prompt": "x", "top_p": 1.01}), 400, Some("top_p")),
        (json!({"prompt": [1, 2, 50257]}), 400, Some("prompt")),
        (json!({"prompt": [-1]}), 400, Some("prompt")),
        (json!({"prompt": vec![1; 200]}), 400, Some("max_tokens")),
        (json!({"prompt": ""}), 400, Some("prompt")),
        (json!({"prompt": []}), 400, Some("prompt")),
        (json!({"prompt": 42}), 400, Some("prompt")),
        (json!({"prompt": "x", "stop": vec!["s"; 5000]}), 400, Some("stop")),
        (json!({"prompt": "x", "logprobs": 100000}), 400, Some("logprobs")),
        (json!({"prompt": "x", "logit_bias": {"60000": 5}}), 400, Some("logit_bias")),
        (json!({"prompt": "x", "max_tokens": "ten"}), 400, Some("max_tokens")),
        (json!({"model": "nope", "prompt": "x"}), 404, Some("model")),
    ];
    for (body, status, param) in cases {
        let e = post(s.addr, "/v1/completions", &body).error(status);
        assert_eq!(e["param"].as_str(), param, "{body}");
    }
    let ct = [("Content-Type", "application/json")];
    let bad = |body: &[u8]| request(s.addr, "POST", "/v1/completions", &ct, body);
    bad(b"{\"prompt\": ").error(400);
    bad(b"[1, 2]").error(400);
    bad(b"{\"prompt\": \"\xff\xfe\"}").error(400);
    bad(b"").error(400);
    request(s.addr, "POST", "/v1/completions", &[("Content-Type", "text/plain")], b"{}").error(415);
    // Unknown fields are ignored, as OpenAI does.
    let ok = post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1, "frobnicate": {"a": [1]}, "user": "u"}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(get(s.addr, "/v2/nothing").error(404)["type"], "invalid_request_error");
    let r = get(s.addr, "/v1/completions");
    r.error(405);
    assert_eq!(r.header("allow"), Some("POST"));
    // Nothing above is a server error.
    assert!(metric(s.addr, "inferneo_http_requests_total{route=\"/v1/completions\",status=\"500\"}").is_none());
}

#[test]
fn oversized_bodies_are_refused_without_reading_them() {
    let s = TestServer::start(config(), true);
    // Declared: refused from the header alone.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0; 4096];
    let n = c.read(&mut buf).unwrap();
    parse(&buf[..n]).error(413);
    // Chunked, no length: refused once the limit is crossed.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, "a".repeat(1 << 20));
    for _ in 0..3 {
        if c.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let n = c.read(&mut buf).unwrap();
    parse(&buf[..n]).error(413);
}

#[test]
fn api_key_is_required_on_api_routes_only() {
    let s = TestServer::start(ServerConfig { api_key: Some("sekrit".into()), ..config() }, true);
    let body = json!({"prompt": "x", "max_tokens": 1}).to_string();
    let ct = ("Content-Type", "application/json");
    let e = request(s.addr, "POST", "/v1/completions", &[ct], body.as_bytes()).error(401);
    assert_eq!(e["code"], "invalid_api_key");
    request(s.addr, "POST", "/v1/completions", &[ct, ("Authorization", "Bearer wrong")], body.as_bytes()).error(401);
    request(s.addr, "GET", "/v1/models", &[], b"").error(401);
    let ok = request(s.addr, "POST", "/v1/completions", &[ct, ("Authorization", "Bearer sekrit")], body.as_bytes());
    assert_eq!(ok.status, 200, "{}", ok.body);
    // The scheme is case-insensitive (RFC 7235); the key is not.
    let ok = request(s.addr, "POST", "/v1/completions", &[ct, ("Authorization", "bearer sekrit")], body.as_bytes());
    assert_eq!(ok.status, 200, "{}", ok.body);
    request(s.addr, "POST", "/v1/completions", &[ct, ("Authorization", "Bearer SEKRIT")], body.as_bytes()).error(401);
    for open in ["/health", "/ready", "/metrics"] {
        assert_eq!(get(s.addr, open).status, 200, "{open}");
    }
}

#[test]
fn a_panicking_request_fails_alone() {
    let s = TestServer::start(config(), true);
    let addr = s.addr;
    let long = std::thread::spawn(move || {
        post(addr, "/v1/completions", &json!({"prompt": "x", "max_tokens": 100, "stream": true, "temperature": 0}))
    });
    let body = json!({"prompt": "x"}).to_string();
    let r = request(
        s.addr,
        "POST",
        "/v1/completions",
        &[("Content-Type", "application/json"), ("x-inferneo-fault", "panic")],
        body.as_bytes(),
    );
    assert_eq!(r.error(500)["type"], "server_error");
    let long = long.join().unwrap();
    assert_eq!(long.status, 200);
    assert_eq!(long.events().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(complete(s.addr, json!({"prompt": "after", "max_tokens": 2}))["choices"][0]["finish_reason"], "length");
}

#[test]
fn request_timeout_cancels_and_answers_504() {
    let s = TestServer::start(ServerConfig { request_timeout: Duration::from_millis(1), ..config() }, true);
    let e = post(s.addr, "/v1/completions", &json!({"prompt": "x", "max_tokens": 120})).error(504);
    assert_eq!(e["type"], "timeout_error");
    wait_for(s.addr, "inferneo_kv_blocks_used{model=\"tiny\"}", 0.0);
}

/// Polls a metric until it has `want` (the engine publishes after each step).
fn wait_for(addr: std::net::SocketAddr, series: &str, want: f64) {
    let t0 = Instant::now();
    loop {
        let v = metric(addr, series);
        if v == Some(want) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{series} = {v:?}, want {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The embedded 124M model running one sequence at a time, `max_queue` more waiting.
fn one_sequence_at_a_time(max_queue: usize) -> TestServer {
    let mut spec = spec("gpt2", ModelSource::Embedded);
    spec.engine.limits.max_seqs = 1;
    spec.engine.kv_cache_bytes = 64 << 20;
    spec.load.threads = None;
    spec.max_queue = max_queue;
    TestServer::start(ServerConfig { models: vec![spec], ..config() }, true)
}

/// One sequence at a time on the 124M shape (slow enough that a request is surely still
/// running while the test acts): overload gets 429, a client that disconnects mid-stream has
/// its sequence cancelled and its KV blocks freed.
#[test]
fn overload_is_refused_and_disconnects_cancel() {
    let s = one_sequence_at_a_time(0);
    let mut c = TcpStream::connect(s.addr).unwrap();
    let body = json!({"prompt": "x", "max_tokens": 200, "stream": true}).to_string();
    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    // Gauges are published after each engine step, so poll rather than read once.
    let t0 = Instant::now();
    while metric(s.addr, "inferneo_kv_blocks_used{model=\"gpt2\"}").unwrap() == 0.0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "KV blocks never in use");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = post(s.addr, "/v1/completions", &json!({"prompt": "y", "max_tokens": 1}));
    assert_eq!(r.error(429)["type"], "rate_limit_error");
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(c);
    wait_for(s.addr, "inferneo_running_sequences{model=\"gpt2\"}", 0.0);
    wait_for(s.addr, "inferneo_kv_blocks_used{model=\"gpt2\"}", 0.0);
    wait_for(s.addr, "inferneo_requests_in_flight{model=\"gpt2\"}", 0.0);
    assert_eq!(metric(s.addr, "inferneo_requests_total{model=\"gpt2\",status=\"499\"}"), Some(1.0));
    let generated = metric(s.addr, "inferneo_generation_tokens_total{model=\"gpt2\"}").unwrap();
    assert!(generated < 200.0, "the abandoned request ran to the end ({generated} tokens)");
    assert_eq!(post(s.addr, "/v1/completions", &json!({"prompt": "y", "max_tokens": 1})).status, 200);
}

#[test]
fn slow_and_idle_clients_are_bounded() {
    let s = TestServer::start(config(), true);
    // Many idle connections do not stop others from being served.
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(s.addr).unwrap()).collect();
    assert_eq!(get(s.addr, "/health").status, 200);
    // A client trickling its headers a byte at a time is cut off by the header timeout (2 s).
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
    let t0 = Instant::now();
    let head = b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut closed = false;
    for &b in head.iter().cycle().take(200) {
        if slow.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(_) => {
                closed = true; // EOF or a 408: either way the server gave up on it
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "slow client never cut off");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    // The idle ones were closed by the same timeout.
    let mut idle0 = idle.into_iter().next().unwrap();
    idle0.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(idle0.read(&mut buf), Ok(0) | Err(_)));
    // A body that never arrives: 408 after the body timeout.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0; 4096];
    let n = c.read(&mut buf).unwrap();
    parse(&buf[..n]).error(408);
}

#[test]
fn a_model_that_fails_to_load_keeps_the_server_unready() {
    let missing = spec("broken", ModelSource::Dir("/nonexistent/model".into()));
    let s = TestServer::start(ServerConfig { models: vec![missing], ..config() }, false);
    let t0 = Instant::now();
    loop {
        let r = get(s.addr, "/ready");
        let e = r.error(503);
        if e["message"].as_str().unwrap().contains("failed") {
            assert!(e["message"].as_str().unwrap().contains("/nonexistent/model"), "{e}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(s.addr, "/health").status, 200);
    post(s.addr, "/v1/completions", &json!({"prompt": "x"})).error(503);
}

#[test]
fn several_models_each_with_an_engine() {
    let models = vec![spec("a", ModelSource::Dir(tiny_dir(0))), spec("b", ModelSource::Dir(tiny_dir(1)))];
    let s = TestServer::start(ServerConfig { models, ..config() }, true);
    let ids: Vec<String> = get(s.addr, "/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let body = |m: &str| json!({"model": m, "prompt": "Same prompt", "max_tokens": 8, "temperature": 0});
    let (a, b) = (complete(s.addr, body("a")), complete(s.addr, body("b")));
    assert_eq!(a["model"], "a");
    assert_eq!(b["model"], "b");
    assert_ne!(a["choices"][0]["text"], b["choices"][0]["text"], "different weights, same text");
    assert_eq!(metric(s.addr, "inferneo_requests_total{model=\"b\",status=\"200\"}"), Some(1.0));
}

/// A queued request (the engine runs one sequence at a time) whose client disconnects is
/// cancelled while it waits, without ever running.
#[test]
fn a_queued_request_whose_client_leaves_is_cancelled_before_it_runs() {
    let s = one_sequence_at_a_time(4);
    let stream = |max_tokens: usize| {
        let mut c = TcpStream::connect(s.addr).unwrap();
        let body = json!({"prompt": "x", "max_tokens": max_tokens, "stream": true}).to_string();
        write!(c, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        c
    };
    let mut running = stream(150);
    let mut buf = [0u8; 4096];
    assert!(running.read(&mut buf).unwrap() > 0);
    let queued = stream(5);
    wait_for(s.addr, "inferneo_queue_depth{model=\"gpt2\"}", 1.0);
    drop(queued);
    wait_for(s.addr, "inferneo_requests_in_flight{model=\"gpt2\"}", 1.0);
    assert_eq!(metric(s.addr, "inferneo_requests_total{model=\"gpt2\",status=\"499\"}"), Some(1.0));
    // The engine drops it from its queue at its next step (its gauges follow that step).
    wait_for(s.addr, "inferneo_queue_depth{model=\"gpt2\"}", 0.0);
    // The first request is still streaming.
    assert_eq!(metric(s.addr, "inferneo_running_sequences{model=\"gpt2\"}"), Some(1.0));
    drop(running);
}

/// HTTP conformance: Host is required on HTTP/1.1 (RFC 9112), HEAD answers GET routes without
/// a body, compressed bodies and non-JSON media types are 415 (the media type is parsed, not
/// searched for "json"), and documented but unimplemented parameters are 400s naming them.
#[test]
fn http_conformance_and_unimplemented_parameters() {
    let s = TestServer::start(config(), true);
    raw(s.addr, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").error(400);
    assert_eq!(raw(s.addr, b"GET /health HTTP/1.0\r\n\r\n").status, 200);
    for path in ["/health", "/ready", "/metrics", "/v1/models"] {
        let r = request(s.addr, "HEAD", path, &[], b"");
        assert_eq!((r.status, r.body.as_str()), (200, ""), "HEAD {path}");
    }
    assert_eq!(request(s.addr, "HEAD", "/v1/completions", &[], b"").status, 405);
    let body = json!({"prompt": "x", "max_tokens": 1}).to_string();
    let send = |headers: &[(&str, &str)]| request(s.addr, "POST", "/v1/completions", headers, body.as_bytes());
    let e = send(&[("Content-Type", "application/json"), ("Content-Encoding", "gzip")]).error(415);
    assert!(e["message"].as_str().unwrap().contains("content-encoding 'gzip'"), "{e}");
    assert_eq!(send(&[("Content-Type", "application/json"), ("Content-Encoding", "identity")]).status, 200);
    send(&[("Content-Type", "text/plain; note=json")]).error(415);
    send(&[("Content-Type", "application/jsonp")]).error(415);
    assert_eq!(send(&[("Content-Type", "Application/JSON; charset=utf-8")]).status, 200);
    for (param, value) in [("best_of", json!(2)), ("suffix", json!("tail"))] {
        let r = post(s.addr, "/v1/completions", &json!({"prompt": "x", "max_tokens": 1, param: value}));
        assert_eq!(r.error(400)["param"], param);
    }
    assert_eq!(post(s.addr, "/v1/completions", &json!({"prompt": "x", "max_tokens": 1, "best_of": 1})).status, 200);
}

/// A request that needs more sequences than the model can ever admit (prompts x n beyond
/// --max-seqs + --max-queue) is a 400 that no retry can change, not a 429 to retry forever.
#[test]
fn a_request_beyond_capacity_is_400_not_429() {
    let s = TestServer::start(config(), true);
    // The test spec admits 16 + 64 = 80 sequences; 6 prompts x n 16 = 96.
    let prompts: Vec<&str> = vec!["a"; 6];
    let r = post(s.addr, "/v1/completions", &json!({"prompt": prompts, "n": 16, "max_tokens": 1}));
    let e = r.error(400);
    assert_eq!(e["param"], "n");
    assert!(r.header("retry-after").is_none());
    assert!(e["message"].as_str().unwrap().contains("at most 80"), "{e}");
}

/// `/v1/models` lists every configured model with its state, the failed ones with the reason.
#[test]
fn models_list_says_which_failed() {
    let models =
        vec![spec("good", ModelSource::Dir(tiny_dir(0))), spec("broken", ModelSource::Dir("/nonexistent/m".into()))];
    let s = TestServer::start(ServerConfig { models, ..config() }, false);
    let t0 = Instant::now();
    loop {
        let data = get(s.addr, "/v1/models").json()["data"].clone();
        let state = |id: &str| data.as_array().unwrap().iter().find(|m| m["id"] == id).map(|m| m["state"].clone());
        if state("good") == Some(json!("ready")) && state("broken") == Some(json!("failed")) {
            let broken = data.as_array().unwrap().iter().find(|m| m["id"] == "broken").unwrap().clone();
            assert!(broken["error"].as_str().unwrap().contains("/nonexistent/m"), "{broken}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{data}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(post(s.addr, "/v1/completions", &json!({"model": "good", "prompt": "x", "max_tokens": 1})).status, 200);
    post(s.addr, "/v1/completions", &json!({"model": "broken", "prompt": "x"})).error(503);
}

/// A client that disconnects from a non-streaming request is counted once, as 499, in both
/// the request and the HTTP counters (hyper drops the handler; nothing else would count it).
#[test]
fn a_non_streaming_request_whose_client_leaves_counts_as_499() {
    let s = one_sequence_at_a_time(0);
    let mut c = TcpStream::connect(s.addr).unwrap();
    let body = json!({"prompt": "x", "max_tokens": 300}).to_string();
    write!(c, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    wait_for(s.addr, "inferneo_running_sequences{model=\"gpt2\"}", 1.0);
    drop(c);
    wait_for(s.addr, "inferneo_requests_in_flight{model=\"gpt2\"}", 0.0);
    wait_for(s.addr, "inferneo_requests_total{model=\"gpt2\",status=\"499\"}", 1.0);
    wait_for(s.addr, "inferneo_http_requests_total{route=\"/v1/completions\",status=\"499\"}", 1.0);
    assert_eq!(metric(s.addr, "inferneo_requests_total{model=\"gpt2\",status=\"200\"}"), None);
}

/// Many idle sockets (connected, silent) beyond the connection cap do not lock anyone out:
/// probes keep answering at once, a stream in flight keeps streaming, and the silent sockets
/// are closed (evicted for newcomers, or at the first-byte timeout).
#[test]
fn a_flood_of_idle_sockets_does_not_starve_probes_or_streams() {
    // The 124M shape, so the stream is surely still running while the flood arrives.
    let mut model = spec("gpt2", ModelSource::Embedded);
    model.engine.kv_cache_bytes = 80 << 20;
    let config = ServerConfig {
        models: vec![model],
        max_connections: 16,
        first_byte_timeout: Duration::from_secs(1),
        ..config()
    };
    let s = TestServer::start(config, true);
    let mut stream = TcpStream::connect(s.addr).unwrap();
    let body = json!({"prompt": "x", "max_tokens": 60, "stream": true}).to_string();
    write!(stream, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 256];
    assert!(stream.read(&mut first).unwrap() > 0, "the stream started");
    let mut idle: Vec<TcpStream> = Vec::new();
    let mut worst = Duration::ZERO;
    for round in 0..20 {
        // Keep the table over-full of silent sockets.
        for _ in 0..8 {
            idle.push(TcpStream::connect(s.addr).unwrap());
        }
        let t0 = Instant::now();
        let r = get(s.addr, if round % 2 == 0 { "/health" } else { "/ready" });
        worst = worst.max(t0.elapsed());
        assert_eq!(r.status, 200, "round {round}");
    }
    assert!(worst < Duration::from_millis(900), "a probe took {worst:?} behind {} idle sockets", idle.len());
    // The stream was busy, so it was never evicted: it runs to the end.
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    assert!(String::from_utf8_lossy(&all).contains("data: [DONE]"), "the stream was cut");
    // Most silent sockets were closed by the server.
    let mut closed = 0;
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut b = [0u8; 1];
        closed += matches!(c.read(&mut b), Ok(0)) as usize;
    }
    assert!(closed >= 150, "only {closed} of 160 silent sockets were closed");
}

/// Megabyte prompts that cannot fit the context are refused by their length alone, and the
/// rest are tokenized off the async workers: /health keeps answering at once meanwhile.
#[test]
fn huge_prompts_do_not_stall_health_checks() {
    let s = TestServer::start(ServerConfig { max_body_bytes: 4 << 20, ..config() }, true);
    let addr = s.addr;
    let senders: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let words = ["hello ", "the ", "quick ", "brown "][i];
                let prompt = words.repeat((2 << 20) / words.len());
                for _ in 0..3 {
                    let r = post(addr, "/v1/completions", &json!({"prompt": prompt, "max_tokens": 1}));
                    let e = r.error(400);
                    assert!(e["message"].as_str().unwrap().contains("at least"), "{e}");
                }
            })
        })
        .collect();
    let mut worst = Duration::ZERO;
    while !senders.iter().all(|t| t.is_finished()) {
        let t0 = Instant::now();
        assert_eq!(get(addr, "/health").status, 200);
        worst = worst.max(t0.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    for t in senders {
        t.join().unwrap();
    }
    assert!(worst < Duration::from_millis(500), "/health took {worst:?}");
    // A prompt the length bound cannot refuse is tokenized (on the pool) and judged by its
    // real length: 3001 tokens against the tiny model's 128.
    let r = post(addr, "/v1/completions", &json!({"prompt": "a ".repeat(3000), "max_tokens": 1}));
    let e = r.error(400);
    assert!(e["message"].as_str().unwrap().contains("(3001 in the prompt"), "{e}");
}

/// The router gauges (the Gateway API Inference Extension's model-server protocol) follow the
/// load, per model and as an unlabelled aggregate, under our names and, with the vLLM switch,
/// under vLLM's; SSE responses ask proxies not to buffer; request ids are kept or made.
#[test]
fn router_gauges_follow_the_load_and_streams_are_unbuffered() {
    let mut model = spec("gpt2", ModelSource::Embedded);
    model.engine.limits.max_seqs = 1;
    model.engine.kv_cache_bytes = 80 << 20;
    let s = TestServer::start(ServerConfig { models: vec![model], vllm_metrics: true, ..config() }, true);
    // Idle: nothing waiting or running, no KV in use.
    for prefix in ["inferneo_", "vllm:"] {
        let label = if prefix == "vllm:" { "model_name" } else { "model" };
        assert_eq!(metric(s.addr, &format!("{prefix}kv_cache_usage_perc{{{label}=\"gpt2\"}}")), Some(0.0));
        assert_eq!(metric(s.addr, &format!("{prefix}kv_cache_usage_perc")), Some(0.0));
        assert_eq!(metric(s.addr, &format!("{prefix}num_requests_waiting")), Some(0.0));
    }
    let text = get(s.addr, "/metrics").body;
    assert!(
        text.contains("vllm:cache_config_info{model_name=\"gpt2\",block_size=\"16\",num_gpu_blocks=\"71\"} 1"),
        "{text}"
    );
    // One sequence at a time: a second request waits.
    let body = json!({"prompt": "x", "max_tokens": 60, "stream": true}).to_string();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.addr).unwrap();
        write!(c, "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Request-Id: abc-123\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        streams.push(c);
    }
    wait_for(s.addr, "vllm:num_requests_waiting", 1.0);
    wait_for(s.addr, "inferneo_num_requests_running{model=\"gpt2\"}", 1.0);
    assert!(metric(s.addr, "vllm:kv_cache_usage_perc").unwrap() > 0.0);
    let mut head = [0u8; 1024];
    let n = streams[0].read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.contains("x-accel-buffering: no") && head.contains("x-request-id: abc-123"), "{head}");
    drop(streams);
    wait_for(s.addr, "vllm:num_requests_running", 0.0);
    wait_for(s.addr, "vllm:kv_cache_usage_perc", 0.0);
    // Without a usable id, one is made.
    let r = request(s.addr, "GET", "/health", &[("X-Request-Id", "")], b"");
    assert!(r.header("x-request-id").is_some_and(|v| v.starts_with("req-")), "{:?}", r.headers);
}
