//! The `w8a8` product: `y = (x_q W_q) * w_scale * x_scale (+ b) (+ y)`, with `x` quantized per
//! row (see `quantize_rows`) and `W` packed in `KQ`-deep groups (see [`crate::QFormat`]).
//!
//! The reduction over K is in exact integers, so every output element is independent of M, of
//! the tile it falls in and of the ISA; the float epilogue (convert, weight scale, row scale,
//! bias, GELU, residual) runs in that order for every element. Batch invariance and
//! cross-ISA equality of the integer sums follow.

use super::matmul::{finish_panel, walk_tiles, At, Finish, LookAhead, Tiles, Walk, MAX_VECS};
use super::with_tile_rows;
use crate::simd::{IntDot, IntDot24, Simd};
use crate::MatmulQ;
use std::marker::PhantomData;

/// Bytes of packed activation words kept resident in L2 while the panels pass by.
const MC_BYTES: usize = 256 << 10;

/// How far ahead (bytes) a one-row tile prefetches each panel stream.
const PREFETCH_BYTES: usize = 1024;

/// Quantizes the `[m, k]` rows of `x` to int8 (symmetric: `scale = max |x| / 127`, values
/// `x * (127 / max |x|)` rounded to nearest, ties to even) and packs them as `IntDot` words:
/// row-major when `mr == 0`, else in blocks of `mr` rows (the last block's rows past `m`
/// zeroed: `words` may be a reused buffer). Writes each row's scale.
#[inline(always)]
pub fn quantize_rows<D: IntDot>(d: D, x: &[f32], k: usize, mr: usize, words: &mut [i32], scales: &mut [f32]) {
    let l = D::S::LANES;
    let m = scales.len();
    let groups = k.div_ceil(D::KQ);
    let padded = (groups * D::KQ).div_ceil(l) * l;
    let mut qf = vec![0.0f32; padded];
    let mut qb = vec![0i8; padded];
    let mut row_words = vec![0i32; groups];
    for r in 0..m {
        scales[r] = quantize_row(d.simd(), &x[r * k..][..k], 127.0, &mut qf);
        // Every value is an integer in -127..=127: adding 1.5 * 2^23 puts it, two's complement,
        // in the low mantissa bits (exact). A loop LLVM vectorises, where `as i8`'s saturating
        // conversion compiles to scalar code.
        for (b, &v) in qb.iter_mut().zip(&qf) {
            *b = ((v + 12_582_912.0).to_bits() as i32 - 0x4B40_0000) as i8;
        }
        d.act_words(&qb[..groups * D::KQ], &mut row_words);
        match mr {
            0 => words[r * groups..][..groups].copy_from_slice(&row_words),
            _ => {
                let block = &mut words[r / mr * mr * groups..][..mr * groups];
                for (g, &w) in row_words.iter().enumerate() {
                    block[g * mr + r % mr] = w;
                }
            }
        }
    }
    zero_rows_past(m, mr, groups, 1, words);
}

/// Largest magnitude of a 24-bit activation (`2^23 - 1`).
const A24: f32 = 8_388_607.0;

/// Words per row per group of the 24-bit activations: three digit words and a zero one, so
/// a group's words are one 16-byte store.
pub const WORDS24: usize = 4;

/// Quantizes the `[m, k]` rows of `x` to 24-bit integers for the `int8` products of an
/// [`IntDot24`] (symmetric: `scale = max |x| / (2^23 - 1)`, values rounded to nearest, ties to
/// even), offset by 2^23 into `0..2^24` and split into three byte digits. Words: blocks of
/// `mr` rows (`mr >= 1`), each `[groups][mr][WORDS24]`, zeros for rows past `m`. Writes each
/// row's scale.
#[inline(always)]
pub fn quantize_rows24<D: IntDot24>(d: D, x: &[f32], k: usize, mr: usize, words: &mut [i32], scales: &mut [f32]) {
    debug_assert!(D::KQ == 4 && mr > 0);
    let l = D::S::LANES;
    let m = scales.len();
    let groups = k.div_ceil(D::KQ);
    let padded = (groups * D::KQ).div_ceil(l) * l;
    let mut qf = vec![0.0f32; padded];
    let mut row_words = vec![0i32; if mr > 1 { groups * WORDS24 } else { 0 }];
    let len = groups * WORDS24;
    for r in 0..m {
        scales[r] = quantize_row(d.simd(), &x[r * k..][..k], A24, &mut qf);
        let q = &qf[..groups * D::KQ];
        if mr == 1 {
            // A block of one row is the row's words as they come.
            d.digit_words(q, &mut words[r * len..][..len]);
            continue;
        }
        d.digit_words(q, &mut row_words);
        let block = &mut words[r / mr * mr * len..][..mr * len];
        for (g, w) in row_words.chunks_exact(WORDS24).enumerate() {
            block[(g * mr + r % mr) * WORDS24..][..WORDS24].copy_from_slice(w);
        }
    }
    zero_rows_past(m, mr, groups * WORDS24, WORDS24, words);
}

/// Zeros the words of the last block's rows past `m` (`words` may be a reused buffer); `len`
/// words per row, in runs of `run` (`[len / run][mr][run]` per block).
#[inline(always)]
fn zero_rows_past(m: usize, mr: usize, len: usize, run: usize, words: &mut [i32]) {
    if mr == 0 {
        return;
    }
    for r in m..m.next_multiple_of(mr) {
        let block = &mut words[r / mr * mr * len..][..mr * len];
        for g in 0..len / run {
            block[(g * mr + r % mr) * run..][..run].fill(0);
        }
    }
}

/// Quantizes one row: writes `round(x * qmax / max |x|)` (ties to even, clamped to `+-qmax`)
/// to the first `x.len()` values of `qf` and zeros past them; returns the row's scale
/// (`max |x| / qmax`; NaN if the row holds a NaN or an infinity, so that row's outputs are NaN
/// as in an f32 product).
#[inline(always)]
pub(super) fn quantize_row<S: Simd>(s: S, x: &[f32], qmax: f32, qf: &mut [f32]) -> f32 {
    let l = S::LANES;
    // Whole vectors of the row, then the tail through the same vector code via a padded copy,
    // so every element sees the same arithmetic.
    qf[..x.len()].copy_from_slice(x);
    qf[x.len()..].iter_mut().for_each(|v| *v = 0.0);
    let (mut amax, mut poison) = (s.zero(), s.zero());
    for c in qf.chunks_exact(l) {
        let v = s.load(c);
        amax = s.max(amax, s.max(v, s.sub(s.zero(), v)));
        // `max` drops NaNs; `v * 0` keeps NaN and turns infinities into NaN.
        poison = s.add(poison, s.mul(v, s.zero()));
    }
    let amax = s.hmax(amax);
    let (scale, inv) = if s.hsum(poison).is_nan() {
        (f32::NAN, 0.0)
    } else if amax > 0.0 {
        (amax / qmax, qmax / amax)
    } else {
        (0.0, 0.0)
    };
    let (inv, lo, hi) = (s.splat(inv), s.splat(-qmax), s.splat(qmax));
    for c in qf.chunks_exact_mut(l) {
        let v = s.min(s.max(s.round(s.mul(s.load(c), inv)), lo), hi);
        s.store(c, v);
    }
    scale
}

/// `C`: vectors per panel row (`NR = C * LANES`); `MR`: rows per register tile; `Q1`: vectors
/// per row of the one-row (decode) tile, a multiple of `C`: it walks `Q1 / C` panels at once so
/// enough accumulators hide the instruction latency. `K`: how the activations were quantized
/// ([`Bytes`]: `w8a8`; [`Digits`]: `int8`).
///
/// Loop order (BLIS names, as in `matmul.rs`): blocks of rows whose activation words stay in
/// L2; in each, the panels; down each panel, the register tiles.
#[inline(always)]
pub fn matmul_q<D: IntDot, K: Acts<D>, const C: usize, const MR: usize, const Q1: usize>(
    d: D,
    a: &MatmulQ,
    out: &mut [&mut [f32]],
) {
    let nr = C * D::S::LANES;
    let budget_rows = MC_BYTES / (4 * K::RUN * a.groups.max(1));
    let walk = Walk { nr, decode_cols: [Q1 / C * nr, 0], x_mr: a.x_mr, budget_rows };
    let tiles = QTiles::<D, K, C, Q1> { d, a, acts: PhantomData };
    walk_tiles::<_, MR>(&tiles, walk, out)
}

/// The integer tiles of one product, as [`walk_tiles`] drives them.
struct QTiles<'a, D, K, const C: usize, const Q1: usize> {
    d: D,
    a: &'a MatmulQ<'a>,
    acts: PhantomData<K>,
}

impl<D: IntDot, K: Acts<D>, const C: usize, const Q1: usize> Tiles for QTiles<'_, D, K, C, Q1> {
    #[inline(always)]
    fn tile(&self, out: &mut [&mut [f32]], rows: usize, at: At) {
        K::tile::<C>(self.d, self.a, out, rows, at)
    }

    #[inline(always)]
    fn decode(&self, out: &mut [&mut [f32]], _rows: usize, at: At) {
        K::decode_tile::<C, Q1>(self.d, self.a, out, at)
    }
}

/// How a product's activations were quantized, which fixes the accumulators per row, the
/// epilogue's conversion, and the tiles (monomorphised per variant: a closure would not
/// inherit the caller's `#[target_feature]`s).
pub trait Acts<D: IntDot> {
    /// Accumulator rows per row of the product.
    const DG: usize;
    /// Activation words per row and group.
    const RUN: usize;
    /// The f32 value of one output from its `DG` accumulators.
    fn to_f32(d: D, acc: &[D::I], corr: &[i32]) -> <D::S as Simd>::V;
    /// The tile of `rows` rows over one panel.
    fn tile<const C: usize>(d: D, a: &MatmulQ, out: &mut [&mut [f32]], rows: usize, at: At);
    /// The one-row tile over `Q1 / C` panels.
    fn decode_tile<const C: usize, const Q1: usize>(d: D, a: &MatmulQ, out: &mut [&mut [f32]], at: At);
}

/// `w8a8`: one activation byte per k ([`quantize_rows`]).
pub struct Bytes;

impl<D: IntDot> Acts<D> for Bytes {
    const DG: usize = 1;
    const RUN: usize = 1;

    #[inline(always)]
    fn to_f32(d: D, acc: &[D::I], corr: &[i32]) -> <D::S as Simd>::V {
        d.to_f32(acc[0], corr)
    }

    #[inline(always)]
    fn tile<const C: usize>(d: D, a: &MatmulQ, out: &mut [&mut [f32]], rows: usize, at: At) {
        with_tile_rows!(rows, R => row_tile::<D, Self, C, R>(d, a, out, at))
    }

    #[inline(always)]
    fn decode_tile<const C: usize, const Q1: usize>(d: D, a: &MatmulQ, out: &mut [&mut [f32]], at: At) {
        q_tile::<D, Self, C, 1, Q1, false>(d, a, out, at)
    }
}

/// `int8` on an [`IntDot24`]: 24-bit activations as three byte digits per k
/// ([`quantize_rows24`]), one accumulator row each, combined exactly in the epilogue. Tiles of
/// up to 4 rows (12 accumulator rows).
pub struct Digits;

impl<D: IntDot24> Acts<D> for Digits {
    const DG: usize = 3;
    const RUN: usize = WORDS24;

    #[inline(always)]
    fn to_f32(d: D, acc: &[D::I], corr: &[i32]) -> <D::S as Simd>::V {
        d.combine24(acc[0], acc[1], acc[2], corr)
    }

    #[inline(always)]
    fn tile<const C: usize>(d: D, a: &MatmulQ, out: &mut [&mut [f32]], rows: usize, at: At) {
        match rows {
            4 => row_tile::<D, Self, C, 12>(d, a, out, at),
            3 => row_tile::<D, Self, C, 9>(d, a, out, at),
            2 => row_tile::<D, Self, C, 6>(d, a, out, at),
            _ => row_tile::<D, Self, C, 3>(d, a, out, at),
        }
    }

    #[inline(always)]
    fn decode_tile<const C: usize, const Q1: usize>(d: D, a: &MatmulQ, out: &mut [&mut [f32]], at: At) {
        q_tile::<D, Self, C, 3, Q1, false>(d, a, out, at)
    }
}

/// A row tile over one panel, with its look-ahead mode as a constant: the two loops in one
/// function made LLVM store the 24 accumulators of the 12-row tiles to the stack every group.
#[inline(always)]
fn row_tile<D: IntDot, K: Acts<D>, const C: usize, const R: usize>(d: D, a: &MatmulQ, out: &mut [&mut [f32]], at: At) {
    match at.ahead {
        LookAhead::Stream => q_tile::<D, K, C, R, C, false>(d, a, out, at),
        LookAhead::Spread { .. } => q_tile::<D, K, C, R, C, true>(d, a, out, at),
    }
}

/// `R / K::DG` rows from row `at.r0` times `Q / C` consecutive panels from column `at.j`: `R`
/// rows of `Q` accumulator vectors.
#[inline(always)]
fn q_tile<D: IntDot, K: Acts<D>, const C: usize, const R: usize, const Q: usize, const SPREAD: bool>(
    d: D,
    a: &MatmulQ,
    out: &mut [&mut [f32]],
    at: At,
) {
    let At { r0, j, ahead: look_ahead } = at;
    let l = D::S::LANES;
    let (nr, kq, g) = (C * l, D::KQ, a.groups);
    let (dg, run) = (K::DG, K::RUN);
    let panel_len = g * nr * kq;
    let first = (a.col0 + j) / nr;
    let p_count = Q / C;
    let w = &a.w[first * panel_len..][..p_count * panel_len];
    let (xb, xs) = match a.x_mr {
        0 => (&a.x[r0 * g..][..g * R], 1),
        mr => (&a.x[r0 / mr * mr * g * run..][..mr * g * run], mr * run),
    };
    debug_assert!(a.x_mr == 0 && R == 1 || a.x_mr > 0 && r0.is_multiple_of(a.x_mr));
    assert!(R.is_multiple_of(dg) && xs >= R / dg * run && xb.len() >= g * xs);
    let step = nr * kq;
    let ahead = PREFETCH_BYTES / step * step;
    let mut acc = [[d.izero(); Q]; R];
    // Zipped chunk iterators make the first panel's and the activations' indices provably in
    // bounds: a bounds check (and its panic path) in this loop makes LLVM spill the
    // accumulators on every group.
    let groups = w[..panel_len].chunks_exact(step).zip(xb.chunks_exact(xs));
    // As in the float tiles (`matmul.rs`): the only tile over its panels streams them ahead of
    // use; several share the fetch of the next panel, spread over the current one's groups.
    // Decided once, outside the group loop.
    match look_ahead {
        LookAhead::Stream if !SPREAD => {
            for (gi, (row0, xk)) in groups.enumerate() {
                for p in 0..p_count {
                    for line in (0..step).step_by(64) {
                        d.simd().prefetch(w, p * panel_len + gi * step + ahead + line);
                    }
                }
                // SAFETY: `gi < g` (a group of the panel) and all `p_count` panels lie in `w`.
                acc = unsafe { q_step::<D, K, C, R, Q>(d, acc, (row0, xk), w, gi * step, panel_len) };
            }
        }
        LookAhead::Spread { t, tiles } if SPREAD => {
            // A running counter, not `gi % tiles`: a division per group costs more than its dots.
            let mut next_fetch = t;
            for (gi, (row0, xk)) in groups.enumerate() {
                if gi == next_fetch {
                    for line in (0..step).step_by(64) {
                        d.simd().prefetch(a.w, (first + 1) * panel_len + gi * step + line);
                    }
                    next_fetch += tiles;
                }
                // SAFETY: `gi < g` (a group of the panel) and all `p_count` panels lie in `w`.
                acc = unsafe { q_step::<D, K, C, R, Q>(d, acc, (row0, xk), w, gi * step, panel_len) };
            }
        }
        _ => unreachable!("row_tile passes SPREAD as the look-ahead says"),
    }
    let s = d.simd();
    for r in 0..R / dg {
        let sx = a.x_scale[r0 + r];
        for p in 0..p_count {
            let col = a.col0 + j + p * nr;
            let mut vals = [s.zero(); MAX_VECS];
            for c in 0..C {
                let mut digits = [d.izero(); 3];
                for i in 0..dg {
                    digits[i] = acc[r * dg + i][p * C + c];
                }
                vals[c] = K::to_f32(d, &digits[..dg], &a.corr[col + c * l..]);
            }
            store_q(d, a, out[r0 + r], j + p * nr, &vals[..C], sx);
        }
    }
}

/// One group of a tile: `acc[r][q] + x[r] . w[q]` for the `Q` weight vectors of this group
/// (panel 0's from `row0`, the others `panel_len` apart in `w` from `at`, the start of panel
/// 0's group) and the tile's activation words `xk` (row `r / DG`'s word `r % DG`).
///
/// # Safety
/// `at` is the start of a group of a panel, and the `Q / C - 1` panels after it lie in `w`:
/// `at + (Q / C - 1) * panel_len + C * LANES * KQ <= w.len()`. (Bounds-checked, those loads
/// cost the one-row tile a compare and branch each per group.)
#[inline(always)]
unsafe fn q_step<D: IntDot, K: Acts<D>, const C: usize, const R: usize, const Q: usize>(
    d: D,
    mut acc: [[D::I; Q]; R],
    (row0, xk): (&[i8], &[i32]),
    w: &[i8],
    at: usize,
    panel_len: usize,
) -> [[D::I; Q]; R] {
    let (l, kq) = (D::S::LANES, D::KQ);
    let (dg, run) = (K::DG, K::RUN);
    let mut wv = [d.izero(); Q];
    for q in 0..Q {
        let (p, c) = (q / C, q % C);
        wv[q] = if p == 0 {
            d.load_q(&row0[c * l * kq..])
        } else {
            let i = at + p * panel_len + c * l * kq;
            // SAFETY: `i + l * kq <= at + p * panel_len + C * l * kq <= w.len()` (the caller's
            // contract).
            d.load_q(unsafe { w.get_unchecked(i..i + l * kq) })
        };
    }
    for r in 0..R {
        let x = xk[r / dg * run + r % dg];
        for q in 0..Q {
            acc[r][q] = d.dot_q(acc[r][q], x, wv[q]);
        }
    }
    acc
}

/// Epilogue of one row of one panel (`vals`: its integer sums as f32, correction applied):
/// `gelu?(vals * w_scale * x_scale + bias) (+ out)`.
#[inline(always)]
fn store_q<D: IntDot>(d: D, a: &MatmulQ, out: &mut [f32], j: usize, vals: &[<D::S as Simd>::V], sx: f32) {
    let s = d.simd();
    let l = D::S::LANES;
    let col = a.col0 + j;
    let mut scaled = [s.zero(); MAX_VECS];
    for c in 0..vals.len() {
        scaled[c] = s.mul(s.mul(vals[c], s.load(&a.w_scale[col + c * l..])), s.splat(sx));
    }
    let f = Finish { bias: a.bias, gelu: a.gelu, accumulate: a.accumulate };
    finish_panel(s, f, out, j, col, &scaled[..vals.len()]);
}

/// Runs `iters` rounds of 12 independent integer-dot chains on one thread: the peak probe of
/// `inferneo roofline` for `w8a8` (multiply-adds per round: `12 * LANES * KQ`).
#[inline(always)]
pub fn dot_probe<D: IntDot>(d: D, iters: usize, seed: i32) -> f32 {
    let bytes: [i8; 64] = std::array::from_fn(|i| (i as i8).wrapping_mul(7) & 0x3f);
    let mut acc = [d.load_q(&bytes); 12];
    for _ in 0..iters {
        for i in 0..12 {
            // The chain's own value as the weights: with a loop-invariant weight vector LLVM
            // hoisted AVX2's `vpmaddwd` out of the loop (it does not accumulate), and the probe
            // timed the adds alone (3x the real peak). Wrapping sums are fine here.
            acc[i] = d.dot_q(acc[i], seed, acc[i]);
        }
    }
    let s = d.simd();
    let zeros = [0i32; 16];
    let mut total = s.zero();
    for i in 0..12 {
        total = s.add(total, d.to_f32(acc[i], &zeros));
    }
    s.hsum(total)
}
