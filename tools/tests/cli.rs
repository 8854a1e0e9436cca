//! The `inferneo` binary end to end: every subcommand, and one-line errors for bad input.

use inferneo_kernels::{Isa, Kernels, Layout, Panels, WeightDtype};
use std::path::Path;
use std::process::Command;

mod common;
use common::fails;

/// Runs `inferneo args`, which must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    common::ok(args).0
}

fn tiny(dir: &Path) -> String {
    common::init(dir, "tiny", "tiny")
}

/// Parses a little-endian f32 `.npy` written by `inferneo logits`.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0, "header not 64-byte aligned");
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_txt = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_txt.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let data = b[10 + hlen..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (shape, data)
}

#[test]
fn help_on_every_subcommand() {
    for sub in ["logits", "generate", "tokenize", "detokenize", "init", "roofline", "throughput"] {
        let text = ok(&[sub, "--help"]);
        assert!(text.contains("Usage: inferneo"), "{sub} --help: {text}");
    }
    let top = ok(&["--help"]);
    assert!(
        top.contains("random") && top.contains("not meaningful"),
        "top-level help must say the default is random: {top}"
    );
}

#[test]
fn init_logits_generate_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path());
    for f in ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"] {
        assert!(Path::new(&model).join(f).exists(), "init did not write {f}");
    }
    let npy = tmp.path().join("l.npy");
    ok(&["logits", "--model", &model, "--tokens", "464,2068,7586", "--out", npy.to_str().unwrap()]);
    let (shape, data) = read_npy(&npy);
    assert_eq!(shape, vec![3, 50257]);
    assert!(data.iter().all(|v| v.is_finite()));
    // The same positions through --prompt (which tokenizes to the same ids) give the same bytes.
    assert_eq!(ok(&["tokenize", "--model", &model, "The quick brown"]).trim(), "464,2068,7586");
    let npy2 = tmp.path().join("l2.npy");
    ok(&["logits", "--model", &model, "--prompt", "The quick brown", "--out", npy2.to_str().unwrap()]);
    assert_eq!(std::fs::read(&npy).unwrap(), std::fs::read(&npy2).unwrap());

    let greedy = ok(&["generate", "--model", &model, "--tokens", "464,2068", "--max-tokens", "8", "--ids"]);
    assert_eq!(greedy.trim().split(',').count(), 8);
    // The first greedy token is the argmax of the last logits row.
    let (_, two) = {
        let p = tmp.path().join("two.npy");
        ok(&["logits", "--model", &model, "--tokens", "464,2068", "--out", p.to_str().unwrap()]);
        read_npy(&p)
    };
    let last = &two[50257..];
    let argmax = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
    assert_eq!(greedy.trim().split(',').next().unwrap(), argmax.to_string());

    let sample = |seed: &str| {
        ok(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "Hi",
            "--max-tokens",
            "12",
            "--temperature",
            "0.9",
            "--top-p",
            "0.9",
            "--top-k",
            "50",
            "--seed",
            seed,
            "--ids",
        ])
    };
    assert_eq!(sample("5"), sample("5"));
    assert_ne!(sample("5"), sample("6"));
    let text = ok(&["generate", "--model", &model, "--prompt", "Hello", "--max-tokens", "5"]);
    assert!(!text.trim().is_empty());
}

#[test]
fn tokenize_and_detokenize_with_embedded_tokenizer() {
    assert_eq!(ok(&["tokenize", "Hello, world!"]).trim(), "15496,11,995,0");
    assert_eq!(ok(&["detokenize", "15496,11,995,0"]).trim_end_matches('\n'), "Hello, world!");
}

#[test]
fn directory_without_tokenizer_works_with_token_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path());
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        std::fs::remove_file(Path::new(&model).join(f)).unwrap();
    }
    let out = ok(&["generate", "--model", &model, "--tokens", "1,2,3", "--max-tokens", "4"]);
    assert_eq!(out.trim().split(',').count(), 4, "without a tokenizer, ids are printed: {out}");
    fails(&["generate", "--model", &model, "--prompt", "hi"], "no tokenizer files");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path());
    let out = tmp.path().join("x.npy");
    let out = out.to_str().unwrap();
    fails(&["generate", "--bogus"], "unexpected argument");
    fails(&["logits", "--model", &model, "--tokens", "1,x,3", "--out", out], "'x' is not a token id");
    fails(&["logits", "--model", &model, "--tokens", "99999", "--out", out], "outside the vocabulary");
    fails(&["generate", "--model", &model, "--tokens", "1,2", "--max-tokens", "200"], "context length exceeded");
    fails(&["generate", "--model", &model, "--tokens", "1", "--temperature", "-1"], "temperature");
    fails(&["generate", "--model", &model, "--tokens", "1", "--top-p", "0"], "top_p");
    fails(&["generate", "--model", "/nonexistent/dir", "--tokens", "1"], "config.json");
    fails(&["init", "--preset", "gpt5", "--out", out], "unknown preset");
    fails(&["detokenize", "70000"], "outside the vocabulary");
    fails(&["generate", "--isa", "avx9000", "--tokens", "1"], "unknown ISA");
    // Missing or malformed arguments are named.
    fails(&["logits", "--tokens", "1,2"], "--out");
    fails(&["init", "--out", out], "--preset");
    fails(&["generate", "--tokens", "1", "--dtype", "int3"], "--dtype");
    fails(&["throughput", "--kv-dtype", "f8"], "--kv-dtype");
}

/// `--isa` reaches every kernel the command runs, sampling included. The process-wide table
/// follows `INFERNEO_ISA`; set to a name no CPU has, it fails any command that reads it (shown
/// first). With `--isa` given, the same command succeeds, so nothing consulted that table, and
/// the load note names the kernels that ran.
#[test]
fn forced_isa_reaches_every_kernel_and_gives_the_same_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path());
    // Sampled (top-k, top-p: the sampler's SIMD max and exp) and greedy.
    let sampled = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.9", "--seed", "5"];
    for extra in [&[][..], &sampled[..]] {
        let mut args = vec!["generate", "--model", &model, "--tokens", "464,2068,7586", "--max-tokens", "10", "--ids"];
        args.extend(extra);
        let auto = ok(&args);
        let run = |env_isa: &str, flag: Option<&str>| {
            let mut a = args.clone();
            if let Some(isa) = flag {
                a.extend(["--isa", isa]);
            }
            Command::new(env!("CARGO_BIN_EXE_inferneo")).args(&a).env("INFERNEO_ISA", env_isa).output().unwrap()
        };
        let unread = run("no-such-isa", None);
        assert!(!unread.status.success(), "INFERNEO_ISA=no-such-isa must fail a command that reads it");
        for isa in Isa::ALL.into_iter().filter(|i| i.available()) {
            let out = run("no-such-isa", Some(isa.name()));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "--isa {isa} read the process-wide table: {err}");
            assert!(err.contains(&format!("kernels {isa},")), "--isa {isa}: the load note names other kernels: {err}");
            // Greedy tokens agree across ISAs. Sampled ones need not: each ISA's `exp` rounds
            // differently, which can move a top-p boundary.
            if extra.is_empty() {
                assert_eq!(String::from_utf8_lossy(&out.stdout), auto, "--isa {isa}");
            }
        }
    }
}

#[test]
fn roofline_json_has_every_figure() {
    let out = ok(&["roofline", "--quick", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("roofline --json prints JSON");
    for key in [
        "isa",
        "threads",
        "cpu",
        "read_bandwidth_gbps",
        "fma_peak_gflops",
        "int_dot_peak_gops",
        "fork_join_us",
        "kernels",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert!(v["read_bandwidth_gbps"].as_f64().unwrap() > 0.1 && v["fma_peak_gflops"].as_f64().unwrap() > 0.1);
    // One thread per physical core unless RAYON_NUM_THREADS says otherwise.
    let threads =
        std::env::var("RAYON_NUM_THREADS").map_or(inferneo_kernels::default_threads(), |v| v.parse().unwrap());
    assert_eq!(v["threads"], threads);
    assert!(v["int_dot_peak_gops"].as_f64().unwrap() > 0.1 && v["int_dot_instruction"].is_string());
    assert!(v["bf16_dot_peak_gflops"].as_f64().unwrap() > 0.1 && v["bf16_dot_instruction"].is_string());
    let rows = v["kernels"].as_array().unwrap();
    // int8 and w8a8 are measured at every M, like f32; w8a8 against the integer-dot peak, int8
    // against the FMA peak or, on the integer dot, a third of its peak.
    assert!(rows.iter().any(|r| r["dtype"] == "int8" && r["m"] == 32));
    assert!(rows.iter().any(|r| r["dtype"] == "w8a8" && r["m"] == 32));
    assert!(rows.iter().any(|r| r["dtype"] == "bf16dot" && r["m"] == 32));
    assert!(rows.iter().any(|r| r["dtype"] == "w4a8" && r["m"] == 32));
    let int8_roof =
        if Isa::from_env().ok().and_then(Kernels::for_isa).is_some_and(|k| {
            matches!(k.pack(&[0.0], Layout::KN, 1, 1, WeightDtype::Int8).panels(), Panels::IntDot { .. })
        }) {
            "int_dot_3_digits"
        } else {
            "fma"
        };
    for r in rows {
        let roof = match r["dtype"].as_str().unwrap() {
            "w8a8" | "w4a8" => "int_dot",
            "int8" => int8_roof,
            "bf16dot" => "bf16_dot",
            _ => "fma",
        };
        assert_eq!(r["compute_roof"], roof, "{r}");
        assert!(r["gflops"].as_f64().unwrap() > 0.0 && r["fraction_of_roofline"].as_f64().unwrap() > 0.0, "{r}");
        let streamed = r["streamed_gbps"].as_f64();
        assert_eq!(streamed.is_some(), r["m"].as_u64().unwrap() <= 32, "streamed figures at decode sizes only: {r}");
        assert!(streamed.is_none_or(|g| g > 0.0), "{r}");
    }
}

#[test]
fn roofline_rounds_and_the_sgemm_subset() {
    // Two rounds: each figure is the best of both, and each round's roofs are listed.
    let out = ok(&["roofline", "--quick", "--sgemm", "--rounds", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("roofline --json prints JSON");
    assert_eq!(v["rounds"], 2);
    assert_eq!(v["per_round"]["read_bandwidth_gbps"].as_array().unwrap().len(), 2);
    let best = v["per_round"]["fma_peak_gflops"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap());
    assert_eq!(best.fold(0.0, f64::max), v["fma_peak_gflops"].as_f64().unwrap());
    // --sgemm: the f32 products numpy is compared with (M >= 32; --quick stops at 32), in cache.
    let rows = v["kernels"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "one row per shape: {rows:?}");
    for r in rows {
        assert!(r["dtype"] == "f32" && r["m"] == 32 && r["streamed_seconds"].is_null(), "{r}");
    }
    fails(&["roofline", "--quick", "--rounds", "0"], "at least 1");
}

#[test]
fn roofline_at_a_presets_shapes() {
    // Default: the 124M shapes, and a decode step summed over its layers for every dtype.
    let v: serde_json::Value = serde_json::from_str(&ok(&["roofline", "--quick", "--json"])).unwrap();
    assert_eq!((v["preset"].as_str(), v["n_layer"].as_u64()), (Some("gpt2"), Some(12)));
    let steps = v["decode_step"].as_array().unwrap();
    assert_eq!(steps.len(), WeightDtype::ALL.len(), "{steps:?}");
    for s in steps {
        assert!(s["streamed_ms"].as_f64().unwrap() > 0.0 && s["bandwidth_bound_ms"].as_f64().unwrap() > 0.0, "{s}");
    }
    // Another preset: its widths set K and N (tiny: 64 wide, MLP 256, the GPT-2 vocabulary).
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("r.json");
    let table = ok(&["roofline", "--quick", "--sgemm", "--preset", "tiny", "--json-file", file.to_str().unwrap()]);
    assert!(table.contains("Shapes of tiny (2 layers x 64 wide)"), "{table}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let kn: Vec<(u64, u64)> =
        v["kernels"].as_array().unwrap().iter().map(|r| (r["k"].as_u64().unwrap(), r["n"].as_u64().unwrap())).collect();
    assert_eq!(kn, [(64, 192), (64, 64), (64, 256), (256, 64), (64, 50257)]);
    fails(&["roofline", "--quick", "--preset", "gpt2-xxl"], "--preset: unknown preset 'gpt2-xxl'");
}

#[test]
fn throughput_runs_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny(tmp.path());
    let args = ["throughput", "--model", &model, "--concurrency", "1,3", "--prompt-tokens", "5", "--max-tokens", "4"];
    let mut twice = args.to_vec();
    twice.extend(["--rounds", "2"]);
    let out = ok(&twice);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| 1 |") || l.starts_with("| 3 |")).collect();
    assert_eq!(rows.len(), 2, "{out}");
    for row in rows {
        // The last column lists both rounds' tok/s; the row is the faster one.
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let each: Vec<f64> = cells[6].split(" / ").map(|v| v.parse().unwrap()).collect();
        assert_eq!(each.len(), 2, "{row}");
        assert_eq!(format!("{:.1}", each.iter().cloned().fold(0.0, f64::max)), cells[1], "{row}");
    }
    fails(&["throughput", "--model", &model, "--concurrency", "0"], "positive integers");
    let mut zero = args.to_vec();
    zero.extend(["--rounds", "0"]);
    fails(&zero, "at least 1");
}

/// A llama.cpp GGUF file works wherever a directory does: the f32 conversion of hub-micro gives
/// the directory's logits byte for byte, and its tokenizer comes from the file's metadata.
#[test]
fn gguf_file_as_model() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
    let (gguf, dir) = (data.join("hub-micro-f32.gguf"), data.join("hub-micro"));
    let tmp = tempfile::tempdir().unwrap();
    let logits = |model: &Path, out: &str| {
        let out = tmp.path().join(out);
        ok(&["logits", "--model", model.to_str().unwrap(), "--tokens", "5,17,999,3", "--out", out.to_str().unwrap()]);
        std::fs::read(out).unwrap()
    };
    assert_eq!(logits(&gguf, "gguf.npy"), logits(&dir, "dir.npy"));
    let g = gguf.to_str().unwrap();
    // Id 0 is GPT-2's "!" and 999 `<|endoftext|>` in the fixture's cut vocabulary.
    assert_eq!(ok(&["tokenize", "--model", g, "!<|endoftext|>"]).trim(), "0,999");
    let ids = ok(&["generate", "--model", g, "--tokens", "1,2,3", "--max-tokens", "4", "--ids"]);
    assert_eq!(ids.trim().split(',').count(), 4, "{ids}");
    let not_gguf = tmp.path().join("x.gguf");
    std::fs::write(&not_gguf, b"PK\x03\x04 a zip file").unwrap();
    fails(&["generate", "--model", not_gguf.to_str().unwrap(), "--tokens", "1"], "wrong magic");
}
