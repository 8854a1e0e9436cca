//! The `w4a8` product: `y = (sum over groups g of dot_g * w_scale[g]) * x_scale (+ b) (+ y)`,
//! `x` quantized per row to int8 exactly as `w8a8` does (`matmul_q::quantize_row`), `W` 4-bit
//! in groups of [`W4_GROUP`] k per column (see `pack_w4.rs`).
//!
//! Each group's dot product is an exact integer; the float work is, per output element and in
//! group order, `acc = acc + (dot_g as f32) * w_scale[g]` (a multiply then an add, never fused:
//! the scalar ISA has no FMA to match), then `acc * x_scale`, then the shared epilogue. The
//! oracle `reference::matmul_w4a8` does the same operations in the same order, so every ISA
//! matches it bit for bit, and no result depends on M, the tile or the thread split.

use super::matmul::{finish_panel, walk_tiles, At, Finish, LookAhead, Tiles, Walk, MAX_VECS};
use super::matmul_q::quantize_row;
use crate::pack_w4::{group_bytes, W4_GROUP, W4_KQ, W4_OFFSET};
use crate::simd::{Simd, W4Dot};
use crate::MatmulW4;

/// Words per row and group in the packed activations: the group's 8 activation words (4 k
/// each), then its correction `W4_OFFSET * sum(x_q)`.
pub const W4_RUN: usize = W4_GROUP / W4_KQ + 1;

/// Bytes of packed activation words kept resident in L2 while the panels pass by.
const MC_BYTES: usize = 256 << 10;

/// How far ahead (bytes) a one-row tile prefetches each panel's weight stream.
const PREFETCH_BYTES: usize = 1024;

/// Quantizes the `[m, k]` rows of `x` to int8 as `w8a8` does (`scale = max |x| / 127`, ties to
/// even) and packs them as [`MatmulW4::x`] wants: per group of [`W4_GROUP`] k (the last padded
/// with zeros), 8 little-endian words of 4 values and the correction `W4_OFFSET * sum`;
/// row-major when `mr == 0`, else in blocks of `mr` rows, each `[groups][W4_RUN][mr]` (rows
/// past `m` zeroed: `words` may be a reused buffer). Writes each row's scale.
#[inline(always)]
pub fn quantize_rows_w4<S: Simd>(s: S, x: &[f32], k: usize, mr: usize, words: &mut [i32], scales: &mut [f32]) {
    let m = scales.len();
    let groups = k.div_ceil(W4_GROUP);
    // Whole groups are whole vectors (32 is a multiple of every ISA's lanes).
    let padded = groups * W4_GROUP;
    let mut qf = vec![0.0f32; padded];
    let mut qb = vec![0i8; padded];
    let mut row = vec![0i32; groups * W4_RUN];
    let len = groups * W4_RUN;
    for r in 0..m {
        scales[r] = quantize_row(s, &x[r * k..][..k], 127.0, &mut qf);
        // Integers in -127..=127 to bytes, as `matmul_q::quantize_rows` does.
        for (b, &v) in qb.iter_mut().zip(&qf) {
            *b = ((v + 12_582_912.0).to_bits() as i32 - 0x4B40_0000) as i8;
        }
        for (run, vals) in row.chunks_exact_mut(W4_RUN).zip(qb.chunks_exact(W4_GROUP)) {
            for (w, q) in run.iter_mut().zip(vals.chunks_exact(W4_KQ)) {
                *w = i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]);
            }
            run[W4_RUN - 1] = W4_OFFSET * vals.iter().map(|&v| v as i32).sum::<i32>();
        }
        match mr {
            0 => words[r * len..][..len].copy_from_slice(&row),
            _ => {
                let block = &mut words[r / mr * mr * len..][..mr * len];
                for (i, &w) in row.iter().enumerate() {
                    block[i * mr + r % mr] = w;
                }
            }
        }
    }
    if mr > 0 {
        for r in m..m.next_multiple_of(mr) {
            let block = &mut words[r / mr * mr * len..][..mr * len];
            for i in 0..len {
                block[i * mr + r % mr] = 0;
            }
        }
    }
}

/// `C`: vectors per panel row (`NR = C * LANES`); `MR`: rows per register tile (at most 6);
/// `Q1`: vectors per row of the one-row (decode) tile, a multiple of `C`: it walks `Q1 / C`
/// panels at once, so several weight streams are in flight and enough accumulators hide the
/// latency.
///
/// Loop order (BLIS names, as in `matmul.rs`): blocks of rows whose activation words stay in
/// L2; in each, the panels; down each panel, the register tiles.
#[inline(always)]
pub fn matmul_w4<D: W4Dot, const C: usize, const MR: usize, const Q1: usize>(
    d: D,
    a: &MatmulW4,
    out: &mut [&mut [f32]],
) {
    const { assert!(MR <= 6, "row_tile instantiates tiles of up to 6 rows") };
    let nr = C * D::S::LANES;
    let budget_rows = MC_BYTES / (4 * W4_RUN * a.groups.max(1));
    let walk = Walk { nr, decode_cols: [Q1 / C * nr, 0], x_mr: a.x_mr, budget_rows };
    walk_tiles::<_, MR>(&W4Tiles::<D, C, Q1> { d, a }, walk, out)
}

/// The 4-bit tiles of one product, as [`walk_tiles`] drives them.
struct W4Tiles<'a, D, const C: usize, const Q1: usize> {
    d: D,
    a: &'a MatmulW4<'a>,
}

impl<D: W4Dot, const C: usize, const Q1: usize> Tiles for W4Tiles<'_, D, C, Q1> {
    #[inline(always)]
    fn tile(&self, out: &mut [&mut [f32]], rows: usize, at: At) {
        let (d, a) = (self.d, self.a);
        match rows {
            6 => row_tile::<D, C, 6>(d, a, out, at),
            5 => row_tile::<D, C, 5>(d, a, out, at),
            4 => row_tile::<D, C, 4>(d, a, out, at),
            3 => row_tile::<D, C, 3>(d, a, out, at),
            2 => row_tile::<D, C, 2>(d, a, out, at),
            _ => row_tile::<D, C, 1>(d, a, out, at),
        }
    }

    #[inline(always)]
    fn decode(&self, out: &mut [&mut [f32]], _rows: usize, at: At) {
        w4_tile::<D, C, 1, Q1, false>(self.d, self.a, out, at)
    }
}

/// A row tile over one panel, its look-ahead mode a constant (as in `matmul_q.rs`: one loop
/// per mode keeps the accumulators in registers).
#[inline(always)]
fn row_tile<D: W4Dot, const C: usize, const R: usize>(d: D, a: &MatmulW4, out: &mut [&mut [f32]], at: At) {
    match at.ahead {
        LookAhead::Stream => w4_tile::<D, C, R, C, false>(d, a, out, at),
        LookAhead::Spread { .. } => w4_tile::<D, C, R, C, true>(d, a, out, at),
    }
}

/// `R` rows from row `at.r0` times `Q / C` consecutive panels from column `at.j`: `R` rows of
/// `Q` f32 accumulators, plus, within each group, `R x Q` integer ones.
#[inline(always)]
fn w4_tile<D: W4Dot, const C: usize, const R: usize, const Q: usize, const SPREAD: bool>(
    d: D,
    a: &MatmulW4,
    out: &mut [&mut [f32]],
    at: At,
) {
    let At { r0, j, ahead: look_ahead } = at;
    let s = d.simd();
    let l = D::S::LANES;
    let (nr, g) = (C * l, a.groups);
    let gb = group_bytes(nr);
    let (panel_len, scale_len) = (g * gb, g * nr);
    let first = (a.col0 + j) / nr;
    let p_count = Q / C;
    let w = &a.w[first * panel_len..][..p_count * panel_len];
    let sc = &a.w_scale[first * scale_len..][..p_count * scale_len];
    let (xb, xs) = match a.x_mr {
        0 => (&a.x[r0 * g * W4_RUN..][..g * W4_RUN], 1),
        mr => (&a.x[r0 / mr * mr * g * W4_RUN..][..mr * g * W4_RUN], mr),
    };
    debug_assert!(a.x_mr == 0 && R == 1 || a.x_mr > 0 && r0.is_multiple_of(a.x_mr));
    assert!(R <= xs);
    let ahead = PREFETCH_BYTES.max(gb) / gb * gb;
    let mut f = [[s.zero(); Q]; R];
    let lens = (panel_len, scale_len);
    // Zipped chunk iterators make the first panel's, its scales' and the activations' indices
    // provably in bounds (a bounds check in this loop makes LLVM spill accumulators).
    let groups =
        w[..panel_len].chunks_exact(gb).zip(sc[..scale_len].chunks_exact(nr)).zip(xb.chunks_exact(W4_RUN * xs));
    match look_ahead {
        LookAhead::Stream if !SPREAD => {
            for (gi, ((w0, s0), xg)) in groups.enumerate() {
                for p in 0..p_count {
                    for line in (0..gb).step_by(64) {
                        s.prefetch(w, p * panel_len + gi * gb + ahead + line);
                    }
                    s.prefetch(sc, p * scale_len + (gi + ahead / gb) * nr);
                }
                // SAFETY: `gi < g` (a group of the panel) and all `p_count` panels lie in `w`
                // and their scales in `sc`.
                f = unsafe { w4_group::<D, C, R, Q>(d, f, (w0, s0, xg), xs, (w, sc), gi, lens) };
            }
        }
        LookAhead::Spread { t, tiles } if SPREAD => {
            // A running counter, not `gi % tiles`: a division per group costs more than it saves.
            let mut next_fetch = t;
            for (gi, ((w0, s0), xg)) in groups.enumerate() {
                if gi == next_fetch {
                    for line in (0..gb).step_by(64) {
                        s.prefetch(a.w, (first + 1) * panel_len + gi * gb + line);
                    }
                    s.prefetch(a.w_scale, (first + 1) * scale_len + gi * nr);
                    next_fetch += tiles;
                }
                // SAFETY: as above.
                f = unsafe { w4_group::<D, C, R, Q>(d, f, (w0, s0, xg), xs, (w, sc), gi, lens) };
            }
        }
        _ => unreachable!("row_tile passes SPREAD as the look-ahead says"),
    }
    for r in 0..R {
        let sx = s.splat(a.x_scale[r0 + r]);
        for p in 0..p_count {
            let mut vals = [s.zero(); MAX_VECS];
            for c in 0..C {
                vals[c] = s.mul(f[r][p * C + c], sx);
            }
            let f = Finish { bias: a.bias, gelu: a.gelu, accumulate: a.accumulate };
            finish_panel(s, f, out[r0 + r], j + p * nr, a.col0 + j + p * nr, &vals[..C]);
        }
    }
}

/// One group of a tile: the `R x Q` integer dot products over its 32 k, then `f[r][q] +=
/// (dot - corr) as f32 * scale` for each. Panel 0's bytes, scales and the tile's activation
/// run come as exact slices (`w0`, `s0`, `xg`: element `(t, r)` at `t * xs + r`); the other
/// panels' are read from `w` and `sc` at `p * panel_len` and `p * scale_len`.
///
/// # Safety
/// Group `gi` of the `Q / C` panels lies in `w` and `sc`: `(Q / C - 1) * panel_len + (gi + 1)
/// * group_bytes(nr) <= w.len()` and `(Q / C - 1) * scale_len + (gi + 1) * nr <= sc.len()`.
#[inline(always)]
#[allow(clippy::type_complexity)]
unsafe fn w4_group<D: W4Dot, const C: usize, const R: usize, const Q: usize>(
    d: D,
    mut f: [[<D::S as Simd>::V; Q]; R],
    (w0, s0, xg): (&[u8], &[f32], &[i32]),
    xs: usize,
    (w, sc): (&[u8], &[f32]),
    gi: usize,
    (panel_len, scale_len): (usize, usize),
) -> [[<D::S as Simd>::V; Q]; R] {
    let s = d.simd();
    let l = D::S::LANES;
    let nr = C * l;
    let (vb, gb) = (l * W4_KQ, group_bytes(nr));
    let mut acc = [[d.pzero(); Q]; R];
    for pair in 0..W4_GROUP / (2 * W4_KQ) {
        for q in 0..Q {
            let (p, c) = (q / C, q % C);
            let off = pair * nr * W4_KQ + c * vb;
            let (lo, hi) = if p == 0 {
                d.load_w4(&w0[off..])
            } else {
                let i = p * panel_len + gi * gb + off;
                // SAFETY: `i + vb <= p * panel_len + (gi + 1) * gb <= w.len()` (the caller's
                // contract).
                d.load_w4(unsafe { w.get_unchecked(i..i + vb) })
            };
            for r in 0..R {
                acc[r][q] = d.dot_w4(acc[r][q], xg[2 * pair * xs + r], lo);
                acc[r][q] = d.dot_w4(acc[r][q], xg[(2 * pair + 1) * xs + r], hi);
            }
        }
    }
    for q in 0..Q {
        let (p, c) = (q / C, q % C);
        let scale = if p == 0 {
            s.load(&s0[c * l..])
        } else {
            let i = p * scale_len + gi * nr + c * l;
            // SAFETY: `i + l <= p * scale_len + (gi + 1) * nr <= sc.len()` (the caller's contract).
            s.load(unsafe { sc.get_unchecked(i..i + l) })
        };
        for r in 0..R {
            let dot = d.group_f32(acc[r][q], xg[(W4_RUN - 1) * xs + r]);
            f[r][q] = s.add(f[r][q], s.mul(dot, scale));
        }
    }
    f
}
