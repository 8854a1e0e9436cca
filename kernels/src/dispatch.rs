//! The one place kernels are chosen: a [`Kernels`] value is a table of function pointers for an
//! ISA the running CPU supports, built once per process (or per test) and then called without
//! further checks. Its methods are the safe public API; they validate shapes and split work
//! across the rayon pool.

use crate::cpu::Isa;
use crate::isa::{self, Table};
use crate::team;
use crate::{ActQuant, Attention, Layout, MatmulKn, MatmulQ, PackedKn, Panels, QFormat, WeightDtype};
use std::cell::RefCell;
use std::sync::OnceLock;
use std::thread::LocalKey;

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

/// Below this many multiply-adds a product runs on the calling thread: a rayon fork costs
/// microseconds, more than the work itself.
const PAR_MIN_FLOPS: usize = 1 << 17;
/// Rows of a product are cut into groups of this many or more on average, since each reads its
/// panels' weights again. Cut into three groups of one register tile, a decode step's 32 rows
/// ran 1.2-1.6x slower from memory on 16 threads than two-panel chunks of all 32 rows (two
/// device runs, not side by side).
const MIN_GROUP_ROWS: usize = 64;
/// Column chunks are at least this wide (two AVX-512 panels), so a chunk amortises its
/// start-up: one-panel chunks of a 768 x 768 product took 1.3-1.7x as long in cache on 16
/// threads (two device runs, not side by side).
const MIN_CHUNK: usize = 64;

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
        let q = self.table.w8a8;
        match dtype {
            WeightDtype::W8a8 => PackedKn::pack_int_dot(w, layout, k, n, q.format, ActQuant::Int8),
            // The same int8 weights, for the integer kernel on 24-bit activations: 4x fewer
            // instructions than widening every weight to f32 (see `simd::IntDot24`).
            WeightDtype::Int8 if q.int8.is_some() => PackedKn::pack_int_dot(w, layout, k, n, q.format, ActQuant::Int24),
            _ => PackedKn::pack(w, layout, k, n, self.table.kn_nr, dtype),
        }
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
        assert_eq!(w.nr(), self.table.kn_nr, "matmul_kn: weights packed for another ISA");
        let f = self.table.matmul_kn;
        let w = w.panels();
        // Several rows: interleave them in blocks of MR (BLIS's packed A) once, shared by all
        // threads; the tile then reads one contiguous run of MR values per k.
        let mr = if m > 1 { balanced_tile(m, self.table.kn_mr) } else { 1 };
        let packed_x = (m > 1 || norm.is_some()).then(|| self.pack_rows(&x[..m * k], k, mr, norm));
        let (x, x_mr) = match &packed_x {
            Some(p) => (&p[..], if m > 1 { mr } else { 0 }),
            None => (x, 0),
        };
        // One row: chunks of whole decode tiles, so every chunk streams several panels at once.
        let align = if m == 1 { self.table.kn_decode_cols } else { self.table.kn_nr };
        let cuts = Cuts { align, panel: self.table.kn_nr, row_block: x_mr };
        for_chunks(&mut out[..m * n], dims, cuts, |c| {
            // A chunk's rows start on a block of `x_mr` rows: block `row0 / x_mr` is at `row0 * k`.
            let x = &x[c.row0 * k..];
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

    /// The instruction the `w8a8` kernels reduce with, for reports.
    pub fn int_dot_name(&self) -> &'static str {
        self.table.w8a8.name
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

/// Shape of a product: `x` is `[m, k]`, the result `[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// Tile height for `m` rows: as many tiles as `max_mr` needs, rows spread evenly over them (50
/// rows as 5 x 10 rather than 4 x 12 + 2: a 2-row tile has too few accumulators to keep the
/// FMA units busy). Which rows share a tile never changes a result (batch invariance).
fn balanced_tile(m: usize, max_mr: usize) -> usize {
    m.div_ceil(m.div_ceil(max_mr))
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
        let len = m.div_ceil(mr.max(1)) * mr.max(1) * groups * run;
        let mut words = Spare::take(&SPARE_WORDS, len);
        let mut x_scale = vec![0.0f32; m];
        // SAFETY: this table was built by `for_isa` only after the CPU was shown to support it.
        let quantize =
            |x: &[f32], words: &mut [i32], scales: &mut [f32]| unsafe { quantize_fn(x, k, mr, words, scales) };
        if mr > 0 && pack_in_parallel(m * k) {
            // Each block of `mr` rows is quantized and interleaved on its own (as the rows are
            // packed for the float kernels).
            let mut blocks: Vec<_> = words.chunks_mut(mr * groups * run).zip(x_scale.chunks_mut(mr)).collect();
            team::for_each_mut(&mut blocks, |b, (words, scales)| {
                quantize(&x[b * mr * k..][..scales.len() * k], words, scales)
            });
        } else {
            quantize(x, &mut words, &mut x_scale);
        }
        let align = if m == 1 { decode_cols } else { w.format.nr };
        // Rows are split only in whole blocks of `mr` (one row never is: see `grid`).
        for_chunks(&mut out[..m * n], dims, Cuts { align, panel: w.format.nr, row_block: mr }, |c| {
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

/// The layer norm fused into a product's activation packing
/// ([`Kernels::matmul_kn_normed`]): `(x - mean) / sqrt(var + eps) * gamma + beta` per row.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl Kernels {
    /// `[m, k]` rows (layer-normed first if `norm` says so) interleaved in blocks of `mr`:
    /// block `b` is `[k][mr]` holding rows `b*mr .. b*mr+mr` (zeros past `m`). Blocks are
    /// packed in parallel when there are enough of them: a serial pack of 512 x 3072 took 2.2 ms,
    /// a quarter of the two-thread product.
    fn pack_rows(&self, x: &[f32], k: usize, mr: usize, norm: Option<Norm>) -> Spare<f32> {
        let m = x.len() / k.max(1);
        let len = m.div_ceil(mr) * mr * k;
        let mut buf = Spare::take(&SPARE_ROWS, len);
        let pack_block = |normed: &mut Vec<f32>, b: usize, block: &mut [f32]| {
            let rows = mr.min(m - b * mr);
            let src = &x[b * mr * k..][..rows * k];
            match norm {
                // One-row blocks (w8a8's and M = 1's normed rows) are the normed row itself.
                Some(Norm { gamma, beta, eps }) if mr == 1 => self.layernorm(src, gamma, beta, eps, block),
                Some(Norm { gamma, beta, eps }) => {
                    normed.resize(rows * k, 0.0);
                    for (row, dst) in src.chunks_exact(k).zip(normed.chunks_exact_mut(k)) {
                        self.layernorm(row, gamma, beta, eps, dst);
                    }
                    interleave(&normed[..rows * k], k, mr, block);
                }
                None => interleave(src, k, mr, block),
            }
        };
        let blocks = &mut buf[..];
        if pack_in_parallel(m * k) {
            team::for_each_chunk_mut(blocks, mr * k, |b, block| {
                NORMED.with_borrow_mut(|normed| pack_block(normed, b, block))
            });
        } else {
            let mut normed = Vec::new();
            blocks.chunks_exact_mut(mr * k).enumerate().for_each(|(b, block)| pack_block(&mut normed, b, block));
        }
        buf
    }
}

/// Whether `values` activations are enough to pack (or quantize) in parallel: below 2^16 the
/// fork costs more than it saves.
fn pack_in_parallel(values: usize) -> bool {
    values >= 1 << 16 && team::threads() > 1
}

/// Largest buffer (elements) a thread keeps for its next product.
const SPARE_MAX: usize = 8 << 20;

thread_local! {
    /// This thread's packed-rows buffer between products: a fresh multi-MiB allocation per
    /// product costs page faults or a memset.
    static SPARE_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The same for `w8a8`'s quantized activation words.
    static SPARE_WORDS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// A block's layer-normed rows before they are interleaved (a parallel pack's scratch).
    static NORMED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The first `len` values of a buffer borrowed from one of this thread's spares, handed back
/// when dropped. Its contents are stale: the user writes every value it reads.
struct Spare<T: 'static> {
    buf: Vec<T>,
    len: usize,
    home: &'static LocalKey<RefCell<Vec<T>>>,
}

impl<T: Copy + Default> Spare<T> {
    fn take(home: &'static LocalKey<RefCell<Vec<T>>>, len: usize) -> Self {
        let mut buf = home.with(|c| c.take());
        if buf.len() < len {
            // Grows to the largest product's size once; smaller products reuse it, no memset.
            buf.resize(len, T::default());
        }
        Spare { buf, len, home }
    }
}

impl<T> std::ops::Deref for Spare<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T> std::ops::DerefMut for Spare<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T> Drop for Spare<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() <= SPARE_MAX {
            self.home.with(|c| c.replace(buf));
        }
    }
}

/// `block[kk * mr + r] = src[r * k + kk]` for the rows of `src` (`[rows, k]`, `rows <= mr`),
/// zeros past them. One k at a time: the writes are contiguous and the `rows` source lines stay
/// in L1 (row by row, a block deeper than L1 missed on every store).
fn interleave(src: &[f32], k: usize, mr: usize, block: &mut [f32]) {
    let rows = src.len() / k;
    for (kk, d) in block.chunks_exact_mut(mr).enumerate() {
        for (r, v) in d[..rows].iter_mut().enumerate() {
            *v = src[r * k + kk];
        }
        d[rows..].fill(0.0);
    }
}

/// How a product's output may be cut into chunks: columns at multiples of `align` (the tile
/// width the kernel prefers: several panels for one row), or of `panel` when that leaves
/// threads idle; rows at multiples of `row_block` (the packed activations' block height; 0:
/// rows are not split).
#[derive(Clone, Copy)]
struct Cuts {
    align: usize,
    panel: usize,
    row_block: usize,
}

/// One chunk of a product's output: its first row and column, and its rows' sub-slices.
struct Chunk<'a> {
    row0: usize,
    col0: usize,
    rows: Vec<&'a mut [f32]>,
}

/// Splits `out` (`[m, n]` row-major) into a grid of chunks and hands each to `f`, in parallel
/// when the product is big enough. Columns are cut first (each weight panel is then read by
/// one thread); rows too when there are too few columns to keep every thread busy (many cores,
/// a narrow product: 768 columns are 24 panels of 32 for 16 threads). Chunk boundaries never
/// change the arithmetic (see the batch-invariance contract in `ops/matmul.rs`).
fn for_chunks(out: &mut [f32], dims: Dims, cuts: Cuts, f: impl Fn(&mut Chunk) + Sync) {
    let Dims { m, k, n } = dims;
    if m == 0 || n == 0 {
        return;
    }
    let threads = team::threads();
    let (width, height) = if m * n * k < PAR_MIN_FLOPS || threads == 1 { (n, m) } else { grid(m, n, threads, cuts) };
    let cols = n.div_ceil(width);
    let mut chunks: Vec<Chunk> = (0..m.div_ceil(height) * cols)
        .map(|c| Chunk { row0: c / cols * height, col0: c % cols * width, rows: Vec::with_capacity(height.min(m)) })
        .collect();
    for (r, row) in out.chunks_mut(n).enumerate() {
        for (c, piece) in row.chunks_mut(width).enumerate() {
            chunks[r / height * cols + c].rows.push(piece);
        }
    }
    team::for_each_mut(&mut chunks, |_, c| f(c));
}

/// `(columns, rows)` of each chunk for `threads` threads: about four chunks a thread (so a
/// late thread costs little) of at least `MIN_CHUNK` columns, `align`-wide; narrower (whole
/// panels) when whole decode tiles would leave threads without a chunk; and groups of rows
/// when the columns alone give too few chunks.
fn grid(m: usize, n: usize, threads: usize, cuts: Cuts) -> (usize, usize) {
    let Cuts { align, panel, row_block } = cuts;
    let target = threads * 4;
    let width_for = |a: usize| n.div_ceil(target.min(n.div_ceil(MIN_CHUNK))).div_ceil(a) * a;
    let mut width = width_for(align);
    if n.div_ceil(width) < threads {
        width = width_for(panel);
    }
    let cols = n.div_ceil(width);
    if row_block == 0 || cols >= 2 * threads {
        return (width, m);
    }
    // Every group of rows reads all its panels' weights again: `MIN_GROUP_ROWS` or more each, on average.
    let blocks = m.div_ceil(row_block);
    match blocks.min(target.div_ceil(cols)).min(m / MIN_GROUP_ROWS) {
        0 | 1 => (width, m),
        groups => (width, blocks.div_ceil(groups) * row_block),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AVX-512's shapes: 32-column panels, decode tiles of 128 columns, blocks of up to 12 rows.
    fn cuts(m: usize) -> Cuts {
        let row_block = if m > 1 { balanced_tile(m, 12) } else { 0 };
        Cuts { align: if m == 1 { 128 } else { 32 }, panel: 32, row_block }
    }

    fn chunks(m: usize, n: usize, threads: usize) -> usize {
        let (w, h) = grid(m, n, threads, cuts(m));
        n.div_ceil(w) * m.div_ceil(h)
    }

    #[test]
    fn two_threads_cut_gpt2_products_by_columns_only() {
        for n in [768, 2304, 3072, 50257] {
            for m in [1, 8, 32, 512] {
                let (w, h) = grid(m, n, 2, cuts(m));
                assert_eq!(h, m, "M = {m}, N = {n}");
                assert!(n.div_ceil(w) >= 6, "M = {m}, N = {n}: {} column chunks", n.div_ceil(w));
                // As before the grid could cut rows: about eight chunks, of whole decode tiles
                // for one row.
                let align = cuts(m).align;
                assert_eq!(w, n.div_ceil(8.min(n.div_ceil(64))).div_ceil(align) * align);
            }
        }
    }

    #[test]
    fn sixteen_threads_get_work_from_narrow_products() {
        // 768 columns are 24 panels: one row drops to two-panel chunks, more rows add row groups.
        assert_eq!(grid(1, 768, 16, cuts(1)), (64, 1));
        // 72 panels make 18 decode tiles: enough to keep whole tiles.
        assert_eq!(grid(1, 2304, 16, cuts(1)), (128, 1));
        assert_eq!(grid(32, 768, 16, cuts(32)), (64, 32));
        assert_eq!(chunks(128, 768, 16), 24);
        assert_eq!(chunks(512, 768, 16), 72);
        // Wide products are cut by columns only.
        assert_eq!(grid(512, 3072, 16, cuts(512)).1, 512);
        // Row groups are whole blocks (here 17 blocks of 12 rows: 6, 6 and 5 of them), and
        // none is cut below 64 rows.
        assert_eq!(grid(200, 96, 16, cuts(200)), (64, 72));
        assert_eq!(grid(127, 96, 16, cuts(127)).1, 127);
    }
}
