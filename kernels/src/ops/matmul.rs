//! Matrix-product bodies for the two weight layouts GPT-2 checkpoints carry.
//!
//! * `kn`: `W` is `[K, N]` (GPT-2's `Conv1D`) packed into panels of `NR` columns (see
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

/// Rows per `nt` register tile.
pub const NT_MR: usize = 4;
/// Weight rows per `nt` register tile.
pub const NT_NR: usize = 3;

/// Largest panel width any ISA uses (AVX-512: 2 x 16 lanes; scalar: 16 x 1).
pub const MAX_NR: usize = 32;

/// `C`: vectors per packed panel row (panel width `NR = C * LANES`); `MR`: rows per register
/// tile (at most 12). Both are chosen per ISA in `isa/`.
#[inline(always)]
pub fn matmul_kn<S: Simd, const C: usize, const MR: usize>(s: S, a: &MatmulKn, out: &mut [&mut [f32]]) {
    let m = out.len();
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(MR);
        match rows {
            12 => kn_rows::<S, C, 12>(s, a, out, r0),
            11 => kn_rows::<S, C, 11>(s, a, out, r0),
            10 => kn_rows::<S, C, 10>(s, a, out, r0),
            9 => kn_rows::<S, C, 9>(s, a, out, r0),
            8 => kn_rows::<S, C, 8>(s, a, out, r0),
            7 => kn_rows::<S, C, 7>(s, a, out, r0),
            6 => kn_rows::<S, C, 6>(s, a, out, r0),
            5 => kn_rows::<S, C, 5>(s, a, out, r0),
            4 => kn_rows::<S, C, 4>(s, a, out, r0),
            3 => kn_rows::<S, C, 3>(s, a, out, r0),
            2 => kn_rows::<S, C, 2>(s, a, out, r0),
            _ => kn_rows::<S, C, 1>(s, a, out, r0),
        }
        r0 += rows;
    }
}

#[inline(always)]
fn kn_rows<S: Simd, const C: usize, const R: usize>(s: S, a: &MatmulKn, out: &mut [&mut [f32]], r0: usize) {
    let x: [&[f32]; R] = from_fn(|r| &a.x[(r0 + r) * a.k..][..a.k]);
    let out = &mut out[r0..r0 + R];
    let width = out[0].len();
    for j in (0..width).step_by(C * S::LANES) {
        kn_tile::<S, C, R>(s, a, &x, out, j);
    }
}

/// `R` rows times one packed panel. The panel is read front to back, `NR` floats per k,
/// so the weights stream contiguously whatever N is.
#[inline(always)]
fn kn_tile<S: Simd, const C: usize, const R: usize>(
    s: S,
    a: &MatmulKn,
    x: &[&[f32]; R],
    out: &mut [&mut [f32]],
    j: usize,
) {
    let l = S::LANES;
    let nr = C * l;
    let col = a.col0 + j;
    let panel = &a.w[(col / nr) * a.k * nr..][..a.k * nr];
    let mut acc = [[s.zero(); C]; R];
    for (kk, wrow) in panel.chunks_exact(nr).enumerate() {
        let wv: [S::V; C] = from_fn(|c| s.load(&wrow[c * l..]));
        for r in 0..R {
            let xv = s.splat(x[r][kk]);
            for c in 0..C {
                acc[r][c] = s.fma(xv, wv[c], acc[r][c]);
            }
        }
    }
    let valid = (out[0].len() - j).min(nr);
    for r in 0..R {
        let dst = &mut out[r][j..j + valid];
        if valid == nr {
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
            let mut tmp = [0.0f32; MAX_NR];
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
