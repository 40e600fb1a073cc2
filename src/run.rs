//! Drivers over the forward pieces: a one-pass prompt, token-by-token decoding through the cache,
//! and per-token adaptive exit (the reference's `forward_with_adaptive_compute`). `raven logits`
//! and the fixture tests run these.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::{RavenError, Result};
use crate::exit::{Criterion, ExitPolicy, ExitState};
use crate::forward::Workspace;
use crate::kv::{CacheStrategy, KvCache};
use crate::model::Model;
use crate::params::Param;
use crate::rng::Rng;
use raven_quant::KvType;

/// A thread pool entered once per call (rayon's cost per parallel region is only low inside
/// `install`; see DEPENDENCIES.md), and a team of spinning helpers for the products and
/// attention passes, hundreds per token (see `raven_quant::Team`).
pub struct Threads {
    pool: rayon::ThreadPool,
    team: raven_quant::Team,
}

impl Threads {
    /// A pool of `n` threads (0 = the number of cores).
    pub fn new(n: usize) -> Result<Threads> {
        let n = if n == 0 { default_threads() } else { n };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("raven-{i}"))
            .build()
            .map_err(|e| {
                RavenError::param(Param::Threads, format!("cannot start {n} threads: {e}"))
            })?;
        let team = raven_quant::Team::new(n, "raven-team").map_err(|e| {
            RavenError::param(Param::Threads, format!("cannot start {n} threads: {e}"))
        })?;
        Ok(Threads { pool, team })
    }

    /// Runs `f` inside the pool, with the team current.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        // The closure runs on one of the pool's threads; the team is entered there.
        let team = &self.team;
        self.pool.install(|| team.enter(f))
    }

    /// Threads in the pool.
    pub fn count(&self) -> usize {
        self.pool.current_num_threads()
    }
}

/// The default thread count: the cores available to this process.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Options of a logits run (SPEC §4 `raven logits`).
#[derive(Clone, Debug)]
pub struct LogitsOptions {
    /// Core iterations without `--exit`; the maximum with it.
    pub steps: usize,
    /// Initial-state scale (0: zeros).
    pub init_scale: f32,
    /// Seed of the initial state.
    pub seed: u64,
    /// Per-token exit; tokens then go one at a time.
    pub exit: Option<ExitPolicy>,
    /// Cache lookup strategy.
    pub cache: CacheStrategy,
    /// Element type of the cache (f32 unless asked: `raven logits` is for exactness tests).
    pub cache_type: KvType,
    /// First N tokens in one pass, the rest one at a time.
    pub decode_from: Option<usize>,
}

impl LogitsOptions {
    /// `steps` core iterations for every token from a zero initial state, the prompt in one
    /// pass, the full cache: what `raven logits --steps N --init-scale 0` runs.
    pub fn fixed(steps: usize) -> LogitsOptions {
        LogitsOptions {
            steps,
            init_scale: 0.0,
            seed: 0,
            exit: None,
            cache: CacheStrategy::Full,
            cache_type: KvType::F32,
            decode_from: None,
        }
    }
}

/// Logits [T, V] and core iterations per token.
pub struct LogitsOutput {
    /// Row-major logits.
    pub logits: Vec<f32>,
    /// Iterations each token ran.
    pub steps: Vec<i32>,
    /// Latents ln_f(s) [T, h] that fed the coda.
    pub latents: Vec<f32>,
    /// The criterion value at every check, per token (adaptive runs only).
    pub criterion_values: Vec<Vec<f32>>,
}

/// Where a token's recurrence starts.
pub enum Init<'a> {
    /// Zeros, or a truncated normal of this scale drawn from the generator (SPEC §1.2).
    Random(f32, &'a mut Rng),
    /// The previous token's final latent (warm start).
    Warm(&'a [f32]),
}

/// Moving averages of what an iteration and the coda + head cost, for the latency budget.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    iter_ms: Option<f64>,
    head_ms: Option<f64>,
}

impl Timing {
    fn add(slot: &mut Option<f64>, x: f64) {
        *slot = Some(slot.map_or(x, |v| 0.7 * v + 0.3 * x));
    }
    /// Estimated milliseconds of one core iteration.
    pub fn iter_ms(&self) -> f64 {
        self.iter_ms.unwrap_or(0.0)
    }
    /// Estimated milliseconds of coda + head.
    pub fn head_ms(&self) -> f64 {
        self.head_ms.unwrap_or(0.0)
    }
}

/// How a token's recurrence is bounded.
pub struct TokenControl<'a> {
    /// Exit criterion and iteration bounds.
    pub policy: ExitPolicy,
    /// Per-token deadline in milliseconds, counted from `start`.
    pub budget_ms: Option<f64>,
    /// When the token started (for the budget).
    pub start: Instant,
    /// Raised from another thread to stop at the next iteration.
    pub cancel: Option<&'a AtomicBool>,
}

/// How a token's recurrence ended.
#[derive(Clone, Debug, Default)]
pub struct TokenOutcome {
    /// Core iterations run.
    pub steps: usize,
    /// The criterion stopped it before the maximum.
    pub exited_early: bool,
    /// The budget stopped it.
    pub budget_capped: bool,
    /// The criterion value at every check.
    pub values: Vec<f32>,
    /// Milliseconds spent in core iterations (adapter + core blocks).
    pub core_ms: f64,
}

/// Runs one token at `pos` through prelude, recurrence (exit policy, budget) and coda + head,
/// leaving its logits in `ws.logits` and writing its cache entries. `None` when cancelled.
#[allow(clippy::too_many_arguments)]
pub fn run_token(
    m: &Model,
    token: u32,
    pos: usize,
    init: Init<'_>,
    ctl: &TokenControl<'_>,
    timing: &mut Timing,
    cache: &mut KvCache,
    ws: &mut Workspace,
) -> Option<TokenOutcome> {
    run_chunk(m, &[token], pos, 1, init, ctl, timing, cache, ws)
}

/// The engine's step under exit and budget control: `tokens` at positions `start..` in one
/// pass (each weight read once for all of them), their recurrence stopped together by the
/// policy, as the official `generate_with_adaptive_compute` runs a prompt: criteria on the
/// distribution (kl, entropy-diff, argmax-stability) and the gate read the last position,
/// latent criteria average over the positions. Leaves the logits of the last `logit_rows`
/// positions in `ws.logits` and writes the cache entries. `None` when cancelled.
#[allow(clippy::too_many_arguments)]
pub fn run_chunk(
    m: &Model,
    tokens: &[u32],
    start: usize,
    logit_rows: usize,
    init: Init<'_>,
    ctl: &TokenControl<'_>,
    timing: &mut Timing,
    cache: &mut KvCache,
    ws: &mut Workspace,
) -> Option<TokenOutcome> {
    let mut policy = ctl.policy;
    policy.criterion = policy
        .criterion
        .for_model(&m.config)
        .expect("exit criteria are checked against the model before a run");
    m.embed_prelude(tokens, start, cache, ws);
    match init {
        Init::Random(scale, rng) => m.init_state(scale, rng, ws),
        Init::Warm(w) => {
            ws.s.clear();
            ws.s.extend_from_slice(w);
        }
    }
    let mut st = ExitState::new(policy.criterion, &ws.s, m.config.n_embd, m.config.n_vocab);
    let mut out = TokenOutcome {
        steps: policy.max_steps,
        ..Default::default()
    };
    let mut have_logits = false;
    // The official gate read-out computes every step and reads the one the gate chose.
    let all_steps = policy.criterion.computes_all_steps();
    let mut chosen: Option<(usize, Vec<f32>)> = None;
    let timed = |slot: &mut Option<f64>, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        Timing::add(slot, t.elapsed().as_secs_f64() * 1e3);
    };
    for i in 0..policy.max_steps {
        if ctl.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return None;
        }
        if let Some(b) = ctl.budget_ms {
            // Stop when one more iteration and the head would pass the deadline.
            let elapsed = ctl.start.elapsed().as_secs_f64() * 1e3;
            if i > 0 && elapsed + timing.iter_ms() + timing.head_ms() > b {
                out.steps = i;
                out.budget_capped = true;
                break;
            }
        }
        let ti = Instant::now();
        m.core_step(i, cache, ws);
        let dt = ti.elapsed().as_secs_f64() * 1e3;
        Timing::add(&mut timing.iter_ms, dt);
        out.core_ms += dt;
        have_logits = false;
        let done = i + 1;
        if policy.criterion == Criterion::None
            || chosen.is_some()
            || !done.is_multiple_of(policy.check_every)
        {
            continue;
        }
        let gate = ws.exit_gate.last().copied();
        let (v, exit) = if policy.criterion.needs_logits() {
            timed(&mut timing.head_ms, &mut || m.coda_head(1, cache, ws));
            have_logits = true;
            st.check(&ws.s, Some(&ws.logits), gate)
        } else {
            st.check(&ws.s, None, gate)
        };
        out.values.push(v);
        if exit && done >= policy.min_steps {
            if all_steps {
                chosen = Some((done, ws.s.clone()));
                continue;
            }
            out.steps = done;
            out.exited_early = done < policy.max_steps;
            break;
        }
    }
    if let Some((done, s)) = chosen {
        // Read out the chosen step (a looped-stack model's head reads the state alone).
        ws.s = s;
        out.steps = done;
        out.exited_early = done < policy.max_steps;
        have_logits = false;
    }
    if !have_logits || logit_rows != 1 {
        timed(&mut timing.head_ms, &mut || {
            m.coda_head(logit_rows, cache, ws)
        });
    }
    cache.set_len(start + tokens.len());
    Some(out)
}

/// `raven logits`: logits for every position of `tokens` (SPEC §4).
pub fn logits(
    m: &Model,
    tokens: &[u32],
    o: &LogitsOptions,
    threads: &Threads,
) -> Result<LogitsOutput> {
    let t_len = tokens.len();
    if t_len == 0 {
        return Err(RavenError::param(Param::Tokens, "no tokens given"));
    }
    for &t in tokens {
        m.check_token(t)?;
    }
    if t_len > m.config.context {
        return Err(RavenError::ContextOverflow {
            needed: t_len,
            context: m.config.context,
        });
    }
    if o.steps == 0 {
        return Err(RavenError::param(Param::Steps, "must be at least 1"));
    }
    if let Some(n) = o.decode_from {
        if n == 0 || n > t_len {
            return Err(RavenError::param(
                Param::DecodeFrom,
                format!("{n} must be between 1 and the number of tokens ({t_len})"),
            ));
        }
    }
    let max_steps = o.exit.map(|p| p.max_steps).unwrap_or(o.steps);
    if let Some(p) = &o.exit {
        p.validate()?;
        p.criterion.for_model(&m.config)?;
    }
    let mut cache = KvCache::new(&m.config, o.cache, o.cache_type, t_len, max_steps)?;
    let mut ws = Workspace::new();
    let mut rng = Rng::new(o.seed);
    let (v, h) = (m.config.n_vocab, m.config.n_embd);
    let mut out = LogitsOutput {
        logits: vec![0.0; t_len * v],
        steps: vec![0; t_len],
        latents: vec![0.0; t_len * h],
        criterion_values: Vec::new(),
    };
    threads.run(|| {
        let mut timing = Timing::default();
        let ctl = |policy: ExitPolicy| TokenControl {
            policy,
            budget_ms: None,
            start: Instant::now(),
            cancel: None,
        };
        let row = |out: &mut LogitsOutput, ws: &Workspace, pos: usize, r: TokenOutcome| {
            out.logits[pos * v..(pos + 1) * v].copy_from_slice(&ws.logits);
            out.latents[pos * h..(pos + 1) * h].copy_from_slice(&ws.latent);
            out.steps[pos] = r.steps as i32;
            out.criterion_values.push(r.values);
        };
        // The first tokens in one pass (all of them without --exit; with --exit and
        // --decode-from N the first N, exiting together as the official generation runs a
        // prompt), the rest one at a time through the cache, each under the policy.
        let policy = o.exit.unwrap_or(ExitPolicy::fixed(o.steps));
        let first = o
            .decode_from
            .unwrap_or(if o.exit.is_some() { 0 } else { t_len });
        if first > 0 {
            let init = Init::Random(o.init_scale, &mut rng);
            let r = run_chunk(
                m,
                &tokens[..first],
                0,
                first,
                init,
                &ctl(policy),
                &mut timing,
                &mut cache,
                &mut ws,
            )
            .expect("nothing cancels here");
            out.logits[..first * v].copy_from_slice(&ws.logits);
            out.latents[..first * h].copy_from_slice(&ws.latent);
            out.steps[..first]
                .iter_mut()
                .for_each(|s| *s = r.steps as i32);
            out.criterion_values.resize(first - 1, Vec::new());
            out.criterion_values.push(r.values);
        }
        for (pos, &tok) in tokens.iter().enumerate().skip(first) {
            let init = Init::Random(o.init_scale, &mut rng);
            let r = run_token(
                m,
                tok,
                pos,
                init,
                &ctl(policy),
                &mut timing,
                &mut cache,
                &mut ws,
            );
            row(&mut out, &ws, pos, r.expect("nothing cancels here"));
        }
    });
    Ok(out)
}
