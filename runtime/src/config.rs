//! GPT-2 hyper-parameters from a HuggingFace `config.json`.
//!
//! Field names are HuggingFace's (`n_embd` = d_model, `n_inner` = MLP width, `n_positions` =
//! context length, alias `n_ctx` in old configs). Unknown fields are ignored: real configs carry
//! many (`dtype`/`torch_dtype`, `task_specific_params`, ...).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    /// Context length (very old configs only have `n_ctx`; see [`Config::from_json`]).
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// MLP hidden width; `null` in config.json means `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_eps() -> f32 {
    1e-5
}

fn default_activation() -> String {
    "gelu_new".into()
}

/// Activations computing `gelu_new`'s formula under other names.
const TANH_GELU: [&str; 2] = ["gelu_new", "gelu_pytorch_tanh"];
const ARCHITECTURES: [&str; 2] = ["GPT2LMHeadModel", "GPT2Model"];

impl Config {
    /// Reads and validates `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config = Config::from_json(&text).map_err(|msg| Error::Json { path: path.into(), msg })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Parses config.json text. Real configs often carry both `n_positions` and its old name
    /// `n_ctx`, so `n_ctx` only fills in when `n_positions` is absent.
    pub fn from_json(text: &str) -> Result<Config, String> {
        let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let obj = value.as_object_mut().ok_or("expected a JSON object")?;
        if !obj.contains_key("n_positions") {
            if let Some(n_ctx) = obj.get("n_ctx").cloned() {
                obj.insert("n_positions".into(), n_ctx);
            }
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |msg: String| Err(Error::Unsupported { path: path.into(), msg });
        if let Some(t) = &self.model_type {
            if t != "gpt2" {
                return unsupported(format!("model_type '{t}' (only 'gpt2' is supported)"));
            }
        }
        if let Some(archs) = &self.architectures {
            if !archs.is_empty() && !archs.iter().any(|a| ARCHITECTURES.contains(&a.as_str())) {
                return unsupported(format!("architectures {archs:?} (expected GPT2LMHeadModel)"));
            }
        }
        if !TANH_GELU.contains(&self.activation_function.as_str()) {
            return unsupported(format!(
                "activation_function '{}' (only gelu_new is supported)",
                self.activation_function
            ));
        }
        let bad = |msg: String| Err(Error::Config { path: path.into(), msg });
        // `n_inner()` defaults to 4 * n_embd, which must not overflow.
        if self.n_inner.is_none() && self.n_embd.checked_mul(4).is_none() {
            return bad(format!("n_embd {} is too large", self.n_embd));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.n_inner()),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd {} is not divisible by n_head {}", self.n_embd, self.n_head));
        }
        if !self.layer_norm_epsilon.is_finite() || self.layer_norm_epsilon <= 0.0 {
            return bad(format!("layer_norm_epsilon {} must be positive and finite", self.layer_norm_epsilon));
        }
        Ok(())
    }

    pub fn n_inner(&self) -> usize {
        // Lazily: with `n_inner` set, `n_embd` may be too large to multiply.
        self.n_inner.unwrap_or_else(|| 4 * self.n_embd)
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Number of parameters (tied `lm_head` counted once).
    pub fn n_params(&self) -> usize {
        let (c, i) = (self.n_embd, self.n_inner());
        let block = 2 * 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + (c * i + i) + (i * c + c);
        self.vocab_size * c + self.n_positions * c + self.n_layer * block + 2 * c
    }
}
