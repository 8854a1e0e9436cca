//! `inferneo serve`: flags to a [`ServerConfig`], then the server until SIGINT/SIGTERM.

use clap::Args;
use inferneo_runtime::kv_cache::BLOCK_TOKENS;
use inferneo_runtime::scheduler::Limits;
use inferneo_runtime::{EngineConfig, Isa, KvDtype, KvPool, LoadOptions, ModelSource, WeightDtype};
use inferneo_server::{ModelSpec, RepositoryConfig, ServerConfig};
use std::path::PathBuf;
use std::time::Duration;

/// The name the embedded model is served under when no `--model` is given.
pub const EMBEDDED_NAME: &str = "gpt2";

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// A model to serve, as NAME=DIR (a HuggingFace GPT-2 directory, or a llama.cpp GGUF file)
    /// or DIR (named after the directory, or the file without `.gguf`). Repeatable: each model
    /// gets its own engine. Default: the embedded model, as "gpt2".
    #[arg(long = "model", value_name = "NAME=DIR|FILE.gguf")]
    models: Vec<String>,
    /// Kernel threads of one model's engine, as NAME=N (repeatable). Default: a pool of all cores per engine.
    #[arg(long = "threads", value_name = "NAME=N")]
    threads: Vec<String>,
    /// Weight storage: f32, f16, bf16, int8 (weight-only, per output channel), w8a8 (int8
    /// weights and activations, integer dot products), w4a8 (4-bit weights in groups of 32,
    /// int8 activations) or bf16dot (bf16 weights and activations, pairs summed in f32).
    /// Default: f32, or a directory's own dtype if it was written by `inferneo convert`.
    #[arg(long)]
    dtype: Option<WeightDtype>,
    /// KV cache budget per model, in MB.
    #[arg(long, default_value_t = 512)]
    kv_cache_mb: usize,
    /// KV cache storage: f32 or f16.
    #[arg(long, default_value = "f32")]
    kv_dtype: KvDtype,
    /// Sequences one engine runs at once.
    #[arg(long, default_value_t = 64)]
    max_seqs: usize,
    /// Tokens per engine step (prefill chunks + decodes).
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// Sequences that may wait beyond --max-seqs; more are refused with 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long, env = "INFERNEO_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds a completion may take before it is cancelled (504).
    #[arg(long, default_value_t = 600.0)]
    request_timeout: f64,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// Seconds after SIGTERM/SIGINT during which the server still accepts and serves while
    /// `/ready` already answers 503, so a balancer polling `/ready` stops sending first.
    #[arg(long, default_value_t = 0.0)]
    drain_delay: f64,
    /// Do not share the KV blocks of identical prompt prefixes between requests.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    max_body_bytes: usize,
    /// Open connections at most. At the cap a newcomer replaces the oldest connection with no
    /// request in flight; it is refused only when every connection is serving a request.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Open connections from one client address at most (0: no limit; keep 0 behind a load
    /// balancer, whose connections come from few addresses).
    #[arg(long, default_value_t = 0)]
    max_connections_per_ip: usize,
    /// Seconds a new connection may stay silent before it is closed.
    #[arg(long, default_value_t = 5.0)]
    first_byte_timeout: f64,
    /// Also publish the router gauges under another server's names: `vllm` (`vllm:num_requests_waiting`,
    /// `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`, `vllm:cache_config_info`), for
    /// routers and dashboards built for vLLM.
    #[arg(long, value_name = "NAME", value_parser = ["vllm"])]
    metrics_compat: Option<String>,
    /// One log line per request on stderr (request id, model, status, prompt and generated
    /// tokens, TTFT, total time, finish reason): `text` or `json`. `RUST_LOG` sets the level
    /// (default `info`; `RUST_LOG=warn` silences the request lines).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// A Jinja chat template (HuggingFace's format) for `/v1/chat/completions`, replacing each
    /// model's own `chat_template`. GPT-2 has none: `assets/chat-templates/plain.jinja` is a
    /// plain "User:/Assistant:" format for such models.
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    /// A model repository: every subdirectory holding a `config.json` is a model named after
    /// it, loaded on its first request (or at start with --pin). `POST /v1/models/refresh` or
    /// SIGHUP picks up directories added later. Combines with --model.
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Models loaded at once, at most; to load another, the least recently used idle model is
    /// unloaded. 0: no limit.
    #[arg(long, default_value_t = 0)]
    max_loaded_models: usize,
    /// Memory of the loaded models (weights + KV cache), at most, in MB; 0: no limit.
    #[arg(long, default_value_t = 0)]
    models_memory_mb: usize,
    /// Seconds a request waits for room to load its model (every loaded model pinned or
    /// loading) before a 503 with Retry-After.
    #[arg(long, default_value_t = 60.0)]
    load_wait: f64,
    /// Seconds a model may stay idle before it is unloaded; 0: never.
    #[arg(long, default_value_t = 0.0)]
    keep_alive: f64,
    /// A model loaded at start and never evicted (repeatable). With --models-dir, `/ready` waits
    /// for the pinned models only.
    #[arg(long = "pin", value_name = "NAME")]
    pins: Vec<String>,
    /// Reload a loaded model when its files change (checked every 2 s): the new weights load
    /// beside the old, and no request fails.
    #[arg(long)]
    watch: bool,
    /// Keep finished results of deterministic requests (temperature 0, or a given seed) and
    /// answer a repeat of the same request from them, streamed or not; bounded in MB, least
    /// recently used out first; 0: off. `Cache-Control: no-cache` opts a request out.
    #[arg(long, default_value_t = 0)]
    response_cache_mb: usize,
}

/// Longest accepted timeout (about 11.6 days): far past any request, and far from the
/// overflow of `Instant` arithmetic that an unbounded value reaches.
const MAX_SECONDS: f64 = 1e6;

fn seconds(flag: &str, v: f64) -> Result<Duration, String> {
    if !(v > 0.0 && v <= MAX_SECONDS) {
        return Err(format!("{flag} {v}: expected seconds in (0, {MAX_SECONDS}]"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// `v` if it lies in `lo..=hi`, else a one-line error naming the flag.
fn in_range(flag: &str, v: usize, lo: usize, hi: usize) -> Result<usize, String> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{flag} {v}: expected {lo}..={hi}"))
    }
}

/// This machine's memory in MB (`MemTotal`), if Linux says.
fn memory_mb() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: usize = info.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn parse_models(specs: &[String], models_dir: bool) -> Result<Vec<(String, ModelSource)>, String> {
    if specs.is_empty() && !models_dir {
        return Ok(vec![(EMBEDDED_NAME.to_string(), ModelSource::Embedded)]);
    }
    let mut out: Vec<(String, ModelSource)> = Vec::new();
    for s in specs {
        let (name, dir) = match s.split_once('=') {
            Some((n, d)) => (n.to_string(), PathBuf::from(d)),
            None => {
                let dir = PathBuf::from(s);
                // `/models/gpt2-q8_0.gguf` is served as `gpt2-q8_0`.
                let stem = if dir.is_file() { dir.file_stem() } else { dir.file_name() };
                let name = stem.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| s.clone());
                (name, dir)
            }
        };
        if name.is_empty() || dir.as_os_str().is_empty() {
            return Err(format!("--model '{s}': expected NAME=DIR, DIR, NAME=FILE.gguf or FILE.gguf"));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("--model '{s}': the name '{name}' is used twice"));
        }
        if !dir.is_dir() && !dir.is_file() {
            return Err(format!("--model '{s}': {} is not a directory or a GGUF file", dir.display()));
        }
        out.push((name, ModelSource::Dir(dir)));
    }
    Ok(out)
}

fn parse_threads(specs: &[String], names: &[&str]) -> Result<Vec<(String, usize)>, String> {
    specs
        .iter()
        .map(|s| {
            let (name, n) = s.split_once('=').ok_or_else(|| format!("--threads '{s}': expected NAME=N"))?;
            let n = n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_THREADS).contains(n))
                .ok_or_else(|| format!("--threads '{s}': N must be in 1..={MAX_THREADS}"))?;
            if !names.contains(&name) {
                return Err(format!("--threads '{s}': no model named '{name}'"));
            }
            Ok((name.to_string(), n))
        })
        .collect()
}

/// Bounds of the count flags: far past any useful setting, so a typo or a wrapped number is
/// refused instead of allocating or spinning for it (the engine checks the same bounds).
const MAX_SEQS: usize = 1 << 16;
const MAX_BATCH_TOKENS: usize = 1 << 20;
const MAX_QUEUE: usize = 1 << 20;
const MAX_THREADS: usize = 1 << 10;
const MAX_BODY_BYTES: usize = 1 << 30;
const MAX_CONNECTIONS: usize = 1 << 20;
const MAX_LOADED_MODELS: usize = 1 << 16;

/// Every flag checked, before anything is allocated or bound; each error is one line naming
/// its flag.
pub fn config(a: &ServeArgs, isa: Option<Isa>) -> Result<ServerConfig, String> {
    in_range("--max-seqs", a.max_seqs, 1, MAX_SEQS)?;
    in_range("--max-batch-tokens", a.max_batch_tokens, 1, MAX_BATCH_TOKENS)?;
    in_range("--max-queue", a.max_queue, 0, MAX_QUEUE)?;
    in_range("--max-body-bytes", a.max_body_bytes, 1, MAX_BODY_BYTES)?;
    in_range("--max-connections", a.max_connections, 1, MAX_CONNECTIONS)?;
    in_range("--max-connections-per-ip", a.max_connections_per_ip, 0, a.max_connections)?;
    let first_byte_timeout = seconds("--first-byte-timeout", a.first_byte_timeout)?;
    let memory = memory_mb().unwrap_or(usize::MAX >> 20);
    in_range("--kv-cache-mb", a.kv_cache_mb, 1, memory)?;
    let request_timeout = seconds("--request-timeout", a.request_timeout)?;
    let drain_timeout = seconds("--drain-timeout", a.drain_timeout)?;
    if !(0.0..=MAX_SECONDS).contains(&a.drain_delay) {
        return Err(format!("--drain-delay {}: expected seconds in [0, {MAX_SECONDS}]", a.drain_delay));
    }
    let drain_delay = Duration::from_secs_f64(a.drain_delay);
    // clap may treat an empty environment variable as unset; an operator who set it meant a key.
    let empty_env = std::env::var_os("INFERNEO_API_KEY").is_some_and(|v| v.is_empty());
    let api_key = match &a.api_key {
        None if empty_env => {
            return Err("--api-key (or INFERNEO_API_KEY) is empty: give a key, or unset it to serve without one".into())
        }
        Some(k) if k.trim().is_empty() => {
            return Err("--api-key (or INFERNEO_API_KEY) is empty: give a key, or unset it to serve without one".into())
        }
        k => k.clone(),
    };
    in_range("--max-loaded-models", a.max_loaded_models, 0, MAX_LOADED_MODELS)?;
    in_range("--models-memory-mb", a.models_memory_mb, 0, memory)?;
    let load_wait = seconds("--load-wait", a.load_wait)?;
    if !(0.0..=MAX_SECONDS).contains(&a.keep_alive) {
        return Err(format!("--keep-alive {}: expected seconds in [0, {MAX_SECONDS}] (0: never unload)", a.keep_alive));
    }
    let dir_models: Vec<String> = match &a.models_dir {
        None => Vec::new(),
        Some(d) if !d.is_dir() => return Err(format!("--models-dir {}: not a directory", d.display())),
        Some(d) => std::fs::read_dir(d)
            .map_err(|e| format!("--models-dir {}: {e}", d.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("config.json").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect(),
    };
    let models = parse_models(&a.models, a.models_dir.is_some())?;
    if let Some((name, _)) = models.iter().find(|(n, _)| dir_models.contains(n)) {
        return Err(format!("--model {name}: the name is also a directory of --models-dir"));
    }
    // Each model gets its own pool of --kv-cache-mb, allocated and touched at load.
    if a.kv_cache_mb.saturating_mul(models.len()) > memory {
        return Err(format!(
            "--kv-cache-mb {}: {} models x {} MB exceeds this machine's {memory} MB",
            a.kv_cache_mb,
            models.len(),
            a.kv_cache_mb
        ));
    }
    for (name, source) in &models {
        // A directory whose config cannot be read fails its load, reported then.
        let Ok(c) = inferneo_runtime::load_config(source) else { continue };
        let need = KvPool::block_bytes(&c, a.kv_dtype) * c.n_positions.div_ceil(BLOCK_TOKENS);
        if a.kv_cache_mb << 20 < need {
            return Err(format!(
                "--kv-cache-mb {}: model '{name}' needs at least {} MB ({} KV) for one sequence of its full {}-token context",
                a.kv_cache_mb,
                need.div_ceil(1 << 20),
                a.kv_dtype,
                c.n_positions
            ));
        }
    }
    let names: Vec<&str> =
        models.iter().map(|(n, _)| n.as_str()).chain(dir_models.iter().map(String::as_str)).collect();
    let threads = parse_threads(&a.threads, &names)?;
    if let Some(p) = a.pins.iter().find(|p| !names.contains(&p.as_str())) {
        return Err(format!("--pin {p}: no model named '{p}'"));
    }
    // With a budget of N loaded models, each gets a 1/N share of the cores unless --threads
    // says otherwise, so one model's flood cannot take another's threads.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = (a.max_loaded_models > 0).then(|| (cores / a.max_loaded_models).max(1));
    let spec_for = |name: &str, source: ModelSource| ModelSpec {
        name: name.to_string(),
        source,
        load: LoadOptions {
            dtype: a.dtype,
            isa,
            threads: threads.iter().find(|(n, _)| n == name).map(|&(_, t)| t).or(share),
        },
        engine: EngineConfig {
            limits: Limits { max_batch_tokens: a.max_batch_tokens, max_seqs: a.max_seqs },
            kv_cache_bytes: a.kv_cache_mb << 20,
            kv_dtype: a.kv_dtype,
            threads: None,
            prefix_caching: !a.no_prefix_cache,
        },
        max_queue: a.max_queue,
        chat_template: a.chat_template.clone(),
    };
    // Checked now (readable, compiles), so a typo fails at start instead of at the first chat.
    if let Some(file) = &a.chat_template {
        inferneo_runtime::ChatTemplate::from_file(file, None).map_err(|e| format!("--chat-template {e}"))?;
    }
    let specs = models.iter().map(|(name, source)| spec_for(name, source.clone())).collect();
    let repository = RepositoryConfig {
        models_dir: a.models_dir.clone(),
        defaults: Some(spec_for("", ModelSource::Embedded)),
        threads: threads.clone(),
        pinned: a.pins.clone(),
        max_loaded_models: a.max_loaded_models,
        memory_bytes: a.models_memory_mb << 20,
        load_wait,
        keep_alive: Duration::from_secs_f64(a.keep_alive),
        watch: a.watch.then(|| Duration::from_secs(2)),
    };
    Ok(ServerConfig {
        host: a.host.clone(),
        port: a.port,
        models: specs,
        api_key,
        request_timeout,
        drain_timeout,
        drain_delay,
        max_body_bytes: a.max_body_bytes,
        max_connections: a.max_connections,
        max_connections_per_ip: a.max_connections_per_ip,
        first_byte_timeout,
        vllm_metrics: a.metrics_compat.as_deref() == Some("vllm"),
        repository,
        response_cache_bytes: in_range("--response-cache-mb", a.response_cache_mb, 0, memory)? << 20,
        ..ServerConfig::default()
    })
}

pub fn run(a: ServeArgs, isa: Option<Isa>) -> Result<(), String> {
    let config = config(&a, isa)?;
    init_logging(&a.log_format);
    inferneo_server::run_blocking(config)
}

/// The request log (`tracing` events from the server) on stderr, as text or one JSON object
/// per line.
fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour codes only for a terminal: in a file or a log collector they are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (never in the CLI) would only be refused; nothing to report.
    let _ = if format == "json" { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
}
