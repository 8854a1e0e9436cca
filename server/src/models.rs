//! The served models: each loads on its own thread at start-up (the server answers `/health`
//! meanwhile and `/ready` once all are loaded), then owns an engine. Admission control lives
//! here: a bounded number of sequences per model, beyond which requests are refused (429)
//! instead of queueing without bound.

use crate::error::ApiError;
use crate::metrics::Gauges;
use inferneo_runtime::{ChatTemplate, Config, Engine, EngineConfig, Isa, LoadOptions, ModelSource, Tokenizer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
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
    /// Where the weights came from (`/v1/models`' `root`, as vLLM reports the model path).
    pub root: String,
    pub created: u64,
    /// The kernel set and thread count its engine runs on.
    pub isa: Isa,
    pub threads: usize,
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

    pub fn gauges(&self) -> Gauges {
        let s = self.engine.stats();
        Gauges {
            model: self.name.clone(),
            ready: true,
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

enum State {
    Loading,
    Ready(Arc<Served>),
    Failed(String),
}

struct Slot {
    name: String,
    state: RwLock<State>,
}

/// All models, by name, in the order given.
pub struct Registry {
    slots: Vec<Slot>,
}

impl Registry {
    /// Starts loading every model in the background.
    pub fn load(specs: Vec<ModelSpec>) -> Arc<Registry> {
        let slots = specs.iter().map(|s| Slot { name: s.name.clone(), state: RwLock::new(State::Loading) }).collect();
        let reg = Arc::new(Registry { slots });
        for (i, spec) in specs.into_iter().enumerate() {
            let reg = reg.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                eprintln!(
                    "loading model '{}' from {} ({} weights) ...",
                    spec.name,
                    spec.source.describe(),
                    spec.load.dtype
                );
                let ticker = Ticker::start(&spec.name);
                let loaded = load(&spec);
                drop(ticker);
                let state = match loaded {
                    Ok(served) => {
                        let c = served.config();
                        eprintln!(
                            "loaded '{}' in {:.1} s: {} layers x {} wide, vocab {}, context {}, kernels {}, {} threads",
                            spec.name,
                            t0.elapsed().as_secs_f64(),
                            c.n_layer,
                            c.n_embd,
                            c.vocab_size,
                            c.n_positions,
                            served.isa,
                            served.threads,
                        );
                        State::Ready(Arc::new(served))
                    }
                    Err(e) => {
                        eprintln!("error: model '{}' failed to load: {e}", spec.name);
                        State::Failed(e)
                    }
                };
                *reg.slots[i].state.write().unwrap_or_else(|p| p.into_inner()) = state;
            });
        }
        reg
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    /// Every model loaded (none still loading, none failed).
    pub fn ready(&self) -> bool {
        self.slots.iter().all(|s| matches!(*s.state.read().unwrap_or_else(|p| p.into_inner()), State::Ready(_)))
    }

    /// Every configured model failed to load: nothing can ever be served.
    pub fn all_failed(&self) -> bool {
        self.slots.iter().all(|s| matches!(*s.state.read().unwrap_or_else(|p| p.into_inner()), State::Failed(_)))
    }

    /// Each model's name and state: `Ok(served)` once loaded, else `Err("loading")` or
    /// `Err("failed: <reason>")`.
    pub fn states(&self) -> Vec<(String, Result<Arc<Served>, String>)> {
        self.slots
            .iter()
            .map(|s| {
                let state = match &*s.state.read().unwrap_or_else(|p| p.into_inner()) {
                    State::Ready(m) => Ok(m.clone()),
                    State::Loading => Err("loading".to_string()),
                    State::Failed(e) => Err(format!("failed: {e}")),
                };
                (s.name.clone(), state)
            })
            .collect()
    }

    /// Some model failed to load (the server cannot become ready).
    pub fn failure(&self) -> Option<String> {
        self.slots.iter().find_map(|s| match &*s.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Failed(e) => Some(format!("the model '{}' failed to load: {e}", s.name)),
            _ => None,
        })
    }

    /// The named model (or the first when none is named), if loaded.
    pub fn get(&self, name: Option<&str>) -> Result<Arc<Served>, ApiError> {
        let slot = match name {
            Some(n) => self.slots.iter().find(|s| s.name == n).ok_or_else(|| ApiError::model_not_found(n))?,
            None => self.slots.first().ok_or_else(|| ApiError::unavailable("no model is configured"))?,
        };
        match &*slot.state.read().unwrap_or_else(|p| p.into_inner()) {
            State::Ready(s) => Ok(s.clone()),
            State::Loading => Err(ApiError::unavailable(format!("the model '{}' is still loading", slot.name))),
            State::Failed(e) => Err(ApiError::unavailable(format!("the model '{}' failed to load: {e}", slot.name))),
        }
    }

    pub fn gauges(&self) -> Vec<Gauges> {
        self.slots
            .iter()
            .map(|s| match &*s.state.read().unwrap_or_else(|p| p.into_inner()) {
                State::Ready(m) => m.gauges(),
                _ => Gauges { model: s.name.clone(), ..Gauges::default() },
            })
            .collect()
    }
}

fn load(spec: &ModelSpec) -> Result<Served, String> {
    let loaded = inferneo_runtime::load(&spec.source, &spec.load).map_err(|e| e.to_string())?;
    let chat_template = inferneo_runtime::load_chat_template(&spec.source, spec.chat_template.as_deref());
    if let Err(e) = &chat_template {
        eprintln!("warning: model '{}': {e}; its chat requests will be refused", spec.name);
    }
    let chat_template = chat_template.map_err(|e| e.to_string());
    let (isa, threads) = (loaded.model.kernels().isa(), loaded.threads);
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
        root: match &spec.source {
            ModelSource::Embedded => "inferneo:embedded-gpt2".to_string(),
            ModelSource::Dir(d) => d.display().to_string(),
        },
        created,
        isa,
        threads,
        capacity,
        in_flight: AtomicUsize::new(0),
    })
}

/// On a terminal, a live "loading ... N s" line while a model loads (large checkpoints take
/// seconds to read, convert and pack); nothing when stderr is a file or pipe.
struct Ticker {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(name: &str) -> Ticker {
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
