//! The one place kernels are chosen: a [`Kernels`] value is a table of function pointers for an
//! ISA the running CPU supports, built once per process (or per test) and then called without
//! further checks. Its methods are the safe public API: they validate shapes, prepare the
//! activations (`rows.rs`) and split each product over the team (`grid.rs`).

use crate::cpu::Isa;
use crate::grid::{balanced_tile, for_chunks, Cuts, Dims};
use crate::isa::{self, Table};
use crate::pack::bf16_bits;
use crate::rows::{pack_in_parallel, Norm, Spare, SPARE_BF16, SPARE_WORDS};
use crate::team;
use crate::{
    ActQuant, Attention, Layout, MatmulKn, MatmulQ, MatmulW4, PackBuilder, PackedKn, Panels, QFormat, W4Values,
    WeightDtype,
};
use std::sync::OnceLock;

/// Kernels bound to one ISA. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    table: Table,
}

static GLOBAL: OnceLock<Result<Kernels, String>> = OnceLock::new();

/// The process-wide kernels: the ISA from `INFERNEO_ISA`, else the best available.
/// Errors (once, then every call) if `INFERNEO_ISA` asks for something this CPU cannot run.
pub fn kernels() -> Result<Kernels, String> {
    GLOBAL.get_or_init(|| Isa::from_env().map(|isa| Kernels::for_isa(isa).expect("available ISA"))).clone()
}

impl Kernels {
    /// The table for `isa`, or `None` if this CPU cannot run it.
    pub fn for_isa(isa: Isa) -> Option<Kernels> {
        if !isa.available() {
            return None;
        }
        let table = match isa {
            Isa::Scalar => isa::scalar::table(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => isa::avx2::table(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => isa::avx512::table(),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => return None,
        };
        Some(Kernels { isa, table })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Packs a `[k, n]` weight matrix (stored as `layout`) for this ISA's `matmul_kn`.
    pub fn pack(&self, w: &[f32], layout: Layout, k: usize, n: usize, dtype: WeightDtype) -> PackedKn {
        let mut b = self.pack_builder(k, n, dtype);
        b.put_matrix(w, layout);
        b.finish()
    }

    /// An empty `[k, n]` matrix packed for this ISA's `matmul_kn`, to be filled a slice at a
    /// time ([`PackBuilder`]); the same bits as [`Kernels::pack`] of the whole matrix.
    pub fn pack_builder(&self, k: usize, n: usize, dtype: WeightDtype) -> PackBuilder {
        let q = self.table.w8a8;
        match dtype {
            WeightDtype::W8a8 => PackBuilder::int_dot(k, n, q.format, ActQuant::Int8),
            WeightDtype::W4a8 => PackBuilder::w4(k, n, self.table.w4a8.format),
            // The same int8 weights, for the integer kernel on 24-bit activations: 4x fewer
            // instructions than widening every weight to f32 (see `simd::IntDot24`).
            WeightDtype::Int8 if q.int8.is_some() => PackBuilder::int_dot(k, n, q.format, ActQuant::Int24),
            _ => PackBuilder::new(k, n, self.table.kn_nr, dtype),
        }
    }

    /// Packs `w4a8` values quantized elsewhere (a saved model) for this ISA's kernels.
    pub fn pack_w4(&self, v: &W4Values) -> PackedKn {
        PackedKn::pack_w4(v, self.table.w4a8.format)
    }

    /// `out[M,N] (+)= epilogue(x[M,K] · w[K,N] + bias[N])`, `w` packed from a `[K, N]` matrix.
    /// The [`Epilogue`] fuses GELU and/or the residual add into the store.
    pub fn matmul_kn(
        &self,
        x: &[f32],
        w: &PackedKn,
        bias: Option<&[f32]>,
        out: &mut [f32],
        m: usize,
        epilogue: Epilogue,
    ) {
        self.product(x, None, w, bias, out, m, epilogue)
    }

    /// [`Kernels::matmul_kn`] of the layer-normed rows: `out (+)= epilogue(layernorm(x) · w +
    /// bias)`. Each row is normalized as it is packed into the tiles' layout, so the normed
    /// activations are never written out and read back as a matrix of their own. Bitwise equal
    /// to [`Kernels::layernorm`] of each row followed by [`Kernels::matmul_kn`].
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_kn_normed(
        &self,
        x: &[f32],
        norm: Norm,
        w: &PackedKn,
        bias: Option<&[f32]>,
        out: &mut [f32],
        m: usize,
        epilogue: Epilogue,
    ) {
        let k = w.k();
        assert!(norm.gamma.len() == k && norm.beta.len() == k, "matmul_kn_normed: gamma/beta are not k = {k} long");
        self.product(x, Some(norm), w, bias, out, m, epilogue)
    }

    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        x: &[f32],
        norm: Option<Norm>,
        w: &PackedKn,
        bias: Option<&[f32]>,
        out: &mut [f32],
        m: usize,
        epilogue: Epilogue,
    ) {
        let dims = Dims { m, k: w.k(), n: w.n() };
        let Dims { k, n, .. } = dims;
        assert!(x.len() >= m * k && out.len() >= m * n, "matmul_kn: slices shorter than {dims:?}");
        assert!(bias.is_none_or(|b| b.len() >= n), "matmul_kn: bias shorter than n = {n}");
        if let Panels::IntDot { q, scale, corr, format, acts } = w.panels() {
            // Blocks of one row are the row-major matrix itself: the normed rows, for quantizing.
            let normed = norm.map(|_| self.pack_rows(&x[..m * k], k, 1, norm));
            let panels = QPanels { q, scale, corr, format: *format, acts: *acts };
            return self.product_q(normed.as_deref().unwrap_or(&x[..m * k]), panels, bias, out, dims, epilogue);
        }
        if let Panels::W4 { q, scale, format } = w.panels() {
            assert_eq!(*format, self.table.w4a8.format, "matmul_kn: w4a8 weights packed for another ISA");
            let normed = norm.map(|_| self.pack_rows(&x[..m * k], k, 1, norm));
            return self.product_w4(normed.as_deref().unwrap_or(&x[..m * k]), (q, scale), bias, out, dims, epilogue);
        }
        assert_eq!(w.nr(), self.table.kn_nr, "matmul_kn: weights packed for another ISA");
        if let Panels::Bf16Pairs(_) = w.panels() {
            return self.product_bf16dot(x, norm, w, bias, out, dims, epilogue);
        }
        // Several rows: interleave them in blocks of MR (BLIS's packed A) once, shared by all
        // threads; the tile then reads one contiguous run of MR values per k.
        let mr = if m > 1 { balanced_tile(m, self.table.kn_mr) } else { 1 };
        let packed_x = (m > 1 || norm.is_some()).then(|| self.pack_rows(&x[..m * k], k, mr, norm));
        let (x, x_mr) = match &packed_x {
            Some(p) => (&p[..], if m > 1 { mr } else { 0 }),
            None => (x, 0),
        };
        let rows = KnRows { x, row_len: k, x_mr };
        self.kn_over_chunks(self.table.matmul_kn, rows, w.panels(), bias, out, dims, epilogue);
    }

    /// A float-layout tile kernel (`f32`, `f16`, `bf16` or `bf16dot`) over column chunks of
    /// `out`, every thread reading the same prepared rows.
    #[allow(clippy::too_many_arguments)]
    fn kn_over_chunks(
        &self,
        f: unsafe fn(&MatmulKn, &mut [&mut [f32]]),
        rows: KnRows,
        w: &Panels,
        bias: Option<&[f32]>,
        out: &mut [f32],
        dims: Dims,
        epilogue: Epilogue,
    ) {
        let Dims { m, k, n } = dims;
        let KnRows { x, row_len, x_mr } = rows;
        let cuts = Cuts::for_product(m, self.table.kn_nr, self.table.kn_decode_cols, x_mr);
        for_chunks(&mut out[..m * n], dims, cuts, |c| {
            // A chunk's rows start on a block of `x_mr` rows: block `row0 / x_mr` is at
            // `row0 * row_len`.
            let x = &x[c.row0 * row_len..];
            let a =
                MatmulKn { x, x_mr, k, w, n, bias, col0: c.col0, gelu: epilogue.gelu, accumulate: epilogue.accumulate };
            // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
            unsafe { f(&a, &mut c.rows) }
        });
    }

    /// Layer norm of one row: `out = (x - mean) / sqrt(var + eps) * gamma + beta`.
    pub fn layernorm(&self, x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32]) {
        let n = x.len();
        assert!(gamma.len() == n && beta.len() == n && out.len() == n, "layernorm: length mismatch");
        if n == 0 {
            return;
        }
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.layernorm)(x, gamma, beta, eps, out) }
    }

    /// GPT-2 `gelu_new` (tanh approximation), in place.
    pub fn gelu_new(&self, x: &mut [f32]) {
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.gelu_new)(x) }
    }

    /// Largest value of a row (`-inf` when empty).
    pub fn max(&self, x: &[f32]) -> f32 {
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.max)(x) }
    }

    /// `out[i] = exp((x[i] - shift) * scale)` for every `x`; returns the sum. Max relative error
    /// of each value: that of the kernels' `exp` (below 2e-7, see `simd`).
    pub fn exp_shifted(&self, x: &[f32], shift: f32, scale: f32, out: &mut [f32]) -> f32 {
        assert_eq!(x.len(), out.len(), "exp_shifted: length mismatch");
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.exp_shifted)(x, shift, scale, out) }
    }

    /// Softmax of one row, in place.
    pub fn softmax(&self, x: &mut [f32]) {
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.softmax)(x) }
    }

    /// `out = a + b`.
    pub fn add(&self, a: &[f32], b: &[f32], out: &mut [f32]) {
        assert!(a.len() == out.len() && b.len() == out.len(), "add: length mismatch");
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.add)(a, b, out) }
    }

    /// One query head attending to `a.len` cached positions; `out` gets `head_dim` values.
    /// `scores` is scratch of at least `a.len` floats.
    pub fn attend(&self, a: &Attention, out: &mut [f32], scores: &mut [f32]) {
        check_attention(a, out, scores);
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.attend)(a, out, scores) }
    }

    /// [`Kernels::attend`] over an f16 KV cache.
    pub fn attend_f16(&self, a: &Attention<half::f16>, out: &mut [f32], scores: &mut [f32]) {
        check_attention(a, out, scores);
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.attend_f16)(a, out, scores) }
    }
}

impl Kernels {
    /// `heads` consecutive heads from `a.head_offset` (`a.q` and `out` hold `heads * head_dim`
    /// values), each bitwise as [`Kernels::attend`] computes it, reading every K/V row once.
    /// `scores` is scratch of at least `heads * a.len` floats.
    pub fn attend_heads(&self, a: &Attention, heads: usize, out: &mut [f32], scores: &mut [f32]) {
        check_heads(a, heads, out, scores);
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.attend_heads)(a, heads, out, scores) }
    }

    /// [`Kernels::attend_heads`] over an f16 KV cache.
    pub fn attend_heads_f16(&self, a: &Attention<half::f16>, heads: usize, out: &mut [f32], scores: &mut [f32]) {
        check_heads(a, heads, out, scores);
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.attend_heads_f16)(a, heads, out, scores) }
    }
}

fn check_heads<E>(a: &Attention<E>, heads: usize, out: &[f32], scores: &[f32]) {
    let width = heads * a.head_dim;
    assert!((1..=crate::ops::attention::MAX_HEADS).contains(&heads), "attend_heads: {heads} heads");
    assert!(a.len > 0, "attend_heads: no keys");
    assert!(a.q.len() >= width && out.len() >= width, "attend_heads: q/out shorter than heads x head_dim");
    assert!(scores.len() >= heads * a.len, "attend_heads: scores scratch shorter than heads x len");
    let end = a.head_offset + width;
    assert!(a.k.covers(a.len, end) && a.v.covers(a.len, end), "attend_heads: K/V view shorter than len");
}

fn check_attention<E>(a: &Attention<E>, out: &[f32], scores: &[f32]) {
    assert!(a.len > 0, "attend: no keys");
    assert!(a.q.len() >= a.head_dim && out.len() >= a.head_dim, "attend: q/out shorter than head_dim");
    assert!(scores.len() >= a.len, "attend: scores scratch shorter than len");
    let width = a.head_offset + a.head_dim;
    assert!(a.k.covers(a.len, width) && a.v.covers(a.len, width), "attend: K/V view shorter than len");
}

impl Kernels {
    /// Sum of `x`, streaming it once: the read-bandwidth probe of `inferneo roofline`.
    pub fn sum(&self, x: &[f32]) -> f32 {
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        unsafe { (self.table.sum)(x) }
    }

    /// Runs `iters` rounds of 12 independent FMA chains on one thread: the FLOP-peak probe.
    /// Returns the FLOPs executed (2 per lane per FMA) and a value that depends on the work.
    pub fn fma_probe(&self, iters: usize) -> (f64, f32) {
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        let v = unsafe { (self.table.fma_probe)(iters, 1.0) };
        (iters as f64 * 12.0 * self.lanes() as f64 * 2.0, v)
    }

    /// Runs `iters` rounds of 12 independent chains of the `w8a8` integer dot product on one
    /// thread: the int8 peak probe. Returns the integer operations executed (2 per
    /// multiply-add, as for FLOPs) and a value that depends on the work.
    pub fn int_dot_probe(&self, iters: usize) -> (f64, f32) {
        let t = self.table.w8a8;
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        let v = unsafe { (t.probe)(iters, 0x0102_0304) };
        (iters as f64 * 12.0 * (t.lanes * t.format.kq) as f64 * 2.0, v)
    }

    /// Runs `iters` rounds of 12 independent chains of the `bf16dot` pair product on one
    /// thread: the bf16 dot-product peak probe. Returns the FLOPs executed (4 per lane per pair:
    /// two products, two sums) and a value that depends on the work.
    pub fn bf16dot_probe(&self, iters: usize) -> (f64, f32) {
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        let v = unsafe { (self.table.bf16dot.probe)(iters, 1.0) };
        (iters as f64 * 12.0 * self.lanes() as f64 * 4.0, v)
    }

    /// The instruction the `bf16dot` kernels reduce with, for reports.
    pub fn bf16dot_name(&self) -> &'static str {
        self.table.bf16dot.name
    }

    /// The instruction the `w8a8` kernels reduce with, for reports.
    pub fn int_dot_name(&self) -> &'static str {
        self.table.w8a8.name
    }

    /// The instructions the `w4a8` kernels reduce with, for reports.
    pub fn w4_dot_name(&self) -> &'static str {
        self.table.w4a8.name
    }

    /// `f32` lanes per vector register of this ISA.
    pub fn lanes(&self) -> usize {
        match self.isa {
            Isa::Scalar => 1,
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
        }
    }
}

/// What happens to a product on its way to the output, after the bias.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    /// Apply GPT-2's `gelu_new`.
    pub gelu: bool,
    /// Add into the output (the residual connection) instead of overwriting it.
    pub accumulate: bool,
}

impl Epilogue {
    /// Overwrite the output.
    pub const STORE: Epilogue = Epilogue { gelu: false, accumulate: false };
    /// `out = gelu(x W + b)`.
    pub const GELU: Epilogue = Epilogue { gelu: true, accumulate: false };
    /// `out += x W + b`.
    pub const ACCUMULATE: Epilogue = Epilogue { gelu: false, accumulate: true };
}

impl Kernels {
    /// A `bf16dot` product: the rows packed (and layer-normed) as for the float kernels, then
    /// rounded to bf16 in the layout this ISA's pair kernel takes, then the kernel over column
    /// chunks.
    #[allow(clippy::too_many_arguments)]
    fn product_bf16dot(
        &self,
        x: &[f32],
        norm: Option<Norm>,
        w: &PackedKn,
        bias: Option<&[f32]>,
        out: &mut [f32],
        dims: Dims,
        epilogue: Epilogue,
    ) {
        let Dims { m, k, .. } = dims;
        let t = self.table.bf16dot;
        let mr = if m > 1 { balanced_tile(m, self.table.kn_mr) } else { 1 };
        let rows = self.pack_rows(&x[..m * k], k, mr, norm);
        let per_row = crate::ops::matmul_bf16::act_len(t.words, k);
        let mut acts = Spare::take(&SPARE_BF16, m.div_ceil(mr) * mr * per_row);
        if k > 0 {
            let round =
                |b: usize, block: &mut [f32]| round_bf16_block(&rows[b * mr * k..][..mr * k], k, mr, t.words, block);
            if pack_in_parallel(m * k) {
                team::for_each_chunk_mut(&mut acts, mr * per_row, round);
            } else {
                acts.chunks_exact_mut(mr * per_row).enumerate().for_each(|(b, block)| round(b, block));
            }
        }
        drop(rows);
        let rows = KnRows { x: &acts, row_len: per_row, x_mr: if m > 1 { mr } else { 0 } };
        self.kn_over_chunks(t.matmul, rows, w.panels(), bias, out, dims, epilogue);
    }
}

/// The rows a float-layout tile kernel reads: `row_len` values a row, in blocks of `x_mr` rows
/// interleaved (`x_mr > 0`), or one row after another (`x_mr == 0`).
struct KnRows<'a> {
    x: &'a [f32],
    row_len: usize,
    x_mr: usize,
}

/// One block of `mr` packed rows (`src`: `[k][mr]`) rounded to bf16 ([`bf16_bits`]) into `dst`:
/// pair words `[ceil(k / 2)][mr]` (`words`), each carried in an f32 slot as its bits, else
/// bf16-valued floats `[2 ceil(k / 2)][mr]`; a missing odd k is zero.
fn round_bf16_block(src: &[f32], k: usize, mr: usize, words: bool, dst: &mut [f32]) {
    let at = |kk: usize, r: usize| if kk < k { bf16_bits(src[kk * mr + r]) } else { 0 };
    if words {
        for (i, d) in dst.chunks_exact_mut(mr).enumerate() {
            for (r, v) in d.iter_mut().enumerate() {
                *v = f32::from_bits(at(2 * i + 1, r) << 16 | at(2 * i, r));
            }
        }
    } else {
        for (kk, d) in dst.chunks_exact_mut(mr).enumerate() {
            for (r, v) in d.iter_mut().enumerate() {
                *v = f32::from_bits(at(kk, r) << 16);
            }
        }
    }
}

/// An integer-dot matrix's packed parts.
struct QPanels<'a> {
    q: &'a [i8],
    scale: &'a [f32],
    corr: &'a [i32],
    format: QFormat,
    acts: ActQuant,
}

impl Kernels {
    /// An integer-dot product (`w8a8`, or `int8` on 24-bit activations): quantizes the rows
    /// once (shared by all threads), then the integer kernel over column chunks.
    fn product_q(&self, x: &[f32], w: QPanels, bias: Option<&[f32]>, out: &mut [f32], dims: Dims, epilogue: Epilogue) {
        let Dims { m, k, n } = dims;
        let t = self.table.w8a8;
        assert_eq!(w.format, t.format, "matmul_kn: integer-dot weights packed for another ISA");
        // (tile rows, words per row and group, one-row tile width, quantizer, kernel)
        let (max_mr, run, decode_cols, quantize_fn, matmul) = match (w.acts, t.int8) {
            (ActQuant::Int8, _) => (t.mr, 1, t.decode_cols, t.quantize, t.matmul),
            (ActQuant::Int24, Some(q)) => (q.mr, crate::ops::matmul_q::WORDS24, q.decode_cols, q.quantize, q.matmul),
            (ActQuant::Int24, None) => panic!("matmul_kn: int8 weights packed for another ISA"),
        };
        let groups = k.div_ceil(w.format.kq);
        // 24-bit activations are always in blocks (one row: a block of one).
        let mr = if m > 1 { balanced_tile(m, max_mr) } else { usize::from(run > 1) };
        let (words, x_scale) = quantize_rows(quantize_fn, &x[..m * k], dims, mr, groups * run);
        // Rows are split only in whole blocks of `mr` (one row never is: see `grid::chunk_shape`).
        for_chunks(&mut out[..m * n], dims, Cuts::for_product(m, w.format.nr, decode_cols, mr), |c| {
            let a = MatmulQ {
                x: &words[c.row0 * groups * run..],
                x_mr: mr,
                x_scale: &x_scale[c.row0..],
                groups,
                w: w.q,
                w_scale: w.scale,
                corr: w.corr,
                n,
                bias,
                col0: c.col0,
                gelu: epilogue.gelu,
                accumulate: epilogue.accumulate,
            };
            // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
            unsafe { matmul(&a, &mut c.rows) }
        });
    }
}

impl Kernels {
    /// A `w4a8` product: quantizes the rows once (shared by all threads), then the kernel over
    /// column chunks, as [`Kernels::product_q`] does for `w8a8`.
    fn product_w4(
        &self,
        x: &[f32],
        (q, scale): (&[u8], &[f32]),
        bias: Option<&[f32]>,
        out: &mut [f32],
        dims: Dims,
        epilogue: Epilogue,
    ) {
        use crate::ops::matmul_w4::W4_RUN;
        let Dims { m, k, n } = dims;
        let t = self.table.w4a8;
        let groups = k.div_ceil(crate::W4_GROUP);
        let mr = if m > 1 { balanced_tile(m, t.mr) } else { 0 };
        let (words, x_scale) = quantize_rows(t.quantize, &x[..m * k], dims, mr, groups * W4_RUN);
        for_chunks(&mut out[..m * n], dims, Cuts::for_product(m, t.format.nr, t.decode_cols, mr), |c| {
            let a = MatmulW4 {
                x: &words[c.row0 * groups * W4_RUN..],
                x_mr: mr,
                x_scale: &x_scale[c.row0..],
                groups,
                w: q,
                w_scale: scale,
                n,
                bias,
                col0: c.col0,
                gelu: epilogue.gelu,
                accumulate: epilogue.accumulate,
            };
            // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
            unsafe { (t.matmul)(&a, &mut c.rows) }
        });
    }
}

/// The `m` rows of `x` (`[m, k]`) quantized by one of this ISA's row quantizers (`w8a8`, `int8`'s 24-bit
/// form or `w4a8`): their words, `row_words` a row, interleaved in blocks of `mr` rows (`mr > 0`)
/// or one row after another, and one scale a row. Rows are quantized once, shared by all threads;
/// each block of `mr` rows on its own when the rows are many (as they are packed for the float
/// kernels).
fn quantize_rows(
    quantize: unsafe fn(&[f32], usize, usize, &mut [i32], &mut [f32]),
    x: &[f32],
    Dims { m, k, .. }: Dims,
    mr: usize,
    row_words: usize,
) -> (Spare<i32>, Vec<f32>) {
    let len = m.div_ceil(mr.max(1)) * mr.max(1) * row_words;
    let mut words = Spare::take(&SPARE_WORDS, len);
    let mut x_scale = vec![0.0f32; m];
    // SAFETY: the quantizer comes from a table built by `for_isa` only after the CPU was shown to
    // support it.
    let quantize = |x: &[f32], words: &mut [i32], scales: &mut [f32]| unsafe { quantize(x, k, mr, words, scales) };
    if mr > 0 && pack_in_parallel(m * k) {
        let mut blocks: Vec<_> = words.chunks_mut(mr * row_words).zip(x_scale.chunks_mut(mr)).collect();
        team::for_each_mut(&mut blocks, |b, (words, scales)| {
            quantize(&x[b * mr * k..][..scales.len() * k], words, scales)
        });
    } else {
        quantize(x, &mut words, &mut x_scale);
    }
    (words, x_scale)
}
