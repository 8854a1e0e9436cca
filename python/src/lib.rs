//! `import inferneo`: the Python face of the Rust crates. Each Python call maps to one runtime
//! or kernels call, made with the GIL released (so Python threads run meanwhile) on the
//! model's own kernel team; long calls run on a worker thread while the caller waits in short
//! slices, so Ctrl-C stops them within a token. No model math here.
//!
//! Errors: bad arguments raise `ValueError`, a model that cannot be loaded `FileNotFoundError`
//! or `OSError`, anything else `RuntimeError`, each with the CLI's one-line message.
#![forbid(unsafe_code)]

use inferneo_kernels::{AttentionRows, Epilogue, Isa, Kernels, KvView, LayerKv, Layout, PackedKn, Team, WeightDtype};
use inferneo_runtime::tokenizer::IncrementalDecoder;
use inferneo_runtime::{
    Engine as RtEngine, EngineConfig, Error, Event, Finish, FinishReason, GenerateRequest, Gpt2, KvCache, KvDtype,
    LoadOptions, Logits, ModelSource, SamplingParams, Step, Tokenizer,
};
use numpy::{PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a waiting call looks for Ctrl-C (and other signals) while the work runs.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        Error::Io { .. }
        | Error::Json { .. }
        | Error::Unsupported { .. }
        | Error::Config { .. }
        | Error::Safetensors { .. }
        | Error::Gguf { .. }
        | Error::MissingTensor { .. }
        | Error::Shape { .. }
        | Error::Dtype { .. } => PyOSError::new_err(msg),
        Error::Invalid(_) | Error::Context { .. } | Error::Token { .. } | Error::Tokenizer(_) => {
            PyValueError::new_err(msg)
        }
        Error::Cancelled => PyKeyboardInterrupt::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

fn value_err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

fn parse_isa(isa: Option<&str>) -> PyResult<Option<Isa>> {
    match isa {
        None | Some("auto") => Ok(None),
        Some(name) => {
            let isa: Isa = name.parse().map_err(|e: String| value_err(format!("isa: {e}")))?;
            if !isa.available() {
                return Err(value_err(format!("isa: this CPU does not support {name}")));
            }
            Ok(Some(isa))
        }
    }
}

/// A receiver the GIL-free part of a call can use (a bare `Receiver` is not `Sync`); `None`
/// once closed.
type Inbox<T> = Mutex<Option<Receiver<T>>>;

/// Waits for the next message with the GIL released, in slices, raising `KeyboardInterrupt`
/// (or whatever a signal handler raises) between them. On an error the receiver is dropped,
/// which stops the worker at its next send. `None`: the sender is gone.
fn wait<T: Send>(py: Python<'_>, inbox: &Inbox<T>) -> PyResult<Option<T>> {
    let lock = || inbox.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let got = py.detach(|| match lock().as_ref() {
            Some(rx) => rx.recv_timeout(SIGNAL_POLL),
            None => Err(RecvTimeoutError::Disconnected),
        });
        // After every message too: a generation sends one per token, so a busy one may never
        // leave the wait by a timeout.
        if let Err(e) = py.check_signals() {
            lock().take();
            return Err(e);
        }
        match got {
            Ok(v) => return Ok(Some(v)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// A loaded model and what it runs on.
struct Core {
    model: Arc<Gpt2>,
    tokenizer: Option<Tokenizer>,
    team: Team,
    path: Option<String>,
    kv_dtype: KvDtype,
}

impl Core {
    fn tokenizer(&self) -> PyResult<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| value_err("this model has no tokenizer files; pass token ids"))
    }

    fn check_ids(&self, ids: &[u32]) -> PyResult<()> {
        let vocab = self.model.config().vocab_size;
        match ids.iter().find(|&&t| t as usize >= vocab) {
            Some(&t) => Err(to_py(Error::Token { id: t, vocab })),
            None => Ok(()),
        }
    }
}

/// A GPT-2 model: `Model()` is the embedded 124M-shape model with random weights; `Model(path)`
/// a HuggingFace GPT-2 directory or a llama.cpp GGUF file.
#[pyclass(name = "Model", module = "inferneo", frozen)]
struct Model {
    core: Arc<Core>,
}

/// The prompt of `generate` and friends: text, or token ids.
fn prompt_ids(core: &Core, prompt: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(text) = prompt.extract::<String>() {
        return core.tokenizer()?.encode(&text).map_err(to_py);
    }
    let ids: Vec<i64> = prompt.extract().map_err(|_| value_err("prompt must be a str or a list of token ids"))?;
    let ids: Vec<u32> = ids
        .into_iter()
        .map(|t| u32::try_from(t).map_err(|_| value_err(format!("token id {t} is negative or too large"))))
        .collect::<PyResult<_>>()?;
    core.check_ids(&ids)?;
    Ok(ids)
}

#[allow(clippy::too_many_arguments)]
fn request(
    core: &Core,
    prompt: &Bound<'_, PyAny>,
    max_tokens: usize,
    temperature: f32,
    top_p: f32,
    top_k: usize,
    seed: u64,
    stop: Option<Vec<u32>>,
    logprobs: Option<usize>,
) -> PyResult<GenerateRequest> {
    let prompt = prompt_ids(core, prompt)?;
    let stop_tokens = stop.unwrap_or_default();
    core.check_ids(&stop_tokens)?;
    let req = GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams { temperature, top_p, top_k, seed, ..SamplingParams::default() },
        stop_tokens,
        top_logprobs: logprobs.unwrap_or(0),
        prompt_logprobs: false,
    };
    req.validate_for(core.model.config()).map_err(to_py)?;
    Ok(req)
}

/// One generation's result.
#[pyclass(name = "Generation", module = "inferneo", frozen, get_all)]
#[derive(Default)]
struct Generation {
    /// The generated text (empty without a tokenizer).
    text: String,
    /// The generated token ids.
    ids: Vec<u32>,
    /// Per token: its log-probability.
    logprobs: Vec<f32>,
    /// Per token: the most likely tokens and their log-probabilities (empty unless asked).
    top_logprobs: Vec<Vec<(u32, f32)>>,
    /// "length" or "stop".
    finish_reason: String,
}

#[pymethods]
impl Generation {
    fn __repr__(&self) -> String {
        format!("Generation(ids={:?}, finish_reason={:?}, text={:?})", self.ids, self.finish_reason, self.text)
    }
}

fn finish_name(reason: FinishReason) -> String {
    match reason {
        FinishReason::Length => "length".into(),
        FinishReason::Stop => "stop".into(),
    }
}

/// What a generation worker sends: a step (with its text delta), then the end.
enum Msg {
    Step(Step, String),
    Done(Result<FinishReason, Error>, String),
}

/// Runs `req` on a worker thread with the model's team; each step goes to the returned channel.
/// The worker stops at its next token once the receiver is dropped.
fn spawn_generation(core: Arc<Core>, req: GenerateRequest) -> PyResult<Inbox<Msg>> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("inferneo-generate".into())
        .spawn(move || {
            let mut decoder = IncrementalDecoder::default();
            let tok = core.tokenizer.as_ref();
            let result = core.team.install(|| {
                inferneo_runtime::generate_steps(&core.model, &req, |step| {
                    let text = tok.map(|t| decoder.push(t, step.id).unwrap_or_default()).unwrap_or_default();
                    tx.send(Msg::Step(step.clone(), text)).is_ok()
                })
            });
            let tail = match (&result, tok) {
                (Ok(_), Some(t)) => decoder.finish(t).unwrap_or_default(),
                _ => String::new(),
            };
            let _ = tx.send(Msg::Done(result.map(|g| g.finish), tail));
        })
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start a generation thread: {e}")))?;
    Ok(Mutex::new(Some(rx)))
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path=None, dtype=None, threads=None, isa=None, kv_dtype="f32"))]
    fn new(
        py: Python<'_>,
        path: Option<std::path::PathBuf>,
        dtype: Option<&str>,
        threads: Option<usize>,
        isa: Option<&str>,
        kv_dtype: &str,
    ) -> PyResult<Model> {
        // None: f32, or a directory's own dtype if `inferneo convert` wrote it.
        let dtype: Option<WeightDtype> =
            dtype.map(str::parse).transpose().map_err(|e: String| value_err(format!("dtype: {e}")))?;
        let kv_dtype: KvDtype = kv_dtype.parse().map_err(|e: String| value_err(format!("kv_dtype: {e}")))?;
        if threads == Some(0) {
            return Err(value_err("threads must be > 0"));
        }
        let threads = threads.unwrap_or_else(inferneo_kernels::default_threads);
        let options = LoadOptions { dtype, isa: parse_isa(isa)?, threads: Some(threads) };
        if let Some(p) = &path {
            if !p.exists() {
                return Err(PyFileNotFoundError::new_err(format!("{}: no such file or directory", p.display())));
            }
        }
        let source = ModelSource::from_path(path.clone());
        let loaded = py.detach(|| inferneo_runtime::load(&source, &options)).map_err(to_py)?;
        let team = Team::new(loaded.threads)
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start {} threads: {e}", loaded.threads)))?;
        let core = Core {
            model: Arc::new(loaded.model),
            tokenizer: loaded.tokenizer,
            team,
            path: path.map(|p| p.display().to_string()),
            kv_dtype,
        };
        Ok(Model { core: Arc::new(core) })
    }

    /// The model's configuration (HuggingFace names).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.core.model.config();
        let d = PyDict::new(py);
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("n_positions", c.n_positions)?;
        d.set_item("n_embd", c.n_embd)?;
        d.set_item("n_layer", c.n_layer)?;
        d.set_item("n_head", c.n_head)?;
        d.set_item("n_inner", c.n_inner())?;
        d.set_item("layer_norm_epsilon", c.layer_norm_epsilon)?;
        d.set_item("eos_token_id", c.eos_token_id)?;
        Ok(d)
    }

    /// "f32", "f16", "bf16", "int8", "w8a8", "w4a8" or "bf16dot".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.core.model.dtype().name()
    }

    /// The kernel set the model runs on: "scalar", "avx2" or "avx512".
    #[getter]
    fn isa(&self) -> &'static str {
        self.core.model.kernels().isa().name()
    }

    #[getter]
    fn threads(&self) -> usize {
        self.core.team.threads()
    }

    fn __repr__(&self) -> String {
        let c = self.core.model.config();
        format!(
            "Model(path={:?}, dtype={:?}, {} layers x {} wide, isa={:?}, threads={})",
            self.core.path.as_deref().unwrap_or("<embedded>"),
            self.dtype(),
            c.n_layer,
            c.n_embd,
            self.isa(),
            self.threads()
        )
    }

    fn tokenize(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        let tok = self.core.tokenizer()?;
        py.detach(|| tok.encode(text)).map_err(to_py)
    }

    fn detokenize(&self, py: Python<'_>, ids: Vec<i64>) -> PyResult<String> {
        let ids: Vec<u32> = ids
            .into_iter()
            .map(|t| u32::try_from(t).map_err(|_| value_err(format!("token id {t} is negative or too large"))))
            .collect::<PyResult<_>>()?;
        self.core.check_ids(&ids)?;
        let tok = self.core.tokenizer()?;
        py.detach(|| tok.decode(&ids)).map_err(to_py)
    }

    /// Logits of every position, `[len(ids), vocab]` float32: bitwise what `inferneo logits`
    /// writes for the same ids.
    fn logits<'py>(&self, py: Python<'py>, ids: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let ids = prompt_ids(&self.core, ids)?;
        if ids.is_empty() {
            return Err(value_err("no tokens to score"));
        }
        let core = self.core.clone();
        let out = py
            .detach(move || {
                core.team.install(|| {
                    let mut cache = KvCache::new(core.model.config());
                    core.model.forward_one(&mut cache, &ids, Logits::All)
                })
            })
            .map_err(to_py)?;
        let vocab = self.core.model.config().vocab_size;
        let rows = out.len() / vocab;
        // Moves the vector into the array: no per-element copy.
        numpy::PyArray1::from_vec(py, out).reshape([rows, vocab])
    }

    /// Generates a continuation of `prompt` (text or ids). The same arguments give the same ids
    /// as `inferneo generate` (`seed` seeds the sampler; `temperature` 0 is greedy).
    #[pyo3(signature = (prompt, max_tokens=16, temperature=0.0, top_p=1.0, top_k=0, seed=0, stop=None, logprobs=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u64,
        stop: Option<Vec<u32>>,
        logprobs: Option<usize>,
    ) -> PyResult<Generation> {
        let req = request(&self.core, prompt, max_tokens, temperature, top_p, top_k, seed, stop, logprobs)?;
        let inbox = spawn_generation(self.core.clone(), req)?;
        let mut g = Generation::default();
        while let Some(msg) = wait(py, &inbox)? {
            match msg {
                Msg::Step(step, text) => {
                    g.text.push_str(&text);
                    g.ids.push(step.id);
                    g.logprobs.push(step.logprob);
                    g.top_logprobs.push(step.top);
                }
                Msg::Done(result, tail) => {
                    g.text.push_str(&tail);
                    g.finish_reason = finish_name(result.map_err(to_py)?);
                    return Ok(g);
                }
            }
        }
        Err(PyRuntimeError::new_err("the generation thread stopped unexpectedly"))
    }

    /// Like `generate`, as an iterator of text deltas (never a split UTF-8 character).
    /// Leaving the loop early stops the generation at its next token.
    #[pyo3(signature = (prompt, max_tokens=16, temperature=0.0, top_p=1.0, top_k=0, seed=0, stop=None))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u64,
        stop: Option<Vec<u32>>,
    ) -> PyResult<Stream> {
        let req = request(&self.core, prompt, max_tokens, temperature, top_p, top_k, seed, stop, None)?;
        Ok(Stream { inbox: spawn_generation(self.core.clone(), req)? })
    }
}

/// The iterator `Model.stream` returns.
#[pyclass(name = "Stream", module = "inferneo", frozen)]
struct Stream {
    inbox: Inbox<Msg>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let close = || self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take();
        loop {
            match wait(py, &self.inbox)? {
                Some(Msg::Step(_, text)) if text.is_empty() => continue,
                Some(Msg::Step(_, text)) => return Ok(Some(text)),
                Some(Msg::Done(result, tail)) => {
                    close();
                    result.map_err(to_py)?;
                    return Ok((!tail.is_empty()).then_some(tail));
                }
                None => return Ok(None),
            }
        }
    }

    /// Stops the generation now (as leaving the loop does once the iterator is collected).
    fn close(&self) {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The continuous-batching engine over a model's weights (shared, not copied).
#[pyclass(name = "Engine", module = "inferneo", frozen)]
struct Engine {
    engine: Arc<RtEngine>,
    core: Arc<Core>,
}

/// The iterator `Engine.stream` returns: text deltas of one sequence in the engine. Closing
/// it, or leaving the loop once it is collected, cancels the sequence and frees its blocks.
#[pyclass(name = "EngineStream", module = "inferneo", frozen)]
struct EngineStream {
    engine: Arc<RtEngine>,
    id: u64,
    inbox: Inbox<Event>,
}

impl Drop for EngineStream {
    fn drop(&mut self) {
        self.engine.cancel(self.id);
    }
}

#[pymethods]
impl EngineStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            let event = wait(py, &self.inbox).inspect_err(|_| self.engine.cancel(self.id))?;
            match event {
                // The binding never asks for prompt log-probabilities.
                Some(Event::Token { text, .. }) if text.is_empty() => continue,
                Some(Event::PromptLogprobs(_)) => continue,
                Some(Event::Token { text, .. }) => return Ok(Some(text)),
                Some(Event::Finished { reason, tail, .. }) => {
                    self.close();
                    if let Finish::Error(e) = reason {
                        return Err(PyRuntimeError::new_err(e));
                    }
                    return Ok((!tail.is_empty()).then_some(tail));
                }
                None => return Ok(None),
            }
        }
    }

    /// Cancels the sequence now; its KV blocks are freed at the engine's next step.
    fn close(&self) {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.engine.cancel(self.id);
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (model, max_seqs=64, kv_cache_mb=512, max_batch_tokens=512))]
    fn new(model: &Model, max_seqs: usize, kv_cache_mb: usize, max_batch_tokens: usize) -> PyResult<Engine> {
        let core = model.core.clone();
        let kv_cache_bytes = kv_cache_mb.checked_mul(1 << 20).ok_or_else(|| value_err("kv_cache_mb is too large"))?;
        let config = EngineConfig {
            limits: inferneo_runtime::scheduler::Limits { max_batch_tokens, max_seqs },
            kv_cache_bytes,
            kv_dtype: core.kv_dtype,
            threads: Some(core.team.threads()),
            prefix_caching: true,
        };
        let engine = RtEngine::start(core.model.clone(), core.tokenizer.clone(), config).map_err(to_py)?;
        Ok(Engine { engine: Arc::new(engine), core })
    }

    /// One sequence through the engine, as an iterator of text deltas (see `Model.stream`).
    #[pyo3(signature = (prompt, max_tokens=16, temperature=0.0, top_p=1.0, top_k=0, seed=0, stop=None))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u64,
        stop: Option<Vec<u32>>,
    ) -> PyResult<EngineStream> {
        let req = request(&self.core, prompt, max_tokens, temperature, top_p, top_k, seed, stop, None)?;
        let handle = self.engine.submit(req).map_err(to_py)?;
        Ok(EngineStream { engine: self.engine.clone(), id: handle.id, inbox: Mutex::new(Some(handle.events)) })
    }

    /// Runs every prompt through the engine at once; results in input order, each bitwise
    /// what the same prompt gives alone.
    #[pyo3(signature = (prompts, max_tokens=16, temperature=0.0, top_p=1.0, top_k=0, seed=0, stop=None, logprobs=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate_many(
        &self,
        py: Python<'_>,
        prompts: &Bound<'_, PyList>,
        max_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u64,
        stop: Option<Vec<u32>>,
        logprobs: Option<usize>,
    ) -> PyResult<Vec<Generation>> {
        let reqs = prompts
            .iter()
            .map(|p| request(&self.core, &p, max_tokens, temperature, top_p, top_k, seed, stop.clone(), logprobs))
            .collect::<PyResult<Vec<_>>>()?;
        let handles = reqs.into_iter().map(|r| self.engine.submit(r).map_err(to_py)).collect::<PyResult<Vec<_>>>()?;
        let ids: Vec<u64> = handles.iter().map(|h| h.id).collect();
        let inboxes: Vec<Inbox<Event>> = handles.into_iter().map(|h| Mutex::new(Some(h.events))).collect();
        let mut out = Vec::with_capacity(inboxes.len());
        for inbox in &inboxes {
            let mut g = Generation::default();
            loop {
                let Some(event) = wait(py, inbox).inspect_err(|_| {
                    // Interrupted: cancel everything this call submitted.
                    ids.iter().for_each(|&id| self.engine.cancel(id));
                })?
                else {
                    return Err(PyRuntimeError::new_err("the engine stopped"));
                };
                match event {
                    Event::Token { id, text, logprob, top } => {
                        g.text.push_str(&text);
                        g.ids.push(id);
                        g.logprobs.push(logprob);
                        g.top_logprobs.push(top);
                    }
                    Event::Finished { reason, tail, .. } => {
                        g.text.push_str(&tail);
                        g.finish_reason = match reason {
                            Finish::Done(r) => finish_name(r),
                            Finish::Cancelled => return Err(PyRuntimeError::new_err("cancelled")),
                            Finish::Error(e) => return Err(PyRuntimeError::new_err(e)),
                        };
                        break;
                    }
                    // The binding never asks for prompt log-probabilities.
                    Event::PromptLogprobs(_) => {}
                }
            }
            out.push(g);
        }
        Ok(out)
    }

    /// The engine's counters and gauges (running, waiting, KV blocks, ...).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.engine.stats();
        let d = PyDict::new(py);
        d.set_item("running", s.running)?;
        d.set_item("waiting", s.waiting)?;
        d.set_item("kv_blocks_total", s.kv_blocks_total)?;
        d.set_item("kv_blocks_free", s.kv_blocks_free)?;
        d.set_item("preemptions", s.preemptions)?;
        d.set_item("steps", s.steps)?;
        d.set_item("generated_tokens", s.generated_tokens)?;
        d.set_item("prefix_cache_hits", s.prefix_cache_hits)?;
        d.set_item("prefix_cache_queries", s.prefix_cache_queries)?;
        Ok(d)
    }
}

/// Weights packed once for repeated `kernels.matmul` calls.
#[pyclass(name = "PackedWeights", module = "inferneo.kernels", frozen)]
struct PackedWeights {
    packed: PackedKn,
    kernels: Kernels,
    dtype: WeightDtype,
}

#[pymethods]
impl PackedWeights {
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.packed.k(), self.packed.n())
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.dtype.name()
    }

    /// Bytes the packed matrix holds.
    #[getter]
    fn nbytes(&self) -> usize {
        self.packed.bytes()
    }
}

fn kernels_for(isa: Option<&str>) -> PyResult<Kernels> {
    LoadOptions { isa: parse_isa(isa)?, ..LoadOptions::default() }.kernels().map_err(to_py)
}

/// One team for the kernels functions, as wide as the default thread count.
fn kernel_team() -> &'static Team {
    static TEAM: std::sync::OnceLock<Team> = std::sync::OnceLock::new();
    TEAM.get_or_init(|| {
        Team::new(inferneo_kernels::default_threads()).unwrap_or_else(|_| Team::new(1).expect("one thread"))
    })
}

fn matrix(a: &PyReadonlyArray2<'_, f32>, name: &str) -> PyResult<(Vec<f32>, usize, usize)> {
    let [rows, cols] = [a.shape()[0], a.shape()[1]];
    let values = a.as_slice().map(<[f32]>::to_vec).unwrap_or_else(|_| a.as_array().iter().copied().collect());
    if values.len() != rows * cols {
        return Err(value_err(format!("{name}: expected a 2-D float32 array")));
    }
    Ok((values, rows, cols))
}

/// Packs `b` (`[K, N]` float32) as `dtype` for `kernels_matmul`.
#[pyfunction]
#[pyo3(signature = (b, dtype="f32", isa=None))]
fn kernels_pack(
    py: Python<'_>,
    b: PyReadonlyArray2<'_, f32>,
    dtype: &str,
    isa: Option<&str>,
) -> PyResult<PackedWeights> {
    let dtype: WeightDtype = dtype.parse().map_err(|e: String| value_err(format!("dtype: {e}")))?;
    let kernels = kernels_for(isa)?;
    let (values, k, n) = matrix(&b, "b")?;
    if k == 0 || n == 0 {
        return Err(value_err("b: both dimensions must be > 0"));
    }
    let packed = py.detach(|| kernel_team().install(|| kernels.pack(&values, Layout::KN, k, n, dtype)));
    Ok(PackedWeights { packed, kernels, dtype })
}

/// `a @ b` on the kernels: `a` `[M, K]` float32, `b` packed weights.
#[pyfunction]
fn kernels_matmul<'py>(
    py: Python<'py>,
    a: PyReadonlyArray2<'py, f32>,
    b: &PackedWeights,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (x, m, k) = matrix(&a, "a")?;
    if k != b.packed.k() {
        return Err(value_err(format!("a has {k} columns but b has {} rows", b.packed.k())));
    }
    let n = b.packed.n();
    let out = py.detach(|| {
        let mut out = vec![0.0f32; m * n];
        kernel_team().install(|| b.kernels.matmul_kn(&x, &b.packed, None, &mut out, m, Epilogue::STORE));
        out
    });
    numpy::PyArray1::from_vec(py, out).reshape([m, n])
}

/// Causal multi-head attention of one sequence: `q`, `k`, `v` are `[T, n_head * head_dim]`
/// float32; row `t` attends to positions `0..=t`. Returns `[T, n_head * head_dim]`.
#[pyfunction]
#[pyo3(signature = (q, k, v, n_head, isa=None))]
fn kernels_attention<'py>(
    py: Python<'py>,
    q: PyReadonlyArray2<'py, f32>,
    k: PyReadonlyArray2<'py, f32>,
    v: PyReadonlyArray2<'py, f32>,
    n_head: usize,
    isa: Option<&str>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let kernels = kernels_for(isa)?;
    let (q, t, e) = matrix(&q, "q")?;
    let (kv_k, tk, ek) = matrix(&k, "k")?;
    let (kv_v, tv, ev) = matrix(&v, "v")?;
    if (tk, ek) != (t, e) || (tv, ev) != (t, e) {
        return Err(value_err("q, k and v must have the same shape"));
    }
    if t == 0 || n_head == 0 || e % n_head != 0 {
        return Err(value_err(format!("{e} columns do not split into {n_head} heads")));
    }
    let head_dim = e / n_head;
    if n_head > 64 {
        return Err(value_err("at most 64 heads"));
    }
    let out = py.detach(|| {
        // The kernel reads queries from q|k|v rows and keys and values from a block cache:
        // here one block holding the whole sequence.
        let mut qkv = vec![0.0f32; t * 3 * e];
        for (r, row) in qkv.chunks_exact_mut(3 * e).enumerate() {
            row[..e].copy_from_slice(&q[r * e..][..e]);
        }
        let (kb, vb) = ([&kv_k[..]], [&kv_v[..]]);
        let k_view = KvView { blocks: &kb[..], block_tokens: t, token_stride: e };
        let v_view = KvView { blocks: &vb[..], block_tokens: t, token_stride: e };
        let kv = [LayerKv::F32 { k: k_view, v: v_view }];
        let rows: Vec<(usize, usize)> = (0..t).map(|p| (0, p)).collect();
        let mut out = vec![0.0f32; t * e];
        let a = AttentionRows { qkv: &qkv, rows: &rows, kv: &kv, n_head, head_dim };
        kernel_team().install(|| kernels.attention(&a, &mut out));
        out
    });
    numpy::PyArray1::from_vec(py, out).reshape([t, e])
}

/// The kernel set the process uses by default: "scalar", "avx2" or "avx512".
#[pyfunction]
fn kernels_isa() -> PyResult<&'static str> {
    Ok(kernels_for(None)?.isa().name())
}

/// Every figure `inferneo roofline --json [--preset NAME]` prints, as a JSON string.
#[pyfunction]
#[pyo3(signature = (quick=true, rounds=None, isa=None, preset="gpt2"))]
fn kernels_roofline_json(
    py: Python<'_>,
    quick: bool,
    rounds: Option<usize>,
    isa: Option<&str>,
    preset: &str,
) -> PyResult<String> {
    let kernels = kernels_for(isa)?;
    let preset = inferneo_runtime::Preset::from_name(preset).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let plan = inferneo_tools::roofline::Plan {
        quick,
        rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
        sgemm: false,
        preset,
    };
    let report = py.detach(|| kernel_team().install(|| inferneo_tools::roofline::report(kernels, plan)));
    report.map(|r| r.to_string()).map_err(PyValueError::new_err)
}

#[pymodule]
fn _inferneo(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Generation>()?;
    m.add_class::<Stream>()?;
    m.add_class::<Engine>()?;
    m.add_class::<EngineStream>()?;
    m.add_class::<PackedWeights>()?;
    m.add_function(wrap_pyfunction!(kernels_pack, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_attention, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_isa, m)?)?;
    m.add_function(wrap_pyfunction!(kernels_roofline_json, m)?)?;
    Ok(())
}
