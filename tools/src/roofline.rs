//! `inferneo roofline`: this machine's limits (read bandwidth, FMA peak) and each kernel at the
//! shapes of a GPT-2 preset (124M by default, up to XL) as a fraction of the roofline
//! `min(peak, bandwidth x arithmetic intensity)`.
//!
//! Every figure is the best of several timed repetitions (the machines are noisy; the best run
//! is the one least disturbed). Threads: all cores, a team installed on the calling thread as
//! the engine runs its kernels.

use inferneo_kernels::{team, ActQuant, Epilogue, HugeBuf, Kernels, Layout, PackedKn, Panels, WeightDtype};
use inferneo_runtime::{Config, Preset};
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Times `f` repeatedly for about `budget`; returns the fastest run in seconds.
fn best_of(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < 3 || (start.elapsed() < budget && runs < 10_000) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

/// All-core read bandwidth in bytes/s over a buffer far larger than the caches, on 2 MiB pages
/// (as the packed weights are) or on ordinary 4 KiB pages.
pub fn read_bandwidth(k: Kernels, bytes: usize, huge_pages: bool) -> f64 {
    let n = bytes / 4;
    let mut huge;
    let mut small;
    let buf: &mut [f32] = if huge_pages {
        huge = HugeBuf::<f32>::zeroed(n).unwrap_or_else(|e| e.abort());
        &mut huge
    } else {
        small = vec![0.0f32; n];
        &mut small
    };
    team::for_each_chunk_mut(buf, 1 << 20, |i, c| c.fill(i as f32 * 1e-9));
    let buf = &*buf;
    let chunk = n.div_ceil(team::threads() * 8);
    let mut sums = vec![0.0f32; n.div_ceil(chunk)];
    let secs = best_of(Duration::from_secs(2), || {
        team::for_each_mut(&mut sums, |i, s| *s = k.sum(&buf[i * chunk..((i + 1) * chunk).min(n)]));
        black_box(sums.iter().sum::<f32>());
    });
    (n * 4) as f64 / secs
}

/// All-core f32 FMA peak in FLOP/s.
pub fn fma_peak(k: Kernels) -> f64 {
    all_core_rate(2_000_000, |iters| k.fma_probe(iters))
}

/// All-core peak of the `w8a8` integer dot product, in operations/s (2 per multiply-add).
pub fn int_dot_peak(k: Kernels) -> f64 {
    all_core_rate(1_000_000, |iters| k.int_dot_probe(iters))
}

/// All-core peak of the `bf16dot` pair product in FLOP/s (AVX512-BF16's `vdpbf16ps` where the
/// CPU has it, else the FMAs it falls back to).
pub fn bf16dot_peak(k: Kernels) -> f64 {
    all_core_rate(1_000_000, |iters| k.bf16dot_probe(iters))
}

/// Operations/s of a one-thread `probe(iters) -> (operations, value)` run on every thread at
/// once (the value keeps the work from being optimised away).
fn all_core_rate(iters: usize, probe: impl Fn(usize) -> (f64, f32) + Sync) -> f64 {
    let threads = team::threads();
    let mut values = vec![0.0f32; threads];
    let secs = best_of(Duration::from_secs(1), || {
        team::for_each_mut(&mut values, |_, v| *v = probe(iters).1);
        black_box(&values);
    });
    // The count is proportional to `iters`: a one-iteration run gives it per iteration.
    probe(1).0 * iters as f64 * threads as f64 / secs
}

/// Cost of one parallel loop over the team (one empty task a thread), in seconds: back to back
/// and after 200 us of single-threaded work (a rayon worker would have gone to sleep by then;
/// a team's helper spins for `team::SPIN`), which is the pattern of a decode step between two
/// products.
pub fn fork_join_overhead() -> (f64, f64) {
    let threads = team::threads();
    let join = || {
        team::for_each(threads, |i| {
            black_box(i);
        })
    };
    let hot = best_of(Duration::from_millis(300), join);
    let mut samples = Vec::new();
    for _ in 0..200 {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_micros(200) {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        join();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    (hot, samples[samples.len() / 2])
}

/// (label, k, n) of a GPT-2 model's products: the four of every layer, then the LM head.
pub fn shapes(c: &Config) -> [(&'static str, usize, usize); 5] {
    let (e, inner) = (c.n_embd, c.n_inner());
    [
        ("attn.c_attn", e, 3 * e),
        ("attn.c_proj", e, e),
        ("mlp.c_fc", e, inner),
        ("mlp.c_proj", inner, e),
        ("lm_head", e, c.vocab_size),
    ]
}
const MS: [usize; 5] = [1, 8, 32, 128, 512];
/// Smallest M of an `--sgemm` run (the sizes numpy is compared at).
const SGEMM_MIN_M: usize = 32;
/// Largest M also measured with its weights streamed from memory (decode sizes).
const STREAMED_MAX_M: usize = 32;

/// Packed bytes a streamed measurement cycles through: distinct copies of the matrix, well past
/// the last-level cache (260 MiB on the Xeon this was written on), so every product reads its
/// weights from memory, as each decode step of a real model does. The plain figures reuse one
/// matrix, which a large L3 keeps: those are in-cache figures.
const STREAM_BYTES: usize = 768 << 20;

/// Seconds per product with the weights coming from memory: the best full pass over the
/// copies, divided by their number.
fn streamed_secs(
    k: Kernels,
    copies: &[PackedKn],
    x: &[f32],
    bias: &[f32],
    out: &mut [f32],
    m: usize,
    passes: usize,
) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(2) {
        let t = Instant::now();
        for p in copies {
            k.matmul_kn(black_box(x), p, Some(bias), out, m, Epilogue::STORE);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best / copies.len() as f64
}

/// What a `roofline` run measures.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Fewer shapes and shorter timings (a smoke run).
    pub quick: bool,
    /// Whole sweeps, one after another; each figure is the best of its rounds.
    pub rounds: usize,
    /// Only the f32 GEMMs at M >= 32, in cache (what `sgemm_vs_numpy.py` compares).
    pub sgemm: bool,
    /// Whose shapes: `n_embd`, the MLP width and the vocabulary set K and N.
    pub preset: Preset,
}

/// The machine's limits as one round measured them.
#[derive(Clone, Copy, Default)]
struct Roofs {
    bw: f64,
    bw_4k: f64,
    peak: f64,
    int_peak: f64,
    bf16_peak: f64,
}

impl Roofs {
    fn measure(k: Kernels, quick: bool) -> Roofs {
        let bw_bytes = if quick { 256 << 20 } else { 1 << 30 };
        Roofs {
            bw: read_bandwidth(k, bw_bytes, true),
            bw_4k: read_bandwidth(k, bw_bytes, false),
            peak: fma_peak(k),
            int_peak: int_dot_peak(k),
            bf16_peak: bf16dot_peak(k),
        }
    }

    fn max(self, o: Roofs) -> Roofs {
        Roofs {
            bw: self.bw.max(o.bw),
            bw_4k: self.bw_4k.max(o.bw_4k),
            peak: self.peak.max(o.peak),
            int_peak: self.int_peak.max(o.int_peak),
            bf16_peak: self.bf16_peak.max(o.bf16_peak),
        }
    }
}

/// One product measured: where it is in the sweep, and its best times so far.
struct Case {
    label: &'static str,
    k: usize,
    n: usize,
    dtype: WeightDtype,
    m: usize,
    bytes: usize,
    /// Integer dot products per multiply-add when the product runs on the integer dot (w8a8:
    /// 1; int8 on VNNI: 3, one per byte digit of its 24-bit activations): its compute roof is
    /// the integer-dot peak over that. `None`: the FMA peak.
    dot_passes: Option<usize>,
    /// Runs on the `bf16dot` pair product: its compute roof is that product's peak.
    bf16_pairs: bool,
    secs: f64,
    streamed: Option<f64>,
}

/// One sweep over every shape, dtype and M of the plan; `cases` (in sweep order, empty before
/// the first round) keeps each figure's best.
fn sweep(k: Kernels, plan: Plan, cases: &mut Vec<Case>) {
    let budget = Duration::from_millis(if plan.quick { 50 } else { 300 });
    let first_round = cases.is_empty();
    let mut next = 0;
    for (label, kk, n) in shapes(&plan.preset.config()) {
        let w: Vec<f32> = (0..kk * n).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
        let bias = vec![0.01f32; n];
        let dtypes: &[WeightDtype] = if plan.sgemm { &[WeightDtype::F32] } else { &WeightDtype::ALL };
        for &dtype in dtypes {
            // Every dtype at decode size (bandwidth-bound); f32, int8, w8a8, w4a8 and bf16dot
            // (the kernels batches run on) across all M.
            let across = matches!(
                dtype,
                WeightDtype::F32 | WeightDtype::Int8 | WeightDtype::W8a8 | WeightDtype::W4a8 | WeightDtype::Bf16dot
            );
            let ms: &[usize] = if across { &MS } else { &MS[..1] };
            let ms: Vec<usize> = ms
                .iter()
                .copied()
                .filter(|&m| !(plan.quick && m > STREAMED_MAX_M || plan.sgemm && m < SGEMM_MIN_M))
                .collect();
            let streams = !plan.sgemm && ms.iter().any(|&m| m <= STREAMED_MAX_M);
            // The first copy is also the in-cache one. A quick run only smoke-tests the streamed
            // path: two copies may still sit in cache.
            let first = k.pack(&w, Layout::KN, kk, n, dtype);
            let count = match (streams, plan.quick) {
                (false, _) => 1,
                (true, true) => 2,
                (true, false) => (STREAM_BYTES / first.bytes()).max(2),
            };
            let copies: Vec<PackedKn> =
                std::iter::once(first).chain((1..count).map(|_| k.pack(&w, Layout::KN, kk, n, dtype))).collect();
            let packed = &copies[0];
            let dot_passes = match packed.panels() {
                Panels::IntDot { acts: ActQuant::Int8, .. } => Some(1),
                Panels::IntDot { acts: ActQuant::Int24, .. } => Some(3),
                // Against the w8a8 probe's peak: on AVX2 w4a8's `vpmaddubsw` does twice the
                // multiply-adds per instruction of `vpmaddwd`, but unpacking and the per-group
                // float work cost more than that gains; on VNNI the instruction is the same.
                Panels::W4 { .. } => Some(1),
                _ => None,
            };
            let bf16_pairs = matches!(packed.panels(), Panels::Bf16Pairs(_));
            for m in ms {
                let x = vec![0.5f32; m * kk];
                let mut out = vec![0.0f32; m * n];
                let secs =
                    best_of(budget, || k.matmul_kn(black_box(&x), packed, Some(&bias), &mut out, m, Epilogue::STORE));
                let streamed = (streams && m <= STREAMED_MAX_M)
                    .then(|| streamed_secs(k, &copies, &x, &bias, &mut out, m, if plan.quick { 2 } else { 5 }));
                if first_round {
                    let bytes = packed.bytes() + 4 * (m * kk + m * n + n);
                    cases.push(Case { label, k: kk, n, dtype, m, bytes, dot_passes, bf16_pairs, secs, streamed });
                } else {
                    let c = &mut cases[next];
                    c.secs = c.secs.min(secs);
                    c.streamed = c.streamed.zip(streamed).map(|(a, b)| a.min(b));
                }
                next += 1;
            }
        }
    }
}

/// Measures everything `inferneo roofline --json` prints and returns it as that JSON (also
/// what the Python package's `inferneo.kernels.roofline()` returns). Run it with a team
/// installed, as the engine runs its kernels.
pub fn report(k: Kernels, plan: Plan) -> Result<serde_json::Value, String> {
    if plan.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let (join_hot, join_after_gap) = fork_join_overhead();
    // Whole sweeps in turn, so a slow spell of this shared machine (they last seconds to
    // minutes) costs one round of a figure, not the figure; the roofs are re-measured each round.
    let mut per_round = Vec::new();
    let mut cases = Vec::new();
    for _ in 0..plan.rounds {
        per_round.push(Roofs::measure(k, plan.quick));
        sweep(k, plan, &mut cases);
    }
    let Roofs { bw, bw_4k, peak, int_peak, bf16_peak } = per_round.iter().fold(Roofs::default(), |a, &r| a.max(r));
    let mut rows = Vec::new();
    for c in &cases {
        let peak = match (c.dot_passes, c.bf16_pairs) {
            (Some(p), _) => int_peak / p as f64,
            (None, true) => bf16_peak,
            (None, false) => peak,
        };
        let flops = 2.0 * (c.m * c.k * c.n) as f64;
        let bytes = c.bytes as f64;
        let roof = peak.min(bw * flops / bytes);
        let (secs, streamed) = (c.secs, c.streamed);
        rows.push(json!({
            "op": c.label, "dtype": c.dtype.name(), "m": c.m, "k": c.k, "n": c.n, "seconds": secs,
            "gflops": flops / secs / 1e9, "gbps": bytes / secs / 1e9,
            "roofline_gflops": roof / 1e9, "fraction_of_roofline": flops / secs / roof,
            "bound": if bw * flops / bytes < peak { "memory" } else { "compute" },
            "compute_roof": match (c.dot_passes, c.bf16_pairs) {
                (None, false) => "fma",
                (None, true) => "bf16_dot",
                (Some(1), _) => "int_dot",
                (Some(_), _) => "int_dot_3_digits",
            },
            "streamed_seconds": streamed,
            "streamed_gbps": streamed.map(|t| bytes / t / 1e9),
            "streamed_fraction_of_roofline": streamed.map(|t| flops / t / roof),
        }));
    }
    let gbps = |f: fn(&Roofs) -> f64| per_round.iter().map(|r| f(r) / 1e9).collect::<Vec<_>>();
    let config = plan.preset.config();
    let report = json!({
        "preset": plan.preset.name(),
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "decode_step": decode_step(&cases, config.n_layer, bw),
        "isa": k.isa().name(),
        "threads": team::threads(),
        "cpu": cpu_model(),
        "rounds": plan.rounds,
        "read_bandwidth_gbps": bw / 1e9,
        "read_bandwidth_4k_pages_gbps": bw_4k / 1e9,
        "fma_peak_gflops": peak / 1e9,
        "int_dot_peak_gops": int_peak / 1e9,
        "int_dot_instruction": k.int_dot_name(),
        "bf16_dot_peak_gflops": bf16_peak / 1e9,
        "bf16_dot_instruction": k.bf16dot_name(),
        "fork_join_us": { "back_to_back": join_hot * 1e6, "after_200us_gap_median": join_after_gap * 1e6 },
        "per_round": {
            "read_bandwidth_gbps": gbps(|r| r.bw),
            "fma_peak_gflops": gbps(|r| r.peak),
            "bf16_dot_peak_gflops": gbps(|r| r.bf16_peak),
        },
        "kernels": rows,
    });
    Ok(report)
}

/// One decode step's products at M = 1 for each dtype measured there with streamed weights:
/// `n_layer` times the four layer products plus the LM head, summed from the streamed figures,
/// beside the time the same bytes take at the read bandwidth (the memory bound of a batch-1
/// token, attention and the other small ops left out).
fn decode_step(cases: &[Case], n_layer: usize, bw: f64) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for dtype in WeightDtype::ALL {
        let ops: Vec<&Case> = cases.iter().filter(|c| c.dtype == dtype && c.m == 1 && c.streamed.is_some()).collect();
        if ops.len() != 5 {
            continue;
        }
        let times = |c: &Case| if c.label == "lm_head" { 1.0 } else { n_layer as f64 };
        let secs: f64 = ops.iter().map(|c| times(c) * c.streamed.unwrap_or(0.0)).sum();
        let bytes: f64 = ops.iter().map(|c| times(c) * c.bytes as f64).sum();
        rows.push(json!({
            "dtype": dtype.name(), "streamed_ms": secs * 1e3, "bytes": bytes,
            "bandwidth_bound_ms": bytes / bw * 1e3, "fraction_of_bound": bytes / bw / secs,
        }));
    }
    rows
}

/// Prints the report as a table (or JSON with `as_json`); `json_file` also gets the JSON.
pub fn run(k: Kernels, as_json: bool, json_file: Option<&std::path::Path>, plan: Plan) -> Result<(), String> {
    let report = report(k, plan)?;
    if let Some(path) = json_file {
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("json"))
            .map_err(|e| format!("--json-file {}: {e}", path.display()))?;
    }
    let num = |key: &str| report[key].as_f64().unwrap_or(0.0);
    let (bw, bw_4k, peak, int_peak, bf16_peak) = (
        num("read_bandwidth_gbps") * 1e9,
        num("read_bandwidth_4k_pages_gbps") * 1e9,
        num("fma_peak_gflops") * 1e9,
        num("int_dot_peak_gops") * 1e9,
        num("bf16_dot_peak_gflops") * 1e9,
    );
    let (join_hot, join_after_gap) = (
        report["fork_join_us"]["back_to_back"].as_f64().unwrap_or(0.0) / 1e6,
        report["fork_join_us"]["after_200us_gap_median"].as_f64().unwrap_or(0.0) / 1e6,
    );
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report).expect("json"));
        return Ok(());
    }
    println!("machine: {} ({} threads, kernels: {})", cpu_model(), rayon::current_num_threads(), k.isa());
    println!(
        "read bandwidth: {:.1} GB/s (2 MiB pages; {:.1} GB/s on 4 KiB pages)   f32 FMA peak: {:.1} GFLOP/s",
        bw / 1e9,
        bw_4k / 1e9,
        peak / 1e9
    );
    println!(
        "integer-dot peak ({}): {:.1} GOP/s (the compute roof of w8a8 and w4a8 rows, and a third of it of int8 rows where int8 runs on it: three byte digits per activation; GFLOP/s there means GOP/s)",
        k.int_dot_name(),
        int_peak / 1e9
    );
    println!(
        "bf16 dot-product peak ({}): {:.1} GFLOP/s (the compute roof of bf16dot rows: two products and two sums per lane and pair)",
        k.bf16dot_name(),
        bf16_peak / 1e9
    );
    println!(
        "fork-join over the kernel team: {:.1} us back to back, {:.1} us (median) after a 200 us gap",
        join_hot * 1e6,
        join_after_gap * 1e6
    );
    let spread = |key: &str| {
        report["per_round"][key]
            .as_array()
            .map(|v| v.iter().map(|g| format!("{:.1}", g.as_f64().unwrap_or(0.0))).collect::<Vec<_>>().join(" / "))
            .unwrap_or_default()
    };
    println!(
        "{} round(s), each figure the best of its rounds; bandwidth per round {} GB/s, FMA peak {} GFLOP/s",
        plan.rounds,
        spread("read_bandwidth_gbps"),
        spread("fma_peak_gflops")
    );
    println!();
    println!(
        "Shapes of {} ({} layers x {} wide); each layer runs the four attn/mlp products once, the LM head runs once a token.",
        plan.preset.name(),
        report["n_layer"],
        report["n_embd"]
    );
    println!(
        "In cache: one matrix, reused (it stays in the L2/L3). Streamed: {} MiB of distinct copies in turn, so the",
        STREAM_BYTES >> 20
    );
    println!("weights come from memory, as in a model's decode step (M <= {STREAMED_MAX_M} only).");
    if plan.quick {
        println!("--quick: two copies only, so the streamed figures may be partly in cache.");
    }
    println!();
    println!("| op | dtype | M | K x N | in cache (us) | GFLOP/s | GB/s | roofline GFLOP/s | of roofline | bound | streamed (us) | streamed GB/s | streamed of roofline |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in report["kernels"].as_array().expect("rows") {
        let streamed = match (
            r["streamed_seconds"].as_f64(),
            r["streamed_gbps"].as_f64(),
            r["streamed_fraction_of_roofline"].as_f64(),
        ) {
            (Some(t), Some(g), Some(f)) => format!("{:.1} | {:.1} | {:.0}%", t * 1e6, g, f * 100.0),
            _ => "- | - | -".into(),
        };
        println!(
            "| {} | {} | {} | {}x{} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {} | {streamed} |",
            r["op"].as_str().unwrap_or(""),
            r["dtype"].as_str().unwrap_or(""),
            r["m"],
            r["k"],
            r["n"],
            r["seconds"].as_f64().unwrap_or(0.0) * 1e6,
            r["gflops"].as_f64().unwrap_or(0.0),
            r["gbps"].as_f64().unwrap_or(0.0),
            r["roofline_gflops"].as_f64().unwrap_or(0.0),
            r["fraction_of_roofline"].as_f64().unwrap_or(0.0) * 100.0,
            r["bound"].as_str().unwrap_or(""),
        );
    }
    let steps = report["decode_step"].as_array().map_or(&[][..], Vec::as_slice);
    if !steps.is_empty() {
        println!();
        println!("Decode step at M = 1 (the products of every layer and the LM head, streamed figures summed; attention and the small ops left out):");
        println!();
        println!("| dtype | weight bytes a token (MB) | products (ms) | at the read bandwidth (ms) | of the bound |");
        println!("|---|---|---|---|---|");
        for r in steps {
            println!(
                "| {} | {:.0} | {:.1} | {:.1} | {:.0}% |",
                r["dtype"].as_str().unwrap_or(""),
                r["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                r["streamed_ms"].as_f64().unwrap_or(0.0),
                r["bandwidth_bound_ms"].as_f64().unwrap_or(0.0),
                r["fraction_of_bound"].as_f64().unwrap_or(0.0) * 100.0,
            );
        }
    }
    Ok(())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
