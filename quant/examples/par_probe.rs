//! Parallel products back to back at one shape, on pools of 1 and 2 threads (as decoding runs
//! them): `cargo run --release -p raven-quant --example par_probe -- ROWS COLS REPS`.
mod common;
use raven_quant::*;
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (rows, cols, reps) = (args[0], args[1], args[2]);
    let data = common::random_blocks(rows, cols, 18);
    // Copies enough to stream from memory, not cache.
    let copies = (1usize << 30) / data.len() + 1;
    let ws: Vec<Vec<u8>> = (0..copies).map(|_| data.clone()).collect();
    let mats: Vec<Matrix> = ws
        .iter()
        .map(|d| Matrix::new(GgmlType::Q4_0, rows, cols, d).unwrap())
        .collect();
    let packed: Vec<PackedMatrix> = mats.iter().map(|m| repack(m).unwrap()).collect();
    let x: Vec<f32> = (0..cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut act = Activations::new();
    act.prepare(&x, 1, cols, GgmlType::Q4_0);
    let mut out = vec![0f32; rows];
    let mut scatter = Vec::new();
    for threads in [1, 2, 1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let t = Instant::now();
            for i in 0..reps {
                par_matmul(
                    Weights::Packed(&packed[i % copies]),
                    &act,
                    &mut out,
                    &mut scatter,
                );
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            let bytes = rows * cols / 32 * 18;
            println!(
                "{threads} threads {rows}x{cols}: {:.1} us per product, {:.1} GB/s",
                dt * 1e6,
                bytes as f64 / dt / 1e9
            );
        });
    }

    // The same split on a spinning helper thread: the main thread takes the first half of the
    // rows, the helper the second, meeting on atomics (no sleeping, no task queue).
    use std::sync::atomic::{AtomicUsize, Ordering};
    let go = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let half = (rows / 2).div_ceil(16) * 16;
    let outp = out.as_mut_ptr() as usize;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut seen = 0;
            loop {
                let g = loop {
                    let g = go.load(Ordering::Acquire);
                    if g != seen {
                        break g;
                    }
                    std::hint::spin_loop();
                };
                if g == usize::MAX {
                    return;
                }
                seen = g;
                let o = unsafe {
                    std::slice::from_raw_parts_mut((outp as *mut f32).add(half), rows - half)
                };
                matmul(
                    Weights::Packed(&packed[(g - 1) % copies]),
                    &act,
                    half..rows,
                    o,
                );
                done.store(g, Ordering::Release);
            }
        });
        for round in 0..2 {
            let t = Instant::now();
            for i in 0..reps {
                let g = round * reps + i + 1;
                go.store(g, Ordering::Release);
                let o = unsafe { std::slice::from_raw_parts_mut(outp as *mut f32, half) };
                matmul(Weights::Packed(&packed[(g - 1) % copies]), &act, 0..half, o);
                while done.load(Ordering::Acquire) != g {
                    std::hint::spin_loop();
                }
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            let bytes = rows * cols / 32 * 18;
            println!(
                "spin 2 threads {rows}x{cols}: {:.1} us per product, {:.1} GB/s",
                dt * 1e6,
                bytes as f64 / dt / 1e9
            );
        }
        go.store(usize::MAX, Ordering::Release);
    });
}
