//! The report: Markdown tables on stdout and the JSON document (charts: `chart.rs`).

use super::run::Level;
use serde_json::{json, Value};
use std::fmt::Write;

fn ms(s: f64) -> String {
    format!("{:.0}", s * 1e3)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

/// One Markdown table for the levels of a scenario.
pub fn table(levels: &[Level]) -> String {
    let mut out = String::new();
    let head = "| load | requests | ok % | achieved req/s | gen tok/s | latency p50 / p95 / p99 / p99.9 (ms) | \
                mean ± sd (ms) | TTFT p50 / p95 (ms) | ITL p50 / p95 (ms) | peak queue | peak running | peak KV blocks |";
    let _ = writeln!(out, "{head}\n|---|---|---|---|---|---|---|---|---|---|---|---|");
    for l in levels {
        let (lat, ttft, itl) = (l.latency(), l.ttft(), l.itl());
        let load = match l.target_rps {
            Some(r) => format!("{r} req/s"),
            None if l.scenario == "latency" => "sequential".into(),
            None => format!("{} clients", l.x),
        };
        let _ = writeln!(
            out,
            "| {load} | {} | {:.1} | {:.2} | {:.1} | {} / {} / {} / {} | {} ± {} | {} / {} | {:.1} / {:.1} | {} | {} | {} |",
            l.outcomes.len(),
            l.success_rate() * 100.0,
            l.achieved_rps(),
            l.tokens_per_s(),
            ms(lat.p50),
            ms(lat.p95),
            ms(lat.p99),
            ms(lat.p999),
            ms(lat.mean),
            ms(lat.stddev),
            ms(ttft.p50),
            ms(ttft.p95),
            itl.p50 * 1e3,
            itl.p95 * 1e3,
            opt(l.peaks.queue_depth),
            opt(l.peaks.running),
            opt(l.peaks.kv_blocks_used),
        );
    }
    let errors: Vec<String> = levels
        .iter()
        .filter(|l| !l.errors().is_empty())
        .map(|l| format!("{} at {}: {:?}", l.scenario, l.x, l.errors()))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\nErrors: {}", errors.join("; "));
    }
    out
}

/// This machine, for the JSON: CPU, flags that matter to the kernels, cores, memory, OS.
pub fn machine(isa: &str) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let wanted = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16"];
    let have: Vec<&str> = wanted.iter().copied().filter(|f| flags.split_whitespace().any(|x| x == *f)).collect();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok());
    json!({
        "cpu": field("model name"),
        "flags": have,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": mem_kb.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "os": std::fs::read_to_string("/proc/version").ok().map(|v| v.trim().to_string()),
        "kernels_isa": isa,
        "inferneo_version": env!("CARGO_PKG_VERSION"),
        "rustc": env!("INFERNEO_RUSTC_VERSION"),
    })
}

/// Peak resident set of a process (`VmHWM`), in MB.
pub fn peak_rss_mb(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or("/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
