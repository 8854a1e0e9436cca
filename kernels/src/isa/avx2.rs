//! AVX2 + FMA instantiation.

super::instantiate!(
    #[target_feature(enable = "avx2,fma")]
    token:
        // SAFETY: these functions are only reachable through the table that `dispatch.rs` hands
        // out after `Avx2::detect()` succeeded, so the running CPU has AVX2 and FMA.
        unsafe { crate::simd::avx2::Avx2::assume() }
);
