//! Single-sequence generation: prefill the prompt, then decode token by token over the KV cache.

use crate::engine::{log_sum_exp, top_logprobs};
use crate::error::{Error, Result};
use crate::gpt2::{Gpt2, Logits};
use crate::kv_cache::KvCache;
use crate::sampling::{Sampler, SamplingParams};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` were generated.
    Length,
    /// A stop token was generated (it is included in the output).
    Stop,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// A request for [`generate`].
#[derive(Clone, Debug, Default)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends after any of these ids.
    pub stop_tokens: Vec<u32>,
    /// Also report the log-probabilities of this many most likely tokens at each step (0: none).
    pub top_logprobs: usize,
    /// Also report, once, each prompt token's log-probability given the tokens before it (with
    /// `top_logprobs` alternatives): OpenAI's `echo` with `logprobs`, the way evaluation
    /// harnesses score text. The engine computes every prompt position's logits for such a
    /// request and does not reuse cached prefixes for it. With `max_tokens` 0 the request
    /// only scores its prompt. Engine only ([`crate::Engine`]); [`generate`] ignores it.
    pub prompt_logprobs: bool,
}

impl GenerateRequest {
    /// Checks everything that can be checked before running the model.
    pub fn validate(&self, model: &Gpt2) -> Result<()> {
        self.validate_for(model.config())
    }

    /// [`GenerateRequest::validate`] against a model's config alone.
    pub fn validate_for(&self, c: &crate::config::Config) -> Result<()> {
        if self.prompt.is_empty() {
            return Err(Error::Invalid("the prompt is empty".into()));
        }
        if let Some(&id) = self.prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::Token { id, vocab: c.vocab_size });
        }
        if let Some(&(id, _)) = self.sampling.logit_bias.iter().find(|(t, _)| *t as usize >= c.vocab_size) {
            return Err(Error::Token { id, vocab: c.vocab_size });
        }
        let need = self.prompt.len() + self.max_tokens;
        if need > c.n_positions {
            return Err(Error::Context { need, max: c.n_positions });
        }
        self.sampling.validate()
    }
}

/// One generated token as [`generate_steps`] reports it: its id, its log-probability under the
/// model and, when the request asks (`top_logprobs`), the most likely tokens and theirs.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Generates up to `req.max_tokens` tokens, calling `on_token` with each as it is chosen.
pub fn generate(model: &Gpt2, req: &GenerateRequest, mut on_token: impl FnMut(u32)) -> Result<Generation> {
    generate_steps(model, req, |step| {
        on_token(step.id);
        true
    })
}

/// [`generate`], reporting each token with its log-probabilities (computed as the engine
/// computes them, so both report the same bits). `on_step` returning `false` stops the
/// generation there with [`Error::Cancelled`].
pub fn generate_steps(
    model: &Gpt2,
    req: &GenerateRequest,
    mut on_step: impl FnMut(&Step) -> bool,
) -> Result<Generation> {
    req.validate(model)?;
    let kernels = model.kernels();
    // The positions this generation can fill (validated within the context above).
    let mut cache = KvCache::with_positions(model.config(), req.prompt.len() + req.max_tokens);
    let mut sampler = Sampler::new(req.sampling.clone(), kernels);
    let mut tokens = Vec::with_capacity(req.max_tokens);
    let mut input = req.prompt.clone();
    while tokens.len() < req.max_tokens {
        let logits = model.forward_one(&mut cache, &input, Logits::Last)?;
        let next = sampler.sample_with_stops(&logits, &req.stop_tokens);
        let lse = log_sum_exp(kernels, &logits);
        let step =
            Step { id: next, logprob: logits[next as usize] - lse, top: top_logprobs(&logits, req.top_logprobs, lse) };
        tokens.push(next);
        if !on_step(&step) {
            return Err(Error::Cancelled);
        }
        if req.stop_tokens.contains(&next) {
            return Ok(Generation { tokens, finish: FinishReason::Stop });
        }
        input = vec![next];
    }
    Ok(Generation { tokens, finish: FinishReason::Length })
}
