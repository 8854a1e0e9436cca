//! The model repository: every model the server knows (named on the command line or found in
//! `--models-dir`), each in one state: unloaded, loading, ready, unloading or failed. Models load
//! on first use, one load per model however many requests wait for it; a budget of loaded models
//! and bytes (weights + KV) is kept by unloading the least recently used idle model; idle models
//! unload after the keep-alive; the admin API loads, unloads and reloads them.
//!
//! All bookkeeping sits in one table behind one mutex, held only for short, non-blocking
//! updates: loads run on their own threads, and an unload waits for the model's requests and
//! drops its engine (joining the engine thread, freeing weights and KV) on its own thread too.
//! Every state change bumps a watch channel; waiting requests re-check the table on it (and on
//! a short tick, since a request finishing does not bump it).

use crate::error::ApiError;
use crate::metrics::{Gauges, Metrics};
use crate::models::{self, ModelSpec, Served};
use inferneo_runtime::{ModelSource, WeightDtype};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How the repository finds, loads and unloads models.
#[derive(Clone, Debug)]
pub struct RepositoryConfig {
    /// Every subdirectory holding a `config.json` is a model named after it.
    pub models_dir: Option<PathBuf>,
    /// Settings of the models found in `models_dir` (their name and source are set per model);
    /// `None`: those of the first `--model`, else the defaults of a fresh `ModelSpec`.
    pub defaults: Option<ModelSpec>,
    /// Kernel threads per model found in `models_dir`, by name (`--threads NAME=N`).
    pub threads: Vec<(String, usize)>,
    /// Models loaded at start and never evicted.
    pub pinned: Vec<String>,
    /// Models loaded at once, at most (0: no limit).
    pub max_loaded_models: usize,
    /// Bytes of weights + KV over all loaded models, at most (0: no limit).
    pub memory_bytes: usize,
    /// How long a request waits for room (nothing evictable) before a 503 with `Retry-After`.
    pub load_wait: Duration,
    /// An idle model unloads after this long (zero: never).
    pub keep_alive: Duration,
    /// Poll the loaded models' files this often and reload a model whose files changed.
    pub watch: Option<Duration>,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            models_dir: None,
            defaults: None,
            threads: Vec::new(),
            pinned: Vec::new(),
            max_loaded_models: 0,
            memory_bytes: 0,
            load_wait: Duration::from_secs(60),
            keep_alive: Duration::ZERO,
            watch: None,
        }
    }
}

/// Overrides an admin `load` may give.
#[derive(Clone, Debug, Default)]
pub struct LoadOverrides {
    pub dtype: Option<WeightDtype>,
    pub threads: Option<usize>,
    pub kv_cache_mb: Option<usize>,
}

enum State {
    Unloaded,
    Loading,
    Ready(Arc<Served>),
    /// Draining, then freed. `refuse`: an admin unload, whose new requests are refused; an
    /// eviction's or keep-alive's new requests wait and load the model again.
    Unloading {
        refuse: bool,
    },
    Failed(String),
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Unloaded => "unloaded",
            State::Loading => "loading",
            State::Ready(_) => "ready",
            State::Unloading { .. } => "unloading",
            State::Failed(_) => "failed",
        }
    }

    /// Holds (or is about to hold) memory.
    fn resident(&self) -> bool {
        matches!(self, State::Loading | State::Ready(_) | State::Unloading { .. })
    }
}

struct Slot {
    name: String,
    spec: ModelSpec,
    /// Loaded at start, and part of `/ready`.
    preload: bool,
    pinned: bool,
    state: State,
    /// A reload is loading the new weights beside the ready ones.
    reloading: bool,
    last_used: Instant,
    /// Weights + KV: the loaded model's, else an estimate from its config.
    memory: usize,
    /// Bumped by every load, so a stale load's result is dropped.
    generation: u64,
    /// Requests waiting for this model to load: a model just loaded for them is not idle.
    waiters: usize,
    /// Loaded at least once (for `/ready`: a pinned or start-up model evicted later is no reason
    /// to take the server out of rotation).
    ever_ready: bool,
    created: u64,
    /// The model's files' (path, length, mtime) at its last load, for `--watch`.
    files: Vec<(PathBuf, u64, SystemTime)>,
}

impl Slot {
    fn new(spec: ModelSpec, preload: bool, pinned: bool) -> Slot {
        let (state, memory) = match inferneo_runtime::load_config(&spec.source) {
            Ok(c) => {
                let m = models::weight_bytes_estimate(&c, models::served_dtype(&spec))
                    + models::kv_pool_bytes(&c, &spec.engine);
                (State::Unloaded, m)
            }
            // A directory that does not exist yet is a load failure, reported when loaded (as
            // for `--model`); a `--models-dir` entry's broken config is listed as failed now.
            Err(e) if !preload => (State::Failed(e.to_string()), 0),
            Err(_) => (State::Unloaded, 0),
        };
        Slot {
            name: spec.name.clone(),
            spec,
            preload,
            pinned,
            state,
            reloading: false,
            last_used: Instant::now(),
            memory,
            generation: 0,
            waiters: 0,
            ever_ready: false,
            created: unix_now(),
            files: Vec::new(),
        }
    }

    /// Idle: loaded, and no request holds it (each request, queued or running, holds a clone).
    fn idle(&self) -> Option<&Arc<Served>> {
        match &self.state {
            State::Ready(s) if Arc::strong_count(s) == 1 && self.waiters == 0 && !self.reloading => Some(s),
            _ => None,
        }
    }
}

struct Shared {
    table: Mutex<Vec<Slot>>,
    changes: watch::Sender<u64>,
    config: RepositoryConfig,
    metrics: Arc<Metrics>,
    drain_timeout: Duration,
}

/// What a request finds when it asks for a model.
enum Found {
    Ready(Arc<Served>),
    /// Loading, unloading to be loaded again, or room being made: wait for a change.
    Wait,
    /// Nothing can be evicted now: wait, at most `load_wait`.
    NoRoom,
}

/// Every model, by name: the command line's in the order given, then the models directory's
/// by name.
pub struct Registry {
    shared: Arc<Shared>,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock(m: &Mutex<Vec<Slot>>) -> MutexGuard<'_, Vec<Slot>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// The repository over `specs` (the command line's models) and the models directory; starts
    /// loading the models loaded at start: every `specs` model without a models directory (as
    /// before there was one), the pinned ones with it.
    pub fn start(
        specs: Vec<ModelSpec>,
        config: RepositoryConfig,
        metrics: Arc<Metrics>,
        drain_timeout: Duration,
    ) -> Result<Arc<Registry>, String> {
        let eager_all = config.models_dir.is_none();
        let slots = specs
            .into_iter()
            .map(|s| {
                let pinned = config.pinned.contains(&s.name);
                Slot::new(s, eager_all || pinned, pinned)
            })
            .collect();
        let (changes, _) = watch::channel(0);
        let shared = Arc::new(Shared { table: Mutex::new(slots), changes, config, metrics, drain_timeout });
        let reg = Arc::new(Registry { shared });
        if reg.shared.config.models_dir.is_some() {
            reg.refresh()?;
        }
        let names: Vec<String> = lock(&reg.shared.table).iter().map(|s| s.name.clone()).collect();
        for p in &reg.shared.config.pinned {
            if !names.contains(p) {
                return Err(format!("--pin {p}: no model named '{p}'"));
            }
        }
        {
            let mut table = lock(&reg.shared.table);
            for i in 0..table.len() {
                if table[i].preload && !matches!(table[i].state, State::Failed(_)) {
                    Shared::start_load(&reg.shared, &mut table, i);
                }
            }
        }
        let weak = Arc::downgrade(&reg.shared);
        std::thread::Builder::new()
            .name("inferneo-models".into())
            .spawn(move || housekeeping(weak))
            .map_err(|e| format!("cannot start the model housekeeping thread: {e}"))?;
        Ok(reg)
    }

    /// Scans the models directory for subdirectories with a `config.json` not yet known and
    /// adds them (unloaded, or failed if their config does not parse). A failed model of the
    /// directory is checked again. Returns the names added.
    pub fn refresh(&self) -> Result<Vec<String>, String> {
        let Some(dir) = self.shared.config.models_dir.clone() else { return Ok(Vec::new()) };
        let found = discover(&dir)?;
        let mut added = Vec::new();
        let mut table = lock(&self.shared.table);
        for (name, path) in found {
            if let Some(slot) = table.iter_mut().find(|s| s.name == name) {
                if matches!(slot.state, State::Failed(_)) && slot.spec.source == ModelSource::Dir(path.clone()) {
                    let again = Slot::new(slot.spec.clone(), false, slot.pinned);
                    (slot.state, slot.memory) = (again.state, again.memory);
                }
                continue;
            }
            let spec = self.dir_spec(&name, path, table.first().map(|s| &s.spec));
            let pinned = self.shared.config.pinned.contains(&name);
            table.push(Slot::new(spec, pinned, pinned));
            added.push(name);
        }
        drop(table);
        self.shared.bump();
        Ok(added)
    }

    fn dir_spec(&self, name: &str, path: PathBuf, first: Option<&ModelSpec>) -> ModelSpec {
        let base = self.shared.config.defaults.clone().or_else(|| first.cloned());
        let mut spec = base.unwrap_or_else(|| ModelSpec {
            name: String::new(),
            source: ModelSource::Embedded,
            load: Default::default(),
            engine: Default::default(),
            max_queue: 256,
            chat_template: None,
        });
        spec.name = name.to_string();
        spec.source = ModelSource::Dir(path);
        if let Some(&(_, t)) = self.shared.config.threads.iter().find(|(n, _)| n == name) {
            spec.load.threads = Some(t);
        }
        spec
    }

    pub fn names(&self) -> Vec<String> {
        lock(&self.shared.table).iter().map(|s| s.name.clone()).collect()
    }

    /// Every model loaded at start has loaded (none still loading, none failed).
    pub fn ready(&self) -> bool {
        lock(&self.shared.table).iter().filter(|s| s.preload).all(|s| s.ever_ready)
    }

    /// Every model is one loaded at start and every one failed: nothing can ever be served.
    pub fn all_failed(&self) -> bool {
        let table = lock(&self.shared.table);
        !table.is_empty() && table.iter().all(|s| s.preload && matches!(s.state, State::Failed(_)))
    }

    /// A model loaded at start failed (the server cannot become ready).
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.table).iter().filter(|s| s.preload).find_map(|s| match &s.state {
            State::Failed(e) => Some(format!("the model '{}' failed to load: {e}", s.name)),
            _ => None,
        })
    }

    /// The named model (or the first when none is named), loaded: loads it if it is not (one
    /// load, whoever asks), first making room under the budget by evicting the least recently
    /// used idle model. Waits at most `--load-wait` for room; a load itself is waited for.
    pub async fn get(&self, name: Option<&str>) -> Result<Arc<Served>, ApiError> {
        let mut rx = self.shared.changes.subscribe();
        let _waiting = Waiter::new(&self.shared, name);
        let mut no_room_since: Option<Instant> = None;
        loop {
            match self.shared.find(name)? {
                Found::Ready(s) => return Ok(s),
                Found::Wait => no_room_since = None,
                Found::NoRoom => {
                    let since = *no_room_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.shared.config.load_wait {
                        return Err(ApiError {
                            retry_after: Some(self.shared.config.load_wait.as_secs().clamp(1, 60)),
                            ..ApiError::unavailable(format!(
                                "no room to load the model '{}': the loaded models are all busy or pinned \
                                 (--max-loaded-models / --models-memory-mb); retry later",
                                name.unwrap_or("")
                            ))
                        });
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(25), rx.changed()).await;
        }
    }

    /// Admin load: applies the overrides (a loaded model with new settings is reloaded with
    /// them), clears a failure, and waits until the model is ready.
    pub async fn load(&self, name: &str, o: LoadOverrides) -> Result<Value, ApiError> {
        let reload = {
            let mut table = lock(&self.shared.table);
            let slot = table.iter_mut().find(|s| s.name == name).ok_or_else(|| ApiError::model_not_found(name))?;
            let mut spec = slot.spec.clone();
            if let Some(d) = o.dtype {
                spec.load.dtype = Some(d);
            }
            if let Some(t) = o.threads {
                spec.load.threads = Some(t);
            }
            if let Some(mb) = o.kv_cache_mb {
                spec.engine.kv_cache_bytes = mb << 20;
            }
            let changed = spec.load != slot.spec.load || spec.engine.kv_cache_bytes != slot.spec.engine.kv_cache_bytes;
            if changed {
                let c = inferneo_runtime::load_config(&spec.source)
                    .map_err(|e| ApiError::unavailable(format!("the model '{name}' cannot be loaded: {e}")))?;
                let block = inferneo_runtime::KvPool::block_bytes(&c, spec.engine.kv_dtype);
                let need = block * c.n_positions.div_ceil(inferneo_runtime::kv_cache::BLOCK_TOKENS);
                if spec.engine.kv_cache_bytes < need {
                    return Err(ApiError::invalid(
                        "kv-cache-mb",
                        format!(
                            "the model '{name}' needs at least {} MB of KV cache for one full-context sequence",
                            need.div_ceil(1 << 20)
                        ),
                    ));
                }
                slot.spec = spec;
                if !matches!(slot.state, State::Ready(_)) {
                    slot.memory = models::weight_bytes_estimate(&c, models::served_dtype(&slot.spec))
                        + models::kv_pool_bytes(&c, &slot.spec.engine);
                }
            }
            if matches!(slot.state, State::Failed(_)) {
                slot.state = State::Unloaded;
            }
            changed && matches!(slot.state, State::Ready(_))
        };
        if reload {
            return self.reload(name).await;
        }
        self.get(Some(name)).await?;
        self.info(name)
    }

    /// Admin unload: refuses the model's new requests, waits for its running ones (at most the
    /// drain timeout), frees it. A model still loading is unloaded once loaded.
    pub async fn unload(&self, name: &str) -> Result<Value, ApiError> {
        let mut rx = self.shared.changes.subscribe();
        let deadline = Instant::now() + self.shared.drain_timeout + Duration::from_secs(5);
        let mut started = false;
        loop {
            {
                let mut table = lock(&self.shared.table);
                let i = table.iter().position(|s| s.name == name).ok_or_else(|| ApiError::model_not_found(name))?;
                match table[i].state {
                    State::Ready(_) if !started && !table[i].reloading => {
                        Shared::start_unload(&self.shared, &mut table, i, true, false);
                        started = true;
                    }
                    State::Unloaded | State::Failed(_) => break,
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(25), rx.changed()).await;
        }
        self.info(name)
    }

    /// Reload without dropping a request: the new weights load beside the old; once ready, new
    /// requests go to the new engine and the old one drains and is freed. A model not loaded
    /// is simply loaded.
    pub async fn reload(&self, name: &str) -> Result<Value, ApiError> {
        let generation = {
            let mut table = lock(&self.shared.table);
            let i = table.iter().position(|s| s.name == name).ok_or_else(|| ApiError::model_not_found(name))?;
            match table[i].state {
                State::Ready(_) if !table[i].reloading => Some(Shared::start_load(&self.shared, &mut table, i)),
                State::Ready(_) => Some(table[i].generation),
                State::Failed(_) => {
                    table[i].state = State::Unloaded;
                    None
                }
                _ => None,
            }
        };
        let Some(generation) = generation else {
            self.get(Some(name)).await?;
            return self.info(name);
        };
        let mut rx = self.shared.changes.subscribe();
        loop {
            {
                let table = lock(&self.shared.table);
                let slot = table.iter().find(|s| s.name == name).ok_or_else(|| ApiError::model_not_found(name))?;
                if slot.generation != generation || !slot.reloading {
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(25), rx.changed()).await;
        }
        let table = lock(&self.shared.table);
        if let Some(e) = table.iter().find(|s| s.name == name).and_then(|s| match &s.state {
            State::Failed(e) => Some(e.clone()),
            _ => None,
        }) {
            return Err(ApiError::unavailable(format!("the model '{name}' failed to reload: {e}")));
        }
        drop(table);
        self.info(name)
    }

    /// One model as `/v1/models` lists it.
    pub fn info(&self, name: &str) -> Result<Value, ApiError> {
        let table = lock(&self.shared.table);
        let slot = table.iter().find(|s| s.name == name).ok_or_else(|| ApiError::model_not_found(name))?;
        Ok(describe(slot))
    }

    /// Every model, OpenAI-shaped, with the repository's fields beside the OpenAI ones.
    pub fn list(&self) -> Vec<Value> {
        lock(&self.shared.table).iter().map(describe).collect()
    }

    pub fn gauges(&self) -> Vec<Gauges> {
        lock(&self.shared.table)
            .iter()
            .map(|s| match &s.state {
                State::Ready(m) => m.gauges(),
                st => Gauges {
                    model: s.name.clone(),
                    state: st.name(),
                    memory_bytes: if st.resident() { s.memory } else { 0 },
                    ..Gauges::default()
                },
            })
            .collect()
    }
}

impl Shared {
    fn bump(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    /// Looks the model up and moves it towards ready: starts its load when there is room, or
    /// evicts one idle model to make room.
    fn find(self: &Arc<Self>, name: Option<&str>) -> Result<Found, ApiError> {
        let mut table = lock(&self.table);
        let i = match name {
            Some(n) => table.iter().position(|s| s.name == n).ok_or_else(|| ApiError::model_not_found(n))?,
            None if table.is_empty() => return Err(ApiError::unavailable("no model is configured")),
            None => 0,
        };
        let slot = &mut table[i];
        match &slot.state {
            State::Ready(s) => {
                slot.last_used = Instant::now();
                return Ok(Found::Ready(s.clone()));
            }
            State::Failed(e) => {
                return Err(ApiError::unavailable(format!("the model '{}' failed to load: {e}", slot.name)))
            }
            State::Unloading { refuse: true } => {
                return Err(ApiError::unavailable(format!("the model '{}' is being unloaded", slot.name)))
            }
            State::Loading | State::Unloading { .. } => return Ok(Found::Wait),
            State::Unloaded => {}
        }
        let cfg = &self.config;
        let need = table[i].memory;
        if cfg.memory_bytes > 0 && need > cfg.memory_bytes {
            return Err(ApiError::unavailable(format!(
                "the model '{}' needs {} MB (weights + KV), more than --models-memory-mb {}",
                table[i].name,
                need.div_ceil(1 << 20),
                cfg.memory_bytes >> 20
            )));
        }
        let resident = table.iter().filter(|s| s.state.resident());
        let (count, bytes) = resident.fold((0, 0), |(n, b), s| (n + 1, b + s.memory));
        let fits = (cfg.max_loaded_models == 0 || count < cfg.max_loaded_models)
            && (cfg.memory_bytes == 0 || bytes + need <= cfg.memory_bytes);
        if fits {
            table[i].last_used = Instant::now();
            Shared::start_load(self, &mut table, i);
            return Ok(Found::Wait);
        }
        // An unload under way frees room soon.
        if table.iter().any(|s| matches!(s.state, State::Unloading { .. })) {
            return Ok(Found::Wait);
        }
        // The least recently used idle model goes. With none idle, the least recently used
        // loaded model stops taking requests (they wait, as this one does), finishes those it
        // has, and goes: otherwise a model kept busy by a few clients would lock every other
        // model out for good.
        let lru = |idle: bool| {
            (0..table.len())
                .filter(|&j| j != i && !table[j].pinned && matches!(table[j].state, State::Ready(_)))
                .filter(|&j| !table[j].reloading && (!idle || table[j].idle().is_some()))
                .min_by_key(|&j| table[j].last_used)
        };
        match lru(true).or_else(|| lru(false)) {
            Some(j) => {
                Shared::start_unload(self, &mut table, j, false, true);
                Ok(Found::Wait)
            }
            None => Ok(Found::NoRoom),
        }
    }

    /// Starts loading slot `i` on its own thread (beside its engine when it is ready: a
    /// reload). Returns the load's generation.
    fn start_load(self: &Arc<Self>, table: &mut [Slot], i: usize) -> u64 {
        let slot = &mut table[i];
        slot.generation += 1;
        let generation = slot.generation;
        if matches!(slot.state, State::Ready(_)) {
            slot.reloading = true;
        } else {
            slot.state = State::Loading;
        }
        slot.files = model_files(&slot.spec.source);
        let spec = slot.spec.clone();
        let shared = self.clone();
        self.bump();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            eprintln!(
                "loading model '{}' from {} ({} weights) ...",
                spec.name,
                spec.source.describe(),
                models::served_dtype(&spec)
            );
            let ticker = models::Ticker::start(&spec.name);
            let loaded = models::load(&spec);
            drop(ticker);
            let seconds = t0.elapsed().as_secs_f64();
            let mut table = lock(&shared.table);
            let Some(slot) = table.iter_mut().find(|s| s.name == spec.name && s.generation == generation) else {
                return; // superseded; the result drops here
            };
            let reloading = std::mem::take(&mut slot.reloading);
            match loaded {
                Ok(served) => {
                    let c = served.config();
                    eprintln!(
                        "loaded '{}' in {seconds:.1} s: {} layers x {} wide, vocab {}, context {}, kernels {}, {} threads",
                        spec.name, c.n_layer, c.n_embd, c.vocab_size, c.n_positions, served.isa, served.threads,
                    );
                    slot.memory = served.memory_bytes();
                    slot.ever_ready = true;
                    let old = std::mem::replace(&mut slot.state, State::Ready(Arc::new(served)));
                    shared.metrics.model_loaded(&spec.name, seconds);
                    if let State::Ready(old) = old {
                        // The old engine finishes its requests, then is freed.
                        drain_and_free(old, shared.drain_timeout);
                    }
                }
                Err(e) if reloading => {
                    eprintln!("error: model '{}' failed to reload (the loaded one stays): {e}", spec.name);
                }
                Err(e) => {
                    eprintln!("error: model '{}' failed to load: {e}", spec.name);
                    slot.state = State::Failed(e);
                }
            }
            drop(table);
            shared.bump();
        });
        generation
    }

    /// Takes slot `i`'s engine out of service: new requests wait (`refuse`: are refused), the
    /// running ones finish (at most the drain timeout), then the engine is freed on its own
    /// thread and the slot is unloaded.
    fn start_unload(self: &Arc<Self>, table: &mut [Slot], i: usize, refuse: bool, evicted: bool) {
        let slot = &mut table[i];
        let State::Ready(served) = std::mem::replace(&mut slot.state, State::Unloading { refuse }) else {
            return;
        };
        let (name, generation, shared) = (slot.name.clone(), slot.generation, self.clone());
        eprintln!("unloading model '{name}'{}", if evicted { " (evicted: least recently used)" } else { "" });
        self.metrics.model_unloaded(&name, evicted);
        self.bump();
        std::thread::spawn(move || {
            wait_unused(&served, shared.drain_timeout);
            drop(served);
            let mut table = lock(&shared.table);
            if let Some(slot) = table.iter_mut().find(|s| s.name == name && s.generation == generation) {
                if matches!(slot.state, State::Unloading { .. }) {
                    slot.state = State::Unloaded;
                }
            }
            drop(table);
            shared.bump();
        });
    }
}

/// A request waiting for a model, counted in its slot while it waits.
struct Waiter<'a> {
    shared: &'a Shared,
    name: Option<String>,
}

impl<'a> Waiter<'a> {
    fn new(shared: &'a Shared, name: Option<&str>) -> Waiter<'a> {
        let mut table = lock(&shared.table);
        let slot = match name {
            Some(n) => table.iter_mut().find(|s| s.name == n),
            None => table.first_mut(),
        };
        let name = slot.map(|s| {
            s.waiters += 1;
            s.name.clone()
        });
        Waiter { shared, name }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            if let Some(s) = lock(&self.shared.table).iter_mut().find(|s| s.name == *n) {
                s.waiters -= 1;
            }
        }
    }
}

/// Waits until nothing but `served` itself holds the model (every request done), at most
/// `timeout`. Past it the model is freed when its last request ends.
fn wait_unused(served: &Arc<Served>, timeout: Duration) {
    let t0 = Instant::now();
    while Arc::strong_count(served) > 1 && t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn drain_and_free(old: Arc<Served>, timeout: Duration) {
    std::thread::spawn(move || {
        wait_unused(&old, timeout);
        drop(old);
    });
}

/// Every subdirectory of `dir` holding a `config.json`, by name.
fn discover(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("--models-dir {}: {e}", dir.display()))?;
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join("config.json").is_file())
        .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p)))
        .collect();
    found.sort();
    Ok(found)
}

/// The files a model's load reads, with their length and mtime (`--watch` compares them).
fn model_files(source: &ModelSource) -> Vec<(PathBuf, u64, SystemTime)> {
    let ModelSource::Dir(path) = source else { return Vec::new() };
    let paths: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path).map(|r| r.filter_map(|e| Some(e.ok()?.path())).collect()).unwrap_or_default()
    } else {
        vec![path.clone()]
    };
    let mut files: Vec<(PathBuf, u64, SystemTime)> = paths
        .into_iter()
        .filter_map(|p| {
            let m = std::fs::metadata(&p).ok().filter(|m| m.is_file())?;
            Some((p, m.len(), m.modified().ok()?))
        })
        .collect();
    files.sort();
    files
}

fn describe(slot: &Slot) -> Value {
    let spec = &slot.spec;
    let mut v = json!({
        "id": slot.name,
        "object": "model",
        "created": slot.created,
        "owned_by": "inferneo",
        "root": match &spec.source {
            ModelSource::Embedded => "inferneo:embedded-gpt2".to_string(),
            ModelSource::Dir(d) => d.display().to_string(),
        },
        "parent": null,
        "state": slot.state.name(),
        "dtype": models::served_dtype(spec).to_string(),
        "kv_cache_bytes": spec.engine.kv_cache_bytes,
        "threads": spec.load.threads,
        "pinned": slot.pinned,
        "memory_bytes": if slot.state.resident() { slot.memory } else { 0 },
    });
    match &slot.state {
        State::Ready(m) => {
            v["created"] = json!(m.created);
            v["max_model_len"] = json!(m.config().n_positions);
            v["threads"] = json!(m.threads);
            v["weights_bytes"] = json!(m.weights_bytes);
            v["dtype"] = json!(m.dtype.to_string());
            v["in_flight"] = json!(m.in_flight());
            v["kv_cache_bytes"] = json!(m.kv_cache_bytes);
        }
        State::Failed(e) => v["error"] = json!(e),
        _ => {}
    }
    if slot.reloading {
        v["reloading"] = json!(true);
    }
    v
}

/// Keep-alive and `--watch`: unloads models idle past the keep-alive, reloads models whose
/// files changed. Ends with the repository.
fn housekeeping(shared: Weak<Shared>) {
    loop {
        let period = {
            let Some(s) = shared.upgrade() else { return };
            let keep = s.config.keep_alive;
            let mut period = Duration::from_millis(500);
            if !keep.is_zero() {
                period = period.min(keep / 4);
            }
            if let Some(w) = s.config.watch {
                period = period.min(w);
            }
            let mut table = lock(&s.table);
            for i in 0..table.len() {
                let slot = &mut table[i];
                if matches!(&slot.state, State::Ready(m) if Arc::strong_count(m) > 1) {
                    slot.last_used = Instant::now(); // in use now
                }
                if !keep.is_zero() && !slot.pinned && slot.idle().is_some() && slot.last_used.elapsed() >= keep {
                    Shared::start_unload(&s, &mut table, i, false, false);
                    continue;
                }
                let slot = &table[i];
                if s.config.watch.is_some()
                    && matches!(slot.state, State::Ready(_))
                    && !slot.reloading
                    && model_files(&slot.spec.source) != slot.files
                {
                    eprintln!("model '{}': its files changed; reloading", slot.name);
                    Shared::start_load(&s, &mut table, i);
                }
            }
            period.max(Duration::from_millis(10))
        };
        std::thread::sleep(period);
    }
}
