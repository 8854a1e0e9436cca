//! Sampling: seeds reproduce, greedy is the argmax, top-k and top-p keep only their candidates,
//! temperature sampling follows the softmax distribution.

use inferneo_runtime::sampling::{argmax, Sampler, SamplingParams};
use inferneo_runtime::{generate, GenerateRequest, Gpt2, Preset, WeightDtype};

fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, seed, ..SamplingParams::default() }
}

fn kernels() -> inferneo_kernels::Kernels {
    inferneo_kernels::kernels().expect("kernels for this CPU")
}

fn sampler(params: SamplingParams) -> Sampler {
    Sampler::new(params, kernels())
}

/// Logits whose softmax at temperature 1 is `probs`.
fn logits_for(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

#[test]
fn greedy_is_argmax_with_first_index_on_ties() {
    let mut s = sampler(SamplingParams::default());
    assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    assert_eq!(argmax(kernels(), &[5.0, 5.0]), 0);
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
            prompt_logprobs: false,
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
    let mut s = sampler(params(1.0, 0, 1.0, 42));
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
    let mut k2 = sampler(params(1.0, 2, 1.0, 1));
    let mut p75 = sampler(params(1.0, 0, 0.75, 2));
    let mut p50_k3 = sampler(params(1.0, 3, 0.5, 3));
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
    let mut s = sampler(params(1.0, 0, 0.5, 9));
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
    let mut s = sampler(SamplingParams { presence_penalty: 1.0, ..SamplingParams::default() });
    assert_eq!(s.sample(&logits), 0);
    assert_eq!(s.sample(&logits), 1);
    // Both penalised once now (3 - 1 = 2 vs 2.5 - 1 = 1.5): token 0 again.
    assert_eq!(s.sample(&logits), 0);
    // Frequency: token 0 penalised 0.4 per use; after two uses 3 - 0.8 = 2.2 < 2.5.
    let mut f = sampler(SamplingParams { frequency_penalty: 0.4, ..SamplingParams::default() });
    assert_eq!([f.sample(&logits), f.sample(&logits), f.sample(&logits)], [0, 0, 1]);
    assert!(SamplingParams { presence_penalty: 2.5, ..SamplingParams::default() }.validate().is_err());
}

/// The top-p set by a full sort: heaviest first (lower position on ties), until the running
/// mass reaches `top_p` of the total.
fn nucleus_by_sorting(weights: &[f32], top_p: f64) -> Vec<usize> {
    let total: f64 = weights.iter().map(|&w| w as f64).sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    let mut acc = 0.0;
    let mut kept = Vec::new();
    for j in order {
        if acc >= top_p * total && !kept.is_empty() {
            break;
        }
        acc += weights[j] as f64;
        kept.push(j);
    }
    kept.sort_unstable();
    kept
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(200))]

    /// The bucketed nucleus is the sorted one: the same set, up to the one member at the
    /// boundary where the two sums (in different orders) may round differently.
    #[test]
    fn nucleus_equals_the_full_sort(
        raw in proptest::collection::vec(0u32..4000, 1..3000),
        spread in 1.0f32..40.0,
        top_p in 0.05f64..1.0,
    ) {
        // Weights in (0, 1] with the maximum at 1, as the sampler makes them; duplicates likely.
        let top = *raw.iter().max().unwrap() as f32;
        let weights: Vec<f32> = raw.iter().map(|&r| ((r as f32 - top) / 4000.0 * spread).exp()).collect();
        let mut got = inferneo_runtime::sampling::nucleus_members(&weights, top_p);
        got.sort_unstable();
        let want = nucleus_by_sorting(&weights, top_p);
        let (small, big) = if got.len() <= want.len() { (&got, &want) } else { (&want, &got) };
        proptest::prop_assert!(big.len() - small.len() <= 1, "{} vs {} members", got.len(), want.len());
        proptest::prop_assert!(small.iter().all(|j| big.binary_search(j).is_ok()), "different members");
    }

    /// Top-k sampling draws only among the k best (higher logit, then lower id), for small k
    /// (the sorted-list path) and large k (the partial selection).
    #[test]
    fn top_k_draws_only_the_k_best(
        raw in proptest::collection::vec(0u32..50, 300..2000),
        k in proptest::sample::select(vec![1usize, 2, 5, 50, 256, 257, 290]),
        seed in 0u64..1000,
    ) {
        let logits: Vec<f32> = raw.iter().map(|&r| r as f32 * 0.1).collect();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let best: std::collections::BTreeSet<usize> = order[..k.min(logits.len())].iter().copied().collect();
        let mut s = sampler(params(1.0, k, 1.0, seed));
        for _ in 0..20 {
            let t = s.sample(&logits) as usize;
            proptest::prop_assert!(best.contains(&t), "top-{} drew {} (logit {})", k, t, logits[t]);
        }
    }
}

#[test]
fn draws_follow_the_distribution_across_blocks() {
    // Mass in positions far apart (the draw skips whole blocks of 512 by their sums).
    let heavy = [(100usize, 0.4), (700, 0.3), (1500, 0.2), (2600, 0.1)];
    let mut probs = vec![1e-9; 3000];
    for (i, p) in heavy {
        probs[i] = p;
    }
    let logits = logits_for(&probs);
    let mut s = sampler(params(1.0, 0, 0.999, 5));
    let n = 20_000;
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        *counts.entry(s.sample(&logits) as usize).or_insert(0usize) += 1;
    }
    for (i, p) in heavy {
        let freq = counts.get(&i).copied().unwrap_or(0) as f64 / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        assert!((freq - p).abs() < 5.0 * sd, "position {i}: frequency {freq} vs probability {p} ({counts:?})");
    }
    assert_eq!(counts.len(), heavy.len(), "drew outside the nucleus: {counts:?}");
}
