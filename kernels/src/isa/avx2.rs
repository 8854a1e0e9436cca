//! AVX2 + FMA instantiation.
//!
//! Block sizes (BLIS names; see the microkernel contract in `ops/matmul.rs`):
//!
//! | parameter | f32 / f16 / bf16 / int8 weight-only | w8a8 (`vpmaddwd`) | cache it targets |
//! |---|---|---|---|
//! | MR (tile rows) | 6 (BLIS's Haswell/Zen 3 sgemm shape) | 4 | registers: 12 (8) of 16 ymm accumulate |
//! | NR (panel width) | 16 (2 ymm) | 16, 2-deep k groups | registers; a panel row is one 64-byte line |
//! | MC (rows per block) | `MC_BYTES` / (4 K): 384 KiB of activations | same | L2 (512 KiB per core on Zen 3) |
//! | one-row decode tile | 64 columns (4 panels) | 64 | keeps 8 FMA chains in flight; the panels stream from memory |
//! | two-row decode tile | 32 columns (2 panels) | (row tiles) | as above |
//!
//! `w4a8` (`vpmaddubsw`): MR 4, NR 8 (one ymm: 8 columns x 4 k per unpacked weight vector), one-row
//! tile 32 columns (4 panels). Within a group each accumulator has a 16-bit partner holding the
//! group's running sums, so a tile needs two registers per output vector: 4 x 8 takes 8 of them,
//! plus the two weight vectors a load unpacks into, the broadcasts and the nibble mask (a 4 x 16
//! tile would need 16 for its accumulators alone).

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

/// No bf16 dot product in AVX2: `bf16dot` widens the halves to f32 for the FMAs.
pub(super) fn bf16dot_table() -> super::Bf16Table {
    widened_bf16_table()
}

super::instantiate_w4!(
    #[target_feature(enable = "avx2,fma,f16c")]
    dot: crate::simd::avx2::Avx2,
    token:
        // SAFETY: as for the table above: reachable only after `Avx2::detect()` succeeded.
        unsafe { crate::simd::avx2::Avx2::assume() },
    vecs: 1,
    mr: 4,
    decode_vecs: 4
);

pub(super) fn w4a8_table() -> super::W4Table {
    w4_table()
}
