//! The `bf16dot` product: `y = x W (+ b) (+ y)` with `W` stored as bf16 pairs
//! ([`crate::Panels::Bf16Pairs`]) and every activation rounded to bf16 first, reduced one pair
//! of k at a time in f32 (the definition: `reference::matmul_bf16dot`).
//!
//! Two reductions compute the same sums:
//! - [`Pairs`], AVX512-BF16: one `vdpbf16ps` per pair and weight vector; the activations come
//!   as pair words (even k's bf16 in the low half, odd k's in the high half).
//! - [`Widened`], every other ISA: each half widened to f32 (exact: a shift or a mask) and two
//!   FMAs, odd k first. The product of two bf16 values is exact in f32, so an FMA rounds exactly
//!   as `vdpbf16ps`'s sums do; the activations come as bf16-valued floats.
//!
//! Batch invariance: every output is reduced over the pairs in one fixed order from zero, then
//! the epilogue (bias, GELU, residual) of `matmul.rs`, whatever M, the tile or the thread.
//! Blocking (MC blocks, panels, register tiles, the one-row decode tile) is `matmul.rs`'s.

use super::matmul::{store_panel, walk_tiles, At, LookAhead, Tiles, Walk};
use super::with_tile_rows;
use crate::simd::{Bf16Dot, Simd};
use crate::MatmulKn;

/// How far ahead of the current pair a streaming tile prefetches each panel.
const PREFETCH_BYTES: usize = 2048;

/// Bytes of packed activations kept resident in L2 while every panel passes by (as `matmul.rs`).
const MC_BYTES: usize = 384 << 10;

/// One way of reducing a tile's pairs.
pub trait PairReduce: Copy {
    type S: Simd;
    /// Whether the activations are pair words (one `u32`, carried as f32 bits, per row and
    /// pair) rather than bf16-valued floats (two per row and pair: even k, then odd k).
    const WORDS: bool;

    fn simd(self) -> Self::S;
    /// One pair of an `R`-row tile over `Q` weight vectors (`w[q]`: that vector's pair words).
    /// `x`: this pair's activations, row `r`'s word at `x[r]` (`WORDS`), else its even value at
    /// `x[r]` and its odd one at `x[xs + r]`.
    ///
    /// # Safety
    /// `R <= xs` and `x` holds this pair's activations: `xs` values (`WORDS`), else `2 * xs`.
    /// (Bounds-checked, the activation reads put a panic path in the tile's loop, and LLVM then
    /// spills the accumulators on every pair, as `matmul.rs`'s `kn_step` explains.)
    unsafe fn step<const R: usize, const Q: usize>(
        self,
        acc: &mut [[<Self::S as Simd>::V; Q]; R],
        w: [&[u32]; Q],
        x: &[f32],
        xs: usize,
    );

    /// One pair of 12 independent chains, weights and activations in registers: the body of
    /// [`pair_probe`].
    fn probe_round(self, acc: &mut [<Self::S as Simd>::V; 12], w: &[u32], x: (f32, f32));
}

/// `vdpbf16ps` on pair words.
#[derive(Clone, Copy)]
pub struct Pairs<D>(pub D);

impl<D: Bf16Dot> PairReduce for Pairs<D> {
    type S = D::S;
    const WORDS: bool = true;

    #[inline(always)]
    fn simd(self) -> D::S {
        self.0.simd()
    }

    #[inline(always)]
    unsafe fn step<const R: usize, const Q: usize>(
        self,
        acc: &mut [[<D::S as Simd>::V; Q]; R],
        w: [&[u32]; Q],
        x: &[f32],
        _xs: usize,
    ) {
        let d = self.0;
        let mut wv = [d.load_pairs(w[0]); Q];
        for q in 1..Q {
            wv[q] = d.load_pairs(w[q]);
        }
        for r in 0..R {
            // SAFETY: `r < R <= xs <= x.len()` (the caller's contract).
            let xw = unsafe { x.get_unchecked(r) }.to_bits();
            for q in 0..Q {
                acc[r][q] = d.dot_pairs(acc[r][q], xw, wv[q]);
            }
        }
    }

    #[inline(always)]
    fn probe_round(self, acc: &mut [<D::S as Simd>::V; 12], w: &[u32], x: (f32, f32)) {
        let word = crate::pack::bf16_bits(x.1) << 16 | crate::pack::bf16_bits(x.0);
        let w = self.0.load_pairs(w);
        for a in acc.iter_mut() {
            *a = self.0.dot_pairs(*a, word, w);
        }
    }
}

/// Two f32 FMAs per pair on widened halves.
#[derive(Clone, Copy)]
pub struct Widened<S>(pub S);

impl<S: Simd> PairReduce for Widened<S> {
    type S = S;
    const WORDS: bool = false;

    #[inline(always)]
    fn simd(self) -> S {
        self.0
    }

    #[inline(always)]
    unsafe fn step<const R: usize, const Q: usize>(
        self,
        acc: &mut [[S::V; Q]; R],
        w: [&[u32]; Q],
        x: &[f32],
        xs: usize,
    ) {
        let s = self.0;
        // Odd halves for every row, then even ones: per accumulator the order is the
        // definition's, and only one set of widened weights is live at a time (the AVX2 6 x 16
        // tile has 12 accumulators of its 16 registers).
        let mut wv = [s.zero(); Q];
        for q in 0..Q {
            wv[q] = s.load_bf16_odd(w[q]);
        }
        for r in 0..R {
            // SAFETY: `xs + r < 2 * xs <= x.len()` (the caller's contract: `r < R <= xs`).
            let xv = s.splat(unsafe { *x.get_unchecked(xs + r) });
            for q in 0..Q {
                acc[r][q] = s.fma(xv, wv[q], acc[r][q]);
            }
        }
        for q in 0..Q {
            wv[q] = s.load_bf16_even(w[q]);
        }
        for r in 0..R {
            // SAFETY: as above, `r < xs`.
            let xv = s.splat(unsafe { *x.get_unchecked(r) });
            for q in 0..Q {
                acc[r][q] = s.fma(xv, wv[q], acc[r][q]);
            }
        }
    }

    #[inline(always)]
    fn probe_round(self, acc: &mut [S::V; 12], w: &[u32], x: (f32, f32)) {
        let s = self.0;
        let (wo, we) = (s.load_bf16_odd(w), s.load_bf16_even(w));
        let (xo, xe) = (s.splat(x.1), s.splat(x.0));
        for a in acc.iter_mut() {
            *a = s.fma(xo, wo, *a);
            *a = s.fma(xe, we, *a);
        }
    }
}

/// Activation values per row of a `bf16dot` product over `k`: one word per pair, or two floats.
#[inline(always)]
pub fn act_len(words: bool, k: usize) -> usize {
    if words {
        k.div_ceil(2)
    } else {
        k.div_ceil(2) * 2
    }
}

/// `C`: vectors per panel row (`NR = C * LANES`); `MR`: rows per register tile; `Q1`: vectors
/// per row of the one-row (decode) tile, a multiple of `C`. `a.x` holds the activations as
/// `P::WORDS` says, `act_len` values per row, in blocks of `a.x_mr` rows (`[act_len][x_mr]`
/// per block) or one row when `x_mr == 0`; `a.w` is [`crate::Panels::Bf16Pairs`].
///
/// Loop order (BLIS names, as in `matmul.rs`): blocks of rows whose activations stay in L2;
/// in each, the panels; down each panel, the register tiles.
#[inline(always)]
pub fn matmul_bf16dot<P: PairReduce, const C: usize, const MR: usize, const Q1: usize>(
    p: P,
    a: &MatmulKn,
    out: &mut [&mut [f32]],
) {
    let crate::Panels::Bf16Pairs(w) = a.w else { unreachable!("matmul_bf16dot: weights are not bf16 pairs") };
    let nr = C * P::S::LANES;
    let budget_rows = MC_BYTES / (4 * act_len(P::WORDS, a.k).max(1));
    let walk = Walk { nr, decode_cols: [Q1 / C * nr, 0], x_mr: a.x_mr, budget_rows };
    walk_tiles::<_, MR>(&PairTiles::<P, C, Q1> { p, a, w }, walk, out)
}

/// The pair tiles of one product, as [`walk_tiles`] drives them.
struct PairTiles<'a, P, const C: usize, const Q1: usize> {
    p: P,
    a: &'a MatmulKn<'a>,
    w: &'a [u32],
}

impl<P: PairReduce, const C: usize, const Q1: usize> Tiles for PairTiles<'_, P, C, Q1> {
    #[inline(always)]
    fn tile(&self, out: &mut [&mut [f32]], rows: usize, at: At) {
        let PairTiles { p, a, w } = *self;
        with_tile_rows!(rows, R => pair_tile::<P, C, R, C>(p, a, w, out, at))
    }

    #[inline(always)]
    fn decode(&self, out: &mut [&mut [f32]], _rows: usize, at: At) {
        // One row has too few accumulators to hide the FMA latency in one panel: walk several
        // panels at once (the order over k is unchanged).
        let PairTiles { p, a, w } = *self;
        pair_tile::<P, C, 1, Q1>(p, a, w, out, at)
    }
}

/// `R` rows times `Q / C` consecutive panels, every pair of k in order (as `matmul.rs`'s
/// `kn_tile`, one pair of k rows of the panel per step).
#[inline(always)]
fn pair_tile<P: PairReduce, const C: usize, const R: usize, const Q: usize>(
    p: P,
    a: &MatmulKn,
    w: &[u32],
    out: &mut [&mut [f32]],
    at: At,
) {
    let s = p.simd();
    let At { r0, j, ahead: look_ahead } = at;
    let per_row = act_len(P::WORDS, a.k);
    let pairs = a.k.div_ceil(2);
    // This tile's activations: pair i of row r at xb[i * step + r] (and the odd value of a
    // float pair `xs` further on).
    let (xb, xs) = match a.x_mr {
        0 => (&a.x[r0 * per_row..][..per_row * R], 1),
        mr => (&a.x[r0 / mr * mr * per_row..][..mr * per_row], mr),
    };
    debug_assert!(a.x_mr == 0 && R == 1 || a.x_mr > 0 && r0.is_multiple_of(a.x_mr));
    assert!(xs >= R);
    let step = if P::WORDS { xs } else { 2 * xs };
    let out = &mut out[r0..r0 + R];
    let nr = C * P::S::LANES;
    let l = P::S::LANES;
    let first = (a.col0 + j) / nr;
    let p_count = Q / C;
    let panel_len = pairs * nr;
    let tile_w = &w[first * panel_len..][..p_count * panel_len];
    let mut acc = [[s.zero(); Q]; R];
    let ahead = PREFETCH_BYTES / (nr * 4) * nr;
    let lines_per_row = (nr * 4).div_ceil(64);
    let mut next_fetch = match look_ahead {
        LookAhead::Stream => 0,
        LookAhead::Spread { t, .. } => t,
    };
    for (i, xk) in xb.chunks_exact(step).take(pairs).enumerate() {
        // Prefetch as `kn_tile` does: a streaming tile ahead in each of its panels; tiles
        // sharing a panel spread the fetch of the next one over this one's pairs.
        match look_ahead {
            LookAhead::Stream => {
                for q in 0..p_count {
                    for line in 0..lines_per_row {
                        s.prefetch(w, (first + q) * panel_len + i * nr + ahead + line * 16);
                    }
                }
            }
            LookAhead::Spread { tiles, .. } => {
                if i == next_fetch {
                    for line in 0..lines_per_row {
                        s.prefetch(w, (first + 1) * panel_len + i * nr + line * 16);
                    }
                    next_fetch += tiles;
                }
            }
        }
        let mut wq: [&[u32]; Q] = [&[]; Q];
        for q in 0..Q {
            let at = (q / C) * panel_len + i * nr + (q % C) * l;
            // SAFETY: `i < pairs` and `(q % C + 1) * l <= nr`, so `at + l <= (q / C + 1) *
            // panel_len <= tile_w.len()`. (Bounds-checked, these slices cost the tile spills of
            // its accumulators on every pair, as `matmul.rs`'s `kn_step` explains.)
            wq[q] = unsafe { tile_w.get_unchecked(at..at + l) };
        }
        // SAFETY: `R <= xs` (asserted above) and `xk` is one pair's `step` values.
        unsafe { p.step::<R, Q>(&mut acc, wq, xk, xs) };
    }
    for r in 0..R {
        for q in 0..p_count {
            store_panel::<P::S>(s, a, None, out[r], j + q * nr, &acc[r][q * C..(q + 1) * C]);
        }
    }
}

/// Runs `iters` rounds of 12 independent chains of the pair product on one thread: the
/// `bf16dot` peak probe (4 FLOPs per lane per pair: two products, two sums). The operands are
/// opaque to the compiler (`black_box`) but loop-invariant, so the loop is the reduction's
/// instructions alone, as `elementwise::fma_probe` is the FMA's: with known ones LLVM folds
/// `fma(1.0, w, acc)` into an add, which Zen 3 runs on other pipes (a "peak" 1.7x the FMA's).
#[inline(always)]
pub fn pair_probe<P: PairReduce>(p: P, iters: usize, seed: f32) -> f32 {
    let s = p.simd();
    let words = std::hint::black_box([0x3F80_3F80u32 ^ (seed.to_bits() & 0xFF); 16]);
    let x = std::hint::black_box((seed, 0.5));
    let mut acc = [s.splat(seed); 12];
    for _ in 0..iters {
        p.probe_round(&mut acc, &words[..P::S::LANES], x);
    }
    let mut t = s.zero();
    for v in acc {
        t = s.add(t, v);
    }
    s.hsum(t)
}
