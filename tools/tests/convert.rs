//! `inferneo convert`: a converted directory loads as it is, serves its dtype, gives the logits
//! of its source loaded with that dtype bit for bit, and bad arguments are one-line errors.

mod common;

use common::{fails, init, ok, safetensors_header};
use std::path::Path;

/// `inferneo logits` of a fixed prompt, as raw .npy bytes.
fn logits(model: &str, dtype: Option<&str>, out: &Path) -> Vec<u8> {
    let out_s = out.to_str().unwrap();
    let mut args = vec!["logits", "--model", model, "--tokens", "464,2068,7586,21831,11687,625", "--out", out_s];
    if let Some(d) = dtype {
        args.extend(["--dtype", d]);
    }
    ok(&args);
    std::fs::read(out).unwrap()
}

#[test]
fn converted_logits_equal_the_source_loaded_with_that_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let src = init(tmp.path(), "tiny", "src");
    let npy = tmp.path().join("l.npy");
    for dtype in ["int8", "w8a8", "w4a8"] {
        let out = tmp.path().join(format!("tiny-{dtype}"));
        let out_s = out.to_str().unwrap();
        ok(&["convert", "--model", &src, "--dtype", dtype, "--out", out_s]);
        for f in ["config.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"] {
            assert!(out.join(f).is_file(), "convert did not copy {f}");
        }
        assert!(!out.join("model.safetensors.partial").exists());

        // The file says what it holds, and holds no f32 copy of any matrix: a load that read
        // one would fail on a missing tensor.
        let (meta, tensors) = safetensors_header(&out.join("model.safetensors"));
        assert_eq!(meta["format"], "inferneo");
        assert_eq!(meta["inferneo.dtype"], dtype);
        assert_eq!(meta["inferneo.version"], "1");
        let dtype_of = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, d)| d.as_str());
        let (values, stored) = if dtype == "w4a8" { ("q4", "U8") } else { ("q8", "I8") };
        for m in ["wte.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_proj.weight"] {
            assert_eq!(dtype_of(m), None, "{m} kept as f32");
            assert_eq!(dtype_of(&format!("{m}.{values}")), Some(stored), "{m}.{values}");
            assert_eq!(dtype_of(&format!("{m}.scale")), Some("F32"), "{m}.scale");
        }
        assert_eq!(dtype_of("h.0.ln_1.weight"), Some("F32"));
        assert_eq!(dtype_of("wpe.weight"), Some("F32"));

        // Served as its own dtype by default, bitwise equal to quantizing the source at load.
        let want = logits(&src, Some(dtype), &npy);
        assert_eq!(logits(out_s, None, &npy), want, "{dtype}: converted vs --dtype {dtype}");
        assert_eq!(logits(out_s, Some(dtype), &npy), want);
        // int8 and w8a8 store the same weights, so either directory serves both; w4a8 only itself.
        match dtype {
            "w4a8" => fails(
                &["generate", "--model", out_s, "--dtype", "int8", "--tokens", "1,2", "--max-tokens", "1"],
                "dtype int8 cannot be served from it: its weights were converted to w4a8",
            ),
            _ => {
                let other = if dtype == "int8" { "w8a8" } else { "int8" };
                assert_eq!(logits(out_s, Some(other), &npy), logits(&src, Some(other), &npy), "{dtype} dir as {other}");
            }
        }
        assert_ne!(logits(out_s, None, &npy), logits(&src, None, &npy), "quantized equal to f32?");

        // A float dtype cannot come back from quantized weights.
        let note = format!("dtype f32 cannot be served from it: its weights were converted to {dtype}");
        fails(&["generate", "--model", out_s, "--dtype", "f32", "--tokens", "1,2", "--max-tokens", "1"], &note);
        let (text, err) = ok(&["generate", "--model", out_s, "--tokens", "1,2", "--max-tokens", "3", "--ids"]);
        assert_eq!(text.trim().split(',').count(), 3);
        assert!(err.contains(&format!("{dtype} weights")), "{err}");
    }
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = init(tmp.path(), "tiny", "src");
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    fails(&["convert", "--dtype", "int8", "--out", out_s], "--model");
    fails(&["convert", "--model", &src, "--dtype", "int3", "--out", out_s], "int3");
    fails(&["convert", "--model", &src, "--dtype", "f16", "--out", out_s], "--dtype f16");
    let missing = tmp.path().join("missing");
    fails(&["convert", "--model", missing.to_str().unwrap(), "--dtype", "int8", "--out", out_s], "--model");
    // Nothing was written by the failures.
    assert!(!out.exists());

    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    fails(&["convert", "--model", &src, "--dtype", "int8", "--out", out_s], "--out");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
    let file = out.join("keep.txt");
    fails(&["convert", "--model", &src, "--dtype", "int8", "--out", file.to_str().unwrap()], "--out");

    // An empty directory is fine; converting the result again is not.
    let conv = tmp.path().join("conv");
    std::fs::create_dir(&conv).unwrap();
    ok(&["convert", "--model", &src, "--dtype", "int8", "--out", conv.to_str().unwrap()]);
    let again = tmp.path().join("again");
    fails(
        &["convert", "--model", conv.to_str().unwrap(), "--dtype", "w8a8", "--out", again.to_str().unwrap()],
        "already converted",
    );
    assert!(!again.exists());
}
