//! Activations on their way into a product: rows (layer-normed first where the product fuses
//! the norm) interleaved into blocks of MR rows, BLIS's packed A, so a register tile reads one
//! contiguous run of MR values per k; and the thread-local spare buffers that keep a product
//! from allocating (and faulting in) megabytes per call.

use crate::team;
use crate::Kernels;
use std::cell::RefCell;
use std::thread::LocalKey;

/// The layer norm fused into a product's activation packing
/// ([`Kernels::matmul_kn_normed`]): `(x - mean) / sqrt(var + eps) * gamma + beta` per row.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl Kernels {
    /// `[m, k]` rows (layer-normed first if `norm` says so) interleaved in blocks of `mr`:
    /// block `b` is `[k][mr]` holding rows `b*mr .. b*mr+mr` (zeros past `m`). Blocks are
    /// packed in parallel when there are enough of them: a serial pack of 512 x 3072 took 2.2 ms,
    /// a quarter of the two-thread product.
    pub(crate) fn pack_rows(&self, x: &[f32], k: usize, mr: usize, norm: Option<Norm>) -> Spare<f32> {
        let m = x.len() / k.max(1);
        let len = m.div_ceil(mr) * mr * k;
        let mut buf = Spare::take(&SPARE_ROWS, len);
        let pack_block = |normed: &mut Vec<f32>, b: usize, block: &mut [f32]| {
            let rows = mr.min(m - b * mr);
            let src = &x[b * mr * k..][..rows * k];
            match norm {
                // One-row blocks (w8a8's and M = 1's normed rows) are the normed row itself.
                Some(Norm { gamma, beta, eps }) if mr == 1 => self.layernorm(src, gamma, beta, eps, block),
                Some(Norm { gamma, beta, eps }) => {
                    normed.resize(rows * k, 0.0);
                    for (row, dst) in src.chunks_exact(k).zip(normed.chunks_exact_mut(k)) {
                        self.layernorm(row, gamma, beta, eps, dst);
                    }
                    interleave(&normed[..rows * k], k, mr, block);
                }
                None => interleave(src, k, mr, block),
            }
        };
        let blocks = &mut buf[..];
        if pack_in_parallel(m * k) {
            team::for_each_chunk_mut(blocks, mr * k, |b, block| {
                NORMED.with_borrow_mut(|normed| pack_block(normed, b, block))
            });
        } else {
            let mut normed = Vec::new();
            blocks.chunks_exact_mut(mr * k).enumerate().for_each(|(b, block)| pack_block(&mut normed, b, block));
        }
        buf
    }
}

/// Whether `values` activations are enough to pack (or quantize) in parallel: below 2^16 the
/// fork costs more than it saves.
pub(crate) fn pack_in_parallel(values: usize) -> bool {
    values >= 1 << 16 && team::threads() > 1
}

/// Largest buffer (elements) a thread keeps for its next product.
const SPARE_MAX: usize = 8 << 20;

thread_local! {
    /// This thread's packed-rows buffer between products: a fresh multi-MiB allocation per
    /// product costs page faults or a memset.
    static SPARE_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The same for `w8a8`'s quantized activation words.
    pub(crate) static SPARE_WORDS: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// The same for `bf16dot`'s rounded activations.
    pub(crate) static SPARE_BF16: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A block's layer-normed rows before they are interleaved (a parallel pack's scratch).
    static NORMED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The first `len` values of a buffer borrowed from one of this thread's spares, handed back
/// when dropped. Its contents are stale: the user writes every value it reads.
pub(crate) struct Spare<T: 'static> {
    buf: Vec<T>,
    len: usize,
    home: &'static LocalKey<RefCell<Vec<T>>>,
}

impl<T: Copy + Default> Spare<T> {
    pub(crate) fn take(home: &'static LocalKey<RefCell<Vec<T>>>, len: usize) -> Self {
        let mut buf = home.with(|c| c.take());
        if buf.len() < len {
            // Grows to the largest product's size once; smaller products reuse it, no memset.
            buf.resize(len, T::default());
        }
        Spare { buf, len, home }
    }
}

impl<T> std::ops::Deref for Spare<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T> std::ops::DerefMut for Spare<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T> Drop for Spare<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.len() <= SPARE_MAX {
            self.home.with(|c| c.replace(buf));
        }
    }
}

/// `block[kk * mr + r] = src[r * k + kk]` for the rows of `src` (`[rows, k]`, `rows <= mr`),
/// zeros past them. One k at a time: the writes are contiguous and the `rows` source lines stay
/// in L1 (row by row, a block deeper than L1 missed on every store).
fn interleave(src: &[f32], k: usize, mr: usize, block: &mut [f32]) {
    let rows = src.len() / k;
    for (kk, d) in block.chunks_exact_mut(mr).enumerate() {
        for (r, v) in d[..rows].iter_mut().enumerate() {
            *v = src[r * k + kk];
        }
        d[rows..].fill(0.0);
    }
}
