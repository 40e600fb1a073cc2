//! Helpers shared by the benches: random weights at Huginn-0125's shapes, huge-page buffers,
//! a threaded mat-vec and the memory-read probe.

#![allow(dead_code)] // each bench uses a subset

use std::sync::OnceLock;

use rayon::prelude::*;

use raven_quant::{huge_page_vec, matmul, par_matmul, Activations, GgmlType, Weights};

/// Huginn-0125's weight shapes (rows × cols) and their names.
pub const SHAPES: [(&str, usize, usize); 5] = [
    ("17920x5280", 17920, 5280),
    ("5280x17920", 5280, 17920),
    ("5280x5280", 5280, 5280),
    ("15840x5280", 15840, 5280),
    ("65536x5280", 65536, 5280),
];

/// `(rows, cols)` of a shape name.
pub fn shape(name: &str) -> (usize, usize) {
    let (_, r, c) = SHAPES.iter().find(|s| s.0 == name).expect("known shape");
    (*r, *c)
}

/// Bytes of a `rows × cols` matrix of `ty`.
pub fn matrix_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize {
    rows * cols / ty.block_size() * ty.type_size()
}

/// Random weights with sane scales (fast to make; the values do not change the speed).
pub fn weights(ty: GgmlType, rows: usize, cols: usize, copy: usize) -> Vec<u8> {
    let bytes = matrix_bytes(ty, rows, cols);
    let mut state = 0x1234_5678_9abc_def1 ^ bytes as u64 ^ (copy as u64) << 40;
    let mut v = huge_page_vec(bytes, 0u8);
    for c in v.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        c.copy_from_slice(&state.to_le_bytes()[..c.len()]);
    }
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    match ty {
        GgmlType::F16 => {
            for c in v.chunks_exact_mut(2) {
                c[1] &= 0x3b; // |x| < 1
            }
        }
        _ => {
            for c in v.chunks_exact_mut(ty.type_size()) {
                c[..2].copy_from_slice(&scale);
            }
        }
    }
    v
}

/// Copies needed for `bytes`-sized matrices to stream from memory (≥ 256 MiB in all, well past
/// the 32 MiB L3).
pub fn copies_for(bytes: usize) -> usize {
    (256usize << 20).div_ceil(bytes)
}

/// Activations for `cols` values prepared for weights of `ty`.
pub fn activations(ty: GgmlType, cols: usize) -> Activations {
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut act = Activations::new();
    act.prepare(&x, 1, cols, ty);
    act
}

/// A persistent pool of `threads` threads (one per count, built on first use), as the engine
/// keeps one: spawning threads per product cost ~95 µs here, 5% of a large Q4_0 product.
pub fn pool(threads: usize) -> &'static rayon::ThreadPool {
    static POOLS: [OnceLock<rayon::ThreadPool>; 16] = [const { OnceLock::new() }; 16];
    assert!(
        (1..=16).contains(&threads),
        "benches run 1 to 16 threads, not {threads}"
    );
    POOLS[threads - 1].get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool")
    })
}

/// One mat-vec over all rows on `threads` threads: the engine's [`par_matmul`] inside a
/// persistent pool.
pub fn run(w: Weights<'_>, act: &Activations, out: &mut [f32], threads: usize) {
    let mut scatter = Vec::new();
    pool(threads).install(|| par_matmul(w, act, &mut out[..w.rows()], &mut scatter));
}

/// The first `rows` rows only, on the calling thread.
pub fn run_rows(w: Weights<'_>, act: &Activations, rows: usize, out: &mut [f32]) {
    matmul(w, act, 0..rows, out);
}

/// A 1 GiB buffer for [`probe`] (huge pages where Linux gives them).
pub fn probe_buffer() -> Vec<u64> {
    let mut v = huge_page_vec(1usize << 27, 0u64);
    for (i, x) in v.iter_mut().enumerate() {
        *x = i as u64;
    }
    v
}

/// Memory-read probe: sums `buf` on `threads` threads of [`pool`], one equal share each;
/// returns the sum (keep it alive).
pub fn probe(buf: &[u64], threads: usize) -> u64 {
    let per = buf.len().div_ceil(threads);
    pool(threads).install(|| {
        buf.par_chunks(per)
            .map(|c| {
                // Eight lanes so the compiler vectorizes the sum.
                let mut acc = [0u64; 8];
                for ch in c.chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] = acc[i].wrapping_add(ch[i]);
                    }
                }
                acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
            })
            .reduce(|| 0, u64::wrapping_add)
    })
}
