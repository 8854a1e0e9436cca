//! The runtime's error type: every variant names the file, tensor or value at fault, so the CLI
//! and server can print it as one line.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: malformed JSON: {msg}", path.display())]
    Json { path: PathBuf, msg: String },
    #[error("{}: unsupported model: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    #[error("{}: invalid config: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("{}: invalid safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("{}: invalid GGUF file: {msg}", path.display())]
    Gguf { path: PathBuf, msg: String },
    #[error("{}: missing tensor '{name}'", path.display())]
    MissingTensor { path: PathBuf, name: String },
    #[error("{}: tensor '{name}' has shape {got:?}, expected {want:?}", path.display())]
    Shape { path: PathBuf, name: String, got: Vec<usize>, want: Vec<usize> },
    #[error("{}: tensor '{name}' has unsupported dtype {dtype} (supported: F32, F16, BF16)", path.display())]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error(
        "{}: dtype {requested} cannot be served from it: its weights were converted to {stored} by `inferneo convert` \
         (it serves {serves}); convert or load the original checkpoint for {requested}",
        path.display()
    )]
    DtypeMismatch {
        path: PathBuf,
        requested: inferneo_kernels::WeightDtype,
        stored: inferneo_kernels::WeightDtype,
        serves: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("context length exceeded: {need} positions needed, the model has {max}")]
    Context { need: usize, max: usize },
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    Token { id: u32, vocab: usize },
    #[error("KV cache exhausted: {need} blocks needed, {free} free")]
    KvExhausted { need: usize, free: usize },
    #[error("{what}: {source}")]
    Memory { what: String, source: inferneo_kernels::AllocError },
    #[error("cancelled")]
    Cancelled,
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}
