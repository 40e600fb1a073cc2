//! The parallel (diffusion-forcing) sampler of Geiping, Yang & Su (arXiv 2510.14961): a
//! *wavefront* of positions advances together. Each sampler step runs the prelude on the
//! wavefront's tokens, applies r′ core iterations to every wavefront position in one batched
//! pass per iteration (each weight read once for all of them), drafts a token from every
//! position, appends a new position for the last draft, and freezes the positions whose latent
//! state has converged; their KV entries are committed and the wavefront moves on.
//!
//! Two modes ([`Mode`]):
//!
//! - [`Mode::Official`] computes what the official code computes
//!   (seal-rg/recurrent-pretraining @ 59e0b69, `generate_diffusion_style`, as
//!   `tests/fixtures/tiny-huginn-diffusion/README.md` states it), quirks included: the
//!   latent-diff criterion compares a position with the previous state of another position after
//!   a commit (B1); the freeze goes up to the *last* converged position, committing KV computed
//!   from tokens other than the frozen ones (B2); the prefill adds `num_steps` to the counter of
//!   the first generated position, whose state it never computed (Q3); a new position's
//!   conditioning is scaled by 1 − η (Q4); a wavefront cap of 1 never advances (B4); stop tokens
//!   are only looked at after step `num_steps`, the first look scanning the prompt (B6); the
//!   output keeps every token frozen in the last step (it can exceed `max_new`, and keeps the
//!   stop token and what follows it); extra headway positions get random token ids (B7); new
//!   positions' random states are rounded to bf16. The fixed rule with a cap small enough to
//!   bite (B5, an `IndexError` in the official code) is refused.
//! - [`Mode::Corrected`] keeps the algorithm and fixes those: each position is compared with its
//!   own previous state; a position is *done* when its criterion is below ε (after at least
//!   `min_steps` iterations) or when it has run `num_steps` iterations; the longest prefix of
//!   done positions whose input token equals the token frozen there is committed, and each
//!   committed position freezes its own draft (the next token); counters start at 0 for the
//!   first generated position; new positions get the full conditioning; the cap is applied
//!   after freezing (so a wavefront of 1 advances); stop tokens end the output (not included) at
//!   any step; the output is cut at `max_new`; extra headway positions repeat the last draft.
//!   Its degenerate settings are ordinary decoding exactly: a wavefront of 1 with r′ = 1 and
//!   η = 0 is per-token adaptive decoding with the same latent-diff exit and maximum, and a
//!   wavefront of 1 with the fixed rule (`--exit none`) is plain decoding with `num_steps`
//!   iterations (with a `compress-sC` cache; with `full` for r′ = `num_steps`).
//!
//! **The default is [`Mode::Official`]**: SPEC §6 makes `raven run --sampler parallel` with
//! `--noise 0 --init-scale 0 --temp 0` reproduce the fixture's (official) tokens, and issue #18
//! asks that the default change only on measurements of the multi-token demo, which does not
//! exist yet. `--parallel-mode corrected` selects the other.
//!
//! With zero noise, a zero initial state (`init_scale` 0) and greedy drafts the sampler is
//! deterministic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::engine::{Engine, Init, Threads, TokenControl};
use crate::error::{RavenError, Result};
use crate::exit::{latent_diff, Criterion, ExitPolicy};
use crate::kv::KvCache;
use crate::model::Model;
use crate::params::Param;
use crate::rng::Rng;
use crate::sample::sample;
use crate::session::SessionParams;

/// Which version of the algorithm runs (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// The official code's behaviour, quirks included (the fixture's).
    #[default]
    Official,
    /// The quirks fixed; degenerate settings equal ordinary decoding.
    Corrected,
}

impl Mode {
    /// Parses `official` or `corrected`.
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "official" => Ok(Mode::Official),
            "corrected" => Ok(Mode::Corrected),
            _ => Err(RavenError::param(
                Param::ParallelMode,
                format!("\"{s}\" is not one of official, corrected"),
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Official => "official",
            Mode::Corrected => "corrected",
        })
    }
}

/// How a position is judged finished (the session's exit criterion picks it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Freeze {
    /// ‖z − z_prev‖ / ‖z‖ < ε (`--exit latent-diff[:ε]`).
    LatentDiff(f32),
    /// The fixed rule (`--exit none`): official, one position per step after step
    /// `num_steps / r′`; corrected, a position is done after `num_steps` iterations.
    Fixed,
}

/// The sampler's knobs. The defaults are the paper's conservative setting (r′ = 4, ε = 0.03
/// latent-diff from the session's exit, η = 0.1, headway 1, wavefront 128, β = 0).
#[derive(Clone, Debug, PartialEq)]
pub struct ParallelParams {
    /// Official or corrected behaviour.
    pub mode: Mode,
    /// Core iterations per sampler step (r′, `inner_recurrence`).
    pub inner_steps: usize,
    /// Most positions in the wavefront (`max_wavefront`; 0 = no cap).
    pub wavefront: usize,
    /// New positions appended per step (`headway`).
    pub headway: usize,
    /// Momentum η of the conditioning (`ema_embeds`; 0 = off).
    pub ema: f64,
    /// State-noise mixing β (`state_noise_mixing`; 0 = off).
    pub noise: f64,
    /// Damp the noise per position as β / (1 + iterations so far) (`dampened_state_mixer`);
    /// otherwise a constant β.
    pub noise_dampened: bool,
    /// Square-root mixing `z·√(1−a) + √a·noise` (`sqrt_mixer`) instead of `z·(1−a) + a·noise`.
    pub noise_sqrt: bool,
    /// Most sampler steps (`max_diffusion_steps`; official: the loop breaks after step
    /// `max_sampler_steps`, i.e. one more).
    pub max_sampler_steps: usize,
}

impl Default for ParallelParams {
    fn default() -> Self {
        ParallelParams {
            mode: Mode::Official,
            inner_steps: 4,
            wavefront: 128,
            headway: 1,
            ema: 0.1,
            noise: 0.0,
            noise_dampened: true,
            noise_sqrt: false,
            max_sampler_steps: 4096,
        }
    }
}

impl ParallelParams {
    /// The freezing rule the session's exit criterion gives.
    pub fn freeze(sp: &SessionParams) -> Result<Freeze> {
        match sp.exit.criterion {
            Criterion::LatentDiff(t) => Ok(Freeze::LatentDiff(t)),
            Criterion::None => Ok(Freeze::Fixed),
            other => {
                let name = match other {
                    Criterion::Kl(_) => "kl",
                    Criterion::MinpKl(_) => "minp-kl",
                    Criterion::EntropyDiff(_) => "entropy-diff",
                    Criterion::Cosine(_) => "cosine",
                    Criterion::ArgmaxStability(_) => "argmax-stability",
                    _ => "gate",
                };
                Err(RavenError::param(
                    Param::Exit,
                    format!(
                        "{name}: the parallel sampler freezes positions with latent-diff[:ε] or \
                         none (the fixed rule)"
                    ),
                ))
            }
        }
    }

    /// Checks the knobs, and the session parameters they are combined with, against `m`.
    pub fn validate(&self, m: &Model, sp: &SessionParams) -> Result<()> {
        if m.config.family.looped_stack() {
            return Err(RavenError::param(
                Param::Sampler,
                format!(
                    "the parallel sampler needs a recurrent state and an adapter; {} models have neither",
                    m.config.family.name()
                ),
            ));
        }
        sp.validate(m)?;
        let freeze = ParallelParams::freeze(sp)?;
        let num_steps = sp.exit.max_steps;
        if !(1..=4096).contains(&self.inner_steps) {
            return Err(RavenError::param(
                Param::InnerSteps,
                format!("{} must be between 1 and 4096", self.inner_steps),
            ));
        }
        if !(1..=1024).contains(&self.headway) {
            return Err(RavenError::param(
                Param::Headway,
                format!("{} must be between 1 and 1024", self.headway),
            ));
        }
        if !(self.ema.is_finite() && (0.0..1.0).contains(&self.ema)) {
            return Err(RavenError::param(
                Param::Ema,
                format!("{} must be in [0, 1)", self.ema),
            ));
        }
        if !(self.noise.is_finite() && (0.0..=1.0).contains(&self.noise)) {
            return Err(RavenError::param(
                Param::Noise,
                format!("{} must be in [0, 1]", self.noise),
            ));
        }
        if self.max_sampler_steps == 0 {
            return Err(RavenError::param(Param::SamplerSteps, "must be at least 1"));
        }
        if sp.prefill_steps != 0 && sp.prefill_steps != num_steps {
            return Err(RavenError::param(
                Param::PrefillSteps,
                "the parallel sampler prefills with the maximum steps (num_steps); leave the \
                 prefill steps unset",
            ));
        }
        if sp.budget_ms.is_some() {
            return Err(RavenError::param(
                Param::BudgetMs,
                "the parallel sampler has no per-token latency budget",
            ));
        }
        if sp.exit.check_every != 1 {
            return Err(RavenError::param(
                Param::CheckEvery,
                "the parallel sampler checks once per sampler step (every r′ iterations); leave it at 1",
            ));
        }
        if self.mode == Mode::Official && sp.exit.min_steps != 1 {
            return Err(RavenError::param(
                Param::MinSteps,
                "the official parallel sampler has no minimum (use the corrected mode)",
            ));
        }
        if self.mode == Mode::Official && freeze == Freeze::Fixed && self.wavefront > 0 {
            // B5: a cap that bites after freezing started commits a position without removing
            // its state; the official code then fails.
            let need = (num_steps / self.inner_steps + 2)
                .saturating_mul(self.headway)
                .saturating_add(1);
            if self.wavefront < need {
                return Err(RavenError::param(
                    Param::Wavefront,
                    format!(
                        "{}: with the fixed rule (exit none) the official sampler needs no cap (0) \
                         or at least (steps/inner-steps + 2)·headway + 1 = {need} positions (a \
                         smaller cap commits a position without removing its state)",
                        self.wavefront
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The sampler's counters (the official `scores`); serialized under these field names by
/// `raven run --json` and the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Core passes: 1 for the prefill, 1 per inner iteration (`num_core_forward_passes`).
    pub core_passes: usize,
    /// Positions through the core: the prompt for the prefill, W per inner iteration
    /// (`num_tokens_forward`).
    pub tokens_forward: usize,
    /// KV entries discarded, summed over steps (`num_cache_clears`).
    pub cache_clears: usize,
    /// Steps where the cap held the wavefront (`num_standing_waves`).
    pub standing_waves: usize,
    /// Sampler steps (`diffusion_steps`: official, the final step index, i.e. one less than the
    /// steps run when the loop ended on a stop token or the step limit).
    pub sampler_steps: usize,
    /// Length of the sequence at the end, drafts included (`gen_seq_length`).
    pub seq_len: usize,
    /// Prompt length (`len_prefill`).
    pub prefill_len: usize,
}

/// What one sampler step did (kept with [`Observe::trace`]).
#[derive(Clone, Debug, Default)]
pub struct StepRecord {
    /// Positions [c, c + W) processed.
    pub wavefront: [usize; 2],
    /// Their input tokens.
    pub input_tokens: Vec<u32>,
    /// The noise coefficient of each wavefront position (empty without noise).
    pub noise_coeff: Vec<f32>,
    /// The draft of each position (the token for the next position).
    pub drafts: Vec<u32>,
    /// The cap held the wavefront.
    pub standing_wave: bool,
    /// Positions appended this step.
    pub headway_in_step: usize,
    /// The criterion δ of the positions compared, from position c (latent-diff).
    pub criterion: Vec<f32>,
    /// Official: δ < ε per compared position; corrected: done per position.
    pub converged: Vec<bool>,
    /// Official: the code's k (0 before the first freeze decision); corrected: tokens frozen
    /// after the step.
    pub k: usize,
    /// [F_before, F_after): positions whose token got frozen.
    pub newly_frozen: [usize; 2],
    /// [c, cache length after): positions whose KV entries were committed.
    pub kv_committed: [usize; 2],
    /// Cumulative counters after the step.
    pub counters: Counters,
    /// The states after the inner iterations, [W, h].
    pub states: Vec<f32>,
    /// The conditioning e after the EMA, [W, h].
    pub conditioning: Vec<f32>,
}

/// Random draws to use instead of the generator (to replay a run of the official code, whose
/// draws come from torch's generator). Rows are consumed in order.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    /// The prefill's initial state, [L, h].
    pub prefill_state: Vec<f32>,
    /// The first wavefront state, [h].
    pub first_state: Vec<f32>,
    /// Noise rows, W per step, in step order.
    pub noise: Vec<f32>,
    /// New positions' states, headway per step, in step order.
    pub new_states: Vec<f32>,
}

/// What to record besides the tokens, and a cancellation flag.
#[derive(Default)]
pub struct Observe<'a> {
    /// Keep a [`StepRecord`] per step.
    pub trace: bool,
    /// Keep the logits row that produced each new token.
    pub logits: bool,
    /// Draw from these instead of the generator.
    pub replay: Option<&'a Replay>,
    /// Raised from another thread: the run ends with [`RavenError::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
}

/// The result of [`generate`].
#[derive(Clone, Debug, Default)]
pub struct ParallelOutput {
    /// The new tokens (the prefill's token first).
    pub tokens: Vec<u32>,
    /// Counters.
    pub counters: Counters,
    /// Core iterations per position of each new token (official: `recurrence_per_position`
    /// from position L).
    pub recurrence: Vec<u32>,
    /// Steps in which each new token's position held the token it ended with
    /// (`token_stable_per_position` from position L).
    pub token_stable: Vec<u32>,
    /// With [`Observe::logits`]: the row that produced each new token, [tokens, V].
    pub logits: Vec<f32>,
    /// With [`Observe::trace`]: one record per step.
    pub steps: Vec<StepRecord>,
    /// The run ended on a stop token.
    pub stopped: bool,
}

/// Where random states come from.
struct Draws<'a> {
    rng: Rng,
    replay: Option<&'a Replay>,
    noise_at: usize,
    new_at: usize,
    std: f32,
}

fn bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    if x.is_nan() {
        return x;
    }
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(r)
}

impl Draws<'_> {
    fn state(&mut self, out: &mut [f32]) {
        if self.std > 0.0 {
            for x in out.iter_mut() {
                *x = self.rng.trunc_normal() * self.std;
            }
        } else {
            out.iter_mut().for_each(|x| *x = 0.0);
        }
    }

    fn replayed(src: &[f32], at: &mut usize, out: &mut [f32], what: &str) -> Result<()> {
        let end = *at + out.len();
        let rows = src.get(*at..end).ok_or_else(|| {
            RavenError::arg(
                "replay",
                format!("ran out of {what} rows at offset {}", *at),
            )
        })?;
        out.copy_from_slice(rows);
        *at = end;
        Ok(())
    }

    fn noise(&mut self, out: &mut [f32]) -> Result<()> {
        match self.replay {
            Some(r) => Draws::replayed(&r.noise, &mut self.noise_at, out, "noise"),
            None => {
                self.state(out);
                Ok(())
            }
        }
    }

    fn new_state(&mut self, out: &mut [f32], bf16: bool) -> Result<()> {
        match self.replay {
            Some(r) => Draws::replayed(&r.new_states, &mut self.new_at, out, "new-state"),
            None => {
                self.state(out);
                if bf16 {
                    out.iter_mut().for_each(|x| *x = bf16_round(*x));
                }
                Ok(())
            }
        }
    }
}

/// Runs the parallel sampler on `prompt` and returns the new tokens, calling `on_token` for each
/// as it is frozen (it returns false to stop). Engine settings come from the session parameters
/// `sp`: the exit criterion is the freezing rule ([`Freeze`]: `latent-diff[:ε]` or `none`), its
/// maximum steps are `num_steps` (the prefill's iterations; the fixed rule's count), and the
/// cache strategy, context, initial-state scale, seed, sampling and warm start (the official
/// `continuous_compute`) apply. `stops` are the stop tokens. Each sampler step is one batched
/// pass of the wavefront through prelude, r′ core iterations, coda and head.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    m: &Model,
    sp: &SessionParams,
    pp: &ParallelParams,
    prompt: &[u32],
    max_new: usize,
    stops: &[u32],
    threads: &Threads,
    obs: &Observe<'_>,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<ParallelOutput> {
    pp.validate(m, sp)?;
    if prompt.is_empty() {
        return Err(RavenError::param(Param::Prompt, "is empty"));
    }
    for &t in prompt {
        m.check_token(t)?;
    }
    let freeze = ParallelParams::freeze(sp)?;
    let official = pp.mode == Mode::Official;
    let ctx = sp.context_for(m);
    let l = prompt.len();
    if l > ctx {
        return Err(RavenError::ContextOverflow {
            needed: l,
            context: ctx,
        });
    }
    let num_steps = sp.exit.max_steps;
    let r = pp.inner_steps;
    let steps_cached = num_steps.max(r);
    if let Some(cap) = sp.kv_cap_bytes {
        let needed = sp.cache.bytes(&m.config, sp.cache_type, ctx, steps_cached);
        if needed > cap {
            return Err(RavenError::CacheTooLarge {
                needed,
                cap,
                n_core: m.config.n_core,
            });
        }
    }
    let cache = KvCache::new(&m.config, sp.cache, sp.cache_type, ctx, steps_cached)?;
    let mut engine = Engine::new(m, cache, threads);
    let (h, v) = (m.config.n_embd, m.config.n_vocab);
    let std = m.config.state_init_std * sp.init_scale * m.config.embed_scale;
    let mut draws = Draws {
        rng: Rng::new(sp.seed),
        replay: obs.replay,
        noise_at: 0,
        new_at: 0,
        std,
    };
    let mut scratch = Vec::new();
    let mut out = ParallelOutput::default();
    let cancelled = || obs.cancel.is_some_and(|c| c.load(Ordering::Relaxed));

    // Prefill: the prompt in one pass with num_steps iterations, from a given initial state.
    let mut s0 = vec![0.0f32; l * h];
    match obs.replay {
        Some(rp) => {
            if rp.prefill_state.len() != s0.len() {
                return Err(RavenError::arg(
                    "replay",
                    format!(
                        "the prefill state has {} values, the prompt needs {}",
                        rp.prefill_state.len(),
                        s0.len()
                    ),
                ));
            }
            s0.copy_from_slice(&rp.prefill_state);
        }
        None => draws.state(&mut s0),
    }
    let ctl = |policy: ExitPolicy| TokenControl {
        policy,
        budget_ms: None,
        start: Instant::now(),
        cancel: obs.cancel,
    };
    engine.pass(
        prompt,
        1,
        Init::Warm(&s0),
        None,
        &ctl(ExitPolicy::fixed(num_steps)),
    )?;
    let x_l = sample(
        &m.emittable().restrict(&engine.logits()[..v]),
        prompt,
        &sp.sampling,
        &mut draws.rng,
        &mut scratch,
    );
    let mut counters = Counters {
        core_passes: 1,
        tokens_forward: l,
        prefill_len: l,
        ..Default::default()
    };
    // Per-position counters, sized for every position the wavefront can reach.
    let positions = ctx + pp.headway + 2;
    let mut n_iter = vec![0u32; positions];
    let mut stable = vec![0u32; positions];
    let mut cur: Vec<u32> = prompt.to_vec();
    cur.push(x_l);
    let mut frozen = l + 1;
    // Output bookkeeping: tokens reported so far (positions l..l + emitted).
    let mut emitted = 0usize;
    let mut logits_rows: Vec<f32> = Vec::new();
    let keep_logits = |rows: &mut Vec<f32>, row: &[f32]| {
        if obs.logits {
            rows.extend_from_slice(row);
        }
    };
    if official {
        // Q3: positions 0..=L, including L whose state is not computed yet.
        n_iter[..=l].iter_mut().for_each(|n| *n = num_steps as u32);
    } else {
        n_iter[..l].iter_mut().for_each(|n| *n = num_steps as u32);
    }
    let mut stopped = false;
    let mut user_stop = false;
    if official || (max_new > 0 && !stops.contains(&x_l)) {
        keep_logits(&mut logits_rows, &engine.logits()[..v]);
        emitted = 1;
        if !on_token(x_l) {
            user_stop = true;
        }
    } else {
        stopped = stops.contains(&x_l);
        user_stop = !stopped;
    }
    // The first wavefront: position L.
    let mut z = vec![0.0f32; h];
    match obs.replay {
        Some(rp) => {
            if rp.first_state.len() != h {
                return Err(RavenError::arg(
                    "replay",
                    format!(
                        "the first state has {} values, not {h}",
                        rp.first_state.len()
                    ),
                ));
            }
            z.copy_from_slice(&rp.first_state);
        }
        None => draws.state(&mut z),
    }
    let eta = pp.ema;
    let (ema_keep, ema_new) = ((1.0 - eta) as f32, eta as f32);
    let mut e_prev: Vec<f32> = Vec::new();
    let mut e_prev_start = 0usize;
    let beta = pp.noise as f32;
    let cap = pp.wavefront;
    let hw = pp.headway;
    let mut c_prev = 0usize;
    let (mut k, mut old_k) = (0usize, 0usize);
    let mut step = 0usize;
    let mut z_start: Vec<f32> = Vec::new();
    let mut noise = Vec::new();
    let mut drafts: Vec<u32> = Vec::new();

    while !stopped
        && !user_stop
        && frozen - l < max_new
        && cur.len() <= ctx
        && (official || step < pp.max_sampler_steps)
    {
        if cancelled() {
            return Err(RavenError::Cancelled);
        }
        let c = engine.len();
        let w = z.len() / h;
        debug_assert_eq!(cur.len(), c + w, "the sequence ends with the wavefront");
        let mut rec = StepRecord {
            wavefront: [c, c + w],
            input_tokens: cur[c..c + w].to_vec(),
            ..Default::default()
        };
        z_start.clone_from(&z);
        // Noise coefficients (before this step's iterations).
        let mut coeff = Vec::new();
        if beta > 0.0 {
            noise.resize(w * h, 0.0);
            draws.noise(&mut noise)?;
            coeff = (0..w)
                .map(|j| {
                    if pp.noise_dampened {
                        (1.0f32 / (1 + n_iter[c + j]) as f32) * beta
                    } else {
                        beta
                    }
                })
                .collect();
        }
        let first_step = step == 0;
        let mut cond = Vec::new();
        if beta > 0.0 {
            for j in 0..w {
                let a = coeff[j];
                let zr = &mut z[j * h..(j + 1) * h];
                let nr = &noise[j * h..(j + 1) * h];
                if pp.noise_sqrt {
                    let (ka, kn) = ((1.0 - a).max(0.0).sqrt(), a.sqrt());
                    zr.iter_mut()
                        .zip(nr)
                        .for_each(|(x, y)| *x = *x * ka + kn * y);
                } else {
                    let ka = 1.0 - a;
                    zr.iter_mut()
                        .zip(nr)
                        .for_each(|(x, y)| *x = *x * ka + a * y);
                }
            }
        }
        let mut condition = |e: &mut [f32]| {
            if eta > 0.0 {
                if official && first_step {
                    // The official e_prev at step 0 is the prelude of positions 0..=L without
                    // the cache: at L (the only row used) the cached prelude, up to rounding.
                    e_prev.clear();
                    e_prev.extend_from_slice(e);
                    e_prev_start = c;
                }
                // e = (1−η)·P + η·e_prev for positions that have a previous conditioning.
                for j in 0..w {
                    let row = j * h..(j + 1) * h;
                    let prev = (c + j)
                        .checked_sub(e_prev_start)
                        .filter(|&i| i < e_prev.len() / h);
                    match prev {
                        Some(i) => {
                            let q = &e_prev[i * h..(i + 1) * h];
                            e[row]
                                .iter_mut()
                                .zip(q)
                                .for_each(|(p, q)| *p = *p * ema_keep + q * ema_new);
                        }
                        None if official => {
                            // Q4: a new position's conditioning is scaled by 1 − η.
                            e[row].iter_mut().for_each(|x| *x *= ema_keep);
                        }
                        None => {}
                    }
                }
                e_prev.clear();
                e_prev.extend_from_slice(e);
                e_prev_start = c;
            }
            if obs.trace {
                cond = e.to_vec();
            }
        };
        engine.pass(
            &cur[c..c + w],
            w,
            Init::Warm(&z),
            Some(&mut condition),
            &ctl(ExitPolicy::fixed(r)),
        )?;
        for n in &mut n_iter[c..c + w] {
            *n += r as u32;
        }
        counters.core_passes += r;
        counters.tokens_forward += r * w;
        z.clear();
        z.extend_from_slice(engine.state());
        // Drafts: row j predicts position c + j + 1; the rows used start at the last frozen
        // token (F − 1 − c = 0: the wavefront starts there).
        let off = (frozen - 1).saturating_sub(c);
        drafts.clear();
        for j in off..w {
            let row = &engine.logits()[j * v..(j + 1) * v];
            drafts.push(sample(
                &m.emittable().restrict(row),
                &cur[..frozen],
                &sp.sampling,
                &mut draws.rng,
                &mut scratch,
            ));
        }
        // token_stable: a position counts when its token equals the edit proposed now.
        for p in 0..c + w {
            let proposed = if p < frozen {
                cur[p]
            } else {
                drafts[p - frozen]
            };
            stable[p] += (cur[p] == proposed) as u32;
        }
        let f_before = frozen;
        let mut new_len;
        let hw_in;
        let mut newly: Vec<(usize, usize)> = Vec::new(); // (position, logits row)
        if official {
            // The sequence becomes frozen + drafts (+ headway − 1 random ids), the wavefront
            // grows by `headway` positions, then the cap.
            cur.truncate(frozen);
            cur.extend_from_slice(&drafts);
            let vocab = v.min(65510) as u64;
            for _ in 1..hw {
                cur.push((draws.rng.next_u64() % vocab) as u32);
            }
            let mut add = vec![0.0f32; hw * h];
            if sp.warm_start && w >= hw {
                add.copy_from_slice(&z[(w - hw) * h..]);
            } else {
                draws.new_state(&mut add, true)?;
            }
            let mut z_all = z.clone();
            z_all.extend_from_slice(&add);
            if cap > 0 && w + hw > cap {
                hw_in = cap - w;
                z_all.truncate(cap * h);
                cur.truncate(c + cap);
                counters.standing_waves += 1;
                rec.standing_wave = true;
            } else {
                hw_in = hw;
            }
            let rows_after = z_all.len() / h;
            match freeze {
                Freeze::LatentDiff(eps) => {
                    // B1: z_prev (the states at this step's start) begins at c, but is indexed
                    // as if it began at c_prev.
                    let d = c - c_prev;
                    let cmp = w.saturating_sub(d);
                    rec.criterion = (0..cmp)
                        .map(|j| {
                            latent_diff(
                                &z[j * h..(j + 1) * h],
                                &z_start[(j + d) * h..(j + d + 1) * h],
                            )
                        })
                        .collect();
                    rec.converged = rec.criterion.iter().map(|&x| x < eps).collect();
                    if let Some(jstar) = rec.converged.iter().rposition(|&x| x) {
                        // Up to the last converged position: tokens through c + j* frozen, KV
                        // through c + j* − 1 committed, position c + j* stays.
                        k = c + jstar + 1;
                        new_len = k - 1;
                        z_all.drain(..(k - 1 - c) * h);
                        frozen = k;
                    } else {
                        new_len = c;
                    }
                }
                Freeze::Fixed => {
                    if step > num_steps / r {
                        // Validation keeps the cap from biting here (B5): hw_in = headway.
                        let clear = rows_after.saturating_sub(hw + hw_in).min(w);
                        new_len = c + w - clear;
                        z_all.drain(..hw_in * h);
                        frozen += hw_in;
                    } else {
                        new_len = c;
                    }
                }
            }
            for p in f_before..frozen {
                newly.push((p, p - 1 - c));
            }
            z = z_all;
        } else {
            // Corrected: done positions, the consistent prefix, then growth up to the cap.
            let eps = match freeze {
                Freeze::LatentDiff(eps) => Some(eps),
                Freeze::Fixed => None,
            };
            if eps.is_some() {
                rec.criterion = (0..w)
                    .map(|j| latent_diff(&z[j * h..(j + 1) * h], &z_start[j * h..(j + 1) * h]))
                    .collect();
            }
            rec.converged = (0..w)
                .map(|j| {
                    let n = n_iter[c + j] as usize;
                    n >= num_steps
                        || eps.is_some_and(|e| rec.criterion[j] < e && n >= sp.exit.min_steps)
                })
                .collect();
            // Row j's KV and state were computed from its input token; commit it only when
            // that is the token frozen there (row j − 1's draft).
            let done = (0..w)
                .take_while(|&j| rec.converged[j] && (j == 0 || cur[c + j] == drafts[j - 1]))
                .count();
            cur.truncate(frozen);
            cur.extend_from_slice(&drafts);
            frozen += done;
            new_len = c + done;
            k = frozen;
            for p in f_before..frozen {
                newly.push((p, p - 1 - c));
            }
            let kept = w - done;
            let room = if cap > 0 { cap - kept.min(cap) } else { hw };
            let add_n = hw.min(room);
            let last = *drafts.last().expect("one draft per wavefront position");
            let mut add = vec![0.0f32; add_n * h];
            if add_n > 0 {
                if sp.warm_start && w >= add_n {
                    add.copy_from_slice(&z[(w - add_n) * h..]);
                } else {
                    draws.new_state(&mut add, false)?;
                }
                for _ in 1..add_n {
                    cur.push(last);
                }
            } else {
                cur.truncate(c + w);
                counters.standing_waves += 1;
                rec.standing_wave = true;
            }
            hw_in = add_n;
            z.drain(..done * h);
            z.extend_from_slice(&add);
        }
        counters.cache_clears += c + w - new_len;
        engine.truncate(new_len);
        new_len = engine.len();
        // Report the newly frozen tokens.
        for &(p, row) in &newly {
            let t = cur[p];
            if !official {
                if stops.contains(&t) {
                    stopped = true;
                    break;
                }
                if emitted >= max_new {
                    break;
                }
            }
            keep_logits(&mut logits_rows, &engine.logits()[row * v..(row + 1) * v]);
            emitted += 1;
            if !on_token(t) {
                user_stop = true;
                break;
            }
        }
        rec.drafts = drafts.clone();
        rec.noise_coeff = coeff;
        rec.headway_in_step = hw_in;
        rec.k = k;
        rec.newly_frozen = [f_before, frozen];
        rec.kv_committed = [c, new_len];
        if obs.trace {
            rec.states = engine.state().to_vec();
            rec.conditioning = cond;
        }
        if official {
            // B6: stop ids are looked at only after step num_steps, among frozen[old_k..k].
            let mut stop_now = false;
            if step > num_steps {
                stop_now = match freeze {
                    Freeze::LatentDiff(_) => cur[old_k..k].iter().any(|t| stops.contains(t)),
                    Freeze::Fixed => cur[frozen.saturating_sub(hw)..frozen]
                        .iter()
                        .any(|t| stops.contains(t)),
                };
            }
            let limit = step > pp.max_sampler_steps;
            if stop_now || limit {
                stopped = stop_now;
                counters.sampler_steps = step;
                if obs.trace {
                    rec.counters = counters;
                    out.steps.push(rec);
                }
                break;
            }
        }
        c_prev = c;
        step += 1;
        old_k = k;
        counters.sampler_steps = step;
        if obs.trace {
            rec.counters = counters;
            out.steps.push(rec);
        }
    }
    counters.seq_len = cur.len();
    out.counters = counters;
    out.tokens = cur[l..l + emitted].to_vec();
    out.recurrence = n_iter[l..l + emitted].to_vec();
    out.token_stable = stable[l..l + emitted].to_vec();
    out.logits = logits_rows;
    out.stopped = stopped;
    Ok(out)
}
