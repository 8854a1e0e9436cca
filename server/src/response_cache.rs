//! Finished results of deterministic requests, answered again without running the model
//! (`--response-cache-mb`).
//!
//! A request is deterministic when it decodes greedily (temperature 0) or names its `seed`: the
//! engine's batch invariance makes such a request's tokens and logprobs bitwise the same
//! whatever else runs, so a stored result is exactly what the model would produce again. The
//! key is the model's load (a reload gets a new one), the endpoint, the prompt's token ids and
//! every parameter but `stream` and `stream_options`: a streamed request and a plain one share
//! an entry, and a replay is streamed or not as the new request asks. What is stored is the
//! run's sequence of updates (text, logprobs and finish of each step of each choice) and each
//! choice's token count, so usage is unchanged.
//!
//! Bounded in bytes (an estimate of the stored text and logprobs), least recently used out
//! first. A client opts out with `Cache-Control: no-cache` or `no-store`.

use crate::completions::{Flavor, Update, Validated};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// A stored result.
pub struct Cached {
    pub updates: Vec<Update>,
    /// Tokens each choice generated.
    pub generated: Vec<usize>,
    bytes: usize,
}

impl Cached {
    pub fn new(updates: Vec<Update>, generated: Vec<usize>) -> Cached {
        // The text, the logprobs' token strings and numbers, and a fixed cost per update and key.
        let bytes = 256
            + updates.iter().map(|u| 64 + u.text.len() + u.logprobs.as_ref().map_or(0, |l| l.bytes())).sum::<usize>();
        Cached { updates, generated, bytes }
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (u64, Arc<Cached>)>,
    /// Last use -> key, oldest first.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
    hits: u64,
    misses: u64,
    /// Each model's current load: entries of an older load are dropped when a newer one is seen.
    loads: HashMap<String, u64>,
}

pub struct ResponseCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// The cache key of `v` under `flavor`, or `None` when the request is not deterministic.
pub fn key(v: &Validated, flavor: Flavor) -> Option<String> {
    let r = &v.req;
    if r.temperature != 0.0 && r.seed.is_none() {
        return None;
    }
    // Everything that can change the result, and nothing that only changes its framing.
    let mut params = r.clone();
    params.prompts.clear();
    params.model = None;
    params.stream = false;
    params.include_usage = false;
    Some(format!("{}\u{0}{}\u{0}{flavor:?}\u{0}{:?}\u{0}{params:?}", v.served.name, v.served.load_id, v.prompts))
}

impl ResponseCache {
    pub fn new(capacity_bytes: usize) -> ResponseCache {
        ResponseCache { capacity: capacity_bytes, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored result for `key` (counted as a hit or a miss).
    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        match inner.entries.get_mut(key) {
            Some((used, c)) => {
                inner.order.remove(used);
                *used = tick;
                inner.order.insert(tick, key.to_string());
                inner.hits += 1;
                Some(c.clone())
            }
            None => {
                inner.misses += 1;
                None
            }
        }
    }

    /// Stores `c` under `key` (of `model`'s load `load_id`), evicting the least recently used
    /// entries to stay within the byte bound; a result larger than the whole bound is not kept.
    pub fn insert(&self, model: &str, load_id: u64, key: String, c: Cached) {
        if c.bytes > self.capacity {
            return;
        }
        let mut g = self.lock();
        let inner = &mut *g;
        if inner.loads.insert(model.to_string(), load_id).is_some_and(|old| old != load_id) {
            // The model was reloaded: its old results are not what it computes now.
            let prefix = format!("{model}\u{0}");
            let stale: Vec<String> = inner
                .entries
                .keys()
                .filter(|k| k.starts_with(&prefix) && !k.starts_with(&format!("{prefix}{load_id}\u{0}")))
                .cloned()
                .collect();
            for k in stale {
                inner.remove(&k);
            }
        }
        inner.remove(&key);
        while inner.bytes + c.bytes > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else { break };
            if let Some((_, old)) = inner.entries.remove(&oldest) {
                inner.bytes -= old.bytes;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += c.bytes;
        inner.order.insert(tick, key.clone());
        inner.entries.insert(key, (tick, Arc::new(c)));
    }

    /// The cache's Prometheus families.
    pub fn render(&self, out: &mut String) {
        let g = self.lock();
        let mut family = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        family(
            "inferneo_response_cache_hits_total",
            "counter",
            "Requests answered from the response cache.",
            g.hits as f64,
        );
        family(
            "inferneo_response_cache_misses_total",
            "counter",
            "Deterministic requests not found in the response cache.",
            g.misses as f64,
        );
        family("inferneo_response_cache_bytes", "gauge", "Bytes held by the response cache.", g.bytes as f64);
        family("inferneo_response_cache_capacity_bytes", "gauge", "The response cache's bound.", self.capacity as f64);
        family(
            "inferneo_response_cache_entries",
            "gauge",
            "Results held by the response cache.",
            g.entries.len() as f64,
        );
    }
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some((used, old)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= old.bytes;
        }
    }
}
