//! Matrix products with rows split across the current team's members (see [`crate::Team`]),
//! or the threads of the current rayon pool.
//!
//! The engine and the benchmarks share this so that a benchmark measures what a decoded token
//! runs: a persistent pool entered once (`ThreadPool::install`), rows dealt out in tasks of
//! whole groups of 16. (Spawning two threads per product, as the benchmarks once did, cost
//! ~95 µs here: 5% of a 17920×5280 Q4_0 product.)

use crate::{matmul, Activations, Weights};

/// Products and attention with fewer multiply-adds than this run on the calling thread: waking
/// the pool costs ~10 µs here, as much as ~1M multiply-adds, so a small model (the demo,
/// h = 64) decoded on two threads ran at half the speed of one.
pub const SERIAL_WORK: usize = 1 << 20;

/// Rows per parallel task: a multiple of 16, two tasks per thread. One
/// each leaves a thread idle when the other is held up; four each split a decode's row runs
/// finely enough that the last tasks' imbalance shows (full-size Q4_0 decode, 2 threads,
/// alternated: 2 per thread beat 4 in 5 of 6 pairs, by 0.04 of the bound on average).
fn chunk_rows(rows: usize, threads: usize) -> usize {
    let target = rows.div_ceil(threads.max(1) * 2).max(16);
    target.div_ceil(16) * 16
}

/// `out[t · rows + r] = W[r] · x[t]` for all rows and the `n` prepared activations, rows split
/// across the current [`crate::Team`]'s members (else rayon's current pool's threads), on the
/// calling thread when the product is under [`SERIAL_WORK`] or there is one thread. `scatter`
/// is scratch for `n > 1`.
pub fn par_matmul(w: Weights<'_>, act: &Activations, out: &mut [f32], scatter: &mut Vec<f32>) {
    let rows = w.rows();
    let n = act.n();
    assert_eq!(out.len(), n * rows, "par_matmul: output of {n} × {rows}");
    let threads = crate::team::current_threads();
    let chunk = chunk_rows(rows, threads);
    if rows <= chunk || threads <= 1 || n * rows * w.cols() < SERIAL_WORK {
        matmul(w, act, 0..rows, out);
        return;
    }
    if n == 1 {
        crate::team::for_each_chunk(out, chunk, &mut Vec::new(), &|_, i, part| {
            let r0 = i * chunk;
            matmul(w, act, r0..r0 + part.len(), part);
        });
        return;
    }
    // Each task computes [n][its rows]; gather into [n][rows] afterwards.
    if scatter.len() != n * rows {
        scatter.resize(n * rows, 0.0); // every value is written below
    }
    crate::team::for_each_chunk(scatter, chunk * n, &mut Vec::new(), &|_, i, part| {
        let r0 = i * chunk;
        matmul(w, act, r0..r0 + part.len() / n, part);
    });
    for (i, part) in scatter.chunks(chunk * n).enumerate() {
        let r0 = i * chunk;
        let nr = part.len() / n;
        for t in 0..n {
            out[t * rows + r0..t * rows + r0 + nr].copy_from_slice(&part[t * nr..(t + 1) * nr]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{quantize_row, GgmlType, Matrix};

    /// Split across a pool (one token and several, plain and repacked rows) gives exactly the
    /// single-threaded product: every row runs the same kernel either way.
    #[test]
    fn parallel_equals_serial() {
        let (rows, cols) = (528, 2048); // 33 groups of 16: uneven tasks
        let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut bytes = vec![0u8; rows * GgmlType::Q4_0.row_bytes(cols as u64).unwrap() as usize];
        quantize_row(GgmlType::Q4_0, &w, &mut bytes).unwrap();
        let m = Matrix::new(GgmlType::Q4_0, rows, cols, &bytes).unwrap();
        let packed = crate::repack(&m);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let team = crate::Team::new(3, "test").unwrap();
        for n in [1, 3] {
            assert!(
                n * rows * cols >= SERIAL_WORK,
                "the test must reach the parallel path"
            );
            let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut act = Activations::new();
            act.prepare(&x, n, cols, GgmlType::Q4_0);
            let mut weights = vec![Weights::Plain(m)];
            weights.extend(packed.as_ref().map(Weights::Packed));
            for w in weights {
                let mut serial = vec![0f32; n * rows];
                matmul(w, &act, 0..rows, &mut serial);
                let mut par = vec![f32::NAN; n * rows];
                let mut scatter = Vec::new();
                pool.install(|| par_matmul(w, &act, &mut par, &mut scatter));
                assert_eq!(par, serial, "n = {n}");
                let mut teamed = vec![f32::NAN; n * rows];
                team.enter(|| par_matmul(w, &act, &mut teamed, &mut scatter));
                assert_eq!(teamed, serial, "n = {n}, team");
            }
        }
    }
}
