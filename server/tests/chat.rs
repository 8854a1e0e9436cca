//! `/v1/chat/completions` and the completions extras that benchmarking tools and OpenAI/vLLM
//! clients rely on (`ignore_eos`, `min_tokens`, `logprobs: 0`, character offsets, the last
//! token in the finishing chunk, `stream_options` only with streams, `/tokenize` token strings,
//! `/v1/models` root), over a real server on loopback.

mod common;

use common::*;
use inferneo_runtime::{ChatMessage, ChatTemplate, ModelSource, Tokenizer};
use inferneo_server::ServerConfig;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::OnceLock;

/// A ChatML-style template that refuses a conversation not starting with a user or system turn.
const TEMPLATE: &str = "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('the first turn must be the user\\'s') }}{% endif %}\
{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The tiny model again, with `chat_template` in its tokenizer_config.json, as HF writes it.
fn chat_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(tiny_dir(0)).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
        let path = d.path().join("tokenizer_config.json");
        let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["chat_template"] = json!(TEMPLATE);
        std::fs::write(&path, config.to_string()).unwrap();
        d
    })
    .path()
    .to_path_buf()
}

fn server() -> &'static TestServer {
    static S: OnceLock<TestServer> = OnceLock::new();
    S.get_or_init(|| {
        let models = vec![spec("chat", ModelSource::Dir(chat_dir())), spec("tiny", ModelSource::Dir(tiny_dir(0)))];
        TestServer::start(ServerConfig { models, ..config() }, true)
    })
}

fn chat(body: Value) -> Value {
    let r = post(server().addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"].as_str().expect("content").to_string()
}

fn chunks(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{}", r.body);
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[test]
fn chat_renders_the_models_template_and_equals_the_completion_of_that_prompt() {
    let s = server();
    let messages = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Name a colour.")];
    let body = json!({
        "model": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
        "max_tokens": 10,
        "temperature": 0,
    });
    let v = chat(body);
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let prompt = ChatTemplate::new(TEMPLATE, vec![]).unwrap().render(&messages, true).unwrap();
    let c = complete(s.addr, json!({"model": "chat", "prompt": prompt, "max_tokens": 10, "temperature": 0}));
    assert_eq!(content(&v), c["choices"][0]["text"].as_str().unwrap());
    assert_eq!(v["usage"], c["usage"]);
    // Content given as text parts is the same conversation.
    let parts = chat(json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
        ],
        "max_completion_tokens": 10,
        "temperature": 0,
    }));
    assert_eq!(content(&parts), content(&v));
}

#[test]
fn chat_streams_concatenate_to_the_answer_with_the_role_first() {
    let body = json!({
        "model": "chat",
        "messages": [{"role": "user", "content": "Once upon a time"}],
        "max_tokens": 12,
        "temperature": 0.8,
        "seed": 11,
        "n": 2,
        "logprobs": true,
        "top_logprobs": 3,
    });
    let plain = chat(body.clone());
    let mut sb = body;
    sb["stream"] = json!(true);
    sb["stream_options"] = json!({"include_usage": true});
    let cs = chunks(&post(server().addr, "/v1/chat/completions", &sb));
    assert_eq!(cs.last().unwrap()["usage"], plain["usage"]);
    for i in 0..2 {
        let mine: Vec<&Value> =
            cs.iter().flat_map(|c| c["choices"].as_array().unwrap()).filter(|c| c["index"] == i).collect();
        assert_eq!(mine[0]["delta"]["role"], "assistant", "{mine:?}");
        assert!(mine[1..].iter().all(|c| c["delta"].get("role").is_none()));
        let text: String = mine.iter().filter_map(|c| c["delta"]["content"].as_str()).collect();
        assert_eq!(text, plain["choices"][i]["message"]["content"].as_str().unwrap());
        let lp: Vec<&Value> = mine.iter().filter_map(|c| c["logprobs"]["content"].as_array()).flatten().collect();
        assert_eq!(lp.len(), plain["choices"][i]["logprobs"]["content"].as_array().unwrap().len());
        assert!(lp.iter().all(|t| t["top_logprobs"].as_array().unwrap().len() == 3));
        // The finishing chunk carries the last token, as OpenAI's does.
        let last = mine.last().unwrap();
        assert_eq!(last["finish_reason"], plain["choices"][i]["finish_reason"]);
        assert!(!last["delta"]["content"].as_str().unwrap_or("").is_empty(), "{last}");
    }
    assert_eq!(cs[0]["object"], "chat.completion.chunk");
}

#[test]
fn chat_errors_name_the_parameter() {
    let s = server();
    let msgs = |m: Value| json!({"model": "chat", "messages": m});
    for (body, param) in [
        (msgs(json!([])), "messages"),
        (msgs(json!("hi")), "messages"),
        (json!({"model": "chat"}), "messages"),
        (msgs(json!([{"role": "wizard", "content": "x"}])), "messages[0].role"),
        (msgs(json!([{"content": "x"}])), "messages[0].role"),
        (msgs(json!([{"role": "user", "content": 5}])), "messages[0].content"),
        (
            msgs(json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}])),
            "messages[0].content",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
            "tools",
        ),
        (msgs(json!([{"role": "tool", "content": "x"}])), "messages[0].role"),
        // The template's own raise_exception.
        (msgs(json!([{"role": "assistant", "content": "x"}])), "messages"),
        (json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}), "top_logprobs"),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}),
            "max_tokens",
        ),
    ] {
        let e = post(s.addr, "/v1/chat/completions", &body).error(400);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    let e = post(s.addr, "/v1/chat/completions", &msgs(json!([{"role": "assistant", "content": "x"}]))).error(400);
    assert!(e["message"].as_str().unwrap().contains("the first turn must be the user's"), "{e}");
    // GPT-2 has no template: the error says how to give one.
    let e =
        post(s.addr, "/v1/chat/completions", &json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}]}))
            .error(400);
    assert!(e["message"].as_str().unwrap().contains("--chat-template"), "{e}");
    let e =
        post(s.addr, "/v1/chat/completions", &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}))
            .error(404);
    assert!(e["message"].as_str().unwrap().contains("nope"), "{e}");
}

#[test]
fn ignore_eos_and_min_tokens_hold_against_a_model_that_wants_to_stop() {
    let s = server();
    // A bias of 100 makes end-of-text the certain next token: the model wants to stop at once.
    let eos = json!({"50256": 100});
    let usage =
        |v: &Value| (v["usage"]["completion_tokens"].as_u64().unwrap(), v["choices"][0]["finish_reason"].clone());
    let base = json!({"model": "tiny", "prompt": "x", "max_tokens": 7, "temperature": 0, "logit_bias": eos});
    assert_eq!(usage(&complete(s.addr, base.clone())), (1, json!("stop")));
    let mut b = base.clone();
    b["ignore_eos"] = json!(true);
    assert_eq!(usage(&complete(s.addr, b)), (7, json!("length")));
    let mut b = base.clone();
    b["min_tokens"] = json!(4);
    // Four tokens that are not end-of-text, then the end-of-text the bias forces.
    let v = complete(s.addr, b);
    assert_eq!(usage(&v), (5, json!("stop")));
    assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty());
    // The same on the chat endpoint, and when sampling.
    let v = chat(json!({
        "model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 6, "temperature": 1.0,
        "logit_bias": eos, "ignore_eos": true,
    }));
    assert_eq!(usage(&v), (6, json!("length")));
    let e = post(s.addr, "/v1/completions", &json!({"prompt": "x", "max_tokens": 2, "min_tokens": 3})).error(400);
    assert_eq!(e["param"], "min_tokens");
}

#[test]
fn logprobs_always_hold_the_sampled_token() {
    let s = server();
    let v =
        complete(s.addr, json!({"model": "tiny", "prompt": "Hi", "max_tokens": 6, "temperature": 0, "logprobs": 0}));
    let lp = &v["choices"][0]["logprobs"];
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert_eq!(top.len(), 1, "{top:?}");
        assert_eq!(top.get(lp["tokens"][i].as_str().unwrap()), Some(&lp["token_logprobs"][i]));
    }
    // Sampling from a flat distribution: the sampled token is rarely among the top 1, and is
    // listed all the same.
    let v = complete(
        s.addr,
        json!({"model": "tiny", "prompt": "Hi", "max_tokens": 16, "temperature": 2.0, "seed": 3, "logprobs": 1}),
    );
    let lp = &v["choices"][0]["logprobs"];
    let mut beyond_top = 0;
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let top = top.as_object().unwrap();
        assert!((1..=2).contains(&top.len()), "{top:?}");
        assert!(top.contains_key(lp["tokens"][i].as_str().unwrap()), "{top:?} lacks {}", lp["tokens"][i]);
        beyond_top += (top.len() == 2) as usize;
    }
    assert!(beyond_top > 0, "every sampled token was the most likely one: the check above tested nothing");
}

#[test]
fn text_offsets_count_characters() {
    let s = server();
    let tok = Tokenizer::gpt2();
    let e_acute = tok.encode("é").unwrap();
    assert_eq!(e_acute.len(), 1, "'é' is one GPT-2 token");
    let body = json!({
        "model": "tiny", "prompt": "Caf", "max_tokens": 4, "temperature": 0, "logprobs": 1,
        "logit_bias": {e_acute[0].to_string(): 100},
    });
    let v = complete(s.addr, body.clone());
    assert_eq!(v["choices"][0]["text"], "éééé");
    // Two bytes each in UTF-8, one character each.
    assert_eq!(v["choices"][0]["logprobs"]["text_offset"], json!([0, 1, 2, 3]));
    let mut echo = body;
    echo["echo"] = json!(true);
    echo.as_object_mut().unwrap().remove("logprobs");
    assert_eq!(complete(s.addr, echo)["choices"][0]["text"], "Caféééé");
}

#[test]
fn completion_streams_end_with_the_last_token_and_stream_options_need_a_stream() {
    let s = server();
    let body = json!({"model": "tiny", "prompt": "Hello", "max_tokens": 5, "temperature": 0, "stream": true});
    let cs = chunks(&post(s.addr, "/v1/completions", &body));
    assert_eq!(cs.len(), 5, "one chunk per token, the last with finish_reason: {cs:?}");
    let last = &cs[4]["choices"][0];
    assert_eq!(last["finish_reason"], "length");
    assert!(!last["text"].as_str().unwrap().is_empty(), "{last}");
    let e = post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "x", "stream": false, "stream_options": {"include_usage": true}}),
    )
    .error(400);
    assert_eq!(e["param"], "stream_options");
    // vLLM's extra option is accepted with a stream.
    let r = post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true, "continuous_usage_stats": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn tokenize_gives_token_strings_and_models_give_their_root() {
    let s = server();
    let t =
        post(s.addr, "/tokenize", &json!({"model": "tiny", "prompt": "Hello world", "return_token_strs": true})).json();
    assert_eq!(t["tokens"], json!([15496, 995]));
    assert_eq!(t["token_strs"], json!(["Hello", "Ġworld"]));
    let t = post(s.addr, "/tokenize", &json!({"model": "tiny", "prompt": "Hello world"})).json();
    assert_eq!(t["token_strs"], Value::Null);
    post(s.addr, "/tokenize", &json!({"prompt": "x", "return_token_strs": "yes"})).error(400);
    let m = get(s.addr, "/v1/models").json();
    let tiny = m["data"].as_array().unwrap().iter().find(|m| m["id"] == "tiny").unwrap().clone();
    assert_eq!(tiny["root"], tiny_dir(0).display().to_string());
    assert_eq!(tiny["parent"], Value::Null);
    assert_eq!(tiny["max_model_len"], 128);
}

#[test]
fn echo_with_logprobs_scores_the_prompt() {
    let s = server();
    let tok = Tokenizer::gpt2();
    let prompt = "The café is open";
    let ids = tok.encode(prompt).unwrap();
    // Scoring only, as evaluation harnesses do: max_tokens 0.
    let v = complete(s.addr, json!({"model": "tiny", "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 2}));
    assert_eq!(v["choices"][0]["text"], prompt);
    let lp = &v["choices"][0]["logprobs"];
    let pieces: Vec<String> = ids.iter().map(|&i| tok.decode(&[i]).unwrap()).collect();
    assert_eq!(lp["tokens"], json!(pieces));
    assert_eq!(lp["token_logprobs"][0], Value::Null);
    assert_eq!(lp["top_logprobs"][0], Value::Null);
    let offsets: Vec<usize> =
        pieces.iter().scan(0, |o, p| Some(std::mem::replace(o, *o + p.chars().count()))).collect();
    assert_eq!(lp["text_offset"], json!(offsets));
    for i in 1..ids.len() {
        let l = lp["token_logprobs"][i].as_f64().unwrap();
        assert!(l < 0.0, "{lp}");
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert!((2..=3).contains(&top.len()) && top.contains_key(&pieces[i]), "{top:?}");
    }
    // Each prompt token's logprob is the one the model gives that token after the prompt cut
    // before it: force the token there with logit_bias (logprobs are reported before any bias).
    for cut in [1, 3] {
        let forced = complete(
            s.addr,
            json!({"model": "tiny", "prompt": ids[..cut].to_vec(), "max_tokens": 1, "logprobs": 0,
                   "logit_bias": {ids[cut].to_string(): 100}, "temperature": 0}),
        );
        let want = forced["choices"][0]["logprobs"]["token_logprobs"][0].as_f64().unwrap();
        let got = lp["token_logprobs"][cut].as_f64().unwrap();
        assert!((got - want).abs() < 1e-5, "position {cut}: {got} vs {want}");
    }
    // With generation: the echoed prompt, then the same completion as without echo.
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": 1});
    let plain = complete(s.addr, body.clone());
    let mut eb = body.clone();
    eb["echo"] = json!(true);
    let e = complete(s.addr, eb.clone());
    assert_eq!(
        e["choices"][0]["text"].as_str().unwrap(),
        format!("{prompt}{}", plain["choices"][0]["text"].as_str().unwrap())
    );
    let elp = &e["choices"][0]["logprobs"]["token_logprobs"];
    assert_eq!(elp.as_array().unwrap().len(), ids.len() + 4);
    assert_eq!(
        elp.as_array().unwrap()[ids.len()..],
        plain["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap()[..]
    );
    assert_eq!(e["choices"][0]["logprobs"]["text_offset"][ids.len()], json!(prompt.chars().count()));
    // Streamed: the first chunk is the echo with its logprobs; all chunks add up to the same.
    eb["stream"] = json!(true);
    let cs = chunks(&post(s.addr, "/v1/completions", &eb));
    assert_eq!(cs[0]["choices"][0]["text"], prompt);
    assert_eq!(cs[0]["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), ids.len());
    let text: String = cs.iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, e["choices"][0]["text"].as_str().unwrap());
}
