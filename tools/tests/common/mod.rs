//! Running the built `inferneo` binary, for the tests that drive it end to end.
#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::process::{Command, Output};

pub fn inferneo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inferneo")).args(args).output().expect("run inferneo")
}

/// Runs `inferneo args`, which must succeed; its stdout and stderr.
pub fn ok(args: &[&str]) -> (String, String) {
    let out = inferneo(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "inferneo {args:?} failed: {err}");
    (String::from_utf8(out.stdout).unwrap(), err)
}

/// Fails with a non-zero exit and a single-line message on stderr containing `needle`.
pub fn fails(args: &[&str], needle: &str) {
    let out = inferneo(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "inferneo {args:?} should fail");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "inferneo {args:?}: expected a one-line error, got: {err}");
    assert!(lines[0].contains(needle), "inferneo {args:?}: '{}' does not mention '{needle}'", lines[0]);
}

/// `inferneo init --preset PRESET` into `dir/name`; the directory's path.
pub fn init(dir: &Path, preset: &str, name: &str) -> String {
    let d = dir.join(name);
    ok(&["init", "--preset", preset, "--seed", "3", "--out", d.to_str().unwrap()]);
    d.to_str().unwrap().to_string()
}

/// The `__metadata__` and the tensors' (name, dtype) of a safetensors file, from its header.
pub fn safetensors_header(path: &Path) -> (serde_json::Value, Vec<(String, String)>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let map = header.as_object().unwrap();
    let tensors = map
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| (k.clone(), v["dtype"].as_str().unwrap().to_string()))
        .collect();
    (map.get("__metadata__").cloned().unwrap_or_default(), tensors)
}
