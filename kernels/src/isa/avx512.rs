//! AVX-512F instantiation.
//!
//! Block sizes (BLIS names; see the microkernel contract in `ops/matmul.rs`):
//!
//! | parameter | f32 / f16 / bf16 / int8 weight-only | w8a8 (VNNI) | int8 on 24-bit activations | cache it targets |
//! |---|---|---|---|---|
//! | MR (tile rows) | 12 | 12 | 4 (x 3 digit rows) | registers: 24 of 32 zmm accumulate |
//! | NR (panel width) | 32 (2 zmm) | 32, 4-deep k groups | 32 | registers; a panel row is 128 bytes, two cache lines |
//! | MC (rows per block) | `MC_BYTES` / (4 K): 384 KiB of activations | same | same | L2 (2 MiB per core here) |
//! | one-row decode tile | 128 columns (4 panels) | 128 | 96 (3 panels) | keeps 8 FMA chains in flight; the panels stream from memory |
//! | two-row decode tile | 64 columns (2 panels) | (row tiles) | (row tiles) | as above |
//!
//! `w4a8` (VNNI `vpdpbusd`): MR 6, NR 32 (2 zmm), one-row tile 128 columns (4 panels). A group's
//! 32-bit sums and the f32 accumulators take two registers per output vector: 6 x 2 x 2 = 24 of
//! the 32 zmm, plus 4 unpacked weight vectors, the broadcast and the nibble mask.

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

// 12 x 32 integer tile: 24 accumulators + 2 weight vectors + 1 broadcast (as for f32).
super::instantiate_q!(
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    dot: crate::simd::avx512::Vnni512,
    token:
        // SAFETY: `w8a8_table` below hands these out only after `Vnni512::detect()` succeeded.
        unsafe { crate::simd::avx512::Vnni512::assume() },
    vecs: 2,
    mr: 12,
    decode_vecs: 8
);

// `int8` on the same weights: up to 4 rows of 3 digit accumulator rows x 2 vectors (24
// accumulators); one row: 3 x 6 accumulators over 3 panels (3 x 8 spilled).
super::instantiate_q24!(
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    dot: crate::simd::avx512::Vnni512,
    token:
        // SAFETY: as for `q_table` above: reachable only after `Vnni512::detect()` succeeded.
        unsafe { crate::simd::avx512::Vnni512::assume() },
    vecs: 2,
    mr: 4,
    decode_vecs: 6
);

/// VNNI where the CPU has it; otherwise (AVX-512F without VNNI, e.g. Skylake-X) the AVX2
/// `vpmaddwd` kernels, which every AVX-512 CPU can run.
pub(super) fn w8a8_table() -> super::QTable {
    if crate::simd::avx512::Vnni512::detect().is_some() {
        q_table()
    } else {
        super::avx2::w8a8_table()
    }
}

// The `bf16dot` tile of `vdpbf16ps`: 12 x 32, 24 accumulators + 2 weight vectors + 1 broadcast
// pair word (as for f32, each instruction covering two k).
super::instantiate_bf16!(
    #[target_feature(enable = "avx512f,avx512bf16,avx2,fma,f16c")]
    dot: crate::simd::avx512::Bf16Avx512,
    token:
        // SAFETY: `bf16dot_table` below hands these out only after `Bf16Avx512::detect()`
        // succeeded.
        unsafe { crate::simd::avx512::Bf16Avx512::assume() },
    vecs: 2,
    mr: 12,
    decode_vecs: 8
);

/// `vdpbf16ps` where the CPU has AVX512-BF16; otherwise the same sums on FMAs over widened
/// halves.
pub(super) fn bf16dot_table() -> super::Bf16Table {
    if crate::simd::avx512::Bf16Avx512::detect().is_some() {
        pairs_bf16_table()
    } else {
        widened_bf16_table()
    }
}

super::instantiate_w4!(
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
    dot: crate::simd::avx512::Vnni512,
    token:
        // SAFETY: `w4a8_table` below hands these out only after `Vnni512::detect()` succeeded.
        unsafe { crate::simd::avx512::Vnni512::assume() },
    vecs: 2,
    mr: 6,
    decode_vecs: 8
);

/// VNNI where the CPU has it; otherwise the AVX2 `vpmaddubsw` kernels (and their panel width),
/// which every AVX-512 CPU can run.
pub(super) fn w4a8_table() -> super::W4Table {
    if crate::simd::avx512::Vnni512::detect().is_some() {
        w4_table()
    } else {
        super::avx2::w4a8_table()
    }
}
