//! Every kernel on every ISA this CPU has, against the naive oracle in `kernels::reference`, on
//! random shapes with ragged edges (sizes that are not multiples of the vector width or tile),
//! plus the batch-invariance contract and NaN-poisoned outputs.

mod common;

use common::available_kernels;
use inferneo_kernels::{
    reference, Attention, Epilogue, Kernels, KvView, Layout, Norm, PackedKn, Panels, Quantized, Team, W4Values,
    WeightDtype, W4_GROUP,
};
use proptest::prelude::*;

/// Relative tolerance for f32 reductions vs the f64 oracle, scaled by the sum of |terms|.
const REL: f32 = 2e-6;
/// Elementwise ops (exp/tanh polynomial approximations).
const ELEM_ABS: f32 = 2e-6;

fn vals(len: usize, seed: u64) -> Vec<f32> {
    let mut z = seed;
    (0..len)
        .map(|_| {
            z = inferneo_runtime::init::splitmix64(z);
            ((z >> 40) as f32 / 16_777_216.0) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(label: &str, got: &[f32], want: &[f32], bound: impl Fn(usize) -> f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = bound(i);
        assert!((g - w).abs() <= tol, "{label}: index {i}: got {g}, want {w}, |diff| {} > {tol}", (g - w).abs());
    }
}

/// Dtypes whose products take f32 activations (`w8a8` quantizes them: tested on its own).
const WEIGHT_ONLY: [WeightDtype; 4] = [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Int8];

fn kernels() -> Vec<Kernels> {
    available_kernels()
}

/// The kernels whose `int8` products run on the integer dot (24-bit activations), with a
/// notice when this CPU has none.
fn int_dot_int8_kernels() -> Vec<Kernels> {
    let found: Vec<Kernels> = kernels()
        .into_iter()
        .filter(|k| matches!(k.pack(&[0.0], Layout::KN, 1, 1, WeightDtype::Int8).panels(), Panels::IntDot { .. }))
        .collect();
    if found.is_empty() {
        eprintln!("NOTICE: no ISA here runs int8 on an integer dot (VNNI): int8 is tested on the float kernels only");
    }
    found
}

/// Every bit a packed matrix holds: its values, scales and column sums.
fn panel_bits(p: &PackedKn) -> Vec<u32> {
    match p.panels() {
        Panels::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        Panels::F16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
        Panels::Bf16(v) => v.iter().map(|x| x.to_bits() as u32).collect(),
        Panels::Int8 { q, scale } => {
            q.iter().map(|&x| x as u8 as u32).chain(scale.iter().map(|s| s.to_bits())).collect()
        }
        Panels::IntDot { q, scale, corr, .. } => q
            .iter()
            .map(|&x| x as u8 as u32)
            .chain(scale.iter().map(|s| s.to_bits()))
            .chain(corr.iter().map(|&c| c as u32))
            .collect(),
        Panels::Bf16Pairs(v) => v.to_vec(),
        Panels::W4 { q, scale, .. } => q.iter().map(|&x| x as u32).chain(scale.iter().map(|s| s.to_bits())).collect(),
    }
}

/// An oracle of the products that quantize their rows (`reference::matmul_w8a8` and kin).
type QuantizedOracle = fn(&[f32], &[f32], Option<&[f32]>, &mut [f32], usize, usize, usize);

/// The products that quantize their input rows, the kernels that run them so, and their
/// oracles: `w8a8` and `w4a8` everywhere, `int8` where the integer dot takes 24-bit
/// activations.
fn quantized_cases() -> [(WeightDtype, Vec<Kernels>, QuantizedOracle); 3] {
    [
        (WeightDtype::W8a8, kernels(), reference::matmul_w8a8),
        (WeightDtype::Int8, int_dot_int8_kernels(), reference::matmul_int8_24),
        (WeightDtype::W4a8, kernels(), reference::matmul_w4a8),
    ]
}

/// The oracle's side of an [`Epilogue`]: GELU, then the residual add of `prior`.
fn reference_epilogue(want: &mut [f32], ep: Epilogue, prior: &[f32]) {
    if ep.gelu {
        reference::gelu_new(want);
    }
    if ep.accumulate {
        want.iter_mut().zip(prior).for_each(|(v, p)| *v += p);
    }
}

/// `x · w` with `ep` into an output poisoned with NaN where nothing may be read (overwrite
/// mode) and past the end (holding `prior` when accumulating); checks nothing was written past
/// the `m` rows and returns them.
fn poisoned_product(
    kern: Kernels,
    x: &[f32],
    w: &PackedKn,
    bias: Option<&[f32]>,
    m: usize,
    ep: Epilogue,
    prior: &[f32],
) -> Vec<f32> {
    let len = m * w.n();
    let mut out = vec![f32::NAN; len + 7];
    if ep.accumulate {
        out[..len].copy_from_slice(&prior[..len]);
    }
    kern.matmul_kn(x, w, bias, &mut out, m, ep);
    assert!(out[len..].iter().all(|v| v.is_nan()), "wrote past the output");
    out.truncate(len);
    out
}

/// `len` rows of `stride` values laid out in blocks of `bt` rows (NaN padding), as the paged
/// KV cache holds them.
fn paged(rows: &[f32], len: usize, stride: usize, bt: usize) -> Vec<Vec<f32>> {
    let mut b = vec![vec![f32::NAN; bt * stride]; len.div_ceil(bt)];
    for p in 0..len {
        b[p / bt][(p % bt) * stride..][..stride].copy_from_slice(&rows[p * stride..][..stride]);
    }
    b
}

/// Borrowed views of owned blocks, as `KvView` takes them.
fn slices<T>(blocks: &[Vec<T>]) -> Vec<&[T]> {
    blocks.iter().map(|b| &b[..]).collect()
}

fn to_f16(blocks: &[Vec<f32>]) -> Vec<Vec<half::f16>> {
    blocks.iter().map(|b| b.iter().map(|&v| half::f16::from_f32(v)).collect()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every storage dtype against the oracle run on the weights the kernel actually sees
    /// (the stored values, dequantized), so only the kernel's arithmetic is under test.
    #[test]
    fn matmul_kn_matches_reference(m in 1usize..14, k in 1usize..70, n in 1usize..70, seed: u64, acc: bool, bias: bool, gelu: bool) {
        let (x, w, b, prior) = (vals(m * k, seed), vals(k * n, seed ^ 1), vals(n, seed ^ 2), vals(m * n, seed ^ 3));
        for kern in kernels() {
            for dtype in WEIGHT_ONLY {
                let packed = kern.pack(&w, Layout::KN, k, n, dtype);
                let mut seen = vec![0.0; k * n];
                let mut col = vec![0.0; k];
                for c in 0..n {
                    packed.column_into(c, &mut col);
                    (0..k).for_each(|kk| seen[kk * n + c] = col[kk]);
                }
                let ep = Epilogue { gelu, accumulate: acc };
                let mut want = vec![0.0; m * n];
                reference::matmul_kn(&x, &seen, bias.then_some(&b[..]), &mut want, m, k, n);
                reference_epilogue(&mut want, ep, &prior);
                let out = poisoned_product(kern, &x, &packed, bias.then_some(&b[..]), m, ep, &prior);
                let scale = |i: usize| {
                    let (r, c) = (i / n, i % n);
                    let s: f32 = (0..k).map(|p| (x[r * k + p] * seen[p * n + c]).abs()).sum();
                    REL * (s + 1.0) * 4.0 + ELEM_ABS * (1.0 + want[i].abs())
                };
                assert_close(&format!("matmul_kn/{}/{dtype}", kern.isa()), &out, &want, scale);
            }
        }
    }

    /// The products that quantize their rows equal the oracle's exact-integer product bit for
    /// bit (GELU within its approximation error), on ragged shapes including k not a multiple
    /// of the k group (and of `w4a8`'s 32-k scale group): `w8a8` and `w4a8` on every ISA, and
    /// weight-only `int8` where the integer dot takes
    /// it (VNNI: 24-bit activations as byte digits; elsewhere it runs on the float kernels,
    /// `matmul_kn_matches_reference`).
    #[test]
    fn quantized_products_match_reference(m in 1usize..30, k in 1usize..90, n in 1usize..300, seed: u64, acc: bool, bias: bool, gelu: bool, zero_row: bool) {
        let (mut x, w, b, prior) = (vals(m * k, seed), vals(k * n, seed ^ 1), vals(n, seed ^ 2), vals(m * n, seed ^ 3));
        if zero_row {
            x[..k].iter_mut().for_each(|v| *v = 0.0);
        }
        let ep = Epilogue { gelu, accumulate: acc };
        for (dtype, kerns, oracle) in quantized_cases() {
            let mut want = vec![0.0; m * n];
            oracle(&x, &w, bias.then_some(&b[..]), &mut want, m, k, n);
            reference_epilogue(&mut want, ep, &prior);
            for kern in kerns {
                let packed = kern.pack(&w, Layout::KN, k, n, dtype);
                let out = poisoned_product(kern, &x, &packed, bias.then_some(&b[..]), m, ep, &prior);
                let tol = |i: usize| if gelu { ELEM_ABS * (1.0 + want[i].abs()) } else { 0.0 };
                assert_close(&format!("{dtype}/{}", kern.isa()), &out, &want, tol);
            }
        }
    }

    /// `bf16dot` equals its oracle bit for bit (GELU within its approximation error) on every
    /// ISA whose pair product is the widened FMA, on ragged shapes including odd k. AVX512-BF16's
    /// `vdpbf16ps` is documented to round as the oracle does; it is held to within one rounding
    /// of each sum instead (`k` roundings of at most half an ulp of the running sum of
    /// magnitudes), so a CPU that fuses a pair's two sums still passes while a wrong layout or
    /// order of pairs does not.
    #[test]
    fn bf16dot_matches_reference(m in 1usize..30, k in 1usize..90, n in 1usize..300, seed: u64, acc: bool, bias: bool, gelu: bool) {
        let (x, w, b, prior) = (vals(m * k, seed), vals(k * n, seed ^ 1), vals(n, seed ^ 2), vals(m * n, seed ^ 3));
        let ep = Epilogue { gelu, accumulate: acc };
        let mut want = vec![0.0; m * n];
        reference::matmul_bf16dot(&x, &w, bias.then_some(&b[..]), &mut want, m, k, n);
        reference_epilogue(&mut want, ep, &prior);
        for kern in kernels() {
            let packed = kern.pack(&w, Layout::KN, k, n, WeightDtype::Bf16dot);
            let out = poisoned_product(kern, &x, &packed, bias.then_some(&b[..]), m, ep, &prior);
            let exact = kern.bf16dot_name() != "vdpbf16ps";
            let tol = |i: usize| {
                let (r, c) = (i / n, i % n);
                let sum: f32 = (0..k).map(|p| (x[r * k + p] * w[p * n + c]).abs()).sum();
                let rounding = if exact { 0.0 } else { k as f32 * sum * f32::EPSILON };
                rounding + if gelu { ELEM_ABS * (1.0 + want[i].abs()) } else { 0.0 }
            };
            assert_close(&format!("bf16dot/{} ({})", kern.isa(), kern.bf16dot_name()), &out, &want, tol);
        }
    }

    /// The oracle's `w8a8` against the f32 product: within the two quantization errors,
    /// `sum_k |x| s_w / 2 + |w| s_x / 2 + s_x s_w / 4` (so the scheme itself is checked).
    #[test]
    fn w8a8_is_within_its_quantization_error(m in 1usize..6, k in 1usize..200, n in 1usize..40, seed: u64) {
        let (x, w) = (vals(m * k, seed), vals(k * n, seed ^ 1));
        let (mut q, mut f) = (vec![0.0; m * n], vec![0.0; m * n]);
        reference::matmul_w8a8(&x, &w, None, &mut q, m, k, n);
        reference::matmul_kn(&x, &w, None, &mut f, m, k, n);
        for i in 0..m {
            let sx = x[i * k..][..k].iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
            for j in 0..n {
                let sw = (0..k).fold(0.0f32, |a, p| a.max(w[p * n + j].abs())) / 127.0;
                let bound: f32 = (0..k).map(|p| x[i * k + p].abs() * sw / 2.0 + w[p * n + j].abs() * sx / 2.0 + sx * sw / 4.0).sum();
                let err = (q[i * n + j] - f[i * n + j]).abs();
                prop_assert!(err <= bound * 1.001 + 1e-6, "row {} col {}: error {} > bound {}", i, j, err, bound);
            }
        }
    }

    /// The oracle's `w4a8` against the f32 product: within the two quantization errors, `sum_k
    /// |x| d_g + |w| s_x / 2 + s_x d_g / 2` (a weight is off by at most one step `d_g = max |w| /
    /// 8` of its group, where clamped).
    #[test]
    fn w4a8_is_within_its_quantization_error(m in 1usize..6, k in 1usize..200, n in 1usize..40, seed: u64) {
        let (x, w) = (vals(m * k, seed), vals(k * n, seed ^ 1));
        let (mut q, mut f) = (vec![0.0; m * n], vec![0.0; m * n]);
        reference::matmul_w4a8(&x, &w, None, &mut q, m, k, n);
        reference::matmul_kn(&x, &w, None, &mut f, m, k, n);
        for i in 0..m {
            let sx = x[i * k..][..k].iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
            for j in 0..n {
                let step = |p: usize| {
                    let g0 = p / W4_GROUP * W4_GROUP;
                    (g0..k.min(g0 + W4_GROUP)).fold(0.0f32, |a, p| a.max(w[p * n + j].abs())) / 8.0
                };
                let bound: f32 = (0..k).map(|p| x[i * k + p].abs() * step(p) + w[p * n + j].abs() * sx / 2.0 + sx * step(p) / 2.0).sum();
                let err = (q[i * n + j] - f[i * n + j]).abs();
                prop_assert!(err <= bound * 1.001 + 1e-6, "row {} col {}: error {} > bound {}", i, j, err, bound);
            }
        }
    }

    /// `w4a8` weights saved as their ISA-independent values (`W4Values`) and packed again give
    /// the same panels' products bit for bit as packing from f32, on every ISA, and unpack to
    /// the same values.
    #[test]
    fn w4a8_packs_from_saved_values(m in 1usize..5, k in 1usize..100, n in 1usize..70, seed: u64) {
        let (x, w) = (vals(m * k, seed), vals(k * n, seed ^ 1));
        let v = W4Values::quantize(&w, Layout::KN, k, n);
        prop_assert!(v.q().iter().all(|q| (-8..=7).contains(q)));
        let saved = W4Values::new(k, n, v.q().to_vec(), v.scale().to_vec()).unwrap();
        for kern in kernels() {
            let from_f32 = kern.pack(&w, Layout::KN, k, n, WeightDtype::W4a8);
            let from_values = kern.pack_w4(&saved);
            prop_assert!(from_f32.w4_values() == Some(v.clone()), "{}: unpacked values differ", kern.isa());
            prop_assert!(from_values.w4_values() == Some(v.clone()), "{}: unpacked values differ", kern.isa());
            let (mut a, mut b) = (vec![0.0; m * n], vec![f32::NAN; m * n]);
            kern.matmul_kn(&x, &from_f32, None, &mut a, m, Epilogue::STORE);
            kern.matmul_kn(&x, &from_values, None, &mut b, m, Epilogue::STORE);
            prop_assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{}", kern.isa());
        }
    }

    /// Storage error of the narrow dtypes, per element, against f32: f16 and bf16 round to
    /// nearest (relative 2^-11, 2^-8), int8 to within half a quantization step of its column.
    #[test]
    fn narrow_dtypes_round_within_their_precision(k in 1usize..40, n in 1usize..40, seed: u64) {
        let w = vals(k * n, seed);
        let kern = Kernels::for_isa(inferneo_kernels::Isa::Scalar).unwrap();
        for dtype in [WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Int8, WeightDtype::W8a8, WeightDtype::W4a8] {
            let packed = kern.pack(&w, Layout::KN, k, n, dtype);
            let mut col = vec![0.0; k];
            for c in 0..n {
                packed.column_into(c, &mut col);
                let amax = (0..k).fold(0.0f32, |a, kk| a.max(w[kk * n + c].abs()));
                for kk in 0..k {
                    let (orig, got) = (w[kk * n + c], col[kk]);
                    let group = kk / W4_GROUP * W4_GROUP..k.min(kk / W4_GROUP * W4_GROUP + W4_GROUP);
                    let tol = match dtype {
                        WeightDtype::F16 => orig.abs() * 4.9e-4 + 6e-8,
                        WeightDtype::Bf16 => orig.abs() * 3.9e-3,
                        // Steps of max |w| / 8 per group; a value on the far side of the largest
                        // one may be clamped from +8 steps to +7: one whole step.
                        WeightDtype::W4a8 => group.fold(0.0f32, |a, p| a.max(w[p * n + c].abs())) / 8.0 * 1.001,
                        _ => amax / 127.0 * 0.501,
                    };
                    prop_assert!((orig - got).abs() <= tol, "{dtype}: {orig} stored as {got}");
                }
            }
        }
    }

    /// Packing `W^T` from an `[n, k]` matrix (the tied lm_head) equals packing `W` itself.
    #[test]
    fn nk_layout_packs_the_transpose(m in 1usize..5, k in 1usize..50, n in 1usize..90, seed: u64) {
        let (x, w) = (vals(m * k, seed), vals(k * n, seed ^ 5));
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        for kern in kernels() {
            for dtype in WeightDtype::ALL {
                let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
                kern.matmul_kn(&x, &kern.pack(&w, Layout::KN, k, n, dtype), None, &mut a, m, Epilogue::STORE);
                kern.matmul_kn(&x, &kern.pack(&wt, Layout::NK, k, n, dtype), None, &mut b, m, Epilogue::STORE);
                prop_assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "{} {}", kern.isa(), dtype);
            }
        }
    }

    /// A matrix packed a slice at a time (whole rows of `[k, n]`, whole columns of `[n, k]`,
    /// or its stored quantized form in column slices) has exactly the panels of packing it
    /// whole: what lets the loader read the 154 MB tied `wte` in slices and a converted model
    /// load from its stored int8 values.
    #[test]
    fn sliced_packing_equals_whole(k in 1usize..70, n in 1usize..90, step in 1usize..40, seed: u64) {
        let w = vals(k * n, seed);
        let wt: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        let slices = |len: usize| (0..len).step_by(step).map(move |s| s..(s + step).min(len));
        for kern in kernels() {
            for dtype in WeightDtype::ALL {
                let whole = panel_bits(&kern.pack(&w, Layout::KN, k, n, dtype));
                let mut by_cols = kern.pack_builder(k, n, dtype);
                for c in slices(n) {
                    by_cols.put_columns(c.start, &wt[c.start * k..c.end * k]);
                }
                prop_assert!(panel_bits(&by_cols.finish()) == whole, "columns: {} {dtype}", kern.isa());
                let mut by_rows = kern.pack_builder(k, n, dtype);
                match dtype.stored_form() {
                    None => slices(k).for_each(|r| by_rows.put_rows(r.start, &w[r.start * n..r.end * n])),
                    Some(form) => {
                        let q = Quantized::quantize_kn_rows::<()>(form, k, n, step, |r| Ok(w[r.start * n..r.end * n].to_vec())).unwrap();
                        // Stored form, put back in column slices as a converted model loads.
                        for c in slices(n) {
                            by_rows.put_quantized(c.start, &q.columns(k, c.clone()));
                        }
                    }
                }
                prop_assert!(panel_bits(&by_rows.finish()) == whole, "rows: {} {dtype}", kern.isa());
            }
        }
    }

    #[test]
    fn layernorm_matches_reference(n in 1usize..300, seed: u64, shift in -3.0f32..3.0) {
        let x: Vec<f32> = vals(n, seed).iter().map(|v| v * 2.0 + shift).collect();
        let (g, b) = (vals(n, seed ^ 7), vals(n, seed ^ 8));
        let mut want = vec![0.0; n];
        reference::layernorm(&x, &g, &b, 1e-5, &mut want);
        for kern in kernels() {
            let mut out = vec![f32::NAN; n];
            kern.layernorm(&x, &g, &b, 1e-5, &mut out);
            assert_close(&format!("layernorm/{}", kern.isa()), &out, &want, |_| 1e-5);
        }
    }

    #[test]
    fn gelu_and_softmax_match_reference(n in 1usize..200, seed: u64, scale in 0.1f32..12.0) {
        let x: Vec<f32> = vals(n, seed).iter().map(|v| v * scale).collect();
        let mut gelu_want = x.clone();
        reference::gelu_new(&mut gelu_want);
        let mut soft_want = x.clone();
        reference::softmax(&mut soft_want);
        for kern in kernels() {
            let mut g = x.clone();
            kern.gelu_new(&mut g);
            assert_close(&format!("gelu_new/{}", kern.isa()), &g, &gelu_want, |i| ELEM_ABS * (1.0 + x[i].abs()));
            let mut s = x.clone();
            kern.softmax(&mut s);
            assert_close(&format!("softmax/{}", kern.isa()), &s, &soft_want, |i| 1e-6 + 4e-6 * soft_want[i]);
        }
    }

    #[test]
    fn max_and_exp_shifted_match_reference(n in 0usize..300, seed: u64, scale in 0.1f32..12.0, inv_t in 0.2f32..5.0) {
        let x: Vec<f32> = vals(n, seed).iter().map(|v| v * scale).collect();
        let want_max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let (want, want_sum) = reference::exp_shifted(&x, want_max, inv_t);
        for kern in kernels() {
            prop_assert_eq!(kern.max(&x), want_max, "max/{}", kern.isa());
            let mut out = vec![f32::NAN; n];
            let sum = kern.exp_shifted(&x, want_max, inv_t, &mut out);
            assert_close(&format!("exp_shifted/{}", kern.isa()), &out, &want, |i| 1e-7 + 4e-7 * want[i]);
            prop_assert!((sum as f64 - want_sum).abs() <= 1e-6 * want_sum.max(1.0), "sum {} vs {}", sum, want_sum);
        }
    }

    #[test]
    fn add_matches_reference_embedding(c in 1usize..100, t in 1usize..5, seed: u64) {
        let (wte, wpe) = (vals(10 * c, seed), vals(8 * c, seed ^ 9));
        let tokens: Vec<u32> = (0..t as u32).map(|i| (i * 7 + 3) % 10).collect();
        let mut want = vec![0.0; t * c];
        reference::embed(&wte, &wpe, &tokens, 2, c, &mut want);
        for kern in kernels() {
            let mut out = vec![0.0; t * c];
            for (r, &tok) in tokens.iter().enumerate() {
                let tok = tok as usize;
                kern.add(&wte[tok * c..][..c], &wpe[(2 + r) * c..][..c], &mut out[r * c..][..c]);
            }
            prop_assert_eq!(&out, &want);
        }
    }

    /// Paged attention (blocks of `bt` tokens, heads side by side in a row) vs the contiguous
    /// oracle, for a chunk of `t` queries after `past` cached positions.
    #[test]
    fn paged_attention_matches_reference(past in 0usize..40, t in 1usize..6, hd in 1usize..40, heads in 1usize..3, bt in 1usize..9, seed: u64) {
        let len = past + t;
        let stride = heads * hd;
        let (kr, vr, qr) = (vals(len * stride, seed), vals(len * stride, seed ^ 11), vals(t * stride, seed ^ 12));
        let blocks_of = |rows: &[f32]| paged(rows, len, stride, bt);
        let (kb, vb) = (blocks_of(&kr), blocks_of(&vr));
        let (kref, vref) = (slices(&kb), slices(&vb));
        let (kb16, vb16) = (to_f16(&kb), to_f16(&vb));
        let (k16, v16) = (slices(&kb16), slices(&vb16));
        for h in 0..heads {
            let head = |rows: &[f32], n: usize| -> Vec<f32> { (0..n).flat_map(|p| rows[p * stride + h * hd..][..hd].to_vec()).collect() };
            let mut want = vec![0.0; t * hd];
            reference::causal_attention(&head(&qr, t), &head(&kr, len), &head(&vr, len), &mut want, t, len, hd);
            let round = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect() };
            let mut want16 = vec![0.0; t * hd];
            reference::causal_attention(&head(&qr, t), &round(&head(&kr, len)), &round(&head(&vr, len)), &mut want16, t, len, hd);
            for kern in kernels() {
                let mut scores = vec![f32::NAN; len];
                for i in 0..t {
                    let a = Attention {
                        q: &qr[i * stride + h * hd..][..hd],
                        k: KvView { blocks: &kref, block_tokens: bt, token_stride: stride },
                        v: KvView { blocks: &vref, block_tokens: bt, token_stride: stride },
                        head_offset: h * hd,
                        head_dim: hd,
                        len: past + i + 1,
                        scale: 1.0 / (hd as f32).sqrt(),
                    };
                    let mut out = vec![f32::NAN; hd];
                    kern.attend(&a, &mut out, &mut scores);
                    assert_close(&format!("attention/{}", kern.isa()), &out, &want[i * hd..][..hd], |_| 2e-6);
                    // The f16 cache: the same oracle on f16-rounded keys and values.
                    let a16 = Attention {
                        q: a.q,
                        k: KvView { blocks: &k16, block_tokens: bt, token_stride: stride },
                        v: KvView { blocks: &v16, block_tokens: bt, token_stride: stride },
                        head_offset: a.head_offset,
                        head_dim: hd,
                        len: a.len,
                        scale: a.scale,
                    };
                    kern.attend_f16(&a16, &mut out, &mut scores);
                    assert_close(&format!("attention_f16/{}", kern.isa()), &out, &want16[i * hd..][..hd], |_| 2e-6);
                }
            }
        }
    }

    /// All heads of a row at once (each K/V row read once) give bitwise what each head alone
    /// gives, for f32 and f16 caches, on every ISA; GPT-2's 64-wide heads (and 32-wide ones on
    /// AVX2) take the register-accumulated value pass, in groups of 6 (3) heads.
    #[test]
    fn attend_heads_equals_each_head_alone_bitwise(len in 1usize..60, hd in prop_oneof![1usize..40, Just(64usize)], heads in 1usize..14, first in 0usize..3, bt in 1usize..9, seed: u64) {
        let total = first + heads + 1;
        let stride = total * hd;
        let (kr, vr, q) = (vals(len * stride, seed), vals(len * stride, seed ^ 3), vals(heads * hd, seed ^ 5));
        let blocks_of = |rows: &[f32]| paged(rows, len, stride, bt);
        let (kb, vb) = (blocks_of(&kr), blocks_of(&vr));
        let (kref, vref) = (slices(&kb), slices(&vb));
        let (kb16, vb16) = (to_f16(&kb), to_f16(&vb));
        let (k16, v16) = (slices(&kb16), slices(&vb16));
        let scale = 1.0 / (hd as f32).sqrt();
        for kern in kernels() {
            let view = |b| KvView { blocks: b, block_tokens: bt, token_stride: stride };
            let all = Attention { q: &q, k: view(&kref), v: view(&vref), head_offset: first * hd, head_dim: hd, len, scale };
            let mut out = vec![f32::NAN; heads * hd];
            let mut scores = vec![f32::NAN; heads * len];
            kern.attend_heads(&all, heads, &mut out, &mut scores);
            let view16 = |b| KvView { blocks: b, block_tokens: bt, token_stride: stride };
            let all16 = Attention { q: &q, k: view16(&k16), v: view16(&v16), head_offset: first * hd, head_dim: hd, len, scale };
            let mut out16 = vec![f32::NAN; heads * hd];
            kern.attend_heads_f16(&all16, heads, &mut out16, &mut scores);
            for h in 0..heads {
                let one = Attention { q: &q[h * hd..][..hd], head_offset: (first + h) * hd, ..all };
                let mut want = vec![f32::NAN; hd];
                kern.attend(&one, &mut want, &mut scores);
                prop_assert_eq!(&out[h * hd..][..hd], &want[..], "{} head {}", kern.isa(), h);
                let one16 = Attention { q: &q[h * hd..][..hd], head_offset: (first + h) * hd, ..all16 };
                kern.attend_f16(&one16, &mut want, &mut scores);
                prop_assert_eq!(&out16[h * hd..][..hd], &want[..], "f16 {} head {}", kern.isa(), h);
            }
        }
    }

    /// The layer norm fused into the product's packing is bitwise the separate norm then the
    /// product, for every dtype and M (M = 1 takes the unpacked row path).
    #[test]
    fn normed_product_equals_norm_then_product(m in 1usize..30, k in 1usize..100, n in 1usize..80, seed: u64, shift in -3.0f32..3.0) {
        let x: Vec<f32> = vals(m * k, seed).iter().map(|v| v * 4.0 + shift).collect();
        let (w, b, g, beta) = (vals(k * n, seed ^ 1), vals(n, seed ^ 2), vals(k, seed ^ 3), vals(k, seed ^ 4));
        let eps = 1e-5;
        for kern in kernels() {
            let mut normed = vec![0.0; m * k];
            for (xr, nr) in x.chunks_exact(k).zip(normed.chunks_exact_mut(k)) {
                kern.layernorm(xr, &g, &beta, eps, nr);
            }
            for dtype in WeightDtype::ALL {
                let wp = kern.pack(&w, Layout::KN, k, n, dtype);
                let (mut want, mut got) = (vec![0.0; m * n], vec![f32::NAN; m * n]);
                kern.matmul_kn(&normed, &wp, Some(&b), &mut want, m, Epilogue::GELU);
                let norm = Norm { gamma: &g, beta: &beta, eps };
                kern.matmul_kn_normed(&x, norm, &wp, Some(&b), &mut got, m, Epilogue::GELU);
                prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{} {}: fused differs", kern.isa(), dtype);
            }
        }
    }

    /// Row i of a product is bitwise equal to the product of row i alone, whatever M and however
    /// the columns are split across threads (the big shapes here take the parallel path).
    #[test]
    fn matmul_rows_are_batch_invariant(m in 2usize..40, k in 1usize..200, n in 1usize..300, seed: u64, gelu: bool) {
        let ep = Epilogue { gelu, accumulate: false };
        let (x, w, b) = (vals(m * k, seed), vals(k * n, seed ^ 1), vals(n, seed ^ 2));
        for kern in kernels() {
            for dtype in WeightDtype::ALL {
                let wp = kern.pack(&w, Layout::KN, k, n, dtype);
                let mut all = vec![0.0; m * n];
                kern.matmul_kn(&x, &wp, Some(&b), &mut all, m, ep);
                for i in [0, m / 2, m - 1] {
                    let mut one = vec![0.0; n];
                    kern.matmul_kn(&x[i * k..][..k], &wp, Some(&b), &mut one, 1, ep);
                    prop_assert!(one.iter().zip(&all[i * n..][..n]).all(|(a, b)| a.to_bits() == b.to_bits()), "row {} differs ({} {})", i, kern.isa(), dtype);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// `w4a8` on deep products (many scale groups summed in f32): bitwise the oracle, and each
    /// row bitwise itself alone, ragged N and K included.
    #[test]
    fn deep_w4a8_products_match_reference_and_rows_alone(m in 1usize..40, k in 700usize..3200, n in 1usize..80, seed: u64, gelu: bool) {
        let (x, w, b) = (vals(m * k, seed), vals(k * n, seed ^ 1), vals(n, seed ^ 2));
        let ep = Epilogue { gelu, accumulate: false };
        let mut want = vec![0.0; m * n];
        reference::matmul_w4a8(&x, &w, Some(&b), &mut want, m, k, n);
        reference_epilogue(&mut want, ep, &[]);
        for kern in kernels() {
            let wp = kern.pack(&w, Layout::KN, k, n, WeightDtype::W4a8);
            let all = poisoned_product(kern, &x, &wp, Some(&b), m, ep, &[]);
            let tol = |i: usize| if gelu { ELEM_ABS * (1.0 + want[i].abs()) } else { 0.0 };
            assert_close(&format!("deep w4a8/{}", kern.isa()), &all, &want, tol);
            for i in [0, m / 2, m - 1] {
                let mut one = vec![0.0; n];
                kern.matmul_kn(&x[i * k..][..k], &wp, Some(&b), &mut one, 1, ep);
                prop_assert!(one.iter().zip(&all[i * n..][..n]).all(|(a, b)| a.to_bits() == b.to_bits()), "row {} differs ({})", i, kern.isa());
            }
        }
    }

    /// Deeper products than the shapes above (K up to 3200; GPT-2's MLP projection is 3072
    /// deep): against the oracle, and bitwise equal to the same rows alone, ragged N included.
    /// From K ~ 1200 on, 80 rows no longer fit one block of rows kept in L2, so the rows are
    /// split into several balanced blocks.
    #[test]
    fn deep_products_match_reference_and_rows_alone(m in 3usize..80, k in 769usize..3200, n in 1usize..100, seed: u64, gelu: bool) {
        let (x, w, b) = (vals(m * k, seed), vals(k * n, seed ^ 1), vals(n, seed ^ 2));
        let ep = Epilogue { gelu, accumulate: false };
        for kern in kernels() {
            for dtype in [WeightDtype::F32, WeightDtype::Int8] {
                let wp = kern.pack(&w, Layout::KN, k, n, dtype);
                let mut all = vec![f32::NAN; m * n];
                kern.matmul_kn(&x, &wp, Some(&b), &mut all, m, ep);
                for i in [0, m / 2, m - 1] {
                    let mut one = vec![0.0; n];
                    kern.matmul_kn(&x[i * k..][..k], &wp, Some(&b), &mut one, 1, ep);
                    prop_assert!(one.iter().zip(&all[i * n..][..n]).all(|(a, b)| a.to_bits() == b.to_bits()), "row {} differs ({} {})", i, kern.isa(), dtype);
                }
                if dtype == WeightDtype::F32 && !gelu {
                    assert_deep_product(&format!("deep/{}", kern.isa()), &all, (&x, &w, &b), (m, k, n));
                }
            }
        }
    }
}

/// `got` (an f32 product `x w + b`, no epilogue) against the oracle, within a bound that grows
/// with each output's sum of absolute terms (deep products round more).
fn assert_deep_product(
    label: &str,
    got: &[f32],
    (x, w, b): (&[f32], &[f32], &[f32]),
    (m, k, n): (usize, usize, usize),
) {
    let mut want = vec![0.0; m * n];
    reference::matmul_kn(x, w, Some(b), &mut want, m, k, n);
    let tol = |i: usize| {
        let (r, c) = (i / n, i % n);
        let s: f32 = (0..k).map(|p| (x[r * k + p] * w[p * n + c]).abs()).sum();
        REL * (s + 1.0) * 4.0
    };
    assert_close(label, got, &want, tol);
}

/// Rows split into several blocks (K = 3072 keeps ~32 rows per block in L2): 33 rows as one
/// block of three 11-row tiles, 70 as two blocks of 36 and 34, 150 as five; each against the
/// oracle and every row bitwise equal to itself alone.
#[test]
fn products_over_several_row_blocks() {
    let (k, n) = (3072, 45);
    let (w, b) = (vals(k * n, 21), vals(n, 22));
    for m in [33, 70, 150] {
        let x = vals(m * k, 23 + m as u64);
        for kern in kernels() {
            let wp = kern.pack(&w, Layout::KN, k, n, WeightDtype::F32);
            let mut all = vec![f32::NAN; m * n];
            kern.matmul_kn(&x, &wp, Some(&b), &mut all, m, Epilogue::STORE);
            assert_deep_product(&format!("blocks/{m}/{}", kern.isa()), &all, (&x, &w, &b), (m, k, n));
            for i in 0..m {
                let mut one = vec![0.0; n];
                kern.matmul_kn(&x[i * k..][..k], &wp, Some(&b), &mut one, 1, Epilogue::STORE);
                let same = one.iter().zip(&all[i * n..][..n]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "M = {m}: row {i} differs ({})", kern.isa());
            }
        }
    }
}

/// On many threads a narrow product is cut by rows as well as columns (16 threads, 96 columns:
/// two chunks of columns, each in two or three groups of rows). Every dtype's product, normed
/// or not, is bitwise the same on 16 threads (a kernel team's and rayon's) as on one, and each
/// row equals itself alone.
#[test]
fn products_cut_by_rows_on_many_threads_equal_one_thread() {
    let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let (many, one) = (pool(16), pool(1));
    let team = Team::new(16).unwrap();
    let ep = Epilogue { gelu: true, accumulate: false };
    for (m, k, n) in [(130, 64, 96), (200, 300, 96), (150, 100, 700), (2, 768, 768), (1, 768, 768)] {
        let (x, w, b) = (vals(m * k, 31 + m as u64), vals(k * n, 32), vals(n, 33));
        let (gamma, beta) = (vals(k, 34), vals(k, 35));
        let norm = Norm { gamma: &gamma, beta: &beta, eps: 1e-5 };
        for kern in kernels() {
            for dtype in WeightDtype::ALL {
                let wp = kern.pack(&w, Layout::KN, k, n, dtype);
                let product = |rows: &[f32], normed: bool| {
                    let mut out = vec![f32::NAN; rows.len() / k * n];
                    match normed {
                        true => kern.matmul_kn_normed(rows, norm, &wp, Some(&b), &mut out, rows.len() / k, ep),
                        false => kern.matmul_kn(rows, &wp, Some(&b), &mut out, rows.len() / k, ep),
                    }
                    out
                };
                for normed in [false, true] {
                    let label = format!("M = {m}, N = {n} ({}, {dtype}, normed {normed})", kern.isa());
                    let split = many.install(|| product(&x, normed));
                    let whole = one.install(|| product(&x, normed));
                    let teamed = team.install(|| product(&x, normed));
                    assert!(
                        split.iter().zip(&whole).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{label}: 16 threads differ from one"
                    );
                    assert!(
                        teamed.iter().zip(&whole).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{label}: a 16-thread team differs from one thread"
                    );
                    for i in [0, m / 2, m.saturating_sub(2), m - 1] {
                        let alone = many.install(|| product(&x[i * k..][..k], normed));
                        let same = alone.iter().zip(&split[i * n..][..n]).all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{label}: row {i} differs from itself alone");
                    }
                }
            }
        }
    }
}

/// A product of zero rows is a no-op for every ISA and dtype, fused norm or not: a step whose
/// sequences are all mid-prompt sends no row through the lm_head.
#[test]
fn empty_products_are_no_ops() {
    let (k, n) = (40, 24);
    let (w, b, g, beta) = (vals(k * n, 1), vals(n, 2), vals(k, 3), vals(k, 4));
    let norm = Norm { gamma: &g, beta: &beta, eps: 1e-5 };
    for kern in kernels() {
        for dtype in WeightDtype::ALL {
            let wp = kern.pack(&w, Layout::KN, k, n, dtype);
            let mut out: Vec<f32> = Vec::new();
            kern.matmul_kn(&[], &wp, Some(&b), &mut out, 0, Epilogue::STORE);
            kern.matmul_kn_normed(&[], norm, &wp, Some(&b), &mut out, 0, Epilogue::GELU);
        }
    }
}

/// Enough rows that the product packs them in parallel (M x K >= 2^16), the layer norm fused:
/// every row is bitwise the same row normed and multiplied alone (which packs nothing).
#[test]
fn parallel_row_packing_equals_each_row_alone() {
    let (m, k, n) = (97, 771, 37);
    let x: Vec<f32> = vals(m * k, 5).iter().map(|v| v * 3.0 + 0.5).collect();
    let (w, b, g, beta) = (vals(k * n, 6), vals(n, 7), vals(k, 8), vals(k, 9));
    let norm = Norm { gamma: &g, beta: &beta, eps: 1e-5 };
    for kern in kernels() {
        for dtype in WeightDtype::ALL {
            let wp = kern.pack(&w, Layout::KN, k, n, dtype);
            let mut all = vec![f32::NAN; m * n];
            kern.matmul_kn_normed(&x, norm, &wp, Some(&b), &mut all, m, Epilogue::GELU);
            for i in [0, 11, 12, 48, m - 1] {
                let mut one = vec![0.0; n];
                kern.matmul_kn_normed(&x[i * k..][..k], norm, &wp, Some(&b), &mut one, 1, Epilogue::GELU);
                let same = one.iter().zip(&all[i * n..][..n]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "row {i} differs ({} {})", kern.isa(), dtype);
            }
        }
    }
}

/// A NaN or infinity in the input of a product that quantizes its rows (w8a8, and int8 on the
/// integer dot) makes that row's outputs NaN (as in an f32 product) and leaves the other rows
/// as they are.
#[test]
fn quantized_rows_poison_only_the_row_with_a_non_finite_input() {
    let (m, k, n) = (3, 40, 50);
    let w = vals(k * n, 5);
    for (dtype, kerns, oracle) in quantized_cases() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vals(m * k, 6);
            x[k + 17] = bad;
            for &kern in &kerns {
                let label = format!("{}/{dtype}", kern.isa());
                let wp = kern.pack(&w, Layout::KN, k, n, dtype);
                let mut out = vec![0.0; m * n];
                kern.matmul_kn(&x, &wp, None, &mut out, m, Epilogue::STORE);
                assert!(out[n..2 * n].iter().all(|v| v.is_nan()), "{label}: row with {bad} not poisoned");
                let mut want = vec![0.0; m * n];
                oracle(&x[..k], &w, None, &mut want[..n], 1, k, n);
                oracle(&x[2 * k..], &w, None, &mut want[2 * n..], 1, k, n);
                assert_eq!(&out[..n], &want[..n], "{label}: row 0 changed");
                assert_eq!(&out[2 * n..], &want[2 * n..], "{label}: row 2 changed");
            }
        }
    }
}

/// Exact construction: multiplying by an identity gives the input bit for bit on every ISA.
#[test]
fn identity_products_are_exact() {
    for n in [1, 7, 8, 15, 16, 17, 33] {
        let x = vals(5 * n, n as u64);
        let mut eye = vec![0.0; n * n];
        (0..n).for_each(|i| eye[i * n + i] = 1.0);
        for kern in kernels() {
            for dtype in WeightDtype::ALL {
                let mut out = vec![f32::NAN; 5 * n];
                kern.matmul_kn(&x, &kern.pack(&eye, Layout::KN, n, n, dtype), None, &mut out, 5, Epilogue::STORE);
                if matches!(dtype, WeightDtype::W8a8 | WeightDtype::W4a8) {
                    continue; // the input is quantized too: covered by quantized_products_match_reference
                }
                if dtype == WeightDtype::Bf16dot {
                    // Its input is rounded to bf16, and times one that is exact.
                    let rounded: Vec<f32> = x.iter().map(|&v| reference::bf16_round(v)).collect();
                    assert_eq!(out, rounded, "identity, n = {n}, {} {dtype}", kern.isa());
                    continue;
                }
                if dtype == WeightDtype::Int8 {
                    // q = 127 with scale 1/127: exact up to the rounding of that scale, and of
                    // the row's 24-bit activations where the integer dot runs it (half a step of
                    // max |x| / (2^23 - 1)).
                    let amax = |i: usize| x[i / n * n..][..n].iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let bound = |i: usize| x[i].abs() * 2e-7 + amax(i) * 6e-8;
                    assert_close(&format!("int8 identity n = {n}"), &out, &x, bound);
                } else {
                    assert_eq!(out, x, "identity, n = {n}, {} {dtype}", kern.isa());
                }
            }
        }
    }
}

/// `INFERNEO_ISA` cannot silently fall back: an unknown or unavailable ISA is an error.
#[test]
fn forced_isa_is_checked() {
    assert!("avx9000".parse::<inferneo_kernels::Isa>().is_err());
    for isa in inferneo_kernels::Isa::ALL {
        assert_eq!(Kernels::for_isa(isa).is_some(), isa.available());
        if !isa.available() {
            eprintln!("NOTICE: ISA {isa} not available on this CPU; its kernels are untested here");
        }
    }
}

/// Saved `w4a8` values are checked before they are packed: every error names what is wrong.
#[test]
fn w4a8_values_are_validated() {
    let err = |r: Result<W4Values, String>| r.unwrap_err();
    assert!(err(W4Values::new(2, 3, vec![0; 5], vec![1.0; 3])).contains("5 values for a 2 x 3 matrix"));
    assert!(err(W4Values::new(40, 1, vec![0; 40], vec![1.0; 1])).contains("1 for 2 groups x 1 columns"));
    let mut q = vec![0i8; 6];
    q[4] = 8;
    assert!(err(W4Values::new(2, 3, q, vec![1.0; 3])).contains("value 8 at (1, 1) is outside -8..=7"));
    assert!(err(W4Values::new(2, 3, vec![0; 6], vec![1.0, f32::NAN, 1.0])).contains("column 1 is not finite"));
    assert!(W4Values::new(2, 3, vec![-8, 7, 0, 1, 2, 3], vec![0.5; 3]).is_ok());
}
