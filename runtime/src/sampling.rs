//! Next-token selection: greedy, or temperature / top-k / top-p sampling with a seeded RNG.
//!
//! Never sorts the whole vocabulary: top-k is a partial selection (`select_nth_unstable`) and
//! top-p buckets the weights on a log scale and sorts only the bucket at the nucleus boundary,
//! so a token costs O(vocab) even for flat distributions (where the nucleus is most of the
//! vocabulary).

use crate::error::{Error, Result};

/// How to pick the next token. `temperature == 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
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

/// A sequence's sampler: its parameters and RNG state.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature as f64;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let vocab = logits.len();
        // Candidates: the top k by partial selection (O(vocab)), or every token.
        let mut cand: Vec<u32> = (0..vocab as u32).collect();
        if p.top_k > 0 && p.top_k < vocab {
            cand.select_nth_unstable_by(p.top_k, |a, b| better(logits, a, b));
            cand.truncate(p.top_k);
            cand.sort_unstable();
        }
        // Weights relative to the best logit (the best has weight 1).
        let weights: Vec<f64> = cand.iter().map(|&i| ((logits[i as usize] as f64 - max) * inv_t).exp()).collect();
        let total: f64 = weights.iter().sum();
        let (kept, mass) =
            if p.top_p < 1.0 { nucleus(&cand, &weights, p.top_p as f64 * total) } else { (cand.clone(), total) };
        // Draw from the kept set in its (deterministic) order.
        let mut u = self.rng.next_f64() * mass;
        for &i in &kept {
            let w = ((logits[i as usize] as f64 - max) * inv_t).exp();
            u -= w;
            if u < 0.0 {
                return i;
            }
        }
        *kept.last().expect("the nucleus holds at least the best token")
    }
}

/// Ordering for selection: higher logit first, then lower id.
fn better(logits: &[f32], a: &u32, b: &u32) -> std::cmp::Ordering {
    logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b))
}

/// Buckets per halving of the weight: fine enough that the boundary bucket holds few tokens.
const BUCKETS_PER_OCTAVE: f64 = 16.0;
const BUCKETS: usize = 64 * 16;

/// The smallest set of most likely candidates whose weight reaches `target` (top-p), without
/// sorting the vocabulary: weights go into log-spaced buckets, whole buckets are taken from
/// the top until the boundary bucket, and only that bucket is sorted. Returns the kept ids and
/// their total weight. Ties break by lower id, as a full sort would.
fn nucleus(cand: &[u32], weights: &[f64], target: f64) -> (Vec<u32>, f64) {
    // -log2(w) from the exponent and mantissa bits (w is in (0, 1]): no log call per token.
    let bucket = |w: f64| {
        let bits = w.to_bits();
        let octave = (1023 - ((bits >> 52) & 0x7ff) as i64).max(0) as usize;
        let frac = ((bits >> 48) & 0xf) as usize; // top 4 mantissa bits: 16 sub-buckets
        (octave * BUCKETS_PER_OCTAVE as usize + (15 - frac)).min(BUCKETS - 1)
    };
    let mut mass = vec![0.0f64; BUCKETS];
    for &w in weights {
        mass[bucket(w)] += w;
    }
    let mut acc = 0.0;
    let mut boundary = BUCKETS - 1;
    for (b, &m) in mass.iter().enumerate() {
        if acc + m >= target {
            boundary = b;
            break;
        }
        acc += m;
    }
    let mut kept: Vec<u32> = Vec::new();
    let mut edge: Vec<(f64, u32)> = Vec::new();
    for (&i, &w) in cand.iter().zip(weights) {
        match bucket(w).cmp(&boundary) {
            std::cmp::Ordering::Less => kept.push(i),
            std::cmp::Ordering::Equal => edge.push((w, i)),
            std::cmp::Ordering::Greater => {}
        }
    }
    edge.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (w, i) in edge {
        if acc >= target && !kept.is_empty() {
            break;
        }
        acc += w;
        kept.push(i);
    }
    (kept, acc)
}
