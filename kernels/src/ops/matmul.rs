//! The matrix-product body: `y = x W (+ b) (+ y)` with `W` (`[K, N]`) packed into panels of `NR`
//! columns (see [`crate::PackedKn`]) stored as f32, f16, bf16 or int8 (weight-only, where the CPU has no byte dot
//! product for it: `matmul_q.rs` has those and `w8a8`); vectorised over N, accumulated in f32.
//!
//! Batch invariance contract: every output element is reduced over K in one fixed order (one
//! FMA per k, in order, from zero; then scale, bias, residual), never dependent on M, on which
//! rows share a tile, or on how columns are split across threads. Row `i` of a product is therefore bitwise identical
//! to the product of row `i` alone.
//!
//! Microkernel contract (the float tile `kn_tile` and the integer tiles of `matmul_q.rs`):
//! - it computes an `R x NR` block (R <= MR rows of one MR-row activation block, one panel;
//!   decode tiles: one or two rows over several panels), holding every accumulator in
//!   registers for the whole K (R and the panel count are constants, fully unrolled);
//! - its accumulators start at zero and it reads the output only to accumulate (the residual
//!   epilogue), never for a plain store;
//! - it writes only its own rows and columns: the last panel's padding columns are computed
//!   but never stored, and rows past M are zero activations that are never stored;
//! - it fuses the epilogue (scales, bias, GELU, residual) into the single store.
//!
//! Why no KC or NC loop (BLIS's LOOP 5 and 4): the weights are packed once, at load, into
//! panels that run over the whole of K, so there is no per-call packing of B to bound in L3
//! (NC), and a tile accumulates over all of K in registers and stores once, so C is never read
//! back for partial sums (KC). A panel of K x NR is walked once per MC block, streaming from
//! memory or L3, while the block's activations stay in L2: at GPT-2's K (768 to 3072) an MR-row
//! slice of them (at most 12 x 3072 x 4 = 144 KiB) is what the tile rereads, and the panel's
//! current k rows are what it streams.

use super::elementwise::gelu_vec;
use super::{with_tile_rows, Elem};
use crate::pack::Panels;
use crate::simd::Simd;
use crate::MatmulKn;
use half::{bf16, f16};

/// Largest panel width any ISA uses (AVX-512: 2 x 16 lanes; scalar: 16 x 1).
pub const MAX_NR: usize = 32;

/// How far ahead of the current k a decode tile prefetches each panel stream.
const PREFETCH_BYTES: usize = 2048;

/// Bytes of activations (`MC` rows of `x`) kept resident in L2 while every panel passes by.
const MC_BYTES: usize = 384 << 10;

/// `C`: vectors per packed panel row (panel width `NR = C * LANES`); `MR`: rows per register
/// tile (at most 12); `Q1`/`Q2`: vectors per row of the one-/two-row decode tiles (multiples of
/// `C`: several panels at once). All chosen per ISA in `isa/`.
///
/// Loop order (BLIS names): LOOP 3 cuts M into `MC`-row blocks whose activations stay in L2;
/// LOOP 2 walks the packed panels (each read once per block, streaming from memory or L3);
/// LOOP 1 runs the `MR x NR` register tile down the block while its panel is hot in L1/L2.
#[inline(always)]
pub fn matmul_kn<S: Simd, const C: usize, const MR: usize, const Q1: usize, const Q2: usize>(
    s: S,
    a: &MatmulKn,
    out: &mut [&mut [f32]],
) {
    match a.w {
        Panels::F32(w) => kn_blocks::<S, f32, C, MR, Q1, Q2>(s, a, w, None, out),
        Panels::F16(w) => kn_blocks::<S, f16, C, MR, Q1, Q2>(s, a, w, None, out),
        Panels::Bf16(w) => kn_blocks::<S, bf16, C, MR, Q1, Q2>(s, a, w, None, out),
        Panels::Int8 { q, scale } => kn_blocks::<S, i8, C, MR, Q1, Q2>(s, a, q, Some(scale), out),
        Panels::IntDot { .. } | Panels::W4 { .. } => {
            unreachable!("integer-dot weights go to the integer-dot kernels (matmul_q, matmul_w4)")
        }
        Panels::Bf16Pairs(_) => unreachable!("bf16 pairs go to the pair kernels (matmul_bf16)"),
    }
}

/// Per-column scales of quantized weights (`None` for float storage).
type Scales<'a> = Option<&'a [f32]>;

#[inline(always)]
fn kn_blocks<S: Simd, E: Elem, const C: usize, const MR: usize, const Q1: usize, const Q2: usize>(
    s: S,
    a: &MatmulKn,
    w: &[E],
    scale: Scales,
    out: &mut [&mut [f32]],
) {
    let nr = C * S::LANES;
    let walk =
        Walk { nr, decode_cols: [Q1 / C * nr, Q2 / C * nr], x_mr: a.x_mr, budget_rows: MC_BYTES / (4 * a.k.max(1)) };
    walk_tiles::<_, MR>(&KnTiles::<S, E, C, Q1, Q2> { s, a, w, scale }, walk, out)
}

/// The float tiles of one product: [`kn_tile`] at every height, over one panel or (decode) over
/// `Q1 / C` or `Q2 / C` panels.
struct KnTiles<'a, S, E, const C: usize, const Q1: usize, const Q2: usize> {
    s: S,
    a: &'a MatmulKn<'a>,
    w: &'a [E],
    scale: Scales<'a>,
}

impl<S: Simd, E: Elem, const C: usize, const Q1: usize, const Q2: usize> Tiles for KnTiles<'_, S, E, C, Q1, Q2> {
    #[inline(always)]
    fn tile(&self, out: &mut [&mut [f32]], rows: usize, at: At) {
        let KnTiles { s, a, w, scale } = *self;
        with_tile_rows!(rows, R => kn_tile::<S, E, C, R, C>(s, a, w, scale, out, at))
    }

    #[inline(always)]
    fn decode(&self, out: &mut [&mut [f32]], rows: usize, at: At) {
        let KnTiles { s, a, w, scale } = *self;
        if rows == 1 {
            kn_tile::<S, E, C, 1, Q1>(s, a, w, scale, out, at)
        } else {
            kn_tile::<S, E, C, 2, Q2>(s, a, w, scale, out, at)
        }
    }
}

/// A product's register tiles, as [`walk_tiles`] drives them. Each kernel body (float, integer
/// dot, bf16 pairs, 4-bit) implements it with its tiles at constant heights, so the tiles are
/// monomorphised inside the ISA's `#[target_feature]` function (as a closure would not be).
pub(super) trait Tiles {
    /// The tile of `rows` rows (at most the kernel's `MR`) from row `at.r0` over the one panel
    /// at column `at.j`.
    fn tile(&self, out: &mut [&mut [f32]], rows: usize, at: At);
    /// The decode tile of `rows` rows (1, or 2 where [`Walk::decode_cols`] has a two-row tile)
    /// over the several panels from column `at.j`.
    fn decode(&self, out: &mut [&mut [f32]], rows: usize, at: At);
}

/// How [`walk_tiles`] cuts a product's output.
#[derive(Clone, Copy)]
pub(super) struct Walk {
    /// Panel width in columns (`NR`).
    pub nr: usize,
    /// Columns one decode tile covers, for a block of one row and of two rows; 0 where the
    /// kernel has no such tile (the block then goes through the panel tiles).
    pub decode_cols: [usize; 2],
    /// The activations' block height (0: rows one after another).
    pub x_mr: usize,
    /// Rows whose activations fit the L2 budget of one MC block.
    pub budget_rows: usize,
}

/// The loops every product body shares (BLIS names): LOOP 3 cuts M into `MC`-row blocks whose
/// activations stay in L2; LOOP 2 walks the packed panels (each read once per block, streaming
/// from memory or L3); LOOP 1 runs the `MR x NR` register tile down the block while its panel is
/// hot in L1/L2. A block of one or two rows first goes through the decode tiles where the
/// kernel has them, and the panels they leave over through the panel tiles.
#[inline(always)]
pub(super) fn walk_tiles<T: Tiles, const MR: usize>(t: &T, walk: Walk, out: &mut [&mut [f32]]) {
    let m = out.len();
    let width = out.first().map_or(0, |r| r.len());
    let (mr, mc) = row_blocking::<MR>(walk.x_mr, walk.budget_rows, m);
    for mc0 in (0..m).step_by(mc) {
        let mc_end = (mc0 + mc).min(m);
        let block = mc_end - mc0;
        let mut j = 0;
        // Decode shapes (one or two rows) have too few accumulators to hide the FMA latency in
        // one panel; walk several panels at once instead (the order over k is unchanged).
        if let Some(&cols) = walk.decode_cols.get(block - 1).filter(|&&cols| cols > 0) {
            while j + cols <= width {
                t.decode(out, block, At { r0: mc0, j, ahead: LookAhead::Stream });
                j += cols;
            }
        }
        let tiles = block.div_ceil(mr);
        for j in (j..width).step_by(walk.nr) {
            let mut r0 = mc0;
            while r0 < mc_end {
                let rows = (mc_end - r0).min(mr);
                // One tile alone over its panel streams it (prefetch ahead, as for decode);
                // several share the fetch of the next panel, so memory is read evenly over the
                // panel's whole compute instead of in a burst during its first tile. After a
                // chunk's last panel, the next in memory is the next chunk's first, which this
                // thread usually runs next (the team splits the chunk range in order).
                t.tile(out, rows, At { r0, j, ahead: LookAhead::for_tile(r0 - mc0, mr, tiles) });
                r0 += rows;
            }
        }
    }
}

/// `(tile height, rows per MC block)` for `m` rows: the activations' block height `x_mr` (the
/// caller balances it over M; `MR` for unpacked rows), at most `MR`; and blocks of whole tiles,
/// as few as `budget_rows` allows when rounded up to a whole tile, of balanced size. Rounding
/// down split 32 rows of K = 3072 into 22 + 10 and 128 rows of K = 768 into 120 + 8: the short
/// block walks every panel again for one tile.
#[inline(always)]
pub(super) fn row_blocking<const MR: usize>(x_mr: usize, budget_rows: usize, m: usize) -> (usize, usize) {
    let mr = if x_mr > 0 { x_mr.min(MR) } else { MR };
    let tiles = m.div_ceil(mr).max(1);
    let blocks = tiles.div_ceil(budget_rows.div_ceil(mr).max(1));
    (mr, tiles.div_ceil(blocks) * mr)
}

/// Where a register tile sits (first row, first column of the chunk) and how it fetches ahead.
#[derive(Clone, Copy)]
pub(crate) struct At {
    pub r0: usize,
    pub j: usize,
    pub ahead: LookAhead,
}

/// How a register tile prefetches the weights it will need.
#[derive(Clone, Copy)]
pub(crate) enum LookAhead {
    /// The only tile over its panels, which come from memory: `PREFETCH_BYTES` ahead in each.
    Stream,
    /// Tile `t` of `tiles` over its panel: fetches every `tiles`-th k row of the next panel
    /// (so together the tiles fetch all of it, spread over the panel's compute).
    Spread { t: usize, tiles: usize },
}

impl LookAhead {
    /// For the row tile at `row` (of a block of `tiles` tiles `mr` rows high) over one panel.
    #[inline(always)]
    pub(super) fn for_tile(row: usize, mr: usize, tiles: usize) -> LookAhead {
        if tiles == 1 {
            LookAhead::Stream
        } else {
            LookAhead::Spread { t: row / mr, tiles }
        }
    }
}

/// `R` rows times `Q / C` consecutive packed panels (`Q` vectors per row). Each panel is read
/// front to back, `NR` values per k, so the weights stream contiguously whatever N is.
/// The accumulators are one flat `[R][Q]` array: LLVM keeps that in registers, where a
/// `[R][P][C]` array was spilled to the stack on every k.
#[inline(always)]
fn kn_tile<S: Simd, E: Elem, const C: usize, const R: usize, const Q: usize>(
    s: S,
    a: &MatmulKn,
    w: &[E],
    scale: Scales,
    out: &mut [&mut [f32]],
    at: At,
) {
    let At { r0, j, ahead: look_ahead } = at;
    // This tile's activations: values of row r at k are xb[k * xs + r].
    let (xb, xs) = match a.x_mr {
        0 => (&a.x[r0 * a.k..][..a.k * R], 1),
        mr => (&a.x[r0 / mr * mr * a.k..][..mr * a.k], mr),
    };
    debug_assert!(a.x_mr == 0 && R == 1 || a.x_mr > 0 && r0.is_multiple_of(a.x_mr));
    let out = &mut out[r0..r0 + R];
    let l = S::LANES;
    let nr = C * l;
    let col = a.col0 + j;
    let p_count = Q / C;
    let first = col / nr;
    let mut acc = [[s.zero(); Q]; R];
    assert!(xs >= R && xb.len() >= a.k * xs);
    // Zipped chunk iterators make every index below provably in bounds: a bounds check (and its
    // panic path) inside this loop makes LLVM spill the accumulators on every k.
    let rows = w[first * a.k * nr..][..a.k * nr].chunks_exact(nr).zip(xb.chunks_exact(xs));
    // `kn_step` reads the tile's other panels unchecked: all of them lie in `w`.
    assert!((first + p_count) * a.k * nr <= w.len());
    let size = std::mem::size_of::<E>();
    let ahead = PREFETCH_BYTES / (nr * size) * nr;
    let lines_per_row = (nr * size).div_ceil(64);
    // The loop-invariant choice of look-ahead is made once, outside the k loop: tested inside
    // it, it cost about as many instructions per k as the AVX2 tile's loads and FMAs.
    match look_ahead {
        LookAhead::Stream => {
            for (kk, (row0, xk)) in rows.enumerate() {
                // The first tile over a panel streams it from memory (decode tiles always do,
                // with little arithmetic in between): prefetch ahead of use, as the hardware
                // prefetcher alone leaves bandwidth unused.
                for p in 0..p_count {
                    for line in 0..lines_per_row {
                        s.prefetch(w, ((first + p) * a.k + kk) * nr + ahead + line * 64 / size);
                    }
                }
                // SAFETY: `kk < a.k` (a row of the panel) and all `p_count` panels lie in `w`
                // (asserted above).
                unsafe { kn_step::<S, E, C, R, Q>(s, &mut acc, row0, xk, w, (first * a.k + kk) * nr, a.k * nr) };
            }
        }
        LookAhead::Spread { t, tiles } => {
            // A running counter, not `kk % tiles`: a division per k would cost more than the FMAs.
            let mut next_fetch = t;
            for (kk, (row0, xk)) in rows.enumerate() {
                if kk == next_fetch {
                    for line in 0..lines_per_row {
                        s.prefetch(w, ((first + 1) * a.k + kk) * nr + line * 64 / size);
                    }
                    next_fetch += tiles;
                }
                // SAFETY: `kk < a.k` (a row of the panel) and all `p_count` panels lie in `w`
                // (asserted above).
                unsafe { kn_step::<S, E, C, R, Q>(s, &mut acc, row0, xk, w, (first * a.k + kk) * nr, a.k * nr) };
            }
        }
    }
    for r in 0..R {
        for p in 0..p_count {
            store_panel::<S>(s, a, scale, out[r], j + p * nr, &acc[r][p * C..(p + 1) * C]);
        }
    }
}

/// One k of a tile: `acc[r][q] += x[r] * w[q]` for the `Q` weight vectors at this k (panel 0's
/// from `row0`, the others `panel_stride` further on in `w` from `at`, the start of panel 0's
/// row) and the tile's `R` activations `xk`.
///
/// # Safety
/// `at` is the start of a k row of a panel, and the `Q / C - 1` panels after it lie in `w`:
/// `at + (Q / C - 1) * panel_stride + C * LANES <= w.len()`. (Bounds-checked, those loads cost
/// the one-row int8 tile 30 of its 72 instructions per k.)
#[inline(always)]
unsafe fn kn_step<S: Simd, E: Elem, const C: usize, const R: usize, const Q: usize>(
    s: S,
    acc: &mut [[S::V; Q]; R],
    row0: &[E],
    xk: &[f32],
    w: &[E],
    at: usize,
    panel_stride: usize,
) {
    let l = S::LANES;
    // Plain loops, not `array::from_fn`: a closure does not inherit the caller's
    // `#[target_feature]`s, and an un-inlined widening load costs a call per vector.
    let mut wv = [s.zero(); Q];
    for q in 0..Q {
        let (p, c) = (q / C, q % C);
        wv[q] = if p == 0 {
            E::load(s, &row0[c * l..])
        } else {
            let i = at + p * panel_stride + c * l;
            // SAFETY: `i + l <= at + p * panel_stride + C * l <= w.len()` (the caller's contract).
            E::load(s, unsafe { w.get_unchecked(i..i + l) })
        };
    }
    for r in 0..R {
        let xv = s.splat(xk[r]);
        for q in 0..Q {
            acc[r][q] = s.fma(xv, wv[q], acc[r][q]);
        }
    }
}

/// Epilogue of one row of one panel: `gelu?(acc * scale + bias) (+ out)`, in that order for
/// every element, vector or not.
#[inline(always)]
pub(super) fn store_panel<S: Simd>(s: S, a: &MatmulKn, scale: Scales, out: &mut [f32], j: usize, acc: &[S::V]) {
    let l = S::LANES;
    let col = a.col0 + j;
    let mut vals = [s.zero(); MAX_VECS];
    for c in 0..acc.len() {
        // The scales are padded to whole panels, so the ragged panel is scaled as vectors too.
        vals[c] = match scale {
            Some(sc) => s.mul(acc[c], s.load(&sc[col + c * l..])),
            None => acc[c],
        };
    }
    finish_panel(s, Finish { bias: a.bias, gelu: a.gelu, accumulate: a.accumulate }, out, j, col, &vals[..acc.len()]);
}

/// Most vectors in one panel row (the scalar ISA's 16 lanes of 1).
pub(super) const MAX_VECS: usize = 16;

/// What every product does after its scaling: `gelu?(v + bias) (+ out)`.
#[derive(Clone, Copy)]
pub(super) struct Finish<'a> {
    pub bias: Option<&'a [f32]>,
    pub gelu: bool,
    pub accumulate: bool,
}

/// Applies `f` to one row of one panel (`vals`: its scaled vectors, for columns `col..`) and
/// stores it at `out[j..]`, in the same order for every element; the ragged last panel takes
/// the bias one element at a time and is stored only where `out` has columns.
#[inline(always)]
pub(super) fn finish_panel<S: Simd>(s: S, f: Finish, out: &mut [f32], j: usize, col: usize, vals: &[S::V]) {
    let l = S::LANES;
    let nr = vals.len() * l;
    let valid = (out.len() - j).min(nr);
    let dst = &mut out[j..j + valid];
    if valid == nr {
        for c in 0..vals.len() {
            let mut v = vals[c];
            if let Some(b) = f.bias {
                v = s.add(v, s.load(&b[col + c * l..]));
            }
            if f.gelu {
                v = gelu_vec(s, v);
            }
            if f.accumulate {
                v = s.add(s.load(&dst[c * l..]), v);
            }
            s.store(&mut dst[c * l..], v);
        }
    } else {
        let mut tmp = [0.0f32; MAX_NR];
        for c in 0..vals.len() {
            s.store(&mut tmp[c * l..], vals[c]);
        }
        if let Some(b) = f.bias {
            for (i, v) in tmp[..valid].iter_mut().enumerate() {
                *v += b[col + i];
            }
        }
        if f.gelu {
            for c in 0..vals.len() {
                let v = gelu_vec(s, s.load(&tmp[c * l..]));
                s.store(&mut tmp[c * l..], v);
            }
        }
        for (d, &v) in dst.iter_mut().zip(&tmp) {
            *d = if f.accumulate { *d + v } else { v };
        }
    }
}
