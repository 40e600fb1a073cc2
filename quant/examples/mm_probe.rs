//! One product timed in isolation, on the chosen kernel set (`RAVEN_ISA` picks another):
//! `cargo run --release -p raven-quant --example mm_probe -- ROWS COLS TOKENS 4|8` (Q4_0 or
//! Q8_0 weights, random, repacked), printing ms and multiply-adds per second (`REPS`: repeats).
mod common;

use raven_quant::*;
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (rows, cols, n, ty) = (
        args[0],
        args[1],
        args[2],
        if args[3] == 4 {
            GgmlType::Q4_0
        } else {
            GgmlType::Q8_0
        },
    );
    let bb = if ty == GgmlType::Q4_0 { 18 } else { 34 };
    let data = common::random_blocks(rows, cols, bb);
    let w = Matrix::new(ty, rows, cols, &data).unwrap();
    let p = repack(&w).unwrap();
    let x: Vec<f32> = (0..n * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let mut act = Activations::new();
    act.prepare(&x, n, cols, ty);
    let mut out = vec![0f32; n * rows];
    matmul(&p, &act, 0..rows, &mut out);
    let reps = std::env::var("REPS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(5);
    let t = Instant::now();
    for _ in 0..reps {
        matmul(&p, &act, 0..rows, &mut out);
    }
    let dt = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "{} {rows}x{cols} n={n}: {:.2} ms, {:.1} GMAC/s",
        isa(),
        dt * 1e3,
        (rows * cols * n) as f64 / dt / 1e9
    );
}
