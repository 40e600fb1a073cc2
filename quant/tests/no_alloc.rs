//! `Activations::prepare` reuses its buffers and `matmul` allocates nothing: counted with a
//! global allocator, on the test's own thread only (the harness's threads may allocate
//! meanwhile: counting every thread failed about one run in six).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use raven_quant::{matmul, repack, Activations, GgmlType, Matrix};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the test's thread: only its allocations count.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.try_with(Cell::get).unwrap_or(false) {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn prepare_and_matmul_do_not_allocate_once_warm() {
    COUNTED.with(|c| c.set(true));
    let (rows, cols, n) = (48, 256, 21);
    let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.1).sin()).collect();
    let mut out = vec![0f32; n * rows];
    let mut act = Activations::new();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::Q4_1,
    ] {
        let mut data = vec![0u8; rows * cols / ty.block_size() * ty.type_size()];
        let xs: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).cos()).collect();
        raven_quant::quantize_row(ty, &xs, &mut data).unwrap();
        let w = Matrix::new(ty, rows, cols, &data).unwrap();
        let p = repack(&w);
        act.prepare(&x, n, cols, ty);
        matmul(&w, &act, 0..rows, &mut out);
        // Warm-up grows this thread's kernel scratch (AMX: the activations block-major) once.
        if let Some(p) = &p {
            matmul(p, &act, 0..rows, &mut out);
        }
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..3 {
            act.prepare(&x, n, cols, ty);
            act.prepare(&x[..cols], 1, cols, ty);
            act.prepare(&x, n, cols, ty);
            matmul(&w, &act, 0..rows, &mut out);
            matmul(&w, &act, 5..37, &mut out);
            if let Some(p) = &p {
                matmul(p, &act, 0..rows, &mut out);
                matmul(p, &act, 3..41, &mut out);
            }
        }
        assert_eq!(
            ALLOCS.load(Ordering::SeqCst),
            before,
            "{ty}: allocations after warm-up"
        );
    }
}
