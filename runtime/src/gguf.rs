//! GGUF, llama.cpp's model file, for GPT-2: the header, the metadata, the tensor table, and the
//! tensors themselves as f32 under the names the GPT-2 graph asks for.
//!
//! A GGUF file is one header followed by aligned tensor data (the format's spec is
//! `docs/gguf.md` in ggml's repository):
//!
//! ```text
//! "GGUF" | version u32 | tensor count u64 | metadata count u64
//! metadata: (key: string, type: u32, value) x count      string = u64 length + UTF-8 bytes
//! tensor infos: (name: string, n_dims: u32, ne: u64 x n_dims, type: u32, offset: u64) x count
//! padding to `general.alignment` (default 32), then the data; each offset is relative to it
//! ```
//!
//! `ne` lists dimensions fastest-varying first, the reverse of a row-major (PyTorch, safetensors)
//! shape; this module reports and checks shapes row-major, as the rest of the runtime does.
//!
//! The file is read like `weights.rs` reads safetensors, for the same reasons: with `pread`,
//! never mapped (the runtime has no `unsafe`, and a file truncated under a mapping is SIGBUS), a
//! truncated file is a one-line error, and a file whose size or modification time changed
//! while it was read is refused ([`GgufFile::check_unchanged`]).
//!
//! Tensor types: F32, F16, BF16, and llama.cpp's Q8_0 and Q4_0 blocks, all read as f32 (exact:
//! every value of these types is an f32) and then packed as `--dtype` says, like a safetensors
//! checkpoint. So a Q8_0 file served as f32 computes with exactly llama.cpp's dequantized
//! weights; served as `int8`/`w8a8` it is re-quantized per output channel, which adds its own
//! rounding (measured in docs/PERFORMANCE.md).
//!
//! Names: llama.cpp's GPT-2 tensors map one to one onto HuggingFace's (see [`gguf_name`]).
//! HuggingFace's `Conv1D` stores `[in, out]`; `convert_hf_to_gguf.py` transposes the four
//! projection matrices to `nn.Linear`'s `[out, in]`, so they are transposed back here (exact).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::{Stamp, WeightSource};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Versions 2 and 3 share this layout (64-bit counts); version 1 had 32-bit ones.
const VERSIONS: [u32; 2] = [2, 3];
/// Alignment of the data section and of every tensor in it when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are allowed; deeper nesting than this is refused (no GPT-2 file has any).
const MAX_NESTING: usize = 4;
/// How much of the header one `pread` fetches: a GPT-2 vocabulary is ~1 MB of small strings.
const READ_CHUNK: u64 = 1 << 20;

/// One metadata value (the format's 13 types).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer or float type, as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The tensor types this loader reads, by ggml's type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    /// Blocks of 32: an f16 scale `d`, then 32 i8 `q`; value `q * d`.
    Q8_0,
    /// Blocks of 32: an f16 scale `d`, then 16 bytes whose low nibbles are elements 0..16 and
    /// high nibbles 16..32; value `(q - 8) * d`.
    Q4_0,
}

impl TensorType {
    fn from_code(code: u32) -> Option<TensorType> {
        match code {
            0 => Some(TensorType::F32),
            1 => Some(TensorType::F16),
            30 => Some(TensorType::Bf16),
            8 => Some(TensorType::Q8_0),
            2 => Some(TensorType::Q4_0),
            _ => None,
        }
    }

    /// (elements, bytes) per block; a row (`ne[0]`) holds whole blocks.
    fn block(self) -> (u64, u64) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::Bf16 => (1, 2),
            TensorType::Q8_0 => (32, 34),
            TensorType::Q4_0 => (32, 18),
        }
    }
}

/// ggml's name for a type code, for error messages.
fn type_name(code: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(code as usize).map_or_else(|| format!("type {code}"), |n| n.to_string())
}

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (the reverse of the file's `ne`).
    pub shape: Vec<usize>,
    /// ggml type code.
    pub type_code: u32,
    /// Absolute byte range in the file; `end == start` when the type is not one this reads
    /// (its size is then unknown and the tensor is refused if asked for).
    start: u64,
    end: u64,
}

/// An open GGUF file whose header has been read and checked.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    stamp: Stamp,
    version: u32,
    metadata: HashMap<String, Value>,
    tensors: Vec<TensorInfo>,
}

/// Whether `path` names a GGUF file rather than a model directory: any regular file is taken
/// for one (a wrong one then fails on its magic, with a message that says so).
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
}

/// The chat template a GGUF file carries (`tokenizer.chat_template`), if any.
pub fn chat_template(path: &Path) -> Result<Option<String>> {
    let file = GgufFile::open(path)?;
    Ok(file.metadata("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string))
}

fn bad(path: &Path, msg: String) -> Error {
    Error::Gguf { path: path.into(), msg }
}

/// Reads the header front to back, a chunk at a time (one `pread` per MiB rather than per field).
struct Reader<'a> {
    file: &'a File,
    path: &'a Path,
    len: u64,
    /// Position of the next byte to parse.
    pos: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_start: u64,
}

impl Reader<'_> {
    fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// The next `n` bytes, passed to `f`.
    fn take<T>(&mut self, n: u64, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        if n > self.remaining() {
            return Err(bad(
                self.path,
                format!("the file ends inside the header: {} bytes, {} needed (truncated?)", self.len, self.pos + n),
            ));
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos + n > buf_end {
            let size = n.max(READ_CHUNK).min(self.remaining());
            self.buf.resize(size as usize, 0);
            self.file.read_exact_at(&mut self.buf, self.pos).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    bad(self.path, "the file ends inside the header (was it truncated while loading?)".into())
                }
                _ => Error::io(self.path, e),
            })?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        self.pos += n;
        Ok(f(&self.buf[at..at + n as usize]))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N as u64, |b| b.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        let at = self.pos;
        let bytes = self.take(n, <[u8]>::to_vec)?;
        String::from_utf8(bytes).map_err(|_| bad(self.path, format!("the string at byte {at} is not UTF-8")))
    }

    /// A count of items each at least `min_size` bytes long, refused when they cannot fit in
    /// the rest of the file (so a corrupt count never allocates).
    fn count(&mut self, what: &str, min_size: u64) -> Result<usize> {
        let n = self.u64()?;
        if n.checked_mul(min_size).is_none_or(|b| b > self.remaining()) {
            return Err(bad(
                self.path,
                format!(
                    "{what} count {n} does not fit in the {} bytes left in the file (truncated?)",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match u8::from_le_bytes(self.array()?) {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(bad(self.path, format!("bool value {b} at byte {}", self.pos - 1))),
            },
            8 => Value::Str(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(bad(self.path, format!("arrays nested deeper than {MAX_NESTING}")));
                }
                let elem = self.u32()?;
                let min = value_min_size(elem)
                    .ok_or_else(|| bad(self.path, format!("unknown metadata value type {elem} in an array")))?;
                let n = self.count("array", min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(bad(self.path, format!("unknown metadata value type {other}"))),
        })
    }
}

/// The fewest bytes a value of type `ty` takes; `None` for an unknown type.
fn value_min_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

impl GgufFile {
    /// Opens `path` and reads and checks its header: magic, version, metadata, tensor table,
    /// alignment, and that every tensor of a known type lies inside the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let stamp = Stamp::of(&file, path)?;
        let mut r = Reader { file: &file, path, len: stamp.len, pos: 0, buf: Vec::new(), buf_start: 0 };
        if stamp.len < 4 {
            return Err(bad(path, format!("{} bytes, too short for a GGUF file", stamp.len)));
        }
        let magic: [u8; 4] = r.array()?;
        if magic != MAGIC {
            return Err(bad(
                path,
                format!("wrong magic {:?} (a GGUF file starts with \"GGUF\")", String::from_utf8_lossy(&magic)),
            ));
        }
        let version = r.u32()?;
        if !VERSIONS.contains(&version) {
            let hint = if version.swap_bytes() == 3 { " (a big-endian file)" } else { "" };
            return Err(Error::Unsupported {
                path: path.into(),
                msg: format!("GGUF version {version}{hint} (supported: 2 and 3)"),
            });
        }
        let n_tensors = r.count("tensor", 24)?;
        let n_kv = r.count("metadata", 13)?;
        let mut metadata = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let value = r.value(ty, 0).map_err(|e| match e {
                Error::Gguf { path, msg } => Error::Gguf { path, msg: format!("metadata '{key}': {msg}") },
                e => e,
            })?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => return Err(bad(path, format!("general.alignment {v:?} is not a power of two (u32)"))),
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > MAX_DIMS {
                return Err(bad(path, format!("tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS})")));
            }
            let mut ne = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                ne.push(r.u64()?);
            }
            let type_code = r.u32()?;
            let offset = r.u64()?;
            infos.push((name, ne, type_code, offset));
        }
        let data_start = r.pos.next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(n_tensors);
        for (name, ne, type_code, offset) in infos {
            let shape = ne.iter().rev().map(|&d| usize::try_from(d)).collect::<std::result::Result<Vec<_>, _>>();
            let Ok(shape) = shape else {
                return Err(bad(path, format!("tensor '{name}' has dimensions {ne:?} too large for this machine")));
            };
            if offset % alignment != 0 {
                return Err(bad(path, format!("tensor '{name}' at offset {offset} is not {alignment}-byte aligned")));
            }
            let start = data_start.checked_add(offset);
            let mut end = start.unwrap_or(u64::MAX);
            if let Some(ty) = TensorType::from_code(type_code) {
                let bytes = tensor_bytes(ty, &ne).map_err(|msg| bad(path, format!("tensor '{name}': {msg}")))?;
                end = start.and_then(|s| s.checked_add(bytes)).unwrap_or(u64::MAX);
                if end > stamp.len {
                    return Err(bad(
                        path,
                        format!(
                            "tensor '{name}' ends at byte {end}, past the end of the {}-byte file (truncated?)",
                            stamp.len
                        ),
                    ));
                }
            }
            let start = start.unwrap_or(u64::MAX).min(end);
            tensors.push(TensorInfo { name, shape, type_code, start, end });
        }
        Ok(GgufFile { path: path.into(), file, stamp, version, metadata, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.into() })
    }

    /// Fails if the file's size or modification time changed since it was opened.
    pub fn check_unchanged(&self) -> Result<()> {
        if Stamp::of(&self.file, &self.path)? != self.stamp {
            return Err(bad(&self.path, "the file changed while it was being loaded; load it again".into()));
        }
        Ok(())
    }

    /// A metadata integer that must be present.
    fn required_usize(&self, key: &str) -> Result<usize> {
        let v = self.metadata(key).ok_or_else(|| bad(&self.path, format!("missing metadata key '{key}'")))?;
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(&self.path, format!("metadata '{key}' is {v:?}, not a non-negative integer")))
    }

    /// The GPT-2 hyper-parameters from the metadata (`gpt2.*`), checked as a config.json's are.
    /// The vocabulary size is the token list's length, else `token_embd`'s row count.
    pub fn config(&self) -> Result<Config> {
        let arch = self.metadata("general.architecture").and_then(Value::as_str);
        if arch != Some("gpt2") {
            return Err(Error::Unsupported {
                path: self.path.clone(),
                msg: match arch {
                    Some(a) => format!("architecture '{a}' (only 'gpt2' is supported)"),
                    None => "no general.architecture in the metadata (expected 'gpt2')".into(),
                },
            });
        }
        let vocab_size = match self.metadata("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => tokens.len(),
            Some(_) => return Err(bad(&self.path, "tokenizer.ggml.tokens is not an array".into())),
            None => *self.tensor("token_embd.weight")?.shape.first().unwrap_or(&0),
        };
        let eps_key = "gpt2.attention.layer_norm_epsilon";
        let eps = self.metadata(eps_key).ok_or_else(|| bad(&self.path, format!("missing metadata key '{eps_key}'")))?;
        let layer_norm_epsilon =
            eps.as_f64().ok_or_else(|| bad(&self.path, format!("metadata '{eps_key}' is {eps:?}, not a number")))?
                as f32;
        let eos_token_id = self.metadata("tokenizer.ggml.eos_token_id").and_then(Value::as_u64).map(|v| v as u32);
        let config = Config {
            vocab_size,
            n_positions: self.required_usize("gpt2.context_length")?,
            n_embd: self.required_usize("gpt2.embedding_length")?,
            n_layer: self.required_usize("gpt2.block_count")?,
            n_head: self.required_usize("gpt2.attention.head_count")?,
            n_inner: Some(self.required_usize("gpt2.feed_forward_length")?),
            layer_norm_epsilon,
            activation_function: "gelu_new".into(),
            model_type: Some("gpt2".into()),
            architectures: None,
            eos_token_id,
        };
        config.validate(&self.path)?;
        Ok(config)
    }

    /// The tensor `name` (a GGUF name) as f32, row-major.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.tensor(name)?;
        let ty = self.tensor_type(info)?;
        let bytes = self.read_raw(info)?;
        Ok(dequantize(ty, &bytes))
    }

    fn tensor_type(&self, info: &TensorInfo) -> Result<TensorType> {
        TensorType::from_code(info.type_code).ok_or_else(|| Error::Unsupported {
            path: self.path.clone(),
            msg: format!(
                "tensor '{}' has type {} (supported: F32, F16, BF16, Q8_0, Q4_0)",
                info.name,
                type_name(info.type_code)
            ),
        })
    }

    fn read_raw(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        self.read_raw_range(info, info.start..info.end)
    }

    /// Bytes `range` (absolute, inside the tensor's) of `info`'s data.
    fn read_raw_range(&self, info: &TensorInfo, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        debug_assert!(info.start <= range.start && range.end <= info.end);
        let mut bytes = vec![0u8; (range.end - range.start) as usize];
        self.file.read_exact_at(&mut bytes, range.start).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad(
                &self.path,
                format!("the file ends inside tensor '{}' (was it truncated while loading?)", info.name),
            ),
            _ => Error::io(&self.path, e),
        })?;
        Ok(bytes)
    }

    /// GPT-2 ties its output head to the token embedding, and so does our graph. llama.cpp's
    /// converter may still write the head as `output.weight`: accepted only when it holds the
    /// same values as `token_embd.weight` (else this model is not GPT-2 as we run it).
    pub fn check_tied_output(&self) -> Result<()> {
        let Some(output) = self.tensors.iter().find(|t| t.name == "output.weight") else {
            return Ok(());
        };
        let embd = self.tensor("token_embd.weight")?;
        let same = output.shape == embd.shape
            && if output.type_code == embd.type_code {
                self.read_raw(output)? == self.read_raw(embd)?
            } else {
                self.read_f32(&output.name)? == self.read_f32(&embd.name)?
            };
        if !same {
            return Err(Error::Unsupported {
                path: self.path.clone(),
                msg: "output.weight differs from token_embd.weight: an untied output head (GPT-2 ties them)".into(),
            });
        }
        Ok(())
    }
}

/// Bytes a tensor of type `ty` and dimensions `ne` (fastest first) takes.
fn tensor_bytes(ty: TensorType, ne: &[u64]) -> std::result::Result<u64, String> {
    let (block, block_bytes) = ty.block();
    let row = ne.first().copied().unwrap_or(1);
    if row % block != 0 {
        return Err(format!("rows of {row} elements are not whole {block}-element blocks of {ty:?}"));
    }
    let elements = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    elements.and_then(|n| (n / block).checked_mul(block_bytes)).ok_or_else(|| format!("dimensions {ne:?} overflow"))
}

/// `bytes` of type `ty` as f32 (llama.cpp's `dequantize_row_*`; exact for every type).
pub fn dequantize(ty: TensorType, bytes: &[u8]) -> Vec<f32> {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        TensorType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        TensorType::F16 => bytes.chunks_exact(2).map(f16).collect(),
        TensorType::Bf16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        TensorType::Q8_0 => {
            let mut out = Vec::with_capacity(bytes.len() / 34 * 32);
            for block in bytes.chunks_exact(34) {
                let d = f16(block);
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
            out
        }
        TensorType::Q4_0 => {
            let mut out = vec![0.0f32; bytes.len() / 18 * 32];
            for (block, y) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let d = f16(block);
                for (j, &q) in block[2..].iter().enumerate() {
                    y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
                    y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
                }
            }
            out
        }
    }
}

/// The GGUF name of a GPT-2 checkpoint tensor, and whether it is stored transposed (the
/// `Conv1D` projections, which `convert_hf_to_gguf.py` writes as `[out, in]`).
pub fn gguf_name(name: &str) -> Option<(String, bool)> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let (base, transposed) = match stem {
        "wte" => ("token_embd".to_string(), false),
        "wpe" => ("position_embd".to_string(), false),
        "ln_f" => ("output_norm".to_string(), false),
        _ => {
            let rest = stem.strip_prefix("h.")?;
            let (layer, part) = rest.split_once('.')?;
            layer.parse::<usize>().ok()?;
            let (tail, conv) = match part {
                "ln_1" => ("attn_norm", false),
                "attn.c_attn" => ("attn_qkv", true),
                "attn.c_proj" => ("attn_output", true),
                "ln_2" => ("ffn_norm", false),
                "mlp.c_fc" => ("ffn_up", true),
                "mlp.c_proj" => ("ffn_down", true),
                _ => return None,
            };
            (format!("blk.{layer}.{tail}"), conv)
        }
    };
    Some((format!("{base}.{suffix}"), transposed && suffix == "weight"))
}

impl WeightSource for GgufFile {
    /// The projections are stored `[out, in]`, the transpose of the graph's `[k, n]`, as is
    /// the tied embedding (`[vocab, n_embd]`).
    fn layout(&self, name: &str) -> inferneo_kernels::Layout {
        let transposed = gguf_name(name).is_some_and(|(_, t)| t);
        if transposed || name == "wte.weight" {
            inferneo_kernels::Layout::NK
        } else {
            inferneo_kernels::Layout::KN
        }
    }

    fn get_rows(&self, name: &str, shape: [usize; 2], rows: std::ops::Range<usize>) -> Result<Vec<f32>> {
        let (gname, _) =
            gguf_name(name).ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.into() })?;
        let info = self.tensor(&gname)?;
        if info.shape != shape {
            return Err(Error::Shape {
                path: self.path.clone(),
                name: gname,
                got: info.shape.clone(),
                want: shape.to_vec(),
            });
        }
        assert!(rows.end <= shape[0], "get_rows: rows {rows:?} of {shape:?}");
        let ty = self.tensor_type(info)?;
        // A row holds whole blocks (checked at open), so rows are a contiguous run of blocks.
        let (block_elems, block_bytes) = ty.block();
        let row_bytes = shape[1] as u64 / block_elems * block_bytes;
        let bytes = self.read_raw_range(
            info,
            info.start + rows.start as u64 * row_bytes..info.start + rows.end as u64 * row_bytes,
        )?;
        Ok(dequantize(ty, &bytes))
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (gname, transposed) =
            gguf_name(name).ok_or_else(|| Error::MissingTensor { path: self.path.clone(), name: name.into() })?;
        let info = self.tensor(&gname)?;
        // The shape as the file holds it: a Conv1D `[in, out]` is stored `[out, in]`.
        let want: Vec<usize> = if transposed { shape.iter().rev().copied().collect() } else { shape.to_vec() };
        if info.shape != want {
            return Err(Error::Shape { path: self.path.clone(), name: gname, got: info.shape.clone(), want });
        }
        let values = self.read_f32(&gname)?;
        if !transposed {
            return Ok(values);
        }
        let (rows, cols) = (want[0], want[1]); // [out, in] in the file
        let mut t = vec![0.0f32; values.len()];
        for (o, row) in values.chunks_exact(cols).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                t[i * rows + o] = v;
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q8_0_blocks_are_scale_times_signed_bytes() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let want: Vec<f32> = (0..32).map(|j| (j - 16) as f32 * 0.5).collect();
        assert_eq!(dequantize(TensorType::Q8_0, &block), want);
    }

    #[test]
    fn q4_0_low_nibbles_come_first_then_high_nibbles() {
        let mut block = f16_bytes(2.0).to_vec();
        // Byte j: low nibble j, high nibble 15 - j.
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let got = dequantize(TensorType::Q4_0, &block);
        for j in 0..16 {
            assert_eq!(got[j], (j as f32 - 8.0) * 2.0, "element {j}");
            assert_eq!(got[j + 16], ((15 - j) as f32 - 8.0) * 2.0, "element {}", j + 16);
        }
    }

    #[test]
    fn halves_are_exact() {
        let bytes: Vec<u8> = [1.5f32, -0.25].iter().flat_map(|&v| f16_bytes(v)).collect();
        assert_eq!(dequantize(TensorType::F16, &bytes), [1.5, -0.25]);
        let bytes: Vec<u8> = [3.0f32, -2.0].iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
        assert_eq!(dequantize(TensorType::Bf16, &bytes), [3.0, -2.0]);
    }

    #[test]
    fn names_map_onto_llama_cpp_s() {
        assert_eq!(gguf_name("wte.weight"), Some(("token_embd.weight".into(), false)));
        assert_eq!(gguf_name("h.11.attn.c_attn.weight"), Some(("blk.11.attn_qkv.weight".into(), true)));
        assert_eq!(gguf_name("h.0.attn.c_attn.bias"), Some(("blk.0.attn_qkv.bias".into(), false)));
        assert_eq!(gguf_name("h.3.mlp.c_proj.weight"), Some(("blk.3.ffn_down.weight".into(), true)));
        assert_eq!(gguf_name("h.3.ln_2.bias"), Some(("blk.3.ffn_norm.bias".into(), false)));
        assert_eq!(gguf_name("ln_f.weight"), Some(("output_norm.weight".into(), false)));
        assert_eq!(gguf_name("h.x.ln_1.weight"), None);
        assert_eq!(gguf_name("lm_head.weight"), None);
    }

    #[test]
    fn block_sizes_are_checked() {
        assert_eq!(tensor_bytes(TensorType::Q8_0, &[64, 3]), Ok(6 * 34));
        assert_eq!(tensor_bytes(TensorType::Q4_0, &[32]), Ok(18));
        assert!(tensor_bytes(TensorType::Q4_0, &[48, 2]).unwrap_err().contains("whole"));
        assert!(tensor_bytes(TensorType::F32, &[u64::MAX, 2]).unwrap_err().contains("overflow"));
    }
}
