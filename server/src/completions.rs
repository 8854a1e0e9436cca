//! `/v1/completions`: checks a parsed request against its model, submits one engine sequence
//! per choice (prompts x n), and turns the engines' token events into OpenAI choices: stop
//! strings matched across tokens, logprobs, usage, timing metrics. The same [`Run`] drives the
//! plain JSON response and the server-sent-event stream.

use crate::api::{CompletionRequest, Prompt};
use crate::cpu_pool::CpuPool;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::models::{Admission, Served};
use crate::repository::Registry;
use crate::response_cache::{Cached, ResponseCache};
use crate::stop::StopMatcher;
use inferneo_runtime::engine::EventSink;
use inferneo_runtime::tokenizer::IncrementalDecoder;
use inferneo_runtime::{Event, Finish, FinishReason, GenerateRequest, SamplingParams};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A request checked against its model: token ids in range, context long enough.
pub struct Validated {
    pub req: CompletionRequest,
    pub served: Arc<Served>,
    pub prompts: Vec<Vec<u32>>,
}

fn context_error(context: usize, prompt: &str, prompt_tokens: usize, max_tokens: usize) -> ApiError {
    ApiError::invalid(
        "max_tokens",
        format!(
            "this model's maximum context length is {context} tokens, but {prompt}{} were requested ({prompt}{} \
             in the prompt, {max_tokens} for the completion)",
            prompt_tokens + max_tokens,
            prompt_tokens,
        ),
    )
}

/// Checks `req` against its model. Text prompts that cannot fit the context even at the
/// fewest tokens their length allows are refused before tokenizing; the others are tokenized
/// on `cpu`, off the async workers.
pub async fn validate(registry: &Registry, req: CompletionRequest, cpu: &CpuPool) -> Result<Validated, ApiError> {
    let served = registry.get(req.model.as_deref()).await?;
    let (vocab, context) = (served.config().vocab_size, served.config().n_positions);
    if let Some(tok) = &served.tokenizer {
        for p in &req.prompts {
            if let Prompt::Text(text) = p {
                let least = tok.min_tokens(text);
                if least + req.max_tokens > context {
                    return Err(context_error(context, "at least ", least, req.max_tokens));
                }
            }
        }
    }
    let tokenizer = served.tokenizer.clone();
    let (req, prompts) = cpu
        .run(move || {
            let prompts = req
                .prompts
                .iter()
                .map(|p| match p {
                    Prompt::Text(text) => {
                        let tok = tokenizer.as_ref().ok_or_else(|| {
                            ApiError::invalid("prompt", "this model has no tokenizer; send the prompt as token ids")
                        })?;
                        tok.encode(text).map_err(|e| ApiError::invalid("prompt", e.to_string()))
                    }
                    Prompt::Tokens(ids) => ids
                        .iter()
                        .map(|&t| {
                            u32::try_from(t).ok().filter(|&t| (t as usize) < vocab).ok_or_else(|| {
                                ApiError::invalid(
                                    "prompt",
                                    format!("token id {t} is outside the vocabulary (0..{vocab})"),
                                )
                            })
                        })
                        .collect(),
                })
                .collect::<Result<Vec<Vec<u32>>, _>>();
            (req, prompts)
        })
        .await;
    let prompts = prompts?;
    if prompts.iter().any(Vec::is_empty) {
        return Err(ApiError::invalid("prompt", "the prompt encodes to no tokens"));
    }
    if let Some(p) = prompts.iter().find(|p| p.len() + req.max_tokens > context) {
        return Err(context_error(context, "", p.len(), req.max_tokens));
    }
    if let Some((t, _)) = req.logit_bias.iter().find(|(t, _)| !(0..vocab as i64).contains(t)) {
        return Err(ApiError::invalid("logit_bias", format!("token id {t} is outside the vocabulary (0..{vocab})")));
    }
    Ok(Validated { req, served, prompts })
}

/// The engine id of a replayed choice, which has no engine sequence.
const REPLAYED: u64 = u64::MAX;

/// Delivers a choice's engine events into the request's async channel.
struct ChannelSink {
    index: usize,
    tx: UnboundedSender<(usize, Event)>,
}

impl EventSink for ChannelSink {
    fn send(&mut self, event: Event) -> bool {
        self.tx.send((self.index, event)).is_ok()
    }
}

/// One choice's progress.
struct Choice {
    engine_id: u64,
    matcher: StopMatcher,
    /// Characters decoded so far, echoed prompt and held-back text included (for logprob
    /// text offsets).
    decoded: usize,
    generated: usize,
    finish: Option<&'static str>,
    last_token: Option<Instant>,
}

/// Something to send for one choice.
#[derive(Clone, Debug)]
pub struct Update {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<Logprobs>,
    pub finish: Option<&'static str>,
}

/// One generated token's log-probabilities.
#[derive(Debug, Clone)]
struct TokenLogprob {
    token: String,
    /// `None` for a prompt's first token, which nothing predicts.
    logprob: Option<f32>,
    /// The most likely tokens at this step, best first (as many as asked).
    top: Vec<(String, f32)>,
    /// Characters of the choice's text before this token (echoed prompt included).
    offset: usize,
}

/// The log-probabilities of the tokens of one update or a whole choice.
#[derive(Clone, Debug, Default)]
pub struct Logprobs {
    entries: Vec<TokenLogprob>,
}

impl Logprobs {
    /// About the bytes these take in memory (for the response cache's bound).
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| 48 + e.token.len() + e.top.iter().map(|(t, _)| 32 + t.len()).sum::<usize>()).sum()
    }

    fn append(&mut self, other: Logprobs) {
        self.entries.extend(other.entries);
    }

    /// The completions shape: parallel lists, `top_logprobs` a map per token that always holds
    /// the sampled token (so up to `logprobs + 1` entries), `text_offset` in characters.
    pub fn to_completion_json(&self) -> Value {
        let top: Vec<Option<Map<String, Value>>> = self
            .entries
            .iter()
            .map(|e| {
                let lp = e.logprob?;
                let mut m: Map<String, Value> = e.top.iter().map(|(t, lp)| (t.clone(), json!(lp))).collect();
                m.entry(e.token.clone()).or_insert_with(|| json!(lp));
                Some(m)
            })
            .collect();
        json!({
            "tokens": self.entries.iter().map(|e| &e.token).collect::<Vec<_>>(),
            "token_logprobs": self.entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
            "top_logprobs": top,
            "text_offset": self.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        })
    }

    /// The chat shape: `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`, with
    /// exactly the asked number of alternatives per token.
    pub fn to_chat_json(&self) -> Value {
        let entry = |t: &str, lp: f32| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()});
        let content: Vec<Value> = self
            .entries
            .iter()
            .map(|e| {
                let mut v = entry(&e.token, e.logprob.unwrap_or(f32::NAN));
                v["top_logprobs"] = e.top.iter().map(|(t, lp)| entry(t, *lp)).collect();
                v
            })
            .collect();
        json!({"content": content})
    }
}

/// Which API a run answers: the same engine work, two response shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Completion,
    Chat,
}

/// A running completion: its sequences in the engine, their event channel, their choices.
/// Dropping it (client gone, timeout) cancels every sequence still running.
pub struct Run {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub prompt_tokens: usize,
    /// The decoded prompts when `echo` was asked (empty otherwise).
    pub echo: Vec<String>,
    /// Choices per prompt (`n`): choice `i` belongs to prompt `i / n`.
    n: usize,
    served: Arc<Served>,
    /// Room in the model's engine; `None` for a replay from the response cache.
    _admission: Option<Admission>,
    /// A replay: the stored updates still to send (no engine sequence runs).
    replay: Option<std::collections::VecDeque<Update>>,
    /// Where to store this run's result when it succeeds, and the updates sent so far.
    cache: Option<(Arc<ResponseCache>, String, Vec<Update>)>,
    rx: UnboundedReceiver<(usize, Event)>,
    /// Events received while waiting for one choice's last event (see `next`).
    backlog: std::collections::VecDeque<(usize, Event)>,
    choices: Vec<Choice>,
    flavor: Flavor,
    /// Token ids that end a choice (empty with `ignore_eos`), and the most tokens a choice
    /// generates: together they tell which token is a choice's last.
    stop_tokens: Vec<u32>,
    max_tokens: usize,
    /// `echo` with `logprobs`: the echoed prompt comes from the engine's prompt
    /// log-probabilities event, with them, instead of up front.
    prompt_logprobs: bool,
    /// Each prompt's ids, kept for that event.
    prompts: Vec<Vec<u32>>,
    logprobs: Option<usize>,
    arrival: Instant,
    deadline: Instant,
    timeout: Duration,
    first_token_seen: bool,
    metrics: Arc<Metrics>,
    /// Its final status has been counted: every run counts exactly one, 499 if it is dropped
    /// before anything else was recorded (the client went away mid-request).
    recorded: bool,
    /// The request's id (`X-Request-Id`), for its log line.
    pub request_id: String,
    /// Seconds from arrival to the first token.
    ttft: Option<f64>,
}

impl Run {
    pub fn start(
        p: Validated,
        flavor: Flavor,
        arrival: Instant,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Run, ApiError> {
        Run::build(p, flavor, arrival, timeout, metrics, None)
    }

    /// A run that sends `cached` (a stored result of the same request) instead of running
    /// the model.
    pub fn replay(
        p: Validated,
        flavor: Flavor,
        arrival: Instant,
        timeout: Duration,
        metrics: Arc<Metrics>,
        cached: &Cached,
    ) -> Result<Run, ApiError> {
        Run::build(p, flavor, arrival, timeout, metrics, Some(cached))
    }

    /// Stores the run's result in `cache` under `key` once it succeeds.
    pub fn cache_into(&mut self, cache: Arc<ResponseCache>, key: String) {
        if self.replay.is_none() {
            self.cache = Some((cache, key, Vec::new()));
        }
    }

    fn build(
        p: Validated,
        flavor: Flavor,
        arrival: Instant,
        timeout: Duration,
        metrics: Arc<Metrics>,
        replay: Option<&Cached>,
    ) -> Result<Run, ApiError> {
        let n_choices = p.prompts.len() * p.req.n;
        let admission = match replay {
            None => Some(p.served.admit(n_choices)?),
            Some(_) => None,
        };
        let (tx, rx) = unbounded_channel();
        let eos = p.served.tokenizer.as_ref().and_then(|t| t.eos_id()).or(p.served.config().eos_token_id);
        let stop_tokens: Vec<u32> = if p.req.ignore_eos { Vec::new() } else { eos.into_iter().collect() };
        let base_seed = p.req.seed.unwrap_or_else(random_seed);
        let mut choices = Vec::with_capacity(n_choices);
        let echo = if p.req.echo {
            p.prompts
                .iter()
                .map(|ids| p.served.tokenizer.as_ref().map_or(Ok(String::new()), |t| t.decode(ids)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::invalid("prompt", e.to_string()))?
        } else {
            Vec::new()
        };
        for (pi, prompt) in p.prompts.iter().enumerate() {
            for j in 0..p.req.n {
                let index = pi * p.req.n + j;
                let sampling = SamplingParams {
                    temperature: p.req.temperature,
                    top_k: p.req.top_k,
                    top_p: p.req.top_p,
                    seed: base_seed.wrapping_add(index as u64),
                    presence_penalty: p.req.presence_penalty,
                    frequency_penalty: p.req.frequency_penalty,
                    logit_bias: p.req.logit_bias.iter().map(|&(t, b)| (t as u32, b)).collect(),
                    min_tokens: p.req.min_tokens,
                };
                let req = GenerateRequest {
                    prompt: prompt.clone(),
                    max_tokens: p.req.max_tokens,
                    sampling,
                    stop_tokens: stop_tokens.clone(),
                    top_logprobs: p.req.logprobs.unwrap_or(0),
                    prompt_logprobs: p.req.echo && p.req.logprobs.is_some(),
                };
                let sink = Box::new(ChannelSink { index, tx: tx.clone() });
                let engine_id = match replay {
                    Some(_) => REPLAYED,
                    None => match p.served.engine.submit_with(req, sink) {
                        Ok(id) => id,
                        Err(e) => {
                            // Cancel the choices already submitted before reporting.
                            choices.iter().for_each(|c: &Choice| p.served.engine.cancel(c.engine_id));
                            return Err(ApiError::bad_request(e.to_string()));
                        }
                    },
                };
                choices.push(Choice {
                    engine_id,
                    matcher: StopMatcher::new(p.req.stop.clone()),
                    decoded: echo.get(pi).map_or(0, |e| e.chars().count()),
                    generated: replay.and_then(|c| c.generated.get(index).copied()).unwrap_or(0),
                    finish: None,
                    last_token: None,
                });
            }
        }
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let prefix = match flavor {
            Flavor::Completion => "cmpl",
            Flavor::Chat => "chatcmpl",
        };
        Ok(Run {
            id: format!("{prefix}-{:016x}", random_seed()),
            created,
            model: p.served.name.clone(),
            prompt_tokens: p.prompts.iter().map(Vec::len).sum(),
            echo,
            n: p.req.n,
            served: p.served.clone(),
            _admission: admission,
            replay: replay.map(|c| c.updates.iter().cloned().collect()),
            cache: None,
            rx,
            backlog: Default::default(),
            choices,
            flavor,
            stop_tokens,
            max_tokens: p.req.max_tokens,
            prompt_logprobs: p.req.echo && p.req.logprobs.is_some(),
            prompts: if p.req.echo && p.req.logprobs.is_some() { p.prompts.clone() } else { Vec::new() },
            logprobs: p.req.logprobs,
            arrival,
            deadline: arrival + timeout,
            timeout,
            first_token_seen: false,
            metrics,
            recorded: false,
            request_id: String::new(),
            ttft: None,
        })
    }

    pub fn n_choices(&self) -> usize {
        self.choices.len()
    }

    pub fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.generated).sum()
    }

    pub fn usage(&self) -> Value {
        let c = self.completion_tokens();
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c})
    }

    fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// The next event, from the backlog first.
    async fn recv(&mut self) -> Result<(usize, Event), ApiError> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(e);
        }
        match tokio::time::timeout_at(self.deadline.into(), self.rx.recv()).await {
            Err(_) => Err(ApiError::timeout(self.timeout.as_secs_f64())),
            Ok(None) => Err(ApiError::internal("the engine stopped")),
            Ok(Some(e)) => Ok(e),
        }
    }

    /// The next update, `Ok(None)` once every choice has finished.
    ///
    /// A choice's last token and its finish go out as one update, as OpenAI and vLLM send
    /// them: the chunk with `finish_reason` carries the last token's text. The last token is
    /// known when it arrives (the `max_tokens`-th, or an end-of-text id), and the engine sends
    /// its `Finished` right after it, so waiting for that costs nothing; other choices' events
    /// that come in between wait in the backlog.
    pub async fn next(&mut self) -> Result<Option<Update>, ApiError> {
        if let Some(queue) = self.replay.as_mut() {
            let Some(u) = queue.pop_front() else { return Ok(None) };
            if let Some(f) = u.finish {
                self.choices[u.index].finish = Some(f);
            }
            if !std::mem::replace(&mut self.first_token_seen, true) {
                let ttft = self.arrival.elapsed().as_secs_f64();
                self.ttft = Some(ttft);
                self.metrics.ttft(&self.model, ttft);
            }
            return Ok(Some(u));
        }
        let update = self.next_live().await?;
        if let (Some((_, _, sent)), Some(u)) = (self.cache.as_mut(), update.as_ref()) {
            sent.push(u.clone());
        }
        Ok(update)
    }

    async fn next_live(&mut self) -> Result<Option<Update>, ApiError> {
        loop {
            if self.done() {
                return Ok(None);
            }
            let event = self.recv().await?;
            let last = match &event {
                (i, Event::Token { id, .. }) => {
                    let c = &self.choices[*i];
                    c.finish.is_none() && (c.generated + 1 >= self.max_tokens || self.stop_tokens.contains(id))
                }
                _ => false,
            };
            let index = event.0;
            let Some(mut update) = self.apply(event)? else { continue };
            if last && update.finish.is_none() {
                let fin = loop {
                    let e = match self.rx.try_recv() {
                        Ok(e) => e,
                        Err(_) => match tokio::time::timeout_at(self.deadline.into(), self.rx.recv()).await {
                            Err(_) => return Err(ApiError::timeout(self.timeout.as_secs_f64())),
                            Ok(None) => return Err(ApiError::internal("the engine stopped")),
                            Ok(Some(e)) => e,
                        },
                    };
                    if e.0 == index {
                        break e;
                    }
                    self.backlog.push_back(e);
                };
                if let Some(f) = self.apply(fin)? {
                    update.text.push_str(&f.text);
                    update.finish = f.finish;
                }
            }
            return Ok(Some(update));
        }
    }

    fn apply(&mut self, (index, event): (usize, Event)) -> Result<Option<Update>, ApiError> {
        let now = Instant::now();
        let choice = &mut self.choices[index];
        if choice.finish.is_some() {
            return Ok(None); // events after a stop string cancelled the sequence
        }
        match event {
            Event::Token { id, text, logprob, top } => {
                choice.generated += 1;
                if !self.first_token_seen {
                    self.first_token_seen = true;
                    let ttft = (now - self.arrival).as_secs_f64();
                    self.ttft = Some(ttft);
                    self.metrics.ttft(&self.model, ttft);
                }
                if let Some(prev) = choice.last_token.replace(now) {
                    self.metrics.inter_token(&self.model, &[(now - prev).as_secs_f64()]);
                }
                let logprobs = self.logprobs.map(|_| {
                    let tok = self.served.tokenizer.as_ref();
                    let piece = |t: u32| tok.and_then(|k| k.decode(&[t]).ok()).unwrap_or_else(|| t.to_string());
                    Logprobs {
                        entries: vec![TokenLogprob {
                            token: piece(id),
                            logprob: Some(logprob),
                            top: top.iter().map(|&(t, lp)| (piece(t), lp)).collect(),
                            offset: choice.decoded,
                        }],
                    }
                });
                // OpenAI and vLLM count offsets in characters; a token that ends inside a
                // character shares the offset of the token that completes it.
                choice.decoded += text.chars().count();
                let step = choice.matcher.push(&text);
                if step.stopped {
                    choice.finish = Some("stop");
                    self.served.engine.cancel(choice.engine_id);
                }
                if step.emit.is_empty() && logprobs.is_none() && choice.finish.is_none() {
                    return Ok(None);
                }
                Ok(Some(Update { index, text: step.emit, logprobs, finish: choice.finish }))
            }
            Event::PromptLogprobs(list) => {
                let prompt = &self.prompts[index / self.n];
                let tok = self.served.tokenizer.as_ref();
                let piece = |t: u32| tok.and_then(|k| k.decode(&[t]).ok()).unwrap_or_else(|| t.to_string());
                // Offsets as for generated text: characters before each token, a token ending
                // inside a character sharing the offset of the one that completes it.
                let mut decoder = IncrementalDecoder::default();
                let mut offset = 0;
                let mut entries = Vec::with_capacity(prompt.len());
                for (i, &t) in prompt.iter().enumerate() {
                    let (logprob, top) = match i.checked_sub(1).and_then(|j| list.get(j)) {
                        Some(p) => (Some(p.logprob), p.top.iter().map(|&(t, lp)| (piece(t), lp)).collect()),
                        None => (None, Vec::new()),
                    };
                    entries.push(TokenLogprob { token: piece(t), logprob, top, offset });
                    if let Some(tok) = tok {
                        offset += decoder.push(tok, t).unwrap_or_default().chars().count();
                    }
                }
                let text = self.echo.get(index / self.n).cloned().unwrap_or_default();
                Ok(Some(Update { index, text, logprobs: Some(Logprobs { entries }), finish: None }))
            }
            Event::Finished { reason, tail, .. } => {
                let step = choice.matcher.push(&tail);
                let mut text = step.emit;
                let finish = match reason {
                    _ if step.stopped => "stop",
                    Finish::Done(FinishReason::Length) => "length",
                    Finish::Done(FinishReason::Stop) => "stop",
                    Finish::Cancelled => return Err(ApiError::unavailable("the request was cancelled by the server")),
                    Finish::Error(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
                };
                if !step.stopped {
                    text.push_str(&choice.matcher.flush());
                }
                choice.finish = Some(finish);
                Ok(Some(Update { index, text, logprobs: None, finish: Some(finish) }))
            }
        }
    }

    /// Records the request's end-to-end figures.
    /// Counts the request's final status (once: later calls do nothing).
    pub fn record(&mut self, status: u16) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        if let Some((cache, key, updates)) = self.cache.take().filter(|_| status == 200 && self.done()) {
            let generated = self.choices.iter().map(|c| c.generated).collect();
            cache.insert(&self.model, self.served.load_id, key, Cached::new(updates, generated));
        }
        self.metrics.request(&self.model, status);
        self.metrics.tokens(&self.model, self.prompt_tokens, self.completion_tokens());
        let total = self.arrival.elapsed().as_secs_f64();
        if status == 200 {
            self.metrics.e2e(&self.model, total);
        }
        let mut finish: Vec<&str> = self.choices.iter().map(|c| c.finish.unwrap_or("cancelled")).collect();
        finish.dedup();
        tracing::info!(
            target: "inferneo::request",
            request_id = %self.request_id,
            route = match self.flavor {
                Flavor::Completion => "/v1/completions",
                Flavor::Chat => "/v1/chat/completions",
            },
            model = %self.model,
            status,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens(),
            ttft_ms = self.ttft.map(|t| t * 1e3),
            total_ms = total * 1e3,
            finish_reason = %finish.join(","),
        );
    }

    /// Runs to the end and builds the plain (non-streaming) response body.
    pub async fn collect(&mut self) -> Result<Value, ApiError> {
        let n = self.n_choices();
        // The echo comes with the prompt's log-probabilities when those were asked.
        let mut texts: Vec<String> = (0..n)
            .map(|i| if self.prompt_logprobs { None } else { self.echo.get(i / self.n).cloned() })
            .map(Option::unwrap_or_default)
            .collect();
        let mut logprobs: Vec<Logprobs> = (0..n).map(|_| Logprobs::default()).collect();
        let mut finish: Vec<&str> = vec!["length"; n];
        loop {
            match self.next().await {
                Ok(Some(u)) => {
                    texts[u.index].push_str(&u.text);
                    if let Some(lp) = u.logprobs {
                        logprobs[u.index].append(lp);
                    }
                    if let Some(f) = u.finish {
                        finish[u.index] = f;
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(e),
            }
        }
        let choices: Vec<Value> = (0..n)
            .map(|i| match self.flavor {
                Flavor::Completion => json!({
                    "text": texts[i],
                    "index": i,
                    "logprobs": self.logprobs.map(|_| logprobs[i].to_completion_json()),
                    "finish_reason": finish[i],
                }),
                Flavor::Chat => json!({
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i]},
                    "logprobs": self.logprobs.map(|_| logprobs[i].to_chat_json()),
                    "finish_reason": finish[i],
                }),
            })
            .collect();
        Ok(json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self.usage(),
        }))
    }

    /// The `object` of a response (`chunk`: of a streamed chunk).
    fn object(&self, chunk: bool) -> &'static str {
        match (self.flavor, chunk) {
            (Flavor::Completion, _) => "text_completion",
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
        }
    }

    fn chunk_with(&self, choice: Value, include_usage: bool) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// One streamed chunk for `u` (`usage: null` on every chunk when usage is requested).
    pub fn chunk(&self, u: &Update, include_usage: bool) -> Value {
        let choice = match self.flavor {
            Flavor::Completion => json!({
                "index": u.index,
                "text": u.text,
                "logprobs": u.logprobs.as_ref().map(Logprobs::to_completion_json),
                "finish_reason": u.finish,
            }),
            Flavor::Chat => json!({
                "index": u.index,
                "delta": if u.text.is_empty() && u.finish.is_some() { json!({}) } else { json!({"content": u.text}) },
                "logprobs": u.logprobs.as_ref().map(Logprobs::to_chat_json),
                "finish_reason": u.finish,
            }),
        };
        self.chunk_with(choice, include_usage)
    }

    /// The chunks that open a stream: for chat, each choice's first delta with the role (as
    /// OpenAI sends it); for completions with `echo`, each choice's prompt.
    pub fn opening_chunks(&self, include_usage: bool) -> Vec<Value> {
        match self.flavor {
            Flavor::Chat => (0..self.n_choices())
                .map(|i| {
                    let choice = json!({
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": null,
                        "finish_reason": null,
                    });
                    self.chunk_with(choice, include_usage)
                })
                .collect(),
            Flavor::Completion if self.echo.is_empty() || self.prompt_logprobs => Vec::new(),
            Flavor::Completion => (0..self.n_choices())
                .map(|i| {
                    let u = Update { index: i, text: self.echo[i / self.n].clone(), logprobs: None, finish: None };
                    self.chunk(&u, include_usage)
                })
                .collect(),
        }
    }

    pub fn usage_chunk(&self) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(),
        })
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for c in self.choices.iter().filter(|c| c.finish.is_none() && c.engine_id != REPLAYED) {
            self.served.engine.cancel(c.engine_id);
        }
        // Dropped unrecorded: hyper dropped the handler because the client disconnected.
        self.record(499);
    }
}

/// A seed for requests that give none: different per request, from the clock and a counter.
fn random_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    inferneo_runtime::init::splitmix64(nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32))
}
