//! Mat-vec (one token) at Huginn-0125's shapes, next to a memory-read bandwidth probe.
//!
//! `cargo bench -p raven-quant --bench matvec`. Each product reports bytes of weights read per
//! second (`B/s`) and flops per second (`item/s`, 2 per weight). Weights stream from memory
//! (a matrix smaller than 96 MiB is cycled through enough copies to defeat the 32 MiB L3):
//! compare their B/s with the probe's, which sums a 1 GiB buffer. `*_repacked` use
//! [`raven_quant::repack`]'s interleaved layout.

use std::sync::OnceLock;

use divan::counter::{BytesCount, ItemsCount};
use divan::Bencher;
use raven_quant::{matmul, repack, Activations, GgmlType, Matrix, PackedMatrix, Weights};

fn main() {
    eprintln!("kernels: {}", raven_quant::isa());
    divan::main();
}

/// Huginn-0125's weight shapes (rows × cols).
const SHAPES: [(usize, usize); 5] = [
    (17920, 5280),
    (5280, 17920),
    (5280, 5280),
    (15840, 5280),
    (65536, 5280),
];
const SHAPE_NAMES: [&str; 5] = [
    "17920x5280",
    "5280x17920",
    "5280x5280",
    "15840x5280",
    "65536x5280",
];

fn shape(name: &str) -> (usize, usize) {
    SHAPES[SHAPE_NAMES.iter().position(|n| *n == name).unwrap()]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random weights with sane scales (fast to make; the values do not change the speed).
fn weights(ty: GgmlType, rows: usize, cols: usize, copy: usize) -> Vec<u8> {
    let bytes = rows * cols / ty.block_size() * ty.type_size();
    let mut rng = Rng(0x1234_5678_9abc_def1 ^ bytes as u64 ^ (copy as u64) << 40);
    let mut v: Vec<u8> = Vec::with_capacity(bytes + 8);
    while v.len() < bytes {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(bytes);
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

type Key = (GgmlType, usize, usize);
struct Store {
    plain: Vec<(Key, &'static [u8])>,
    packed: Vec<(Key, &'static PackedMatrix)>,
}
static STORE: OnceLock<std::sync::Mutex<Store>> = OnceLock::new();

/// Copy `copy` of the weights of type `ty` and shape `name`.
fn matrix(ty: GgmlType, name: &str, copy: usize) -> Matrix<'static> {
    let (rows, cols) = shape(name);
    let i = SHAPE_NAMES.iter().position(|n| *n == name).unwrap();
    let i = (i, copy);
    let store = STORE.get_or_init(|| {
        std::sync::Mutex::new(Store {
            plain: vec![],
            packed: vec![],
        })
    });
    let mut s = store.lock().unwrap();
    let data = match s.plain.iter().find(|(k, _)| *k == (ty, i.0, i.1)) {
        Some((_, d)) => *d,
        None => {
            let d: &'static [u8] = Vec::leak(weights(ty, rows, cols, copy));
            s.plain.push(((ty, i.0, i.1), d));
            d
        }
    };
    Matrix::new(ty, rows, cols, data).unwrap()
}

fn packed(ty: GgmlType, name: &str, copy: usize) -> Option<&'static PackedMatrix> {
    let m = matrix(ty, name, copy);
    let i = SHAPE_NAMES.iter().position(|n| *n == name).unwrap();
    let mut s = STORE.get().unwrap().lock().unwrap();
    if let Some((_, p)) = s.packed.iter().find(|(k, _)| *k == (ty, i, copy)) {
        return Some(*p);
    }
    let p: &'static PackedMatrix = Box::leak(Box::new(repack(&m)?));
    s.packed.push(((ty, i, copy), p));
    Some(p)
}

/// One mat-vec over all rows on `threads` threads (rows split in multiples of 16).
fn run(w: Weights<'_>, act: &Activations, out: &mut [f32], threads: usize) {
    let rows = w.rows();
    if threads == 1 {
        matmul(w, act, 0..rows, out);
        return;
    }
    let per = rows.div_ceil(threads).div_ceil(16) * 16;
    std::thread::scope(|s| {
        for (i, out) in out.chunks_mut(per).enumerate() {
            let r0 = i * per;
            let r1 = (r0 + per).min(rows);
            s.spawn(move || matmul(w, act, r0..r1, out));
        }
    });
}

fn bench_type(b: Bencher, ty: GgmlType, name: &str, threads: usize, pack: bool) {
    let (rows, cols) = shape(name);
    let bytes = rows * cols / ty.block_size() * ty.type_size();
    // Matrices that would stay in the 32 MiB L3 are cycled through enough copies to stream.
    let copies = (96usize << 20).div_ceil(bytes);
    let ws: Vec<Weights<'static>> = (0..copies)
        .map(|c| {
            let m = matrix(ty, name, c);
            match pack.then(|| packed(ty, name, c)).flatten() {
                Some(p) => Weights::Packed(p),
                None => Weights::Plain(m),
            }
        })
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut act = Activations::new();
    act.prepare(&x, 1, cols, ty);
    let mut out = vec![0f32; rows];
    let mut next = 0;
    b.counter(BytesCount::new(bytes))
        .counter(ItemsCount::new(2 * rows * cols))
        .bench_local(|| {
            run(ws[next % copies], &act, &mut out, threads);
            next += 1;
        });
}

#[divan::bench(args = SHAPE_NAMES, consts = [1, 2], sample_count = 15)]
fn f16<const T: usize>(b: Bencher, name: &str) {
    bench_type(b, GgmlType::F16, name, T, false);
}

#[divan::bench(args = SHAPE_NAMES, consts = [1, 2], sample_count = 15)]
fn q8_0<const T: usize>(b: Bencher, name: &str) {
    bench_type(b, GgmlType::Q8_0, name, T, false);
}

#[divan::bench(args = SHAPE_NAMES, consts = [1, 2], sample_count = 15)]
fn q4_0<const T: usize>(b: Bencher, name: &str) {
    bench_type(b, GgmlType::Q4_0, name, T, false);
}

#[divan::bench(args = SHAPE_NAMES, consts = [1, 2], sample_count = 15)]
fn q4_0_repacked<const T: usize>(b: Bencher, name: &str) {
    bench_type(b, GgmlType::Q4_0, name, T, true);
}

#[divan::bench(args = SHAPE_NAMES, consts = [1, 2], sample_count = 15)]
fn q8_0_repacked<const T: usize>(b: Bencher, name: &str) {
    bench_type(b, GgmlType::Q8_0, name, T, true);
}

/// Memory-read bandwidth: sum a 1 GiB buffer of u64 with 1 or 2 threads.
#[divan::bench(consts = [1, 2], sample_count = 10)]
fn read_bandwidth_probe<const T: usize>(b: Bencher) {
    probe::<T>(b, 1 << 27);
}

/// The same over 96 MiB, about the size of one product's weights (fewer TLB misses than 1 GiB).
#[divan::bench(consts = [1, 2], sample_count = 30)]
fn read_bandwidth_probe_96mib<const T: usize>(b: Bencher) {
    probe::<T>(b, 12 << 20);
}

fn probe<const T: usize>(b: Bencher, words: usize) {
    static BUF: OnceLock<Vec<u64>> = OnceLock::new();
    let buf = &BUF.get_or_init(|| (0..(1usize << 27) as u64).collect())[..words];
    b.counter(BytesCount::new(buf.len() * 8)).bench_local(|| {
        let per = buf.len() / T;
        std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|c| {
                    s.spawn(move || {
                        // Eight lanes so the compiler vectorizes the sum.
                        let mut acc = [0u64; 8];
                        for ch in c.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(ch[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            divan::black_box(
                hs.into_iter()
                    .map(|h| h.join().unwrap())
                    .fold(0u64, u64::wrapping_add),
            )
        })
    });
}
