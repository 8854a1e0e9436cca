//! Next-token selection: greedy, or temperature / top-k / top-p sampling with a seeded RNG.
//!
//! Never sorts the whole vocabulary: top-k is a partial selection (`select_nth_unstable`) and
//! top-p buckets the weights on a log scale and sorts only the bucket at the nucleus boundary,
//! so a token costs O(vocab) even for flat distributions (where the nucleus is most of the
//! vocabulary).

use crate::error::{Error, Result};
use inferneo_kernels::Kernels;
use std::cell::RefCell;

/// How to pick the next token. `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
    /// Subtracted once from the logit of every token already generated (OpenAI semantics;
    /// generated tokens only, not the prompt), in [-2, 2].
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated, in [-2, 2].
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens before anything else (OpenAI `logit_bias`, each in
    /// [-100, 100]; -100 effectively bans a token, 100 effectively forces it).
    pub logit_bias: Vec<(u32, f32)>,
    /// The request's stop token ids cannot be picked before this many tokens were generated
    /// (vLLM's `min_tokens`): the engine hands the sampler those ids to ban until then.
    pub min_tokens: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            min_tokens: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Invalid(format!("temperature must be >= 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        for (name, v) in [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(Error::Invalid(format!("{name} must be in [-2, 2], got {v}")));
            }
        }
        if let Some((id, b)) = self.logit_bias.iter().find(|(_, b)| !(-100.0..=100.0).contains(b)) {
            return Err(Error::Invalid(format!("logit_bias for token {id} must be in [-100, 100], got {b}")));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same stream on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let s = std::array::from_fn(|_| {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            crate::init::splitmix64(z)
        });
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sequence's sampler: its parameters, RNG state and the kernels it runs on (the model's, so
/// a forced ISA reaches sampling too).
#[derive(Clone)]
pub struct Sampler {
    params: SamplingParams,
    kernels: Kernels,
    rng: Rng,
    /// How often each token was generated so far (for the penalties).
    counts: std::collections::HashMap<u32, u32>,
    /// Tokens picked so far.
    generated: usize,
}

/// Index of the largest logit (the first one on ties; 0 if there is none, e.g. all NaN).
pub fn argmax(kernels: Kernels, logits: &[f32]) -> u32 {
    let max = kernels.max(logits);
    logits.iter().position(|&v| v == max).unwrap_or(0) as u32
}

thread_local! {
    /// Per-thread weights buffer: a vocabulary-sized allocation per sampled token is a page
    /// fault storm at 32 sequences per step.
    static WEIGHTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Sampler {
    pub fn new(params: SamplingParams, kernels: Kernels) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, kernels, rng, counts: Default::default(), generated: 0 }
    }

    /// Picks the next token from one row of logits (and remembers it for the penalties).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.sample_with_stops(logits, &[])
    }

    /// [`Sampler::sample`] for a request whose generation ends at `stops`: while fewer than
    /// `min_tokens` tokens were generated those ids get no probability at all (unless every
    /// other token already had none).
    pub fn sample_with_stops(&mut self, logits: &[f32], stops: &[u32]) -> u32 {
        let adjusted;
        let penalties =
            !self.counts.is_empty() && (self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0);
        let banned = if self.generated < self.params.min_tokens { stops } else { &[] };
        let logits = if !penalties && self.params.logit_bias.is_empty() && banned.is_empty() {
            logits
        } else {
            let mut l = logits.to_vec();
            for &t in banned {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            for &(t, b) in &self.params.logit_bias {
                if let Some(v) = l.get_mut(t as usize) {
                    *v += b;
                }
            }
            if penalties {
                for (&t, &n) in &self.counts {
                    l[t as usize] -= self.params.presence_penalty + self.params.frequency_penalty * n as f32;
                }
            }
            adjusted = l;
            &adjusted
        };
        let token = self.pick(logits);
        *self.counts.entry(token).or_insert(0) += 1;
        self.generated += 1;
        token
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(self.kernels, logits);
        }
        let inv_t = 1.0 / p.temperature;
        let k = self.kernels;
        let max = k.max(logits);
        // Candidates: the top k (by a bounded selection, O(vocab)), or every token.
        let cand = (p.top_k > 0 && p.top_k < logits.len()).then(|| top_k(logits, p.top_k));
        let (top_p, u) = (p.top_p as f64, self.rng.next_f64());
        WEIGHTS.with_borrow_mut(|weights| {
            // Weights relative to the best logit (the best has weight 1), computed once in one
            // vectorised pass; f32 is plenty for sampling.
            let total = match &cand {
                None => {
                    weights.resize(logits.len(), 0.0);
                    k.exp_shifted(logits, max, inv_t, weights)
                }
                Some(c) => {
                    let picked: Vec<f32> = c.iter().map(|&i| logits[i as usize]).collect();
                    weights.resize(c.len(), 0.0);
                    k.exp_shifted(&picked, max, inv_t, weights)
                }
            } as f64;
            let nucleus = if top_p < 1.0 { Nucleus::new(weights, top_p * total) } else { Nucleus::ALL };
            let j = nucleus.draw(weights, u);
            cand.as_ref().map_or(j as u32, |c| c[j])
        })
    }
}

/// Largest top-k kept as a sorted list (an insertion costs O(k)); larger ones use a partial
/// selection over the whole vocabulary.
const TOP_K_LIST: usize = 256;

/// The `n` best ids of `logits` (higher logit first, then lower id), in ascending id order.
/// One pass keeps a sorted list of the best so far; a value that cannot enter is rejected with
/// one comparison against the current threshold, so the pass costs about one compare per token.
fn top_k(logits: &[f32], n: usize) -> Vec<u32> {
    if n > TOP_K_LIST {
        let mut cand: Vec<u32> = (0..logits.len() as u32).collect();
        cand.select_nth_unstable_by(n, |a, b| better(logits, a, b));
        cand.truncate(n);
        cand.sort_unstable();
        return cand;
    }
    // Best first; `best[n - 1]` is the threshold to beat.
    let mut best: Vec<u32> = Vec::with_capacity(n + 1);
    for (c, chunk) in logits.chunks(64).enumerate() {
        // Most blocks hold nothing that can enter: one vectorised test skips them (`!(v < t)`
        // also lets NaN through to the exact comparison below).
        if best.len() == n {
            let threshold = logits[best[n - 1] as usize];
            if chunk.iter().fold(true, |all, &v| all & (v < threshold)) {
                continue;
            }
        }
        for (o, &v) in chunk.iter().enumerate() {
            let i = (c * 64 + o) as u32;
            if best.len() == n && v.total_cmp(&logits[best[n - 1] as usize]).is_le() {
                continue; // ties lose too: the earlier id stays ahead
            }
            let at = best.partition_point(|&b| better(logits, &b, &i).is_lt());
            best.insert(at, i);
            best.truncate(n);
        }
    }
    best.sort_unstable();
    best
}

/// Ordering for selection: higher logit first, then lower id.
fn better(logits: &[f32], a: &u32, b: &u32) -> std::cmp::Ordering {
    logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b))
}

/// Buckets per halving of the weight: fine enough that the boundary bucket holds few tokens.
/// A weight's bucket is `2047 - (bits >> 19)` (its exponent and top 4 mantissa bits), so the
/// buckets are ordered: heavier weights, lower buckets.
const BUCKETS_PER_OCTAVE: usize = 16;
/// 128 octaves cover every positive normal f32 weight.
const BUCKETS: usize = 128 * BUCKETS_PER_OCTAVE;
/// Weights per block of the draw's first, vectorised pass.
const DRAW_BLOCK: usize = 512;

fn bucket(w: f32) -> usize {
    (BUCKETS - 1).saturating_sub((w.to_bits() >> 19) as usize)
}

/// The top-p set, found without sorting the vocabulary: weights go into log-spaced buckets,
/// whole buckets are taken from the top until the one where the mass reaches the target, and
/// only that bucket is sorted. Members: every weight `>= threshold` (the whole buckets) plus
/// `edge`, the boundary bucket's heaviest (ties by lower position, as a full sort would).
struct Nucleus {
    threshold: f32,
    edge: Vec<usize>,
}

impl Nucleus {
    /// Every token (top-p 1): no histogram to build.
    const ALL: Nucleus = Nucleus { threshold: 0.0, edge: Vec::new() };

    fn new(weights: &[f32], target: f64) -> Nucleus {
        // Four interleaved histograms: consecutive weights of a flat row land in the same
        // bucket, and one histogram would chain every add on the one before.
        let mut mass = vec![[0.0f64; 4]; BUCKETS];
        let mut quads = weights.chunks_exact(4);
        for q in &mut quads {
            for (lane, &w) in q.iter().enumerate() {
                mass[bucket(w)][lane] += w as f64;
            }
        }
        for &w in quads.remainder() {
            mass[bucket(w)][0] += w as f64;
        }
        let mut acc = 0.0;
        let mut boundary = BUCKETS - 1;
        for (b, m) in mass.iter().enumerate() {
            let m = m.iter().sum::<f64>();
            if acc + m >= target {
                boundary = b;
                break;
            }
            acc += m;
        }
        // bucket(w) < boundary  <=>  bits >> 19 > 2047 - boundary  <=>  w >= threshold.
        let threshold = f32::from_bits(((BUCKETS - boundary) as u32) << 19);
        // The boundary bucket is the range [floor, threshold): chunks with no weight in it (a
        // vectorised test) are skipped whole.
        let floor = f32::from_bits(((BUCKETS - 1 - boundary) as u32) << 19);
        // Bucket 0 also holds everything above its range (`bucket` saturates).
        let ceil = if boundary == 0 { f32::INFINITY } else { threshold };
        let mut edge: Vec<(f32, usize)> = Vec::new();
        for (c, chunk) in weights.chunks(16).enumerate() {
            if chunk.iter().fold(false, |any, &w| any | (w >= floor && w < ceil)) {
                let hits = chunk.iter().enumerate().filter(|&(_, &w)| bucket(w) == boundary);
                edge.extend(hits.map(|(i, &w)| (w, c * 16 + i)));
            }
        }
        edge.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut kept = Vec::new();
        for (w, j) in edge {
            // The mass before the boundary bucket is below the target, so at least one is taken.
            if acc >= target {
                break;
            }
            acc += w as f64;
            kept.push(j);
        }
        Nucleus { threshold, edge: kept }
    }

    fn member(&self, w: f32) -> f32 {
        if w >= self.threshold {
            w
        } else {
            0.0
        }
    }

    /// Members in order (ascending position, then the edge), as a list.
    fn members(&self, weights: &[f32]) -> Vec<usize> {
        let whole = (0..weights.len()).filter(|&j| weights[j] >= self.threshold);
        whole.chain(self.edge.iter().copied()).collect()
    }

    /// Position drawn with probability proportional to its weight among the members, for a
    /// uniform `u` in [0, 1): the member where the running sum passes `u x mass`, in the order
    /// of [`Nucleus::members`]. Blocks of positions are summed (vectorised) and skipped whole;
    /// only the block holding the draw is walked one weight at a time.
    fn draw(&self, weights: &[f32], u: f64) -> usize {
        let block_sums: Vec<f64> = weights
            .chunks(DRAW_BLOCK)
            .map(|b| {
                let mut lanes = [0.0f32; 16];
                let mut c = b.chunks_exact(16);
                for c in &mut c {
                    for (l, &w) in lanes.iter_mut().zip(c) {
                        *l += self.member(w);
                    }
                }
                for (l, &w) in lanes.iter_mut().zip(c.remainder()) {
                    *l += self.member(w);
                }
                lanes.iter().map(|&l| l as f64).sum::<f64>()
            })
            .collect();
        let mass = block_sums.iter().sum::<f64>() + self.edge.iter().map(|&j| weights[j] as f64).sum::<f64>();
        let mut left = u * mass;
        let first = block_sums.iter().position(|&s| {
            let inside = left < s;
            if !inside {
                left -= s;
            }
            inside
        });
        // Rounding may leave a sliver past the block's own sum: walk on through the rest.
        if let Some(b) = first {
            for (j, &w) in weights.iter().enumerate().skip(b * DRAW_BLOCK) {
                left -= self.member(w) as f64;
                if left < 0.0 && w >= self.threshold {
                    return j;
                }
            }
        }
        for &j in &self.edge {
            left -= weights[j] as f64;
            if left < 0.0 {
                return j;
            }
        }
        // Only rounding gets here: the last member.
        self.edge.last().copied().or_else(|| weights.iter().rposition(|&w| w >= self.threshold)).unwrap_or(0)
    }
}

/// The positions of the top-p set of `weights` (each in (0, 1]) for `top_p` of their total,
/// in draw order. For tests: the set sampling draws from.
#[doc(hidden)]
pub fn nucleus_members(weights: &[f32], top_p: f64) -> Vec<usize> {
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    Nucleus::new(weights, top_p * total).members(weights)
}
