//! Prometheus text exposition (format 0.0.4): request counters by status, latency histograms
//! (time to first token, inter-token, end to end), token counters, and the engines' gauges.
//! Hand-written: a few counters do not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const TTFT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const ITL_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5];
const LOAD_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
const E2E_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0];

#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0 }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {acc}");
    }
}

#[derive(Clone, Debug)]
struct ModelSeries {
    requests: BTreeMap<u16, u64>,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    prompt_tokens: u64,
    generated_tokens: u64,
    loads: u64,
    unloads: u64,
    evictions: u64,
    load_seconds: Histogram,
}

impl Default for ModelSeries {
    fn default() -> Self {
        ModelSeries {
            requests: BTreeMap::new(),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
            prompt_tokens: 0,
            generated_tokens: 0,
            loads: 0,
            unloads: 0,
            evictions: 0,
            load_seconds: Histogram::new(LOAD_BUCKETS),
        }
    }
}

/// One model's engine gauges at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Gauges {
    pub model: String,
    pub ready: bool,
    /// The repository state: unloaded, loading, ready, unloading or failed.
    pub state: &'static str,
    /// Bytes held resident: weights + KV (0 while unloaded).
    pub memory_bytes: usize,
    /// Threads the model's engine runs its kernels on (0 while not loaded).
    pub threads: usize,
    /// Positions per KV cache block.
    pub kv_block_tokens: usize,
    /// Requests admitted by the server and not finished (running or queued).
    pub in_flight: usize,
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_free: usize,
    pub preemptions: u64,
    pub prefix_cache_hits: u64,
    pub prefix_cache_queries: u64,
}

#[derive(Default)]
struct Inner {
    http: BTreeMap<(&'static str, u16), u64>,
    models: BTreeMap<String, ModelSeries>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn model<R>(&self, model: &str, f: impl FnOnce(&mut ModelSeries) -> R) -> R {
        self.with(|i| f(i.models.entry(model.to_string()).or_default()))
    }

    /// Every HTTP response, by route (a fixed set, so the label stays bounded) and status.
    pub fn http(&self, route: &'static str, status: u16) {
        self.with(|i| *i.http.entry((route, status)).or_default() += 1);
    }

    /// A completion request for `model` ended with `status`.
    pub fn request(&self, model: &str, status: u16) {
        self.model(model, |m| *m.requests.entry(status).or_default() += 1);
    }

    pub fn ttft(&self, model: &str, seconds: f64) {
        self.model(model, |m| m.ttft.observe(seconds));
    }

    pub fn inter_token(&self, model: &str, seconds: &[f64]) {
        self.model(model, |m| seconds.iter().for_each(|&s| m.itl.observe(s)));
    }

    pub fn e2e(&self, model: &str, seconds: f64) {
        self.model(model, |m| m.e2e.observe(seconds));
    }

    pub fn tokens(&self, model: &str, prompt: usize, generated: usize) {
        self.model(model, |m| {
            m.prompt_tokens += prompt as u64;
            m.generated_tokens += generated as u64;
        });
    }

    /// A model finished loading in `seconds`.
    pub fn model_loaded(&self, model: &str, seconds: f64) {
        self.model(model, |m| {
            m.loads += 1;
            m.load_seconds.observe(seconds);
        });
    }

    /// A model began unloading; `evicted`: to make room for another.
    pub fn model_unloaded(&self, model: &str, evicted: bool) {
        self.model(model, |m| {
            m.unloads += 1;
            m.evictions += evicted as u64;
        });
    }

    /// The Prometheus text: our `inferneo_*` series, and with `vllm_names` the router gauges
    /// again under vLLM's names (see [`router_gauges`]).
    pub fn render_with(&self, gauges: &[Gauges], vllm_names: bool) -> String {
        let mut out = self.render(gauges);
        router_gauges(&mut out, gauges, "inferneo_", "model");
        if vllm_names {
            router_gauges(&mut out, gauges, "vllm:", "model_name");
        }
        out
    }

    pub fn render(&self, gauges: &[Gauges]) -> String {
        let inner = self.with(|i| (i.http.clone(), i.models.clone()));
        let (http, models) = inner;
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(&mut out, "inferneo_http_requests_total", "counter", "HTTP responses by route and status.");
        for ((route, status), n) in &http {
            let _ = writeln!(out, "inferneo_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        family(&mut out, "inferneo_requests_total", "counter", "Completion requests by model and final status.");
        for (model, m) in &models {
            for (status, n) in &m.requests {
                let _ = writeln!(out, "inferneo_requests_total{{model=\"{}\",status=\"{status}\"}} {n}", esc(model));
            }
        }
        type Pick = fn(&ModelSeries) -> &Histogram;
        let hists: [(&str, &str, Pick); 4] = [
            ("inferneo_time_to_first_token_seconds", "Time from request arrival to its first token.", |m| &m.ttft),
            ("inferneo_inter_token_latency_seconds", "Time between consecutive tokens of a sequence.", |m| &m.itl),
            ("inferneo_e2e_request_latency_seconds", "Time from request arrival to its last token.", |m| &m.e2e),
            ("inferneo_model_load_seconds", "Time to load a model (read, convert, pack, start its engine).", |m| {
                &m.load_seconds
            }),
        ];
        for (name, help, pick) in hists {
            family(&mut out, name, "histogram", help);
            for (model, m) in &models {
                pick(m).render(&mut out, name, &format!("model=\"{}\"", esc(model)));
            }
        }
        type Count = fn(&ModelSeries) -> u64;
        let counters: [(&str, &str, Count); 5] = [
            ("inferneo_prompt_tokens_total", "Prompt tokens processed.", |m| m.prompt_tokens),
            ("inferneo_generation_tokens_total", "Tokens generated.", |m| m.generated_tokens),
            ("inferneo_model_loads_total", "Model loads completed (reloads included).", |m| m.loads),
            ("inferneo_model_unloads_total", "Model unloads begun (evictions included).", |m| m.unloads),
            ("inferneo_model_evictions_total", "Models unloaded to make room for another.", |m| m.evictions),
        ];
        for (name, help, pick) in counters {
            family(&mut out, name, "counter", help);
            for (model, m) in &models {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", esc(model), pick(m));
            }
        }
        type Gauge = fn(&Gauges) -> f64;
        family(&mut out, "inferneo_model_state", "gauge", "The model's repository state: 1 for the current one.");
        for g in gauges {
            for state in ["unloaded", "loading", "ready", "unloading", "failed"] {
                let on = (g.state == state) as u8;
                let _ = writeln!(out, "inferneo_model_state{{model=\"{}\",state=\"{state}\"}} {on}", esc(&g.model));
            }
        }
        let series: [(&str, &str, &str, Gauge); 11] = [
            ("inferneo_model_ready", "gauge", "1 when the model is loaded and serving.", |g| g.ready as u8 as f64),
            ("inferneo_model_memory_bytes", "gauge", "Bytes the model holds resident: weights and KV cache.", |g| {
                g.memory_bytes as f64
            }),
            ("inferneo_engine_threads", "gauge", "Threads the model's engine runs its kernels on.", |g| {
                g.threads as f64
            }),
            ("inferneo_requests_in_flight", "gauge", "Requests admitted and not finished.", |g| g.in_flight as f64),
            ("inferneo_queue_depth", "gauge", "Sequences waiting for admission to the engine.", |g| g.waiting as f64),
            ("inferneo_running_sequences", "gauge", "Sequences in the running batch.", |g| g.running as f64),
            ("inferneo_kv_blocks_used", "gauge", "KV cache blocks in use.", |g| g.kv_blocks_used as f64),
            ("inferneo_kv_blocks_free", "gauge", "KV cache blocks free.", |g| g.kv_blocks_free as f64),
            ("inferneo_preemptions_total", "counter", "Sequences preempted for KV blocks.", |g| g.preemptions as f64),
            ("inferneo_prefix_cache_hits_total", "counter", "KV blocks reused from the prefix cache.", |g| {
                g.prefix_cache_hits as f64
            }),
            (
                "inferneo_prefix_cache_queries_total",
                "counter",
                "Full prompt blocks looked up in the prefix cache.",
                |g| g.prefix_cache_queries as f64,
            ),
        ];
        for (name, kind, help, pick) in series {
            family(&mut out, name, kind, help);
            for g in gauges {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", esc(&g.model), pick(g));
            }
        }
        out
    }
}

/// The gauges a load-aware router reads (the Gateway API Inference Extension's model-server
/// protocol, which vLLM's names define): requests waiting, requests running, the KV cache's
/// used fraction (0..1) and an info series carrying the KV block size and count as labels.
/// Each comes per model (label `model_label`) and once without labels, summed over the models:
/// an endpoint picker reads one series per pod and does not sum.
fn router_gauges(out: &mut String, gauges: &[Gauges], prefix: &str, model_label: &str) {
    let loaded: Vec<&Gauges> = gauges.iter().filter(|g| g.ready).collect();
    let total = |f: fn(&Gauges) -> usize| loaded.iter().map(|g| f(g)).sum::<usize>();
    let usage = |used: usize, free: usize| if used + free == 0 { 0.0 } else { used as f64 / (used + free) as f64 };
    type Pick = fn(&Gauges) -> f64;
    let series: [(&str, &str, Pick, f64); 3] = [
        (
            "num_requests_waiting",
            "Sequences waiting for the engine.",
            |g| g.waiting as f64,
            total(|g| g.waiting) as f64,
        ),
        ("num_requests_running", "Sequences in the running batch.", |g| g.running as f64, total(|g| g.running) as f64),
        (
            "kv_cache_usage_perc",
            "Fraction of KV cache blocks in use, 0 to 1.",
            |g| {
                if g.kv_blocks_used + g.kv_blocks_free == 0 {
                    0.0
                } else {
                    g.kv_blocks_used as f64 / (g.kv_blocks_used + g.kv_blocks_free) as f64
                }
            },
            usage(total(|g| g.kv_blocks_used), total(|g| g.kv_blocks_free)),
        ),
    ];
    for (name, help, pick, sum) in series {
        // The aggregate first: an endpoint picker takes the first series of a family.
        let _ = writeln!(out, "# HELP {prefix}{name} {help}\n# TYPE {prefix}{name} gauge");
        let _ = writeln!(out, "{prefix}{name} {sum}");
        for g in &loaded {
            let _ = writeln!(out, "{prefix}{name}{{{model_label}=\"{}\"}} {}", esc(&g.model), pick(g));
        }
    }
    let name = format!("{prefix}cache_config_info");
    let _ = writeln!(out, "# HELP {name} KV cache configuration, in the labels.\n# TYPE {name} gauge");
    let blocks = total(|g| g.kv_blocks_used + g.kv_blocks_free);
    let block = loaded.first().map_or(0, |g| g.kv_block_tokens);
    let _ = writeln!(out, "{name}{{block_size=\"{block}\",num_gpu_blocks=\"{blocks}\"}} 1");
    for g in &loaded {
        let _ = writeln!(
            out,
            "{name}{{{model_label}=\"{}\",block_size=\"{}\",num_gpu_blocks=\"{}\"}} 1",
            esc(&g.model),
            g.kv_block_tokens,
            g.kv_blocks_used + g.kv_blocks_free
        );
    }
}

/// Escapes a label value (backslash, quote, newline).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for s in [0.003, 0.02, 0.02, 100.0] {
            m.ttft("a", s);
        }
        let text = m.render(&[]);
        assert!(text.contains("inferneo_time_to_first_token_seconds_bucket{model=\"a\",le=\"0.005\"} 1"));
        assert!(text.contains("inferneo_time_to_first_token_seconds_bucket{model=\"a\",le=\"0.025\"} 3"));
        assert!(text.contains("inferneo_time_to_first_token_seconds_bucket{model=\"a\",le=\"60\"} 3"));
        assert!(text.contains("inferneo_time_to_first_token_seconds_bucket{model=\"a\",le=\"+Inf\"} 4"));
        assert!(text.contains("inferneo_time_to_first_token_seconds_count{model=\"a\"} 4"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
