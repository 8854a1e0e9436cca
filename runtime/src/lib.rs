//! Inferneo's runtime: the GPT-2 graph over HuggingFace weights, the tokenizer, the KV cache,
//! sampling, the scheduler and the engine. No intrinsics and no `unsafe` here; arithmetic goes
//! through `inferneo_kernels`.
//!
//! Reading order: `load.rs` (the one entry point from a model source to a loaded model) →
//! `config.rs` → `weights.rs` (`gguf.rs` for llama.cpp's files) → `gpt2.rs` → `kv_cache.rs` →
//! `sampling.rs` → `generate.rs` (one sequence) → `scheduler.rs` → `engine.rs` (continuous
//! batching); `init.rs` makes deterministic random models of the real shapes.
#![forbid(unsafe_code)]

pub mod chat;
pub mod config;
pub mod convert;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gpt2;
pub mod init;
pub mod kv_cache;
pub mod load;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;
pub mod weights;

pub use chat::{ChatMessage, ChatTemplate};
pub use config::Config;
pub use engine::{Engine, EngineConfig, Event, Finish, PromptLogprob, RequestHandle, Stats};
pub use error::{Error, Result};
pub use generate::{generate, generate_steps, FinishReason, GenerateRequest, Generation, Step};
pub use gpt2::{Gpt2, Logits, SeqInput};
pub use inferneo_kernels::{Isa, WeightDtype};
pub use init::Preset;
pub use kv_cache::{BlockTable, KvCache, KvDtype, KvPool};
pub use load::{load, load_chat_template, load_config, load_tokenizer, served_dtype, LoadOptions, Loaded, ModelSource};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::Tokenizer;
