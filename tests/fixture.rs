//! Raven against the official implementation's outputs on the tiny-huginn fixture
//! (tests/fixtures/README.md): one-pass forward, greedy decoding through the KV cache with both
//! cache strategies, and per-token adaptive exit with every criterion.

mod common;

use common::*;
use raven::exit::{Criterion, ExitPolicy};
use raven::kv::CacheStrategy;
use raven::run::{logits, LogitsOptions, Threads};
use raven::Model;

const TOL: f32 = 2e-4;

fn opts(steps: usize) -> LogitsOptions {
    LogitsOptions::fixed(steps)
}

fn forward_cases_match(ty: &str) {
    let r = reference();
    let m = Model::load(&tiny_gguf(ty)).unwrap();
    let threads = Threads::new(2).unwrap();
    let mut n = 0;
    for c in r.cases().filter(|c| c["kind"] == "forward") {
        let name = c["name"].as_str().unwrap();
        let toks = r.prompt(c["prompt"].as_u64().unwrap() as usize);
        let out = logits(
            &m,
            &toks,
            &opts(c["num_steps"].as_u64().unwrap() as usize),
            &threads,
        )
        .unwrap();
        let dl = max_abs_diff(&out.logits, r.tensor(&format!("{name}.logits")));
        let dz = max_abs_diff(&out.latents, r.tensor(&format!("{name}.latents")));
        assert!(
            dl <= TOL && dz <= TOL,
            "{ty} {name}: logits Δ {dl}, latents Δ {dz}"
        );
        n += 1;
    }
    assert_eq!(n, 12);
}

#[test]
fn forward_f32_matches_official() {
    forward_cases_match("f32");
}

#[test]
fn forward_bf16_matches_official() {
    forward_cases_match("bf16");
}

#[test]
fn forward_f16_matches_official() {
    forward_cases_match("f16");
}

/// Greedy decoding after a one-pass prefill, through the cache (`--decode-from`, teacher forcing
/// with the official tokens): the same tokens and logits.
fn decode_cases_match(strategy: &str) {
    let r = reference();
    let m = Model::load(&tiny_gguf("f32")).unwrap();
    let threads = Threads::new(2).unwrap();
    let v = m.config.n_vocab;
    let mut n = 0;
    for c in r
        .cases()
        .filter(|c| c["kind"] == "greedy_decode" && c["cache_lookup_strategy"] == strategy)
    {
        let name = c["name"].as_str().unwrap();
        let prompt = r.prompt(c["prompt"].as_u64().unwrap() as usize);
        let new: Vec<u32> = list(&c["new_tokens"])
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let mut toks = prompt.clone();
        toks.extend_from_slice(&new[..new.len() - 1]);
        let mut o = opts(c["num_steps"].as_u64().unwrap() as usize);
        o.cache = CacheStrategy::parse(strategy).unwrap();
        o.decode_from = Some(prompt.len());
        let out = logits(&m, &toks, &o, &threads).unwrap();
        let got = &out.logits[(prompt.len() - 1) * v..];
        let d = max_abs_diff(got, r.tensor(&format!("{name}.logits")));
        assert!(d <= TOL, "{name}: logits Δ {d}");
        for (t, row) in got.chunks_exact(v).enumerate() {
            assert_eq!(raven::exit::argmax(row) as u32, new[t], "{name}: token {t}");
        }
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn decode_full_cache_matches_official() {
    decode_cases_match("full");
}

#[test]
fn decode_compress_s4_matches_official() {
    decode_cases_match("compress-s4");
}

/// Per-token adaptive exit: the official step counts and logits, except where the official
/// criterion value at the deciding check lies within 0.1% of the threshold.
#[test]
fn adaptive_exit_matches_official_every_criterion() {
    let r = reference();
    let m = Model::load(&tiny_gguf("f32")).unwrap();
    let threads = Threads::new(2).unwrap();
    let v = m.config.n_vocab;
    let mut n = 0;
    for c in r.cases().filter(|c| c["kind"] == "adaptive_exit") {
        let name = c["name"].as_str().unwrap();
        let toks = r.prompt(c["prompt"].as_u64().unwrap() as usize);
        let crit = Criterion::parse(c["criterion"].as_str().unwrap()).unwrap();
        let thr: f32 = c["criterion"]
            .as_str()
            .unwrap()
            .split(':')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let max_steps = c["max_steps"].as_u64().unwrap() as usize;
        let mut o = opts(max_steps);
        o.cache = CacheStrategy::parse(c["cache_lookup_strategy"].as_str().unwrap()).unwrap();
        o.exit = Some(ExitPolicy {
            criterion: crit,
            min_steps: 1,
            max_steps,
            check_every: 1,
        });
        let out = logits(&m, &toks, &o, &threads).unwrap();
        let want: Vec<i32> = list(&c["compute_steps"])
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect();
        let values = list(&c["criterion_values"]);
        let reference_logits = r.tensor(&format!("{name}.logits"));
        for t in 0..toks.len() {
            if out.steps[t] != want[t] {
                // Allowed only when the official value at the deciding check is within 0.1% of τ.
                let vals: Vec<f64> = list(&values[t])
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                let k = (out.steps[t].min(want[t]) - 1) as usize;
                let near = vals
                    .get(k)
                    .is_some_and(|&x| ((x - thr as f64) / thr as f64).abs() <= 1e-3);
                assert!(
                    near,
                    "{name}: token {t} ran {} steps, official {}",
                    out.steps[t], want[t]
                );
                break; // later tokens see a different cache: stop comparing this case
            }
            let d = max_abs_diff(
                &out.logits[t * v..(t + 1) * v],
                &reference_logits[t * v..(t + 1) * v],
            );
            assert!(d <= TOL, "{name}: token {t} logits Δ {d}");
            // Our criterion values agree with the official ones at every check (f32 sums: 1%).
            let vals: Vec<f64> = list(&values[t])
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(
                vals.len(),
                out.criterion_values[t].len(),
                "{name}: token {t} checks"
            );
            for (a, b) in vals.iter().zip(&out.criterion_values[t]) {
                assert!(
                    (a - *b as f64).abs() <= 1e-2 * a.abs() + 2e-5,
                    "{name}: token {t}: {a} vs {b}"
                );
            }
        }
        n += 1;
    }
    assert_eq!(n, 14, "adaptive cases in the fixture");
}

/// The reference forward (the scalar oracle) agrees with the fixture too.
#[test]
fn reference_oracle_matches_official() {
    let r = reference();
    let m = Model::load(&tiny_gguf("f32")).unwrap();
    let c = r.cases().find(|c| c["name"] == "forward.p2.r4").unwrap();
    let toks = r.prompt(2);
    let s0 = vec![vec![0.0; m.config.n_embd]; toks.len()];
    let out = raven::reference::forward(&m, &toks, c["num_steps"].as_u64().unwrap() as usize, s0);
    let flat: Vec<f32> = out.logits.concat();
    let d = max_abs_diff(&flat, r.tensor("forward.p2.r4.logits"));
    assert!(d <= TOL, "oracle Δ {d}");
}

/// Quantized models: the fast path (Q8_0 activations) against the scalar oracle on the same
/// dequantized weights: mean KL ≤ 2e-3 nats per position.
#[test]
fn quantized_models_match_oracle_on_same_weights() {
    let r = reference();
    let threads = Threads::new(2).unwrap();
    for ty in ["q8_0", "q4_0"] {
        let m = Model::load(&tiny_gguf(ty)).unwrap();
        let v = m.config.n_vocab;
        for p in 0..3 {
            let toks = r.prompt(p);
            let fast = logits(&m, &toks, &opts(8), &threads).unwrap();
            let s0 = vec![vec![0.0; m.config.n_embd]; toks.len()];
            let oracle: Vec<f32> = raven::reference::forward(&m, &toks, 8, s0).logits.concat();
            let kl = mean_kl(&oracle, &fast.logits, v);
            assert!(kl <= 2e-3, "{ty} prompt {p}: mean KL {kl}");
            eprintln!("{ty} prompt {p}: mean KL {kl:.2e}");
        }
    }
}
