//! `--peers DIR`: the peers harness's results (`tools/peers/run_all.sh` writes them to
//! `target/peers/results/*.json`) read as chart lines beside this run's. A file that is not a
//! result, or a peer that could not be installed or run (`{"system": ..., "error": ...}`),
//! becomes a note under the charts, never a failure: one broken peer must not cost the others
//! their picture.

use super::figures::{self, Series};
use std::path::{Path, PathBuf};

/// compare.py's row order: ours first, then the offline peers, then the servers. Others follow
/// by name.
const ORDER: [&str; 9] =
    ["ours-f32", "ours-int8", "ours-w8a8", "hf", "ct2-f32", "ct2-int8", "llama-f32", "llama-f16", "llama-q8_0"];

#[derive(Debug, Default)]
pub struct Peers {
    pub series: Vec<Series>,
    /// One line per file left out and why.
    pub notes: Vec<String>,
}

/// Checks `--peers DIR` before anything is measured: it must be a directory holding at least
/// one `*.json`.
pub fn result_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let shown = dir.display();
    let entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("--peers {shown}: no such directory"),
        _ => format!("--peers {shown}: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    if files.is_empty() {
        return Err(format!("--peers {shown}: no result files (*.json) in it; tools/peers/run_all.sh writes them"));
    }
    files.sort_by_key(|p| {
        let stem = stem(p);
        (ORDER.iter().position(|o| *o == stem).unwrap_or(ORDER.len()), stem)
    });
    Ok(files)
}

fn stem(p: &Path) -> String {
    p.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}

/// Every result in `dir` (see [`result_files`] for what makes the directory itself an error).
pub fn load(dir: &Path) -> Result<Peers, String> {
    let mut peers = Peers::default();
    for path in result_files(dir)? {
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let doc = match std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|text| {
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| format!("not valid JSON: {e}"))
        }) {
            Ok(doc) => doc,
            Err(e) => {
                peers.notes.push(format!("Skipped {name}: {e}"));
                continue;
            }
        };
        peers.notes.extend(figures::failed_levels(&doc, &stem(&path), None));
        match figures::from_result(&doc, &stem(&path), None) {
            Ok(series) => peers.series.extend(series),
            Err(why) => peers.notes.push(format!("Not drawn: {why}")),
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small `inferneo bench --json` document: our server (local) or one at `--url`.
    fn bench_doc(local: bool, system: Option<&str>, tps: [f64; 3]) -> serde_json::Value {
        let level = |x: f64, t: f64, p50: f64| json!({"x": x, "succeeded": 10, "generated_tokens_per_s": t, "ttft": {"p50_ms": p50, "p99_ms": p50 * 2.0}});
        let mut d = json!({
            "target": {"local": local, "dtype": "f32", "model": "gpt2"},
            "workload": {"prompt_tokens": 50, "max_tokens": 100},
            "scenarios": {
                "concurrency": [level(1.0, tps[0], 50.0), level(4.0, tps[1], 120.0), level(16.0, tps[2], 700.0)],
                "batch": if local { json!([{"batch": 1, "generated_tokens_per_s": tps[0]},
                                            {"batch": 8, "generated_tokens_per_s": tps[2]}]) } else { json!(null) },
            },
        });
        if let Some(s) = system {
            d["system"] = json!(s);
        }
        d
    }

    fn offline_doc() -> serde_json::Value {
        json!({"system": "HF transformers (torch eager)", "dtype": "f32", "workload": {"new_tokens": 100},
               "latency": {"ttft_ms": 90.0, "itl_ms": 40.0},
               "batch": [{"batch": 1, "generated_tokens_per_s": 24.6}, {"batch": 4, "generated_tokens_per_s": 55.9}]})
    }

    /// Enough of an XML check for our SVG: one root `<svg>` element, every other tag closed in
    /// order, nothing after the root closes.
    fn assert_balanced_svg(svg: &str) {
        assert!(svg.trim_start().starts_with("<svg"), "starts with {:?}", &svg[..svg.len().min(40)]);
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg;
        let mut closed_root = false;
        while let Some(open) = rest.find('<') {
            assert!(!closed_root || rest[..open].trim().is_empty(), "content after </svg>");
            let end = open + rest[open..].find('>').expect("unterminated tag");
            let tag = &rest[open + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            let name = |t: &str| t.split(|c: char| c.is_whitespace() || c == '/').next().unwrap_or("").to_string();
            if let Some(closing) = tag.strip_prefix('/') {
                let top = stack.pop().unwrap_or_else(|| panic!("</{closing}> closes nothing"));
                assert_eq!(top, name(closing), "</{closing}> closes <{top}>");
                closed_root |= stack.is_empty();
            } else if !tag.ends_with('/') {
                stack.push(name(tag));
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        assert!(closed_root, "no </svg>");
    }

    #[test]
    fn the_balance_check_can_fail() {
        for bad in ["<svg><g></svg>", "<svg><text>x</g></svg>", "<g></g>", "<svg></svg><svg>"] {
            assert!(std::panic::catch_unwind(|| assert_balanced_svg(bad)).is_err(), "{bad} passed");
        }
        assert_balanced_svg("<svg a=\"1\"><g><rect/></g><text>a &lt; b</text></svg>\n");
    }

    #[test]
    fn a_chart_with_peers_has_every_systems_legend_and_is_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: &serde_json::Value| std::fs::write(dir.path().join(name), v.to_string()).unwrap();
        write("hf.json", &offline_doc());
        let mut llama = bench_doc(false, Some("llama.cpp llama-server q8_0"), [70.0, 130.0, 170.0]);
        // A level where every request failed: no point, a note instead.
        llama["scenarios"]["concurrency"][2]["succeeded"] = json!(0);
        llama["scenarios"]["concurrency"][2]["errors"] = json!({"unfinished": 16});
        write("llama-q8_0.json", &llama);
        let peers = load(dir.path()).unwrap();
        assert_eq!(
            peers.notes,
            [r#"llama.cpp llama-server q8_0: no point at 16 clients, every request failed ({"unfinished":16})"#]
        );
        assert_eq!(peers.series.iter().find(|s| s.label.starts_with("llama")).unwrap().points.len(), 2);
        // This run, as mod.rs builds it: its own JSON document.
        let mut series = figures::from_result(&bench_doc(true, None, [45.0, 140.0, 400.0]), "", None).unwrap();
        series.extend(peers.series);
        let charts = figures::charts(&series, &peers.notes).unwrap();
        let names: Vec<&str> = charts.iter().map(|c| c.0).collect();
        assert_eq!(names, ["throughput_vs_concurrency.svg", "tokens_vs_ttft.svg", "throughput_vs_batch.svg"]);
        let svg = |n: &str| &charts.iter().find(|c| c.0 == n).unwrap().1;
        for (chart, legends) in [
            (
                "throughput_vs_concurrency.svg",
                &["inferneo f32 (HTTP server)", "llama.cpp llama-server q8_0 (HTTP server)"][..],
            ),
            ("tokens_vs_ttft.svg", &["inferneo f32 (HTTP server)", "llama.cpp llama-server q8_0 (HTTP server)"][..]),
            (
                "throughput_vs_batch.svg",
                &["inferneo f32 (engine batch)", "HF transformers (torch eager) f32 (offline batch)"][..],
            ),
        ] {
            let text = svg(chart);
            assert_balanced_svg(text);
            for l in legends {
                assert!(
                    text.contains(&format!(">\n{l}\n<")) || text.contains(&format!(">{l}<")),
                    "{chart}: no legend {l}"
                );
            }
            // Modes never share a chart.
            let other = if chart == "throughput_vs_batch.svg" { "(HTTP server)" } else { "batch)" };
            assert!(!text.contains(other), "{chart} mixes modes");
        }
        // The log2 axis: ticks at 1, 2, 4, 8, 16 clients and not at 8.4 or 16.8.
        let ticks = |t: &str| -> Vec<String> {
            t.lines()
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[0].starts_with("<text") && w[0].contains("middle"))
                .map(|w| w[1].trim().to_string())
                .collect()
        };
        let x = ticks(svg("throughput_vs_concurrency.svg"));
        for want in ["1", "2", "4", "8", "16"] {
            assert!(x.iter().any(|t| t == want), "no x tick {want} in {x:?}");
        }
    }

    #[test]
    fn malformed_and_error_results_are_skipped_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(
            p.join("ct2-int8.json"),
            r#"{"system": "CTranslate2 int8", "error": "pip install ctranslate2 failed"}"#,
        )
        .unwrap();
        std::fs::write(p.join("llama-f32.json"), "{\"system\": \"llama.cpp\", \"scen").unwrap();
        std::fs::write(p.join("odd.json"), "[1, 2, 3]").unwrap();
        std::fs::write(p.join("hf.json"), offline_doc().to_string()).unwrap();
        std::fs::write(p.join("load.tsv"), "1 0.5 0.1\n").unwrap();
        let peers = load(p).unwrap();
        assert_eq!(peers.series.len(), 1, "only HF has figures");
        assert_eq!(peers.notes.len(), 3, "{:?}", peers.notes);
        assert!(
            peers.notes[0].contains("CTranslate2 int8: not available (pip install ctranslate2 failed)"),
            "{:?}",
            peers.notes
        );
        assert!(peers.notes[1].starts_with("Skipped llama-f32.json: not valid JSON"), "{:?}", peers.notes);
        assert!(peers.notes[2].contains("odd: no concurrency, throughput or batch figures"), "{:?}", peers.notes);
        // The notes are printed under the chart, where the missing line is looked for.
        let charts = figures::charts(&peers.series, &peers.notes).unwrap();
        assert_eq!(charts.len(), 1);
        assert!(charts[0].1.contains("CTranslate2 int8: not available"));
    }

    #[test]
    fn a_missing_or_empty_peers_directory_is_a_one_line_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = load(&missing).unwrap_err();
        assert!(e.starts_with("--peers ") && e.ends_with("no such directory") && !e.contains('\n'), "{e}");
        let e = load(dir.path()).unwrap_err();
        assert!(e.contains("no result files"), "{e}");
    }
}
