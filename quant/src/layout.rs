//! The interleaved layouts of [`crate::PackedMatrix`]: where [`crate::repack`] writes each
//! byte and the packed kernels in `arch` read it. A leaf module (it imports only a block size
//! from [`crate::blocks`]), so that `packed` and `arch` both depend on it and not on each other.
//!
//! Layout of one group of 16 rows with `nb` blocks per row ([`group_bytes`] or
//! [`group_bytes_q8`] bytes, a multiple of 64): the quants of block column `b` take `QS` bytes
//! (256 for Q4_0, 512 for Q8_0), made of 64-byte chunks `k`, where bytes `4r..4r + 4` of chunk
//! `k` are bytes `4k..4k + 4` of row `r`'s `qs` (Q4_0: low nibbles are values `4k..4k + 4`,
//! high nibbles values `16 + 4k..16 + 4k + 4`; Q8_0: values `4k..4k + 4`, as stored); the
//! scales of a column take 32 bytes (16 f16, row order). Q8_0: all quants, then all scales.
//! Q4_0: pairs of columns, each pair's quants followed by its scales ([`q4_offsets`]), so that
//! a group is one stream of memory (decoding read the scales as a second stream per group
//! before, and the kernels' share of the read bandwidth was lower; see `benches/roofline.rs`).

use crate::blocks::Q8_0_BYTES;

/// Rows per interleaved group.
pub(crate) const GROUP: usize = 16;

/// Bytes of one group of 16 Q4_0 rows of `nb` blocks: 576 per pair of block columns, 320 for
/// a last odd one (both multiples of 64).
pub(crate) fn group_bytes(nb: usize) -> usize {
    nb / 2 * 576 + nb % 2 * 320
}

/// Byte offsets of block column `b`'s quants and scales in a Q4_0 group of `nb` columns: pair
/// `b / 2` starts at `576 · (b / 2)` with its columns' quants (256 bytes each), then their
/// scales (32 bytes each).
#[inline(always)]
pub(crate) fn q4_offsets(nb: usize, b: usize) -> (usize, usize) {
    let (pair, c) = (b / 2, b % 2);
    let cols = (nb - 2 * pair).min(2);
    (576 * pair + 256 * c, 576 * pair + 256 * cols + 32 * c)
}

/// Bytes of one group of 16 Q8_0 rows of `nb` blocks (padded to 64).
pub(crate) fn group_bytes_q8(nb: usize) -> usize {
    (nb * Q8_0_BYTES * GROUP).div_ceil(64) * 64
}
