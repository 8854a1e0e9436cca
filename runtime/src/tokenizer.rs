//! Text <-> token ids through HuggingFace's `tokenizers` crate, plus UTF-8-safe incremental
//! decoding for streaming.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::BPE;

/// The real GPT-2 tokenizer files, embedded so a fresh clone works offline.
pub const GPT2_TOKENIZER_FILES: [(&str, &[u8]); 5] = [
    ("tokenizer.json", include_bytes!("../../assets/tokenizer.json")),
    ("vocab.json", include_bytes!("../../assets/vocab.json")),
    ("merges.txt", include_bytes!("../../assets/merges.txt")),
    ("tokenizer_config.json", include_bytes!("../../assets/tokenizer_config.json")),
    ("special_tokens_map.json", include_bytes!("../../assets/special_tokens_map.json")),
];

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// No token covers more bytes of input text than this; 0 when that cannot be known.
    max_token_bytes: usize,
    /// Kept: the `tokenizers` crate rebuilds its whole vocabulary map to count it.
    vocab_size: usize,
    /// The end-of-text id: `<|endoftext|>`'s, or what a GGUF file's metadata names.
    eos: Option<u32>,
}

impl Tokenizer {
    fn new(inner: tokenizers::Tokenizer) -> Tokenizer {
        // A normalizer may shrink the text before the model sees it (NFKC turns 3-byte
        // ligatures into 2 letters), which would break the bound; GPT-2's pipeline has none. A
        // vocabulary entry's UTF-8 length is at least the bytes it covers: byte-level BPE writes
        // each input byte as one character of one or two UTF-8 bytes.
        let max_token_bytes = if inner.get_normalizer().is_none() {
            inner.get_vocab(true).keys().map(String::len).max().unwrap_or(0)
        } else {
            0
        };
        let vocab_size = inner.get_vocab_size(true);
        let eos = inner.token_to_id("<|endoftext|>");
        Tokenizer { inner, max_token_bytes, vocab_size, eos }
    }

    /// The embedded GPT-2 tokenizer.
    pub fn gpt2() -> Tokenizer {
        Tokenizer::new(
            tokenizers::Tokenizer::from_bytes(GPT2_TOKENIZER_FILES[0].1).expect("embedded tokenizer.json parses"),
        )
    }

    /// A lower bound on `encode(text).len()`, in O(1): every token covers at most the longest
    /// vocabulary entry's bytes. Lets a server refuse a prompt that cannot fit the context
    /// before paying for its tokenization (seconds of CPU for megabytes of text). 0 when the
    /// tokenizer's normalizer makes the bound unknowable.
    pub fn min_tokens(&self, text: &str) -> usize {
        if self.max_token_bytes == 0 {
            0
        } else {
            text.len().div_ceil(self.max_token_bytes)
        }
    }

    /// From a model directory: `tokenizer.json`, else `vocab.json` + `merges.txt`.
    /// `Ok(None)` when the directory has neither (token-id commands still work).
    pub fn from_dir(dir: &Path) -> Result<Option<Tokenizer>> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            let inner = tokenizers::Tokenizer::from_file(&json)
                .map_err(|e| Error::Tokenizer(format!("{}: {e}", json.display())))?;
            return Ok(Some(Tokenizer::new(inner)));
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if !vocab.exists() || !merges.exists() {
            return Ok(None);
        }
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| Error::Tokenizer(format!("{} + {}: {e}", vocab.display(), merges.display())))?;
        // GPT-2's pipeline: byte-level pre-tokenizer without a prefix space, byte-level decoder.
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
        Ok(Some(Tokenizer::new(inner)))
    }

    /// From a GGUF file's metadata (`tokenizer.ggml.*`), built as GPT-2's `tokenizer.json` is:
    /// a BPE over the token list and merges, the byte-level pre-tokenizer (GPT-2's regex, no
    /// prefix space), byte-level decoder and post-processor, and the control tokens
    /// (`token_type` 3, `<|endoftext|>`) as special added tokens. `Ok(None)` when the file has
    /// no tokenizer; an error for one that is not GPT-2's byte-level BPE.
    pub fn from_gguf_metadata(file: &GgufFile) -> Result<Option<Tokenizer>> {
        let path = file.path().display();
        let err = |msg: String| Error::Tokenizer(format!("{path}: {msg}"));
        let Some(model) = file.metadata("tokenizer.ggml.model") else {
            return Ok(None);
        };
        if model.as_str() != Some("gpt2") {
            return Err(err(format!("tokenizer.ggml.model {model:?} (only \"gpt2\", byte-level BPE, is supported)")));
        }
        // llama.cpp's name for the pre-tokenizer's regex; only GPT-2's own is built here.
        if let Some(pre) = file.metadata("tokenizer.ggml.pre") {
            if !matches!(pre.as_str(), Some("gpt-2" | "default")) {
                return Err(err(format!("tokenizer.ggml.pre {pre:?} (only \"gpt-2\" is supported)")));
            }
        }
        let strings = |key: &str| -> Result<Vec<&str>> {
            let Some(value) = file.metadata(key) else {
                return Err(err(format!("missing {key}")));
            };
            let items = value.as_array().ok_or_else(|| err(format!("{key} is not an array")))?;
            items.iter().map(|v| v.as_str().ok_or_else(|| err(format!("{key} holds a non-string {v:?}")))).collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(tokens.len());
        for (id, &token) in tokens.iter().enumerate() {
            if vocab.insert(token.to_string(), id as u32).is_some() {
                return Err(err(format!("tokenizer.ggml.tokens holds {token:?} twice")));
            }
        }
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) if !b.contains(' ') => Ok((a.to_string(), b.to_string())),
                _ => Err(err(format!("merge {m:?} is not two tokens separated by one space"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| err(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.with_post_processor(Some(ByteLevel::new(true, false, true)));
        // llama.cpp's token types: 3 is CONTROL (special), 4 USER_DEFINED (added, not special).
        let types = match file.metadata("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(Value::Array(types)) if types.len() == tokens.len() => types.iter().map(|t| t.as_u64()).collect(),
            Some(_) => return Err(err("tokenizer.ggml.token_type is not one integer per token".into())),
        };
        let added = |want: u64, special: bool| -> Vec<tokenizers::AddedToken> {
            let of_type = types.iter().zip(&tokens).filter(|(ty, _)| **ty == Some(want));
            of_type.map(|(_, token)| tokenizers::AddedToken::from(token.to_string(), special)).collect()
        };
        inner.add_special_tokens(&added(3, true));
        inner.add_tokens(&added(4, false));
        let mut tok = Tokenizer::new(inner);
        if let Some(id) = file.metadata("tokenizer.ggml.eos_token_id").and_then(Value::as_u64) {
            let id = u32::try_from(id).ok().filter(|&id| (id as usize) < tokens.len());
            tok.eos = Some(id.ok_or_else(|| err("tokenizer.ggml.eos_token_id is outside the vocabulary".into()))?);
        }
        Ok(Some(tok))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The vocabulary entry of each id, as stored (GPT-2's byte-level form: `Ġworld` for
    /// " world"); `None` for an id outside the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The end-of-text id: `<|endoftext|>`'s if the vocabulary has it (a GGUF file's
    /// `tokenizer.ggml.eos_token_id` takes precedence).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
}

/// Turns a growing list of ids into text deltas that never split a UTF-8 character: bytes of an
/// unfinished character are held back until the token that completes it arrives.
#[derive(Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Ids before this index are fully emitted and only kept for context.
    prefix: usize,
    /// Ids from `prefix` to here have been emitted as text.
    read: usize,
}

impl IncrementalDecoder {
    /// Adds `id`; returns the new text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        let fresh = after.get(before.len()..).filter(|d| !d.is_empty() && !after.ends_with('\u{FFFD}'));
        if let Some(delta) = fresh {
            let delta = delta.to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the end of generation).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let before = tok.decode(&self.ids[self.prefix..self.read])?;
        let after = tok.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(after.get(before.len()..).unwrap_or("").to_string())
    }
}
