//! Matrix-product bodies for the two weight layouts GPT-2 checkpoints carry.
//!
//! * `kn`: `W` is `[K, N]` row-major (GPT-2's `Conv1D`), `y = x W (+ b) (+ y)`; vectorised over N.
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
    let l = S::LANES;
    let width = out[r0].len();
    let x: [&[f32]; R] = from_fn(|r| &a.x[(r0 + r) * a.k..][..a.k]);
    let out = &mut out[r0..r0 + R];
    let mut j = 0;
    while j + 2 * l <= width {
        kn_tile::<S, R, 2>(s, a, &x, out, j);
        j += 2 * l;
    }
    while j + l <= width {
        kn_tile::<S, R, 1>(s, a, &x, out, j);
        j += l;
    }
    for jj in j..width {
        let col = a.col0 + jj;
        for (r, xr) in x.iter().enumerate() {
            let mut acc = 0.0f32;
            for (kk, &xv) in xr.iter().enumerate() {
                acc = s.fma1(xv, a.w[kk * a.n + col], acc);
            }
            if let Some(b) = a.bias {
                acc += b[col];
            }
            if a.accumulate {
                acc += out[r][jj];
            }
            out[r][jj] = acc;
        }
    }
}

#[inline(always)]
fn kn_tile<S: Simd, const R: usize, const C: usize>(
    s: S,
    a: &MatmulKn,
    x: &[&[f32]; R],
    out: &mut [&mut [f32]],
    j: usize,
) {
    let l = S::LANES;
    let col = a.col0 + j;
    let mut acc = [[s.zero(); C]; R];
    for kk in 0..a.k {
        let wrow = &a.w[kk * a.n + col..];
        let wv: [S::V; C] = from_fn(|c| s.load(&wrow[c * l..]));
        for r in 0..R {
            let xv = s.splat(x[r][kk]);
            for c in 0..C {
                acc[r][c] = s.fma(xv, wv[c], acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            let mut v = acc[r][c];
            if let Some(b) = a.bias {
                v = s.add(v, s.load(&b[col + c * l..]));
            }
            let dst = &mut out[r][j + c * l..];
            if a.accumulate {
                v = s.add(s.load(dst), v);
            }
            s.store(dst, v);
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
