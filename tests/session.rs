//! Sessions: seeds, cache memory, context limits, bad options.

mod common;

use std::sync::Arc;

use common::*;
use raven::exit::{Criterion, ExitPolicy};
use raven::kv::{CacheStrategy, KvCache, KvType};
use raven::sample::SamplingParams;
use raven::Param;
use raven::{Model, RavenError, Session, SessionParams};

fn model() -> Arc<Model> {
    Arc::new(Model::load(&tiny_gguf("f32")).unwrap())
}

fn sampled(m: &Arc<Model>, seed: u64) -> Vec<u32> {
    let mut p = SessionParams::for_model(m);
    p.seed = seed;
    p.threads = 1;
    p.exit = ExitPolicy::fixed(4);
    p.sampling = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplingParams::default()
    };
    let mut s = Session::new(m.clone(), p).unwrap();
    let mut out = Vec::new();
    s.generate(&reference().prompt(0), 12, &[], |t, _| {
        out.push(t);
        true
    })
    .unwrap();
    out
}

#[test]
fn same_seed_same_output_other_seed_other_output() {
    let m = model();
    assert_eq!(sampled(&m, 7), sampled(&m, 7));
    assert_ne!(sampled(&m, 7), sampled(&m, 8));
}

#[test]
fn seed_drives_the_initial_state() {
    let m = model();
    let logits = |seed: u64, scale: f32| {
        let mut p = SessionParams::for_model(&m);
        p.seed = seed;
        p.init_scale = scale;
        p.exit = ExitPolicy::fixed(2);
        let mut s = Session::new(m.clone(), p).unwrap();
        s.prefill(&reference().prompt(0)).unwrap();
        s.logits().to_vec()
    };
    assert_eq!(logits(1, 1.0), logits(1, 1.0));
    assert_ne!(logits(1, 1.0), logits(2, 1.0));
    // With init_scale 0 the state is zero whatever the seed.
    assert_eq!(logits(1, 0.0), logits(2, 0.0));
}

/// KV sharing: compress-s4 at r = 32 holds (P + C + K) / (P + 32·C + K) of `full`'s bytes
/// (8/132 for Huginn's 2/4/2), measured on the allocated cache, and the prediction that
/// `raven inspect` prints equals what is allocated.
#[test]
fn compress_s4_cache_is_8_of_132_of_full() {
    let c = raven::synth::huginn_0125();
    let (ctx, steps) = (16, 32);
    let full = KvCache::new(&c, CacheStrategy::Full, KvType::F32, ctx, steps).unwrap();
    let comp = KvCache::new(&c, CacheStrategy::Compress(4), KvType::F32, ctx, steps).unwrap();
    assert_eq!(full.bytes() * 8, comp.bytes() * 132);
    assert_eq!(
        CacheStrategy::Full.bytes(&c, KvType::F32, ctx, steps),
        full.bytes()
    );
    assert_eq!(
        CacheStrategy::Compress(4).bytes(&c, KvType::F32, ctx, steps),
        comp.bytes()
    );
    let m = model();
    let mut p = SessionParams::for_model(&m);
    p.cache = CacheStrategy::Compress(4);
    let s = Session::new(m.clone(), p.clone()).unwrap();
    assert_eq!(s.kv_bytes(), p.kv_bytes(&m));
}

#[test]
fn context_overflow_is_a_clear_error() {
    let m = model();
    let mut p = SessionParams::for_model(&m);
    p.ctx = 8;
    p.exit = ExitPolicy::fixed(2);
    let mut s = Session::new(m.clone(), p).unwrap();
    let e = s.prefill(&[1; 9]).unwrap_err();
    assert!(
        matches!(
            e,
            RavenError::ContextOverflow {
                needed: 9,
                context: 8
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("context"));
    s.prefill(&[1; 8]).unwrap();
    assert!(matches!(
        s.step(1).unwrap_err(),
        RavenError::ContextOverflow { .. }
    ));
}

#[test]
fn bad_session_options_name_the_parameter() {
    let m = model();
    let base = SessionParams::for_model(&m);
    let check = |p: SessionParams, want: Option<Param>, text: &str| {
        let e = Session::new(m.clone(), p).err().expect("refused");
        assert_eq!(e.invalid_param(), want, "{e}");
        assert!(e.to_string().contains(text), "{text}: {e}");
        // No front end's spelling leaks into the library's message.
        assert!(!e.to_string().contains("--"), "{e}");
    };
    let mut p = base.clone();
    p.budget_ms = Some(0.0);
    check(p, Some(Param::BudgetMs), "budget_ms");
    let mut p = base.clone();
    p.exit.max_steps = 0;
    check(p, Some(Param::MaxSteps), "steps");
    let mut p = base.clone();
    p.exit.min_steps = 0;
    check(p, Some(Param::MinSteps), "min_steps");
    let mut p = base.clone();
    p.cache = CacheStrategy::Latest(3);
    check(p, Some(Param::Cache), "cache");
    let mut p = base.clone();
    p.sampling.top_p = 0.0;
    check(p, Some(Param::TopP), "top_p");
    let mut p = base.clone();
    p.ctx = 1 << 20;
    check(p, Some(Param::Ctx), "ctx");
    let mut p = base.clone();
    p.kv_cap_bytes = Some(1000);
    check(p, None, "KV cache");
    let mut p = base;
    p.init_scale = -1.0;
    check(p, Some(Param::InitScale), "init_scale");
    let e = Criterion::parse("bogus").unwrap_err();
    assert_eq!(e.invalid_param(), Some(Param::Exit));
    // Each front end names them its way.
    assert!(e.message_for(Param::cli).starts_with("invalid --exit: "));
    assert!(e
        .message_for(Param::c)
        .starts_with("invalid exit_criterion/exit_threshold: "));
    assert!(e.to_string().starts_with("invalid exit: "));
}

/// Latent criteria never run the coda or head mid-recurrence; KL does: the same token
/// under latent-diff and KL both finish with logits, and stats report the iterations.
#[test]
fn exit_policies_report_iterations_and_respect_bounds() {
    let m = model();
    for crit in [
        "latent-diff",
        "kl",
        "cosine",
        "minp-kl",
        "entropy-diff",
        "argmax-stability",
        "none",
    ] {
        let mut p = SessionParams::for_model(&m);
        p.init_scale = 0.0;
        p.exit = ExitPolicy {
            criterion: Criterion::parse(crit).unwrap(),
            min_steps: 3,
            max_steps: 20,
            check_every: 2,
        };
        let mut s = Session::new(m.clone(), p).unwrap();
        s.prefill(&reference().prompt(0)).unwrap();
        let st = s.step(5).unwrap();
        assert!((3..=20).contains(&st.steps), "{crit}: {}", st.steps);
        assert!(
            st.steps == 20 || st.steps.is_multiple_of(2),
            "{crit}: checks every 2: {}",
            st.steps
        );
        assert_eq!(s.logits().len(), m.config.n_vocab);
    }
}

/// Warm start: each token starts from the previous token's final latent, so the outputs differ
/// from a cold start, and it is deterministic.
#[test]
fn warm_start_changes_and_reproduces() {
    let m = model();
    let run = |warm: bool| {
        let mut p = SessionParams::for_model(&m);
        p.init_scale = 0.0;
        p.warm_start = warm;
        p.exit = ExitPolicy::fixed(3);
        let mut s = Session::new(m.clone(), p).unwrap();
        s.prefill(&reference().prompt(0)).unwrap();
        s.step(7).unwrap();
        s.logits().to_vec()
    };
    assert_eq!(run(true), run(true));
    assert_ne!(run(true), run(false));
}

/// Self-speculative decoding gives exactly the greedy output of plain decoding.
#[test]
fn speculative_decoding_matches_plain_greedy() {
    let m = model();
    let mut p = SessionParams::for_model(&m);
    p.init_scale = 0.0;
    p.sampling = SamplingParams::greedy();
    p.exit = ExitPolicy::fixed(8);
    p.cache = CacheStrategy::Full;
    for prompt in 0..3 {
        let toks = reference().prompt(prompt);
        let mut plain = Vec::new();
        Session::new(m.clone(), p.clone())
            .unwrap()
            .generate(&toks, 20, &[], |t, _| {
                plain.push(t);
                true
            })
            .unwrap();
        for (draft, look) in [(1, 4), (2, 3), (4, 8), (8, 5)] {
            let mut spec = Vec::new();
            Session::new(m.clone(), p.clone())
                .unwrap()
                .generate_speculative(&toks, 20, &[], draft, look, |t, _| {
                    spec.push(t);
                    true
                })
                .unwrap();
            assert_eq!(
                plain, spec,
                "prompt {prompt}, draft {draft} lookahead {look}"
            );
        }
    }
}

/// With an exit criterion, `generate` decodes the prompt's last token with `step` (the exit
/// policy applies to the first answer token too): its output is that of prefill(all but the
/// last) + step(last) + steps, and differs in logits from a fixed-step prefill of everything.
#[test]
fn generate_decodes_the_last_prompt_token_with_the_exit_policy() {
    let m = model();
    let mut p = SessionParams::for_model(&m);
    p.init_scale = 0.0;
    p.threads = 1;
    p.exit = ExitPolicy {
        criterion: Criterion::parse("latent-diff:0.5").unwrap(),
        min_steps: 1,
        max_steps: 16,
        check_every: 1,
    };
    let prompt = reference().prompt(0);
    let mut g = Session::new(m.clone(), p.clone()).unwrap();
    let mut got = Vec::new();
    let stats = g
        .generate(&prompt, 6, &[], |t, _| {
            got.push(t);
            true
        })
        .unwrap();
    assert!(stats.iter().all(|s| s.steps < 16), "the exit fires at 0.5");
    let mut s = Session::new(m.clone(), p.clone()).unwrap();
    let (last, rest) = prompt.split_last().unwrap();
    s.prefill(rest).unwrap();
    let first = s.step(*last).unwrap();
    assert!(first.exited_early);
    let mut want = Vec::new();
    for _ in 0..6 {
        let t = s.sample();
        want.push(t);
        s.step(t).unwrap();
    }
    assert_eq!(got, want);
    // A one-pass prefill runs all 16 iterations for the last token: other logits.
    let mut f = Session::new(m, p).unwrap();
    f.prefill(&prompt).unwrap();
    let mut a = Session::new(f.model().clone(), f.params().clone()).unwrap();
    a.prefill(rest).unwrap();
    a.step(*last).unwrap();
    assert_ne!(f.logits(), a.logits());
}

/// The bundled demo model, with parameters for `steps` fixed iterations, zero initial state,
/// the full cache and one thread.
fn demo_full_cache(steps: usize) -> (std::sync::Arc<raven::Model>, SessionParams) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/demo-q8_0.gguf");
    let m = std::sync::Arc::new(raven::Model::load(&path).unwrap());
    let mut p = SessionParams::for_model(&m);
    p.init_scale = 0.0;
    p.exit = ExitPolicy::fixed(steps);
    p.cache = CacheStrategy::Full;
    p.threads = 1;
    (m, p)
}

/// Drafts with the `full` cache read the deep entries of committed positions
/// (`KvCache::set_draft_view`): on the demo model, past its one-token answer, a 4-iteration
/// draft agrees with the 32-iteration model almost always (it agreed on 39% when drafts read
/// the committed positions' first iterations), and the output stays that of plain decoding.
#[test]
fn speculative_drafts_read_deep_entries_and_agree() {
    let (m, mut p) = demo_full_cache(32);
    p.sampling = SamplingParams::greedy();
    p.ignore_eos = true;
    let tok = m.tokenizer().unwrap();
    let prompt = tok.encode("Ball: 3. Swaps: 13 24 12", false).unwrap();
    let prompt = &prompt[..];
    let mut plain = Vec::new();
    Session::new(m.clone(), p.clone())
        .unwrap()
        .generate(prompt, 40, &[], |t, _| {
            plain.push(t);
            true
        })
        .unwrap();
    let mut s = Session::new(m.clone(), p.clone()).unwrap();
    let mut spec = Vec::new();
    s.generate_speculative(prompt, 40, &[], 4, 8, |t, _| {
        spec.push(t);
        true
    })
    .unwrap();
    assert_eq!(plain, spec);
    let st = s.speculative_stats();
    assert!(
        st.accepted * 10 >= st.drafted * 8,
        "{} of {} drafts accepted",
        st.accepted,
        st.drafted
    );
}

/// With the full cache a prompt in one pass gives bit for bit the logits of feeding it token by
/// token: the multi-query attention of the pass (chunks of 64 queries, blocks of 64 positions)
/// adds in the same order as one query at a time, so a speculative verification picks exactly
/// the tokens plain decoding picks, near-ties included.
#[test]
fn full_cache_prompt_pass_equals_token_by_token() {
    let (m, p) = demo_full_cache(6);
    let nt: u32 = std::env::var("NT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let toks: Vec<u32> = (0..nt).map(|i| (i * 37 + 11) % 280).collect();
    let mut a = Session::new(m.clone(), p.clone()).unwrap();
    a.prefill(&toks).unwrap();
    let mut b = Session::new(m.clone(), p.clone()).unwrap();
    b.prefill(&toks[..1]).unwrap();
    for &t in &toks[1..] {
        b.step(t).unwrap();
    }
    let worst = a
        .logits()
        .iter()
        .zip(b.logits())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert_eq!(worst, 0.0, "largest logit difference");
}

/// The engine checks a pass before computing or writing anything: an unknown token, a pass past
/// the context, logit rows outside the tokens, an initial state of the wrong size, more
/// iterations than the cache holds, a criterion the model lacks (Huginn has no exit gate) are
/// errors naming what is wrong, and the cache keeps its positions.
#[test]
fn engine_refuses_bad_passes_and_keeps_the_cache() {
    use raven::engine::{Engine, Init, TokenControl};
    use raven::run::Threads;
    let m = model();
    let cache = KvCache::new(&m.config, CacheStrategy::Full, KvType::F32, 8, 4).unwrap();
    let mut e = Engine::new(m.clone(), cache, Arc::new(Threads::new(1).unwrap()));
    let ctl = |policy| TokenControl {
        policy,
        budget_ms: None,
        start: std::time::Instant::now(),
        cancel: None,
    };
    let mut rng = raven::rng::Rng::new(0);
    let r = e.pass(
        &[1, 2, 3],
        1,
        Init::Random(0.0, &mut rng),
        None,
        &ctl(ExitPolicy::fixed(4)),
    );
    assert_eq!(r.unwrap().steps, 4);
    assert_eq!(e.len(), 3);
    let h = m.config.n_embd;
    let v = m.config.n_vocab as u32;
    let gate = ExitPolicy {
        criterion: Criterion::parse("gate").unwrap(),
        ..ExitPolicy::fixed(4)
    };
    let bad: Vec<(Result<raven::engine::TokenOutcome, RavenError>, &str)> = vec![
        (
            e.pass(
                &[v],
                1,
                Init::Random(0.0, &mut rng),
                None,
                &ctl(ExitPolicy::fixed(4)),
            ),
            "token",
        ),
        (
            e.pass(
                &[1; 6],
                1,
                Init::Random(0.0, &mut rng),
                None,
                &ctl(ExitPolicy::fixed(4)),
            ),
            "context",
        ),
        (
            e.pass(
                &[1, 2],
                3,
                Init::Random(0.0, &mut rng),
                None,
                &ctl(ExitPolicy::fixed(4)),
            ),
            "logit_rows",
        ),
        (
            e.pass(
                &[1, 2],
                1,
                Init::Warm(&vec![0.0; h]),
                None,
                &ctl(ExitPolicy::fixed(4)),
            ),
            "initial state",
        ),
        (
            e.step(1, Init::Random(0.0, &mut rng), &ctl(ExitPolicy::fixed(5))),
            "cache holds 4",
        ),
        (e.step(1, Init::Random(0.0, &mut rng), &ctl(gate)), "gate"),
    ];
    for (r, what) in bad {
        let msg = r
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"))
            .to_string();
        assert!(msg.contains(what), "{what}: {msg}");
        assert_eq!(e.len(), 3, "{what}: the cache changed");
    }
}
