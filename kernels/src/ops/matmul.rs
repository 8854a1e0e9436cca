//! Matrix-product bodies for the two weight layouts GPT-2 checkpoints carry.
//!
//! * `kn`: `W` is `[K, N]` (GPT-2's `Conv1D`) packed into panels of `KN_NR` columns (see
//!   [`crate::PackedKn`]), `y = x W (+ b) (+ y)`; vectorised over N.
//! * `nt`: `W` is `[N, K]` row-major (the tied `lm_head` = `wte`), `y = x W^T`; dot products over K.
//!
//! Batch invariance contract: every output element is reduced over K in one fixed order that
//! depends only on K (and, for `nt`, the lane count), never on M, on which rows share a tile, or
//! on how columns are split across threads. Row `i` of a product is therefore bitwise identical
//! to the product of row `i` alone.

use crate::simd::Simd;
use crate::{MatmulKn, MatmulNt};
use std::array::from_fn;

/// Rows per `kn` register tile (6 x 2 vectors = 12 accumulators of the 16 ymm registers).
pub const KN_MR: usize = 6;
/// Columns per packed `kn` panel (see [`crate::PackedKn`]); two ymm vectors.
pub const KN_NR: usize = 16;
/// Rows per `nt` register tile.
pub const NT_MR: usize = 4;
/// Weight rows per `nt` register tile.
pub const NT_NR: usize = 3;

#[inline(always)]
pub fn matmul_kn<S: Simd>(s: S, a: &MatmulKn, out: &mut [&mut [f32]]) {
    let m = out.len();
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(KN_MR);
        match rows {
            6 => kn_rows::<S, 6>(s, a, out, r0),
            5 => kn_rows::<S, 5>(s, a, out, r0),
            4 => kn_rows::<S, 4>(s, a, out, r0),
            3 => kn_rows::<S, 3>(s, a, out, r0),
            2 => kn_rows::<S, 2>(s, a, out, r0),
            _ => kn_rows::<S, 1>(s, a, out, r0),
        }
        r0 += rows;
    }
}

#[inline(always)]
fn kn_rows<S: Simd, const R: usize>(s: S, a: &MatmulKn, out: &mut [&mut [f32]], r0: usize) {
    let x: [&[f32]; R] = from_fn(|r| &a.x[(r0 + r) * a.k..][..a.k]);
    let out = &mut out[r0..r0 + R];
    let width = out[0].len();
    for j in (0..width).step_by(KN_NR) {
        // One packed panel = KN_NR columns = KN_NR / LANES vectors per row.
        match S::LANES {
            16 => kn_tile::<S, R, 1>(s, a, &x, out, j),
            8 => kn_tile::<S, R, 2>(s, a, &x, out, j),
            4 => kn_tile::<S, R, 4>(s, a, &x, out, j),
            _ => kn_tile::<S, R, KN_NR>(s, a, &x, out, j),
        }
    }
}

/// `R` rows times one packed panel. The panel is read front to back, `KN_NR` floats per k,
/// so the weights stream contiguously whatever N is.
#[inline(always)]
fn kn_tile<S: Simd, const R: usize, const C: usize>(
    s: S,
    a: &MatmulKn,
    x: &[&[f32]; R],
    out: &mut [&mut [f32]],
    j: usize,
) {
    let l = S::LANES;
    debug_assert_eq!(C * l, KN_NR);
    let col = a.col0 + j;
    let panel = &a.w[(col / KN_NR) * a.k * KN_NR..][..a.k * KN_NR];
    let mut acc = [[s.zero(); C]; R];
    for (kk, wrow) in panel.chunks_exact(KN_NR).enumerate() {
        let wv: [S::V; C] = from_fn(|c| s.load(&wrow[c * l..]));
        for r in 0..R {
            let xv = s.splat(x[r][kk]);
            for c in 0..C {
                acc[r][c] = s.fma(xv, wv[c], acc[r][c]);
            }
        }
    }
    let valid = (out[0].len() - j).min(KN_NR);
    for r in 0..R {
        let dst = &mut out[r][j..j + valid];
        if valid == KN_NR {
            for c in 0..C {
                let mut v = acc[r][c];
                if let Some(b) = a.bias {
                    v = s.add(v, s.load(&b[col + c * l..]));
                }
                if a.accumulate {
                    v = s.add(s.load(&dst[c * l..]), v);
                }
                s.store(&mut dst[c * l..], v);
            }
        } else {
            // Ragged last panel: the same two additions, one element at a time.
            let mut tmp = [0.0f32; KN_NR];
            for c in 0..C {
                s.store(&mut tmp[c * l..], acc[r][c]);
            }
            for (i, d) in dst.iter_mut().enumerate() {
                let mut v = tmp[i];
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
}

#[inline(always)]
pub fn matmul_nt<S: Simd>(s: S, a: &MatmulNt, out: &mut [&mut [f32]]) {
    let m = out.len();
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(NT_MR);
        match rows {
            4 => nt_rows::<S, 4>(s, a, out, r0),
            3 => nt_rows::<S, 3>(s, a, out, r0),
            2 => nt_rows::<S, 2>(s, a, out, r0),
            _ => nt_rows::<S, 1>(s, a, out, r0),
        }
        r0 += rows;
    }
}

#[inline(always)]
fn nt_rows<S: Simd, const R: usize>(s: S, a: &MatmulNt, out: &mut [&mut [f32]], r0: usize) {
    let width = out[r0].len();
    let x: [&[f32]; R] = from_fn(|r| &a.x[(r0 + r) * a.k..][..a.k]);
    let out = &mut out[r0..r0 + R];
    let mut j = 0;
    while j + NT_NR <= width {
        nt_tile::<S, R, NT_NR>(s, a, &x, out, j);
        j += NT_NR;
    }
    while j < width {
        nt_tile::<S, R, 1>(s, a, &x, out, j);
        j += 1;
    }
}

#[inline(always)]
fn nt_tile<S: Simd, const R: usize, const C: usize>(
    s: S,
    a: &MatmulNt,
    x: &[&[f32]; R],
    out: &mut [&mut [f32]],
    j: usize,
) {
    let l = S::LANES;
    let k = a.k;
    let w: [&[f32]; C] = from_fn(|c| &a.w[(a.col0 + j + c) * k..][..k]);
    let kv = k / l * l;
    let mut acc = [[s.zero(); C]; R];
    let mut kk = 0;
    while kk < kv {
        let wv: [S::V; C] = from_fn(|c| s.load(&w[c][kk..]));
        for r in 0..R {
            let xv = s.load(&x[r][kk..]);
            for c in 0..C {
                acc[r][c] = s.fma(xv, wv[c], acc[r][c]);
            }
        }
        kk += l;
    }
    for r in 0..R {
        for c in 0..C {
            let mut v = s.hsum(acc[r][c]);
            for t in kv..k {
                v = s.fma1(x[r][t], w[c][t], v);
            }
            out[r][j + c] = v;
        }
    }
}
