//! Weights: HuggingFace safetensors files, read tensor by tensor as the model packs them.
//!
//! Tensors are looked up by their GPT-2 checkpoint name (`h.0.attn.c_attn.weight`), with or
//! without the `transformer.` prefix that `GPT2LMHeadModel.save_pretrained` adds; anything else
//! in the file (causal-mask buffers `h.N.attn.bias` / `masked_bias`, `lm_head.weight`) is ignored.
//!
//! Why read and not map: a mapped file that is truncated while it is mapped (`cp new.safetensors
//! model.safetensors` truncates in place) kills the process with SIGBUS on the next touch, and
//! one rewritten in place gives a model half old and half new. A server that reloads models
//! from directories users edit must survive both. Read with `pread`, a truncated file is an
//! error, and a file whose size or modification time changed while it was read is refused
//! ([`SafetensorsFile::check_unchanged`]). The cost is one copy from the page cache per tensor,
//! which the packing that follows makes anyway. Matrices are read a slice of rows at a time
//! ([`WeightSource::get_rows`]), so only a few MB of source are held at once.
//!
//! A file written by `inferneo convert` (`__metadata__` `format` = [`CONVERTED_FORMAT`]) holds
//! its matrices quantized instead ([`WeightSource::quantized`]), each output column's values
//! contiguous: int8 and w8a8 as `NAME.q8` (`I8`, `[n, k]`) and `NAME.scale` (`F32`, `[n]`);
//! w4a8 as `NAME.q4` (`U8`, `[n, ceil(k / 2)]`: values `k = 2j` and `2j + 1` of a column in the
//! low and high nibble of its byte `j`, each stored `+ 8`, so `0..=15`) and `NAME.scale` (`F32`,
//! `[n, ceil(k / 32)]`, one per group of 32 k). The vectors (biases, norms, `wpe`) stay f32 under
//! their own names.

use crate::error::{Error, Result};
use inferneo_kernels::{Layout, QuantForm, Quantized, W4Values, WeightDtype, W4_GROUP};
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// `__metadata__` of a converted file: `format` names the format, [`DTYPE_KEY`] the dtype its
/// matrices are quantized for and [`VERSION_KEY`] the version of this layout.
pub const CONVERTED_FORMAT: &str = "inferneo";
pub const DTYPE_KEY: &str = "inferneo.dtype";
pub const VERSION_KEY: &str = "inferneo.version";
/// The only version so far; a reader refuses others.
pub const CONVERTED_VERSION: &str = "1";

/// Where the model's tensors come from: a file, or weights generated in memory.
pub trait WeightSource {
    /// The f32 values of the tensor called `name` (canonical GPT-2 name, no prefix), checked
    /// against `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;

    /// How matrix `name` is stored: `KN` (the graph's `[k, n]`: a checkpoint's `Conv1D`) or
    /// `NK` (its transpose: the tied `wte`, or a GGUF file's projections). [`get_rows`] reads
    /// rows of that layout.
    ///
    /// [`get_rows`]: WeightSource::get_rows
    fn layout(&self, name: &str) -> Layout {
        if name == "wte.weight" {
            Layout::NK
        } else {
            Layout::KN
        }
    }

    /// Rows `rows` of the 2-D tensor `name` whose stored shape is `shape`, as f32
    /// (`[rows.len(), shape[1]]`), reading only those rows.
    fn get_rows(&self, name: &str, shape: [usize; 2], rows: Range<usize>) -> Result<Vec<f32>>;

    /// The dtype this source's matrices were quantized for (a model written by `inferneo
    /// convert`), or `None` when they are floats ([`WeightSource::get_rows`]).
    fn quantized(&self) -> Option<WeightDtype> {
        None
    }

    /// Columns `cols` of matrix `name` (the graph's `[k, n]`) in their stored quantized form.
    /// Only for a source whose [`WeightSource::quantized`] is `Some`.
    fn get_quantized(&self, name: &str, k: usize, n: usize, cols: Range<usize>) -> Result<Quantized> {
        let _ = (k, n, cols);
        Err(Error::Invalid(format!("tensor '{name}': this source holds no quantized weights")))
    }
}

/// The format's own limit on the JSON header (as in the `safetensors` crate).
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// One tensor's entry in the header.
#[derive(Debug)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    /// Byte range in the file.
    start: u64,
    end: u64,
}

/// What identifies a file's contents cheaply: a change to either means it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    pub(crate) fn of(file: &File, path: &Path) -> Result<Stamp> {
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        Ok(Stamp { len: meta.len(), modified: meta.modified().ok() })
    }
}

/// An open `model.safetensors` whose header has been read and checked.
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    entries: Vec<Entry>,
    stamp: Stamp,
    /// Set for a file written by `inferneo convert`.
    quantized: Option<WeightDtype>,
}

/// Bytes per element of the dtypes the loader reads (`I8`: a converted file's matrices).
fn dtype_size(dtype: &str) -> Option<u64> {
    match dtype {
        "F32" => Some(4),
        "F16" | "BF16" => Some(2),
        "I8" | "U8" => Some(1),
        _ => None,
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let stamp = Stamp::of(&file, path)?;
        let mut len_bytes = [0u8; 8];
        if stamp.len < 8 {
            return Err(bad(path, format!("{} bytes, shorter than the 8-byte header length", stamp.len)));
        }
        file.read_exact_at(&mut len_bytes, 0).map_err(|e| Error::io(path, e))?;
        let n = u64::from_le_bytes(len_bytes);
        if n > MAX_HEADER_BYTES {
            return Err(bad(path, format!("a header of {n} bytes (the format's limit is {MAX_HEADER_BYTES})")));
        }
        if 8 + n > stamp.len {
            return Err(bad(path, format!("a header of {n} bytes runs past the end of the {}-byte file", stamp.len)));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8).map_err(|e| Error::io(path, e))?;
        let (entries, metadata) = parse_header(&header, 8 + n, stamp.len).map_err(|msg| bad(path, msg))?;
        let quantized = converted_dtype(&metadata).map_err(|msg| bad(path, msg))?;
        Ok(SafetensorsFile { path: path.into(), file, entries, stamp, quantized })
    }

    /// The entry of tensor `name`, with or without the `transformer.` prefix, checked against
    /// `shape` and for a dtype this reads.
    fn entry(&self, name: &str, shape: &[usize]) -> Result<&Entry> {
        let prefixed = format!("transformer.{name}");
        let Some(entry) = self.entries.iter().find(|e| e.name == name || e.name == prefixed) else {
            return Err(Error::MissingTensor { path: self.path.clone(), name: name.into() });
        };
        if entry.shape != shape {
            return Err(Error::Shape {
                path: self.path.clone(),
                name: entry.name.clone(),
                got: entry.shape.clone(),
                want: shape.to_vec(),
            });
        }
        // Only a dtype this reads had its shape checked against its bytes by `open`: for
        // another, the shape's element count may overflow, so it is refused first.
        if dtype_size(&entry.dtype).is_none() {
            return Err(Error::Dtype { path: self.path.clone(), name: entry.name.clone(), dtype: entry.dtype.clone() });
        }
        Ok(entry)
    }

    /// `buf.len()` bytes of `entry`'s data from byte `offset` within it.
    fn read(&self, entry: &Entry, offset: u64, buf: &mut [u8]) -> Result<()> {
        debug_assert!(entry.start + offset + buf.len() as u64 <= entry.end);
        self.file.read_exact_at(buf, entry.start + offset).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad(
                &self.path,
                format!("the file ends inside tensor '{}' (was it truncated while loading?)", entry.name),
            ),
            _ => Error::io(&self.path, e),
        })
    }

    /// Elements `range` (row-major) of a float tensor, as f32.
    fn read_f32(&self, entry: &Entry, range: Range<usize>) -> Result<Vec<f32>> {
        let len = range.len();
        match entry.dtype.as_str() {
            "F32" => {
                let mut values = vec![0.0f32; len];
                // The format is little-endian, as every target this builds for.
                self.read(entry, range.start as u64 * 4, bytemuck::cast_slice_mut(&mut values))?;
                Ok(values)
            }
            "F16" | "BF16" => {
                let mut bytes = vec![0u8; len * 2];
                self.read(entry, range.start as u64 * 2, &mut bytes)?;
                let halves = bytes.chunks_exact(2).map(|b| [b[0], b[1]]);
                Ok(if entry.dtype == "F16" {
                    halves.map(|b| half::f16::from_le_bytes(b).to_f32()).collect()
                } else {
                    halves.map(|b| half::bf16::from_le_bytes(b).to_f32()).collect()
                })
            }
            other => Err(Error::Dtype { path: self.path.clone(), name: entry.name.clone(), dtype: other.into() }),
        }
    }

    /// Fails if the file's size or modification time changed since it was opened: the
    /// tensors read may then mix two versions of it.
    pub fn check_unchanged(&self) -> Result<()> {
        if Stamp::of(&self.file, &self.path)? != self.stamp {
            return Err(bad(&self.path, "the file changed while it was being loaded; load it again".into()));
        }
        Ok(())
    }
}

fn bad(path: &Path, msg: String) -> Error {
    Error::Safetensors { path: path.into(), msg }
}

/// The dtype a converted file's metadata names, `None` for any other file.
fn converted_dtype(metadata: &HashMap<String, String>) -> std::result::Result<Option<WeightDtype>, String> {
    if metadata.get("format").map(String::as_str) != Some(CONVERTED_FORMAT) {
        return Ok(None);
    }
    let version = metadata.get(VERSION_KEY).map_or("(none)", String::as_str);
    if version != CONVERTED_VERSION {
        return Err(format!(
            "written by inferneo convert in format version {version}; this build reads version {CONVERTED_VERSION}"
        ));
    }
    let name = metadata.get(DTYPE_KEY).ok_or_else(|| format!("converted, but its metadata has no '{DTYPE_KEY}'"))?;
    match name.parse::<WeightDtype>() {
        Ok(d) if d.stored_form().is_some() => Ok(Some(d)),
        _ => Err(format!("its weights are stored as '{name}', which this build cannot load")),
    }
}

type Header = (Vec<Entry>, HashMap<String, String>);

/// The header's tensor entries, each checked (a known dtype's byte size matches its shape, and
/// every range lies in the data section, `data_start..file_len`), and its `__metadata__`.
fn parse_header(header: &[u8], data_start: u64, file_len: u64) -> std::result::Result<Header, String> {
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: (u64, u64),
    }
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("malformed header: {e}"))?;
    let mut entries = Vec::with_capacity(map.len());
    let mut metadata = HashMap::new();
    for (name, value) in map {
        if name == "__metadata__" {
            // The format says string to string; other values were never read, so a file with
            // them still loads.
            if let serde_json::Value::Object(m) = value {
                metadata = m.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_string()))).collect();
            }
            continue;
        }
        let info: Info = serde_json::from_value(value).map_err(|e| format!("tensor '{name}': {e}"))?;
        let (start, end) = info.data_offsets;
        let in_file = end.checked_add(data_start).is_some_and(|e| e <= file_len);
        if start > end || !in_file {
            return Err(format!(
                "tensor '{name}': data offsets {start}..{end} lie outside the {}-byte data section",
                file_len - data_start
            ));
        }
        if let Some(size) = dtype_size(&info.dtype) {
            let bytes = info.shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d as u64));
            if bytes != Some(end - start) {
                return Err(format!(
                    "tensor '{name}': {} of shape {:?} does not take the {} bytes its offsets give",
                    info.dtype,
                    info.shape,
                    end - start
                ));
            }
        }
        entries.push(Entry {
            name,
            dtype: info.dtype,
            shape: info.shape,
            start: data_start + start,
            end: data_start + end,
        });
    }
    Ok((entries, metadata))
}

impl WeightSource for SafetensorsFile {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.entry(name, shape)?;
        self.read_f32(entry, 0..shape.iter().product())
    }

    fn get_rows(&self, name: &str, shape: [usize; 2], rows: Range<usize>) -> Result<Vec<f32>> {
        let entry = self.entry(name, &shape)?;
        assert!(rows.end <= shape[0], "get_rows: rows {rows:?} of {shape:?}");
        self.read_f32(entry, rows.start * shape[1]..rows.end * shape[1])
    }

    fn quantized(&self) -> Option<WeightDtype> {
        self.quantized
    }

    fn get_quantized(&self, name: &str, k: usize, n: usize, cols: Range<usize>) -> Result<Quantized> {
        let Some(dtype) = self.quantized else {
            return Err(bad(&self.path, format!("tensor '{name}': the file holds no quantized weights")));
        };
        assert!(cols.end <= n, "get_quantized: columns {cols:?} of {n}");
        let form = dtype.stored_form().expect("a converted file's dtype is quantized");
        let values = self.entry(&format!("{name}.{}", form.name()), &stored_values_shape(form, k, n))?;
        let scales = self.entry(&format!("{name}.scale"), &stored_scales_shape(form, k, n))?;
        let want = match form {
            QuantForm::Q8 => "I8",
            QuantForm::Q4 => "U8",
        };
        for (e, want) in [(values, want), (scales, "F32")] {
            if e.dtype != want {
                return Err(bad(&self.path, format!("tensor '{}' is {}, not {want}", e.name, e.dtype)));
            }
        }
        let row = values.shape[1];
        let mut bytes = vec![0u8; cols.len() * row];
        self.read(values, (cols.start * row) as u64, &mut bytes)?;
        let groups = scales.shape.get(1).copied().unwrap_or(1);
        let scale = self.read_f32(scales, cols.start * groups..cols.end * groups)?;
        match form {
            QuantForm::Q8 => Ok(Quantized::Q8 { q: bytes.into_iter().map(|b| b as i8).collect(), scale }),
            QuantForm::Q4 => {
                // Stored column by column; `W4Values` holds `[k, cols]` values, `[groups, cols]` scales.
                let c = cols.len();
                let mut q = vec![0i8; k * c];
                for (j, col) in bytes.chunks_exact(row).enumerate() {
                    for kk in 0..k {
                        let b = col[kk / 2];
                        q[kk * c + j] = (if kk % 2 == 1 { b >> 4 } else { b & 0x0f }) as i8 - 8;
                    }
                }
                let mut s = vec![0.0f32; groups * c];
                for (j, col) in scale.chunks_exact(groups).enumerate() {
                    col.iter().enumerate().for_each(|(g, &v)| s[g * c + j] = v);
                }
                W4Values::new(k, c, q, s)
                    .map(Quantized::Q4)
                    .map_err(|e| bad(&self.path, format!("tensor '{name}': {e}")))
            }
        }
    }
}

/// The shape of a matrix's stored values in `form`: one row per output column.
pub fn stored_values_shape(form: QuantForm, k: usize, n: usize) -> [usize; 2] {
    match form {
        QuantForm::Q8 => [n, k],
        QuantForm::Q4 => [n, k.div_ceil(2)],
    }
}

/// The shape of a matrix's stored scales in `form`.
pub fn stored_scales_shape(form: QuantForm, k: usize, n: usize) -> Vec<usize> {
    match form {
        QuantForm::Q8 => vec![n],
        QuantForm::Q4 => vec![n, k.div_ceil(W4_GROUP)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(json: &str) -> Vec<u8> {
        json.as_bytes().to_vec()
    }

    #[test]
    fn header_entries_are_checked_against_the_file() {
        let ok = header(r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#);
        let (e, meta) = parse_header(&ok, 100, 124).unwrap();
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
        assert_eq!((e[0].start, e[0].end, e[0].shape.clone()), (100, 124, vec![2, 3]));
        // Past the end of the file, reversed, or the wrong size for the shape.
        let past = header(r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#);
        assert!(parse_header(&past, 100, 120).unwrap_err().contains("outside"));
        let reversed = header(r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}"#);
        assert!(parse_header(&reversed, 100, 200).unwrap_err().contains("outside"));
        let size = header(r#"{"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,24]}}"#);
        assert!(parse_header(&size, 100, 200).unwrap_err().contains("does not take"));
        // Shapes whose byte size overflows are a mismatch, not a wrap.
        let huge = header(r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#);
        assert!(parse_header(&huge, 100, 200).unwrap_err().contains("does not take"));
        let offsets = header(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#);
        assert!(parse_header(&offsets, 100, 200).unwrap_err().contains("outside"));
        assert!(parse_header(b"[1,2]", 8, 8).unwrap_err().contains("malformed"));
        assert!(parse_header(br#"{"a":{"dtype":"F32"}}"#, 8, 8).unwrap_err().contains("tensor 'a'"));
    }
}
