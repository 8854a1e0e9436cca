//! Scalar instantiation: runs everywhere; the dispatch fallback.
//!
//! Block sizes: MR 4, NR 16 (one "vector" is one lane), MC as for the SIMD ISAs (L2), one-row
//! decode tile = one panel. Chosen for the compiler to keep 16 independent FMA chains per row,
//! not for any cache: the scalar kernels are the portable fallback, not a target.

super::instantiate!(
    simd: crate::simd::scalar::Scalar,
    token: crate::simd::scalar::Scalar,
    // 4 x 16 scalar accumulators: wide enough for the compiler to keep several FMA chains busy.
    kn_vecs: 16,
    kn_mr: 4,
    // One row: 16 scalar accumulators already; no extra panels.
    decode_vecs: (16, 16)
);

super::instantiate_q!(
    dot: crate::simd::scalar::Scalar,
    token: crate::simd::scalar::Scalar,
    vecs: 16,
    mr: 4,
    decode_vecs: 16
);

pub(super) fn w8a8_table() -> super::QTable {
    q_table()
}

/// The scalar dot takes signed activation bytes: `int8` runs on the float kernels.
fn int8_table() -> Option<super::Q24Table> {
    None
}

pub(super) fn bf16dot_table() -> super::Bf16Table {
    widened_bf16_table()
}

// 4 x 16 (one panel of 16 one-lane "vectors"), as for w8a8.
super::instantiate_w4!(
    dot: crate::simd::scalar::Scalar,
    token: crate::simd::scalar::Scalar,
    vecs: 16,
    mr: 4,
    decode_vecs: 16
);

pub(super) fn w4a8_table() -> super::W4Table {
    w4_table()
}
