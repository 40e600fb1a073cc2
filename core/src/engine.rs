//! The engine: a model with its KV cache, workspace and threads, and the two primitives every
//! path runs on.
//!
//! - [`Engine::pass`]: a batched pass over the next positions (each weight read once for all of
//!   them) at a given number of core iterations or under an exit policy and latency budget;
//!   prompts, speculative verification, `raven logits` and the parallel sampler's wavefronts.
//! - [`Engine::step`]: one token under the exit policy and the latency budget, whose cost feeds
//!   the budget's estimates.
//!
//! A [`crate::Session`] is policy on top (sampling, warm start, speculative decoding, the
//! generation loop); [`crate::run::logits`], the CLI, the C ABI, the server and Python are
//! adapters.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{RavenError, Result};
use crate::exit::{Criterion, ExitPolicy, ExitState};
use crate::forward::Workspace;
use crate::kv::{CacheStrategy, KvCache};
use crate::model::Model;
use crate::params::Param;
use crate::rng::Rng;

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

/// A change to the conditioning (the prelude's output, row-major `[positions, h]`) before the
/// iterations start: the parallel sampler's moving average.
pub type Condition<'a> = dyn FnMut(&mut [f32]) + Send + 'a;

/// A model with its KV cache, workspace and threads. A session's engine shares its model and
/// threads (`Arc`, the default); a one-off run borrows them.
pub struct Engine<M = Arc<Model>, T = Arc<Threads>>
where
    M: Deref<Target = Model>,
    T: Deref<Target = Threads>,
{
    model: M,
    cache: KvCache,
    ws: Workspace,
    threads: T,
    timing: Timing,
}

impl<M: Deref<Target = Model>, T: Deref<Target = Threads>> Engine<M, T> {
    /// An engine over `cache` (its geometry decides the context and the iterations it holds).
    pub fn new(model: M, cache: KvCache, threads: T) -> Engine<M, T> {
        Engine {
            model,
            cache,
            ws: Workspace::new(),
            threads,
            timing: Timing::default(),
        }
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }
    /// The threads.
    pub fn threads(&self) -> &T {
        &self.threads
    }
    /// The KV cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
    /// The KV cache, to change its view (speculative drafts) or fill it (benchmarks).
    pub(crate) fn cache_mut(&mut self) -> &mut KvCache {
        &mut self.cache
    }
    /// Positions in the cache: the next pass starts here.
    pub fn len(&self) -> usize {
        self.cache.len()
    }
    /// True when the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.cache.len() == 0
    }
    /// Positions the cache can hold.
    pub fn ctx(&self) -> usize {
        self.cache.ctx()
    }
    /// Forgets every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.cache.truncate(len);
    }
    /// The logits of the last pass: its last `logit_rows` positions, row-major.
    pub fn logits(&self) -> &[f32] {
        &self.ws.logits
    }
    /// The latents ln_f(s) of the last pass's positions, row-major `[positions, h]`.
    pub fn latents(&self) -> &[f32] {
        &self.ws.latent
    }
    /// The recurrent state s of the last pass's positions, row-major `[positions, h]`.
    pub fn state(&self) -> &[f32] {
        &self.ws.s
    }
    /// Positions of the last pass.
    pub fn rows(&self) -> usize {
        self.ws.n
    }

    /// Runs `f` with the threads entered once: the engine's calls inside it skip the hand-over
    /// to the pool that each call otherwise makes (tens of microseconds, a draft's worth on a
    /// small model).
    pub fn entered<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R
    where
        Self: Send,
        T: Clone,
    {
        let threads = self.threads.clone();
        threads.run(|| f(self))
    }

    /// `tokens` at the next positions in one pass: prelude, the recurrence under `ctl` (all
    /// positions stop together: criteria on the distribution read the last position, latent
    /// criteria average over them), coda and head for the last `logit_rows` positions.
    /// `condition` changes the prelude's output first. An error when an argument does not fit
    /// (nothing is written then); [`RavenError::Cancelled`] when cancelled, the cache as it
    /// was.
    pub fn pass(
        &mut self,
        tokens: &[u32],
        logit_rows: usize,
        init: Init<'_>,
        condition: Option<&mut Condition<'_>>,
        ctl: &TokenControl<'_>,
    ) -> Result<TokenOutcome> {
        // A multi-position pass says nothing about one token's cost: the budget's estimates
        // stay out of it.
        let mut timing = Timing::default();
        self.run(tokens, logit_rows, init, condition, ctl, &mut timing)
    }

    /// One token at the next position under `ctl` (exit policy, latency budget), its logits
    /// left in [`Engine::logits`]; its cost updates the budget's estimates. Errors as
    /// [`Engine::pass`].
    pub fn step(
        &mut self,
        token: u32,
        init: Init<'_>,
        ctl: &TokenControl<'_>,
    ) -> Result<TokenOutcome> {
        let mut timing = self.timing;
        let r = self.run(&[token], 1, init, None, ctl, &mut timing);
        self.timing = timing;
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        tokens: &[u32],
        logit_rows: usize,
        init: Init<'_>,
        condition: Option<&mut Condition<'_>>,
        ctl: &TokenControl<'_>,
        timing: &mut Timing,
    ) -> Result<TokenOutcome> {
        let start = self.cache.len();
        self.check(tokens, logit_rows, &init, ctl)?;
        let Engine {
            model,
            cache,
            ws,
            threads,
            ..
        } = self;
        let m: &Model = model;
        let r = threads.run(|| {
            run_chunk(
                m, tokens, start, logit_rows, init, condition, ctl, timing, cache, ws,
            )
        });
        if r.is_none() {
            cache.truncate(start);
        }
        r.ok_or(RavenError::Cancelled)
    }

    /// What a pass needs, checked before anything is computed or written: tokens in the
    /// vocabulary and room for them, logit rows among them, an initial state of their size, a
    /// policy the model and the cache can run.
    fn check(
        &self,
        tokens: &[u32],
        logit_rows: usize,
        init: &Init<'_>,
        ctl: &TokenControl<'_>,
    ) -> Result<()> {
        let c = &self.model.config;
        if tokens.is_empty() {
            return Err(RavenError::param(Param::Tokens, "no tokens given"));
        }
        for &t in tokens {
            self.model.check_token(t)?;
        }
        let needed = self.cache.len() + tokens.len();
        if needed > self.cache.ctx() {
            return Err(RavenError::ContextOverflow {
                needed,
                context: self.cache.ctx(),
            });
        }
        if logit_rows == 0 || logit_rows > tokens.len() {
            return Err(RavenError::arg(
                "logit_rows",
                format!(
                    "{logit_rows} must be between 1 and the {} tokens",
                    tokens.len()
                ),
            ));
        }
        if let Init::Warm(w) = init {
            if w.len() != tokens.len() * c.n_embd {
                return Err(RavenError::arg(
                    "init",
                    format!(
                        "the initial state has {} values, {} tokens need {}",
                        w.len(),
                        tokens.len(),
                        tokens.len() * c.n_embd
                    ),
                ));
            }
        }
        ctl.policy.validate()?;
        ctl.policy.criterion.for_model(c)?;
        if !matches!(self.cache.strategy(), CacheStrategy::Compress(_))
            && ctl.policy.max_steps > self.cache.max_steps()
        {
            return Err(RavenError::param(
                Param::MaxSteps,
                format!(
                    "{} iterations, but the cache holds {}",
                    ctl.policy.max_steps,
                    self.cache.max_steps()
                ),
            ));
        }
        Ok(())
    }
}

/// [`Engine::pass`]'s work: `tokens` at positions `start..` in one
/// pass (each weight read once for all of them), their recurrence stopped together by the
/// policy, as the official `generate_with_adaptive_compute` runs a prompt: criteria on the
/// distribution (kl, entropy-diff, argmax-stability) and the gate read the last position,
/// latent criteria average over the positions. Leaves the logits of the last `logit_rows`
/// positions in `ws.logits` and writes the cache entries. `None` when cancelled.
#[allow(clippy::too_many_arguments)]
fn run_chunk(
    m: &Model,
    tokens: &[u32],
    start: usize,
    logit_rows: usize,
    init: Init<'_>,
    condition: Option<&mut Condition<'_>>,
    ctl: &TokenControl<'_>,
    timing: &mut Timing,
    cache: &mut KvCache,
    ws: &mut Workspace,
) -> Option<TokenOutcome> {
    let mut policy = ctl.policy;
    policy.criterion = policy
        .criterion
        .for_model(&m.config)
        .expect("Engine::check checked the criterion against the model");
    m.embed_prelude(tokens, start, cache, ws);
    if let Some(f) = condition {
        f(&mut ws.e);
    }
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
