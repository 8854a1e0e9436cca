//! `inferneo bench` end to end on a tiny model: every scenario runs, the JSON has every figure
//! with sane values, the SVG plots are written, and a seed reproduces the workload.

use serde_json::Value;
use std::process::Command;

fn inferneo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inferneo")).args(args).output().expect("run inferneo")
}

fn tiny(dir: &std::path::Path) -> String {
    let d = dir.join("tiny");
    assert!(inferneo(&["init", "--preset", "tiny", "--out", d.to_str().unwrap()]).status.success());
    d.to_str().unwrap().to_string()
}

fn bench(model: &str, extra: &[&str], json: &std::path::Path) -> Value {
    let mut args = vec!["bench", "--quick", "--model", model, "--prompt-tokens", "8", "--max-tokens", "8"];
    args.extend_from_slice(&["--json", json.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let out = inferneo(&args);
    assert!(out.status.success(), "bench failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn check_level(l: &Value) {
    check(l, true)
}

fn check(l: &Value, fixed_lengths: bool) {
    assert_eq!(l["success_rate"], 1.0, "{l}");
    assert!(l["requests"].as_u64().unwrap() > 0, "{l}");
    assert!(l["achieved_rps"].as_f64().unwrap() > 0.0, "{l}");
    assert!(l["generated_tokens_per_s"].as_f64().unwrap() > 0.0, "{l}");
    for dist in ["latency", "ttft", "inter_token_latency"] {
        let d = &l[dist];
        let f = |k: &str| d[k].as_f64().unwrap_or_else(|| panic!("{dist}.{k} in {l}"));
        assert!(f("p50_ms") > 0.0 && f("p50_ms") <= f("p95_ms") && f("p95_ms") <= f("p99_ms"), "{d}");
        assert!(f("p99_ms") <= f("p99_9_ms") && f("p99_9_ms") <= f("max_ms"), "{d}");
        assert!(f("mean_ms") > 0.0 && f("stddev_ms") >= 0.0, "{d}");
    }
    assert!(l["latency"]["p50_ms"].as_f64() >= l["ttft"]["p50_ms"].as_f64());
    if fixed_lengths {
        assert_eq!(l["completion_tokens"].as_u64().unwrap() % 8, 0, "every request generates max_tokens: {l}");
    }
    // The bench sends ignore_eos, which this server honours: no request ends early.
    assert_eq!(l["short_completions"], 0, "{l}");
    assert!(l["gauges"]["kv_blocks_free_min"].as_f64().is_some(), "{l}");
}

#[test]
fn every_scenario_reports_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let svg = dir.path().join("svg");
    let v = bench(&model, &["--svg", svg.to_str().unwrap()], &dir.path().join("b.json"));
    let m = &v["machine"];
    assert!(m["cpu"].is_string() && m["cores"].as_u64().unwrap() > 0 && m["kernels_isa"].is_string(), "{m}");
    assert!(m["flags"].is_array() && m["inferneo_version"].is_string());
    assert!(v["server_peak_rss_mb"].as_f64().unwrap() > 10.0);
    assert_eq!(v["workload"]["max_tokens"], 8);
    let s = &v["scenarios"];
    check_level(&s["latency"][0]);
    assert_eq!(s["latency"][0]["requests"], 3);
    let tp = s["throughput"].as_array().unwrap();
    assert!(!tp.is_empty());
    for l in tp {
        assert!(l["target_rps"].as_f64().unwrap() > 0.0);
        assert!(l["errors"].is_object());
    }
    check_level(&tp[0]);
    let cc = s["concurrency"].as_array().unwrap();
    assert_eq!(cc.iter().map(|l| l["x"].as_f64().unwrap()).collect::<Vec<_>>(), [1.0, 2.0]);
    cc.iter().for_each(check_level);
    let batch = s["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 2);
    assert!(batch.iter().all(|b| b["generated_tokens_per_s"].as_f64().unwrap() > 0.0));
    check(&s["production"][0], false);
    for f in ["latency_vs_load.svg", "throughput_vs_concurrency.svg", "tokens_vs_ttft.svg", "throughput_vs_batch.svg"] {
        let text = std::fs::read_to_string(svg.join(f)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("<polyline") && text.trim_end().ends_with("</svg>"), "{f}");
    }
    let text = std::fs::read_to_string(svg.join("throughput_vs_batch.svg")).unwrap();
    assert!(text.contains("inferneo f32 (engine batch)"), "the legend names the system and its mode");

    // The same result, stored, redrawn without measuring anything (how run_all.sh draws).
    let peers = dir.path().join("peers");
    std::fs::create_dir(&peers).unwrap();
    std::fs::copy(dir.path().join("b.json"), peers.join("ours-f32.json")).unwrap();
    std::fs::write(peers.join("hf.json"), r#"{"system": "HF transformers (torch eager)", "error": "no torch"}"#)
        .unwrap();
    let out_dir = dir.path().join("redrawn");
    let out = inferneo(&[
        "bench",
        "--scenarios",
        "none",
        "--peers",
        peers.to_str().unwrap(),
        "--svg",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(out_dir.join("throughput_vs_concurrency.svg")).unwrap();
    assert!(
        text.contains("inferneo f32 (HTTP server)") && text.contains("HF transformers (torch eager): not available")
    );
}

#[test]
fn same_seed_same_workload() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let run = |seed: &str, name: &str| {
        let v = bench(&model, &["--scenarios", "production", "--seed", seed], &dir.path().join(name));
        let p = v["scenarios"]["production"][0].clone();
        (p["requests"].clone(), p["prompt_tokens"].clone(), p["completion_tokens"].clone())
    };
    let a = run("5", "a.json");
    assert_eq!(a, run("5", "b.json"));
    assert_ne!(a, run("6", "c.json"));
}

#[test]
fn bad_bench_flags_are_one_line_errors() {
    for (args, needle) in [
        (vec!["bench", "--url", "http://10.1.2.3:8000"], "loopback"),
        (vec!["bench", "--scenarios", "latency,nope"], "unknown scenario 'nope'"),
        (vec!["bench", "--rates", "1,x"], "--rates"),
        (vec!["bench", "--svg", "/tmp", "--peers", "/no/such/results"], "--peers /no/such/results: no such directory"),
        (vec!["bench", "--peers", "/tmp"], "--peers /tmp: needs --svg"),
        (vec!["bench", "--scenarios", "none"], "--scenarios none"),
    ] {
        let out = inferneo(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.starts_with("note:") && !l.starts_with("loading") && !l.starts_with("loaded"))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn a_level_past_saturation_is_cut_off_after_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    let t0 = std::time::Instant::now();
    let args = [
        "--scenarios",
        "throughput,concurrency",
        "--rates",
        "400",
        "--concurrency",
        "1",
        "--duration",
        "1",
        "--drain",
        "0.3",
        "--warmup",
        "0",
    ];
    let mut cmd = vec!["bench", "--model", &model, "--prompt-tokens", "8", "--max-tokens", "32"];
    cmd.extend_from_slice(&args);
    let json = dir.path().join("o.json");
    cmd.extend_from_slice(&["--json", json.to_str().unwrap()]);
    let out = inferneo(&cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(t0.elapsed() < std::time::Duration::from_secs(30), "not bounded: {:?}", t0.elapsed());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let levels = v["scenarios"]["throughput"].as_array().unwrap();
    assert_eq!(levels.len(), 1, "saturated at the first rate, so no doubling");
    let l = &levels[0];
    assert!(l["errors"]["unfinished"].as_u64().unwrap() > 0, "{l}");
    assert!(l["success_rate"].as_f64().unwrap() < 1.0);
    assert!(l["achieved_rps"].as_f64().unwrap() < 400.0 * 0.8);
    assert!(v["machine"]["rustc"].as_str().unwrap().starts_with("rustc"));
    // The next level starts once the server has cancelled the abandoned requests: its gauges
    // show its own single client only.
    let next = &v["scenarios"]["concurrency"][0];
    assert_eq!(next["gauges"]["queue_depth_max"].as_f64(), Some(0.0), "{next}");
    assert!(next["gauges"]["running_max"].as_f64().unwrap() <= 1.0, "{next}");
}

/// The soak check on the tiny model for a few seconds: every kind of request is sent, each
/// ends as its kind allows, the server counts every one, and the gauges return to zero.
#[test]
fn soak_sends_every_kind_and_passes_on_a_healthy_server() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path());
    let json = tmp.path().join("soak.json");
    let args =
        ["bench", "--model", &model, "--scenarios", "soak", "--duration", "8", "--warmup", "0", "--soak-clients", "4"];
    let mut all = args.to_vec();
    all.extend(["--json", json.to_str().unwrap()]);
    let out = inferneo(&all);
    assert!(
        out.status.success(),
        "soak failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let soak = &v["scenarios"]["soak"];
    let kinds: Vec<&str> = soak["outcomes"].as_array().unwrap().iter().map(|o| o["kind"].as_str().unwrap()).collect();
    for kind in ["stream", "plain", "cancelled_stream", "cancelled_plain", "bad"] {
        assert!(kinds.contains(&kind), "no {kind} request in {soak}");
    }
    assert_eq!(soak["server_counted"].as_f64(), soak["requests"].as_f64(), "{soak}");
    assert!(soak["failures"].as_array().unwrap().is_empty(), "{soak}");
    assert!(soak["rss_mb"]["growth_after_warmup"].is_number(), "{soak}");
    // `all` does not include the soak; naming an unknown scenario is an error.
    let bad = inferneo(&["bench", "--model", &model, "--scenarios", "sok"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("soak"));
}

/// `--scenarios batch` alone runs the engine without a server (one model in memory at a time):
/// the batch figures and the engine's peak RSS, no server figures.
#[test]
fn batch_alone_runs_the_engine_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny(dir.path());
    // --quick's batch sizes: 1 and 2.
    let v = bench(&model, &["--scenarios", "batch"], &dir.path().join("b.json"));
    let batch = v["scenarios"]["batch"].as_array().unwrap();
    assert_eq!(batch.iter().map(|b| b["batch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert!(batch.iter().all(|b| b["generated_tokens_per_s"].as_f64().unwrap() > 0.0), "{v}");
    assert!(v["engine_peak_rss_mb"].as_f64().unwrap() > 10.0, "{v}");
    assert!(v["server_peak_rss_mb"].is_null(), "no server ran: {v}");
    assert!(v["scenarios"].as_object().unwrap().keys().eq(["batch"]), "{v}");
}
