//! Q4_0 and Q8_0 weights repacked at load time into groups of 16 interleaved rows, in the
//! layout that [`crate::layout`] describes (and the packed kernels in `arch` read).
//!
//! Plain rows make an int8 dot-product kernel convert one f16 scale and reduce one vector per
//! 18- or 34-byte block, which costs more than reading the block from memory. Interleaving 16
//! rows lets one 512-bit `vpdpbusd` (or four 128-bit `sdot`) work on 16 rows at once with a
//! broadcast activation word, and 16 scales convert with one instruction. Rows past the last
//! whole group are kept as plain rows.

use crate::blocks::{Q4_0_BYTES, Q8_0_BYTES, QK};
use crate::layout::{group_bytes, group_bytes_q8, q4_offsets, GROUP};
use crate::{GgmlType, Matrix};

/// Group bytes for a packable type.
pub(crate) fn group_bytes_of(ty: GgmlType, nb: usize) -> usize {
    if ty == GgmlType::Q8_0 {
        group_bytes_q8(nb)
    } else {
        group_bytes(nb)
    }
}

/// 64-byte aligned storage unit (a cache line; also the AMX kernels' tile rows).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// A weight matrix repacked for faster products (see [`repack`]); owns its data.
pub struct PackedMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    groups: Vec<Line>,
    tail: Vec<u8>,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl PackedMatrix {
    /// The element type of the original matrix.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes held (interleaved groups and tail rows).
    pub fn size_bytes(&self) -> usize {
        self.groups.len() * 64 + self.tail.len()
    }
    /// Number of whole groups of 16 rows.
    pub(crate) fn n_groups(&self) -> usize {
        self.rows / GROUP
    }
    /// The bytes of the interleaved groups.
    pub(crate) fn group_data(&self) -> &[u8] {
        bytemuck_lines(&self.groups)
    }
    /// Plain rows `16 · n_groups()..rows`.
    pub(crate) fn tail(&self) -> &[u8] {
        &self.tail
    }
}

fn bytemuck_lines(lines: &[Line]) -> &[u8] {
    // SAFETY: `Line` is `repr(C)` around `[u8; 64]`: no padding, every byte initialised.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), lines.len() * 64) }
}

fn bytemuck_lines_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: as above; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), lines.len() * 64) }
}

/// Asks Linux to back the 2 MiB-aligned interior of a fresh allocation of `len` bytes at
/// `start` with transparent huge pages (`madvise(MADV_HUGEPAGE)`, effective when THP is
/// `madvise` or `always`), before its pages are first written. Streaming a matrix then costs one
/// TLB miss per 2 MiB instead of per 4 KiB, and the hardware prefetcher, which stops at 4 KiB
/// page boundaries, runs on. Best effort: a refusal changes nothing but speed.
fn advise_huge_pages(start: usize, len: usize) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        const HUGE: usize = 2 << 20;
        let end = start + len;
        let a = start.next_multiple_of(HUGE);
        let b = end / HUGE * HUGE;
        if b > a {
            // SAFETY: `a..b` lies inside the caller's own, not yet used allocation;
            // MADV_HUGEPAGE changes only how the kernel backs the pages, never their
            // contents, and on error nothing happens.
            unsafe {
                libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (start, len);
}

/// A vector of `n` copies of `fill` that Linux backs with transparent huge pages where it can
/// (see `advise_huge_pages`); elsewhere an ordinary vector. For large buffers that are streamed
/// through: weights, and the benchmarks' bandwidth probes.
pub fn huge_page_vec<T: Clone>(n: usize, fill: T) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    advise_huge_pages(v.as_mut_ptr() as usize, n * std::mem::size_of::<T>());
    v.resize(n, fill);
    v
}

/// Repacks `w` into the layout the chosen kernels multiply fastest, or `None` when there is
/// none for its type on this CPU (Q4_0 and Q8_0 are repacked, and only where an int8
/// dot-product instruction makes it pay: AVX-512 VNNI, AVX2, NEON dotprod). Use the result with
/// [`crate::matmul`] in place of `w`: same results to float rounding, same size in memory,
/// faster. Row ranges that are multiples of 16 are fastest.
pub fn repack(w: &Matrix<'_>) -> Option<PackedMatrix> {
    if !crate::arch::kernels().packed_pays {
        return None;
    }
    repack_always(w)
}

/// [`repack`] regardless of the kernels (tests use it).
pub(crate) fn repack_always(w: &Matrix<'_>) -> Option<PackedMatrix> {
    let (bb, qs_bytes) = match w.ty {
        GgmlType::Q4_0 => (Q4_0_BYTES, 256),
        GgmlType::Q8_0 => (Q8_0_BYTES, 512),
        _ => return None,
    };
    let nb = w.cols / QK;
    let row_bytes = nb * bb;
    let n_groups = w.rows / GROUP;
    let gb = group_bytes_of(w.ty, nb);
    let mut groups = huge_page_vec(n_groups * gb / 64, Line([0; 64]));
    let bytes = bytemuck_lines_mut(&mut groups);
    // Where block column b's quants and scales go in a group.
    let offsets = |b: usize| match w.ty {
        GgmlType::Q4_0 => q4_offsets(nb, b),
        _ => (qs_bytes * b, nb * qs_bytes + 32 * b),
    };
    for (g, dst) in bytes.chunks_exact_mut(gb).enumerate() {
        for r in 0..GROUP {
            let row = &w.data[(g * GROUP + r) * row_bytes..][..row_bytes];
            for (b, blk) in row.chunks_exact(bb).enumerate() {
                let (qo, so) = offsets(b);
                dst[so + 2 * r..][..2].copy_from_slice(&blk[..2]);
                for k in 0..qs_bytes / 64 {
                    dst[qo + 64 * k + 4 * r..][..4].copy_from_slice(&blk[2 + 4 * k..2 + 4 * k + 4]);
                }
            }
        }
    }
    let tail = w.data[n_groups * GROUP * row_bytes..w.rows * row_bytes].to_vec();
    Some(PackedMatrix {
        ty: w.ty,
        rows: w.rows,
        cols: w.cols,
        groups,
        tail,
    })
}
