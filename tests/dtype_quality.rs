//! Quality of the narrow weight dtypes against f32 on the same model: max abs logit error,
//! top-1 agreement and mean KL(f32 || dtype) over a fixed token set, for the embedded model's
//! shape and every fixture model. The figures are printed (`--nocapture`) for
//! docs/PERFORMANCE.md, and bounded so a broken conversion fails.

mod common;

use common::compare;

use inferneo_runtime::{Gpt2, KvCache, Logits, Preset, WeightDtype};

fn logits(model: &Gpt2, tokens: &[u32]) -> Vec<f32> {
    let mut cache = KvCache::new(model.config());
    model.forward_one(&mut cache, tokens, Logits::All).unwrap()
}

/// Bounds per dtype: (max abs logit error, min top-1 agreement, max mean KL).
fn bounds(dtype: WeightDtype) -> (f32, f64, f64) {
    match dtype {
        // Measured (docs/PERFORMANCE.md) with about 3x headroom. Random-weight models have flat
        // distributions, so top-1 flips between near-tied logits are expected at 1-6%.
        WeightDtype::F16 => (0.01, 0.98, 1e-6),
        WeightDtype::Bf16 => (0.08, 0.90, 5e-5),
        WeightDtype::Int8 => (0.15, 0.90, 2e-4),
        // Activations quantized too: about twice the int8 error (measured).
        WeightDtype::W8a8 => (0.3, 0.80, 6e-4),
        // bf16 weights, and activations rounded to bf16 too.
        WeightDtype::Bf16dot => (0.11, 0.90, 8e-5),
        // 4-bit weights in groups of 32 (llama.cpp's Q4_0 rule), int8 activations: about as far
        // from f32 as Q4_0 weights alone (tests/gguf.rs). Top-1 on random weights is 47-88%, KL up
        // to 2.3e-2 (gpt2-large).
        WeightDtype::W4a8 => (3.5, 0.30, 7e-2),
        WeightDtype::F32 => unreachable!(),
    }
}

fn check_model(label: &str, make: impl Fn(WeightDtype) -> Gpt2, tokens: &[u32]) {
    let f32_model = make(WeightDtype::F32);
    let vocab = f32_model.config().vocab_size;
    let reference = logits(&f32_model, tokens);
    drop(f32_model);
    for dtype in [
        WeightDtype::F16,
        WeightDtype::Bf16,
        WeightDtype::Bf16dot,
        WeightDtype::Int8,
        WeightDtype::W8a8,
        WeightDtype::W4a8,
    ] {
        let q = compare(&reference, &logits(&make(dtype), tokens), vocab);
        eprintln!(
            "QUALITY {label} {dtype}: max abs logit err {:.2e}, top-1 agreement {:.1}%, mean KL {:.2e} ({} positions)",
            q.max_abs,
            q.top1 * 100.0,
            q.mean_kl,
            tokens.len()
        );
        let (max_abs, top1, kl) = bounds(dtype);
        assert!(q.max_abs <= max_abs, "{label} {dtype}: max abs logit error {} > {max_abs}", q.max_abs);
        assert!(q.top1 >= top1, "{label} {dtype}: top-1 agreement {} < {top1}", q.top1);
        assert!(q.mean_kl <= kl, "{label} {dtype}: mean KL {} > {kl}", q.mean_kl);
    }
}

/// A fixed token set: 64 ids spread over the vocabulary.
fn tokens(vocab: usize) -> Vec<u32> {
    (0..64u64).map(|i| ((i * 7919 + 13) % vocab as u64) as u32).collect()
}

#[test]
fn narrow_dtypes_stay_close_to_f32() {
    let k = inferneo_kernels::kernels().unwrap();
    for (label, preset, seed) in [
        ("embedded gpt2", Preset::Gpt2, inferneo_runtime::gpt2::EMBEDDED_SEED),
        ("tiny", Preset::Tiny, common::Golden::load("tiny").seed()),
        ("distilgpt2", Preset::DistilGpt2, common::Golden::load("distilgpt2").seed()),
    ] {
        check_model(label, |d| Gpt2::random(preset, seed, k, d), &tokens(50257));
    }
    let hub = common::data_dir().join("hub-micro");
    check_model("hub-micro", |d| Gpt2::load(&hub, k, d).unwrap(), &tokens(1000));
}

/// The GPT-2 medium and large fixture models (355M and 774M parameters: deeper and wider
/// products, so more rounding to accumulate).
#[test]
fn narrow_dtypes_stay_close_to_f32_on_the_larger_shapes() {
    let k = inferneo_kernels::kernels().unwrap();
    for (label, preset) in [("gpt2-medium", Preset::Gpt2Medium), ("gpt2-large", Preset::Gpt2Large)] {
        let seed = common::Golden::load(label).seed();
        check_model(label, |d| Gpt2::random(preset, seed, k, d), &tokens(50257));
    }
}
