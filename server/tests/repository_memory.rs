//! Unloading a model returns its memory to the OS: the process's resident set (VmRSS) drops by
//! the model's weights + KV within 10%. Its own test binary, so no other test's server moves
//! the figure.
//!
//! Why it returns: the KV pool and the packed matrices are single large allocations (`HugeBuf`,
//! 2 MiB aligned), which glibc serves with `mmap` and gives back with `munmap` when freed. What
//! stays is allocator-held heap from the load's short-lived buffers (each matrix's f32 source
//! is read, packed and dropped; glibc keeps such freed heap for reuse), the tokenizer's tables
//! and thread stacks: not the model's bytes, and reused by its next load rather than grown.

mod common;

use common::*;
use inferneo_runtime::ModelSource;
use inferneo_server::{RepositoryConfig, ServerConfig};
use serde_json::json;
use std::time::Duration;

fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize =
        status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb << 10
}

#[test]
fn unload_returns_the_weights_and_kv_to_the_os() {
    let dir = tempfile::tempdir().unwrap();
    inferneo_runtime::init::write_model_dir(
        &dir.path().join("m"),
        &inferneo_runtime::Preset::Tiny.config(),
        0,
        inferneo_runtime::init::StoreDtype::F32,
    )
    .unwrap();
    let mut defaults = spec("", ModelSource::Embedded);
    defaults.engine.kv_cache_bytes = 160 << 20;
    let config = ServerConfig {
        models: Vec::new(),
        repository: RepositoryConfig {
            models_dir: Some(dir.path().to_path_buf()),
            defaults: Some(defaults),
            ..RepositoryConfig::default()
        },
        ..config()
    };
    let s = TestServer::start(config, true);
    let body = json!({"model": "m", "prompt": "Hello", "max_tokens": 4, "temperature": 0});
    // One load and unload first, so the allocator's reusable heap (the load's transient buffers)
    // is in place in both measurements below.
    complete(s.addr, body.clone());
    assert_eq!(post(s.addr, "/v1/models/m/unload", &json!({})).json()["state"], "unloaded");
    let before = rss_bytes();
    complete(s.addr, body.clone());
    let model = get(s.addr, "/v1/models/m").json()["memory_bytes"].as_u64().unwrap() as usize;
    let loaded = rss_bytes();
    assert_eq!(post(s.addr, "/v1/models/m/unload", &json!({})).json()["state"], "unloaded");
    std::thread::sleep(Duration::from_millis(100));
    let after = rss_bytes();
    let mb = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "model {:.1} MB; RSS before load {:.1} MB, loaded {:.1} MB, after unload {:.1} MB (dropped {:.1} MB)",
        mb(model),
        mb(before),
        mb(loaded),
        mb(after),
        mb(loaded.saturating_sub(after))
    );
    let dropped = loaded.saturating_sub(after) as f64;
    assert!(
        dropped >= 0.9 * model as f64,
        "RSS dropped {:.1} MB for a {:.1} MB model",
        mb(dropped as usize),
        mb(model)
    );
    // What stays after an unload is the allocator's heap that the load's transient buffers
    // grew (glibc keeps small-block arenas, and which arena a load thread gets varies between
    // runs: 2 to 50 MB here). It is reused, not leaked: three more loads and unloads leave the
    // process less than half a model larger (a leak would add a whole model each time).
    for _ in 0..3 {
        complete(s.addr, body.clone());
        assert_eq!(post(s.addr, "/v1/models/m/unload", &json!({})).json()["state"], "unloaded");
    }
    std::thread::sleep(Duration::from_millis(100));
    let again = rss_bytes();
    eprintln!("after three more loads and unloads: {:.1} MB", mb(again));
    assert!(
        again <= after + model / 2,
        "RSS grew from {:.1} to {:.1} MB over three loads and unloads",
        mb(after),
        mb(again)
    );
}
