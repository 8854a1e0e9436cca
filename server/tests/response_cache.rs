//! The response cache (`--response-cache-mb`) over a real server: deterministic repeats are
//! answered from it (plain or streamed, equal to the original, usage unchanged), sampled
//! requests without a seed never are, the byte bound holds with the oldest entries out first,
//! `Cache-Control: no-cache` opts out, and a reload drops the model's entries.

mod common;

use common::*;
use inferneo_runtime::init::{write_model_dir, StoreDtype};
use inferneo_runtime::{ModelSource, Preset};
use inferneo_server::ServerConfig;
use serde_json::{json, Value};

const HITS: &str = "inferneo_response_cache_hits_total";
const BYTES: &str = "inferneo_response_cache_bytes";

fn start(dir: &std::path::Path, bytes: usize) -> TestServer {
    write_model_dir(dir, &Preset::Tiny.config(), 0, StoreDtype::F32).unwrap();
    let models = vec![spec("tiny", ModelSource::Dir(dir.to_path_buf()))];
    TestServer::start(ServerConfig { models, response_cache_bytes: bytes, ..config() }, true)
}

fn hits(s: &TestServer) -> f64 {
    metric(s.addr, HITS).expect("hits metric")
}

/// The parts of a completion a replay must reproduce (not its id or creation time).
fn essence(v: &Value) -> Value {
    json!({"choices": v["choices"], "usage": v["usage"], "model": v["model"]})
}

/// Each choice's streamed text, and the usage chunk's usage.
fn streamed_text(addr: std::net::SocketAddr, path: &str, body: &Value) -> (Vec<String>, Value) {
    let mut b = body.clone();
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    let r = post(addr, path, &b);
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let mut texts = Vec::new();
    for c in chunks.iter().flat_map(|c| c["choices"].as_array().unwrap().clone()) {
        let i = c["index"].as_u64().unwrap() as usize;
        texts.resize(texts.len().max(i + 1), String::new());
        texts[i].push_str(c["text"].as_str().or(c["delta"]["content"].as_str()).unwrap_or(""));
    }
    (texts, chunks.last().unwrap()["usage"].clone())
}

#[test]
fn deterministic_repeats_are_replayed_plain_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), 1 << 20);
    assert_eq!(hits(&s), 0.0);
    let greedy =
        json!({"model": "tiny", "prompt": "The cache says", "max_tokens": 12, "temperature": 0, "logprobs": 2});
    let first = complete(s.addr, greedy.clone());
    let again = complete(s.addr, greedy.clone());
    assert_eq!(hits(&s), 1.0);
    assert_eq!(essence(&again), essence(&first));
    assert_ne!(again["id"], first["id"], "a replay is a new response");
    // Streamed: the same text and usage, from the entry the plain request left.
    let (text, usage) = streamed_text(s.addr, "/v1/completions", &greedy);
    assert_eq!(hits(&s), 2.0);
    assert_eq!(text, [first["choices"][0]["text"].as_str().unwrap()]);
    assert_eq!(usage, first["usage"]);
    // A streamed original, replayed plain.
    let seeded = json!({"model": "tiny", "prompt": "Seeded", "max_tokens": 10, "temperature": 0.9, "seed": 42, "n": 2});
    let (text, usage) = streamed_text(s.addr, "/v1/completions", &seeded);
    let replay = complete(s.addr, seeded.clone());
    assert_eq!(hits(&s), 3.0);
    let replayed: Vec<&str> = (0..2).map(|i| replay["choices"][i]["text"].as_str().unwrap()).collect();
    assert_eq!(text, replayed);
    assert_eq!(replay["usage"], usage);
    // Sampled without a seed: never looked up.
    let sampled = json!({"model": "tiny", "prompt": "Random", "max_tokens": 8, "temperature": 1.0});
    complete(s.addr, sampled.clone());
    complete(s.addr, sampled);
    assert_eq!(hits(&s), 3.0);
    // Opting out.
    let r = request(
        s.addr,
        "POST",
        "/v1/completions",
        &[("Content-Type", "application/json"), ("Cache-Control", "no-cache")],
        greedy.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(hits(&s), 3.0);
    // A different parameter is a different entry.
    let mut other = greedy.clone();
    other["max_tokens"] = json!(11);
    complete(s.addr, other);
    assert_eq!(hits(&s), 3.0);
}

#[test]
fn the_byte_bound_holds_oldest_out_first() {
    let dir = tempfile::tempdir().unwrap();
    let bound = 8 << 10;
    let s = start(dir.path(), bound);
    let body =
        |i: usize| json!({"model": "tiny", "prompt": format!("Prompt number {i}"), "max_tokens": 16, "temperature": 0});
    for i in 0..40 {
        complete(s.addr, body(i));
        let held = metric(s.addr, BYTES).unwrap();
        assert!(held <= bound as f64, "{held} bytes held, bound {bound}");
    }
    let entries = metric(s.addr, "inferneo_response_cache_entries").unwrap();
    assert!((1.0..40.0).contains(&entries), "{entries} entries: the bound evicted nothing, or kept nothing");
    // The newest is there, the oldest was evicted.
    complete(s.addr, body(39));
    assert_eq!(hits(&s), 1.0);
    complete(s.addr, body(0));
    assert_eq!(hits(&s), 1.0);
}

#[test]
fn a_reload_drops_the_models_entries() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), 1 << 20);
    let greedy = json!({"model": "tiny", "prompt": "Before and after", "max_tokens": 8, "temperature": 0});
    let old = complete(s.addr, greedy.clone());
    complete(s.addr, greedy.clone());
    assert_eq!(hits(&s), 1.0);
    write_model_dir(dir.path(), &Preset::Tiny.config(), 9, StoreDtype::F32).unwrap();
    let r = post(s.addr, "/v1/models/tiny/reload", &json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    let new = complete(s.addr, greedy.clone());
    assert_eq!(hits(&s), 1.0, "a result of the old weights was served after the reload");
    assert_ne!(new["choices"][0]["text"], old["choices"][0]["text"]);
    // Only the new load's entry is held.
    assert_eq!(metric(s.addr, "inferneo_response_cache_entries"), Some(1.0));
    complete(s.addr, greedy);
    assert_eq!(hits(&s), 2.0);
}
