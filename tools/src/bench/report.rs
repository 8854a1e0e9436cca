//! The report: Markdown tables on stdout, the JSON document, SVG line charts.

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

/// A line chart: `series` of (name, points) over shared axes.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 400.0, 70.0, 150.0, 40.0, 50.0);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let x_max = pts.clone().map(|p| p.0).fold(0.0f64, f64::max).max(1e-9) * 1.05;
    let y_max = pts.map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let sx = |x: f64| left + x / x_max * (w - left - right);
    let sy = |y: f64| h - bottom - y / y_max * (h - top - bottom);
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#, w / 2.0, esc(title));
    let (x0, y0, x1, y1) = (left, h - bottom, w - right, top);
    let _ = writeln!(s, r#"<path d="M{x0},{y1} L{x0},{y0} L{x1},{y0}" stroke="black" fill="none"/>"#);
    for i in 0..=4 {
        let (fx, fy) = (x_max * i as f64 / 4.0, y_max * i as f64 / 4.0);
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, sx(fx), y0 + 16.0, num(fx));
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, x0 - 6.0, sy(fy) + 4.0, num(fy));
        let _ = writeln!(s, r##"<path d="M{x0},{0} L{x1},{0}" stroke="#ddd"/>"##, sy(fy));
    }
    let _ =
        writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, (x0 + x1) / 2.0, h - 12.0, esc(x_label));
    let _ = writeln!(
        s,
        r#"<text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (y0 + y1) / 2.0,
        esc(y_label)
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let d: Vec<String> = points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#, d.join(" "));
        for &(x, y) in points {
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#, sx(x), sy(y));
        }
        let ly = top + 10.0 + 18.0 * i as f64;
        let _ = writeln!(s, r#"<rect x="{}" y="{}" width="12" height="3" fill="{c}"/>"#, x1 + 12.0, ly - 4.0);
        let _ = writeln!(s, r#"<text x="{}" y="{ly}">{}</text>"#, x1 + 30.0, esc(name));
    }
    s.push_str("</svg>\n");
    s
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
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
