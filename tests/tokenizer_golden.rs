//! Token ids equal HuggingFace's on a corpus of tricky strings, through both ways a model
//! directory can ship the tokenizer, and streamed decoding never splits a character.

mod common;

use inferneo_runtime::tokenizer::{IncrementalDecoder, GPT2_TOKENIZER_FILES};
use inferneo_runtime::Tokenizer;

fn corpus() -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(common::data_dir().join("tokenizer_corpus.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            (c["text"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

fn dir_with(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in GPT2_TOKENIZER_FILES {
        if files.contains(&name) {
            std::fs::write(dir.path().join(name), data).unwrap();
        }
    }
    dir
}

#[test]
fn ids_match_hf_for_every_tokenizer_source() {
    let json_dir = dir_with(&["tokenizer.json"]);
    let bpe_dir = dir_with(&["vocab.json", "merges.txt"]);
    let sources = [
        ("embedded", Tokenizer::gpt2()),
        ("tokenizer.json", Tokenizer::from_dir(json_dir.path()).unwrap().unwrap()),
        ("vocab.json+merges.txt", Tokenizer::from_dir(bpe_dir.path()).unwrap().unwrap()),
    ];
    let cases = corpus();
    assert!(cases.len() >= 25);
    for (label, tok) in &sources {
        assert_eq!(tok.vocab_size(), 50257, "{label}");
        for (text, want) in &cases {
            assert_eq!(&tok.encode(text).unwrap(), want, "{label}: ids of {text:?}");
            assert_eq!(&tok.decode(want).unwrap(), text, "{label}: decode of {text:?}");
        }
    }
}

#[test]
fn directory_without_tokenizer_files_has_none() {
    let empty = tempfile::tempdir().unwrap();
    assert!(Tokenizer::from_dir(empty.path()).unwrap().is_none());
}

#[test]
fn incremental_decoding_never_splits_characters() {
    let tok = Tokenizer::gpt2();
    for (text, ids) in corpus() {
        let mut dec = IncrementalDecoder::default();
        let mut streamed = String::new();
        for &id in &ids {
            let delta = dec.push(&tok, id).unwrap();
            assert!(!delta.contains('\u{FFFD}') || text.contains('\u{FFFD}'), "split character in {text:?}: {delta:?}");
            streamed.push_str(&delta);
        }
        streamed.push_str(&dec.finish(&tok).unwrap());
        assert_eq!(streamed, text);
    }
}

/// `min_tokens` is a true lower bound (on the corpus, on runs of the characters that merge
/// into the longest tokens, and on text of multi-byte characters), and it is tight enough to
/// refuse a megabyte prompt for a 1024-token context without tokenizing it.
#[test]
fn min_tokens_is_a_lower_bound_that_refuses_huge_prompts() {
    let tok = Tokenizer::gpt2();
    let mut texts: Vec<String> = corpus().into_iter().map(|(t, _)| t).collect();
    texts.extend(["-".repeat(5000), " ".repeat(5000), "=".repeat(3000), "é".repeat(2000), "\u{1F600}".repeat(500)]);
    texts.push("abc".repeat(1000));
    for t in &texts {
        let n = tok.encode(t).unwrap().len();
        assert!(tok.min_tokens(t) <= n, "{} bytes: bound {} > {n} tokens", t.len(), tok.min_tokens(t));
    }
    assert!(tok.min_tokens(&"x".repeat(2 << 20)) > 1024);
}
