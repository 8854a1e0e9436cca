//! Weights: memory-mapped HuggingFace safetensors, viewed in place when they are f32 and aligned,
//! converted once at load otherwise.
//!
//! Tensors are looked up by their GPT-2 checkpoint name (`h.0.attn.c_attn.weight`), with or
//! without the `transformer.` prefix that `GPT2LMHeadModel.save_pretrained` adds; anything else
//! in the file (causal-mask buffers `h.N.attn.bias` / `masked_bias`, `lm_head.weight`) is ignored.

use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An f32 tensor's values: a view into the mapped file, or an owned copy.
pub enum Tensor {
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    Owned(Vec<f32>),
}

impl Tensor {
    pub fn as_slice(&self) -> &[f32] {
        match self {
            // Alignment and length were checked when the view was created (see `SafetensorsFile::get`).
            Tensor::Mapped { map, range } => bytemuck::cast_slice(&map[range.clone()]),
            Tensor::Owned(v) => v,
        }
    }

    /// An owned copy, so the mapping can be released once loading is done.
    pub fn into_owned(self) -> Tensor {
        match self {
            Tensor::Mapped { .. } => Tensor::Owned(self.as_slice().to_vec()),
            owned => owned,
        }
    }
}

/// Where the model's tensors come from: a file, or weights generated in memory.
pub trait WeightSource {
    /// The tensor called `name` (canonical GPT-2 name, no prefix), checked against `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;

    /// Says that `name`'s data will not be read again (it has been packed), so its memory can
    /// be returned to the OS now rather than when loading ends.
    fn release(&self, _name: &str) {}
}

/// A mapped `model.safetensors`.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    /// name -> (dtype, shape, byte range in the map)
    entries: Vec<(String, Dtype, Vec<usize>, Range<usize>)>,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this process; like every mmap user we rely
        // on the file not being truncated underneath us while the model is loaded.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::Safetensors { path: path.into(), msg };
        let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
        let base = map.as_ptr() as usize;
        let entries = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let start = view.data().as_ptr() as usize - base;
                (name, view.dtype(), view.shape().to_vec(), start..start + view.data().len())
            })
            .collect();
        Ok(SafetensorsFile { path: path.into(), map: Arc::new(map), entries })
    }
}

impl WeightSource for SafetensorsFile {
    fn release(&self, name: &str) {
        let prefixed = format!("transformer.{name}");
        let Some((_, _, _, range)) = self.entries.iter().find(|e| e.0 == name || e.0 == prefixed) else { return };
        // Only whole pages inside the tensor, so neighbours sharing a boundary page stay.
        let page = 4096;
        let (start, end) = (range.start.next_multiple_of(page), range.end / page * page);
        if end > start {
            // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only drops clean
            // page-cache pages from this process; a later access faults the same bytes back in
            // from the file. No reference into this range is alive: the tensor was packed into
            // an owned buffer and its view dropped before `release` is called.
            #[allow(unsafe_code)]
            let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let prefixed = format!("transformer.{name}");
        let Some((found, dtype, got, range)) = self.entries.iter().find(|e| e.0 == name || e.0 == prefixed) else {
            return Err(Error::MissingTensor { path: self.path.clone(), name: name.into() });
        };
        if got != shape {
            return Err(Error::Shape {
                path: self.path.clone(),
                name: found.clone(),
                got: got.clone(),
                want: shape.to_vec(),
            });
        }
        let bytes = &self.map[range.clone()];
        match dtype {
            Dtype::F32 => {
                if bytemuck::try_cast_slice::<u8, f32>(bytes).is_ok() {
                    Ok(Tensor::Mapped { map: self.map.clone(), range: range.clone() })
                } else {
                    // Misaligned data (the format does not promise 4-byte alignment): copy.
                    Ok(Tensor::Owned(
                        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                    ))
                }
            }
            Dtype::F16 => Ok(Tensor::Owned(
                bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            )),
            Dtype::BF16 => Ok(Tensor::Owned(
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            )),
            other => Err(Error::Dtype { path: self.path.clone(), name: found.clone(), dtype: format!("{other:?}") }),
        }
    }
}
