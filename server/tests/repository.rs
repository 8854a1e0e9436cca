//! The model repository on a real loopback server: `--models-dir` discovery, load on demand,
//! LRU eviction under `--max-loaded-models`, a broken model listed as failed, concurrent
//! clients over more models than the budget holds, the admin API and reload.

mod common;

use common::*;
use inferneo_runtime::init::{write_model_dir, StoreDtype};
use inferneo_runtime::{ModelSource, Preset};
use inferneo_server::{RepositoryConfig, ServerConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A models directory: tiny models `a`, `b`, `c` (seeds 0, 1, 2) and, with `broken`, a
/// directory whose `config.json` does not parse.
fn models_dir(broken: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, seed) in [("a", 0), ("b", 1), ("c", 2)] {
        write_model_dir(&d.path().join(name), &Preset::Tiny.config(), seed, StoreDtype::F32).unwrap();
    }
    if broken {
        std::fs::create_dir(d.path().join("broken")).unwrap();
        std::fs::write(d.path().join("broken/config.json"), "{ not json").unwrap();
    }
    std::fs::create_dir(d.path().join("not-a-model")).unwrap();
    d
}

fn repo_config(dir: &Path, max_loaded: usize) -> ServerConfig {
    ServerConfig {
        models: Vec::new(),
        repository: RepositoryConfig {
            models_dir: Some(dir.to_path_buf()),
            defaults: Some(spec("", ModelSource::Embedded)),
            max_loaded_models: max_loaded,
            load_wait: Duration::from_secs(60),
            ..RepositoryConfig::default()
        },
        ..config()
    }
}

fn states(addr: std::net::SocketAddr) -> Vec<(String, String)> {
    let data = get(addr, "/v1/models").json()["data"].clone();
    data.as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().into(), m["state"].as_str().unwrap().into()))
        .collect()
}

/// Waits (bounded) until the models' states are exactly `want`.
fn wait_states(addr: std::net::SocketAddr, want: &[(&str, &str)]) {
    let t0 = Instant::now();
    loop {
        let now = states(addr);
        if want.iter().all(|(n, s)| now.iter().any(|(m, t)| m == n && t == s)) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "want {want:?}, have {now:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn body(model: &str, prompt: &str) -> Value {
    json!({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0})
}

fn text(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

#[test]
fn models_load_on_demand_and_the_least_recently_used_is_evicted() {
    let dir = models_dir(true);
    let s = TestServer::start(repo_config(dir.path(), 2), true);
    // Ready at once: nothing is pinned.
    wait_states(s.addr, &[("a", "unloaded"), ("b", "unloaded"), ("c", "unloaded"), ("broken", "failed")]);
    let listed = get(s.addr, "/v1/models").json();
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "broken", "c"], "{listed}");
    let broken = listed["data"].as_array().unwrap().iter().find(|m| m["id"] == "broken").unwrap().clone();
    assert!(broken["error"].as_str().unwrap().contains("config.json"), "{broken}");
    let first_a = text(&complete(s.addr, body("a", "Hello")));
    let first_b = text(&complete(s.addr, body("b", "Hello")));
    wait_states(s.addr, &[("a", "ready"), ("b", "ready"), ("c", "unloaded")]);
    // `a` is the least recently used: `c` takes its place.
    let first_c = text(&complete(s.addr, body("c", "Hello")));
    wait_states(s.addr, &[("a", "unloaded"), ("b", "ready"), ("c", "ready")]);
    assert!(first_a != first_b || first_b != first_c, "three seeds, one text");
    complete(s.addr, body("b", "Hello"));
    // Now `c` is: `a` comes back in its place, with the same output.
    assert_eq!(text(&complete(s.addr, body("a", "Hello"))), first_a);
    wait_states(s.addr, &[("a", "ready"), ("b", "ready"), ("c", "unloaded")]);
    assert_eq!(metric(s.addr, "inferneo_model_evictions_total{model=\"a\"}"), Some(1.0));
    assert_eq!(metric(s.addr, "inferneo_model_evictions_total{model=\"c\"}"), Some(1.0));
    assert_eq!(metric(s.addr, "inferneo_model_loads_total{model=\"a\"}"), Some(2.0));
    assert_eq!(metric(s.addr, "inferneo_model_state{model=\"a\",state=\"ready\"}"), Some(1.0));
    assert_eq!(metric(s.addr, "inferneo_model_state{model=\"broken\",state=\"failed\"}"), Some(1.0));
    // The broken model answers 503 naming its reason; the others serve.
    let e = post(s.addr, "/v1/completions", &body("broken", "x")).error(503);
    assert!(e["message"].as_str().unwrap().contains("broken"), "{e}");
    assert_eq!(text(&complete(s.addr, body("b", "Hello"))), first_b);
    post(s.addr, "/v1/completions", &body("nope", "x")).error(404);
}

#[test]
fn concurrent_clients_over_more_models_than_the_budget_never_fail() {
    let dir = models_dir(false);
    let prompts = ["Hello", "The meaning of life is", "Once upon a time", "1 2 3"];
    // References: each model alone on its own server.
    let mut want = std::collections::HashMap::new();
    for name in ["a", "b", "c"] {
        let alone = ServerConfig { models: vec![spec(name, ModelSource::Dir(dir.path().join(name)))], ..config() };
        let alone = TestServer::start(alone, true);
        for p in prompts {
            want.insert((name, p), complete(alone.addr, body(name, p))["choices"].clone());
        }
    }
    let s = TestServer::start(repo_config(dir.path(), 2), true);
    let want = std::sync::Arc::new(want);
    let until = Instant::now() + Duration::from_secs(20);
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (addr, want) = (s.addr, want.clone());
            std::thread::spawn(move || {
                let mut done = 0;
                for i in 0.. {
                    if Instant::now() >= until || i > 10_000 {
                        break;
                    }
                    let name = ["a", "b", "c"][(c + i / 3) % 3];
                    let p = prompts[(c + i) % prompts.len()];
                    let r = post(addr, "/v1/completions", &body(name, p));
                    assert_eq!(r.status, 200, "client {c} request {i} ({name}): {}", r.body);
                    assert_eq!(r.json()["choices"], want[&(name, p)], "client {c} request {i} ({name}, {p:?})");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let done: usize = clients.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(done >= 16, "{done} requests");
    let loaded = states(s.addr).iter().filter(|(_, st)| st == "ready" || st == "loading").count();
    assert!(loaded <= 2, "{:?}", states(s.addr));
    assert!(metric(s.addr, "inferneo_model_evictions_total{model=\"a\"}").unwrap_or(0.0) >= 1.0);
    eprintln!("{done} requests over 3 models with 2 loaded at most, none failed");
}

#[test]
fn admin_api_loads_unloads_and_reloads() {
    let dir = models_dir(false);
    let s = TestServer::start(repo_config(dir.path(), 0), true);
    let info = get(s.addr, "/v1/models/a").json();
    assert_eq!(info["state"], "unloaded", "{info}");
    let loaded = post(s.addr, "/v1/models/a/load", &json!({"kv-cache-mb": 8}));
    assert_eq!(loaded.status, 200, "{}", loaded.body);
    let v = loaded.json();
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["kv_cache_bytes"].as_u64().unwrap() >> 20, 8, "{v}");
    assert!(v["weights_bytes"].as_u64().unwrap() > 0 && v["memory_bytes"].as_u64().unwrap() > 8 << 20, "{v}");
    let old = text(&complete(s.addr, body("a", "Hello")));
    // New weights in place: a reload serves them.
    write_model_dir(&dir.path().join("a"), &Preset::Tiny.config(), 7, StoreDtype::F32).unwrap();
    assert_eq!(text(&complete(s.addr, body("a", "Hello"))), old, "still the loaded weights");
    let r = post(s.addr, "/v1/models/a/reload", &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let new = text(&complete(s.addr, body("a", "Hello")));
    assert_ne!(new, old);
    let r = post(s.addr, "/v1/models/a/unload", &json!({}));
    assert_eq!(r.json()["state"], "unloaded", "{}", r.body);
    assert_eq!(r.json()["memory_bytes"], 0, "{}", r.body);
    // The next request loads it again.
    assert_eq!(text(&complete(s.addr, body("a", "Hello"))), new);
    post(s.addr, "/v1/models/zz/load", &json!({})).error(404);
    post(s.addr, "/v1/models/a/load", &json!({"threads": 0})).error(400);
    // A directory added later appears on refresh.
    write_model_dir(&dir.path().join("d"), &Preset::Tiny.config(), 3, StoreDtype::F32).unwrap();
    post(s.addr, "/v1/completions", &body("d", "x")).error(404);
    let r = post(s.addr, "/v1/models/refresh", &json!({}));
    assert_eq!(r.json()["added"], json!(["d"]), "{}", r.body);
    complete(s.addr, body("d", "Hello"));
    assert_eq!(metric(s.addr, "inferneo_model_unloads_total{model=\"a\"}"), Some(1.0));
}

#[test]
fn reload_under_load_fails_no_request_and_never_mixes_weights() {
    let dir = models_dir(false);
    let path = dir.path().join("a");
    let s = TestServer::start(repo_config(dir.path(), 0), true);
    let old = complete(s.addr, body("a", "Hello"))["choices"].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (addr, stop) = (s.addr, stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                for _ in 0..100_000 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let r = post(addr, "/v1/completions", &body("a", "Hello"));
                    assert_eq!(r.status, 200, "{}", r.body);
                    seen.push(r.json()["choices"].clone());
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    write_model_dir(&path, &Preset::Tiny.config(), 9, StoreDtype::F32).unwrap();
    let r = post(s.addr, "/v1/models/a/reload", &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let new = complete(s.addr, body("a", "Hello"))["choices"].clone();
    assert_ne!(new, old);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        let seen = c.join().unwrap();
        // Old answers, then new ones: each is one engine's, never a mix, and never old again.
        let switch = seen.iter().position(|v| *v != old).unwrap_or(seen.len());
        assert!(seen[..switch].iter().all(|v| *v == old));
        assert!(seen[switch..].iter().all(|v| *v == new), "a response from neither engine");
    }
}

#[test]
fn keep_alive_unloads_an_idle_model_and_pins_stay() {
    let dir = models_dir(false);
    let mut config = repo_config(dir.path(), 0);
    config.repository.keep_alive = Duration::from_millis(500);
    config.repository.pinned = vec!["c".into()];
    let s = TestServer::start(config, true);
    // The pinned model is loaded before /ready.
    wait_states(s.addr, &[("c", "ready"), ("a", "unloaded")]);
    complete(s.addr, body("a", "Hello"));
    assert!(states(s.addr).contains(&("a".into(), "ready".into())));
    // Idle past the keep-alive: unloaded; the pinned model, idle as long, stays.
    wait_states(s.addr, &[("a", "unloaded"), ("c", "ready")]);
    std::thread::sleep(Duration::from_millis(800));
    assert!(states(s.addr).contains(&("c".into(), "ready".into())), "{:?}", states(s.addr));
    // And comes back on its next request.
    complete(s.addr, body("a", "Hello"));
}

#[test]
fn watch_reloads_a_model_whose_files_change() {
    let dir = models_dir(false);
    let mut config = repo_config(dir.path(), 0);
    config.repository.watch = Some(Duration::from_millis(200));
    let s = TestServer::start(config, true);
    let old = text(&complete(s.addr, body("a", "Hello")));
    write_model_dir(&dir.path().join("a"), &Preset::Tiny.config(), 9, StoreDtype::F32).unwrap();
    let t0 = Instant::now();
    loop {
        let now = text(&complete(s.addr, body("a", "Hello")));
        if now != old {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the changed files were never reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(s.addr, "inferneo_model_loads_total{model=\"a\"}").unwrap() >= 2.0);
}

#[test]
fn with_nothing_evictable_a_request_waits_then_gets_503_with_retry_after() {
    let dir = models_dir(false);
    let mut config = repo_config(dir.path(), 1);
    config.repository.pinned = vec!["a".into()];
    config.repository.load_wait = Duration::from_millis(400);
    let s = TestServer::start(config, true);
    wait_states(s.addr, &[("a", "ready")]);
    let t0 = Instant::now();
    let r = post(s.addr, "/v1/completions", &body("b", "Hello"));
    let waited = t0.elapsed();
    let e = r.error(503);
    assert!(r.header("retry-after").is_some(), "{r:?}");
    assert!(waited >= Duration::from_millis(400), "answered after {waited:?}, before --load-wait");
    assert!(e["message"].as_str().unwrap().contains('b'), "{e}");
    // The pinned model still serves.
    complete(s.addr, body("a", "Hello"));
}

#[test]
fn the_memory_budget_evicts_like_the_model_count() {
    let dir = models_dir(false);
    // Measure one model's resident bytes, then allow one and a half of them.
    let probe = TestServer::start(repo_config(dir.path(), 0), true);
    complete(probe.addr, body("a", "Hello"));
    let one = get(probe.addr, "/v1/models/a").json()["memory_bytes"].as_u64().unwrap() as usize;
    drop(probe);
    let mut config = repo_config(dir.path(), 0);
    config.repository.memory_bytes = one * 3 / 2;
    let s = TestServer::start(config, true);
    let a = text(&complete(s.addr, body("a", "Hello")));
    complete(s.addr, body("b", "Hello"));
    wait_states(s.addr, &[("a", "unloaded"), ("b", "ready")]);
    assert_eq!(text(&complete(s.addr, body("a", "Hello"))), a);
    wait_states(s.addr, &[("a", "ready"), ("b", "unloaded")]);
}
