//! Scalar instantiation: runs everywhere; the dispatch fallback.

super::instantiate!(
    simd: crate::simd::scalar::Scalar,
    token: crate::simd::scalar::Scalar,
    // 4 x 16 scalar accumulators: wide enough for the compiler to keep several FMA chains busy.
    kn_vecs: 16,
    kn_mr: 4,
    // One row: 16 scalar accumulators already; no extra panels.
    decode_vecs: (16, 16)
);
