//! llama.cpp GGUF files: parity with the HuggingFace directory they were converted from
//! (`tools/reference/gguf_fixtures.py`), Q8_0/Q4_0 quality against f32, the tokenizer from the
//! metadata against HF's ids, and one one-line error per kind of malformed file.
//!
//! Files other than the committed fixtures are written here by a small test-only writer
//! ([`write_gguf`]) whose tokenizer metadata is checked against the converter's own output.

mod common;

use common::{available_kernels, check_logits, compare, data_dir, Golden, LOGIT_TOL};
use inferneo_runtime::gguf::{self, GgufFile, TensorType, Value};
use inferneo_runtime::init::{parameter_shapes, RandomWeights};
use inferneo_runtime::tokenizer::GPT2_TOKENIZER_FILES;
use inferneo_runtime::weights::WeightSource;
use inferneo_runtime::{load_config, load_tokenizer, Gpt2, KvCache, Logits, ModelSource, Preset, WeightDtype};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    data_dir().join(name)
}

fn all_logits(model: &Gpt2, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(model.config());
    model.forward_one(&mut cache, tokens, Logits::All).unwrap()
}

// ---------------------------------------------------------------------------------------------
// F32: bitwise the directory's logits

/// The f32 conversion holds hub-micro's f16 weights widened exactly, so the model is the same
/// and its logits are bitwise the directory's, on every ISA, and within HF's tolerance.
#[test]
fn f32_gguf_gives_the_directory_s_logits_bitwise() {
    let g = Golden::load("hub-micro");
    for k in available_kernels() {
        let label = format!("hub-micro-f32.gguf/{}", k.isa());
        let from_dir = all_logits(&Gpt2::load(&fixture("hub-micro"), k, WeightDtype::F32).unwrap(), &g.tokens);
        let from_gguf =
            all_logits(&Gpt2::load(&fixture("hub-micro-f32.gguf"), k, WeightDtype::F32).unwrap(), &g.tokens);
        let diff = check_logits(&label, &from_gguf, &g.logits, g.vocab, LOGIT_TOL);
        eprintln!("{label}: max abs logit diff vs HF {diff:.2e}");
        let first = from_dir.iter().zip(&from_gguf).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(first, None, "{label}: logits differ from the directory's at index {first:?}");
    }
}

/// hub-micro's tensors from the f32 fixture, rewritten by `write_gguf` with every tensor as
/// `ty` (`F16` or `BF16`) or as f32 holding `round(ty)`.
fn rewrite_hub_micro(path: &Path, to: fn(f32) -> [u8; 2], ty: u32, as_f32: bool) {
    let src = GgufFile::open(&fixture("hub-micro-f32.gguf")).unwrap();
    let tensors = src
        .tensors()
        .iter()
        .map(|t| {
            let halves: Vec<[u8; 2]> = src.read_f32(&t.name).unwrap().into_iter().map(to).collect();
            let data: Vec<u8> = if as_f32 {
                let wide =
                    gguf::dequantize(if ty == F16 { TensorType::F16 } else { TensorType::Bf16 }, halves.as_flattened());
                wide.iter().flat_map(|v| v.to_le_bytes()).collect()
            } else {
                halves.as_flattened().to_vec()
            };
            (t.name.clone(), t.shape.clone(), if as_f32 { F32 } else { ty }, data)
        })
        .collect::<Vec<_>>();
    write_gguf(path, &gpt2_kv(&src.config().unwrap()), &tensors);
}

/// F16 and BF16 tensors: an F16 file of hub-micro's (f16) weights is the directory bitwise; a
/// BF16 file is an f32 file of the same values rounded to bf16, bitwise.
#[test]
fn f16_and_bf16_tensors_read_exactly() {
    let k = inferneo_kernels::kernels().unwrap();
    let toks = tokens(1000, 16);
    let dir = tempfile::tempdir().unwrap();
    let logits = |p: &Path| all_logits(&Gpt2::load(p, k, WeightDtype::F32).unwrap(), &toks);
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    let f16 = dir.path().join("f16.gguf");
    rewrite_hub_micro(&f16, |v| half::f16::from_f32(v).to_le_bytes(), F16, false);
    assert_eq!(bits(logits(&f16)), bits(logits(&fixture("hub-micro"))), "F16");
    let (bf16, rounded) = (dir.path().join("bf16.gguf"), dir.path().join("bf16-as-f32.gguf"));
    rewrite_hub_micro(&bf16, |v| half::bf16::from_f32(v).to_le_bytes(), BF16, false);
    rewrite_hub_micro(&rounded, |v| half::bf16::from_f32(v).to_le_bytes(), BF16, true);
    let (a, b) = (logits(&bf16), logits(&rounded));
    assert_ne!(bits(a.clone()), bits(logits(&fixture("hub-micro"))), "BF16 rounds hub-micro's f16 values");
    assert_eq!(bits(a), bits(b), "BF16");
}

#[test]
fn config_and_tokenizer_come_from_the_metadata() {
    let gguf = ModelSource::Dir(fixture("hub-micro-f32.gguf"));
    let (c, d) = (load_config(&gguf).unwrap(), load_config(&ModelSource::Dir(fixture("hub-micro"))).unwrap());
    assert_eq!(
        (c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head, c.n_inner(), c.layer_norm_epsilon),
        (d.vocab_size, d.n_positions, d.n_embd, d.n_layer, d.n_head, d.n_inner(), d.layer_norm_epsilon)
    );
    // The cut GPT-2 vocabulary the converter was given (see gguf_fixtures.py): `<|endoftext|>`
    // is id 999 and a control token.
    let tok = load_tokenizer(&gguf).unwrap();
    assert_eq!(tok.vocab_size(), 1000);
    assert_eq!(tok.eos_id(), Some(999));
    // Id 0 is GPT-2's "!", the first byte token.
    assert_eq!(tok.encode("!<|endoftext|>").unwrap(), [0, 999]);
    let text = "Hello, world! Ünïcödé";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    let loaded = inferneo_runtime::load(&gguf, &Default::default()).unwrap();
    assert_eq!(loaded.tokenizer.unwrap().vocab_size(), 1000);
    assert_eq!(gguf::chat_template(&fixture("hub-micro-f32.gguf")).unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Q8_0 and Q4_0

type Quantizer = fn(&[f32]) -> Vec<u8>;

/// llama.cpp's block layouts as read: the Q8_0 and Q4_0 fixtures (quantized by llama.cpp's
/// gguf-py) dequantize to bitwise what this file's ports of llama.cpp's reference quantizers
/// give for the f32 fixture's values, and every value lies within its block's rounding step.
#[test]
fn quantized_fixture_blocks_dequantize_to_the_f32_values() {
    let f32_file = GgufFile::open(&fixture("hub-micro-f32.gguf")).unwrap();
    let cases: [(&str, TensorType, Quantizer); 2] = [
        ("hub-micro-q8_0.gguf", TensorType::Q8_0, quantize_q8_0),
        ("hub-micro-q4_0.gguf", TensorType::Q4_0, quantize_q4_0),
    ];
    for (file, ty, quantize) in cases {
        let q = GgufFile::open(&fixture(file)).unwrap();
        let mut quantized = 0;
        for t in q.tensors() {
            let (want, got) = (f32_file.read_f32(&t.name).unwrap(), q.read_f32(&t.name).unwrap());
            assert_eq!(want.len(), got.len(), "{file}: {}", t.name);
            if t.type_code == F32 {
                assert_eq!(want, got, "{file}: {} is F32 in both", t.name);
                continue;
            }
            quantized += 1;
            let ours = gguf::dequantize(ty, &quantize(&want));
            let first = ours.iter().zip(&got).position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(first, None, "{file}: {}: ours and llama.cpp's quantization differ", t.name);
            // Rounding: half a step (Q8_0) or a whole one (Q4_0 clips its top code), plus the
            // f16 scale's relative 2^-11 on codes up to 127 (8).
            let (qmax, steps) = if ty == TensorType::Q8_0 { (127.0, 0.5) } else { (8.0, 1.0) };
            for (b, (w, g)) in want.chunks(32).zip(got.chunks(32)).enumerate() {
                let d = w.iter().fold(0.0f32, |m, v| m.max(v.abs())) / qmax;
                let bound = d * (steps + qmax / 2048.0) * 1.0001;
                for (i, (x, y)) in w.iter().zip(g).enumerate() {
                    assert!((x - y).abs() <= bound, "{file}: {} block {b} element {i}: {x} vs {y}", t.name);
                }
            }
        }
        assert!(quantized >= 9, "{file}: only {quantized} quantized tensors");
    }
}

fn tokens(vocab: usize, n: usize) -> Vec<u32> {
    (0..n as u64).map(|i| ((i * 7919 + 13) % vocab as u64) as u32).collect()
}

/// Bounds: (max abs logit error, min top-1 agreement, max mean KL), the measured figures in
/// docs/PERFORMANCE.md with about 3x headroom.
fn check_quality(label: &str, reference: &[f32], got: &[f32], vocab: usize, bounds: (f32, f64, f64)) {
    let q = compare(reference, got, vocab);
    eprintln!(
        "QUALITY {label}: max abs logit err {:.2e}, top-1 agreement {:.1}%, mean KL {:.2e} ({} positions)",
        q.max_abs,
        q.top1 * 100.0,
        q.mean_kl,
        reference.len() / vocab
    );
    assert!(q.max_abs > 0.0, "{label}: no error at all: were the weights quantized?");
    assert!(q.max_abs <= bounds.0, "{label}: max abs logit error {} > {}", q.max_abs, bounds.0);
    assert!(q.top1 >= bounds.1, "{label}: top-1 agreement {} < {}", q.top1, bounds.1);
    assert!(q.mean_kl <= bounds.2, "{label}: mean KL {} > {}", q.mean_kl, bounds.2);
}

/// The committed fixtures, converted by llama.cpp: Q8_0 and Q4_0 against the f32 file.
#[test]
fn llama_cpp_q8_0_and_q4_0_stay_within_their_documented_error() {
    let k = inferneo_kernels::kernels().unwrap();
    let toks = tokens(1000, 64);
    let reference = all_logits(&Gpt2::load(&fixture("hub-micro-f32.gguf"), k, WeightDtype::F32).unwrap(), &toks);
    for (file, bounds) in [("hub-micro-q8_0.gguf", (0.012, 0.95, 1e-6)), ("hub-micro-q4_0.gguf", (0.22, 0.75, 2.5e-4))]
    {
        let got = all_logits(&Gpt2::load(&fixture(file), k, WeightDtype::F32).unwrap(), &toks);
        check_quality(&format!("hub-micro {file}"), &reference, &got, 1000, bounds);
    }
}

/// The embedded model's 124M shape written as Q8_0 and Q4_0 GGUF files (the weights llama.cpp's
/// quantizers give: see [`quantize_q8_0`]) and served as f32, and the Q8_0 file re-quantized per
/// output channel by `--dtype int8` / `w8a8`, against the f32 weights and against the Q8_0
/// file served as f32 (the re-quantization's own cost): the figures in docs/PERFORMANCE.md.
#[test]
fn q8_0_and_q4_0_124m_shape_quality() {
    let k = inferneo_kernels::kernels().unwrap();
    let config = Preset::Gpt2.config();
    let weights = RandomWeights::new(&config, inferneo_runtime::gpt2::EMBEDDED_SEED);
    let toks = tokens(50257, 64);
    let reference = all_logits(&Gpt2::from_source(config.clone(), &weights, k, WeightDtype::F32).unwrap(), &toks);
    let dir = tempfile::tempdir().unwrap();
    let (q8, q4) = (dir.path().join("gpt2-q8_0.gguf"), dir.path().join("gpt2-q4_0.gguf"));
    write_model(&q8, &config, &weights, Q8_0);
    write_model(&q4, &config, &weights, Q4_0);
    let logits = |path: &Path, dtype| all_logits(&Gpt2::load(path, k, dtype).unwrap(), &toks);
    let q8_f32 = logits(&q8, WeightDtype::F32);
    check_quality("gpt2 124M q8_0 as f32", &reference, &q8_f32, 50257, (0.12, 0.88, 1e-4));
    let q8_int8 = logits(&q8, WeightDtype::Int8);
    check_quality("gpt2 124M q8_0 as int8", &reference, &q8_int8, 50257, (0.18, 0.88, 2e-4));
    check_quality("gpt2 124M q8_0 as int8 vs q8_0 as f32", &q8_f32, &q8_int8, 50257, (0.15, 0.88, 1.5e-4));
    let q8_w8a8 = logits(&q8, WeightDtype::W8a8);
    check_quality("gpt2 124M q8_0 as w8a8", &reference, &q8_w8a8, 50257, (0.3, 0.80, 6e-4));
    check_quality("gpt2 124M q8_0 as w8a8 vs q8_0 as f32", &q8_f32, &q8_w8a8, 50257, (0.3, 0.80, 5e-4));
    let q4_f32 = logits(&q4, WeightDtype::F32);
    check_quality("gpt2 124M q4_0 as f32", &reference, &q4_f32, 50257, (2.4, 0.35, 3.5e-2));
    let q4_f32 = compare(&reference, &q4_f32, 50257);
    // Our 4-bit dtype on the same f32 weights: the same groups of 32 k per output channel as
    // Q4_0, whose rule it follows with f32 scales (Q4_0's are f16), int8 activations on top.
    // Like for like, against the Q4_0 file served as w4a8: Q4_0's weights exactly (each of its
    // blocks re-quantizes to itself: its largest value is -8 d) with the same activations.
    let w4 = all_logits(&Gpt2::from_source(config.clone(), &weights, k, WeightDtype::W4a8).unwrap(), &toks);
    check_quality("gpt2 124M w4a8", &reference, &w4, 50257, (2.4, 0.35, 3.5e-2));
    let q4_w4 = logits(&q4, WeightDtype::W4a8);
    check_quality("gpt2 124M q4_0 as w4a8", &reference, &q4_w4, 50257, (2.4, 0.35, 3.5e-2));
    let (w4, q4_w4) = (compare(&reference, &w4, 50257), compare(&reference, &q4_w4, 50257));
    assert!(
        w4.mean_kl <= q4_w4.mean_kl,
        "w4a8 mean KL {} > Q4_0 weights' {} (both int8 activations)",
        w4.mean_kl,
        q4_w4.mean_kl
    );
    // And within 10% of Q4_0's weights alone (f32 activations).
    assert!(w4.mean_kl <= q4_f32.mean_kl * 1.1, "w4a8 mean KL {} > 1.1 x Q4_0's {}", w4.mean_kl, q4_f32.mean_kl);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

fn gpt2_vocab() -> (Vec<String>, Vec<String>) {
    let file = |name: &str| GPT2_TOKENIZER_FILES.iter().find(|(n, _)| *n == name).unwrap().1;
    let vocab: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(file("vocab.json")).unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (tok, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = tok;
    }
    let merges = std::str::from_utf8(file("merges.txt")).unwrap();
    let merges = merges.lines().filter(|l| !l.starts_with("#version") && !l.is_empty()).map(str::to_string).collect();
    (tokens, merges)
}

/// `tokenizer.ggml.*` as llama.cpp's converter writes GPT-2's: every token NORMAL (1) but
/// `<|endoftext|>`, CONTROL (3) and also BOS and EOS.
fn tokenizer_kv(tokens: &[String], merges: &[String]) -> Vec<(String, Kv)> {
    let eot = tokens.iter().position(|t| t == "<|endoftext|>").unwrap() as u32;
    let types = (0..tokens.len()).map(|i| if i as u32 == eot { 3 } else { 1 }).collect();
    vec![
        ("tokenizer.ggml.model".into(), Kv::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Kv::Str("gpt-2".into())),
        ("tokenizer.ggml.tokens".into(), Kv::Strs(tokens.to_vec())),
        ("tokenizer.ggml.token_type".into(), Kv::I32s(types)),
        ("tokenizer.ggml.merges".into(), Kv::Strs(merges.to_vec())),
        ("tokenizer.ggml.bos_token_id".into(), Kv::U32(eot)),
        ("tokenizer.ggml.eos_token_id".into(), Kv::U32(eot)),
    ]
}

/// The writer's tokenizer metadata is what the converter wrote for the cut GPT-2 vocabulary
/// in the hub-micro fixture (ids 0..999 as GPT-2's, `<|endoftext|>` last; the first 743 merges).
#[test]
fn tokenizer_metadata_is_written_as_llama_cpp_writes_it() {
    let (tokens, merges) = gpt2_vocab();
    let mut cut: Vec<String> = tokens[..999].to_vec();
    cut.push("<|endoftext|>".into());
    let want = tokenizer_kv(&cut, &merges[..743]);
    let file = GgufFile::open(&fixture("hub-micro-f32.gguf")).unwrap();
    for (key, value) in want {
        if key == "tokenizer.ggml.pre" {
            continue; // patched into the converter (see gguf_fixtures.py)
        }
        assert_eq!(file.metadata(&key), Some(&value.to_value()), "{key}");
    }
}

/// A GGUF carrying the real GPT-2 vocabulary and merges tokenizes the corpus to HF's ids.
#[test]
fn tokenizer_from_metadata_gives_hf_ids_on_the_corpus() {
    let text = std::fs::read_to_string(data_dir().join("tokenizer_corpus.json")).unwrap();
    let corpus: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (tokens, merges) = gpt2_vocab();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2-tokenizer.gguf");
    let mut kv = gpt2_kv(&Preset::Tiny.config());
    kv.extend(tokenizer_kv(&tokens, &merges));
    kv.push(("tokenizer.chat_template".into(), Kv::Str("{{ messages }}".into())));
    write_gguf(&path, &kv, &[]);
    let tok = load_tokenizer(&ModelSource::Dir(path.clone())).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.eos_id(), Some(50256));
    let cases = corpus["cases"].as_array().unwrap();
    assert!(cases.len() >= 25);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(text).unwrap(), want, "ids of {text:?}");
        assert_eq!(tok.decode(&want).unwrap(), text, "decode of {text:?}");
    }
    assert_eq!(gguf::chat_template(&path).unwrap().as_deref(), Some("{{ messages }}"));
}

// ---------------------------------------------------------------------------------------------
// Malformed files: one line each

/// `fixture` with `edit` applied, written to a temp file.
fn corrupted(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(fixture("hub-micro-f32.gguf")).unwrap();
    edit(&mut bytes);
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Byte offset of the GGUF string `s` (its u64 length, then its bytes) in `bytes`.
fn find_string(bytes: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u64).to_le_bytes().to_vec();
    needle.extend(s.as_bytes());
    bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("{s} not in the file"))
}

/// Offset of tensor `name`'s info just past its name: n_dims u32, ne u64 x n_dims, type u32.
fn tensor_info(bytes: &[u8], name: &str) -> usize {
    find_string(bytes, name) + 8 + name.len()
}

fn load_error(path: &Path) -> String {
    let k = inferneo_kernels::kernels().unwrap();
    match inferneo_runtime::load(&ModelSource::Dir(path.into()), &Default::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "not one line: {msg}");
            assert!(Gpt2::load(path, k, WeightDtype::F32).is_err());
            msg
        }
    }
}

#[test]
fn malformed_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(PathBuf, &str)> = vec![
        (corrupted(d, "magic", |b| b[..4].copy_from_slice(b"GGML")), "wrong magic \"GGML\""),
        (
            corrupted(d, "version", |b| b[4..8].copy_from_slice(&1u32.to_le_bytes())),
            "GGUF version 1 (supported: 2 and 3)",
        ),
        (
            corrupted(d, "arch", |b| {
                let at = find_string(b, "general.architecture") + 8 + 20 + 4 + 8;
                b[at..at + 4].copy_from_slice(b"gptj");
            }),
            "unsupported model: architecture 'gptj' (only 'gpt2' is supported)",
        ),
        (
            corrupted(d, "type", |b| {
                // blk.0.attn_qkv.weight: 2 dims, so its type follows 4 + 16 bytes.
                let at = tensor_info(b, "blk.0.attn_qkv.weight") + 4 + 16;
                b[at..at + 4].copy_from_slice(&10u32.to_le_bytes()); // Q2_K
            }),
            "tensor 'blk.0.attn_qkv.weight' has type Q2_K (supported: F32, F16, BF16, Q8_0, Q4_0)",
        ),
        (
            corrupted(d, "missing", |b| {
                let at = find_string(b, "blk.1.ffn_up.weight") + 8;
                b[at..at + 19].copy_from_slice(b"blk.1.ffn_UP.weight");
            }),
            "missing tensor 'blk.1.ffn_up.weight'",
        ),
        (
            corrupted(d, "shape", |b| {
                // position_embd.weight ne = [32, 64]: halve the positions.
                let at = tensor_info(b, "position_embd.weight") + 4 + 8;
                b[at..at + 8].copy_from_slice(&32u64.to_le_bytes());
            }),
            "tensor 'position_embd.weight' has shape [32, 32], expected [64, 32]",
        ),
        (corrupted(d, "truncated-data", |b| b.truncate(b.len() - 1000)), "past the end of the"),
        (corrupted(d, "truncated-header", |b| b.truncate(5000)), "(truncated?)"),
        (corrupted(d, "empty", Vec::clear), "0 bytes, too short for a GGUF file"),
    ];
    for (path, want) in cases {
        let msg = load_error(&path);
        eprintln!("{}: {msg}", path.file_name().unwrap().to_string_lossy());
        assert!(msg.contains(want), "{}: {msg:?} does not say {want:?}", path.display());
        assert!(msg.starts_with(&path.display().to_string()), "{msg}: names the file");
    }
}

/// As for safetensors: read (not mapped), a file truncated while it loads is an error naming
/// the tensor, and one whose size or modification time changed since it was opened is refused.
#[test]
fn a_file_changed_while_loading_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let bytes = std::fs::read(fixture("hub-micro-f32.gguf")).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.read_f32("output_norm.weight").unwrap().len(), 32);
    file.check_unchanged().unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = file.read_f32("token_embd.weight").unwrap_err().to_string();
    assert!(msg.contains("ends inside tensor 'token_embd.weight'"), "{msg}");
    assert!(file.check_unchanged().unwrap_err().to_string().contains("changed while it was being loaded"));
    // Same length, new contents: only the modification time tells.
    std::fs::write(&path, &bytes).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1)).unwrap();
    assert!(file.check_unchanged().unwrap_err().to_string().contains("changed while it was being loaded"));
}

/// Random corruptions of the header (flipped bytes, changed lengths and counts) and random
/// truncations: every one loads or fails with an error, never a panic or a huge allocation.
#[test]
fn corrupted_headers_never_panic() {
    let original = std::fs::read(fixture("hub-micro-f32.gguf")).unwrap();
    let header_len = find_string(&original, "output_norm.bias") + 200;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.gguf");
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = inferneo_runtime::init::splitmix64(state);
        state
    };
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..300 {
        let mut bytes = original.clone();
        match next() % 3 {
            0 => bytes.truncate((next() % original.len() as u64) as usize),
            // A byte of a length or count set to its largest value, or any byte flipped.
            1 => bytes[(next() % header_len as u64) as usize] = 0xff,
            _ => bytes[(next() % header_len as u64) as usize] ^= 1 << (next() % 8),
        }
        std::fs::write(&path, &bytes).unwrap();
        match inferneo_runtime::load(&ModelSource::Dir(path.clone()), &Default::default()) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(!e.to_string().contains('\n'), "{e}");
                failed += 1;
            }
        }
    }
    eprintln!("{ok} corrupted files loaded (a byte of a token or a weight), {failed} refused");
    assert!(failed > 100, "only {failed} of 300 corruptions were refused");
}

/// An `output.weight` other than `token_embd.weight` is an untied head, which GPT-2 never has.
#[test]
fn untied_output_head_is_refused_and_a_tied_copy_accepted() {
    let config = Preset::Tiny.config();
    let weights = RandomWeights::new(&config, 7);
    let dir = tempfile::tempdir().unwrap();
    let wte = weights.get("wte.weight", &[config.vocab_size, config.n_embd]).unwrap();
    let tied = dir.path().join("tied.gguf");
    write_model_with(&tied, &config, &weights, F32, Some(wte.clone()));
    let k = inferneo_kernels::kernels().unwrap();
    let a = all_logits(&Gpt2::load(&tied, k, WeightDtype::F32).unwrap(), &[1, 2, 3]);
    let b = all_logits(&Gpt2::from_source(config.clone(), &weights, k, WeightDtype::F32).unwrap(), &[1, 2, 3]);
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    let untied = dir.path().join("untied.gguf");
    write_model_with(&untied, &config, &weights, F32, Some(wte.iter().map(|v| v * 2.0).collect()));
    assert!(load_error(&untied).contains("untied output head"));
}

// ---------------------------------------------------------------------------------------------
// A test-only GGUF writer (version 3, alignment 32)

const F32: u32 = 0;
const F16: u32 = 1;
const BF16: u32 = 30;
const Q8_0: u32 = 8;
const Q4_0: u32 = 2;

enum Kv {
    U32(u32),
    F32(f32),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

impl Kv {
    fn to_value(&self) -> Value {
        match self {
            Kv::U32(v) => Value::U32(*v),
            Kv::F32(v) => Value::F32(*v),
            Kv::Str(s) => Value::Str(s.clone()),
            Kv::Strs(v) => Value::Array(v.iter().map(|s| Value::Str(s.clone())).collect()),
            Kv::I32s(v) => Value::Array(v.iter().map(|&i| Value::I32(i)).collect()),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// Writes a GGUF file: `tensors` are (name, row-major shape, type, data bytes).
fn write_gguf(path: &Path, kv: &[(String, Kv)], tensors: &[(String, Vec<usize>, u32, Vec<u8>)]) {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (key, value) in kv {
        put_str(&mut out, key);
        match value {
            Kv::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Kv::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            Kv::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Kv::Strs(v) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|s| put_str(&mut out, s));
            }
            Kv::I32s(v) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|i| out.extend(i.to_le_bytes()));
            }
        }
    }
    let mut offset = 0u64;
    for (name, shape, ty, data) in tensors {
        put_str(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        shape.iter().rev().for_each(|&d| out.extend((d as u64).to_le_bytes()));
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset = (offset + data.len() as u64).next_multiple_of(32);
    }
    for (_, _, _, data) in tensors {
        out.resize(out.len().next_multiple_of(32), 0);
        out.extend(data);
    }
    std::fs::write(path, out).unwrap();
}

/// `gpt2.*` as llama.cpp's converter writes them.
fn gpt2_kv(c: &inferneo_runtime::Config) -> Vec<(String, Kv)> {
    vec![
        ("general.architecture".into(), Kv::Str("gpt2".into())),
        ("gpt2.block_count".into(), Kv::U32(c.n_layer as u32)),
        ("gpt2.context_length".into(), Kv::U32(c.n_positions as u32)),
        ("gpt2.embedding_length".into(), Kv::U32(c.n_embd as u32)),
        ("gpt2.feed_forward_length".into(), Kv::U32(c.n_inner() as u32)),
        ("gpt2.attention.head_count".into(), Kv::U32(c.n_head as u32)),
        ("gpt2.attention.layer_norm_epsilon".into(), Kv::F32(c.layer_norm_epsilon)),
    ]
}

fn f16_bits(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// llama.cpp's `quantize_row_q8_0_ref`: per 32 values `d = max|x| / 127`, `q = round(x / d)`.
fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let d = block.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16_bits(d));
        out.extend(block.iter().map(|&x| (x * id).round() as i8 as u8));
    }
    out
}

/// llama.cpp's `quantize_row_q4_0_ref`: `d = max / -8` with `max` the value of largest
/// magnitude, codes `min(15, trunc(x / d + 8.5))`, element j in byte j's low nibble and
/// element j + 16 in its high nibble.
fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / 32 * 18);
    for block in values.chunks_exact(32) {
        let max = block.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16_bits(d));
        let code = |x: f32| ((x * id + 8.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| code(block[j]) | (code(block[j + 16]) << 4)));
    }
    out
}

fn write_model(path: &Path, c: &inferneo_runtime::Config, w: &RandomWeights, ty: u32) {
    write_model_with(path, c, w, ty, None)
}

/// `w` as llama.cpp lays a GPT-2 out: its names, the projections transposed to `[out, in]`,
/// matrices (but `position_embd`) as `ty`, vectors F32; `output` an optional head.
fn write_model_with(path: &Path, c: &inferneo_runtime::Config, w: &RandomWeights, ty: u32, output: Option<Vec<f32>>) {
    let mut tensors = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, values: Vec<f32>| {
        let quantize = shape.len() == 2 && name != "position_embd.weight";
        let (t, data) = match (quantize, ty) {
            (true, Q8_0) => (Q8_0, quantize_q8_0(&values)),
            (true, Q4_0) => (Q4_0, quantize_q4_0(&values)),
            _ => (F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        tensors.push((name, shape, t, data));
    };
    for (name, shape) in parameter_shapes(c) {
        let values = w.get(&name, &shape).unwrap();
        let (gname, transposed) = gguf::gguf_name(&name).unwrap();
        if transposed {
            let (n_in, n_out) = (shape[0], shape[1]);
            let mut t = vec![0.0f32; values.len()];
            for i in 0..n_in {
                for o in 0..n_out {
                    t[o * n_in + i] = values[i * n_out + o];
                }
            }
            push(gname, vec![n_out, n_in], t);
        } else {
            push(gname, shape, values);
        }
    }
    if let Some(head) = output {
        push("output.weight".into(), vec![c.vocab_size, c.n_embd], head);
    }
    write_gguf(path, &gpt2_kv(c), &tensors);
}
