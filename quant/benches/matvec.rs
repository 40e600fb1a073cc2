//! Mat-vec (one token) at Huginn-0125's shapes, next to a memory-read bandwidth probe.
//!
//! `cargo bench -p raven-quant --features bench-hooks --bench matvec` (the hooks the benches
//! use are behind that feature). Each product reports bytes of weights read per
//! second (`B/s`) and flops per second (`item/s`, 2 per weight). Weights stream from memory
//! (a matrix smaller than 256 MiB is cycled through enough copies to defeat the 32 MiB L3):
//! compare their B/s with the probe's, which sums a 1 GiB buffer. `*_repacked` use
//! [`raven_quant::repack`]'s interleaved layout. All buffers ask Linux for transparent huge
//! pages (`MADV_HUGEPAGE`), as `repack` does for the model's weights.

mod common;

use std::sync::OnceLock;

use common::*;

use divan::counter::{BytesCount, ItemsCount};
use divan::Bencher;
use raven_quant::{repack, GgmlType, Matrix, PackedMatrix, Weights};

fn main() {
    eprintln!("kernels: {}", raven_quant::isa());
    divan::main();
}

const SHAPE_NAMES: [&str; 5] = [
    SHAPES[0].0,
    SHAPES[1].0,
    SHAPES[2].0,
    SHAPES[3].0,
    SHAPES[4].0,
];

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

fn bench_type(b: Bencher, ty: GgmlType, name: &str, threads: usize, pack: bool) {
    let (rows, cols) = shape(name);
    let bytes = matrix_bytes(ty, rows, cols);
    // Matrices that would stay in the 32 MiB L3 are cycled through enough copies to stream.
    let copies = copies_for(bytes);
    let ws: Vec<Weights<'static>> = (0..copies)
        .map(|c| {
            let m = matrix(ty, name, c);
            match pack.then(|| packed(ty, name, c)).flatten() {
                Some(p) => Weights::Packed(p),
                None => Weights::Plain(m),
            }
        })
        .collect();
    let act = activations(ty, cols);
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
    let buf = &BUF.get_or_init(probe_buffer)[..words];
    b.counter(BytesCount::new(buf.len() * 8))
        .bench_local(|| divan::black_box(common::probe(buf, T)));
}
