//! Peak resident memory of a whole `inferneo generate` run, load included, on the GPT-2 124M
//! shape: what a memory limit meets. `VmHWM` is the kernel's high-water mark of the process's
//! resident set, so it does not depend on timing and holds on a shared machine. The binary
//! reports it on its last line (`peak resident N MB`, MB = 10^6 bytes).
//!
//! Bounds: f32 within 100 MB of the checkpoint's size; int8 and w8a8 (from the f32
//! checkpoint or from a converted directory) within 200 MB. Before weights were packed a slice at
//! a time, loading f32 peaked at 756 MB and int8 at 345 MB.

mod common;

use common::{init, ok};

fn peak_mb(model: &str, dtype: Option<&str>) -> f64 {
    let mut args = vec!["generate", "--model", model, "--prompt", "Hello", "--max-tokens", "1"];
    if let Some(d) = dtype {
        args.extend(["--dtype", d]);
    }
    let (_, err) = ok(&args);
    let line = err.lines().find(|l| l.contains("peak resident")).unwrap_or_else(|| panic!("no peak in: {err}"));
    let mb = line.split("peak resident ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|v| v.parse().ok());
    mb.unwrap_or_else(|| panic!("cannot read the peak in '{line}'"))
}

#[test]
fn peak_memory_of_a_124m_run_stays_within_its_bounds() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("NOTICE: no /proc/self/status (not Linux): peak memory not measured");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = init(tmp.path(), "gpt2", "g124");
    let weights_mb = std::fs::metadata(format!("{src}/model.safetensors")).unwrap().len() as f64 / 1e6;
    let converted = tmp.path().join("g124-int8");
    ok(&["convert", "--model", &src, "--dtype", "int8", "--out", converted.to_str().unwrap()]);
    let runs = [
        ("f32", src.as_str(), Some("f32"), weights_mb + 100.0),
        ("int8", &src, Some("int8"), 200.0),
        ("w8a8", &src, Some("w8a8"), 200.0),
        ("converted int8", converted.to_str().unwrap(), None, 200.0),
    ];
    let mut over = Vec::new();
    for (label, model, dtype, bound) in runs {
        let peak = peak_mb(model, dtype);
        eprintln!("{label}: peak resident {peak:.0} MB (bound {bound:.0} MB)");
        if peak > bound {
            over.push(format!("{label}: {peak:.0} MB > {bound:.0} MB"));
        }
    }
    assert!(over.is_empty(), "peak resident memory over its bound: {}", over.join("; "));
}
