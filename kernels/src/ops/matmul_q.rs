//! The `w8a8` product: `y = (x_q W_q) * w_scale * x_scale (+ b) (+ y)`, with `x` quantized per
//! row (see `quantize_rows`) and `W` packed in `KQ`-deep groups (see [`crate::QFormat`]).
//!
//! The reduction over K is in exact integers, so every output element is independent of M, of
//! the tile it falls in and of the ISA; the float epilogue (convert, weight scale, row scale,
//! bias, GELU, residual) runs in that order for every element. Batch invariance and
//! cross-ISA equality of the integer sums follow.

use super::matmul::{finish_panel, row_blocking, Finish, MAX_VECS};
use crate::simd::{IntDot, Simd};
use crate::MatmulQ;

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
    let s = d.simd();
    let l = D::S::LANES;
    let m = scales.len();
    let groups = k.div_ceil(D::KQ);
    // Whole vectors of the row, then the tail through the same vector code via a padded copy,
    // so every element sees the same arithmetic.
    let padded = (groups * D::KQ).div_ceil(l) * l;
    let mut qf = vec![0.0f32; padded];
    let mut qb = vec![0i8; padded];
    let mut row_words = vec![0i32; groups];
    for r in 0..m {
        qf[..k].copy_from_slice(&x[r * k..][..k]);
        qf[k..].iter_mut().for_each(|v| *v = 0.0);
        let (mut amax, mut poison) = (s.zero(), s.zero());
        for c in qf.chunks_exact(l) {
            let v = s.load(c);
            amax = s.max(amax, s.max(v, s.sub(s.zero(), v)));
            // `max` drops NaNs; `v * 0` keeps NaN and turns infinities into NaN.
            poison = s.add(poison, s.mul(v, s.zero()));
        }
        let amax = s.hmax(amax);
        let (scale, inv) = if s.hsum(poison).is_nan() {
            // A non-finite input poisons its row's outputs, as it would in an f32 product.
            (f32::NAN, 0.0)
        } else if amax > 0.0 {
            (amax / 127.0, 127.0 / amax)
        } else {
            (0.0, 0.0)
        };
        scales[r] = scale;
        let (inv, lo, hi) = (s.splat(inv), s.splat(-127.0), s.splat(127.0));
        for c in qf.chunks_exact_mut(l) {
            let v = s.min(s.max(s.round(s.mul(s.load(c), inv)), lo), hi);
            s.store(c, v);
        }
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
    if mr > 0 {
        for r in m..m.next_multiple_of(mr) {
            let block = &mut words[r / mr * mr * groups..][..mr * groups];
            block.iter_mut().skip(r % mr).step_by(mr).for_each(|w| *w = 0);
        }
    }
}

/// `C`: vectors per panel row (`NR = C * LANES`); `MR`: rows per register tile; `Q1`: vectors
/// per row of the one-row (decode) tile, a multiple of `C`: it walks `Q1 / C` panels at once so
/// enough accumulators hide the instruction latency.
#[inline(always)]
pub fn matmul_q<D: IntDot, const C: usize, const MR: usize, const Q1: usize>(
    d: D,
    a: &MatmulQ,
    out: &mut [&mut [f32]],
) {
    let m = out.len();
    let nr = C * D::S::LANES;
    let width = out.first().map_or(0, |r| r.len());
    let (mr, mc) = row_blocking::<MR>(a.x_mr, MC_BYTES / (4 * a.groups.max(1)), m);
    for mc0 in (0..m).step_by(mc) {
        let mc_end = (mc0 + mc).min(m);
        let mut j = 0;
        if mc_end - mc0 == 1 {
            while j + Q1 / C * nr <= width {
                q_tile::<D, C, 1, Q1>(d, a, out, mc0, j);
                j += Q1 / C * nr;
            }
        }
        for j in (j..width).step_by(nr) {
            let mut r0 = mc0;
            while r0 < mc_end {
                let rows = (mc_end - r0).min(mr);
                match rows {
                    12 => q_tile::<D, C, 12, C>(d, a, out, r0, j),
                    11 => q_tile::<D, C, 11, C>(d, a, out, r0, j),
                    10 => q_tile::<D, C, 10, C>(d, a, out, r0, j),
                    9 => q_tile::<D, C, 9, C>(d, a, out, r0, j),
                    8 => q_tile::<D, C, 8, C>(d, a, out, r0, j),
                    7 => q_tile::<D, C, 7, C>(d, a, out, r0, j),
                    6 => q_tile::<D, C, 6, C>(d, a, out, r0, j),
                    5 => q_tile::<D, C, 5, C>(d, a, out, r0, j),
                    4 => q_tile::<D, C, 4, C>(d, a, out, r0, j),
                    3 => q_tile::<D, C, 3, C>(d, a, out, r0, j),
                    2 => q_tile::<D, C, 2, C>(d, a, out, r0, j),
                    _ => q_tile::<D, C, 1, C>(d, a, out, r0, j),
                }
                r0 += rows;
            }
        }
    }
}

/// `R` rows times `Q / C` consecutive panels (`Q` accumulator vectors per row).
#[inline(always)]
fn q_tile<D: IntDot, const C: usize, const R: usize, const Q: usize>(
    d: D,
    a: &MatmulQ,
    out: &mut [&mut [f32]],
    r0: usize,
    j: usize,
) {
    let l = D::S::LANES;
    let (nr, kq, g) = (C * l, D::KQ, a.groups);
    let panel_len = g * nr * kq;
    let first = (a.col0 + j) / nr;
    let p_count = Q / C;
    let w = &a.w[first * panel_len..][..p_count * panel_len];
    let (xb, xs) = match a.x_mr {
        0 => (&a.x[r0 * g..][..g * R], 1),
        mr => (&a.x[r0 / mr * mr * g..][..mr * g], mr),
    };
    debug_assert!(a.x_mr == 0 && R == 1 || a.x_mr > 0 && r0.is_multiple_of(a.x_mr));
    assert!(xs >= R && xb.len() >= g * xs);
    let step = nr * kq;
    let ahead = PREFETCH_BYTES / step * step;
    let mut acc = [[d.izero(); Q]; R];
    // Zipped chunk iterators make the first panel's and the activations' indices provably in
    // bounds: a bounds check (and its panic path) in this loop makes LLVM spill the
    // accumulators on every group.
    let groups = w[..panel_len].chunks_exact(step).zip(xb.chunks_exact(xs));
    for (gi, (row0, xk)) in groups.enumerate() {
        if R == 1 {
            for p in 0..p_count {
                for line in (0..step).step_by(64) {
                    d.simd().prefetch(w, p * panel_len + gi * step + ahead + line);
                }
            }
        }
        let mut wv = [d.izero(); Q];
        for q in 0..Q {
            let (p, c) = (q / C, q % C);
            wv[q] = if p == 0 {
                d.load_q(&row0[c * l * kq..])
            } else {
                d.load_q(&w[p * panel_len + gi * step + c * l * kq..])
            };
        }
        for r in 0..R {
            let x = xk[r];
            for q in 0..Q {
                acc[r][q] = d.dot_q(acc[r][q], x, wv[q]);
            }
        }
    }
    for r in 0..R {
        let sx = a.x_scale[r0 + r];
        for p in 0..p_count {
            store_q(d, a, out[r0 + r], j + p * nr, &acc[r][p * C..(p + 1) * C], sx);
        }
    }
}

/// Epilogue of one row of one panel: `gelu?((acc - corr) * w_scale * x_scale + bias) (+ out)`.
#[inline(always)]
fn store_q<D: IntDot>(d: D, a: &MatmulQ, out: &mut [f32], j: usize, acc: &[D::I], sx: f32) {
    let s = d.simd();
    let l = D::S::LANES;
    let col = a.col0 + j;
    let mut vals = [s.zero(); MAX_VECS];
    for c in 0..acc.len() {
        let v = d.to_f32(acc[c], &a.corr[col + c * l..]);
        vals[c] = s.mul(s.mul(v, s.load(&a.w_scale[col + c * l..])), s.splat(sx));
    }
    let f = Finish { bias: a.bias, gelu: a.gelu, accumulate: a.accumulate };
    finish_panel(s, f, out, j, col, &vals[..acc.len()]);
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
