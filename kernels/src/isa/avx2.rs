//! AVX2 + FMA instantiation.

super::instantiate!(
    #[target_feature(enable = "avx2,fma,f16c")]
    simd: crate::simd::avx2::Avx2,
    token:
        // SAFETY: these functions are only reachable through the table that `dispatch.rs` hands
        // out after `Avx2::detect()` succeeded, so the running CPU has AVX2, FMA and F16C.
        unsafe { crate::simd::avx2::Avx2::assume() },
    // 6 x 16 (BLIS's Haswell/Zen shape): 12 ymm accumulators + 2 weight vectors + 1 broadcast.
    kn_vecs: 2,
    kn_mr: 6,
    // One row: 4 panels (8 accumulators) in flight to hide FMA latency; two rows: 2 panels.
    decode_vecs: (8, 4)
);

// 4 x 16 integer tile: 8 accumulators + 2 weight vectors + the broadcast and each `vpmaddwd`
// product of the 16 ymm registers.
super::instantiate_q!(
    #[target_feature(enable = "avx2,fma,f16c")]
    dot: crate::simd::avx2::Avx2,
    token:
        // SAFETY: as for the table above: reachable only after `Avx2::detect()` succeeded.
        unsafe { crate::simd::avx2::Avx2::assume() },
    vecs: 2,
    mr: 4,
    decode_vecs: 8
);

pub(super) fn w8a8_table() -> super::QTable {
    q_table()
}

/// `vpmaddwd` takes signed activations and needs a widening per weight vector: `int8` runs on
/// the float kernels, dequantizing in the tile.
fn int8_table() -> Option<super::Q24Table> {
    None
}
