//! The work grid: how one product's output is cut into chunks for the team's threads. Pure
//! arithmetic on shapes, unit-tested here; chunk boundaries never change a result (see the
//! batch-invariance contract in `ops/matmul.rs`), only which thread computes what.

use crate::team;

/// Below this many multiply-adds a product runs on the calling thread: a rayon fork costs
/// microseconds, more than the work itself.
pub(crate) const PAR_MIN_FLOPS: usize = 1 << 17;
/// Rows of a product are cut into groups of this many or more on average, since each reads its
/// panels' weights again. Cut into three groups of one register tile, a decode step's 32 rows
/// ran 1.2-1.6x slower from memory on 16 threads than two-panel chunks of all 32 rows (two
/// runs on a 16-core machine, not side by side).
const MIN_GROUP_ROWS: usize = 64;
/// Column chunks are at least this wide (two AVX-512 panels), so a chunk amortises its
/// start-up: one-panel chunks of a 768 x 768 product took 1.3-1.7x as long in cache on 16
/// threads (two runs on a 16-core machine, not side by side).
const MIN_CHUNK: usize = 64;

/// Shape of a product: `x` is `[m, k]`, the result `[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

/// Tile height for `m` rows: as many tiles as `max_mr` needs, rows spread evenly over them (50
/// rows as 5 x 10 rather than 4 x 12 + 2: a 2-row tile has too few accumulators to keep the
/// FMA units busy). Which rows share a tile never changes a result (batch invariance).
pub(crate) fn balanced_tile(m: usize, max_mr: usize) -> usize {
    m.div_ceil(m.div_ceil(max_mr))
}

/// How a product's output may be cut into chunks: columns at multiples of `align` (the tile
/// width the kernel prefers: several panels for one row), or of `panel` when that leaves
/// threads idle; rows at multiples of `row_block` (the packed activations' block height; 0:
/// rows are not split).
#[derive(Clone, Copy)]
pub(crate) struct Cuts {
    pub align: usize,
    pub panel: usize,
    pub row_block: usize,
}

impl Cuts {
    /// The cuts every product uses, f32 and integer alike: whole panels of `nr` columns, or for
    /// one row whole decode tiles of `decode_cols` (so every chunk streams several panels at
    /// once); rows in whole activation blocks of `row_block`.
    pub(crate) fn for_product(m: usize, nr: usize, decode_cols: usize, row_block: usize) -> Cuts {
        Cuts { align: if m == 1 { decode_cols } else { nr }, panel: nr, row_block }
    }
}

/// One chunk of a product's output: its first row and column, and its rows' sub-slices.
pub(crate) struct Chunk<'a> {
    pub row0: usize,
    pub col0: usize,
    pub rows: Vec<&'a mut [f32]>,
}

/// Splits `out` (`[m, n]` row-major) into a grid of chunks and hands each to `f`, in parallel
/// when the product is big enough. Columns are cut first (each weight panel is then read by
/// one thread); rows too when there are too few columns to keep every thread busy (many cores,
/// a narrow product: 768 columns are 24 panels of 32 for 16 threads). Chunk boundaries never
/// change the arithmetic (see the batch-invariance contract in `ops/matmul.rs`).
pub(crate) fn for_chunks(out: &mut [f32], dims: Dims, cuts: Cuts, f: impl Fn(&mut Chunk) + Sync) {
    let Dims { m, k, n } = dims;
    if m == 0 || n == 0 {
        return;
    }
    let threads = team::threads();
    let (width, height) =
        if m * n * k < PAR_MIN_FLOPS || threads == 1 { (n, m) } else { chunk_shape(m, n, threads, cuts) };
    let cols = n.div_ceil(width);
    let mut chunks: Vec<Chunk> = (0..m.div_ceil(height) * cols)
        .map(|c| Chunk { row0: c / cols * height, col0: c % cols * width, rows: Vec::with_capacity(height.min(m)) })
        .collect();
    for (r, row) in out.chunks_mut(n).enumerate() {
        for (c, piece) in row.chunks_mut(width).enumerate() {
            chunks[r / height * cols + c].rows.push(piece);
        }
    }
    team::for_each_mut(&mut chunks, |_, c| f(c));
}

/// `(columns, rows)` of each chunk for `threads` threads: about four chunks a thread (so a
/// late thread costs little) of at least `MIN_CHUNK` columns, `align`-wide; narrower (whole
/// panels) when whole decode tiles would leave threads without a chunk; and groups of rows
/// when the columns alone give too few chunks.
fn chunk_shape(m: usize, n: usize, threads: usize, cuts: Cuts) -> (usize, usize) {
    let Cuts { align, panel, row_block } = cuts;
    let target = threads * 4;
    let width_for = |a: usize| n.div_ceil(target.min(n.div_ceil(MIN_CHUNK))).div_ceil(a) * a;
    let mut width = width_for(align);
    if n.div_ceil(width) < threads {
        width = width_for(panel);
    }
    let cols = n.div_ceil(width);
    if row_block == 0 || cols >= 2 * threads {
        return (width, m);
    }
    // Every group of rows reads all its panels' weights again: `MIN_GROUP_ROWS` or more each, on average.
    let blocks = m.div_ceil(row_block);
    match blocks.min(target.div_ceil(cols)).min(m / MIN_GROUP_ROWS) {
        0 | 1 => (width, m),
        groups => (width, blocks.div_ceil(groups) * row_block),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AVX-512's shapes: 32-column panels, decode tiles of 128 columns, blocks of up to 12 rows.
    fn cuts(m: usize) -> Cuts {
        let row_block = if m > 1 { balanced_tile(m, 12) } else { 0 };
        Cuts { align: if m == 1 { 128 } else { 32 }, panel: 32, row_block }
    }

    fn chunks(m: usize, n: usize, threads: usize) -> usize {
        let (w, h) = chunk_shape(m, n, threads, cuts(m));
        n.div_ceil(w) * m.div_ceil(h)
    }

    #[test]
    fn two_threads_cut_gpt2_products_by_columns_only() {
        for n in [768, 2304, 3072, 50257] {
            for m in [1, 8, 32, 512] {
                let (w, h) = chunk_shape(m, n, 2, cuts(m));
                assert_eq!(h, m, "M = {m}, N = {n}");
                assert!(n.div_ceil(w) >= 6, "M = {m}, N = {n}: {} column chunks", n.div_ceil(w));
                // As before the grid could cut rows: about eight chunks, of whole decode tiles
                // for one row.
                let align = cuts(m).align;
                assert_eq!(w, n.div_ceil(8.min(n.div_ceil(64))).div_ceil(align) * align);
            }
        }
    }

    #[test]
    fn sixteen_threads_get_work_from_narrow_products() {
        // 768 columns are 24 panels: one row drops to two-panel chunks, more rows add row groups.
        assert_eq!(chunk_shape(1, 768, 16, cuts(1)), (64, 1));
        // 72 panels make 18 decode tiles: enough to keep whole tiles.
        assert_eq!(chunk_shape(1, 2304, 16, cuts(1)), (128, 1));
        assert_eq!(chunk_shape(32, 768, 16, cuts(32)), (64, 32));
        assert_eq!(chunks(128, 768, 16), 24);
        assert_eq!(chunks(512, 768, 16), 72);
        // Wide products are cut by columns only.
        assert_eq!(chunk_shape(512, 3072, 16, cuts(512)).1, 512);
        // Row groups are whole blocks (here 17 blocks of 12 rows: 6, 6 and 5 of them), and
        // none is cut below 64 rows.
        assert_eq!(chunk_shape(200, 96, 16, cuts(200)), (64, 72));
        assert_eq!(chunk_shape(127, 96, 16, cuts(127)).1, 127);
    }
}
