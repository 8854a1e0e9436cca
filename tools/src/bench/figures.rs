//! What the charts show: each system's measured points, read from result JSON (`inferneo
//! bench --json` documents, this run's included, and the peers harness's offline results),
//! and which chart each line belongs on. A chart never mixes modes: HTTP serving (closed-loop
//! clients streaming from a server) and offline batches (N prompts in one call, no HTTP) are
//! different measurements, so each gets its own chart and the mode is in every label.

use super::chart::{self, Line, Panel, XScale};
use serde_json::Value;
use std::path::Path;

/// How a system was driven.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// N closed-loop HTTP clients streaming from a server (`inferneo bench`'s concurrency).
    Http,
    /// N prompts generated together in-process, no HTTP (our engine, HF, CTranslate2).
    Batch,
    /// Poisson arrivals at an offered request rate over HTTP (`inferneo bench`'s throughput
    /// scenario): x is the offered rate, and the latency percentiles are what it cost.
    Open,
}

/// One load level: clients or batch size, and what it gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub tokens_per_s: f64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    /// Request latency p50, p95, p99 (ms); the open-loop levels only.
    pub latency_ms: Option<[f64; 3]>,
}

/// One system in one mode: one line on a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub label: String,
    pub ours: bool,
    pub mode: Mode,
    /// Generated tokens per request; labels say it when systems on a chart differ.
    pub new_tokens: Option<u64>,
    pub points: Vec<Point>,
}

/// The series in one result document. `name` replaces the system's name (this run, when
/// drawn beside the peers' copy of ours); `stem` names a system whose JSON does not.
/// `Err` says why there is nothing to draw (an error result, or no figures).
pub fn from_result(doc: &Value, stem: &str, name: Option<&str>) -> Result<Vec<Series>, String> {
    let system = doc.get("system").and_then(Value::as_str);
    if let Some(e) = doc.get("error").filter(|e| !e.is_null()) {
        let why = e.as_str().map_or_else(|| e.to_string(), str::to_string);
        return Err(format!("{}: not available ({why})", system.unwrap_or(stem)));
    }
    let series = if let Some(s) = doc.get("scenarios") {
        bench_series(doc, s, stem, name)
    } else if let Some(rows) = doc.get("batch").and_then(Value::as_array) {
        offline_series(doc, rows, stem, name)
    } else {
        Vec::new()
    };
    if series.is_empty() {
        return Err(format!("{}: no concurrency, throughput or batch figures in it", system.unwrap_or(stem)));
    }
    Ok(series)
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

/// A bench document's system: `name`, else its `system` (set by the peers harness), else
/// "inferneo DTYPE" for our own server, else the model it was sent to.
fn bench_system(doc: &Value, stem: &str, name: Option<&str>) -> String {
    let target = doc.get("target").cloned().unwrap_or(Value::Null);
    let ours = target.get("local").and_then(Value::as_bool).unwrap_or(false);
    let dtype = doc.get("dtype").or(target.get("dtype")).and_then(Value::as_str).unwrap_or("?");
    match (name, doc.get("system").and_then(Value::as_str)) {
        (Some(n), _) | (None, Some(n)) => n.to_string(),
        (None, None) if ours => format!("inferneo {dtype}"),
        (None, None) => target.get("model").and_then(Value::as_str).unwrap_or(stem).to_string(),
    }
}

/// The load levels of a bench document that have no point because every request failed, one
/// note each: a line that stops short, or is missing, says why under the chart.
pub fn failed_levels(doc: &Value, stem: &str, name: Option<&str>) -> Vec<String> {
    let mut notes = Vec::new();
    for (scenario, unit) in [("concurrency", "clients"), ("throughput", "req/s")] {
        let levels = doc.pointer(&format!("/scenarios/{scenario}")).and_then(Value::as_array);
        for l in levels.map_or(&[][..], |v| &v[..]) {
            if l.get("succeeded").and_then(Value::as_u64) == Some(0) {
                let x = num(l, "target_rps").or(num(l, "x")).unwrap_or(f64::NAN);
                let errors = l.get("errors").map_or_else(String::new, |e| format!(" ({e})"));
                let system = bench_system(doc, stem, name);
                notes.push(format!("{system}: no point at {x} {unit}, every request failed{errors}"));
            }
        }
    }
    notes
}

/// `inferneo bench --json`: an HTTP line from the concurrency scenario, and for our own
/// server (local) an engine-batch line from the batch scenario.
fn bench_series(doc: &Value, scenarios: &Value, stem: &str, name: Option<&str>) -> Vec<Series> {
    let ours = doc.pointer("/target/local").and_then(Value::as_bool).unwrap_or(false);
    let system = bench_system(doc, stem, name);
    let new_tokens = doc.pointer("/workload/max_tokens").and_then(Value::as_u64);
    let mut out = Vec::new();
    let levels = scenarios.get("concurrency").and_then(Value::as_array).map_or(&[][..], |v| &v[..]);
    // A level where every request failed measured nothing (compare.py leaves its cell empty).
    let http: Vec<Point> = levels
        .iter()
        .filter(|l| l.get("succeeded").and_then(Value::as_u64) != Some(0))
        .filter_map(|l| {
            Some(Point {
                x: num(l, "x")?,
                tokens_per_s: num(l, "generated_tokens_per_s")?,
                ttft_p50_ms: l.get("ttft").and_then(|t| num(t, "p50_ms")),
                ttft_p99_ms: l.get("ttft").and_then(|t| num(t, "p99_ms")),
                latency_ms: None,
            })
        })
        .collect();
    if !http.is_empty() {
        let label = format!("{system} (HTTP server)");
        out.push(Series { label, ours, mode: Mode::Http, new_tokens, points: http });
    }
    let levels = scenarios.get("throughput").and_then(Value::as_array).map_or(&[][..], |v| &v[..]);
    let open: Vec<Point> = levels
        .iter()
        .filter_map(|l| {
            let lat = l.get("latency")?;
            Some(Point {
                x: num(l, "target_rps").or(num(l, "x"))?,
                tokens_per_s: num(l, "generated_tokens_per_s")?,
                ttft_p50_ms: None,
                ttft_p99_ms: None,
                latency_ms: Some([num(lat, "p50_ms")?, num(lat, "p95_ms")?, num(lat, "p99_ms")?]),
            })
        })
        .collect();
    if !open.is_empty() {
        let label = format!("{system} (HTTP server)");
        out.push(Series { label, ours, mode: Mode::Open, new_tokens, points: open });
    }
    let rows = scenarios.get("batch").and_then(Value::as_array).map_or(&[][..], |v| &v[..]);
    let batch = batch_points(rows, Some("p50_ttft_ms"));
    if !batch.is_empty() {
        let label = format!("{system} (engine batch)");
        out.push(Series { label, ours, mode: Mode::Batch, new_tokens, points: batch });
    }
    out
}

/// The peers harness's offline runners (`hf_peer.py`, `ct2_peer.py`).
fn offline_series(doc: &Value, rows: &[Value], stem: &str, name: Option<&str>) -> Vec<Series> {
    let system = name.or(doc.get("system").and_then(Value::as_str)).unwrap_or(stem);
    // "HF transformers (torch eager)" does not say its precision; CTranslate2's names do.
    let label = match doc.get("dtype").and_then(Value::as_str) {
        Some(d) if !system.contains(d) => format!("{system} {d} (offline batch)"),
        _ => format!("{system} (offline batch)"),
    };
    let new_tokens = doc.pointer("/workload/new_tokens").and_then(Value::as_u64);
    // These runners time a whole `generate`; they have no first-token time per batch.
    let points = batch_points(rows, None);
    if points.is_empty() {
        return Vec::new();
    }
    vec![Series { label, ours: false, mode: Mode::Batch, new_tokens, points }]
}

fn batch_points(rows: &[Value], ttft_key: Option<&str>) -> Vec<Point> {
    rows.iter()
        .filter_map(|r| {
            Some(Point {
                x: num(r, "batch")?,
                tokens_per_s: num(r, "generated_tokens_per_s")?,
                ttft_p50_ms: ttft_key.and_then(|k| num(r, k)),
                ttft_p99_ms: None,
                latency_ms: None,
            })
        })
        .collect()
}

/// The charts `series` give, as (file name, SVG): throughput vs clients, tokens/s against
/// TTFT, throughput vs batch size, latency vs offered load. `notes` (systems that are not available,
/// files that were skipped) go under every chart, so an absent line is explained where it is
/// missed. A chart with no line is not drawn.
pub fn charts(series: &[Series], notes: &[String]) -> Result<Vec<(&'static str, String)>, String> {
    let mut out = Vec::new();
    let http: Vec<&Series> = series.iter().filter(|s| s.mode == Mode::Http).collect();
    let batch: Vec<&Series> = series.iter().filter(|s| s.mode == Mode::Batch).collect();
    let tail = |lines: Vec<String>| lines.into_iter().chain(notes.iter().map(|n| shorten(n, 150))).collect::<Vec<_>>();
    if !http.is_empty() {
        let caption = tail(vec![
            "HTTP: N closed-loop clients, each streaming its next request as soon as the last one ended;".into(),
            "every system measured by the same client (inferneo bench) on this machine.".into(),
            workload(&http),
        ]);
        let panel = Panel {
            x_desc: "concurrent clients".into(),
            y_desc: "generated tokens/s".into(),
            x_scale: XScale::Log2,
            lines: lines(&http, |p| Some((p.x, p.tokens_per_s))),
        };
        let title = "Serving over HTTP: throughput vs concurrent clients";
        out.push(("throughput_vs_concurrency.svg", chart::draw(title, &[panel], &caption)?));

        let panel = |desc: &str, ttft: fn(&Point) -> Option<f64>| Panel {
            x_desc: format!("{desc} time to first token (ms)"),
            y_desc: "generated tokens/s".into(),
            x_scale: XScale::Linear,
            lines: lines(&http, |p| Some((ttft(p)?, p.tokens_per_s))),
        };
        let mut levels: Vec<f64> = http.iter().flat_map(|s| s.points.iter().map(|p| p.x)).collect();
        levels.sort_by(f64::total_cmp);
        levels.dedup();
        let levels: Vec<String> = levels.iter().map(f64::to_string).collect();
        let caption = tail(vec![
            format!(
                "Each point is one load level ({} concurrent clients); load rises along each line.",
                levels.join(", ")
            ),
            "Up and to the left is better: more tokens/s for a shorter wait before the first token.".into(),
            workload(&http),
        ]);
        let panels = [panel("p50", |p| p.ttft_p50_ms), panel("p99", |p| p.ttft_p99_ms)];
        let title = "Serving over HTTP: throughput against time to first token as load rises";
        out.push(("tokens_vs_ttft.svg", chart::draw(title, &panels, &caption)?));
    }
    if !batch.is_empty() {
        let caption = tail(vec![
            "Offline: N prompts generated together in-process, no HTTP (inferneo's engine, HF generate,".into(),
            "CTranslate2 generate_batch); tokens/s = generated tokens / wall time of the whole batch.".into(),
            workload(&batch),
        ]);
        let panel = Panel {
            x_desc: "batch size (prompts generated together)".into(),
            y_desc: "generated tokens/s".into(),
            x_scale: XScale::Log2,
            lines: lines(&batch, |p| Some((p.x, p.tokens_per_s))),
        };
        let title = "Offline batch generation: throughput vs batch size";
        out.push(("throughput_vs_batch.svg", chart::draw(title, &[panel], &caption)?));
    }
    let open: Vec<&Series> = series.iter().filter(|s| s.mode == Mode::Open).collect();
    if !open.is_empty() {
        // One line per percentile of each system; the system's name only when there are several.
        let mut lines = Vec::new();
        for s in &open {
            for (i, pct) in ["p50", "p95", "p99"].iter().enumerate() {
                let label = if open.len() == 1 { pct.to_string() } else { format!("{} {pct}", s.label) };
                let points = s.points.iter().filter_map(|p| Some((p.x, p.latency_ms?[i] / 1e3))).collect();
                lines.push(Line { label, ours: s.ours, points });
            }
        }
        let panel = Panel {
            x_desc: "offered load (requests/s, Poisson arrivals)".into(),
            y_desc: "request latency (s)".into(),
            x_scale: XScale::Linear,
            lines,
        };
        let caption = tail(vec![
            "Open loop: requests arrive at the offered rate whatever the server's pace; past capacity".into(),
            "the backlog shows as latency (and, after the bench's --drain seconds, as unfinished requests).".into(),
        ]);
        let title = "Serving over HTTP: request latency vs offered load";
        out.push(("latency_vs_load.svg", chart::draw(title, &[panel], &caption)?));
    }
    Ok(out)
}

/// One line per series; labels get "[N new tokens]" when the series on a chart disagree on it
/// (a quick peers run generates 20 tokens in HF and CTranslate2, 100 in inferneo).
fn lines(series: &[&Series], point: impl Fn(&Point) -> Option<(f64, f64)>) -> Vec<Line> {
    let differ = series.windows(2).any(|w| w[0].new_tokens != w[1].new_tokens);
    series
        .iter()
        .map(|s| Line {
            label: match (differ, s.new_tokens) {
                (true, Some(n)) => format!("{} [{n} new tokens]", s.label),
                _ => s.label.clone(),
            },
            ours: s.ours,
            points: s.points.iter().filter_map(&point).collect(),
        })
        .collect()
}

fn workload(series: &[&Series]) -> String {
    let mut counts: Vec<u64> = series.iter().filter_map(|s| s.new_tokens).collect();
    counts.sort_unstable();
    counts.dedup();
    let counts: Vec<String> = counts.iter().map(u64::to_string).collect();
    match counts.len() {
        0 => "Solid lines with dots: inferneo; dashed with triangles: peers.".into(),
        _ => format!(
            "{} generated tokens per request. Solid lines with dots: inferneo; dashed with triangles: peers.",
            counts.join(" or ")
        ),
    }
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max - 1).collect();
    format!("{cut}…")
}

/// Writes the charts into `dir` and returns their paths.
pub fn write(dir: &Path, series: &[Series], notes: &[String]) -> Result<Vec<std::path::PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--svg {}: {e}", dir.display()))?;
    let mut paths = Vec::new();
    for (name, svg) in charts(series, notes)? {
        let path = dir.join(name);
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
        paths.push(path);
    }
    Ok(paths)
}
