//! Issue #8's memory bound: no input makes Raven allocate more than the file's size plus the
//! configured KV-cache cap (plus a fixed allowance of 2 MiB for the tokenizer and run-time
//! buffers). A counting global allocator records the peak of live heap bytes while each file of
//! the malformed corpus (`tests/fixtures/malformed/`, 80+ files with huge counts, lengths,
//! vocabularies, contexts and shapes) and the valid base model go through everything `raven
//! logits` and `raven run` do with a file: load (mapped and `--no-mmap`), tokenizer, stop
//! tokens, logits, and a session with a KV cap. Mapped file pages are not heap and not counted;
//! a `--no-mmap` load counts the file it reads.
//!
//! The fixture model (converted to f32, q8_0 and q4_0) goes through the same, with real
//! vocabulary, tokenizer and repacking.
//!
//! One `#[test]` only: the counters are process-wide, so nothing else may allocate meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use raven::kv::CacheStrategy;
use raven::model::LoadOptions;
use raven::run::{logits, LogitsOptions, Threads};
use raven::session::{Session, SessionParams};
use raven::Model;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, SeqCst) + n;
    PEAK.fetch_max(now, SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only watch.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), SeqCst);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                grew(new - l.size());
            } else {
                LIVE.fetch_sub(l.size() - new, SeqCst);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The KV-cache cap given to sessions.
const KV_CAP: u64 = 1 << 20;
/// What a small model needs besides its file and KV cache: the tokenizer's tables, logits,
/// workspace. (The fixture, 0.4–1.7 MB files, peaks 1.3–1.5 MB above its file size read with
/// `--no-mmap`, the session's KV cache of up to 1 MiB included.)
const ALLOWANCE: usize = 2 << 20;

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/malformed");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/fixtures/malformed")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    v.sort();
    v
}

/// Everything the CLI does with a model file; errors are expected and ignored (the corpus
/// tests check them), only the allocations matter here.
fn exercise(path: &Path, threads: &Arc<Threads>) -> usize {
    let mut refused = 0;
    for mmap in [true, false] {
        let m = match Model::load_with(path, LoadOptions { mmap, repack: true }) {
            Ok(m) => m,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        let _ = m.tokenizer();
        let _ = m.stop_tokens();
        let v = m.config.n_vocab as u32;
        let tokens: Vec<u32> = [1, 2, 3].iter().map(|t| t % v.max(1)).collect();
        for cache in [CacheStrategy::Full, CacheStrategy::Compress(4)] {
            let o = LogitsOptions {
                cache,
                decode_from: Some(1),
                ..LogitsOptions::fixed(2)
            };
            let _ = logits(&m, &tokens, &o, threads);
        }
        let mut p = SessionParams::for_model(&m);
        p.kv_cap_bytes = Some(KV_CAP);
        if let Ok(mut s) = Session::with_threads(Arc::new(m), p, threads.clone()) {
            if s.prefill(&tokens).is_ok() {
                let _ = s.step(tokens[0]);
            }
        }
    }
    refused
}

#[test]
fn no_input_allocates_more_than_file_plus_kv_cap() {
    let threads = Arc::new(Threads::new(1).unwrap());
    // Warm up lazily initialised globals (kernel choice, thread pool) outside the measurement.
    exercise(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/malformed/base.gguf"),
        &threads,
    );
    let mut worst = (0f64, String::new());
    let mut failures = vec![];
    let mut files = corpus();
    assert!(files.len() >= 41, "the corpus has {} files", files.len());
    for ty in ["f32", "q8_0", "q4_0"] {
        files.push(common::tiny_gguf(ty));
    }
    let mut refused = 0;
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len() as usize;
        let before = LIVE.load(SeqCst);
        PEAK.store(before, SeqCst);
        refused += exercise(f, &threads);
        let peak = PEAK.load(SeqCst) - before;
        // A --no-mmap load holds the file; the session may hold up to the cap.
        let bound = len + KV_CAP as usize + ALLOWANCE;
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let frac = peak as f64 / bound as f64;
        if frac > worst.0 {
            worst = (frac, format!("{name}: {peak} bytes of {bound}"));
        }
        if peak > bound {
            failures.push(format!(
                "{name}: peak {peak} bytes > file {len} + cap {KV_CAP} + {ALLOWANCE}"
            ));
        }
    }
    eprintln!(
        "{} files ({refused} refusals of 2 loads each), worst peak: {} ({:.0}% of the bound)",
        files.len(),
        worst.1,
        100.0 * worst.0
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
