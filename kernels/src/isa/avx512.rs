//! AVX-512F instantiation.

super::instantiate!(
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    simd: crate::simd::avx512::Avx512,
    token:
        // SAFETY: these functions are only reachable through the table that `dispatch.rs` hands
        // out after `Avx512::detect()` succeeded, so the running CPU has AVX-512F (and F16C).
        unsafe { crate::simd::avx512::Avx512::assume() },
    // 12 x 32: 24 zmm accumulators + 2 weight vectors + 1 broadcast of the 32 registers.
    kn_vecs: 2,
    kn_mr: 12,
    // One row: 4 panels (8 accumulators) in flight to hide FMA latency; two rows: 2 panels.
    decode_vecs: (8, 4)
);
