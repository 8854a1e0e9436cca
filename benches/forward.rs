//! End-to-end forward pass of the GPT-2 124M shape: prefill (time to first token for a 50-token
//! prompt) and decode (one token over a 50-token cache), separately, after criterion's warm-up,
//! for every weight dtype, each pass run with a kernel team (as the engine runs it).
//!
//! `cargo bench --bench forward`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inferneo_runtime::{Gpt2, KvCache, Logits, Preset, WeightDtype};

fn forward(c: &mut Criterion) {
    for dtype in WeightDtype::ALL {
        forward_dtype(c, dtype);
    }
}

fn forward_dtype(c: &mut Criterion, dtype: WeightDtype) {
    let model = Gpt2::random(Preset::Gpt2, 0, inferneo_kernels::kernels().unwrap(), dtype);
    let prompt: Vec<u32> = (0..50).map(|i| (i * 389 + 11) % 50257).collect();
    // Each forward pass runs with a kernel team installed on the bench's thread, as the
    // engine's do.
    let team = inferneo_kernels::Team::new(rayon::current_num_threads()).unwrap();
    let mut g = c.benchmark_group(format!("gpt2_124m/{dtype}"));
    g.sample_size(10);
    g.throughput(Throughput::Elements(50));
    // The cache is allocated once, as a server's pool is: allocating (and faulting in) a fresh
    // 75 MB cache per iteration was a fifth of the measured time, and no part of serving.
    let mut cache = KvCache::new(model.config());
    g.bench_function("prefill_50_tokens", |b| {
        b.iter(|| {
            cache.truncate(0);
            team.install(|| model.forward_one(&mut cache, &prompt, Logits::Last).unwrap())
        })
    });
    cache.truncate(0);
    model.forward_one(&mut cache, &prompt, Logits::None).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_1_token_at_50", |b| {
        b.iter(|| {
            let logits = team.install(|| model.forward_one(&mut cache, &[464], Logits::Last).unwrap());
            cache.truncate(50);
            logits
        })
    });
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
