//! Next-token selection: greedy, or temperature / top-k / top-p sampling with a seeded RNG.
//!
//! Candidates are found by partial selection (`select_nth_unstable`), never by sorting the whole
//! vocabulary: top-p grows a candidate set of the best 64, 128, ... logits until it holds the
//! requested mass, which for real distributions is almost always the first round.

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
        let weight = |l: f32| ((l as f64 - max) * inv_t).exp();
        let vocab = logits.len();
        let limit = if p.top_k == 0 { vocab } else { p.top_k.min(vocab) };
        let total: f64 = if limit == vocab { logits.iter().map(|&l| weight(l)).sum() } else { 0.0 };

        let mut idx: Vec<u32> = (0..vocab as u32).collect();
        let mut take = if p.top_p < 1.0 { 64.min(limit) } else { limit };
        loop {
            let cand = top_candidates(logits, &mut idx, take);
            let weights: Vec<f64> = cand.iter().map(|&i| weight(logits[i as usize])).collect();
            // The distribution the nucleus is taken from: after top-k if given, else the full one.
            let base = if limit == vocab { total } else { weights.iter().sum() };
            let mut kept = 0.0;
            let mut n = 0;
            for &w in &weights {
                kept += w;
                n += 1;
                if kept >= p.top_p as f64 * base {
                    break;
                }
            }
            if kept >= p.top_p as f64 * base || take == limit {
                let mut u = self.rng.next_f64() * kept;
                for (j, &w) in weights[..n].iter().enumerate() {
                    u -= w;
                    if u < 0.0 {
                        return cand[j];
                    }
                }
                return cand[n - 1];
            }
            take = (take * 2).min(limit);
        }
    }
}

/// The `take` largest logits' ids, most likely first (ties broken by lower id), by partial
/// selection of `idx` and a sort of only the selected part.
fn top_candidates<'a>(logits: &[f32], idx: &'a mut [u32], take: usize) -> &'a [u32] {
    let better = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    if take < idx.len() {
        idx.select_nth_unstable_by(take, better);
    }
    let top = &mut idx[..take];
    top.sort_unstable_by(better);
    top
}
