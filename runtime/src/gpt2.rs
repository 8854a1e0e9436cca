//! The GPT-2 model: weights by checkpoint name and a batched forward pass that reads like the
//! architecture (llm.c's `gpt2_forward`). No intrinsics here: all arithmetic goes through
//! [`Kernels`].
//!
//! `forward` takes a batch of sequences, each with its own tokens (a prefill chunk or one decode
//! token) and block table in the shared paged KV pool; every linear layer runs once over all
//! rows of the batch. The tables arrive already holding the new positions (the scheduler grows
//! them); the forward pass writes their keys and values and never allocates blocks.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::init::{Preset, RandomWeights};
use crate::kv_cache::{BlockTable, KvCache, KvPool, LayerBlocks};
use crate::weights::{SafetensorsFile, WeightSource};
use inferneo_kernels::{AttentionRows, Epilogue, Kernels, LayerKv, Layout, Norm, PackedKn, Quantized, WeightDtype};
use std::path::Path;

/// Seed of the embedded default model's random weights.
pub const EMBEDDED_SEED: u64 = 0;

/// The f32 source read at a time while a matrix is packed: a slice of whole rows (or, for an
/// `[n, k]` matrix, whole columns) of about this many bytes. Small beside the packed model, so
/// loading peaks at little more than the packed model (the 124M shape's tied `wte` is 154 MB of
/// f32); large enough that the reads stay few (a few dozen per matrix).
const SLICE_BYTES: usize = 4 << 20;

/// Rows of `len` f32 values per slice: [`SLICE_BYTES`] worth, a multiple of 32 (whole panels
/// on every ISA) unless the matrix is shorter.
fn slice_rows(len: usize) -> usize {
    (SLICE_BYTES / (len.max(1) * 4)).max(1).next_multiple_of(32)
}

/// Consecutive ranges of `step` covering `0..len`.
fn slices(len: usize, step: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..len).step_by(step).map(move |s| s..(s + step).min(len))
}

/// The dtype a model is served as: the one asked for, else the one its source stores (f32 for
/// float weights). A converted source (`stored`) serves the dtypes that share its stored
/// weights (`int8` and `w8a8` quantize alike); any other is an error, since its f32 weights
/// are gone.
pub fn served_dtype(path: &Path, requested: Option<WeightDtype>, stored: Option<WeightDtype>) -> Result<WeightDtype> {
    match (requested, stored) {
        (None, None) => Ok(WeightDtype::F32),
        (None, Some(d)) | (Some(d), None) => Ok(d),
        (Some(r), Some(s)) if r.stored_form() == s.stored_form() => Ok(r),
        (Some(requested), Some(stored)) => {
            let serves: Vec<&str> =
                WeightDtype::ALL.iter().filter(|d| d.stored_form() == stored.stored_form()).map(|d| d.name()).collect();
            Err(Error::DtypeMismatch { path: path.into(), requested, stored, serves: serves.join(" or ") })
        }
    }
}

struct LayerNorm {
    weight: Vec<f32>, // [n_embd]
    bias: Vec<f32>,   // [n_embd]
}

/// A GPT-2 `Conv1D`: `y = x W + b` with `W` stored `[in, out]` (the transpose of `nn.Linear`).
/// The weight is packed into the kernels' panel layout (and storage dtype) once, at load; the
/// packed copy replaces the checkpoint's, so the streaming GEMV reads it contiguously.
struct Conv1D {
    weight: PackedKn, // [n_in, n_out], packed
    bias: Vec<f32>,   // [n_out]
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,    // [n_embd, 3 n_embd]: q, k, v side by side
    attn_proj: Conv1D, // [n_embd, n_embd]
    ln_2: LayerNorm,
    c_fc: Conv1D,     // [n_embd, n_inner]
    mlp_proj: Conv1D, // [n_inner, n_embd]
}

pub struct Gpt2 {
    config: Config,
    kernels: Kernels,
    dtype: WeightDtype,
    /// The tied `wte` ([vocab, n_embd]) packed as the lm_head's `[n_embd, vocab]`; embedding
    /// lookups read its columns, so the table is held once.
    lm_head: PackedKn,
    wpe: Vec<f32>, // [n_positions, n_embd]
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

/// Packs matrix `name` (the graph's `[k, n]`) as `dtype`, reading its source a slice at a time
/// so that no more than a slice of it is ever held beside the packed copy: stored quantized
/// columns as they are; an `[n, k]` source in slices of whole columns (each quantized on its
/// own); a `[k, n]` source in slices of whole rows, read twice for a quantized dtype (the
/// column scales, then the values). Every path gives the bits of packing the whole f32 matrix.
fn pack_matrix(
    src: &dyn WeightSource,
    kernels: Kernels,
    dtype: WeightDtype,
    name: &str,
    k: usize,
    n: usize,
) -> Result<PackedKn> {
    let mut b = kernels.pack_builder(k, n, dtype);
    if src.quantized().is_some() {
        // Stored quantized values are a quarter of f32's bytes: slices of as many columns.
        for cols in slices(n, slice_rows(k) * 4) {
            let start = cols.start;
            b.put_quantized(start, &src.get_quantized(name, k, n, cols)?);
        }
        return Ok(b.finish());
    }
    match (src.layout(name), dtype.stored_form()) {
        (Layout::NK, _) => {
            for cols in slices(n, slice_rows(k)) {
                let start = cols.start;
                b.put_columns(start, &src.get_rows(name, [n, k], cols)?);
            }
        }
        (Layout::KN, None) => {
            for rows in slices(k, slice_rows(n)) {
                let start = rows.start;
                b.put_rows(start, &src.get_rows(name, [k, n], rows)?);
            }
        }
        (Layout::KN, Some(form)) => {
            let q = Quantized::quantize_kn_rows(form, k, n, slice_rows(n), |rows| src.get_rows(name, [k, n], rows))?;
            b.put_quantized(0, &q);
        }
    }
    Ok(b.finish())
}

/// Which rows of a sequence's chunk get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// One sequence's part of a batch: its new tokens (a prefill chunk or one decode token), its
/// block table in the pool, already grown to hold them (they are its last `tokens.len()`
/// positions), and which rows need logits.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a BlockTable,
    pub logits: Logits,
}

impl Gpt2 {
    /// Loads a HuggingFace GPT-2 directory (`config.json` + `model.safetensors`), packing the
    /// matrices as `dtype` (f16/bf16 conversion or int8 quantization happens here, once).
    /// A path to a file rather than a directory is read as GGUF ([`Gpt2::load_gguf`]).
    pub fn load(dir: &Path, kernels: Kernels, dtype: WeightDtype) -> Result<Gpt2> {
        Gpt2::load_as(dir, kernels, Some(dtype))
    }

    /// [`Gpt2::load`], where `dtype` `None` serves the dtype the directory stores: f32 for a
    /// float checkpoint, the converted dtype for a directory from `inferneo convert` (see
    /// [`served_dtype`]).
    pub fn load_as(dir: &Path, kernels: Kernels, dtype: Option<WeightDtype>) -> Result<Gpt2> {
        if crate::gguf::is_gguf(dir) {
            return Gpt2::load_gguf(dir, kernels, dtype.unwrap_or_default());
        }
        let config = Config::from_file(&dir.join("config.json"))?;
        let st = dir.join("model.safetensors");
        if !st.exists() && dir.join("pytorch_model.bin").exists() {
            return Err(Error::Unsupported {
                path: dir.join("pytorch_model.bin"),
                msg: "only model.safetensors is supported; convert with transformers' save_pretrained(safe_serialization=True)".into(),
            });
        }
        let file = SafetensorsFile::open(&st)?;
        let dtype = served_dtype(dir, dtype, file.quantized())?;
        let model = Gpt2::from_source(config, &file, kernels, dtype)?;
        file.check_unchanged()?;
        Ok(model)
    }

    /// Loads a llama.cpp GGUF file of a GPT-2 (`general.architecture` "gpt2"): the config from
    /// its metadata, the tensors (F32, F16, BF16, Q8_0, Q4_0) as f32 through the same builder
    /// as a safetensors checkpoint, then packed as `dtype`.
    pub fn load_gguf(path: &Path, kernels: Kernels, dtype: WeightDtype) -> Result<Gpt2> {
        let file = GgufFile::open(path)?;
        let config = file.config()?;
        file.check_tied_output()?;
        let model = Gpt2::from_source(config, &file, kernels, dtype)?;
        file.check_unchanged()?;
        Ok(model)
    }

    /// The built-in GPT-2 124M-shape model with deterministic random weights (not a trained model).
    pub fn embedded(kernels: Kernels, dtype: WeightDtype) -> Gpt2 {
        Gpt2::random(Preset::Gpt2, EMBEDDED_SEED, kernels, dtype)
    }

    /// A model of `preset`'s shape with `init`'s deterministic random weights.
    pub fn random(preset: Preset, seed: u64, kernels: Kernels, dtype: WeightDtype) -> Gpt2 {
        let config = preset.config();
        let weights = RandomWeights::new(&config, seed);
        Gpt2::from_source(config, &weights, kernels, dtype).expect("generated weights are complete")
    }

    /// Builds the model from `src`, packing each matrix as `dtype` a slice at a time. A source
    /// of quantized weights gives them as stored (never as f32): `dtype` must share their form.
    pub fn from_source(config: Config, src: &dyn WeightSource, kernels: Kernels, dtype: WeightDtype) -> Result<Gpt2> {
        if let Some(stored) = src.quantized() {
            served_dtype(Path::new("the weights"), Some(dtype), Some(stored))?;
        }
        let (e, i) = (config.n_embd, config.n_inner());
        let vector = |name: &str, len: usize| src.get(name, &[len]);
        let ln = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm { weight: vector(&format!("{name}.weight"), e)?, bias: vector(&format!("{name}.bias"), e)? })
        };
        let conv = |name: &str, n_in: usize, n_out: usize| -> Result<Conv1D> {
            let weight = pack_matrix(src, kernels, dtype, &format!("{name}.weight"), n_in, n_out)?;
            Ok(Conv1D { weight, bias: vector(&format!("{name}.bias"), n_out)? })
        };
        let blocks = (0..config.n_layer)
            .map(|l| {
                Ok(Block {
                    ln_1: ln(&format!("h.{l}.ln_1"))?,
                    c_attn: conv(&format!("h.{l}.attn.c_attn"), e, 3 * e)?,
                    attn_proj: conv(&format!("h.{l}.attn.c_proj"), e, e)?,
                    ln_2: ln(&format!("h.{l}.ln_2"))?,
                    c_fc: conv(&format!("h.{l}.mlp.c_fc"), e, i)?,
                    mlp_proj: conv(&format!("h.{l}.mlp.c_proj"), i, e)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The tied `wte` ([vocab, n_embd]) is the lm_head's [n_embd, vocab] transposed.
        let lm_head = pack_matrix(src, kernels, dtype, "wte.weight", e, config.vocab_size)?;
        Ok(Gpt2 {
            lm_head,
            dtype,
            wpe: src.get("wpe.weight", &[config.n_positions, e])?,
            ln_f: ln("ln_f")?,
            blocks,
            config,
            kernels,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    /// Bytes of packed matrices held (the bulk of the model's memory).
    pub fn packed_bytes(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                b.c_attn.weight.bytes() + b.attn_proj.weight.bytes() + b.c_fc.weight.bytes() + b.mlp_proj.weight.bytes()
            })
            .sum();
        blocks + self.lm_head.bytes()
    }

    /// One sequence with its own cache: appends `tokens` and returns the requested logits.
    /// On error the cache is as it was.
    pub fn forward_one(&self, cache: &mut KvCache, tokens: &[u32], logits: Logits) -> Result<Vec<f32>> {
        let KvCache { pool, table } = cache;
        let need = table.len() + tokens.len();
        if need > self.config.n_positions {
            return Err(Error::Context { need, max: self.config.n_positions });
        }
        let start = pool.grow(table, tokens.len())?;
        let out = self.forward(pool, &[SeqInput { tokens, cache: table, logits }]);
        if out.is_err() {
            table.truncate(start);
        }
        out
    }

    /// Runs one step over a batch: writes each sequence's new positions' keys and values into
    /// its blocks in `pool` and returns the requested logits rows (`[rows, vocab]`, sequences in
    /// order). Inputs are checked before anything is written.
    pub fn forward(&self, pool: &mut KvPool, seqs: &[SeqInput]) -> Result<Vec<f32>> {
        let c = &self.config;
        let (e, vocab) = (c.n_embd, c.vocab_size);
        for s in seqs {
            if s.tokens.is_empty() {
                return Err(Error::Invalid("a sequence in the batch has no tokens".into()));
            }
            if !pool.holds(s.cache) {
                return Err(Error::Invalid("a block table from another KV pool".into()));
            }
            if s.cache.len() < s.tokens.len() {
                return Err(Error::Invalid(format!(
                    "a block table of {} positions cannot hold {} new tokens: grow it first",
                    s.cache.len(),
                    s.tokens.len()
                )));
            }
            if s.cache.len() > c.n_positions {
                return Err(Error::Context { need: s.cache.len(), max: c.n_positions });
            }
            if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::Token { id, vocab });
            }
        }
        // rows[r] = (sequence index, position) of row r of every activation buffer.
        let mut rows = Vec::new();
        for (si, s) in seqs.iter().enumerate() {
            let start = s.cache.len() - s.tokens.len();
            rows.extend((0..s.tokens.len()).map(|t| (si, start + t)));
        }
        let m = rows.len();
        let k = self.kernels;
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();

        let mut x = vec![0.0f32; m * e]; // [m, n_embd] residual stream
        let wpe = self.wpe.as_slice();
        let mut tok_emb = vec![0.0f32; e];
        for (r, (&tok, &(_, pos))) in tokens.iter().zip(&rows).enumerate() {
            self.lm_head.column_into(tok as usize, &mut tok_emb);
            k.add(&tok_emb, &wpe[pos * e..][..e], &mut x[r * e..][..e]);
        }

        let mut qkv = vec![0.0f32; m * 3 * e]; // [m, 3 n_embd]
        let mut att = vec![0.0f32; m * e]; // [m, n_embd] attention output (heads side by side)
        let mut fc = vec![0.0f32; m * c.n_inner()]; // [m, n_inner]
        for (l, b) in self.blocks.iter().enumerate() {
            self.conv1d_normed(&b.ln_1, &b.c_attn, &x, &mut qkv, Epilogue::STORE);
            for (r, &(si, pos)) in rows.iter().enumerate() {
                let row = &qkv[r * 3 * e..][..3 * e];
                pool.write(seqs[si].cache, l, pos, &row[e..2 * e], &row[2 * e..]);
            }
            self.attention(l, pool, seqs, &rows, &qkv, &mut att);
            self.conv1d(&b.attn_proj, &att, &mut x, Epilogue::ACCUMULATE);
            self.conv1d_normed(&b.ln_2, &b.c_fc, &x, &mut fc, Epilogue::GELU);
            self.conv1d(&b.mlp_proj, &fc, &mut x, Epilogue::ACCUMULATE);
        }

        // Only the rows that need logits go through ln_f and the (large) lm_head.
        let mut wanted = Vec::new();
        let mut r = 0;
        for s in seqs.iter() {
            let n = s.tokens.len();
            match s.logits {
                Logits::None => {}
                Logits::Last => wanted.push(r + n - 1),
                Logits::All => wanted.extend(r..r + n),
            }
            r += n;
        }
        let picked: Vec<f32> = wanted.iter().flat_map(|&r| &x[r * e..][..e]).copied().collect();
        let mut logits = vec![0.0f32; wanted.len() * vocab];
        k.matmul_kn_normed(
            &picked,
            self.norm(&self.ln_f),
            &self.lm_head,
            None,
            &mut logits,
            wanted.len(),
            Epilogue::STORE,
        );
        Ok(logits)
    }

    fn norm<'a>(&self, ln: &'a LayerNorm) -> Norm<'a> {
        Norm { gamma: ln.weight.as_slice(), beta: ln.bias.as_slice(), eps: self.config.layer_norm_epsilon }
    }

    fn conv1d(&self, conv: &Conv1D, x: &[f32], out: &mut [f32], epilogue: Epilogue) {
        let m = x.len() / conv.weight.k();
        self.kernels.matmul_kn(x, &conv.weight, Some(conv.bias.as_slice()), out, m, epilogue);
    }

    /// `conv(layernorm(x))`, the norm fused into the product's activation packing.
    fn conv1d_normed(&self, ln: &LayerNorm, conv: &Conv1D, x: &[f32], out: &mut [f32], epilogue: Epilogue) {
        let m = x.len() / conv.weight.k();
        self.kernels.matmul_kn_normed(x, self.norm(ln), &conv.weight, Some(conv.bias.as_slice()), out, m, epilogue);
    }

    /// Causal multi-head attention of every row against its own sequence's cache.
    fn attention(
        &self,
        layer: usize,
        pool: &KvPool,
        seqs: &[SeqInput],
        rows: &[(usize, usize)],
        qkv: &[f32],
        att: &mut [f32],
    ) {
        let blocks: Vec<(LayerBlocks, LayerBlocks)> =
            seqs.iter().map(|s| (pool.layer_blocks(s.cache, layer, 0), pool.layer_blocks(s.cache, layer, 1))).collect();
        let kv: Vec<LayerKv> = blocks
            .iter()
            .map(|b| match b {
                (LayerBlocks::F32(k), LayerBlocks::F32(v)) => LayerKv::F32 { k: pool.view(k), v: pool.view(v) },
                (LayerBlocks::F16(k), LayerBlocks::F16(v)) => LayerKv::F16 { k: pool.view(k), v: pool.view(v) },
                _ => unreachable!("keys and values share the pool's dtype"),
            })
            .collect();
        let c = &self.config;
        let a = AttentionRows { qkv, rows, kv: &kv, n_head: c.n_head, head_dim: c.head_dim() };
        self.kernels.attention(&a, att);
    }
}
