//! Fuzz targets for the server's input handling, run as ordinary tests on stable Rust with
//! proptest generators, so CI runs them for a bounded time on every change.
//!
//! What is fuzzed:
//! - `api::CompletionRequest::parse`, the `/v1/completions` body parser and validator, on
//!   (a) arbitrary bytes that happen to be JSON, (b) valid request bodies with bytes flipped,
//!   inserted and deleted, and (c) JSON objects built from the real field names with values of
//!   every JSON type: extreme numbers (`1e308`, `-1`, `u64::MAX`, `i64::MIN`), huge and negative
//!   token ids, empty and over-long strings, bounded nesting, odd `logit_bias` keys, extra keys.
//! - `stop::StopMatcher`, the stop-string matcher behind streaming, on random stop lists
//!   (empty strings, multi-byte UTF-8, stops that overlap or contain each other) and random
//!   sequences of text deltas.
//!
//! The property: no input panics or allocates without bound; a rejected request is a clean
//! 400 `ApiError` naming a real parameter, and an accepted one respects the limits the parser
//! documents (`MAX_N`, `MAX_PROMPTS`, `MAX_STOP`, ...). The matcher's contract, from
//! `stop.rs`: the text released is exactly the input up to the first stop string to complete
//! (so no stop string is ever sent, even in part, and the text before it always is), what it
//! holds back is a proper prefix of a stop string, and `flush` returns the rest.
//!
//! The case counts are sized for under ten seconds in `cargo test --release` on two cores;
//! for a longer run set `INFERNEO_FUZZ_CASES` (cases per target), e.g.
//! `INFERNEO_FUZZ_CASES=300000 cargo test --release -p inferneo-server --test fuzz`. Running
//! without `--release` (the test profile is optimized too) adds debug assertions and overflow
//! checks, which catch more. A failure prints the shrunk input; keep it as an explicit test at
//! the end of this file.

use inferneo_server::api::{
    ChatRequest, CompletionRequest, Prompt, DEFAULT_MAX_TOKENS, MAX_LOGPROBS, MAX_N, MAX_PROMPTS, MAX_STOP,
    MAX_STOP_BYTES,
};
use inferneo_server::stop::StopMatcher;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Cases per target: `default`, or `INFERNEO_FUZZ_CASES` when set.
fn cases(default: u32) -> u32 {
    std::env::var("INFERNEO_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn config(default_cases: u32) -> ProptestConfig {
    // Failures are kept as explicit tests at the end of the file, not in a regressions file.
    ProptestConfig { cases: cases(default_cases), failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Generators for completion requests.

/// The request fields `parse` reads (plus `include_usage`, inside `stream_options`): an
/// error's `param` must be one of them.
const PARAMS: [&str; 22] = [
    "prompt",
    "max_tokens",
    "n",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "stream",
    "stream_options",
    "include_usage",
    "logprobs",
    "echo",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "best_of",
    "suffix",
    "model",
    "user",
    "ignore_eos",
    "min_tokens",
];

/// Numbers at and around every limit in `api.rs`, the extremes JSON can hold, and random ones.
fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(-2),
            json!(2),
            json!(MAX_N),
            json!(MAX_N + 1),
            json!(MAX_LOGPROBS),
            json!(MAX_LOGPROBS + 1),
            json!(50256),
            json!(50257),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(1u64 << 63),
            json!(1e308),
            json!(-1e308),
            json!(5e-324),
            json!(1e-46),
            json!(-0.0),
            json!(0.0),
            json!(0.5),
            json!(1.0),
            json!(1.5),
            json!(2.0),
            json!(2.0000001),
            json!(-2.0000001),
            json!(100.0),
            json!(100.00001),
            json!(-100.0),
            json!(3.4e38),
            json!(3.5e38),
            json!(9.3e18),
            json!(-9.3e18),
            json!(9007199254740993.0),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("JSON has no NaN or infinity", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        (-3.0f64..3.0).prop_map(Value::from),
        (-2i64..40).prop_map(Value::from),
    ]
    .boxed()
}

/// Strings: empty, ASCII, arbitrary Unicode, multi-byte runs just around `MAX_STOP_BYTES`.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        Just(String::new()),
        "[a-z ]{1,8}",
        ".{0,12}",
        prop::sample::select(vec!["é", "😀", "\n", "\0", "<|endoftext|>", "\u{FFFD}"]).prop_map(String::from),
        "[a-z]{250,260}",
        "é{125,130}",
    ]
    .boxed()
}

/// Object keys: the real field names (so extra keys can collide with them) or anything.
fn key() -> BoxedStrategy<String> {
    prop_oneof![prop::sample::select(PARAMS.to_vec()).prop_map(String::from), "[a-z_]{1,10}", ".{0,6}"].boxed()
}

/// Any JSON value, nested at most 4 deep.
fn any_json() -> BoxedStrategy<Value> {
    let leaf =
        prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::Bool), number(), text().prop_map(Value::String),];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A field's value: mostly one the parser accepts (so that the checks after it are reached),
/// often one of the right JSON type but any size, sometimes anything at all.
fn field(valid: BoxedStrategy<Value>, typed: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![12 => valid, 2 => typed, 1 => any_json()].boxed()
}

fn int(range: std::ops::RangeInclusive<i64>) -> BoxedStrategy<Value> {
    range.prop_map(Value::from).boxed()
}

fn float(range: std::ops::RangeInclusive<f64>) -> BoxedStrategy<Value> {
    range.prop_map(Value::from).boxed()
}

fn numeric(valid: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    field(valid, number())
}

/// Token ids: in the vocabulary or any integer (`valid`: the parser takes any i64 here and
/// leaves the vocabulary check to the model), or any number at all (negative, huge, fractional).
fn ids(len: std::ops::Range<usize>, valid: bool) -> BoxedStrategy<Value> {
    let id = if valid {
        prop_oneof![3 => (0i64..50257).prop_map(Value::from), 1 => any::<i64>().prop_map(Value::from)].boxed()
    } else {
        prop_oneof![(0i64..50257).prop_map(Value::from), number()].boxed()
    };
    prop::collection::vec(id, len).prop_map(Value::Array).boxed()
}

fn strings(len: std::ops::Range<usize>) -> BoxedStrategy<Value> {
    prop::collection::vec(text().prop_map(Value::String), len).prop_map(Value::Array).boxed()
}

fn prompt() -> BoxedStrategy<Value> {
    let valid = prop_oneof![
        "\\PC{1,12}".prop_map(Value::String),
        prop::collection::vec("\\PC{1,8}".prop_map(Value::String), 1..=MAX_PROMPTS).prop_map(Value::Array),
        ids(1..40, true),
        prop::collection::vec(ids(1..6, true), 1..=MAX_PROMPTS).prop_map(Value::Array),
    ];
    let typed = prop_oneof![
        text().prop_map(Value::String),
        strings(0..70),
        ids(0..40, false),
        prop::collection::vec(ids(0..6, false), 0..70).prop_map(Value::Array),
        prop::collection::vec(any_json(), 0..4).prop_map(Value::Array),
    ];
    field(valid.boxed(), typed.boxed())
}

fn stop() -> BoxedStrategy<Value> {
    let one = "\\PC{1,6}".prop_map(Value::String);
    let valid = prop_oneof![one.clone(), prop::collection::vec(one, 0..=MAX_STOP).prop_map(Value::Array)];
    field(valid.boxed(), prop_oneof![text().prop_map(Value::String), strings(0..20)].boxed())
}

fn logit_bias() -> BoxedStrategy<Value> {
    let object = |k: BoxedStrategy<String>, b: BoxedStrategy<Value>| {
        prop::collection::vec((k, b), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())).boxed()
    };
    let odd_key = prop_oneof![
        prop::sample::select(vec![
            "0",
            "5",
            "-1",
            "+3",
            " 5",
            "5 ",
            "1e3",
            "1.0",
            "007",
            "0x10",
            "",
            "٣",
            "99999999999999999999",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
        ])
        .prop_map(String::from),
        "-?[0-9]{1,20}",
        key(),
    ];
    let bias = prop_oneof![(-100.0f64..=100.0).prop_map(Value::from), number(), any_json()];
    field(
        object(any::<i64>().prop_map(|i| i.to_string()).boxed(), float(-100.0..=100.0)),
        object(odd_key.boxed(), bias.boxed()),
    )
}

fn stream_options() -> BoxedStrategy<Value> {
    let object = |k: BoxedStrategy<String>, v: BoxedStrategy<Value>| {
        prop::collection::vec((k, v), 0..3).prop_map(|kv| Value::Object(kv.into_iter().collect())).boxed()
    };
    field(
        object(Just("include_usage".to_string()).boxed(), any::<bool>().prop_map(Value::Bool).boxed()),
        object(prop_oneof![Just("include_usage".to_string()), key()].boxed(), any_json()),
    )
}

fn boolean() -> BoxedStrategy<Value> {
    field(any::<bool>().prop_map(Value::Bool).boxed(), Just(Value::Null).boxed())
}

fn string() -> BoxedStrategy<Value> {
    field(".{0,12}".prop_map(Value::String).boxed(), text().prop_map(Value::String).boxed())
}

/// A request body: each real field present (with a typed or random value) or absent, then
/// random extra keys, which may overwrite a real one.
fn request() -> impl Strategy<Value = Value> {
    let fields: Vec<(&'static str, BoxedStrategy<Value>)> = vec![
        ("prompt", prompt()),
        ("max_tokens", numeric(prop_oneof![int(0..=4096), int(0..=i64::MAX)].boxed())),
        ("n", numeric(int(1..=MAX_N as i64))),
        ("temperature", numeric(float(0.0..=2.0))),
        ("top_p", numeric(float(1e-9..=1.0))),
        ("top_k", numeric(prop_oneof![int(-1..=100), int(0..=i64::MAX)].boxed())),
        ("stop", stop()),
        ("seed", numeric(prop_oneof![any::<i64>().prop_map(Value::from), any::<u64>().prop_map(Value::from)].boxed())),
        ("stream", boolean()),
        ("stream_options", stream_options()),
        ("logprobs", numeric(int(0..=MAX_LOGPROBS as i64))),
        ("echo", boolean()),
        ("presence_penalty", numeric(float(-2.0..=2.0))),
        ("frequency_penalty", numeric(float(-2.0..=2.0))),
        ("logit_bias", logit_bias()),
        ("best_of", numeric(Just(json!(1)).boxed())),
        ("suffix", field(Just(json!("")).boxed(), text().prop_map(Value::String).boxed())),
        ("model", string()),
        ("user", string()),
        ("ignore_eos", boolean()),
        ("min_tokens", numeric(int(0..=64))),
    ];
    let fields: Vec<_> = fields
        .into_iter()
        .map(|(name, value)| {
            // The prompt is usually there, since without it nothing else is reached.
            let p = if name == "prompt" { 0.95 } else { 0.35 };
            prop::option::weighted(p, value.prop_map(move |v| (name.to_string(), v)))
        })
        .collect();
    let extra = prop::collection::vec((key(), any_json()), 0..3);
    (fields, prop_oneof![3 => Just(Vec::new()), 1 => extra]).prop_map(|(fields, extra)| {
        let mut o: Map<String, Value> = fields.into_iter().flatten().collect();
        o.extend(extra);
        Value::Object(o)
    })
}

/// One edit to a byte string: overwrite, insert or delete at a position.
#[derive(Clone, Debug)]
enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes JSON gives meaning to, so that edits often keep the body parseable.
    let byte = prop_oneof![prop::sample::select(b"{}[]\":,0123456789-+.eEtrufalsn \\".to_vec()), any::<u8>()];
    prop_oneof![
        (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Delete),
    ]
}

fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        match e {
            Edit::Set(i, b) if !bytes.is_empty() => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Edit::Insert(i, b) => {
                let i = i.index(bytes.len() + 1);
                bytes.insert(i, *b);
            }
            Edit::Delete(i) if !bytes.is_empty() => {
                let i = i.index(bytes.len());
                bytes.remove(i);
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The property for `CompletionRequest::parse`.

/// Parses `v` and checks the outcome: a 400 naming a real parameter, or a request within
/// every limit `api.rs` enforces and faithful to the body.
fn check_parse(v: &Value) {
    let parsed = CompletionRequest::parse(v);
    assert_eq!(parsed, CompletionRequest::parse(v), "parse is not deterministic");
    let req = match parsed {
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "{v}: {e}");
            assert!(!e.message.is_empty());
            if let Some(p) = &e.param {
                assert!(PARAMS.contains(&p.as_str()), "{v}: unknown param {p:?}");
            }
            let _ = e.body().to_string();
            return;
        }
        Ok(req) => req,
    };
    let o = v.as_object().expect("only an object parses");
    let get = |k: &str| o.get(k).filter(|v| !v.is_null());

    assert!((1..=MAX_PROMPTS).contains(&req.prompts.len()), "{v}");
    for p in &req.prompts {
        match p {
            Prompt::Text(s) => assert!(!s.is_empty()),
            Prompt::Tokens(t) => assert!(!t.is_empty()),
        }
    }
    // The prompts are the body's, in order.
    let back: Vec<Value> = req
        .prompts
        .iter()
        .map(|p| match p {
            Prompt::Text(s) => json!(s),
            Prompt::Tokens(t) => json!(t),
        })
        .collect();
    match get("prompt").expect("prompt is required") {
        Value::String(s) => assert_eq!(back, vec![json!(s)]),
        Value::Array(items) if items[0].is_number() => assert_eq!(back, vec![Value::Array(items.clone())]),
        Value::Array(items) => assert_eq!(&back, items),
        other => panic!("prompt {other} accepted"),
    }

    assert!((1..=MAX_N).contains(&req.n), "{v}");
    assert!(req.stop.len() <= MAX_STOP, "{v}");
    assert!(req.stop.iter().all(|s| (1..=MAX_STOP_BYTES).contains(&s.len())), "{v}");
    assert!(req.logprobs.is_none_or(|l| l <= MAX_LOGPROBS), "{v}");
    assert!((0.0..=2.0).contains(&req.temperature), "{v}");
    assert!(req.top_p > 0.0 && req.top_p <= 1.0, "{v}");
    assert!((-2.0..=2.0).contains(&req.presence_penalty), "{v}");
    assert!((-2.0..=2.0).contains(&req.frequency_penalty), "{v}");
    assert!(req.logit_bias.iter().all(|(_, b)| (-100.0..=100.0).contains(b)), "{v}");
    assert_eq!(req.logit_bias.len(), get("logit_bias").and_then(Value::as_object).map_or(0, Map::len), "{v}");

    match get("max_tokens") {
        None => assert_eq!(req.max_tokens, DEFAULT_MAX_TOKENS),
        Some(m) => assert_eq!(Some(req.max_tokens as u64), m.as_u64(), "{v}"),
    }
    assert_eq!(req.model.as_deref(), get("model").and_then(Value::as_str), "{v}");
    assert_eq!(req.stream, get("stream").and_then(Value::as_bool).unwrap_or(false), "{v}");
    assert_eq!(req.echo, get("echo").and_then(Value::as_bool).unwrap_or(false), "{v}");
    assert_eq!(req.ignore_eos, get("ignore_eos").and_then(Value::as_bool).unwrap_or(false), "{v}");
    assert!(req.min_tokens <= req.max_tokens, "{v}");
    // Stream options belong to streams.
    assert!(req.stream || get("stream_options").is_none(), "{v}");
    // Refused by name unless they ask for what is implemented anyway.
    assert!(get("best_of").is_none_or(|b| b.as_i64() == Some(1)), "{v}");
    assert!(get("suffix").is_none_or(|s| s.as_str() == Some("")), "{v}");
}

proptest! {
    #![proptest_config(config(50000))]

    /// Arbitrary bytes: nearly all are not JSON (skipped); those that are must parse cleanly.
    #[test]
    fn parse_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            check_parse(&v);
        }
    }

    /// Structured request bodies with random bytes edited: stays near the parser's interesting
    /// paths while covering bodies no structured generator builds.
    #[test]
    fn parse_edited_request_bytes(body in request(), edits in prop::collection::vec(edit(), 1..4)) {
        let mut bytes = serde_json::to_vec(&body).unwrap();
        apply(&mut bytes, &edits);
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            check_parse(&v);
        }
    }

    /// Structured request bodies from the real field names with values of every JSON type.
    #[test]
    fn parse_structured_requests(body in request()) {
        check_parse(&body);
    }

    /// Not an object at all.
    #[test]
    fn parse_any_json(v in any_json()) {
        check_parse(&v);
    }
}

// ---------------------------------------------------------------------------------------------
// `ChatRequest::parse`: chat bodies map onto completion parameters or are refused by name.

/// A message: a role (real, unknown or missing) and content of every shape.
fn message() -> BoxedStrategy<Value> {
    let role = prop_oneof![
        prop::sample::select(vec!["system", "user", "assistant", "tool", "developer", ""]).prop_map(|r| json!(r)),
        any_json(),
    ];
    let part = prop_oneof![
        text().prop_map(|t| json!({"type": "text", "text": t})),
        Just(json!({"type": "image_url", "image_url": {"url": "x"}})),
        any_json(),
    ];
    let content = prop_oneof![
        text().prop_map(Value::String),
        prop::collection::vec(part, 0..3).prop_map(Value::Array),
        any_json()
    ];
    (role, content, any::<bool>())
        .prop_map(|(role, content, with_role)| {
            let mut m = Map::new();
            if with_role {
                m.insert("role".into(), role);
            }
            m.insert("content".into(), content);
            Value::Object(m)
        })
        .boxed()
}

fn chat_request() -> impl Strategy<Value = Value> {
    let messages = prop_oneof![prop::collection::vec(message(), 0..4).prop_map(Value::Array), any_json()];
    (request(), messages, prop::option::of(any_json()), prop::option::of(any_json())).prop_map(|(mut body, m, a, b)| {
        let o = body.as_object_mut().unwrap();
        o.remove("prompt");
        o.insert("messages".into(), m);
        if let Some(a) = a {
            o.insert("max_completion_tokens".into(), a);
        }
        if let Some(b) = b {
            o.insert("top_logprobs".into(), b);
        }
        body
    })
}

proptest! {
    #![proptest_config(config(20000))]

    /// Every chat body parses to a request within the completion limits, or to a 400 whose
    /// parameter is a chat parameter (a message's field named by its index).
    #[test]
    fn chat_bodies_parse_or_name_their_parameter(body in chat_request()) {
        match ChatRequest::parse(&body) {
            Err(e) => {
                prop_assert_eq!(e.status.as_u16(), 400);
                if let Some(p) = &e.param {
                    let known = PARAMS.contains(&p.as_str())
                        || p.starts_with("messages")
                        || ["max_completion_tokens", "top_logprobs", "tools", "functions", "tool_choice",
                            "function_call", "response_format", "audio", "add_generation_prompt"].contains(&p.as_str());
                    prop_assert!(known, "{body}: unknown param {p:?}");
                }
            }
            Ok(r) => {
                prop_assert!(!r.messages.is_empty());
                prop_assert!(r.messages.iter().all(|m| ["system", "user", "assistant"].contains(&m.role.as_str())));
                prop_assert!(r.completion.logprobs.is_none_or(|l| l <= MAX_LOGPROBS));
                prop_assert!(!r.completion.echo);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The stop-string matcher.

/// Characters that make stops overlap and deltas split multi-byte characters' neighbours.
fn small_text(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    let ch = prop::sample::select(vec!['a', 'b', 'a', 'b', 'é', '€', '😀', '\n', ' ']);
    prop::collection::vec(ch, len).prop_map(|c| c.into_iter().collect())
}

fn stops() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof![4 => small_text(0..=5), 1 => ".{0,4}".boxed()], 0..5)
}

fn deltas() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof![4 => small_text(0..=6), 1 => ".{0,6}".boxed()], 0..24)
}

/// Streams `deltas` through a matcher over `stops`, checking the contract after every step.
fn check_stop(stops: &[String], deltas: &[String]) {
    let first_stop = |text: &str| stops.iter().filter_map(|s| text.find(s.as_str())).min();
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    let mut m = StopMatcher::new(stops.to_vec());
    let (mut input, mut out) = (String::new(), String::new());
    for d in deltas {
        input.push_str(d);
        let step = m.push(d);
        out.push_str(&step.emit);
        if step.stopped {
            // Everything before the first stop string to complete, and none of it.
            let at = first_stop(&input).expect("stopped without a stop string in the input");
            assert_eq!(out, input[..at], "stops {stops:?}, deltas {deltas:?}");
            return;
        }
        assert_eq!(first_stop(&input), None, "missed a stop: stops {stops:?}, deltas {deltas:?}");
        assert!(input.starts_with(&out), "released text is not the input's: {stops:?}, {deltas:?}");
        // What is held back is a proper prefix of a stop string: bounded, and only held for
        // a reason.
        let held = &input[out.len()..];
        if stops.is_empty() {
            assert_eq!(held, "");
        } else {
            assert!(held.len() < longest, "held {held:?}: stops {stops:?}, deltas {deltas:?}");
            assert!(
                held.is_empty() || stops.iter().any(|s| s.len() > held.len() && s.starts_with(held)),
                "held {held:?} is not the start of a stop: stops {stops:?}, deltas {deltas:?}"
            );
        }
    }
    out.push_str(&m.flush());
    assert_eq!(out, input, "stops {stops:?}, deltas {deltas:?}");
}

proptest! {
    #![proptest_config(config(80000))]

    #[test]
    fn stop_matcher_releases_exactly_the_text_before_the_first_stop(stops in stops(), deltas in deltas()) {
        check_stop(&stops, &deltas);
    }

    /// Stop strings the API accepts (1 to MAX_STOP_BYTES bytes), some long, fed one byte-ish
    /// piece at a time from a text built to contain them.
    #[test]
    fn stop_matcher_on_text_containing_the_stops(
        stops in prop::collection::vec(small_text(1..=8), 1..MAX_STOP),
        picks in prop::collection::vec((any::<prop::sample::Index>(), small_text(0..=3)), 0..8),
        cuts in prop::collection::vec(0usize..8, 0..40),
    ) {
        let mut text = String::new();
        for (i, filler) in &picks {
            text.push_str(filler);
            text.push_str(&stops[i.index(stops.len())]);
        }
        let chars: Vec<char> = text.chars().collect();
        let mut deltas = Vec::new();
        let mut at = 0usize;
        for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            let end = at.saturating_add(*c).min(chars.len());
            deltas.push(chars[at..end].iter().collect::<String>());
            at = end;
        }
        check_stop(&stops, &deltas);
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs found worth keeping.

#[test]
fn edge_requests() {
    for body in [
        json!({"prompt": [1e308]}),
        json!({"prompt": [[u64::MAX]]}),
        json!({"prompt": [[-1], []]}),
        json!({"prompt": "x", "max_tokens": u64::MAX}),
        json!({"prompt": "x", "max_tokens": i64::MIN}),
        json!({"prompt": "x", "max_tokens": 9.3e18}),
        json!({"prompt": "x", "n": u64::MAX}),
        json!({"prompt": "x", "top_k": i64::MIN}),
        json!({"prompt": "x", "top_p": 1e-46}),
        json!({"prompt": "x", "temperature": 3.5e38}),
        json!({"prompt": "x", "temperature": 2.0000001}),
        json!({"prompt": "x", "seed": -1}),
        json!({"prompt": "x", "seed": 1.5}),
        json!({"prompt": "x", "best_of": 1e308}),
        json!({"prompt": "x", "logit_bias": {"-9223372036854775809": 1}}),
        json!({"prompt": "x", "logit_bias": {"+3": 100.00001}}),
        json!({"prompt": "x", "stop": "é".repeat(129)}),
        json!({"prompt": "x", "stream_options": {"include_usage": null}}),
    ] {
        check_parse(&body);
    }
}

#[test]
fn edge_stops() {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    check_stop(&s(&[""]), &s(&["", "abc"]));
    check_stop(&s(&["", "a"]), &s(&[]));
    check_stop(&s(&["aab", "ab"]), &s(&["a", "a", "a", "b"]));
    check_stop(&s(&["é", "😀b"]), &s(&["😀", "a😀", "b"]));
    check_stop(&s(&["abab"]), &s(&["aba", "bab"]));
}
