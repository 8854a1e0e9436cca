//! The engine: owns the model and the KV pool on its own thread, separate from any async
//! runtime, and runs the continuous-batching loop: take new requests and cancellations,
//! plan a step (`scheduler.rs`), run one batched forward pass, sample, and send each request
//! its events. Knows nothing about HTTP.

use crate::error::{Error, Result};
use crate::generate::{FinishReason, GenerateRequest};
use crate::gpt2::{Gpt2, Logits, SeqInput};
use crate::kv_cache::{KvDtype, KvPool, BLOCK_TOKENS};
use crate::sampling::Sampler;
use crate::scheduler::{Batch, Limits, Scheduler};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};
use inferneo_kernels::{team, Team};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What a request's stream carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// One generated token, the text it completes (UTF-8 safe; empty while a character is
    /// incomplete or without a tokenizer) and its log-probability under the model.
    Token { id: u32, text: String, logprob: f32, top: Vec<(u32, f32)> },
    /// The request ended; no event follows. `tail` is text still held back by the incremental
    /// decoder (an unfinished character, as U+FFFD), normally empty.
    Finished { reason: Finish, generated: usize, tail: String },
    /// Sent once, before the first token, to a request with `prompt_logprobs`: for each prompt
    /// position after the first, the prompt token there, its log-probability given the tokens
    /// before it, and the most likely alternatives (as many as `top_logprobs`).
    PromptLogprobs(Vec<PromptLogprob>),
}

/// One prompt token's log-probability (see [`Event::PromptLogprobs`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Where a request's events go. The engine calls `send` on its own thread, so it must not
/// block; returning `false` (the receiver is gone) cancels the request at that point.
pub trait EventSink: Send {
    fn send(&mut self, event: Event) -> bool;
}

impl EventSink for Sender<Event> {
    fn send(&mut self, event: Event) -> bool {
        Sender::send(self, event).is_ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    Done(FinishReason),
    Cancelled,
    Error(String),
}

/// Counters and gauges, updated every step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub preemptions: u64,
    pub steps: u64,
    pub generated_tokens: u64,
    /// Full prompt blocks looked up in the prefix cache at admission, and how many were reused
    /// rather than computed: the hit rate is `prefix_cache_hits / prefix_cache_queries`.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
}

/// Engine settings.
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    pub limits: Limits,
    /// KV pool size.
    pub kv_cache_bytes: usize,
    /// KV storage precision.
    pub kv_dtype: KvDtype,
    /// Worker threads of this engine's own pool, which runs its loop and its kernels; `None`:
    /// as many as the process-wide pool has.
    pub threads: Option<usize>,
    /// Share the KV blocks of identical prompt prefixes between requests.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            limits: Limits::default(),
            kv_cache_bytes: 512 << 20,
            kv_dtype: KvDtype::F32,
            threads: None,
            prefix_caching: true,
        }
    }
}

/// Largest values [`EngineConfig::validate`] accepts: far beyond any useful setting, so a typo
/// or a wrapped number is refused instead of allocating or spinning for it.
const MAX_SEQS: usize = 1 << 16;
const MAX_BATCH_TOKENS: usize = 1 << 20;
const MAX_THREADS: usize = 1 << 10;

impl EngineConfig {
    /// Checks every limit for a model of `config`'s shape: zero sequences, tokens, threads or
    /// KV blocks would leave requests waiting forever, so each must be at least 1 (and below a
    /// bound that no machine needs).
    pub fn validate(&self, config: &crate::config::Config) -> Result<()> {
        let Limits { max_seqs, max_batch_tokens } = self.limits;
        let check = |name: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(Error::Invalid(format!("{name} must be in 1..={max}, got {v}")))
            }
        };
        check("max_seqs", max_seqs, MAX_SEQS)?;
        check("max_batch_tokens", max_batch_tokens, MAX_BATCH_TOKENS)?;
        if let Some(t) = self.threads {
            check("threads", t, MAX_THREADS)?;
        }
        let block = KvPool::block_bytes(config, self.kv_dtype);
        if self.kv_cache_bytes < block {
            return Err(Error::Invalid(format!(
                "the KV cache budget of {} bytes holds no block; one block takes {block} bytes",
                self.kv_cache_bytes
            )));
        }
        Ok(())
    }
}

enum Command {
    Submit { id: u64, req: GenerateRequest, events: Box<dyn EventSink> },
    Cancel(u64),
    Shutdown,
}

/// A submitted request: its id and its event stream.
pub struct RequestHandle {
    pub id: u64,
    pub events: Receiver<Event>,
}

/// Handle to the engine thread. Dropping it stops the thread after the current step.
pub struct Engine {
    tx: Sender<Command>,
    next_id: AtomicU64,
    stats: Arc<Mutex<Stats>>,
    thread: Option<JoinHandle<()>>,
    config: crate::config::Config,
    max_blocks: usize,
}

impl Engine {
    /// Starts the engine thread. Errors if a limit is out of range ([`EngineConfig::validate`]),
    /// the KV cache cannot be allocated, or its threads cannot be started.
    /// The model may be shared (an `Arc`) with other engines or callers: it is only read.
    pub fn start(model: impl Into<Arc<Gpt2>>, tokenizer: Option<Tokenizer>, settings: EngineConfig) -> Result<Engine> {
        let model: Arc<Gpt2> = model.into();
        settings.validate(model.config())?;
        let mut pool = KvPool::with_budget(model.config(), settings.kv_cache_bytes, settings.kv_dtype)?;
        pool.set_prefix_caching(settings.prefix_caching);
        let (config_copy, max_blocks) = (model.config().clone(), pool.total_blocks());
        let stats =
            Arc::new(Mutex::new(Stats { kv_blocks_total: max_blocks, kv_blocks_free: max_blocks, ..Stats::default() }));
        let (tx, rx) = channel();
        let worker = Worker {
            model,
            tokenizer,
            sched: Scheduler::new(settings.limits, pool),
            reqs: HashMap::new(),
            stats: stats.clone(),
            rx,
        };
        // The engine thread runs every parallel loop with a team of its own (by default as
        // many threads as rayon's process-wide pool) whose helpers spin between loops: the
        // loop's thread takes part in the work, and no kernel call waits for a sleeping thread
        // to wake (see `inferneo_kernels::team`).
        let n = settings.threads.unwrap_or_else(rayon::current_num_threads).max(1);
        let team = Team::new(n).map_err(|e| Error::Invalid(format!("cannot start {n} threads: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("inferneo-engine".into())
            .spawn(move || team.install(|| worker.run()))
            .map_err(|e| Error::Invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine { tx, next_id: AtomicU64::new(1), stats, thread: Some(thread), config: config_copy, max_blocks })
    }

    /// The served model's configuration.
    pub fn config(&self) -> &crate::config::Config {
        &self.config
    }

    /// Validates and queues a request. Errors for requests that can never run (bad ids,
    /// beyond the context, more KV blocks than the whole pool).
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestHandle> {
        let (events, rx) = channel();
        let id = self.submit_with(req, Box::new(events))?;
        Ok(RequestHandle { id, events: rx })
    }

    /// [`Engine::submit`] with the events delivered to `sink` (an async channel, say); returns
    /// the request's id.
    pub fn submit_with(&self, req: GenerateRequest, events: Box<dyn EventSink>) -> Result<u64> {
        req.validate_for(&self.config)?;
        let blocks = (req.prompt.len() + req.max_tokens).div_ceil(BLOCK_TOKENS);
        if blocks > self.max_blocks {
            return Err(Error::KvExhausted { need: blocks, free: self.max_blocks });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Command::Submit { id, req, events })
            .map_err(|_| Error::Invalid("the engine has stopped".into()))?;
        Ok(id)
    }

    /// Cancels a request; its blocks are freed at the next step.
    pub fn cancel(&self, id: u64) {
        let _ = self.tx.send(Command::Cancel(id));
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A sampled token, its logprob and the top alternatives.
type Pick = (u32, f32, Vec<(u32, f32)>);

struct Live {
    sampler: Sampler,
    max_tokens: usize,
    stop: Vec<u32>,
    top_logprobs: usize,
    /// The prompt, kept for requests that want its log-probabilities (else empty), and those
    /// computed so far (prefill comes in chunks; a preempted sequence recomputes from 0).
    prompt: Vec<u32>,
    prompt_logprobs: Option<Vec<PromptLogprob>>,
    generated: usize,
    decoder: IncrementalDecoder,
    events: Box<dyn EventSink>,
}

struct Worker {
    model: Arc<Gpt2>,
    tokenizer: Option<Tokenizer>,
    sched: Scheduler,
    reqs: HashMap<u64, Live>,
    stats: Arc<Mutex<Stats>>,
    rx: Receiver<Command>,
}

impl Worker {
    fn run(mut self) {
        loop {
            // Idle: block for the next command. Busy: take what arrived without waiting.
            if self.sched.is_idle() {
                let Ok(cmd) = self.rx.recv() else { return };
                if !self.handle(cmd) {
                    return;
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                if !self.handle(cmd) {
                    return;
                }
            }
            let batch = self.sched.schedule();
            if !batch.is_empty() {
                let ids: Vec<u64> = batch.seqs.iter().map(|s| s.id).collect();
                // A failing (or, through a bug, panicking) step fails the requests in it and
                // nothing else: the engine keeps serving the others.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(batch)));
                let error = match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("internal error while running the model".to_string()),
                };
                if let Some(e) = error {
                    for id in ids {
                        self.finish(id, Finish::Error(e.clone()));
                    }
                }
            }
            self.publish();
        }
    }

    /// Handles one command; `false` to stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit { id, req, events } => {
                if req.prompt_logprobs {
                    // Cached blocks come without their positions' logits.
                    self.sched.add_uncached(id, req.prompt.clone());
                } else {
                    self.sched.add(id, req.prompt.clone());
                }
                let live = Live {
                    sampler: Sampler::new(req.sampling, self.model.kernels()),
                    max_tokens: req.max_tokens,
                    stop: req.stop_tokens,
                    top_logprobs: req.top_logprobs,
                    prompt: if req.prompt_logprobs { req.prompt.clone() } else { Vec::new() },
                    prompt_logprobs: req.prompt_logprobs.then(Vec::new),
                    generated: 0,
                    decoder: IncrementalDecoder::default(),
                    events,
                };
                self.reqs.insert(id, live);
                if req.max_tokens == 0 && !req.prompt_logprobs {
                    self.finish(id, Finish::Done(FinishReason::Length));
                }
            }
            Command::Cancel(id) => self.finish(id, Finish::Cancelled),
            Command::Shutdown => return false,
        }
        true
    }

    /// Runs one scheduled batch: the forward pass, then a token for each sequence whose chunk
    /// reached its end. The batch's tables go back to the scheduler whether or not it ran.
    fn step(&mut self, batch: Batch) -> Result<()> {
        // Per sequence: whether the chunk needs every position's logits (a prompt whose
        // log-probabilities are wanted), and where its rows start in the logits.
        let all: Vec<bool> = batch
            .seqs
            .iter()
            .map(|s| self.reqs.get(&s.id).is_some_and(|l| l.prompt_logprobs.is_some() && s.start < l.prompt.len()))
            .collect();
        let inputs: Vec<SeqInput> = batch
            .seqs
            .iter()
            .zip(&all)
            .map(|(s, &all)| SeqInput {
                tokens: &s.tokens,
                cache: &s.table,
                logits: if all {
                    Logits::All
                } else if s.logits {
                    Logits::Last
                } else {
                    Logits::None
                },
            })
            .collect();
        let result = self.model.forward(self.sched.pool_mut(), &inputs);
        drop(inputs);
        // Sampled sequences with the row of their last position; prompt chunks with their rows.
        let mut rows: Vec<(u64, usize)> = Vec::new();
        let mut prompt_rows: Vec<(u64, usize, usize, usize)> = Vec::new();
        let mut next_row = 0;
        for (s, &all) in batch.seqs.iter().zip(&all) {
            let n = if all { s.tokens.len() } else { s.logits as usize };
            if all {
                prompt_rows.push((s.id, next_row, n, s.start));
            }
            if s.logits {
                rows.push((s.id, next_row + n - 1));
            }
            next_row += n;
        }
        self.sched.complete(batch, result.is_ok());
        let logits = result?;
        let vocab = self.model.config().vocab_size;
        for &(id, r0, n, start) in &prompt_rows {
            self.prompt_logprobs(id, &logits[r0 * vocab..(r0 + n) * vocab], start);
        }
        // A prompt-scoring request (no tokens to generate) is done once its prompt is.
        let scored: Vec<u64> =
            rows.iter().filter(|(id, _)| self.reqs.get(id).is_some_and(|l| l.max_tokens == 0)).map(|r| r.0).collect();
        for id in scored {
            self.finish(id, Finish::Done(FinishReason::Length));
        }
        // Sample every sequence in parallel (each has its own RNG, so the order cannot matter),
        // then send the tokens in batch order.
        let mut samplers: Vec<(u64, Sampler)> =
            rows.iter().filter_map(|(id, _)| self.reqs.get(id).map(|l| (*id, l.sampler.clone()))).collect();
        let per_seq: Vec<(usize, &[u32])> = samplers
            .iter()
            .map(|(id, _)| self.reqs.get(id).map_or((0, &[][..]), |l| (l.top_logprobs, &l.stop[..])))
            .collect();
        let kernels = self.model.kernels();
        // Per sequence: its sampler, (top logprobs wanted, stop ids), and the pick.
        type Job<'a> = (&'a mut (u64, Sampler), (usize, &'a [u32]), Option<Pick>);
        let mut picks: Vec<Job> = samplers.iter_mut().zip(per_seq).map(|(s, n)| (s, n, None)).collect();
        team::for_each_mut(&mut picks, |_, ((id, sampler), (n, stops), pick)| {
            let row = rows.iter().find(|(r, _)| r == id).expect("sampled row").1;
            let l = &logits[row * vocab..][..vocab];
            let token = sampler.sample_with_stops(l, stops);
            let lse = log_sum_exp(kernels, l);
            *pick = Some((token, l[token as usize] - lse, top_logprobs(l, *n, lse)));
        });
        let picked: Vec<Pick> = picks.into_iter().map(|(_, _, p)| p.expect("every row sampled")).collect();
        for ((id, sampler), (token, logprob, top)) in samplers.into_iter().zip(picked) {
            if let Some(live) = self.reqs.get_mut(&id) {
                live.sampler = sampler;
            }
            self.emit(id, token, logprob, top);
        }
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).steps += 1;
        Ok(())
    }

    /// Adds the log-probabilities of the prompt tokens that `logits` (one row per position of a
    /// chunk starting at `start`) predict; once the whole prompt is covered, sends them.
    fn prompt_logprobs(&mut self, id: u64, logits: &[f32], start: usize) {
        let kernels = self.model.kernels();
        let vocab = self.model.config().vocab_size;
        let Some(live) = self.reqs.get_mut(&id) else { return };
        let Some(done) = live.prompt_logprobs.as_mut() else { return };
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            // Row `p` predicts position `p + 1`; after a preemption, rows already reported
            // come again and are skipped.
            let target = start + i + 1;
            if target >= live.prompt.len() || target <= done.len() {
                continue;
            }
            let lse = log_sum_exp(kernels, row);
            let token = live.prompt[target];
            done.push(PromptLogprob {
                id: token,
                logprob: row[token as usize] - lse,
                top: top_logprobs(row, live.top_logprobs, lse),
            });
        }
        if done.len() + 1 >= live.prompt.len() {
            let all = live.prompt_logprobs.take().unwrap_or_default();
            live.prompt = Vec::new();
            if !live.events.send(Event::PromptLogprobs(all)) {
                self.finish(id, Finish::Cancelled);
            }
        }
    }

    /// Sends `id` its next token and finishes it if that was the last.
    fn emit(&mut self, id: u64, token: u32, logprob: f32, top: Vec<(u32, f32)>) {
        let Some(live) = self.reqs.get_mut(&id) else { return };
        let text = match &self.tokenizer {
            Some(t) => live.decoder.push(t, token).unwrap_or_default(),
            None => String::new(),
        };
        live.generated += 1;
        let gone = !live.events.send(Event::Token { id: token, text, logprob, top });
        let done = if gone {
            Some(Finish::Cancelled)
        } else if live.stop.contains(&token) {
            Some(Finish::Done(FinishReason::Stop))
        } else if live.generated >= live.max_tokens {
            Some(Finish::Done(FinishReason::Length))
        } else {
            None
        };
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).generated_tokens += 1;
        match done {
            Some(reason) => self.finish(id, reason),
            None => self.sched.get_mut(id).expect("live sequence").tokens.push(token),
        }
    }

    fn finish(&mut self, id: u64, reason: Finish) {
        self.sched.remove(id);
        if let Some(mut live) = self.reqs.remove(&id) {
            let tail = match (&self.tokenizer, &reason) {
                (Some(t), Finish::Done(_)) => live.decoder.finish(t).unwrap_or_default(),
                _ => String::new(),
            };
            live.events.send(Event::Finished { reason, generated: live.generated, tail });
        }
    }

    fn publish(&self) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.running = self.sched.n_running();
        s.waiting = self.sched.n_waiting();
        s.kv_blocks_free = self.sched.pool().free_blocks();
        s.preemptions = self.sched.preemptions;
        s.prefix_cache_queries = self.sched.prefix_queries;
        s.prefix_cache_hits = self.sched.prefix_hits;
    }
}

/// `log(sum(exp(logits)))`, max-shifted, in one vectorised pass (a libm `exp` per vocabulary
/// entry was a tenth of a 32-sequence decode step).
pub fn log_sum_exp(k: inferneo_kernels::Kernels, logits: &[f32]) -> f32 {
    let max = k.max(logits);
    let mut scratch = vec![0.0f32; logits.len()];
    let sum = k.exp_shifted(logits, max, 1.0, &mut scratch);
    ((sum as f64).ln() + max as f64) as f32
}

/// The `n` most likely tokens and their log-probabilities, most likely first (ties: lower id),
/// by partial selection.
pub fn top_logprobs(logits: &[f32], n: usize, lse: f32) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let better = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    if n < ids.len() {
        ids.select_nth_unstable_by(n - 1, better);
    }
    ids.truncate(n);
    ids.sort_unstable_by(better);
    ids.into_iter().map(|i| (i, logits[i as usize] - lse)).collect()
}
