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
//! which the packing that follows makes anyway; only one tensor's source is held at a time.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where the model's tensors come from: a file, or weights generated in memory.
pub trait WeightSource {
    /// The f32 values of the tensor called `name` (canonical GPT-2 name, no prefix), checked
    /// against `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
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
}

/// Bytes per element of the dtypes the loader converts to f32.
fn dtype_size(dtype: &str) -> Option<u64> {
    match dtype {
        "F32" => Some(4),
        "F16" | "BF16" => Some(2),
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
        let entries = parse_header(&header, 8 + n, stamp.len).map_err(|msg| bad(path, msg))?;
        Ok(SafetensorsFile { path: path.into(), file, entries, stamp })
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

/// The header's tensor entries, each checked: a known dtype's byte size matches its shape, and
/// every range lies in the data section (`data_start..file_len`).
fn parse_header(header: &[u8], data_start: u64, file_len: u64) -> std::result::Result<Vec<Entry>, String> {
    #[derive(serde::Deserialize)]
    struct Info {
        dtype: String,
        shape: Vec<usize>,
        data_offsets: (u64, u64),
    }
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("malformed header: {e}"))?;
    let mut entries = Vec::with_capacity(map.len());
    for (name, value) in map {
        if name == "__metadata__" {
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
    Ok(entries)
}

impl WeightSource for SafetensorsFile {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
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
        // Only a dtype this converts had its shape checked against its bytes by `open`: for
        // another, the shape's element count may overflow, so it is refused first.
        let Some(size) = dtype_size(&entry.dtype) else {
            return Err(Error::Dtype { path: self.path.clone(), name: entry.name.clone(), dtype: entry.dtype.clone() });
        };
        let elements: usize = shape.iter().product();
        let read = |buf: &mut [u8]| {
            self.file.read_exact_at(buf, entry.start).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => bad(
                    &self.path,
                    format!("the file ends inside tensor '{}' (was it truncated while loading?)", entry.name),
                ),
                _ => Error::io(&self.path, e),
            })
        };
        debug_assert_eq!(entry.end - entry.start, elements as u64 * size);
        match entry.dtype.as_str() {
            "F32" => {
                let mut values = vec![0.0f32; elements];
                read(bytemuck::cast_slice_mut(&mut values))?;
                // The format is little-endian, as every target this builds for.
                Ok(values)
            }
            "F16" | "BF16" => {
                let mut bytes = vec![0u8; elements * 2];
                read(&mut bytes)?;
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
        let e = parse_header(&ok, 100, 124).unwrap();
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
