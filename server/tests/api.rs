//! The OpenAI API over a real server on loopback: responses, streaming, stop strings, n,
//! logprobs, logit bias, tokenizer routes, models, metrics.

mod common;

use common::*;
use inferneo_runtime::{generate, GenerateRequest, LoadOptions, ModelSource, SamplingParams, Tokenizer};
use inferneo_server::ServerConfig;
use serde_json::{json, Value};
use std::sync::OnceLock;

fn server() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    // With vLLM's metric names too, so promtool checks those series as well.
    S.get_or_init(|| TestServer::start(ServerConfig { vllm_metrics: true, ..config() }, true))
}

fn text(v: &Value, i: usize) -> String {
    v["choices"][i]["text"].as_str().expect("text").to_string()
}

/// The greedy continuation computed directly by the runtime, decoded.
fn direct_greedy(prompt: &str, max_tokens: usize) -> String {
    let model = inferneo_runtime::load(&ModelSource::Dir(tiny_dir(0)), &LoadOptions::default()).unwrap().model;
    let tok = Tokenizer::gpt2();
    let req = GenerateRequest {
        prompt: tok.encode(prompt).unwrap(),
        max_tokens,
        sampling: SamplingParams::default(),
        stop_tokens: vec![50256],
        top_logprobs: 0,
        prompt_logprobs: false,
    };
    let g = generate(&model, &req, |_| {}).unwrap();
    tok.decode(&g.tokens).unwrap()
}

#[test]
fn greedy_completion_equals_the_runtime_and_has_the_openai_shape() {
    let s = server();
    let v =
        complete(s.addr, json!({"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0}));
    assert_eq!(text(&v, 0), direct_greedy("The quick brown fox", 12));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "tiny");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    assert_eq!(v["usage"], json!({"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16}));
}

#[test]
fn prompt_as_token_ids_equals_prompt_as_text() {
    let s = server();
    let ids = Tokenizer::gpt2().encode("Hello world").unwrap();
    let a = complete(s.addr, json!({"prompt": "Hello world", "max_tokens": 6, "temperature": 0}));
    let b = complete(s.addr, json!({"prompt": ids, "max_tokens": 6, "temperature": 0}));
    assert_eq!(text(&a, 0), text(&b, 0));
}

#[test]
fn streaming_concatenates_to_the_plain_response() {
    let s = server();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 20, "temperature": 0.9, "top_p": 0.9, "seed": 7});
    let plain = complete(s.addr, body.clone());
    let mut sb = body.clone();
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let r = post(s.addr, "/v1/completions", &sb);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);
    let streamed: String = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| {
            assert_eq!(c["object"], "text_completion");
            assert_eq!(c["usage"], Value::Null);
            c["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(streamed, text(&plain, 0));
    let finishes: Vec<&Value> =
        chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes, vec![&json!("length")]);
}

#[test]
fn seed_reproduces_and_different_seeds_differ() {
    let s = server();
    let body = |seed: u64| json!({"prompt": "A", "max_tokens": 16, "temperature": 1.0, "seed": seed});
    let a = text(&complete(s.addr, body(1)), 0);
    assert_eq!(a, text(&complete(s.addr, body(1)), 0));
    assert_ne!(a, text(&complete(s.addr, body(2)), 0));
}

#[test]
fn stop_strings_match_across_tokens_and_are_not_returned() {
    let s = server();
    let full = direct_greedy("Stop here", 24);
    // A stop string that starts inside the text and spans at least one token boundary.
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    let (start, end) = (chars[chars.len() / 3].0, chars[chars.len() / 3 + 3].0);
    let stop = &full[start..end];
    let want = &full[..full.find(stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"prompt": "Stop here", "max_tokens": 24, "temperature": 0, "stop": [stop, "never-there"], "stream": stream});
        let r = post(s.addr, "/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let (got, finish) = if stream {
            let ev = r.events();
            let chunks: Vec<Value> = ev[..ev.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
            let t: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
            (t, chunks.last().unwrap()["choices"][0]["finish_reason"].clone())
        } else {
            let v = r.json();
            (text(&v, 0), v["choices"][0]["finish_reason"].clone())
        };
        assert_eq!(got, want, "stop {stop:?} in {full:?} (stream {stream})");
        assert_eq!(finish, "stop");
    }
}

#[test]
fn n_choices_over_several_prompts() {
    let s = server();
    let v = complete(s.addr, json!({"prompt": ["a", "b c"], "n": 3, "max_tokens": 5, "temperature": 1.0, "seed": 11}));
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 6);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
    }
    assert_eq!(v["usage"]["prompt_tokens"], 1 + 2);
    assert_eq!(v["usage"]["completion_tokens"], 30);
    let again =
        complete(s.addr, json!({"prompt": ["a", "b c"], "n": 3, "max_tokens": 5, "temperature": 1.0, "seed": 11}));
    assert_eq!(v["choices"], again["choices"]);
    // Choices of one prompt are independent samples.
    assert!((0..3).map(|i| text(&v, i)).collect::<std::collections::HashSet<_>>().len() > 1);
}

#[test]
fn logprobs_and_echo() {
    let s = server();
    let v = complete(s.addr, json!({"prompt": "Hi", "max_tokens": 5, "temperature": 0, "logprobs": 3}));
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 5);
    let tops = lp["top_logprobs"].as_array().unwrap();
    for (i, top) in tops.iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!(!top.is_empty() && top.len() <= 3);
        // Greedy: the chosen token is the most likely one.
        let best = top.values().map(|x| x.as_f64().unwrap()).fold(f64::MIN, f64::max);
        let chosen = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(chosen <= 0.0 && (chosen - best).abs() < 1e-5, "{chosen} vs {best}");
    }
    let offsets: Vec<u64> = lp["text_offset"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    let e = complete(s.addr, json!({"prompt": "Hi there", "max_tokens": 3, "temperature": 0, "echo": true}));
    let plain = complete(s.addr, json!({"prompt": "Hi there", "max_tokens": 3, "temperature": 0}));
    assert_eq!(text(&e, 0), format!("Hi there{}", text(&plain, 0)));
}

#[test]
fn logit_bias_forces_and_bans_tokens() {
    let s = server();
    let tok = Tokenizer::gpt2();
    let forced = tok.encode(" cat").unwrap()[0];
    let v = complete(
        s.addr,
        json!({"prompt": "x", "max_tokens": 4, "temperature": 0, "logit_bias": {forced.to_string(): 100}}),
    );
    assert_eq!(text(&v, 0), " cat cat cat cat");
    let plain = complete(s.addr, json!({"prompt": "x", "max_tokens": 1, "temperature": 0, "logprobs": 1}));
    let first = plain["choices"][0]["text"].as_str().unwrap().to_string();
    let first_id = tok.encode(&first).unwrap();
    if first_id.len() == 1 {
        let v = complete(
            s.addr,
            json!({"prompt": "x", "max_tokens": 1, "temperature": 0, "logit_bias": {first_id[0].to_string(): -100}}),
        );
        assert_ne!(text(&v, 0), first);
    }
}

#[test]
fn tokenizer_routes_and_models() {
    let s = server();
    let t = post(s.addr, "/tokenize", &json!({"prompt": "Hello, world!"})).json();
    assert_eq!(t["tokens"], json!([15496, 11, 995, 0]));
    assert_eq!(t["count"], 4);
    assert_eq!(t["max_model_len"], 128);
    let d = post(s.addr, "/detokenize", &json!({"model": "tiny", "tokens": [15496, 11, 995, 0]})).json();
    assert_eq!(d["prompt"], "Hello, world!");
    post(s.addr, "/detokenize", &json!({"tokens": [99999999]})).error(400);
    let m = get(s.addr, "/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "tiny");
    assert_eq!(m["data"][0]["object"], "model");
    assert_eq!(get(s.addr, "/health").json()["status"], "ok");
    assert_eq!(get(s.addr, "/ready").status, 200);
}

/// A strict reader of the Prometheus text format (0.0.4): every sample belongs to a family
/// declared by `# TYPE` before it, names and labels are well formed, values parse, histogram
/// buckets are cumulative and end in `+Inf` equal to `_count`.
fn check_exposition(text: &str) -> Vec<(String, f64)> {
    let mut types = std::collections::HashMap::new();
    let mut samples = Vec::new();
    let name_ok = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "duplicate TYPE {name}");
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "{line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("braces");
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("label in {line}"));
                assert!(name_ok(k), "{line}");
                assert!(!v.trim_end_matches('"').contains('"') || v.contains("\\\""), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        samples.push((series.to_string(), value));
    }
    // Histogram buckets cumulative, +Inf == _count.
    for (series, v) in &samples {
        if let Some(prefix) = series.split_once("_bucket{").map(|(p, _)| p) {
            let labels = series.split_once("{").unwrap().1;
            let model = labels.split(",le=").next().unwrap();
            let count = samples
                .iter()
                .find(|(s, _)| *s == format!("{prefix}_count{{{model}}}"))
                .unwrap_or_else(|| panic!("no _count for {series}"))
                .1;
            assert!(*v <= count, "{series}");
            if series.contains("le=\"+Inf\"") {
                assert_eq!(*v, count, "{series}");
            }
        }
    }
    samples
}

#[test]
fn metrics_are_valid_prometheus_text_and_count_requests() {
    let s = server();
    complete(s.addr, json!({"prompt": "metrics", "max_tokens": 3}));
    let r = get(s.addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let samples = check_exposition(&r.body);
    let value = |name: &str| samples.iter().find(|(s, _)| s == name).map(|(_, v)| *v);
    assert!(value("inferneo_requests_total{model=\"tiny\",status=\"200\"}").unwrap() >= 1.0);
    assert!(value("inferneo_generation_tokens_total{model=\"tiny\"}").unwrap() >= 3.0);
    assert!(value("inferneo_time_to_first_token_seconds_count{model=\"tiny\"}").unwrap() >= 1.0);
    assert!(value("inferneo_inter_token_latency_seconds_count{model=\"tiny\"}").unwrap() >= 2.0);
    assert_eq!(value("inferneo_model_ready{model=\"tiny\"}"), Some(1.0));
    // The test spec gives the engine one thread.
    assert_eq!(value("inferneo_engine_threads{model=\"tiny\"}"), Some(1.0));
    for g in
        ["inferneo_queue_depth", "inferneo_running_sequences", "inferneo_kv_blocks_used", "inferneo_kv_blocks_free"]
    {
        assert!(value(&format!("{g}{{model=\"tiny\"}}")).is_some(), "{g}");
    }
    // promtool, where installed (CI installs Debian's `prometheus`), checks it too.
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(r.body.as_bytes())?;
            c.wait_with_output()
        })
    {
        // promtool's lint warns (non-zero) only for style (e.g. counters without _total);
        // a parse error says "error while linting" or "text format parsing error".
        let all = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(!all.contains("parsing error") && !all.contains("error while linting"), "promtool: {all}");
        println!("promtool check metrics: {}", if all.trim().is_empty() { "clean" } else { all.trim() });
    } else {
        println!("notice: promtool not installed; checked /metrics with the built-in parser only");
    }
}

#[test]
fn repeated_prompt_prefixes_hit_the_kv_cache() {
    let s = server();
    let prompt: Vec<u32> = (0..40).map(|i| 1000 + i * 7).collect();
    let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0});
    let first = complete(s.addr, body.clone());
    let before = metric(s.addr, "inferneo_prefix_cache_hits_total{model=\"tiny\"}").unwrap();
    let second = complete(s.addr, body);
    let after = metric(s.addr, "inferneo_prefix_cache_hits_total{model=\"tiny\"}").unwrap();
    assert!(after >= before + 2.0, "hits {before} -> {after}");
    assert_eq!(first["choices"], second["choices"], "a cache hit changed the output");
    assert!(metric(s.addr, "inferneo_prefix_cache_queries_total{model=\"tiny\"}").unwrap() >= after);
}
