//! Regression tests for inputs that crashed Raven, each named after what it broke (issue #8:
//! fuzzing and resource limits). See fuzz/README.md.

use raven::config::Config;
use raven::kv::{CacheStrategy, KvCache, KvType};

/// The tiny shape of fuzz/seeds/base/*.gguf.
fn tiny_config() -> Config {
    Config {
        family: raven::config::Family::Huginn,
        n_embd: 32,
        n_heads: 2,
        n_kv_heads: 2,
        d_head: 16,
        rope_scaling: None,
        exit_threshold: None,
        n_ff: 32,
        n_vocab: 8,
        n_prelude: 1,
        n_core: 4,
        n_coda: 1,
        mean_recurrence: 4,
        qk_bias: true,
        rope_base: 5e4,
        norm_eps: 1e-6,
        tied: true,
        context: 16,
        embed_scale: 32f32.sqrt(),
        state_init_std: (2.0f32 / 160.0).sqrt(),
    }
}

/// `raven logits --steps 100000000000` aborted the process ("memory allocation of
/// 25600000000512 bytes failed"); with more core layers the slot count overflowed.
#[test]
fn kv_cache_of_a_huge_step_count_is_an_error_not_an_abort() {
    let c = tiny_config();
    for (ctx, steps) in [
        (2, 1_000_000_000_000), // 1e15 bytes: more than the address space
        (2, usize::MAX),
        (usize::MAX, 2),
        (1 << 40, 1 << 20),
    ] {
        for strategy in [CacheStrategy::Full, CacheStrategy::Latest(4)] {
            let e = KvCache::new(&c, strategy, KvType::F32, ctx, steps)
                .err()
                .unwrap_or_else(|| panic!("{ctx} × {steps} allocated"));
            let msg = e.to_string();
            assert!(msg.contains("KV cache"), "{msg}");
            assert!(strategy.bytes(&c, KvType::F32, ctx, steps) > 1 << 40);
        }
    }
    // Compress bounds the core slots, so a huge step count with few positions is fine.
    let kv =
        KvCache::new(&c, CacheStrategy::Compress(2), KvType::F32, 3, usize::MAX).expect("compress");
    assert_eq!(kv.bytes(), (1 + 2 + 1) * 3 * 32 * 2 * 4);
}

/// Block counts near u64::MAX overflowed `prelude + core + coda` in `Config::from_gguf`
/// (a panic in builds with overflow checks) before any limit was checked.
#[test]
fn block_counts_near_u64_max_are_refused_not_overflowed() {
    use raven_gguf::{Gguf, GgufWriter, Value};
    let mut w = GgufWriter::new(Vec::new());
    w.add_kv("general.architecture", Value::Str("huginn".into()));
    w.add_kv("huginn.embedding_length", Value::U32(32));
    w.add_kv("huginn.attention.head_count", Value::U32(2));
    w.add_kv("huginn.prelude_block_count", Value::U64(u64::MAX));
    w.add_kv("huginn.core_block_count", Value::U64(u64::MAX));
    w.add_kv("huginn.coda_block_count", Value::U64(2));
    w.add_kv("huginn.block_count", Value::U64(0));
    w.write_header().expect("header");
    let g = Gguf::from_bytes(w.finish().expect("finish")).expect("valid GGUF");
    let e = Config::from_gguf(&g, "huge.gguf").expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("huginn.block_count") && msg.contains("huge.gguf"),
        "{msg}"
    );
}
