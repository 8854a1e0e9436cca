//! The naive oracle: one obviously-correct loop nest per op, in the spirit of llm.c's
//! `matmul_forward_naive`. Never optimised; every fast kernel is tested against these.
//! Accumulation is in `f64` so the oracle's own rounding is negligible next to the tolerances.

/// `out[m,n] = x[m,k] · w[k,n] + bias[n]` (`w` row-major `[k, n]`).
pub fn matmul_kn(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], m: usize, k: usize, n: usize) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = bias.map_or(0.0, |b| b[j] as f64);
            for p in 0..k {
                acc += x[i * k + p] as f64 * w[p * n + j] as f64;
            }
            out[i * n + j] = acc as f32;
        }
    }
}

/// `v` rounded to bf16 as `bf16dot` rounds weights and activations, returned as f32 (exact):
/// a subnormal `v` becomes a zero of its sign (AVX512-BF16's conversions treat subnormal inputs
/// as zero), then to nearest bf16, ties to even (NaN stays NaN, overflow goes to infinity).
pub fn bf16_round(v: f32) -> f32 {
    let v = if v.is_subnormal() { 0.0f32.copysign(v) } else { v };
    half::bf16::from_f32(v).to_f32()
}

/// The `bf16dot` product: `x` and `w` rounded by [`bf16_round`], then for each output, from
/// `0.0` in f32, over the pairs of k in order: `acc += x[2i+1] w[2i+1]`, then `acc += x[2i]
/// w[2i]` (a missing odd k of an odd `k` counts as `0 * 0`), each product exact (two 8-bit
/// significands) and each sum rounded to nearest even, as `vdpbf16ps` defines its lanes; then
/// `+ bias` in f32.
pub fn matmul_bf16dot(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], m: usize, k: usize, n: usize) {
    for i in 0..m {
        let xr = |p: usize| if p < k { bf16_round(x[i * k + p]) } else { 0.0 };
        for j in 0..n {
            let wr = |p: usize| if p < k { bf16_round(w[p * n + j]) } else { 0.0 };
            let mut acc = 0.0f32;
            for pair in 0..k.div_ceil(2) {
                let (even, odd) = (2 * pair, 2 * pair + 1);
                // A fused multiply-add: the exact product, one rounding of the sum.
                acc = xr(odd).mul_add(wr(odd), acc);
                acc = xr(even).mul_add(wr(even), acc);
            }
            out[i * n + j] = bias.map_or(acc, |b| acc + b[j]);
        }
    }
}

/// The `w8a8` product: `w` quantized per column (`scale = max |w| / 127`, round half away from
/// zero), each row of `x` per row (`scale = max |x| / 127`, ties to even), the integer dot
/// product exact, then `((dot as f32) * w_scale) * x_scale + bias` in f32, in that order.
pub fn matmul_w8a8(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], m: usize, k: usize, n: usize) {
    matmul_quantized(x, w, bias, out, (m, k, n), 127.0)
}

/// The `int8` product where the CPU reduces it in integers (VNNI): as [`matmul_w8a8`], each row
/// of `x` quantized to 24 bits instead (`scale = max |x| / (2^23 - 1)`).
pub fn matmul_int8_24(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], m: usize, k: usize, n: usize) {
    matmul_quantized(x, w, bias, out, (m, k, n), 8_388_607.0)
}

/// The `w4a8` product. Weights in groups of 32 consecutive k per column: `d = m / -8` with `m`
/// the group's value of largest magnitude (the first on ties), `q = round(w / d)` half away from
/// zero, clamped to `-8..=7` (llama.cpp's `q4_0` rule). Each row of `x` quantized to int8 as in
/// [`matmul_w8a8`]. Then per output, in f32 and in group order from zero, `acc = acc + (dot_g
/// as f32) * d_g` (`dot_g` the exact integer dot of the group; a multiply then an add, not
/// fused), then `acc * x_scale + bias`.
pub fn matmul_w4a8(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], m: usize, k: usize, n: usize) {
    const GROUP: usize = 32;
    let groups = k.div_ceil(GROUP);
    let range = |g: usize| g * GROUP..k.min(g * GROUP + GROUP);
    let d: Vec<f32> = (0..groups * n)
        .map(|i| {
            let (g, j) = (i / n, i % n);
            let mut big = 0.0f32;
            for p in range(g) {
                if w[p * n + j].abs() > big.abs() {
                    big = w[p * n + j];
                }
            }
            big / -8.0
        })
        .collect();
    let wq = |p: usize, j: usize| {
        let s = d[p / GROUP * n + j];
        if s == 0.0 {
            0
        } else {
            (w[p * n + j] / s).round().clamp(-8.0, 7.0) as i64
        }
    };
    for i in 0..m {
        let (xq, x_scale) = quantize_row(&x[i * k..][..k], 127.0);
        for j in 0..n {
            let mut acc = 0.0f32;
            for g in 0..groups {
                let dot: i64 = range(g).map(|p| xq[p] * wq(p, j)).sum();
                acc += dot as f32 * d[g * n + j];
            }
            let v = acc * x_scale;
            out[i * n + j] = bias.map_or(v, |b| v + b[j]);
        }
    }
}

/// One row quantized symmetrically to `+-qmax` (`scale = max |x| / qmax`, values rounded ties to
/// even): the values and the scale.
fn quantize_row(row: &[f32], qmax: f32) -> (Vec<i64>, f32) {
    let amax = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let (x_scale, inv) = if amax > 0.0 { (amax / qmax, qmax / amax) } else { (0.0, 0.0) };
    (row.iter().map(|&v| (v * inv).round_ties_even().clamp(-qmax, qmax) as i64).collect(), x_scale)
}

/// Int8 weights (per column) times activations quantized per row to `+-qmax`, exactly.
fn matmul_quantized(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    qmax: f32,
) {
    let w_scale: Vec<f32> = (0..n).map(|j| (0..k).fold(0.0f32, |a, p| a.max(w[p * n + j].abs())) / 127.0).collect();
    let wq = |p: usize, j: usize| {
        if w_scale[j] == 0.0 {
            0
        } else {
            (w[p * n + j] / w_scale[j]).round().clamp(-127.0, 127.0) as i64
        }
    };
    for i in 0..m {
        let row = &x[i * k..][..k];
        let amax = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let (x_scale, inv) = if amax > 0.0 { (amax / qmax, qmax / amax) } else { (0.0, 0.0) };
        let xq: Vec<i64> = row.iter().map(|&v| (v * inv).round_ties_even().clamp(-qmax, qmax) as i64).collect();
        for j in 0..n {
            let dot: i64 = (0..k).map(|p| xq[p] * wq(p, j)).sum();
            let v = dot as f32 * w_scale[j] * x_scale;
            out[i * n + j] = bias.map_or(v, |b| v + b[j]);
        }
    }
}

/// Layer norm of one row `x[n]` with biased variance.
pub fn layernorm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (var + eps as f64).sqrt();
    for i in 0..x.len() {
        out[i] = ((x[i] as f64 - mean) * rstd * gamma[i] as f64 + beta[i] as f64) as f32;
    }
}

/// GPT-2 `gelu_new`: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_new(x: &mut [f32]) {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    for v in x.iter_mut() {
        let y = *v as f64;
        *v = (0.5 * y * (1.0 + (c * (y + 0.044715 * y * y * y)).tanh())) as f32;
    }
}

/// `exp((x - shift) * scale)` of each value and their sum.
pub fn exp_shifted(x: &[f32], shift: f32, scale: f32) -> (Vec<f32>, f64) {
    let v: Vec<f32> = x.iter().map(|&v| ((v as f64 - shift as f64) * scale as f64).exp() as f32).collect();
    let sum = v.iter().map(|&e| e as f64).sum();
    (v, sum)
}

/// Softmax of one row, max-subtracted.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    for v in x.iter_mut() {
        *v = ((*v as f64 - max).exp() / sum) as f32;
    }
}

/// Causal self-attention for one head over contiguous rows.
/// `q`, `k`, `v`: `[t, hd]`; `out`: `[t, hd]`; query `i` attends to keys `0..=i + past`, where
/// `past = k_len - t` positions precede the queries (`k`/`v` hold `k_len` rows).
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], t: usize, k_len: usize, hd: usize) {
    let past = k_len - t;
    let scale = 1.0 / (hd as f64).sqrt();
    for i in 0..t {
        let len = past + i + 1;
        let scores: Vec<f64> = (0..len)
            .map(|j| (0..hd).map(|d| q[i * hd + d] as f64 * k[j * hd + d] as f64).sum::<f64>() * scale)
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        for d in 0..hd {
            out[i * hd + d] = ((0..len).map(|j| e[j] * v[j * hd + d] as f64).sum::<f64>() / sum) as f32;
        }
    }
}

/// `out[t, c] = wte[tokens[t], c] + wpe[start + t, c]`.
pub fn embed(wte: &[f32], wpe: &[f32], tokens: &[u32], start: usize, c: usize, out: &mut [f32]) {
    for (t, &tok) in tokens.iter().enumerate() {
        for j in 0..c {
            out[t * c + j] = wte[tok as usize * c + j] + wpe[(start + t) * c + j];
        }
    }
}
