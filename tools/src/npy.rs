//! Minimal writer for NumPy `.npy` files (format 1.0, little-endian f32, C order).

use std::io::Write;

/// Encodes `data` as a `[rows, cols]` little-endian f32 array.
pub fn encode_f32(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(data.len(), rows * cols, "npy: data does not match shape");
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of
    // 64 and ended by a newline, as the format requires.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.write_all(header.as_bytes()).expect("vec write");
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}
