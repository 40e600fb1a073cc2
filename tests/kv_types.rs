//! KV cache element types on the tiny-huginn fixture: greedy decoding through f16 and Q8_0
//! caches (teacher-forced with the official tokens, so every position is compared) picks the
//! f32 cache's tokens except where f32's top-two logit margin is below 1e-2, and adaptive exit
//! stops at the same iteration on at least 95% of tokens; the caches take half (f16) and
//! 34/128 (Q8_0) of f32's bytes.

mod common;

use common::*;
use raven::exit::{Criterion, ExitPolicy};
use raven::kv::{CacheStrategy, KvCache, KvType};
use raven::run::{logits, LogitsOptions, LogitsOutput, Threads};
use raven::{Model, Session, SessionParams};
use std::sync::Arc;

/// The greedy-decode cases: (prompt, official new tokens, steps, strategy).
fn decode_cases() -> Vec<(Vec<u32>, Vec<u32>, usize, CacheStrategy)> {
    let r = reference();
    r.cases()
        .filter(|c| c["kind"] == "greedy_decode")
        .map(|c| {
            let prompt = r.prompt(c["prompt"].as_u64().unwrap() as usize);
            let new = list(&c["new_tokens"])
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let strategy =
                CacheStrategy::parse(c["cache_lookup_strategy"].as_str().unwrap()).unwrap();
            (
                prompt,
                new,
                c["num_steps"].as_u64().unwrap() as usize,
                strategy,
            )
        })
        .collect()
}

/// The prompt in one pass, then `new` fed one at a time through a cache of `ty`.
fn teacher_forced(
    m: &Model,
    prompt: &[u32],
    new: &[u32],
    o: &LogitsOptions,
    ty: KvType,
) -> LogitsOutput {
    let mut toks = prompt.to_vec();
    toks.extend_from_slice(&new[..new.len() - 1]);
    let o = LogitsOptions {
        cache_type: ty,
        decode_from: Some(prompt.len()),
        ..o.clone()
    };
    logits(m, &toks, &o, &Threads::new(2).unwrap()).unwrap()
}

/// Top-1 minus top-2 logit.
fn margin(row: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in row {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    a - b
}

#[test]
fn f16_and_q8_0_caches_decode_the_f32_tokens() {
    let m = Model::load(&tiny_gguf("f32")).unwrap();
    let v = m.config.n_vocab;
    let cases = decode_cases();
    assert_eq!(cases.len(), 4, "two prompts × full and compress-s4");
    let (mut compared, mut differ) = (0, [0usize; 2]);
    for (prompt, new, steps, strategy) in &cases {
        let o = LogitsOptions {
            cache: *strategy,
            ..LogitsOptions::fixed(*steps)
        };
        let want = teacher_forced(&m, prompt, new, &o, KvType::F32);
        let from = (prompt.len() - 1) * v;
        for (i, ty) in [KvType::F16, KvType::Q8_0].into_iter().enumerate() {
            let got = teacher_forced(&m, prompt, new, &o, ty);
            let rows = got.logits[from..].chunks_exact(v);
            for (t, (g, w)) in rows.zip(want.logits[from..].chunks_exact(v)).enumerate() {
                let (ga, wa) = (raven::exit::argmax(g), raven::exit::argmax(w));
                differ[i] += (ga != wa) as usize;
                assert!(
                    ga == wa || margin(w) < 1e-2,
                    "{ty} cache, {strategy}, prompt of {}: token {t} is {ga}, f32's {wa} \
                     (margin {})",
                    prompt.len(),
                    margin(w)
                );
                // The logits stay close (f16 rounds keys and values to 11 bits, Q8_0 to 8).
                let d = max_abs_diff(g, w);
                let tol = if ty == KvType::F16 { 2e-2 } else { 1e-1 };
                assert!(d < tol, "{ty} cache, token {t}: logits Δ {d}");
                compared += 1;
            }
        }
    }
    assert!(compared >= 4 * 2 * 8, "{compared} tokens compared");
    println!(
        "{} positions per type: f16 picks another token at {}, q8_0 at {} (each within f32's \
         1e-2 margin)",
        compared / 2,
        differ[0],
        differ[1]
    );
}

#[test]
fn adaptive_exit_steps_agree_with_f32_on_95_percent_of_tokens() {
    let m = Model::load(&tiny_gguf("f32")).unwrap();
    let (mut same, mut total) = ([0usize; 2], 0usize);
    for (prompt, new, _, strategy) in decode_cases() {
        for crit in [
            "kl",
            "latent-diff",
            "entropy-diff",
            "cosine",
            "argmax-stability",
        ] {
            let o = LogitsOptions {
                cache: strategy,
                exit: Some(ExitPolicy {
                    criterion: Criterion::parse(crit).unwrap(),
                    min_steps: 1,
                    max_steps: 32,
                    check_every: 1,
                }),
                ..LogitsOptions::fixed(32)
            };
            let want = teacher_forced(&m, &prompt, &new, &o, KvType::F32);
            for (i, ty) in [KvType::F16, KvType::Q8_0].into_iter().enumerate() {
                let got = teacher_forced(&m, &prompt, &new, &o, ty);
                let decoded = prompt.len()..got.steps.len();
                same[i] += decoded
                    .clone()
                    .filter(|&t| got.steps[t] == want.steps[t])
                    .count();
                if i == 0 {
                    total += decoded.len();
                }
            }
        }
    }
    assert!(total >= 100, "{total} tokens");
    for (i, ty) in ["f16", "q8_0"].iter().enumerate() {
        let pct = 100.0 * same[i] as f64 / total as f64;
        println!(
            "{ty}: exit step equal to f32's on {}/{total} tokens ({pct:.1}%)",
            same[i]
        );
        assert!(pct >= 95.0, "{ty}: {pct:.1}% of exit steps equal f32's");
    }
}

#[test]
fn smaller_types_take_their_share_of_the_bytes() {
    let c = Model::load(&tiny_gguf("f32")).unwrap().config.clone();
    for strategy in [CacheStrategy::Full, CacheStrategy::Compress(4)] {
        let bytes = |ty| {
            let cache = KvCache::new(&c, strategy, ty, 64, 8).unwrap();
            assert_eq!(cache.bytes(), strategy.bytes(&c, ty, 64, 8));
            assert_eq!(cache.kv_type(), ty);
            cache.bytes()
        };
        let f32_bytes = bytes(KvType::F32);
        assert_eq!(bytes(KvType::F16) * 2, f32_bytes);
        assert_eq!(bytes(KvType::Q8_0) * 128, f32_bytes * 34);
    }
}

#[test]
fn sessions_default_to_f16_and_refuse_what_cannot_be_stored() {
    let m = Arc::new(Model::load(&tiny_gguf("f32")).unwrap());
    let p = SessionParams::for_model(&m);
    assert_eq!(p.cache_type, KvType::F16);
    let s = Session::new(m.clone(), p.clone()).unwrap();
    let mut p32 = p.clone();
    p32.cache_type = KvType::F32;
    assert_eq!(s.kv_bytes() * 2, Session::new(m, p32).unwrap().kv_bytes());
    let e = raven::kv::parse_kv_type("q4_0").unwrap_err().to_string();
    assert!(e.contains("q4_0") && e.contains("f16"), "{e}");
    // Q8_0 needs rows of whole 32-value blocks.
    let mut c = raven::synth::shape("huginn-0125/55").unwrap();
    c.n_embd = 8 * 10;
    c.n_heads = 10;
    c.n_kv_heads = 10;
    c.d_head = 8;
    let e = KvCache::new(&c, CacheStrategy::Full, KvType::Q8_0, 4, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("q8_0") && e.contains("80"), "{e}");
}
