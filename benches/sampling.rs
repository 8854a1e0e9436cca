//! Cost of picking one token from a 50257-wide row: greedy, top-p 0.9 at temperature 0.7 (the
//! seed workload) and top-k 50, on a flat row (a random-weight model's: the nucleus is most of
//! the vocabulary, the worst case for top-p) and on a peaked one.
//!
//! `cargo bench --bench sampling`

use criterion::{criterion_group, criterion_main, Criterion};
use inferneo_runtime::sampling::{Sampler, SamplingParams};
use std::hint::black_box;

fn rows() -> [(&'static str, Vec<f32>); 2] {
    let flat = (0..50257u32).map(|i| ((i.wrapping_mul(2654435761) >> 8) % 1000) as f32 * 1e-3).collect();
    let peaked = (0..50257u32).map(|i| ((i.wrapping_mul(2654435761) >> 8) % 1000) as f32 * 2e-2).collect();
    [("flat", flat), ("peaked", peaked)]
}

fn sampling(c: &mut Criterion) {
    let k = inferneo_kernels::kernels().expect("kernels for this CPU");
    let mut g = c.benchmark_group("sample_50257");
    let modes = [
        ("greedy", SamplingParams::default()),
        ("top_p_0.9_t_0.7", SamplingParams { temperature: 0.7, top_p: 0.9, ..Default::default() }),
        ("top_k_50_t_0.7", SamplingParams { temperature: 0.7, top_k: 50, ..Default::default() }),
    ];
    for (row_name, row) in rows() {
        for (mode, params) in &modes {
            let mut s = Sampler::new(params.clone(), k);
            g.bench_function(format!("{mode}/{row_name}"), |b| b.iter(|| s.sample(black_box(&row))));
        }
    }
}

criterion_group!(benches, sampling);
criterion_main!(benches);
