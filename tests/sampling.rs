//! Sampling: seeds reproduce, greedy is the argmax, top-k and top-p keep only their candidates,
//! temperature sampling follows the softmax distribution.

use inferneo_runtime::sampling::{argmax, Sampler, SamplingParams};
use inferneo_runtime::{generate, GenerateRequest, Gpt2, Preset, WeightDtype};

fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, seed, ..SamplingParams::default() }
}

/// Logits whose softmax at temperature 1 is `probs`.
fn logits_for(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

#[test]
fn greedy_is_argmax_with_first_index_on_ties() {
    let mut s = Sampler::new(SamplingParams::default());
    assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    assert_eq!(argmax(&[5.0, 5.0]), 0);
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let model = Gpt2::random(Preset::Tiny, 6, inferneo_kernels::kernels().unwrap(), WeightDtype::F32);
    let run = |seed| {
        let req = GenerateRequest {
            prompt: vec![464, 2068, 7586],
            max_tokens: 24,
            sampling: params(1.0, 0, 0.9, seed),
            stop_tokens: vec![],
            top_logprobs: 0,
        };
        generate(&model, &req, |_| {}).unwrap().tokens
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn temperature_sampling_follows_the_distribution() {
    let probs = [0.5, 0.25, 0.125, 0.125];
    let logits = logits_for(&probs);
    let mut s = Sampler::new(params(1.0, 0, 1.0, 42));
    let n = 20_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&logits) as usize] += 1;
    }
    for (c, p) in counts.iter().zip(probs) {
        let freq = *c as f64 / n as f64;
        // 5 standard deviations of a binomial proportion.
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!((freq - p).abs() < 5.0 * sd, "frequency {freq} vs probability {p} ({counts:?})");
    }
}

#[test]
fn top_k_and_top_p_keep_only_their_candidates() {
    // A 50257-wide distribution: a few heavy tokens and a long flat tail.
    let mut probs = vec![1e-6; 50257];
    for (i, p) in [(10usize, 0.4), (20, 0.3), (30, 0.2), (40, 0.05)] {
        probs[i] = p;
    }
    let logits = logits_for(&probs);
    let mut k2 = Sampler::new(params(1.0, 2, 1.0, 1));
    let mut p75 = Sampler::new(params(1.0, 0, 0.75, 2));
    let mut p50_k3 = Sampler::new(params(1.0, 3, 0.5, 3));
    let mut seen_p75 = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        assert!([10, 20].contains(&k2.sample(&logits)));
        let t = p75.sample(&logits);
        // 0.4 + 0.3 < 0.75 <= 0.4 + 0.3 + 0.2 of ~0.9997 total: the nucleus is {10, 20, 30}.
        assert!([10, 20, 30].contains(&t), "top-p 0.75 sampled {t}");
        seen_p75.insert(t);
        // Within the top 3 (mass 0.9), 0.4/0.9 < 0.5 <= 0.7/0.9: nucleus {10, 20}.
        assert!([10, 20].contains(&p50_k3.sample(&logits)));
    }
    assert_eq!(seen_p75.len(), 3, "every nucleus member should be drawn");
}

#[test]
fn flat_distribution_top_p_grows_the_candidate_set() {
    // Uniform over 50257: top-p 0.5 needs ~25k candidates, far beyond the first round of 64.
    let logits = vec![0.0f32; 50257];
    let mut s = Sampler::new(params(1.0, 0, 0.5, 9));
    let draws: Vec<u32> = (0..500).map(|_| s.sample(&logits)).collect();
    assert!(draws.iter().all(|&t| t < 25_200), "drew outside the nucleus of the lowest ids");
    assert!(draws.iter().any(|&t| t > 10_000), "nucleus should span ~25k tokens");
}

#[test]
fn invalid_parameters_are_errors() {
    assert!(params(-1.0, 0, 1.0, 0).validate().is_err());
    assert!(params(f32::NAN, 0, 1.0, 0).validate().is_err());
    assert!(params(1.0, 0, 0.0, 0).validate().is_err());
    assert!(params(1.0, 0, 1.5, 0).validate().is_err());
    assert!(params(0.7, 40, 0.9, 0).validate().is_ok());
}

#[test]
fn penalties_follow_openai_semantics() {
    // Greedy over [3.0, 2.5, 1.0]: token 0 first; a presence penalty of 1 then makes token 1 win.
    let logits = [3.0f32, 2.5, 1.0];
    let mut s = Sampler::new(SamplingParams { presence_penalty: 1.0, ..SamplingParams::default() });
    assert_eq!(s.sample(&logits), 0);
    assert_eq!(s.sample(&logits), 1);
    // Both penalised once now (3 - 1 = 2 vs 2.5 - 1 = 1.5): token 0 again.
    assert_eq!(s.sample(&logits), 0);
    // Frequency: token 0 penalised 0.4 per use; after two uses 3 - 0.8 = 2.2 < 2.5.
    let mut f = Sampler::new(SamplingParams { frequency_penalty: 0.4, ..SamplingParams::default() });
    assert_eq!([f.sample(&logits), f.sample(&logits), f.sample(&logits)], [0, 0, 1]);
    assert!(SamplingParams { presence_penalty: 2.5, ..SamplingParams::default() }.validate().is_err());
}
