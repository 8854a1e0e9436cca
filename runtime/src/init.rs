//! Deterministic random-weight models of the real GPT-2 shapes, for tests, benchmarks and the
//! embedded default model.
//!
//! The generator is specified so that `tools/reference/hf_reference.py` reproduces it bit for bit
//! with numpy; that is what lets the goldens commit only a seed, the inputs and HF's logits.
//!
//! Spec (keep in sync with `tools/reference/weights.py`):
//! * `splitmix64(z)`: `z += 0x9E3779B97F4A7C15; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
//!   z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31` (wrapping u64 arithmetic).
//! * Tensor key: `splitmix64(seed ^ fnv1a64(name))`, `name` without the `transformer.` prefix.
//! * Element `i`: `u = (splitmix64(key + i) >> 40) as f32 / 2^24`, `x = 2u - 1` (exact, in [-1, 1)).
//! * Value: layer-norm weight `1 + 0.1 x`; layer-norm bias `0.05 x`; other biases `0.02 x`;
//!   `wpe` `0.02 x`; every other weight `0.04 x` (f32 multiply, then f32 add where there is one).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::WeightSource;
use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// A named model shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// 2 layers, 64 wide: fast tests with the real vocabulary.
    Tiny,
    /// GPT-2 124M.
    Gpt2,
    /// DistilGPT-2 (82M): GPT-2 with 6 layers.
    DistilGpt2,
    /// GPT-2 medium (355M).
    Gpt2Medium,
    /// GPT-2 large (774M).
    Gpt2Large,
    /// GPT-2 XL (1558M).
    Gpt2Xl,
}

impl Preset {
    pub const ALL: [Preset; 6] =
        [Preset::Tiny, Preset::Gpt2, Preset::DistilGpt2, Preset::Gpt2Medium, Preset::Gpt2Large, Preset::Gpt2Xl];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::Gpt2 => "gpt2",
            Preset::DistilGpt2 => "distilgpt2",
            Preset::Gpt2Medium => "gpt2-medium",
            Preset::Gpt2Large => "gpt2-large",
            Preset::Gpt2Xl => "gpt2-xl",
        }
    }

    pub fn from_name(s: &str) -> Result<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
            Error::Invalid(format!("unknown preset '{s}' (expected one of: {})", names.join(", ")))
        })
    }

    pub fn config(self) -> Config {
        let (n_embd, n_layer, n_head, n_positions) = match self {
            Preset::Tiny => (64, 2, 4, 128),
            Preset::Gpt2 => (768, 12, 12, 1024),
            Preset::DistilGpt2 => (768, 6, 12, 1024),
            Preset::Gpt2Medium => (1024, 24, 16, 1024),
            Preset::Gpt2Large => (1280, 36, 20, 1024),
            Preset::Gpt2Xl => (1600, 48, 25, 1024),
        };
        Config {
            vocab_size: 50257,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            layer_norm_epsilon: 1e-5,
            activation_function: "gelu_new".into(),
            model_type: Some("gpt2".into()),
            architectures: Some(vec!["GPT2LMHeadModel".into()]),
            eos_token_id: Some(50256),
        }
    }
}

/// Every parameter tensor of a GPT-2 model: canonical name and shape, in checkpoint order.
/// `Conv1D` weights are `[in, out]`, as HuggingFace stores them.
pub fn parameter_shapes(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (e, i) = (c.n_embd, c.n_inner());
    let mut v =
        vec![("wte.weight".to_string(), vec![c.vocab_size, e]), ("wpe.weight".to_string(), vec![c.n_positions, e])];
    for l in 0..c.n_layer {
        let p = |s: &str| format!("h.{l}.{s}");
        v.extend([
            (p("ln_1.weight"), vec![e]),
            (p("ln_1.bias"), vec![e]),
            (p("attn.c_attn.weight"), vec![e, 3 * e]),
            (p("attn.c_attn.bias"), vec![3 * e]),
            (p("attn.c_proj.weight"), vec![e, e]),
            (p("attn.c_proj.bias"), vec![e]),
            (p("ln_2.weight"), vec![e]),
            (p("ln_2.bias"), vec![e]),
            (p("mlp.c_fc.weight"), vec![e, i]),
            (p("mlp.c_fc.bias"), vec![i]),
            (p("mlp.c_proj.weight"), vec![i, e]),
            (p("mlp.c_proj.bias"), vec![e]),
        ]);
    }
    v.push(("ln_f.weight".into(), vec![e]));
    v.push(("ln_f.bias".into(), vec![e]));
    v
}

pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The values of tensor `name` with `len` elements, per the spec above.
pub fn tensor_values(seed: u64, name: &str, len: usize) -> Vec<f32> {
    tensor_values_range(seed, name, 0..len)
}

/// Elements `range` of [`tensor_values`] (each element depends only on its index).
pub fn tensor_values_range(seed: u64, name: &str, range: std::ops::Range<usize>) -> Vec<f32> {
    let key = splitmix64(seed ^ fnv1a64(name));
    let is_ln = name.contains("ln_");
    let (scale, offset) = match () {
        _ if is_ln && name.ends_with(".weight") => (0.1f32, 1.0f32),
        _ if is_ln => (0.05, 0.0),
        _ if name.ends_with(".bias") => (0.02, 0.0),
        _ if name == "wpe.weight" => (0.02, 0.0),
        _ => (0.04, 0.0),
    };
    let mut out = vec![0.0f32; range.len()];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        for (j, v) in chunk.iter_mut().enumerate() {
            let i = range.start + (c << 16) + j;
            let u = (splitmix64(key.wrapping_add(i as u64)) >> 40) as f32 * (1.0 / 16_777_216.0);
            let x = 2.0 * u - 1.0;
            *v = if offset != 0.0 { x * scale + offset } else { x * scale };
        }
    });
    out
}

/// Random weights, generated on demand: each tensor exists in f32 only while the model packs
/// it, so peak memory is the packed model plus one tensor.
pub struct RandomWeights {
    seed: u64,
    shapes: HashMap<String, Vec<usize>>,
}

impl RandomWeights {
    pub fn new(config: &Config, seed: u64) -> RandomWeights {
        RandomWeights { seed, shapes: parameter_shapes(config).into_iter().collect() }
    }
}

impl WeightSource for RandomWeights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let want = self
            .shapes
            .get(name)
            .ok_or_else(|| Error::MissingTensor { path: "<random weights>".into(), name: name.into() })?;
        debug_assert_eq!(want.as_slice(), shape);
        Ok(tensor_values(self.seed, name, shape.iter().product()))
    }

    fn get_rows(&self, name: &str, shape: [usize; 2], rows: Range<usize>) -> Result<Vec<f32>> {
        let want = self
            .shapes
            .get(name)
            .ok_or_else(|| Error::MissingTensor { path: "<random weights>".into(), name: name.into() })?;
        debug_assert_eq!(want.as_slice(), shape);
        Ok(tensor_values_range(self.seed, name, rows.start * shape[1]..rows.end * shape[1]))
    }
}

/// On-disk weight precision for [`write_model_dir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    F16,
    Bf16,
}

/// Writes a complete HuggingFace GPT-2 directory: `config.json`, `model.safetensors` (names with
/// the `transformer.` prefix, as `save_pretrained` writes them) and the GPT-2 tokenizer files.
pub fn write_model_dir(dir: &Path, config: &Config, seed: u64, dtype: StoreDtype) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut json = serde_json::to_value(config).expect("config serialises");
    json["torch_dtype"] = match dtype {
        StoreDtype::F32 => "float32",
        StoreDtype::F16 => "float16",
        StoreDtype::Bf16 => "bfloat16",
    }
    .into();
    json["inferneo_init_seed"] = seed.into();
    // HuggingFace's own GPT-2 configs carry the legacy `n_ctx` too, and some tools (llama.cpp's
    // GGUF converter) read only that.
    json["n_ctx"] = config.n_positions.into();
    write(&dir.join("config.json"), serde_json::to_string_pretty(&json).expect("json").as_bytes())?;
    let shapes = parameter_shapes(config);
    let bytes: Vec<Vec<u8>> = shapes
        .par_iter()
        .map(|(name, shape)| {
            let v = tensor_values(seed, name, shape.iter().product());
            match dtype {
                StoreDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                StoreDtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                StoreDtype::Bf16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
            }
        })
        .collect();
    let st_dtype = match dtype {
        StoreDtype::F32 => safetensors::Dtype::F32,
        StoreDtype::F16 => safetensors::Dtype::F16,
        StoreDtype::Bf16 => safetensors::Dtype::BF16,
    };
    let views = shapes
        .iter()
        .zip(&bytes)
        .map(|((name, shape), b)| {
            let view = safetensors::tensor::TensorView::new(st_dtype, shape.clone(), b).expect("consistent view");
            (format!("transformer.{name}"), view)
        })
        .collect::<Vec<_>>();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &path)
        .map_err(|e| Error::Safetensors { path, msg: e.to_string() })?;
    for (name, data) in crate::tokenizer::GPT2_TOKENIZER_FILES {
        write(&dir.join(name), data)?;
    }
    Ok(())
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each preset's parameter count is the published one of the model it is named after
    /// (HuggingFace's `num_parameters()` of gpt2, distilgpt2, gpt2-medium, -large, -xl).
    #[test]
    fn presets_have_the_published_parameter_counts() {
        let count = |p: Preset| -> usize {
            parameter_shapes(&p.config()).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
        };
        assert_eq!(count(Preset::Gpt2), 124_439_808);
        assert_eq!(count(Preset::DistilGpt2), 81_912_576);
        assert_eq!(count(Preset::Gpt2Medium), 354_823_168);
        assert_eq!(count(Preset::Gpt2Large), 774_030_080);
        assert_eq!(count(Preset::Gpt2Xl), 1_557_611_200);
        let xl = Preset::Gpt2Xl.config();
        assert_eq!((xl.n_layer, xl.n_embd, xl.n_head, xl.n_positions, xl.vocab_size), (48, 1600, 25, 1024, 50257));
    }

    #[test]
    fn every_preset_round_trips_by_name() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()).unwrap(), p);
        }
        let err = Preset::from_name("gpt2-xxl").unwrap_err().to_string();
        assert!(err.contains("gpt2-xxl") && err.contains("gpt2-xl"), "{err}");
    }
}
