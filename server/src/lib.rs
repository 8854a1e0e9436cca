//! Inferneo's HTTP server: an OpenAI-compatible API (`/v1/completions` with streaming,
//! `/v1/models`), tokenizer routes, health/readiness and Prometheus metrics, over one batching
//! engine per model. hyper 1.x on tokio; the engines run on their own threads and know nothing
//! of HTTP.
//!
//! Reading order: `http.rs` (accept loop, routing, limits, drain) → `api.rs` (request parsing)
//! → `completions.rs` (engine sequences to OpenAI choices) → `stop.rs`, `metrics.rs`,
//! `models.rs` (loading and admission), `repository.rs` (models on demand under a budget),
//! `response_cache.rs` (replaying deterministic results), `error.rs`.
#![forbid(unsafe_code)]

pub mod api;
mod completions;
mod conns;
mod cpu_pool;
pub mod error;
mod http;
pub mod metrics;
mod models;
mod repository;
mod response_cache;
pub mod stop;

pub use http::{run_blocking, Server, ServerConfig};
pub use models::ModelSpec;
pub use repository::RepositoryConfig;
