//! Kernels at GPT-2 shapes, per available ISA. GEMMs report FLOP throughput (2·m·n·k elements =
//! FLOPs, so criterion's "elem/s" reads as FLOP/s).
//!
//! `cargo bench --bench kernels` (filter with e.g. `-- matmul_kn/avx2`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inferneo_kernels::{Epilogue, Isa, Kernels, Layout, WeightDtype};
use std::hint::black_box;

fn vals(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn isas() -> Vec<Kernels> {
    Isa::ALL.into_iter().filter_map(Kernels::for_isa).collect()
}

/// (k, n) of GPT-2 124M's Conv1D layers: c_attn, attn c_proj, c_fc, mlp c_proj.
const KN_SHAPES: [(usize, usize); 4] = [(768, 2304), (768, 768), (768, 3072), (3072, 768)];

fn matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul_kn");
    g.sample_size(20);
    for kern in isas() {
        for &(k, n) in &KN_SHAPES {
            for m in [1, 8, 128] {
                if kern.isa() == Isa::Scalar && m > 8 {
                    continue;
                }
                for dtype in WeightDtype::ALL {
                    if dtype != WeightDtype::F32 && m > 1 {
                        continue;
                    }
                    let (x, w, b) = (vals(m * k), kern.pack(&vals(k * n), Layout::KN, k, n, dtype), vals(n));
                    let mut out = vec![0.0; m * n];
                    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
                    let id = BenchmarkId::new(format!("{}/{dtype}", kern.isa()), format!("m{m}_k{k}_n{n}"));
                    g.bench_function(id, |bch| {
                        bch.iter(|| kern.matmul_kn(black_box(&x), &w, Some(&b), &mut out, m, Epilogue::STORE))
                    });
                }
            }
        }
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("ops");
    for kern in isas() {
        let name = kern.isa().name();
        let (x, gam, bet) = (vals(768), vals(768), vals(768));
        let mut out = vec![0.0; 768];
        g.bench_function(BenchmarkId::new("layernorm_768", name), |b| {
            b.iter(|| kern.layernorm(black_box(&x), &gam, &bet, 1e-5, &mut out))
        });
        let mut h = vals(3072);
        g.bench_function(BenchmarkId::new("gelu_3072", name), |b| b.iter(|| kern.gelu_new(black_box(&mut h))));
        let mut s = vals(1024);
        g.bench_function(BenchmarkId::new("softmax_1024", name), |b| b.iter(|| kern.softmax(black_box(&mut s))));
    }
    g.finish();
}

criterion_group!(benches, matmul, elementwise);
criterion_main!(benches);
