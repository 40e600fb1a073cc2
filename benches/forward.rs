//! Model-level speed: decoding and prefill through the whole Huginn pipeline (prelude, core
//! iterations with the KV cache, coda, head) on a scaled-down Huginn-0125 with random weights.
//!
//! `cargo bench -p raven --bench forward`. The model is `huginn-0125/5` (h = 1056, 11 heads,
//! F = 3584, 2/4/2 blocks, vocabulary 65536: 1/25 of the full model's block weights, written once
//! to the temp dir by [`raven::synth`]) in Q4_0 and Q8_0, repacked as `raven run` loads it, on all
//! cores. `decode` feeds one token at r = 8 (items: tokens); `prefill_64` runs a 64-token prompt
//! in one pass at r = 8; `decode_64_one_by_one` feeds the same 64 tokens one at a time: the ratio
//! of their times is what batching the prompt buys (`raven bench --prompt-one-by-one` measures
//! the same on any model). For full-size figures against the memory bandwidth, use `raven synth`
//! and `raven bench`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use divan::counter::ItemsCount;
use divan::Bencher;
use raven::convert::OutType;
use raven::exit::ExitPolicy;
use raven::{Model, Session, SessionParams};

fn main() {
    divan::main();
}

const STEPS: usize = 8;
const TYPES: [&str; 2] = ["q4_0", "q8_0"];

/// The models made so far, by weight type.
type Models = std::sync::Mutex<Vec<(String, Arc<Model>)>>;

fn model(ty: &str) -> Arc<Model> {
    static MODELS: OnceLock<Models> = OnceLock::new();
    let mut ms = MODELS.get_or_init(Default::default).lock().unwrap();
    if let Some((_, m)) = ms.iter().find(|(t, _)| t == ty) {
        return m.clone();
    }
    let path: PathBuf = std::env::temp_dir().join(format!(
        "raven-bench-huginn-0125-5-{ty}-{}.gguf",
        std::process::id()
    ));
    let c = raven::synth::huginn_0125_scaled(5).unwrap();
    raven::synth::write_random(&c, OutType::parse(ty).unwrap(), 0, &path).unwrap();
    let m = Arc::new(Model::load(&path).unwrap());
    // The model holds its own mapping (or repacked copy); the name can go.
    let _ = std::fs::remove_file(&path);
    ms.push((ty.to_string(), m.clone()));
    m
}

fn session(m: &Arc<Model>) -> Session {
    let mut p = SessionParams::for_model(m);
    p.exit = ExitPolicy::fixed(STEPS);
    p.ctx = 1024;
    p.init_scale = 0.0;
    Session::new(m.clone(), p).unwrap()
}

fn prompt(m: &Model, n: usize) -> Vec<u32> {
    let v = m.config.n_vocab as u32;
    (0..n as u32).map(|i| (i * 7919 + 13) % v).collect()
}

#[divan::bench(args = TYPES, sample_count = 20)]
fn decode(b: Bencher, ty: &str) {
    let m = model(ty);
    let mut s = session(&m);
    let p = prompt(&m, 16);
    s.prefill(&p).unwrap();
    let mut i = 0;
    b.counter(ItemsCount::new(1usize)).bench_local(|| {
        if s.len() + 1 >= s.ctx() {
            s.reset();
            s.prefill(&p).unwrap();
        }
        s.step(p[i % p.len()]).unwrap();
        i += 1;
    });
}

#[divan::bench(args = TYPES, sample_count = 5)]
fn prefill_64(b: Bencher, ty: &str) {
    let m = model(ty);
    let mut s = session(&m);
    let p = prompt(&m, 64);
    b.counter(ItemsCount::new(64usize)).bench_local(|| {
        s.reset();
        s.prefill(&p).unwrap();
    });
}

#[divan::bench(args = TYPES, sample_count = 5)]
fn decode_64_one_by_one(b: Bencher, ty: &str) {
    let m = model(ty);
    let mut s = session(&m);
    let p = prompt(&m, 64);
    b.counter(ItemsCount::new(64usize)).bench_local(|| {
        s.reset();
        for &t in &p {
            s.step(t).unwrap();
        }
    });
}
