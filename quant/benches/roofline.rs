//! Mat-vec speed as a fraction of the memory-read bandwidth, measured in pairs.
//!
//! `cargo bench -p raven-quant --features bench-hooks --bench roofline` (`RAVEN_ROUNDS=N`
//! rounds, default 25; the hooks the benches use are behind that feature). This
//! machine's bandwidth drifts by ±25% from minute to minute (a shared host), so a kernel's GB/s
//! and a probe's GB/s measured minutes apart say little. Each round here reads a 1 GiB buffer
//! with the probe and then streams the weights (≥ 256 MiB of copies, past the L3) through the
//! mat-vec, back to back on the same threads; the table gives the median of the per-round
//! ratios `kernel GB/s ÷ probe GB/s`, with the medians of both speeds. Weights use the layout the
//! model uses: repacked (interleaved rows) where [`raven_quant::repack`] applies on this CPU,
//! plain rows otherwise; both layouts are shown, and the repacked one also with its kernels
//! reading one group at a time instead of three streams side by side (`set_streams`), all
//! measured in the same rounds. Products run as the model runs them: [`raven_quant::par_matmul`] in a persistent
//! pool, which the probe uses too. The last column is one thread's speed on
//! weights that stay in L2: far above the memory speed means the kernel is not compute-bound.

mod common;

use std::time::Instant;

use common::*;
use raven_quant::{repack, GgmlType, Matrix, PackedMatrix, Weights};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("RAVEN_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!("kernels: {}, {rounds} rounds per row", raven_quant::isa());
    println!();
    println!("| weights | layout | shape | threads | kernel GB/s | probe GB/s | ratio (median) | ratio (min–max) | in-cache GB/s |");
    println!("|---|---|---|---:|---:|---:|---:|---|---:|");
    let buf = probe_buffer();
    let probe_bytes = (buf.len() * 8) as f64;
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16] {
        for name in ["17920x5280", "5280x17920"] {
            let (rows, cols) = shape(name);
            let bytes = matrix_bytes(ty, rows, cols);
            let n = copies_for(bytes);
            let data: Vec<Vec<u8>> = (0..n).map(|c| weights(ty, rows, cols, c)).collect();
            let plain: Vec<Matrix<'_>> = data
                .iter()
                .map(|d| Matrix::new(ty, rows, cols, d).unwrap())
                .collect();
            let packed: Vec<PackedMatrix> = plain.iter().filter_map(repack).collect();
            // Variants measured side by side in every round: (label, weights, streams).
            let mut variants: Vec<(&str, Vec<Weights<'_>>, bool)> = vec![];
            if packed.len() == n {
                let ws: Vec<Weights<'_>> = packed.iter().map(Weights::Packed).collect();
                variants.push(("repacked", ws.clone(), true));
                if ty == GgmlType::Q4_0 {
                    // Only Q4_0's packed kernels stream (see raven_quant::set_streams).
                    variants.push(("repacked, 1 stream", ws, false));
                }
            }
            variants.push((
                "plain",
                plain.iter().copied().map(Weights::Plain).collect(),
                true,
            ));
            let act = activations(ty, cols);
            let mut out = vec![0f32; rows];
            for threads in [1, 2] {
                let label = format!("{ty} {name} {threads}");
                if !filter.is_empty() && !filter.iter().any(|f| label.contains(f.as_str())) {
                    continue;
                }
                let run_all = |ws: &[Weights<'_>], streams: bool, out: &mut [f32]| {
                    raven_quant::set_streams(streams);
                    for w in ws {
                        run(*w, &act, out, threads);
                    }
                    std::hint::black_box(&out);
                };
                // Warm-up: fault in pages, spin up the frequency.
                for (_, ws, st) in &variants {
                    run_all(ws, *st, &mut out);
                }
                std::hint::black_box(probe(&buf, threads));
                let nv = variants.len();
                let (mut k, mut p, mut r) = (vec![vec![]; nv], vec![], vec![vec![]; nv]);
                for _ in 0..rounds {
                    let t = Instant::now();
                    std::hint::black_box(probe(&buf, threads));
                    let pg = probe_bytes / t.elapsed().as_secs_f64() / 1e9;
                    p.push(pg);
                    for (i, (_, ws, st)) in variants.iter().enumerate() {
                        let t = Instant::now();
                        run_all(ws, *st, &mut out);
                        let kg = (bytes * n) as f64 / t.elapsed().as_secs_f64() / 1e9;
                        k[i].push(kg);
                        r[i].push(kg / pg);
                    }
                }
                let pm = median(&mut p);
                for (i, (layout, ws, st)) in variants.iter().enumerate() {
                    let (lo, hi) = r[i]
                        .iter()
                        .fold((f64::MAX, 0f64), |(a, b), x| (a.min(*x), b.max(*x)));
                    // The compute ceiling of one thread: the first rows of one copy, small
                    // enough to stay in L2 (≤ 512 KiB), multiplied over and over. (With two
                    // threads, spawning them would cost more than such a product.)
                    let hot = if threads == 1 {
                        raven_quant::set_streams(*st);
                        let hot_rows = ((512 << 10) / (bytes / rows)).max(16) / 16 * 16;
                        let hot_rows = hot_rows.min(rows);
                        let mut h = vec![];
                        for _ in 0..rounds {
                            let reps = 50;
                            let t = Instant::now();
                            for _ in 0..reps {
                                run_rows(ws[0], &act, hot_rows, &mut out);
                            }
                            let read = (reps * bytes / rows * hot_rows) as f64;
                            h.push(read / t.elapsed().as_secs_f64() / 1e9);
                        }
                        format!("{:.1}", median(&mut h))
                    } else {
                        "–".to_string()
                    };
                    println!(
                        "| {ty} | {layout} | {name} | {threads} | {:.1} | {pm:.1} | {:.0}% | {:.0}–{:.0}% | {hot} |",
                        median(&mut k[i]),
                        100.0 * median(&mut r[i]),
                        100.0 * lo,
                        100.0 * hi,
                    );
                }
            }
        }
    }
    raven_quant::set_streams(true);
}
