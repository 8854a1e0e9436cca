//! Per-model isolation: a flood of clients on one model barely moves another model's time to
//! first token, since each model has its own engine thread and queue. In a test binary of its
//! own, so no other test's load runs beside the measurement.

mod common;

use common::*;
use inferneo_runtime::init::{write_model_dir, StoreDtype};
use inferneo_runtime::{ModelSource, Preset};
use inferneo_server::ServerConfig;
use serde_json::json;
use std::time::{Duration, Instant};

/// The p50 of `n` sequential requests' latencies to `model` (one generated token, so the
/// latency is the time to the first token).
fn ttft_p50(addr: std::net::SocketAddr, model: &str, n: usize) -> Duration {
    let prompt: Vec<u32> = (0..48u32).map(|i| 1000 + i * 37).collect();
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            complete(addr, json!({"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}));
            t0.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

#[test]
fn a_flood_on_one_model_does_not_starve_another() {
    let dir = tempfile::tempdir().unwrap();
    write_model_dir(&dir.path().join("a"), &Preset::Tiny.config(), 0, StoreDtype::F32).unwrap();
    // Model A (tiny) and model B (the 124M shape, so its first token is real work), each on its
    // own engine thread: the threads are split between them.
    let mut b = spec("b", ModelSource::Embedded);
    b.engine.kv_cache_bytes = 96 << 20;
    let models = vec![spec("a", ModelSource::Dir(dir.path().join("a"))), b];
    let s = TestServer::start(ServerConfig { models, ..config() }, true);
    ttft_p50(s.addr, "b", 2); // warm-up
    let alone = ttft_p50(s.addr, "b", 15);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let until = Instant::now() + Duration::from_secs(60);
    let flood: Vec<_> = (0..32)
        .map(|i| {
            let (addr, stop) = (s.addr, stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < until {
                    let r = post(
                        addr,
                        "/v1/completions",
                        &json!({"model": "a", "prompt": format!("flood {i}"), "max_tokens": 120, "ignore_eos": true}),
                    );
                    assert_eq!(r.status, 200, "{}", r.body);
                    n += 1;
                }
                n
            })
        })
        .collect();
    // The 32 clients start together and, on a fast CPU, finish their requests together, so one
    // look at the gauge can land in the gap between two rounds. Wait (bounded) until the flood
    // is in, then keep sampling it while model B is measured and report the peak.
    let gauge = |addr| metric(addr, "inferneo_num_requests_running{model=\"a\"}").unwrap_or(0.0);
    let build_up = Instant::now() + Duration::from_secs(20);
    while gauge(s.addr) < 8.0 && Instant::now() < build_up {
        std::thread::sleep(Duration::from_millis(20));
    }
    let measuring = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (addr, measuring) = (s.addr, measuring.clone());
        std::thread::spawn(move || {
            let mut peak = gauge(addr);
            while measuring.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                peak = peak.max(gauge(addr));
            }
            peak
        })
    };
    let flooded = ttft_p50(s.addr, "b", 15);
    measuring.store(false, std::sync::atomic::Ordering::SeqCst);
    let running = sampler.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let served: usize = flood.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!(
        "model B TTFT p50: {:.1} ms alone, {:.1} ms while 32 clients flood model A ({served} requests, at most {running} running)",
        alone.as_secs_f64() * 1e3,
        flooded.as_secs_f64() * 1e3
    );
    assert!(running >= 8.0, "the flood never built up on model A ({running} running)");
    assert!(flooded < alone * 2, "model B's TTFT p50 went from {alone:?} to {flooded:?} under a flood on model A");
}
