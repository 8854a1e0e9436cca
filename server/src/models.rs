//! The served models: each loads on its own thread at start-up (the server answers `/health`
//! meanwhile and `/ready` once all are loaded), then owns an engine. Admission control lives
//! here: a bounded number of sequences per model, beyond which requests are refused (429)
//! instead of queueing without bound.

use crate::error::ApiError;
use crate::metrics::Gauges;
use inferneo_runtime::{
    ChatTemplate, Config, Engine, EngineConfig, Isa, LoadOptions, ModelSource, Tokenizer, WeightDtype,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: String,
    pub source: ModelSource,
    pub load: LoadOptions,
    pub engine: EngineConfig,
    /// Sequences that may wait for the engine beyond those it runs (`--max-queue`).
    pub max_queue: usize,
    /// A chat template file that replaces the model's own (`--chat-template`).
    pub chat_template: Option<std::path::PathBuf>,
}

/// A loaded model.
pub struct Served {
    pub name: String,
    pub engine: Engine,
    pub tokenizer: Option<Tokenizer>,
    /// What `/v1/chat/completions` renders messages with; `Err`: the model's template does not
    /// compile (its completions still work, its chat requests get the reason).
    pub chat_template: Result<Option<ChatTemplate>, String>,
    pub created: u64,
    /// The kernel set and thread count its engine runs on.
    pub isa: Isa,
    pub threads: usize,
    /// How the weights are held, and the bytes they take resident (packed matrices, position
    /// embeddings, norms and biases).
    pub dtype: WeightDtype,
    pub weights_bytes: usize,
    /// The engine's KV pool, allocated in full at load.
    pub kv_cache_bytes: usize,
    /// This load's number, unique in the process: a reload is a new load, so results cached for
    /// the old weights are never served for the new ones.
    pub load_id: u64,
    capacity: usize,
    in_flight: AtomicUsize,
}

impl Served {
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// Reserves room for `n` sequences, or refuses: 429 (retry later) when the room is taken,
    /// 400 when `n` exceeds the whole capacity, which no retry can change.
    pub fn admit(self: &Arc<Self>, n: usize) -> Result<Admission, ApiError> {
        if n > self.capacity {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "this request needs {n} sequences (prompts x n); model '{}' admits at most {} at once (--max-seqs + --max-queue)",
                    self.name, self.capacity
                ),
            ));
        }
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur + n > self.capacity {
                return Err(ApiError::overloaded(&self.name));
            }
            match self.in_flight.compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(Admission { served: self.clone(), n }),
                Err(now) => cur = now,
            }
        }
    }

    /// Bytes the model holds resident: weights and KV pool.
    pub fn memory_bytes(&self) -> usize {
        self.weights_bytes + self.kv_cache_bytes
    }

    /// Sequences admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn gauges(&self) -> Gauges {
        let s = self.engine.stats();
        Gauges {
            model: self.name.clone(),
            ready: true,
            state: "ready",
            memory_bytes: self.memory_bytes(),
            threads: self.threads,
            kv_block_tokens: inferneo_runtime::kv_cache::BLOCK_TOKENS,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            waiting: s.waiting,
            running: s.running,
            kv_blocks_used: s.kv_blocks_total - s.kv_blocks_free,
            kv_blocks_free: s.kv_blocks_free,
            preemptions: s.preemptions,
            prefix_cache_hits: s.prefix_cache_hits,
            prefix_cache_queries: s.prefix_cache_queries,
        }
    }
}

/// Room for some sequences; given back when dropped (request finished, failed or abandoned).
pub struct Admission {
    pub served: Arc<Served>,
    n: usize,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.served.in_flight.fetch_sub(self.n, Ordering::AcqRel);
    }
}

pub(crate) fn load(spec: &ModelSpec) -> Result<Served, String> {
    let loaded = inferneo_runtime::load(&spec.source, &spec.load).map_err(|e| e.to_string())?;
    let chat_template = inferneo_runtime::load_chat_template(&spec.source, spec.chat_template.as_deref());
    if let Err(e) = &chat_template {
        eprintln!("warning: model '{}': {e}; its chat requests will be refused", spec.name);
    }
    let chat_template = chat_template.map_err(|e| e.to_string());
    let (isa, threads, dtype) = (loaded.model.kernels().isa(), loaded.threads, loaded.model.dtype());
    let weights_bytes = resident_weight_bytes(&loaded.model);
    let kv_cache_bytes = kv_pool_bytes(loaded.model.config(), &spec.engine);
    let capacity = spec.engine.limits.max_seqs + spec.max_queue;
    // The engine thread gets its own copy (for incremental text decoding), so prompts are
    // tokenized here without sharing anything with it.
    let tokenizer = loaded.tokenizer.clone();
    let settings = EngineConfig { threads: Some(threads), ..spec.engine };
    let engine = Engine::start(loaded.model, loaded.tokenizer, settings).map_err(|e| e.to_string())?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(Served {
        name: spec.name.clone(),
        engine,
        tokenizer,
        chat_template,
        created,
        isa,
        threads,
        dtype,
        weights_bytes,
        kv_cache_bytes,
        load_id: {
            static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            LOADS.fetch_add(1, Ordering::Relaxed)
        },
        capacity,
        in_flight: AtomicUsize::new(0),
    })
}

/// The bytes a loaded model's weights take: its packed matrices plus what stays f32 (position
/// embeddings, layer norms, biases).
fn resident_weight_bytes(model: &inferneo_runtime::Gpt2) -> usize {
    let c = model.config();
    let small = c.n_positions * c.n_embd
        + c.n_layer * (4 * c.n_embd + 3 * c.n_embd + c.n_embd + c.n_inner() + c.n_embd)
        + 2 * c.n_embd;
    model.packed_bytes() + small * 4
}

/// The bytes of the KV pool an engine with `engine` settings allocates for a model of `c`:
/// whole blocks within the budget.
pub(crate) fn kv_pool_bytes(c: &Config, engine: &EngineConfig) -> usize {
    let block = inferneo_runtime::KvPool::block_bytes(c, engine.kv_dtype);
    engine.kv_cache_bytes / block * block
}

/// The dtype `spec` will load as (a converted directory's own unless the spec names one); f32,
/// the largest, when its weights cannot be read yet (the load will then say why).
pub(crate) fn served_dtype(spec: &ModelSpec) -> WeightDtype {
    inferneo_runtime::served_dtype(&spec.source, &spec.load).unwrap_or_default()
}

/// The bytes a model of `config` will take resident with `dtype` weights, before it is loaded:
/// its matrices at the dtype's width (w4a8's group scales included; int8 scales and panel padding
/// are a fraction of a percent),
/// everything else f32.
pub(crate) fn weight_bytes_estimate(c: &Config, dtype: WeightDtype) -> usize {
    let matrices = c.vocab_size * c.n_embd + c.n_layer * (4 * c.n_embd * c.n_embd + 2 * c.n_embd * c.n_inner());
    (matrices as f64 * dtype.bytes_per_weight()) as usize + (c.n_params() - matrices) * 4
}

/// On a terminal, a live "loading ... N s" line while a model loads (large checkpoints take
/// seconds to read, convert and pack); nothing when stderr is a file or pipe.
pub(crate) struct Ticker {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub(crate) fn start(name: &str) -> Ticker {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Ticker { done: None, thread: None };
        }
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let name = name.to_string();
        let t0 = Instant::now();
        let thread = std::thread::spawn(move || {
            while rx.recv_timeout(std::time::Duration::from_millis(250))
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                eprint!("\r  loading '{name}' ... {:.1} s", t0.elapsed().as_secs_f64());
            }
            eprint!("\r\x1b[2K");
        });
        Ticker { done: Some(done), thread: Some(thread) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
