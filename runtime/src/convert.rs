//! `inferneo convert`: a float GPT-2 checkpoint directory to a directory whose matrices are
//! stored quantized, loadable as it is wherever a model directory is.
//!
//! The converted `model.safetensors` holds each matrix in its stored quantized form
//! ([`inferneo_kernels::Quantized`]: ISA-independent; each ISA builds its panels from it at
//! load) under `NAME.q8` or `NAME.q4` and `NAME.scale`, one row per output column (the layouts:
//! `weights.rs`), and every other tensor (biases, layer norms, `wpe`) in f32 under its own name. Its `__metadata__` says what it is (`format` [`CONVERTED_FORMAT`], the dtype,
//! the layout version), so a reader never mistakes it for a checkpoint. The values are those the
//! loader computes when it quantizes the f32 checkpoint itself, so a converted model's logits
//! equal the checkpoint's loaded with the same dtype, bit for bit.
//!
//! A new quantized form adds its shapes to `weights.rs` (`stored_values_shape`,
//! `stored_scales_shape`), its bytes to `Conversion::write_values` and its reader to
//! `SafetensorsFile::get_quantized`.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::init::parameter_shapes;
use crate::weights::{
    stored_scales_shape, stored_values_shape, SafetensorsFile, WeightSource, CONVERTED_FORMAT, CONVERTED_VERSION,
    DTYPE_KEY, VERSION_KEY,
};
use inferneo_kernels::{Layout, QuantForm, Quantized, WeightDtype};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The files besides the weights a model directory may have, copied when present: the
/// config, the tokenizer (either form), its settings and the chat template.
const COPIED: [&str; 10] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// Rows (of an `[n, k]` matrix: whole columns) or `[k, n]` rows read at a time: a few MB.
const SLICE_VALUES: usize = 1 << 20;

/// A checked source, ready to be written out converted.
pub struct Conversion {
    dir: PathBuf,
    config: Config,
    file: SafetensorsFile,
    dtype: WeightDtype,
    form: QuantForm,
}

/// What [`Conversion::write`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Bytes of the converted `model.safetensors`.
    pub bytes: u64,
    /// The other files copied.
    pub copied: Vec<String>,
}

/// One tensor of the output, in file order.
struct Planned {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: usize,
}

/// The graph's `[k, n]` of a checkpoint tensor that is a packed matrix: the `Conv1D` weights
/// (stored `[in, out]` = `[k, n]`) and the tied `wte` (`[vocab, n_embd]`, the lm_head's
/// `[n, k]`). `wpe` is 2-D but looked up by row, never multiplied, so it stays f32.
fn matrix_dims(name: &str, shape: &[usize]) -> Option<(usize, usize)> {
    match (name, shape) {
        ("wpe.weight", _) => None,
        ("wte.weight", &[n, k]) => Some((k, n)),
        (_, &[k, n]) => Some((k, n)),
        _ => None,
    }
}

/// The tensors a matrix `name` of `[k, n]` is stored as in `form`, values first.
fn stored_tensors(form: QuantForm, name: &str, k: usize, n: usize) -> Vec<Planned> {
    let values = stored_values_shape(form, k, n).to_vec();
    let scales = stored_scales_shape(form, k, n);
    let dtype = match form {
        QuantForm::Q8 => "I8",
        QuantForm::Q4 => "U8",
    };
    vec![
        Planned { name: format!("{name}.{}", form.name()), dtype, bytes: values.iter().product(), shape: values },
        Planned {
            name: format!("{name}.scale"),
            dtype: "F32",
            bytes: scales.iter().product::<usize>() * 4,
            shape: scales,
        },
    ]
}

/// Fails unless `out` is free for a converted model: absent, or an empty directory.
pub fn check_out(out: &Path) -> Result<()> {
    if out.exists() {
        let empty = out.is_dir() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
        if !empty {
            let taken = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not an empty directory");
            return Err(Error::io(out, taken));
        }
    }
    Ok(())
}

impl Conversion {
    /// Checks that `src` is a float checkpoint directory and `dtype` a quantized dtype.
    pub fn open(src: &Path, dtype: WeightDtype) -> Result<Conversion> {
        let Some(form) = dtype.stored_form() else {
            let quantized: Vec<&str> =
                WeightDtype::ALL.iter().filter(|d| d.stored_form().is_some()).map(|d| d.name()).collect();
            return Err(Error::Invalid(format!(
                "dtype {dtype}: only quantized dtypes are converted ({}); {dtype} is made from the checkpoint at load",
                quantized.join(", ")
            )));
        };
        if crate::gguf::is_gguf(src) {
            return Err(Error::Unsupported {
                path: src.into(),
                msg: "a GGUF file; convert takes a HuggingFace model directory".into(),
            });
        }
        if !src.is_dir() {
            return Err(Error::io(src, std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory")));
        }
        let config = Config::from_file(&src.join("config.json"))?;
        let file = SafetensorsFile::open(&src.join("model.safetensors"))?;
        if let Some(stored) = file.quantized() {
            return Err(Error::Unsupported {
                path: src.into(),
                msg: format!("already converted (to {stored}); convert the original checkpoint"),
            });
        }
        Ok(Conversion { dir: src.into(), config, file, dtype, form })
    }

    /// Writes the converted model into `out`, which must not exist or be an empty directory.
    /// The weights are written under a temporary name and renamed last, so an interrupted
    /// conversion never leaves a `model.safetensors` that looks whole.
    pub fn write(&self, out: &Path) -> Result<Written> {
        check_out(out)?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let partial = out.join("model.safetensors.partial");
        let bytes = self.write_weights(&partial)?;
        self.file.check_unchanged()?;
        let mut copied = Vec::new();
        for name in COPIED {
            let from = self.dir.join(name);
            if from.is_file() {
                std::fs::copy(&from, out.join(name)).map_err(|e| Error::io(&from, e))?;
                copied.push(name.to_string());
            }
        }
        let weights = out.join("model.safetensors");
        std::fs::rename(&partial, &weights).map_err(|e| Error::io(&weights, e))?;
        Ok(Written { bytes, copied })
    }

    fn plan(&self) -> Vec<(String, Vec<usize>, Vec<Planned>)> {
        parameter_shapes(&self.config)
            .into_iter()
            .map(|(name, shape)| {
                let tensors = match matrix_dims(&name, &shape) {
                    Some((k, n)) => stored_tensors(self.form, &name, k, n),
                    None => {
                        let bytes = shape.iter().product::<usize>() * 4;
                        vec![Planned { name: name.clone(), dtype: "F32", shape: shape.clone(), bytes }]
                    }
                };
                (name, shape, tensors)
            })
            .collect()
    }

    fn write_weights(&self, path: &Path) -> Result<u64> {
        let plan = self.plan();
        let mut header = serde_json::Map::new();
        let metadata = BTreeMap::from([
            ("format", CONVERTED_FORMAT.to_string()),
            (DTYPE_KEY, self.dtype.name().to_string()),
            (VERSION_KEY, CONVERTED_VERSION.to_string()),
            (
                "inferneo.layout",
                match self.form {
                    QuantForm::Q8 => "matrices as NAME.q8 (I8 [n, k], each output column's k values contiguous) \
                                      and NAME.scale (F32 [n]; weight = q * scale); other tensors F32 as in the checkpoint",
                    QuantForm::Q4 => "matrices as NAME.q4 (U8 [n, ceil(k/2)]: per output column, values 2j and 2j+1 \
                                      in the low and high nibble of byte j, stored q + 8) and NAME.scale (F32 \
                                      [n, ceil(k/32)]: weight = q * scale of its group of 32 k); other tensors F32 \
                                      as in the checkpoint",
                }
                .to_string(),
            ),
        ]);
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialise"));
        let mut offset = 0usize;
        for t in plan.iter().flat_map(|(_, _, tensors)| tensors) {
            let entry =
                serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes]});
            header.insert(t.name.clone(), entry);
            offset += t.bytes;
        }
        let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).expect("header serialises");
        // As the safetensors crate writes it: the data section starts 8-byte aligned.
        json.resize(json.len().next_multiple_of(8), b' ');
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let io = |e| Error::io(path, e);
        w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&json).map_err(io)?;
        let mut written = 0usize;
        for (name, shape, tensors) in &plan {
            let before = written;
            match matrix_dims(name, shape) {
                Some((k, n)) => self.write_values(&mut w, path, name, k, n, &mut written)?,
                None => {
                    let values = self.file.get(name, shape)?;
                    w.write_all(bytemuck::cast_slice(&values)).map_err(io)?;
                    written += values.len() * 4;
                }
            }
            let want: usize = tensors.iter().map(|t| t.bytes).sum();
            assert_eq!(written - before, want, "convert: tensor '{name}' wrote other than its planned bytes");
        }
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)?;
        Ok(8 + json.len() as u64 + written as u64)
    }

    /// Quantizes matrix `name` (`[k, n]`) as [`Quantized`] does at load, reading its source a
    /// slice at a time, and writes its stored tensors (values, then scales) to `w` (the file
    /// at `out`).
    fn write_values(
        &self,
        w: &mut impl Write,
        out: &Path,
        name: &str,
        k: usize,
        n: usize,
        written: &mut usize,
    ) -> Result<()> {
        let io = |e| Error::io(out, e);
        let mut scales = Vec::with_capacity(n);
        let mut put = |q: &Quantized, w: &mut dyn Write| -> Result<()> {
            match q {
                Quantized::Q8 { q, scale } => {
                    w.write_all(bytemuck::cast_slice(q)).map_err(io)?;
                    *written += q.len();
                    scales.extend_from_slice(scale);
                }
                Quantized::Q4(v) => {
                    // Column by column: nibble pairs along k, then the column's group scales.
                    let (cols, groups) = (v.n(), k.div_ceil(inferneo_kernels::W4_GROUP));
                    let mut bytes = vec![0u8; cols * k.div_ceil(2)];
                    for (c, col) in bytes.chunks_exact_mut(k.div_ceil(2)).enumerate() {
                        for kk in 0..k {
                            let u = (v.q()[kk * cols + c] + 8) as u8;
                            col[kk / 2] |= if kk % 2 == 1 { u << 4 } else { u };
                        }
                        scales.extend((0..groups).map(|g| v.scale()[g * cols + c]));
                    }
                    w.write_all(&bytes).map_err(io)?;
                    *written += bytes.len();
                }
            }
            Ok(())
        };
        match self.file.layout(name) {
            Layout::NK => {
                let step = (SLICE_VALUES / k.max(1)).max(1);
                for c0 in (0..n).step_by(step) {
                    let cols = c0..(c0 + step).min(n);
                    let values = self.file.get_rows(name, [n, k], cols.clone())?;
                    put(&Quantized::quantize(self.form, &values, Layout::NK, k, cols.len()), w)?;
                }
            }
            Layout::KN => {
                let step = (SLICE_VALUES / n.max(1)).max(1);
                let q =
                    Quantized::quantize_kn_rows(self.form, k, n, step, |rows| self.file.get_rows(name, [k, n], rows))?;
                put(&q, w)?;
            }
        }
        w.write_all(bytemuck::cast_slice(&scales)).map_err(io)?;
        *written += scales.len() * 4;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrices_are_the_projections_and_the_tied_embedding() {
        let c = crate::init::Preset::Tiny.config();
        let names: Vec<(String, (usize, usize))> = parameter_shapes(&c)
            .into_iter()
            .filter_map(|(name, shape)| matrix_dims(&name, &shape).map(|d| (name, d)))
            .collect();
        assert_eq!(names.len(), 1 + 4 * c.n_layer);
        assert_eq!(names[0], ("wte.weight".to_string(), (c.n_embd, c.vocab_size)));
        assert!(names.iter().any(|(n, d)| n == "h.1.mlp.c_proj.weight" && *d == (c.n_inner(), c.n_embd)));
        assert!(names.iter().all(|(n, _)| n == "wte.weight" || n.starts_with("h.")));
    }
}
