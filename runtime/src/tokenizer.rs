//! Text <-> token ids through HuggingFace's `tokenizers` crate, plus UTF-8-safe incremental
//! decoding for streaming.

use crate::error::{Error, Result};
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
        Tokenizer { inner, max_token_bytes, vocab_size }
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

    /// The id of `<|endoftext|>`, if the vocabulary has it.
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.token_to_id("<|endoftext|>")
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
