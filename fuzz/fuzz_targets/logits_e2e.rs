//! `raven logits` end to end on a mutated small model: a tiny valid GGUF (h = 32, vocabulary 8,
//! from `fuzz/seeds/base/`, made by `make_seeds.py`) is patched with the input's
//! (offset, value) pairs, so metadata, shapes, types and offsets change; then
//! `Model::from_gguf` and, if it loads, `run::logits` on 3 tokens with 2 steps. Errors are
//! fine; a panic, an abort, an out-of-memory (`-rss_limit_mb=2048 -malloc_limit_mb=1024`) or a
//! timeout is a finding.
//!
//! Input: byte 0 picks the base model (q8_0, q4_0, f32); byte 1 holds flags (bit 0 repack,
//! bit 1 decode the last two tokens one at a time, bit 2 an adaptive exit, bits 3-4 the cache
//! strategy, bit 5 a random initial state, bits 6-7 the cache element type: f32, f16, q8_0);
//! then 5-byte patches: u32 LE offset (modulo the file length) and the byte to write there.
#![no_main]

use std::cell::Cell;
use std::sync::{Once, OnceLock};

use libfuzzer_sys::fuzz_target;
use raven::exit::{Criterion, ExitPolicy};
use raven::kv::{CacheStrategy, KvType};
use raven::run::{logits, LogitsOptions, Threads};
use raven_gguf::Gguf;

const BASES: [&[u8]; 3] = [
    include_bytes!("../seeds/base/tiny_q8_0.gguf"),
    include_bytes!("../seeds/base/tiny_q4_0.gguf"),
    include_bytes!("../seeds/base/tiny_f32.gguf"),
];

thread_local! {
    /// Inside `Model::tokenizer`, whose `Tokenizer::from_json` catches the `tokenizers`
    /// crate's panics on malformed files by design.
    static IN_FROM_JSON: Cell<bool> = const { Cell::new(false) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_FROM_JSON.with(Cell::get) {
                fuzzer_hook(info);
            }
        }));
    });
}

fn threads() -> &'static Threads {
    static T: OnceLock<Threads> = OnceLock::new();
    T.get_or_init(|| Threads::new(1).expect("one thread"))
}

fuzz_target!(|data: &[u8]| {
    install_hook();
    if data.len() < 2 {
        return;
    }
    let base = BASES[usize::from(data[0]) % BASES.len()];
    let flags = data[1];
    let mut bytes = base.to_vec();
    for p in data[2..].chunks_exact(5) {
        let off = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize % bytes.len();
        bytes[off] = p[4];
    }
    let Ok(g) = Gguf::from_bytes(bytes) else {
        return;
    };
    let Ok(mut m) = raven::Model::from_gguf(g, "fuzz.gguf") else {
        return;
    };
    if flags & 1 != 0 {
        m.repack();
    }
    let _ = (m.name(), m.weight_bytes(), m.core_iteration_bytes());
    // Both load the tokenizer stored in the file.
    IN_FROM_JSON.with(|f| f.set(true));
    let _ = (m.tokenizer().map(|t| t.vocab_size()), m.stop_tokens());
    IN_FROM_JSON.with(|f| f.set(false));
    let cache = match (flags >> 3) & 3 {
        1 => CacheStrategy::Compress(1),
        2 => CacheStrategy::Latest(m.config.n_core),
        _ => CacheStrategy::Full,
    };
    let o = LogitsOptions {
        steps: 2,
        init_scale: if flags & 32 != 0 { 1.0 } else { 0.0 },
        seed: 8,
        exit: (flags & 4 != 0).then_some(ExitPolicy {
            criterion: Criterion::Kl(1e-3),
            min_steps: 1,
            max_steps: 2,
            check_every: 1,
        }),
        cache,
        // Every element type (Q8_0 is refused where heads do not fit its blocks).
        cache_type: match flags >> 6 {
            0 => KvType::F32,
            1 => KvType::F16,
            _ => KvType::Q8_0,
        },
        decode_from: (flags & 2 != 0).then_some(1),
    };
    if let Ok(out) = logits(&m, &[1, 2, 3], &o, threads()) {
        assert_eq!(out.logits.len(), 3 * m.config.n_vocab);
        assert_eq!(out.steps.len(), 3);
    }
});
