//! The matrix-product body: `y = x W (+ b) (+ y)` with `W` (`[K, N]`) packed into panels of `NR`
//! columns (see [`crate::PackedKn`]) stored as f32, f16, bf16 or int8; vectorised over N,
//! accumulated in f32.
//!
//! Batch invariance contract: every output element is reduced over K in one fixed order (one
//! FMA per k, in order, from zero; then scale, bias, residual), never dependent on M, on which
//! rows share a tile, or on how columns are split across threads. Row `i` of a product is therefore bitwise identical
//! to the product of row `i` alone.

use crate::pack::Panels;
use crate::simd::Simd;
use crate::MatmulKn;
use half::{bf16, f16};
use std::array::from_fn;

/// Largest panel width any ISA uses (AVX-512: 2 x 16 lanes; scalar: 16 x 1).
pub const MAX_NR: usize = 32;

/// Bytes of activations (`MC` rows of `x`) kept resident in L2 while every panel passes by.
const MC_BYTES: usize = 384 << 10;

/// `C`: vectors per packed panel row (panel width `NR = C * LANES`); `MR`: rows per register
/// tile (at most 12). Both are chosen per ISA in `isa/`.
///
/// Loop order (BLIS names): LOOP 3 cuts M into `MC`-row blocks whose activations stay in L2;
/// LOOP 2 walks the packed panels (each read once per block, streaming from memory or L3);
/// LOOP 1 runs the `MR x NR` register tile down the block while its panel is hot in L1/L2.
#[inline(always)]
pub fn matmul_kn<S: Simd, const C: usize, const MR: usize>(s: S, a: &MatmulKn, out: &mut [&mut [f32]]) {
    match a.w {
        Panels::F32(w) => kn_blocks::<S, f32, C, MR>(s, a, w, None, out),
        Panels::F16(w) => kn_blocks::<S, f16, C, MR>(s, a, w, None, out),
        Panels::Bf16(w) => kn_blocks::<S, bf16, C, MR>(s, a, w, None, out),
        Panels::Int8 { q, scale } => kn_blocks::<S, i8, C, MR>(s, a, q, Some(scale), out),
    }
}

/// A stored weight type the microkernel can widen to f32 lanes.
trait Elem: Copy {
    fn load<S: Simd>(s: S, p: &[Self]) -> S::V;
}

impl Elem for f32 {
    #[inline(always)]
    fn load<S: Simd>(s: S, p: &[f32]) -> S::V {
        s.load(p)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn load<S: Simd>(s: S, p: &[f16]) -> S::V {
        s.load_f16(p)
    }
}

impl Elem for bf16 {
    #[inline(always)]
    fn load<S: Simd>(s: S, p: &[bf16]) -> S::V {
        s.load_bf16(p)
    }
}

impl Elem for i8 {
    #[inline(always)]
    fn load<S: Simd>(s: S, p: &[i8]) -> S::V {
        s.load_i8(p)
    }
}

/// Per-column scales of quantized weights (`None` for float storage).
type Scales<'a> = Option<&'a [f32]>;

#[inline(always)]
fn kn_blocks<S: Simd, E: Elem, const C: usize, const MR: usize>(
    s: S,
    a: &MatmulKn,
    w: &[E],
    scale: Scales,
    out: &mut [&mut [f32]],
) {
    let m = out.len();
    let nr = C * S::LANES;
    let width = out.first().map_or(0, |r| r.len());
    let mc = (MC_BYTES / (4 * a.k.max(1))).max(MR) / MR * MR;
    for mc0 in (0..m).step_by(mc) {
        let mc_end = (mc0 + mc).min(m);
        let mut j = 0;
        // Decode shapes (one or two rows) have too few accumulators to hide the FMA latency in
        // one panel; walk several panels at once instead (the order over k is unchanged).
        match mc_end - mc0 {
            1 => {
                while j + 4 * nr <= width {
                    kn_tile::<S, E, C, 1, 4>(s, a, w, scale, out, mc0, j);
                    j += 4 * nr;
                }
            }
            2 => {
                while j + 2 * nr <= width {
                    kn_tile::<S, E, C, 2, 2>(s, a, w, scale, out, mc0, j);
                    j += 2 * nr;
                }
            }
            _ => {}
        }
        for j in (j..width).step_by(nr) {
            let mut r0 = mc0;
            while r0 < mc_end {
                let rows = (mc_end - r0).min(MR);
                match rows {
                    12 => kn_tile::<S, E, C, 12, 1>(s, a, w, scale, out, r0, j),
                    11 => kn_tile::<S, E, C, 11, 1>(s, a, w, scale, out, r0, j),
                    10 => kn_tile::<S, E, C, 10, 1>(s, a, w, scale, out, r0, j),
                    9 => kn_tile::<S, E, C, 9, 1>(s, a, w, scale, out, r0, j),
                    8 => kn_tile::<S, E, C, 8, 1>(s, a, w, scale, out, r0, j),
                    7 => kn_tile::<S, E, C, 7, 1>(s, a, w, scale, out, r0, j),
                    6 => kn_tile::<S, E, C, 6, 1>(s, a, w, scale, out, r0, j),
                    5 => kn_tile::<S, E, C, 5, 1>(s, a, w, scale, out, r0, j),
                    4 => kn_tile::<S, E, C, 4, 1>(s, a, w, scale, out, r0, j),
                    3 => kn_tile::<S, E, C, 3, 1>(s, a, w, scale, out, r0, j),
                    2 => kn_tile::<S, E, C, 2, 1>(s, a, w, scale, out, r0, j),
                    _ => kn_tile::<S, E, C, 1, 1>(s, a, w, scale, out, r0, j),
                }
                r0 += rows;
            }
        }
    }
}

/// `R` rows times `P` consecutive packed panels. Each panel is read front to back, `NR` values
/// per k, so the weights stream contiguously whatever N is.
#[inline(always)]
fn kn_tile<S: Simd, E: Elem, const C: usize, const R: usize, const P: usize>(
    s: S,
    a: &MatmulKn,
    w: &[E],
    scale: Scales,
    out: &mut [&mut [f32]],
    r0: usize,
    j: usize,
) {
    let x: [&[f32]; R] = from_fn(|r| &a.x[(r0 + r) * a.k..][..a.k]);
    let out = &mut out[r0..r0 + R];
    let l = S::LANES;
    let nr = C * l;
    let col = a.col0 + j;
    let panels: [&[E]; P] = from_fn(|p| &w[(col / nr + p) * a.k * nr..][..a.k * nr]);
    let mut acc = [[[s.zero(); C]; P]; R];
    for kk in 0..a.k {
        // Plain loops, not `array::from_fn`: a closure does not inherit the caller's
        // `#[target_feature]`s, and an un-inlined widening load costs a call per vector.
        let mut wv = [[s.zero(); C]; P];
        for p in 0..P {
            for c in 0..C {
                wv[p][c] = E::load(s, &panels[p][kk * nr + c * l..]);
            }
        }
        for r in 0..R {
            let xv = s.splat(x[r][kk]);
            for p in 0..P {
                for c in 0..C {
                    acc[r][p][c] = s.fma(xv, wv[p][c], acc[r][p][c]);
                }
            }
        }
    }
    for r in 0..R {
        for p in 0..P {
            store_panel::<S, C>(s, a, scale, out[r], j + p * nr, &acc[r][p]);
        }
    }
}

/// Epilogue of one row of one panel: `acc * scale + bias (+ out)`, in that order for every
/// element, vector or not.
#[inline(always)]
fn store_panel<S: Simd, const C: usize>(s: S, a: &MatmulKn, scale: Scales, out: &mut [f32], j: usize, acc: &[S::V; C]) {
    let l = S::LANES;
    let nr = C * l;
    let col = a.col0 + j;
    let valid = (out.len() - j).min(nr);
    let dst = &mut out[j..j + valid];
    if valid == nr {
        for c in 0..C {
            let mut v = acc[c];
            if let Some(sc) = scale {
                v = s.mul(v, s.load(&sc[col + c * l..]));
            }
            if let Some(b) = a.bias {
                v = s.add(v, s.load(&b[col + c * l..]));
            }
            if a.accumulate {
                v = s.add(s.load(&dst[c * l..]), v);
            }
            s.store(&mut dst[c * l..], v);
        }
    } else {
        // Ragged last panel: the same operations, one element at a time.
        let mut tmp = [0.0f32; MAX_NR];
        for c in 0..C {
            s.store(&mut tmp[c * l..], acc[c]);
        }
        for (i, d) in dst.iter_mut().enumerate() {
            let mut v = tmp[i];
            if let Some(sc) = scale {
                v *= sc[col + i];
            }
            if let Some(b) = a.bias {
                v += b[col + i];
            }
            if a.accumulate {
                v += *d;
            }
            *d = v;
        }
    }
}
