//! Fuzz targets for the runtime's parsers of untrusted input, run as ordinary tests on stable
//! Rust with proptest generators, so CI runs them for a bounded time on every change.
//!
//! What is fuzzed:
//! - `weights::SafetensorsFile::open` on files of random bytes, and on files with a plausible
//!   8-byte header length and a JSON header built from the format's fields (random dtypes,
//!   shapes with huge dimensions or overflowing products, data offsets reversed or past the
//!   end, wrong header lengths, truncated data); then `get(name, shape)` for every tensor the
//!   header declares, with its declared shape.
//! - `Config::from_file` (a model's `config.json`) on random bytes and on JSON objects built
//!   from the real field names with values of every JSON type, extreme numbers included.
//! - The embedded GPT-2 tokenizer: `encode` of arbitrary text (lossy UTF-8 from random bytes,
//!   random Unicode), `decode` of random ids (ids beyond the vocabulary are skipped, not an
//!   error: that is `tokenizers`' behaviour, checked here so a change to it shows), and
//!   `tokenizer::IncrementalDecoder`, the streaming decoder, on random ids.
//! - Not fuzzed: a GGUF header parser, which does not exist yet; add its target here when it
//!   does.
//!
//! The property: no input panics or allocates without bound (every allocation is bounded by
//! the file's size); a bad input is a clean `Err`. Where a call succeeds, the result is checked
//! against what the code documents: tensor values equal the bytes the header points at; an
//! accepted config passes every rule `Config::validate` states; text round-trips through
//! encode/decode (byte-level BPE is lossless); `min_tokens` is a lower bound on the token
//! count; and the incremental decoder's pieces join up to `decode` of all the ids.
//!
//! The case counts are sized for under ten seconds in `cargo test --release` on two cores;
//! for a longer run set `INFERNEO_FUZZ_CASES` (cases per target), e.g.
//! `INFERNEO_FUZZ_CASES=300000 cargo test --release --test fuzz`. Running without `--release`
//! (the test profile is optimized too) adds debug assertions and overflow checks, which catch
//! more. A failure prints the shrunk input; keep it as an explicit test at the end of this
//! file.

use inferneo_runtime::tokenizer::IncrementalDecoder;
use inferneo_runtime::weights::{SafetensorsFile, WeightSource};
use inferneo_runtime::{Config, Error, Tokenizer};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::sync::OnceLock;

/// Cases per target: `default`, or `INFERNEO_FUZZ_CASES` when set.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("INFERNEO_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    // Failures are kept as explicit tests at the end of the file, not in a regressions file.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

// ---------------------------------------------------------------------------------------------
// Shared JSON generators.

/// Numbers at the edges: zero, negatives, `u64::MAX`, powers of two whose products overflow,
/// floats where integers are wanted, the largest and smallest doubles.
fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(3),
            json!(u64::MAX),
            json!(u32::MAX),
            json!(1u64 << 32),
            json!(1u64 << 62),
            json!((1u64 << 62) + 1),
            json!(1u64 << 63),
            json!(i64::MIN),
            json!(1e308),
            json!(-1e308),
            json!(1e39),
            json!(5e-324),
            json!(1e-5),
            json!(-0.0),
            json!(1.5),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("JSON has no NaN or infinity", |f| serde_json::Number::from_f64(f).map(Value::Number)),
    ]
    .boxed()
}

fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{0,8}", inner), 0..4).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

fn object(fields: Vec<(&'static str, f64, BoxedStrategy<Value>)>) -> impl Strategy<Value = Map<String, Value>> {
    let fields: Vec<_> = fields
        .into_iter()
        .map(|(name, p, value)| prop::option::weighted(p, value.prop_map(move |v| (name.to_string(), v))))
        .collect();
    let extra = prop::collection::vec(("[a-z_]{1,12}", any_json()), 0..3);
    (fields, prop_oneof![3 => Just(Vec::new()), 1 => extra]).prop_map(|(fields, extra)| {
        let mut o: Map<String, Value> = fields.into_iter().flatten().collect();
        o.extend(extra);
        o
    })
}

// ---------------------------------------------------------------------------------------------
// Safetensors.

const DTYPES: [&str; 10] = ["F32", "F16", "BF16", "I8", "U8", "I64", "F64", "BOOL", "", "f32"];

fn dtype_size(dtype: &str) -> Option<u64> {
    match dtype {
        "F32" => Some(4),
        "F16" | "BF16" => Some(2),
        _ => None,
    }
}

/// How a tensor's `data_offsets` are chosen.
#[derive(Clone, Debug)]
enum Offsets {
    /// Right after the previous tensor, as long as its shape says (when that is computable).
    Packed,
    /// Packed, then moved by a few bytes.
    Shifted(i64, i64),
    Random(u64, u64),
}

#[derive(Clone, Debug)]
struct TensorSpec {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    offsets: Offsets,
    /// Replaces one of the entry's fields (or adds one) with a random value.
    corrupt: Option<(String, Value)>,
}

/// How the file's 8-byte header length is written.
#[derive(Clone, Debug)]
enum LenPrefix {
    Exact,
    Off(i64),
    Any(u64),
}

#[derive(Clone, Debug)]
struct FileSpec {
    tensors: Vec<TensorSpec>,
    metadata: Option<Value>,
    prefix: LenPrefix,
    /// Bytes of data after the header: as many as the packed tensors need, plus this (which
    /// truncates when negative).
    data_extra: i64,
    fill: u8,
}

fn tensor_spec() -> impl Strategy<Value = TensorSpec> {
    let name = prop_oneof![
        prop::sample::select(vec!["wte.weight", "transformer.wte.weight", "h.0.ln_1.bias", "a", "", "__metadata__"])
            .prop_map(String::from),
        "(transformer\\.)?[a-c]{1,2}",
        ".{0,6}",
    ];
    let dtype = prop_oneof![
        6 => prop::sample::select(DTYPES[..3].to_vec()).prop_map(String::from),
        3 => prop::sample::select(DTYPES.to_vec()).prop_map(String::from),
        1 => "[A-Z0-9]{0,4}",
    ];
    let dim = prop_oneof![
        8 => 0u64..5,
        1 => prop::sample::select(vec![255, 256, 1 << 31, 1 << 32, 1 << 62, (1 << 62) + 1, u64::MAX]),
        1 => any::<u64>(),
    ];
    let offsets = prop_oneof![
        6 => Just(Offsets::Packed),
        2 => (-6i64..6, -6i64..6).prop_map(|(a, b)| Offsets::Shifted(a, b)),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Offsets::Random(a, b)),
    ];
    let corrupt = prop::option::weighted(
        0.1,
        (prop::sample::select(vec!["dtype", "shape", "data_offsets", "extra"]).prop_map(String::from), any_json()),
    );
    (name, dtype, prop::collection::vec(dim, 0..4), offsets, corrupt)
        .prop_map(|(name, dtype, shape, offsets, corrupt)| TensorSpec { name, dtype, shape, offsets, corrupt })
}

fn file_spec() -> impl Strategy<Value = FileSpec> {
    let prefix = prop_oneof![
        8 => Just(LenPrefix::Exact),
        1 => (-9i64..9).prop_map(LenPrefix::Off),
        1 => prop_oneof![
            Just(u64::MAX),
            Just(100u64 << 20),
            Just((100u64 << 20) + 1),
            any::<u64>()
        ].prop_map(LenPrefix::Any),
    ];
    let metadata = prop::option::weighted(0.2, prop_oneof![Just(json!({"format": "pt"})), any_json()]);
    (
        prop::collection::vec(tensor_spec(), 0..5),
        metadata,
        prefix,
        prop_oneof![4 => Just(0i64), 1 => -16i64..16],
        any::<u8>(),
    )
        .prop_map(|(tensors, metadata, prefix, data_extra, fill)| FileSpec {
            tensors,
            metadata,
            prefix,
            data_extra,
            fill,
        })
}

/// Largest data section a generated file gets: files stay well under 64 KiB.
const MAX_DATA: u64 = 16 << 10;

fn build_file(spec: &FileSpec) -> Vec<u8> {
    let mut header = Map::new();
    if let Some(m) = &spec.metadata {
        header.insert("__metadata__".into(), m.clone());
    }
    let mut cursor = 0u64;
    for t in &spec.tensors {
        let bytes = dtype_size(&t.dtype)
            .unwrap_or(1)
            .checked_mul(t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX))
            .filter(|&b| b <= MAX_DATA)
            .unwrap_or(8);
        let (start, end) = match t.offsets {
            Offsets::Packed => (cursor, cursor + bytes),
            Offsets::Shifted(a, b) => (cursor.saturating_add_signed(a), (cursor + bytes).saturating_add_signed(b)),
            Offsets::Random(a, b) => (a, b),
        };
        if end <= MAX_DATA {
            cursor = cursor.max(end);
        }
        let mut entry = json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [start, end]});
        if let Some((k, v)) = &t.corrupt {
            entry[k.as_str()] = v.clone();
        }
        header.insert(t.name.clone(), entry);
    }
    let header = serde_json::to_vec(&header).unwrap();
    let n = match spec.prefix {
        LenPrefix::Exact => header.len() as u64,
        LenPrefix::Off(d) => (header.len() as u64).saturating_add_signed(d),
        LenPrefix::Any(n) => n,
    };
    let data_len = cursor.saturating_add_signed(spec.data_extra);
    let mut file = n.to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    // Data that differs from byte to byte, so a misplaced read shows.
    file.extend((0..data_len).map(|i| spec.fill.wrapping_add((i as u8).wrapping_mul(37))));
    file
}

/// The header as the file states it, read independently of the code under test.
fn read_header(bytes: &[u8]) -> Option<(u64, Map<String, Value>)> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().unwrap());
    let end = usize::try_from(n).ok()?.checked_add(8)?;
    Some((8 + n, serde_json::from_slice(bytes.get(8..end)?).ok()?))
}

/// Opens `bytes` as a safetensors file; if that succeeds, reads every tensor the header
/// declares, with its declared shape, and checks the values against the bytes.
fn check_safetensors(bytes: &[u8]) {
    let file = temp_file(bytes);
    let st = match SafetensorsFile::open(file.path()) {
        Ok(st) => st,
        Err(e) => {
            assert!(matches!(e, Error::Safetensors { .. } | Error::Io { .. }), "{e:?}");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    st.check_unchanged().unwrap();
    let (data_start, header) = read_header(bytes).expect("open accepted a header that is not a JSON object");
    for (name, entry) in &header {
        if name == "__metadata__" {
            continue;
        }
        let (dtype, shape, offsets) = entry_info(entry);
        let dtype = dtype.as_str();
        let canonical = name.strip_prefix("transformer.").unwrap_or(name);
        // `get` takes the name with or without the prefix; when the header has both spellings
        // either may answer, so the values are only checked when this entry is the one.
        let spellings = [canonical.to_string(), format!("transformer.{canonical}")];
        let unique = spellings.iter().filter(|s| header.contains_key(s.as_str())).count() == 1;
        match st.get(canonical, &shape) {
            Ok(values) => {
                let elements: usize = shape.iter().product();
                assert_eq!(values.len(), elements, "{name}: {shape:?}");
                if unique {
                    let raw = &bytes[(data_start + offsets.0) as usize..(data_start + offsets.1) as usize];
                    let want = decode_values(dtype, raw).expect("get read an unknown dtype");
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&values), bits(&want), "{name}");
                }
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        Error::Dtype { .. } | Error::Shape { .. } | Error::Safetensors { .. } | Error::Io { .. }
                    ),
                    "{name}: {e:?}"
                );
                // A known dtype whose entry passed `open` is readable: the file is complete.
                if unique && dtype_size(dtype).is_some() {
                    panic!("{name}: {dtype} {shape:?} at {offsets:?} not readable: {e}");
                }
            }
        }
        // Another shape is a shape error, not a read (unless the other spelling has it).
        let mut other = shape.clone();
        other.push(1);
        assert!(!unique || matches!(st.get(canonical, &other), Err(Error::Shape { .. })), "{name}");
    }
    assert!(matches!(st.get("no such tensor", &[1]), Err(Error::MissingTensor { .. })));
}

/// The f32 values of `raw` as safetensors stores `dtype`.
fn decode_values(dtype: &str, raw: &[u8]) -> Option<Vec<f32>> {
    let pairs = || raw.chunks_exact(2).map(|b| [b[0], b[1]]);
    Some(match dtype {
        "F32" => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        "F16" => pairs().map(|b| half::f16::from_le_bytes(b).to_f32()).collect(),
        "BF16" => pairs().map(|b| half::bf16::from_le_bytes(b).to_f32()).collect(),
        _ => return None,
    })
}

/// A header entry's dtype, shape and offsets: serde reads a struct from an object or from an
/// array of its fields in order, so both are accepted.
fn entry_info(entry: &Value) -> (String, Vec<usize>, (u64, u64)) {
    let (d, s, o) = match entry {
        Value::Array(a) => (a[0].clone(), a[1].clone(), a[2].clone()),
        _ => (entry["dtype"].clone(), entry["shape"].clone(), entry["data_offsets"].clone()),
    };
    let parsed = (serde_json::from_value(d), serde_json::from_value(s), serde_json::from_value(o));
    match parsed {
        (Ok(d), Ok(s), Ok(o)) => (d, s, o),
        _ => panic!("open accepted the entry {entry}"),
    }
}

proptest! {
    #![proptest_config(config(30000))]

    #[test]
    fn safetensors_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_safetensors(&bytes);
    }

    /// A length that fits the file, then random bytes as the header: exercises the JSON
    /// parser's rejections rather than the length check.
    #[test]
    fn safetensors_random_header(body in prop::collection::vec(any::<u8>(), 0..256), n in any::<prop::sample::Index>()) {
        let n = n.index(body.len() + 1) as u64;
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        check_safetensors(&bytes);
    }

    #[test]
    fn safetensors_structured(spec in file_spec()) {
        check_safetensors(&build_file(&spec));
    }
}

// ---------------------------------------------------------------------------------------------
// config.json.

/// The fields `Config` reads.
const CONFIG_FIELDS: [&str; 13] = [
    "vocab_size",
    "n_positions",
    "n_ctx",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "layer_norm_epsilon",
    "activation_function",
    "model_type",
    "architectures",
    "eos_token_id",
    "torch_dtype",
];

/// A valid config (with or without each optional field), then up to three fields replaced by
/// edge numbers or random JSON, and sometimes one removed.
fn config_json() -> impl Strategy<Value = Map<String, Value>> {
    let small = |r: std::ops::RangeInclusive<u64>| r.prop_map(Value::from).boxed();
    let s = |v: Vec<&'static str>| {
        prop_oneof![4 => prop::sample::select(v).prop_map(Value::from), 1 => ".{0,8}".prop_map(Value::String)].boxed()
    };
    let base = (1u64..100, 1u64..64, 1u64..8, 1u64..8, 1u64..4).prop_map(|(vocab, positions, heads, dim, layers)| {
        let v = json!({
            "vocab_size": vocab, "n_positions": positions, "n_embd": heads * dim, "n_head": heads, "n_layer": layers,
        });
        v.as_object().unwrap().clone()
    });
    let optional = object(vec![
        ("n_ctx", 0.2, small(1..=64)),
        ("n_inner", 0.3, prop_oneof![small(1..=64), Just(Value::Null)].boxed()),
        ("layer_norm_epsilon", 0.3, (1e-9f64..1.0).prop_map(Value::from).boxed()),
        ("activation_function", 0.3, s(vec!["gelu_new", "gelu_pytorch_tanh", "gelu", "relu", ""])),
        ("model_type", 0.3, s(vec!["gpt2", "llama", ""])),
        (
            "architectures",
            0.3,
            prop::collection::vec(s(vec!["GPT2LMHeadModel", "GPT2Model", "LlamaForCausalLM"]), 0..3)
                .prop_map(Value::Array)
                .boxed(),
        ),
        ("eos_token_id", 0.3, small(0..=50256)),
        ("torch_dtype", 0.2, s(vec!["float32", "float16"])),
    ]);
    let name = || prop::sample::select(CONFIG_FIELDS.to_vec()).prop_map(String::from);
    let value = prop_oneof![
        3 => number(),
        1 => small(0..=64),
        1 => prop::sample::select(vec![json!(1u64 << 62), json!((1u64 << 62) + 1), json!(u64::MAX), Value::Null]),
        1 => any_json(),
    ];
    let overrides = prop::collection::vec((name(), value), 0..3);
    let removed = prop::option::weighted(0.15, name());
    (base, optional, overrides, removed).prop_map(|(mut o, optional, overrides, removed)| {
        o.extend(optional);
        o.extend(overrides);
        if let Some(k) = removed {
            o.remove(&k);
        }
        o
    })
}

/// Reads `bytes` as a config.json; an accepted config must satisfy every rule `validate`
/// states, and hold the values the file gave.
fn check_config(bytes: &[u8]) {
    let file = temp_file(bytes);
    let c = match Config::from_file(file.path()) {
        Ok(c) => c,
        Err(e) => {
            assert!(
                matches!(e, Error::Io { .. } | Error::Json { .. } | Error::Unsupported { .. } | Error::Config { .. }),
                "{e:?}"
            );
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    for v in [c.vocab_size, c.n_positions, c.n_embd, c.n_layer, c.n_head] {
        assert!(v > 0, "{c:?}");
    }
    // `n_inner` defaults to 4 * n_embd: that must be a number, not a wrapped one.
    assert!(c.n_inner.is_some() || c.n_embd.checked_mul(4).is_some(), "{c:?}");
    assert!(c.n_inner() > 0, "{c:?}");
    assert_eq!(c.head_dim() * c.n_head, c.n_embd, "{c:?}");
    assert!(c.layer_norm_epsilon > 0.0, "{c:?}");
    assert!(["gelu_new", "gelu_pytorch_tanh"].contains(&c.activation_function.as_str()), "{c:?}");
    assert!(c.model_type.as_deref().is_none_or(|t| t == "gpt2"), "{c:?}");
    assert!(
        c.architectures
            .as_ref()
            .is_none_or(|a| a.is_empty() || a.iter().any(|a| a == "GPT2LMHeadModel" || a == "GPT2Model")),
        "{c:?}"
    );
    // `n_ctx` only fills in for a missing `n_positions`.
    let v: Map<String, Value> = serde_json::from_slice(bytes).unwrap();
    let positions = v.get("n_positions").or_else(|| v.get("n_ctx")).and_then(Value::as_u64);
    assert_eq!(positions, Some(c.n_positions as u64), "{c:?}");
    assert_eq!(v.get("n_embd").and_then(Value::as_u64), Some(c.n_embd as u64));
}

/// Mostly bytes JSON gives meaning to, so that an edit often leaves the text parseable.
fn json_byte() -> impl Strategy<Value = u8> {
    prop_oneof![3 => prop::sample::select(b"{}[]\":,0123456789-+.eE ".to_vec()), 1 => any::<u8>()]
}

proptest! {
    #![proptest_config(config(30000))]

    #[test]
    fn config_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_config(&bytes);
    }

    #[test]
    fn config_structured(o in config_json()) {
        check_config(&serde_json::to_vec(&o).unwrap());
    }

    /// A structured config with a few bytes overwritten.
    #[test]
    fn config_edited(o in config_json(), edits in prop::collection::vec((any::<prop::sample::Index>(), json_byte()), 1..4)) {
        let mut bytes = serde_json::to_vec(&o).unwrap();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        check_config(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// The tokenizer.

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(Tokenizer::gpt2)
}

/// `Tokenizer::vocab_size` builds the whole vocabulary map (milliseconds), so it is read once.
fn vocab() -> usize {
    static VOCAB: OnceLock<usize> = OnceLock::new();
    *VOCAB.get_or_init(|| tok().vocab_size())
}

/// Encodes `text` and checks: ids in the vocabulary, lossless round trip, `min_tokens` a
/// lower bound.
fn check_encode(text: &str) {
    let tok = tok();
    let ids = tok.encode(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(ids.iter().all(|&id| (id as usize) < vocab()), "{text:?}: {ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), text, "{ids:?}");
    assert!(tok.min_tokens(text) <= ids.len(), "{text:?}");
}

/// Text the byte-level pre-tokenizer and the special token make interesting.
fn tricky_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "<|endoftext|>",
            "<|endoftext",
            "|>",
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            "'s",
            "'ll",
            "é",
            "e\u{301}",
            "😀",
            "👩‍👩‍👧",
            "\u{FFFD}",
            "\0",
            "\u{200B}",
            "ﬁ",
            "123",
            "Hello",
        ])
        .prop_map(String::from),
        ".{1,4}",
    ];
    prop::collection::vec(piece, 0..16).prop_map(|p| p.concat())
}

/// Ids in the vocabulary, many of them the single-byte tokens whose bytes are parts of
/// multi-byte characters, some beyond it.
fn id() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..256,
        4 => 0u32..50257,
        1 => Just(50256u32),
        1 => prop_oneof![50257u32..50300, Just(u32::MAX), any::<u32>()],
    ]
}

/// Decodes `ids` with `IncrementalDecoder` and checks the pieces against `decode`.
fn check_incremental(ids: &[u32]) {
    let tok = tok();
    let mut dec = IncrementalDecoder::default();
    let mut streamed = String::new();
    for &id in ids {
        streamed.push_str(&dec.push(tok, id).unwrap_or_else(|e| panic!("{ids:?}: {e}")));
    }
    streamed.push_str(&dec.finish(tok).unwrap());
    let whole = tok.decode(ids).unwrap();
    assert_eq!(streamed, whole, "{ids:?}");
}

proptest! {
    #![proptest_config(config(20000))]

    #[test]
    fn encode_lossy_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check_encode(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn encode_unicode(text in prop_oneof![".{0,64}", "\\PC{0,64}", tricky_text()]) {
        check_encode(&text);
    }

    /// Ids beyond the vocabulary are not an error: `tokenizers` skips them, so `decode` is the
    /// decoding of the ids that are in it.
    #[test]
    fn decode_random_ids(ids in prop::collection::vec(id(), 0..64)) {
        let tok = tok();
        let valid: Vec<u32> = ids.iter().copied().filter(|&id| (id as usize) < vocab()).collect();
        let want = tok.decode(&valid).unwrap();
        match tok.decode(&ids) {
            Ok(text) => prop_assert_eq!(text, want),
            Err(e) => prop_assert!(valid.len() < ids.len(), "{:?}: {}", ids, e),
        }
    }

    #[test]
    fn incremental_decoder_joins_up_to_decode(ids in prop::collection::vec(id(), 0..48)) {
        check_incremental(&ids);
    }

    /// Streams the ids of real text, so the pieces are mostly whole tokens.
    #[test]
    fn incremental_decoder_on_encoded_text(text in tricky_text()) {
        let ids = tok().encode(&text).unwrap();
        check_incremental(&ids);
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs found worth keeping.

#[test]
fn edge_safetensors() {
    let file = |n: u64, header: &str, data: usize| {
        let mut b = n.to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(7u8, data));
        b
    };
    let h = |header: &str, data: usize| file(header.len() as u64, header, data);
    check_safetensors(&[]);
    check_safetensors(&file(u64::MAX, "{}", 0));
    check_safetensors(&file(100 << 20, "{}", 0));
    check_safetensors(&h("{}", 0));
    check_safetensors(&h(r#"{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}"#, 4));
    check_safetensors(&h(r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}"#, 0));
    check_safetensors(&h(
        r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"transformer.a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
        4,
    ));
    check_safetensors(&h(r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#, 0));
    check_safetensors(&h(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551615,4]}}"#, 4));
    check_safetensors(&h(r#"{"a":["F32",[1],[0,4]]}"#, 4));
    // Found by `safetensors_structured`: a dtype the loader does not convert has its shape
    // unchecked against its bytes, and `get` computed the shape's element count (overflowing
    // here) and asserted its byte size (wrong for any such dtype) before refusing the dtype:
    // both panicked in builds with debug assertions.
    check_safetensors(&h(r#"{"a":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}}"#, 4));
    check_safetensors(&h(r#"{"a":{"dtype":"I8","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#, 0));
}

#[test]
fn edge_configs() {
    let base = || json!({"vocab_size": 10, "n_positions": 8, "n_embd": 8, "n_layer": 1, "n_head": 2});
    let with = |k: &str, v: Value| {
        let mut c = base();
        c[k] = v;
        serde_json::to_vec(&c).unwrap()
    };
    check_config(&serde_json::to_vec(&base()).unwrap());
    check_config(&with("n_inner", Value::Null));
    check_config(&with("n_positions", Value::Null));
    check_config(&with("n_head", json!(0)));
    check_config(&with("n_embd", json!(u64::MAX)));
    // Found by `config_structured`: with `n_inner` absent it is 4 * n_embd, which wrapped (to
    // a small number: the config was accepted) or, with debug assertions, panicked.
    check_config(&with("n_embd", json!((1u64 << 62) + 2)));
    // ... and `n_inner()` computed 4 * n_embd even when `n_inner` was given (overflow panic with
    // debug assertions).
    check_config(&{
        let mut c = base();
        c["n_embd"] = json!(1u64 << 62);
        c["n_head"] = json!(1);
        c["n_inner"] = json!(0);
        serde_json::to_vec(&c).unwrap()
    });
    check_config(&{
        let mut c = base();
        c["n_embd"] = json!(15911958713469153165u64);
        c["n_head"] = json!(5);
        serde_json::to_vec(&c).unwrap()
    });
    check_config(&with("layer_norm_epsilon", json!(1e39)));
    check_config(&with("layer_norm_epsilon", json!(-0.0)));
    check_config(b"\xff\xfe{}");
    check_config(b"[]");
}

#[test]
fn edge_tokens() {
    check_encode("");
    check_encode("<|endoftext|><|endoftext|>");
    check_encode(" \u{FFFD}\u{FFFD}");
    // Characters split across tokens, reordered so that they never complete.
    let mut ids = tok().encode("€😀é").unwrap();
    check_incremental(&ids);
    ids.reverse();
    check_incremental(&ids);
    check_incremental(&[]);
    check_incremental(&[u32::MAX]);
    check_incremental(&[50256, 50257, 50256]);
}
