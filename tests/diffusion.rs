//! The parallel (diffusion-forcing) sampler, `raven::parallel`, against the official sampler's
//! outputs on the tiny-huginn checkpoint (tests/fixtures/tiny-huginn-diffusion, whose README
//! states the algorithm and the official code's quirks): every deterministic case step by step
//! in the official mode, the random case replayed with the official draws, the failure demos,
//! and the degenerate settings that equal ordinary decoding.

mod common;

use std::sync::OnceLock;

use common::*;
use raven::exit::{Criterion, ExitPolicy};
use raven::kv::{CacheStrategy, KvType};
use raven::parallel::{self, Mode, Observe, ParallelOutput, ParallelParams, Replay};
use raven::run::Threads;
use raven::sample::SamplingParams;
use raven::{Model, Param, Session, SessionParams};
use serde_json::Value;

/// Absolute tolerance on states, conditioning and logits (README §7).
const TOL: f32 = 1e-4;
/// Absolute tolerance on the criterion δ (README §7).
const TOL_CRIT: f32 = 1e-5;

fn diffusion() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| Reference::load(&fixtures().join("tiny-huginn-diffusion")))
}

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&tiny_gguf("f32")).unwrap())
}

fn threads() -> &'static Threads {
    static T: OnceLock<Threads> = OnceLock::new();
    T.get_or_init(|| Threads::new(2).unwrap())
}

/// Prompt `i` (the fixture keys its prompts by "0" and "1").
fn prompt_of(i: usize) -> Vec<u32> {
    ids(&diffusion().json["prompt_token_ids"][i.to_string()])
}

fn ids(v: &Value) -> Vec<u32> {
    list(v).iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    list(v)
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    list(v).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The session parameters and knobs of a case's `params` (the official function's arguments).
fn settings(p: &Value) -> (SessionParams, ParallelParams) {
    let m = model();
    let num_steps = p["num_steps"].as_u64().unwrap() as usize;
    let criterion = match p["freeze_strategy"].as_str().unwrap() {
        "latent-diff" => Criterion::LatentDiff(p["exit_t"].as_f64().unwrap() as f32),
        "fixed" => Criterion::None,
        s => panic!("freeze strategy {s} is not exercised"),
    };
    assert!(p["full_prefill"].as_bool().unwrap());
    // latest-m4-compress-s4 ≡ compress-s4 here (README §1, cache_strategy_equivalence).
    assert_eq!(p["cache_lookup_strategy"], "latest-m4-compress-s4");
    let mut sp = SessionParams::for_model(m);
    sp.cache = CacheStrategy::Compress(4);
    // f32 keys and values: the states are compared to 1e-5 (an f16 cache stays within 1e-4).
    sp.cache_type = KvType::F32;
    sp.exit = ExitPolicy {
        criterion,
        min_steps: 1,
        max_steps: num_steps,
        check_every: 1,
    };
    sp.init_scale = p["init_scale"].as_f64().unwrap() as f32;
    sp.sampling = SamplingParams::greedy();
    sp.warm_start = p["continuous_compute"].as_bool().unwrap();
    sp.threads = 2;
    let pp = ParallelParams {
        mode: Mode::Official,
        inner_steps: p["inner_recurrence"].as_u64().unwrap() as usize,
        wavefront: p["max_wavefront"].as_i64().unwrap().max(0) as usize,
        headway: p["headway"].as_u64().unwrap() as usize,
        ema: p["ema_embeds"].as_f64().unwrap(),
        noise: p["state_noise_mixing"].as_f64().unwrap(),
        noise_dampened: p["dampened_state_mixer"].as_bool().unwrap(),
        noise_sqrt: p["sqrt_mixer"].as_bool().unwrap(),
        max_sampler_steps: p["max_diffusion_steps"].as_u64().unwrap() as usize,
    };
    (sp, pp)
}

fn run_case(c: &Value, replay: Option<&Replay>) -> ParallelOutput {
    let (sp, pp) = settings(&c["params"]);
    let prompt = prompt_of(c["prompt"].as_u64().unwrap() as usize);
    let obs = Observe {
        trace: true,
        logits: true,
        replay,
        cancel: None,
    };
    let mut streamed = Vec::new();
    let out = parallel::generate(
        model(),
        &sp,
        &pp,
        &prompt,
        c["max_new_tokens"].as_u64().unwrap() as usize,
        &ids(&c["stop_token_ids"]),
        threads(),
        &obs,
        |t| {
            streamed.push(t);
            true
        },
    )
    .unwrap();
    assert_eq!(
        streamed, out.tokens,
        "the callback sees every token, in order"
    );
    out
}

fn check_counters(name: &str, got: &parallel::Counters, want: &Value, all: bool) {
    let pairs = [
        ("num_core_forward_passes", got.core_passes),
        ("num_tokens_forward", got.tokens_forward),
        ("num_cache_clears", got.cache_clears),
        ("num_standing_waves", got.standing_waves),
    ];
    for (k, g) in pairs {
        assert_eq!(g as u64, want[k].as_u64().unwrap(), "{name}: counter {k}");
    }
    if all {
        for (k, g) in [
            ("diffusion_steps", got.sampler_steps),
            ("gen_seq_length", got.seq_len),
            ("len_prefill", got.prefill_len),
        ] {
            assert_eq!(g as u64, want[k].as_u64().unwrap(), "{name}: counter {k}");
        }
    }
}

/// Largest differences seen in a case: (states, conditioning, logits, criterion).
#[derive(Default, Debug)]
struct Diffs {
    states: f32,
    conditioning: f32,
    logits: f32,
    criterion: f32,
}

/// Compares a run with a case record: tokens, counters, the trace step by step (integers
/// exactly, floats within tolerance), the tensors.
fn compare(c: &Value, out: &ParallelOutput) -> Diffs {
    let r = diffusion();
    let name = c["name"].as_str().unwrap();
    let l = prompt_of(c["prompt"].as_u64().unwrap() as usize).len();
    let h = model().config.n_embd;
    let v = model().config.n_vocab;
    let mut d = Diffs::default();
    let want_steps = c["steps"].as_array().unwrap();
    let have = |k: &str| r.tensors.contains_key(&format!("{name}.{k}"));
    for (i, (g, w)) in out.steps.iter().zip(want_steps).enumerate() {
        let at = format!("{name} step {i}");
        assert_eq!(
            g.wavefront.to_vec(),
            usizes(&w["wavefront"]),
            "{at}: wavefront"
        );
        assert_eq!(
            g.input_tokens,
            ids(&w["wavefront_input_tokens"]),
            "{at}: input tokens"
        );
        assert_eq!(g.drafts, ids(&w["drafts"]), "{at}: drafts");
        assert_eq!(
            g.standing_wave,
            w["standing_wave"].as_bool().unwrap(),
            "{at}: standing wave"
        );
        assert_eq!(
            g.headway_in_step as u64,
            w["headway_in_step"].as_u64().unwrap(),
            "{at}: headway in step"
        );
        if let Some(cv) = w.get("converged") {
            let conv: Vec<bool> = list(cv).iter().map(|x| x.as_bool().unwrap()).collect();
            assert_eq!(g.converged, conv, "{at}: converged");
            let crit = floats(&w["criterion"]);
            assert_eq!(g.criterion.len(), crit.len(), "{at}: criterion length");
            d.criterion = d.criterion.max(max_abs_diff(&g.criterion, &crit));
            assert_eq!(g.k as u64, w["k"].as_u64().unwrap(), "{at}: k");
        }
        if let Some(nc) = w.get("noise_coeff") {
            let diff = max_abs_diff(&g.noise_coeff, &floats(nc));
            assert!(diff <= 1e-7, "{at}: noise coefficients Δ {diff}");
        }
        assert_eq!(
            g.newly_frozen.to_vec(),
            usizes(&w["newly_frozen"]),
            "{at}: newly frozen"
        );
        assert_eq!(
            g.kv_committed.to_vec(),
            usizes(&w["kv_committed"]),
            "{at}: KV committed"
        );
        // B2: committed positions whose KV came from a token other than the frozen one.
        let final_token = |p: usize| out.tokens[p - l];
        let mismatch: Vec<usize> = (g.kv_committed[0]..g.kv_committed[1])
            .filter(|&p| p >= l && g.input_tokens[p - g.wavefront[0]] != final_token(p))
            .collect();
        assert_eq!(
            mismatch,
            usizes(&w["kv_token_mismatch"]),
            "{at}: KV/token mismatch"
        );
        check_counters(&at, &g.counters, &w["counters"], false);
        let rows = usizes(&w["state_rows"]);
        let (a, b) = (rows[0] * h, rows[1] * h);
        if have("step_states") {
            let want = &r.tensor(&format!("{name}.step_states"))[a..b];
            d.states = d.states.max(max_abs_diff(&g.states, want));
        }
        if have("step_conditioning") {
            let want = &r.tensor(&format!("{name}.step_conditioning"))[a..b];
            d.conditioning = d.conditioning.max(max_abs_diff(&g.conditioning, want));
        }
    }
    assert_eq!(out.steps.len(), want_steps.len(), "{name}: number of steps");
    assert_eq!(out.tokens, ids(&c["new_tokens"]), "{name}: tokens");
    check_counters(name, &out.counters, &c["counters"], true);
    assert_eq!(
        out.recurrence,
        ids(&c["recurrence_per_position"]),
        "{name}: recurrence per position"
    );
    assert_eq!(
        out.token_stable,
        ids(&c["token_stable_per_position"]),
        "{name}: token stability per position"
    );
    if have("logits") {
        let want = r.tensor(&format!("{name}.logits"));
        assert_eq!(out.logits.len(), want.len(), "{name}: logits rows");
        assert_eq!(out.logits.len(), out.tokens.len() * v);
        d.logits = max_abs_diff(&out.logits, want);
    }
    assert!(
        d.states <= TOL && d.conditioning <= TOL && d.logits <= TOL && d.criterion <= TOL_CRIT,
        "{name}: {d:?}"
    );
    eprintln!("{name}: {d:?}");
    d
}

/// Every deterministic case of the fixture: the same tokens, trace and counters, states,
/// conditioning, logits and criterion values within tolerance.
#[test]
fn official_mode_reproduces_every_deterministic_case() {
    let r = diffusion();
    let mut n = 0;
    let mut worst = Diffs::default();
    for c in r.cases().filter(|c| c["deterministic"] == true) {
        let out = run_case(c, None);
        let d = compare(c, &out);
        worst.states = worst.states.max(d.states);
        worst.conditioning = worst.conditioning.max(d.conditioning);
        worst.logits = worst.logits.max(d.logits);
        worst.criterion = worst.criterion.max(d.criterion);
        n += 1;
    }
    eprintln!("all deterministic cases: {worst:?}");
    assert_eq!(n, 11);
}

/// The random case (init_scale 1, β = 0.5) replayed with the official draws: then it is
/// deterministic and matches like the others (README §7).
#[test]
fn official_mode_replays_the_random_case() {
    let r = diffusion();
    let h = model().config.n_embd;
    let mut n = 0;
    for c in r.cases().filter(|c| c["deterministic"] == false) {
        let name = c["name"].as_str().unwrap();
        let t = |k: &str| r.tensor(&format!("{name}.{k}")).to_vec();
        let replay = Replay {
            prefill_state: t("prefill_init_state"),
            first_state: t("first_wavefront_state"),
            noise: t("step_noise"),
            new_states: t("step_new_state"),
        };
        let out = run_case(c, Some(&replay));
        compare(c, &out);
        assert_eq!(replay.new_states.len(), out.steps.len() * h);
        n += 1;
    }
    assert_eq!(n, 2);
}

/// The official code's failure demos: a wavefront of 1 never advances (B4), a stop id in the
/// prompt ends the run at the first look (B6); the fixed rule with a biting cap (B5) is refused.
#[test]
fn official_mode_reproduces_the_failure_demos() {
    let r = diffusion();
    let mut n = 0;
    for f in r.json["failure_demos"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        let (sp, pp) = settings(&f["params"]);
        let prompt = prompt_of(f["prompt"].as_u64().unwrap() as usize);
        let res = parallel::generate(
            model(),
            &sp,
            &pp,
            &prompt,
            f["max_new_tokens"].as_u64().unwrap() as usize,
            &ids(&f["stop_token_ids"]),
            threads(),
            &Observe::default(),
            |_| true,
        );
        match f["outcome"].as_str().unwrap() {
            "returned" => {
                let out = res.unwrap();
                assert_eq!(out.tokens, ids(&f["new_tokens"]), "{name}: tokens");
                check_counters(name, &out.counters, &f["counters"], true);
            }
            "exception" => {
                let e = res.unwrap_err();
                assert_eq!(e.invalid_param(), Some(Param::Wavefront), "{name}: {e}");
                assert!(
                    e.message_for(Param::cli).contains("--wavefront"),
                    "{name}: {e}"
                );
            }
            o => panic!("{name}: outcome {o}"),
        }
        n += 1;
    }
    assert_eq!(n, 5);
}

fn plain_params(cache: CacheStrategy, criterion: Criterion) -> SessionParams {
    let mut sp = SessionParams::for_model(model());
    sp.cache = cache;
    sp.cache_type = KvType::F32;
    sp.exit = ExitPolicy {
        criterion,
        min_steps: 1,
        max_steps: 32,
        check_every: 1,
    };
    sp.init_scale = 0.0;
    sp.sampling = SamplingParams::greedy();
    sp.threads = 2;
    sp
}

/// Ordinary decoding through a session: the prompt in one pass, then one token at a time with
/// the session's exit policy. The tokens, the logits that chose each, and the iterations run at
/// each new position.
fn ordinary(sp: &SessionParams, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>, Vec<usize>) {
    let m = std::sync::Arc::new(Model::load(&tiny_gguf("f32")).unwrap());
    let mut s = Session::new(m, sp.clone()).unwrap();
    s.prefill(prompt).unwrap();
    let (mut toks, mut logits, mut steps) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = s.sample();
        toks.push(t);
        logits.extend_from_slice(s.logits());
        steps.push(s.step(t).unwrap().steps);
    }
    (toks, logits, steps)
}

fn corrected(
    sp: &SessionParams,
    inner: usize,
    wavefront: usize,
    prompt: &[u32],
    n: usize,
) -> ParallelOutput {
    let pp = ParallelParams {
        mode: Mode::Corrected,
        inner_steps: inner,
        wavefront,
        ema: 0.0,
        ..Default::default()
    };
    let obs = Observe {
        logits: true,
        trace: true,
        ..Default::default()
    };
    parallel::generate(model(), sp, &pp, prompt, n, &[], threads(), &obs, |_| true).unwrap()
}

/// README §3: the official fixed rule gives the tokens of plain greedy decoding (r = 32) on
/// this checkpoint, though not its computation.
#[test]
fn official_fixed_rule_gives_the_greedy_tokens() {
    let r = diffusion();
    for p in 0..2 {
        let prompt = prompt_of(p);
        let sp = plain_params(CacheStrategy::Compress(4), Criterion::None);
        let (want, _, _) = ordinary(&sp, &prompt, 16);
        for case in ["fixed-r32", "fixed-r4"] {
            let c = r
                .cases()
                .find(|c| c["name"] == format!("diffusion.{case}.p{p}"))
                .unwrap();
            let out = run_case(c, None);
            assert_eq!(out.tokens, want, "{case} p{p}");
        }
        let ar = r.json["ar_baselines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == format!("ar.compress-s4.p{p}.r32"))
            .unwrap();
        assert_eq!(want, ids(&ar["new_tokens"]), "plain decoding p{p}");
    }
}

/// The corrected mode's degenerate settings are ordinary decoding, exactly: a wavefront of 1
/// with the fixed rule is plain decoding with num_steps iterations (any r′ with a compressed
/// cache; r′ = num_steps also with the full cache) ...
#[test]
fn corrected_wavefront_one_fixed_rule_is_plain_decoding() {
    let v = model().config.n_vocab;
    for p in 0..2 {
        let prompt = prompt_of(p);
        for (cache, inner) in [
            (CacheStrategy::Compress(4), 1),
            (CacheStrategy::Compress(4), 4),
            (CacheStrategy::Compress(4), 32),
            (CacheStrategy::Full, 32),
        ] {
            let sp = plain_params(cache, Criterion::None);
            let (want, logits, steps) = ordinary(&sp, &prompt, 12);
            let out = corrected(&sp, inner, 1, &prompt, 12);
            let at = format!("p{p} {cache} r′={inner}");
            assert_eq!(out.tokens, want, "{at}: tokens");
            assert_eq!(out.logits.len(), 12 * v);
            let d = max_abs_diff(&out.logits, &logits);
            assert!(d == 0.0, "{at}: logits Δ {d}");
            let rec: Vec<usize> = out.recurrence.iter().map(|&x| x as usize).collect();
            assert_eq!(rec[..11], steps[..11], "{at}: iterations");
            assert!(out
                .steps
                .iter()
                .all(|s| s.wavefront[1] - s.wavefront[0] == 1));
        }
    }
}

/// ... and a wavefront of 1 with r′ = 1 and latent-diff is per-token adaptive decoding with the
/// same criterion, threshold and maximum (the paper's "wavefront 1 recovers the token-per-token
/// adaptive sampler", which the official code does not do: B4).
#[test]
fn corrected_wavefront_one_latent_diff_is_adaptive_decoding() {
    for p in 0..2 {
        let prompt = prompt_of(p);
        for eps in [0.03f32, 0.1] {
            let sp = plain_params(CacheStrategy::Compress(4), Criterion::LatentDiff(eps));
            let (want, logits, steps) = ordinary(&sp, &prompt, 12);
            assert!(steps.iter().any(|&s| s < 32), "some token exits early");
            let out = corrected(&sp, 1, 1, &prompt, 12);
            let at = format!("p{p} ε={eps}");
            assert_eq!(out.tokens, want, "{at}: tokens");
            let d = max_abs_diff(&out.logits, &logits);
            assert!(d == 0.0, "{at}: logits Δ {d}");
            let rec: Vec<usize> = out.recurrence.iter().map(|&x| x as usize).collect();
            assert_eq!(rec[..11], steps[..11], "{at}: iterations");
        }
    }
}

/// The corrected mode in the conservative setting: it advances several positions per step,
/// commits only KV computed from the frozen tokens (no B2), compares aligned states (no B1),
/// stops at max_new, and stops before a stop token.
#[test]
fn corrected_mode_conservative_setting() {
    let m = model();
    for p in 0..2 {
        let prompt = prompt_of(p);
        let sp = plain_params(CacheStrategy::Compress(4), Criterion::LatentDiff(0.03));
        let pp = ParallelParams {
            mode: Mode::Corrected,
            ..Default::default()
        };
        let obs = Observe {
            trace: true,
            ..Default::default()
        };
        let out =
            parallel::generate(m, &sp, &pp, &prompt, 16, &[], threads(), &obs, |_| true).unwrap();
        assert_eq!(out.tokens.len(), 16, "p{p}");
        assert!(
            out.counters.sampler_steps < 16 * 32 / pp.inner_steps,
            "p{p}: fewer steps than sequential decoding: {:?}",
            out.counters
        );
        assert!(out
            .steps
            .iter()
            .any(|s| s.wavefront[1] - s.wavefront[0] > 1));
        let l = prompt.len();
        let mut frozen_steps = 0;
        for s in &out.steps {
            let c = s.wavefront[0];
            for q in s.kv_committed[0]..s.kv_committed[1] {
                if q >= l && q - l < out.tokens.len() {
                    assert_eq!(s.input_tokens[q - c], out.tokens[q - l], "p{p}: B2 at {q}");
                }
            }
            assert_eq!(s.criterion.len(), s.wavefront[1] - c);
            frozen_steps += (s.newly_frozen[1] > s.newly_frozen[0]) as usize;
        }
        assert!(frozen_steps > 0);
        // A stop token ends the output before it.
        let stop = out.tokens[3];
        let first = out.tokens.iter().position(|&t| t == stop).unwrap();
        let cut = parallel::generate(
            m,
            &sp,
            &pp,
            &prompt,
            16,
            &[stop],
            threads(),
            &Observe::default(),
            |_| true,
        )
        .unwrap();
        assert!(cut.stopped);
        assert_eq!(cut.tokens, out.tokens[..first], "p{p}: stop");
    }
}

/// Invalid knobs are errors naming the parameter, not panics.
#[test]
fn invalid_knobs_name_the_parameter() {
    let m = model();
    let prompt = prompt_of(0);
    let base = plain_params(CacheStrategy::Compress(4), Criterion::LatentDiff(0.03));
    let check = |sp: &SessionParams, pp: &ParallelParams, want: Param| {
        let e = parallel::generate(
            m,
            sp,
            pp,
            &prompt,
            4,
            &[],
            threads(),
            &Observe::default(),
            |_| true,
        )
        .unwrap_err();
        assert_eq!(e.invalid_param(), Some(want), "{e}");
        let msg = e.message_for(Param::cli);
        assert!(msg.contains(want.cli()), "{msg}");
    };
    let d = ParallelParams::default();
    check(
        &base,
        &ParallelParams {
            inner_steps: 0,
            ..d.clone()
        },
        Param::InnerSteps,
    );
    check(
        &base,
        &ParallelParams {
            headway: 0,
            ..d.clone()
        },
        Param::Headway,
    );
    check(
        &base,
        &ParallelParams {
            ema: 1.0,
            ..d.clone()
        },
        Param::Ema,
    );
    check(
        &base,
        &ParallelParams {
            ema: f64::NAN,
            ..d.clone()
        },
        Param::Ema,
    );
    check(
        &base,
        &ParallelParams {
            noise: -0.5,
            ..d.clone()
        },
        Param::Noise,
    );
    check(
        &base,
        &ParallelParams {
            max_sampler_steps: 0,
            ..d.clone()
        },
        Param::SamplerSteps,
    );
    let mut kl = base.clone();
    kl.exit.criterion = Criterion::Kl(1e-3);
    check(&kl, &d, Param::Exit);
    let fixed = plain_params(CacheStrategy::Compress(4), Criterion::None);
    check(
        &fixed,
        &ParallelParams {
            wavefront: 4,
            ..d.clone()
        },
        Param::Wavefront,
    );
    let mut budget = base.clone();
    budget.budget_ms = Some(10.0);
    check(&budget, &d, Param::BudgetMs);
    // An empty prompt and a prompt longer than the context are errors too.
    let e = parallel::generate(
        m,
        &base,
        &d,
        &[],
        4,
        &[],
        threads(),
        &Observe::default(),
        |_| true,
    )
    .unwrap_err();
    assert_eq!(e.invalid_param(), Some(Param::Prompt));
    let long = vec![1u32; 300];
    let e = parallel::generate(
        m,
        &base,
        &d,
        &long,
        4,
        &[],
        threads(),
        &Observe::default(),
        |_| true,
    )
    .unwrap_err();
    assert!(
        matches!(e, raven::RavenError::ContextOverflow { .. }),
        "{e}"
    );
}
