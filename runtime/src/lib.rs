//! Inferneo's runtime: the GPT-2 graph over memory-mapped HuggingFace weights, the tokenizer,
//! the KV cache and sampling. No intrinsics here (`#![deny(unsafe_code)]`; the one exception is
//! the mmap call in `weights.rs`); arithmetic goes through `inferneo_kernels`.
//!
//! Reading order: `config.rs` → `weights.rs` → `gpt2.rs` → `kv_cache.rs` → `sampling.rs` →
//! `generate.rs` (one sequence) → `scheduler.rs` → `engine.rs` (continuous batching);
//! `init.rs` makes deterministic random models of the real shapes.
#![deny(unsafe_code)]

pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gpt2;
pub mod init;
pub mod kv_cache;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;
pub mod weights;

pub use config::Config;
pub use engine::{Engine, EngineConfig, Event, Finish, RequestHandle, Stats};
pub use error::{Error, Result};
pub use generate::{generate, FinishReason, GenerateRequest, Generation};
pub use gpt2::{Gpt2, Logits, SeqInput};
pub use inferneo_kernels::WeightDtype;
pub use init::Preset;
pub use kv_cache::{BlockTable, KvCache, KvDtype, KvPool};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;

/// The process-wide kernels (`INFERNEO_ISA` or the best ISA), as a runtime error on failure.
pub fn kernels() -> Result<inferneo_kernels::Kernels> {
    inferneo_kernels::kernels().map_err(Error::Invalid)
}
