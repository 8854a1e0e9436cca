//! The one way in for every front (the CLI, the server, the benches): a model source and load
//! options to a loaded model, its tokenizer and the kernels and threads it runs on.
//!
//! Fronts never build a [`Gpt2`] or a [`Tokenizer`] themselves, so the choice of kernels, the
//! embedded-vs-directory rule and the error messages live here once.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::gguf::{self, GgufFile};
use crate::gpt2::Gpt2;
use crate::tokenizer::Tokenizer;
use inferneo_kernels::{Isa, Kernels, WeightDtype};
use std::path::PathBuf;

/// Where a model's weights and tokenizer come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// The built-in GPT-2 of the 124M shape with deterministic random weights (seed
    /// [`crate::gpt2::EMBEDDED_SEED`]) and the real GPT-2 tokenizer: works offline, but its text
    /// is not meaningful language.
    Embedded,
    /// A HuggingFace GPT-2 directory (`config.json`, `model.safetensors`, tokenizer files), or
    /// a llama.cpp GGUF file of a GPT-2 (any path that is a file: see [`crate::gguf`]).
    Dir(PathBuf),
}

impl ModelSource {
    /// `None` is the embedded model.
    pub fn from_path(path: Option<PathBuf>) -> ModelSource {
        path.map_or(ModelSource::Embedded, ModelSource::Dir)
    }

    /// For log lines.
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Embedded => "the embedded GPT-2 (124M shape, random weights)".into(),
            ModelSource::Dir(d) => d.display().to_string(),
        }
    }
}

/// How to load a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// How the weights are held at run time (converted or quantized once, at load); `None`:
    /// as the source stores them (f32 for float weights, a converted directory's own dtype).
    pub dtype: Option<WeightDtype>,
    /// The kernel set; `None`: the process default (`INFERNEO_ISA`, else the best the CPU has).
    pub isa: Option<Isa>,
    /// Threads the model's kernels run on; `None`: as many as rayon's process-wide pool.
    pub threads: Option<usize>,
}

impl LoadOptions {
    /// The kernels these options name; an error if the CPU cannot run them.
    pub fn kernels(&self) -> Result<Kernels> {
        match self.isa {
            None => inferneo_kernels::kernels().map_err(Error::Invalid),
            Some(isa) => {
                Kernels::for_isa(isa).ok_or_else(|| Error::Invalid(format!("this CPU does not support {isa}")))
            }
        }
    }
}

/// A loaded model: the graph (which carries its kernels), its tokenizer if the source has one,
/// and the thread count to run it with.
pub struct Loaded {
    pub model: Gpt2,
    pub tokenizer: Option<Tokenizer>,
    pub threads: usize,
}

/// Loads `source` as `options` say.
pub fn load(source: &ModelSource, options: &LoadOptions) -> Result<Loaded> {
    let kernels = options.kernels()?;
    let threads = match options.threads {
        Some(0) => return Err(Error::Invalid("threads must be > 0".into())),
        Some(n) => n,
        None => rayon::current_num_threads(),
    };
    // The tokenizer first: a bad one fails fast, and the transient memory of parsing it
    // (tens of MB for GPT-2's tokenizer.json) is spent and returned before the weights arrive
    // rather than on top of them.
    let (model, tokenizer) = match source {
        ModelSource::Embedded => {
            let tokenizer = Tokenizer::gpt2();
            (Gpt2::embedded(kernels, options.dtype.unwrap_or_default()), Some(tokenizer))
        }
        ModelSource::Dir(file) if gguf::is_gguf(file) => {
            let tokenizer = Tokenizer::from_gguf_metadata(&GgufFile::open(file)?)?;
            (Gpt2::load_gguf(file, kernels, options.dtype.unwrap_or_default())?, tokenizer)
        }
        ModelSource::Dir(dir) => {
            let tokenizer = Tokenizer::from_dir(dir)?;
            (Gpt2::load_as(dir, kernels, options.dtype)?, tokenizer)
        }
    };
    Ok(Loaded { model, tokenizer, threads })
}

/// The dtype `source` will be served as with `options` (see [`crate::gpt2::served_dtype`]),
/// without loading it: a directory's safetensors header says whether it was converted.
pub fn served_dtype(source: &ModelSource, options: &LoadOptions) -> Result<WeightDtype> {
    match source {
        ModelSource::Dir(dir) if !gguf::is_gguf(dir) => {
            let file = crate::weights::SafetensorsFile::open(&dir.join("model.safetensors"))?;
            crate::gpt2::served_dtype(dir, options.dtype, crate::weights::WeightSource::quantized(&file))
        }
        _ => Ok(options.dtype.unwrap_or_default()),
    }
}

/// The configuration of `source` alone, without its weights (cheap: one small file, or a GGUF
/// file's header).
pub fn load_config(source: &ModelSource) -> Result<Config> {
    match source {
        ModelSource::Embedded => Ok(crate::init::Preset::Gpt2.config()),
        ModelSource::Dir(file) if gguf::is_gguf(file) => GgufFile::open(file)?.config(),
        ModelSource::Dir(dir) => Config::from_file(&dir.join("config.json")),
    }
}

/// The tokenizer of `source` alone, without its weights; an error if it has none.
pub fn load_tokenizer(source: &ModelSource) -> Result<Tokenizer> {
    match source {
        ModelSource::Embedded => Ok(Tokenizer::gpt2()),
        ModelSource::Dir(file) if gguf::is_gguf(file) => Tokenizer::from_gguf_metadata(&GgufFile::open(file)?)?
            .ok_or_else(|| Error::Tokenizer(format!("{}: no tokenizer.ggml.* metadata", file.display()))),
        ModelSource::Dir(dir) => Tokenizer::from_dir(dir)?.ok_or_else(|| {
            Error::Tokenizer(format!("{}: no tokenizer.json or vocab.json + merges.txt", dir.display()))
        }),
    }
}

/// The chat template of `source`: the file `override_file` when given (rendered with the
/// source's special tokens), else the directory's own `chat_template`. `Ok(None)`: the model
/// has none (the embedded GPT-2, like GPT-2 itself, has none).
pub fn load_chat_template(
    source: &ModelSource,
    override_file: Option<&std::path::Path>,
) -> Result<Option<crate::chat::ChatTemplate>> {
    use crate::chat::{self, ChatTemplate};
    match (source, override_file) {
        (ModelSource::Embedded, Some(file)) => {
            let config: serde_json::Value = serde_json::from_slice(crate::tokenizer::GPT2_TOKENIZER_FILES[3].1)
                .map_err(|e| Error::Template(format!("embedded tokenizer_config.json: {e}")))?;
            ChatTemplate::from_file(file, Some(&config)).map(Some)
        }
        (ModelSource::Dir(file), over) if gguf::is_gguf(file) => {
            // A GGUF file carries its template (`tokenizer.chat_template`) and its special
            // tokens in its metadata; the end-of-text token stands for both ends, as in GPT-2.
            let tok = Tokenizer::from_gguf_metadata(&GgufFile::open(file)?)?;
            let eos = tok.and_then(|t| t.id_to_token(t.eos_id()?));
            let specials: Vec<(&'static str, String)> =
                eos.map(|e| vec![("bos_token", e.clone()), ("eos_token", e)]).unwrap_or_default();
            let source = match over {
                Some(path) => Some(
                    std::fs::read_to_string(path).map_err(|e| Error::Template(format!("{}: {e}", path.display())))?,
                ),
                None => gguf::chat_template(file)?,
            };
            source.map(|s| ChatTemplate::new(s, specials)).transpose()
        }
        (ModelSource::Dir(dir), Some(file)) => {
            ChatTemplate::from_file(file, chat::tokenizer_config(dir)?.as_ref()).map(Some)
        }
        (ModelSource::Embedded, None) => Ok(None),
        (ModelSource::Dir(dir), None) => ChatTemplate::from_dir(dir),
    }
}
