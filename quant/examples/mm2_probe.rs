//! One Q4_0 product split across a team of threads (as the engine runs it), timed over four
//! copies of the matrix so that the weights stream from memory:
//! `cargo run --release -p raven-quant --example mm2_probe -- ROWS COLS TOKENS THREADS`,
//! printing ms per product, multiply-adds per second and the weights' read rate.
mod common;
use raven_quant::*;
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (rows, cols, n, threads) = (args[0], args[1], args[2], args[3]);
    let bb = 18;
    let data = common::random_blocks(rows, cols, bb);
    let copies = 4;
    let ws: Vec<Vec<u8>> = (0..copies).map(|_| data.clone()).collect();
    let ps: Vec<PackedMatrix> = ws
        .iter()
        .map(|d| repack(&Matrix::new(GgmlType::Q4_0, rows, cols, d).unwrap()).unwrap())
        .collect();
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut act = Activations::new();
    act.prepare(&x, n, cols, GgmlType::Q4_0);
    let mut out = vec![0f32; n * rows];
    let mut sc = Vec::new();
    let team = Team::new(threads, "probe").unwrap();
    let reps = 20;
    team.enter(|| {
        for p in &ps {
            par_matmul(Weights::Packed(p), &act, &mut out, &mut sc);
        }
    });
    let t = Instant::now();
    team.enter(|| {
        for _ in 0..reps {
            for p in &ps {
                par_matmul(Weights::Packed(p), &act, &mut out, &mut sc);
            }
        }
    });
    let dt = t.elapsed().as_secs_f64() / (reps * copies) as f64;
    println!(
        "{} {rows}x{cols} n={n} t={threads}: {:.2} ms, {:.1} GMAC/s, {:.1} GB/s",
        isa(),
        dt * 1e3,
        (rows * cols * n) as f64 / dt / 1e9,
        (rows * cols / 32 * 18) as f64 / dt / 1e9
    );
}
