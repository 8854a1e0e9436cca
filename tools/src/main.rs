//! The `inferneo` command line: argument parsing and one function per subcommand.
//! No model math here; everything runs through `inferneo_runtime`.
#![forbid(unsafe_code)]

mod bench;
mod npy;
use inferneo_tools::roofline;
mod serve;
mod throughput;

use clap::{Args, Parser, Subcommand};
use inferneo_kernels::{Isa, Team};
use inferneo_runtime::init::{self, Preset, StoreDtype};
use inferneo_runtime::scheduler::Limits;
use inferneo_runtime::tokenizer::IncrementalDecoder;
use inferneo_runtime::{
    generate, EngineConfig, GenerateRequest, KvDtype, LoadOptions, Loaded, Logits, ModelSource, SamplingParams,
    Tokenizer, WeightDtype,
};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const EMBEDDED_NOTE: &str =
    "Without --model, the embedded default is used: GPT-2 124M shape with deterministic random \
weights (seed 0) and the real GPT-2 tokenizer. It runs offline, but its text is not meaningful language.";

#[derive(Parser)]
#[command(name = "inferneo", version, about = "Inferneo: a CPU runtime for GPT-2-family models.", after_help = EMBEDDED_NOTE)]
struct Cli {
    /// Kernel ISA: auto (best available), avx512, avx2 or scalar. Also settable with INFERNEO_ISA.
    #[arg(long, global = true, value_name = "ISA")]
    isa: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per process: boxing the large `serve` variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Serve models over an OpenAI-compatible HTTP API (default: the embedded model on 127.0.0.1:8000).
    Serve(serve::ServeArgs),
    /// Load-test an OpenAI-compatible server (default: ours, in-process): latency, throughput,
    /// concurrency, batch and production scenarios; Markdown, JSON and SVG.
    Bench(Box<bench::BenchArgs>),
    /// Write the logits of every position as a little-endian f32 .npy of shape [len, vocab].
    Logits(LogitsArgs),
    /// Generate a continuation of a prompt.
    Generate(GenerateArgs),
    /// Print the token ids of a text.
    Tokenize(TokenizeArgs),
    /// Print the text of comma-separated token ids.
    Detokenize(DetokenizeArgs),
    /// Write a HuggingFace-format GPT-2 directory with deterministic random weights.
    Init(InitArgs),
    /// Write a model directory whose matrices are stored quantized (int8, w8a8, w4a8): it loads with
    /// --model DIR, reading no f32 weights, and gives the logits of the source loaded with that dtype.
    Convert(ConvertArgs),
    /// Measure read bandwidth, FMA peak, and each kernel at a GPT-2 preset's shapes against that roofline.
    Roofline(RooflineArgs),
    /// Aggregate generation throughput of the batching engine at several concurrency levels.
    Throughput(ThroughputArgs),
}

#[derive(Args)]
#[command(after_help = EMBEDDED_NOTE)]
struct ThroughputArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Comma-separated numbers of concurrent requests.
    #[arg(long, default_value = "1,4,8,16,32")]
    concurrency: String,
    #[arg(long, default_value_t = 50)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 100)]
    max_tokens: usize,
    /// Tokens per engine step (prefill chunks + decodes).
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// KV cache budget in MB.
    #[arg(long, default_value_t = 512)]
    kv_cache_mb: usize,
    /// KV cache storage: f32 or f16.
    #[arg(long, default_value = "f32")]
    kv_dtype: KvDtype,
    /// Compute every prompt in full instead of sharing cached prefix blocks.
    #[arg(long)]
    no_prefix_cache: bool,
    /// Sweep the levels this many times in turn and report each level's fastest round (a
    /// shared machine's slow spells last seconds to minutes); every round's tok/s is listed.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
}

#[derive(Args)]
struct RooflineArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON to this file (the table is still printed).
    #[arg(long, value_name = "FILE")]
    json_file: Option<PathBuf>,
    /// Fewer shapes and shorter timings (a smoke run).
    #[arg(long)]
    quick: bool,
    /// Whole sweeps in turn; each figure is the best of its rounds (a shared machine's slow
    /// spells last seconds to minutes, so one sweep can catch some shapes in one). Default: 3,
    /// or 1 with --quick.
    #[arg(long)]
    rounds: Option<usize>,
    /// Only the f32 GEMMs at M >= 32, in cache: what `tools/reference/sgemm_vs_numpy.py` runs
    /// against numpy, round by round.
    #[arg(long)]
    sgemm: bool,
    /// Whose product shapes: tiny, gpt2, distilgpt2, gpt2-medium, gpt2-large or gpt2-xl.
    #[arg(long, default_value = "gpt2")]
    preset: String,
}

#[derive(Args)]
#[command(after_help = EMBEDDED_NOTE)]
struct ModelArg {
    /// HuggingFace GPT-2 directory (config.json, model.safetensors, tokenizer files), or a
    /// llama.cpp GGUF file of a GPT-2 (F32, F16, BF16, Q8_0 or Q4_0 tensors).
    #[arg(long, value_name = "DIR|FILE.gguf")]
    model: Option<PathBuf>,
    /// Weight storage at run time: f32, f16, bf16, int8 (weight-only, per-channel scales), w8a8
    /// (the same int8 weights with int8 activations and integer dot products), w4a8 (4-bit
    /// weights, a scale per 32 k, int8 activations: 5/8 of w8a8's bytes, least exact) or bf16dot
    /// (bf16 weights times activations rounded to bf16, pairs summed in f32: AVX512-BF16's
    /// vdpbf16ps where the CPU has it). Default: f32, or the directory's own dtype if it was
    /// written by `inferneo convert`.
    #[arg(long)]
    dtype: Option<WeightDtype>,
}

impl ModelArg {
    fn source(&self) -> ModelSource {
        ModelSource::from_path(self.model.clone())
    }

    fn options(&self, isa: Option<Isa>) -> LoadOptions {
        LoadOptions { dtype: self.dtype, isa, threads: None }
    }
}

#[derive(Args)]
#[command(after_help = EMBEDDED_NOTE)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Comma-separated token ids, e.g. 464,2068,7586.
    #[arg(long, value_name = "IDS", conflicts_with = "prompt", required_unless_present = "prompt")]
    tokens: Option<String>,
    /// Text to tokenize instead of --tokens.
    #[arg(long)]
    prompt: Option<String>,
    /// Output .npy file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
#[command(after_help = EMBEDDED_NOTE)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Prompt text.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_name = "IDS")]
    tokens: Option<String>,
    /// Number of tokens to generate.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Nucleus sampling mass in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Keep only the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// RNG seed: the same seed gives the same tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Penalty in [-2, 2] on tokens already generated (once per token).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Penalty in [-2, 2] on tokens already generated (per occurrence).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Print token ids instead of text.
    #[arg(long)]
    ids: bool,
    /// Stop at <|endoftext|>.
    #[arg(long)]
    stop_at_eos: bool,
}

#[derive(Args)]
#[command(after_help = EMBEDDED_NOTE)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    text: String,
}

#[derive(Args)]
#[command(after_help = EMBEDDED_NOTE)]
struct DetokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Comma-separated token ids.
    ids: String,
}

#[derive(Args)]
struct InitArgs {
    /// Model shape: tiny, gpt2, distilgpt2, gpt2-medium, gpt2-large or gpt2-xl.
    #[arg(long)]
    preset: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Stored weight precision: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Args)]
struct ConvertArgs {
    /// HuggingFace GPT-2 directory with float weights (config.json, model.safetensors).
    #[arg(long, value_name = "SRC")]
    model: PathBuf,
    /// Quantized dtype to store: int8, w8a8 (the same stored weights: a directory of either
    /// serves both) or w4a8.
    #[arg(long)]
    dtype: WeightDtype,
    /// Output directory: new, or empty.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

type CliResult<T = ()> = Result<T, String>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help / --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{} (see --help)", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// clap's message as one line. Its first line alone can end in a colon, with what it refers to
/// (the missing arguments, say) on the lines below, so those are joined in up to the usage.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> =
        text.lines().map(str::trim).take_while(|l| !l.starts_with("Usage:")).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        return "error: invalid arguments".into();
    }
    lines.join(" ")
}

/// Runs `f` with a kernel team as wide as the default pool installed on this thread, as the
/// engine runs its steps (see `inferneo_kernels::team`).
fn with_team<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let team = Team::new(rayon::current_num_threads()).map_err(|e| format!("cannot start the kernel threads: {e}"))?;
    Ok(team.install(f))
}

fn run(cli: Cli) -> CliResult {
    let isa = select_isa(cli.isa.as_deref())?;
    // One thread per physical core unless RAYON_NUM_THREADS says otherwise (rayon's own default
    // is every logical CPU). The engines' teams and `with_team` take the global pool's width.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = inferneo_kernels::default_threads();
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
    }
    match cli.command {
        Command::Serve(a) => serve::run(a, isa),
        Command::Bench(a) => bench::run(*a, isa),
        Command::Logits(a) => with_team(move || logits(a, isa))?,
        Command::Generate(a) => with_team(move || generate_cmd(a, isa))?,
        Command::Tokenize(a) => {
            let tok = inferneo_runtime::load_tokenizer(&a.model.source()).map_err(|e| e.to_string())?;
            let ids = tok.encode(&a.text).map_err(|e| e.to_string())?;
            println!("{}", join_ids(&ids));
            Ok(())
        }
        Command::Detokenize(a) => {
            let tok = inferneo_runtime::load_tokenizer(&a.model.source()).map_err(|e| e.to_string())?;
            let ids = parse_ids(&a.ids)?;
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
                return Err(format!("token id {bad} is outside the vocabulary (size {})", tok.vocab_size()));
            }
            println!("{}", tok.decode(&ids).map_err(|e| e.to_string())?);
            Ok(())
        }
        // With a kernel team, as the engine calls its kernels.
        Command::Roofline(a) => with_team(|| {
            let preset = Preset::from_name(&a.preset).map_err(|e| match e {
                inferneo_runtime::Error::Invalid(msg) => format!("--preset: {msg}"),
                other => format!("--preset: {other}"),
            })?;
            let kernels = LoadOptions { isa, ..LoadOptions::default() }.kernels().map_err(|e| e.to_string())?;
            roofline::run(
                kernels,
                a.json,
                a.json_file.as_deref(),
                roofline::Plan {
                    quick: a.quick,
                    rounds: a.rounds.unwrap_or(if a.quick { 1 } else { 3 }),
                    sgemm: a.sgemm,
                    preset,
                },
            )
        })?,
        Command::Throughput(a) => {
            let levels = a
                .concurrency
                .split(',')
                .map(|v| v.trim().parse::<usize>().ok().filter(|&n| n > 0))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    format!("--concurrency '{}': expected comma-separated positive integers", a.concurrency)
                })?;
            let config = EngineConfig {
                limits: Limits {
                    max_batch_tokens: a.max_batch_tokens.max(1),
                    max_seqs: levels.iter().copied().max().unwrap_or(1),
                },
                kv_cache_bytes: a.kv_cache_mb.checked_mul(1 << 20).ok_or("--kv-cache-mb: too large")?,
                kv_dtype: a.kv_dtype,
                threads: None,
                prefix_caching: !a.no_prefix_cache,
            };
            drop(load_model(&a.model, isa)?);
            let workload = throughput::Workload { prompt_tokens: a.prompt_tokens, max_tokens: a.max_tokens };
            let (source, options) = (a.model.source(), a.model.options(isa));
            throughput::run(
                || inferneo_runtime::load(&source, &options).expect("loaded once already").model,
                &levels,
                a.rounds,
                &workload,
                config,
            )
        }
        Command::Convert(a) => convert(a),
        Command::Init(a) => {
            let preset = Preset::from_name(&a.preset).map_err(|e| e.to_string())?;
            let dtype = match a.dtype.as_str() {
                "f32" => StoreDtype::F32,
                "f16" => StoreDtype::F16,
                "bf16" => StoreDtype::Bf16,
                other => return Err(format!("unknown dtype '{other}' (expected f32, f16 or bf16)")),
            };
            init::write_model_dir(&a.out, &preset.config(), a.seed, dtype).map_err(|e| e.to_string())?;
            eprintln!("wrote {} (preset {}, seed {}, {})", a.out.display(), preset.name(), a.seed, a.dtype);
            Ok(())
        }
    }
}

/// `inferneo convert`: arguments checked cheapest first, each error naming its flag.
fn convert(a: ConvertArgs) -> CliResult {
    use inferneo_runtime::convert::{check_out, Conversion};
    if a.dtype.stored_form().is_none() {
        let quantized: Vec<&str> =
            WeightDtype::ALL.iter().filter(|d| d.stored_form().is_some()).map(|d| d.name()).collect();
        return Err(format!(
            "--dtype {}: convert stores quantized weights only ({}); the float dtypes are made from the checkpoint at load",
            a.dtype,
            quantized.join(", ")
        ));
    }
    check_out(&a.out).map_err(|e| format!("--out: {e}"))?;
    let conversion = Conversion::open(&a.model, a.dtype).map_err(|e| format!("--model: {e}"))?;
    let t0 = std::time::Instant::now();
    let written = with_team(|| conversion.write(&a.out))?.map_err(|e| e.to_string())?;
    eprintln!(
        "wrote {} ({} weights, {:.0} MB, and {}) in {:.1} s",
        a.out.display(),
        a.dtype,
        written.bytes as f64 / 1e6,
        written.copied.join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--isa`: `None` (or `auto`) leaves the choice to `INFERNEO_ISA` or the CPU.
fn select_isa(flag: Option<&str>) -> CliResult<Option<Isa>> {
    match flag {
        None | Some("auto") => Ok(None),
        Some(name) => {
            let isa: Isa = name.parse().map_err(|e| format!("--isa: {e}"))?;
            if !isa.available() {
                return Err(format!("--isa {name}: this CPU does not support {name}"));
            }
            Ok(Some(isa))
        }
    }
}

/// Loads the model and prints one line about it: shape, dtype, size, kernels, threads, memory.
fn load_model(arg: &ModelArg, isa: Option<Isa>) -> CliResult<Loaded> {
    if arg.model.is_none() {
        eprintln!("note: using the embedded GPT-2 (124M shape, random weights; text is not meaningful)");
    }
    let loaded = inferneo_runtime::load(&arg.source(), &arg.options(isa)).map_err(|e| e.to_string())?;
    let m = &loaded.model;
    eprintln!(
        "note: loaded {} layers x {} wide, {} weights ({:.0} MB packed), kernels {}, {} threads, resident {}",
        m.config().n_layer,
        m.config().n_embd,
        m.dtype(),
        m.packed_bytes() as f64 / 1e6,
        m.kernels().isa(),
        loaded.threads,
        resident_mb().map_or("unknown".into(), |mb| format!("{mb:.0} MB")),
    );
    Ok(loaded)
}

/// This process's resident set size (Linux `/proc/self/status`), in MB (10^6 bytes, as the
/// packed size beside it).
fn resident_mb() -> Option<f64> {
    status_mb("VmRSS:")
}

/// The most this process has held resident so far (`VmHWM`: what `/usr/bin/time -v` reports
/// as its maximum resident set size, and what a memory limit meets), in MB.
fn peak_resident_mb() -> Option<f64> {
    status_mb("VmHWM:")
}

fn status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0 / 1e6)
}

fn prompt_ids(
    tok: Option<&Tokenizer>,
    dir: &Option<PathBuf>,
    prompt: &Option<String>,
    tokens: &Option<String>,
) -> CliResult<Vec<u32>> {
    match (prompt, tokens) {
        (_, Some(ids)) => parse_ids(ids),
        (Some(text), None) => {
            let tok = tok.ok_or_else(|| {
                format!(
                    "{}: no tokenizer files, so --prompt cannot be used; pass --tokens",
                    dir.as_ref().map_or("model".into(), |d| d.display().to_string())
                )
            })?;
            tok.encode(text).map_err(|e| e.to_string())
        }
        (None, None) => Err("give --prompt or --tokens".into()),
    }
}

fn logits(a: LogitsArgs, isa: Option<Isa>) -> CliResult {
    let Loaded { model, tokenizer: tok, .. } = load_model(&a.model, isa)?;
    let ids = prompt_ids(tok.as_ref(), &a.model.model, &a.prompt, &a.tokens)?;
    if ids.is_empty() {
        return Err("no tokens to score".into());
    }
    let mut cache = inferneo_runtime::KvCache::new(model.config());
    let out = model.forward_one(&mut cache, &ids, Logits::All).map_err(|e| e.to_string())?;
    let bytes = npy::encode_f32(&out, ids.len(), model.config().vocab_size);
    std::fs::write(&a.out, bytes).map_err(|e| format!("{}: {e}", a.out.display()))?;
    eprintln!("wrote {} ([{}, {}] f32)", a.out.display(), ids.len(), model.config().vocab_size);
    Ok(())
}

fn generate_cmd(a: GenerateArgs, isa: Option<Isa>) -> CliResult {
    let Loaded { model, tokenizer: tok, .. } = load_model(&a.model, isa)?;
    let prompt = prompt_ids(tok.as_ref(), &a.model.model, &a.prompt, &a.tokens)?;
    let eos = tok.as_ref().and_then(|t| t.eos_id()).or(model.config().eos_token_id);
    let req = GenerateRequest {
        prompt,
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
            logit_bias: Vec::new(),
            min_tokens: 0,
        },
        stop_tokens: if a.stop_at_eos { eos.into_iter().collect() } else { Vec::new() },
        top_logprobs: 0,
        prompt_logprobs: false,
    };
    req.validate(&model).map_err(|e| e.to_string())?;
    let text_mode = !a.ids && tok.is_some();
    let mut out = std::io::stdout().lock();
    let mut decoder = IncrementalDecoder::default();
    let mut first = true;
    let mut failed = None;
    let result = generate(&model, &req, |id| {
        if text_mode {
            match decoder.push(tok.as_ref().expect("text mode has a tokenizer"), id) {
                Ok(delta) => {
                    let _ = out.write_all(delta.as_bytes());
                }
                Err(e) => failed = Some(e.to_string()),
            }
        } else {
            let _ = write!(out, "{}{id}", if first { "" } else { "," });
        }
        let _ = out.flush();
        first = false;
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = failed {
        return Err(e);
    }
    if text_mode {
        let rest = decoder.finish(tok.as_ref().expect("tokenizer")).map_err(|e| e.to_string())?;
        let _ = out.write_all(rest.as_bytes());
    }
    let _ = writeln!(out);
    eprintln!(
        "[{} tokens, finish: {:?}, peak resident {}]",
        result.tokens.len(),
        result.finish,
        peak_resident_mb().map_or("unknown".into(), |mb| format!("{mb:.0} MB"))
    );
    Ok(())
}

fn parse_ids(s: &str) -> CliResult<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| format!("'{t}' is not a token id (expected comma-separated non-negative integers)"))
        })
        .collect()
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}
