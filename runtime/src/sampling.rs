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
    /// Subtracted once from the logit of every token already generated (OpenAI semantics;
    /// generated tokens only, not the prompt), in [-2, 2].
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated, in [-2, 2].
    pub frequency_penalty: f32,
    /// Added to the logits of these tokens before anything else (OpenAI `logit_bias`, each in
    /// [-100, 100]; -100 effectively bans a token, 100 effectively forces it).
    pub logit_bias: Vec<(u32, f32)>,
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

/// A sequence's sampler: its parameters and RNG state.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// How often each token was generated so far (for the penalties).
    counts: std::collections::HashMap<u32, u32>,
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
        Sampler { params, rng, counts: Default::default() }
    }

    /// Picks the next token from one row of logits (and remembers it for the penalties).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let adjusted;
        let penalties =
            !self.counts.is_empty() && (self.params.presence_penalty != 0.0 || self.params.frequency_penalty != 0.0);
        let logits = if !penalties && self.params.logit_bias.is_empty() {
            logits
        } else {
            let mut l = logits.to_vec();
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
        token
    }

    fn pick(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature == 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        let vocab = logits.len();
        // The process's kernels (SIMD max and exp); scalar ones if INFERNEO_ISA is unusable.
        let k = inferneo_kernels::kernels().unwrap_or_else(|_| {
            inferneo_kernels::Kernels::for_isa(inferneo_kernels::Isa::Scalar).expect("scalar kernels always exist")
        });
        let max = k.max(logits);
        // Candidates: the top k by partial selection (O(vocab)), or every token.
        let mut cand: Vec<u32> = (0..vocab as u32).collect();
        if p.top_k > 0 && p.top_k < vocab {
            cand.select_nth_unstable_by(p.top_k, |a, b| better(logits, a, b));
            cand.truncate(p.top_k);
            cand.sort_unstable();
        }
        // Weights relative to the best logit (the best has weight 1), computed once in one
        // vectorised pass; f32 is plenty for sampling.
        let mut weights = vec![0.0f32; cand.len()];
        let total = if cand.len() == vocab {
            k.exp_shifted(logits, max, inv_t, &mut weights)
        } else {
            let picked: Vec<f32> = cand.iter().map(|&i| logits[i as usize]).collect();
            k.exp_shifted(&picked, max, inv_t, &mut weights)
        } as f64;
        let (kept, mass) =
            if p.top_p < 1.0 { nucleus(&weights, p.top_p as f64 * total) } else { ((0..cand.len()).collect(), total) };
        // Draw from the kept set in its (deterministic) order.
        let mut u = self.rng.next_f64() * mass;
        for &j in &kept {
            u -= weights[j] as f64;
            if u < 0.0 {
                return cand[j];
            }
        }
        cand[*kept.last().expect("the nucleus holds at least the best token")]
    }
}

/// Ordering for selection: higher logit first, then lower id.
fn better(logits: &[f32], a: &u32, b: &u32) -> std::cmp::Ordering {
    logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b))
}

/// Buckets per halving of the weight: fine enough that the boundary bucket holds few tokens.
const BUCKETS_PER_OCTAVE: usize = 16;
/// 128 octaves cover every positive normal f32 weight.
const BUCKETS: usize = 128 * BUCKETS_PER_OCTAVE;

/// The smallest set of most likely candidates whose weight reaches `target` (top-p), without
/// sorting the vocabulary: weights go into log-spaced buckets, whole buckets are taken from
/// the top until the boundary bucket, and only that bucket is sorted. Returns the kept
/// positions (into `weights`) and their total weight. Ties break by lower position, as a full
/// sort would.
fn nucleus(weights: &[f32], target: f64) -> (Vec<usize>, f64) {
    // -log2(w) from the exponent and mantissa bits (w is in (0, 1]): no log call per token.
    let bucket = |w: f32| {
        let bits = w.to_bits();
        let octave = (127 - ((bits >> 23) & 0xff) as i64).max(0) as usize;
        let frac = ((bits >> 19) & 0xf) as usize; // top 4 mantissa bits: 16 sub-buckets
        (octave * BUCKETS_PER_OCTAVE + (15 - frac)).min(BUCKETS - 1)
    };
    let mut mass = vec![0.0f64; BUCKETS];
    for &w in weights {
        mass[bucket(w)] += w as f64;
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
    let mut kept: Vec<usize> = Vec::new();
    let mut edge: Vec<(f32, usize)> = Vec::new();
    for (j, &w) in weights.iter().enumerate() {
        match bucket(w).cmp(&boundary) {
            std::cmp::Ordering::Less => kept.push(j),
            std::cmp::Ordering::Equal => edge.push((w, j)),
            std::cmp::Ordering::Greater => {}
        }
    }
    edge.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (w, j) in edge {
        if acc >= target && !kept.is_empty() {
            break;
        }
        acc += w as f64;
        kept.push(j);
    }
    (kept, acc)
}
