//! Default parameters and their mapping to the library's, checked in one place (raven-core's
//! `SessionParams::validate`); errors name the C struct fields.

use super::*;

/// Default sampling: greedy (temperature 0), top-k 40, top-p 0.95, min-p 0.05, no repetition
/// penalty over a window of 64.
#[no_mangle]
pub extern "C" fn raven_sampling_default_params() -> raven_sampling_params {
    guard(
        "raven_sampling_default_params",
        |_| default_sampling(),
        || Ok(default_sampling()),
    )
}

fn default_sampling() -> raven_sampling_params {
    let s = SamplingParams::default();
    raven_sampling_params {
        temperature: s.temperature,
        top_k: s.top_k as i32,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n as i32,
    }
}

/// Default session parameters: the model's context and mean recurrence, no early exit,
/// KV sharing over the core layers (`RAVEN_CACHE_COMPRESS`), no budget, random initial state
/// of scale 1, seed 0, greedy sampling, all cores, the plain sampler; for the parallel
/// sampler the paper's conservative setting (official mode, r′ = 4, wavefront 128, headway 1,
/// η = 0.1, β = 0 damped, at most 4096 steps), as `raven run --sampler parallel`.
#[no_mangle]
pub extern "C" fn raven_session_default_params() -> raven_session_params {
    guard(
        "raven_session_default_params",
        |_| default_session(),
        || Ok(default_session()),
    )
}

pub(crate) fn default_session() -> raven_session_params {
    // The parallel sampler's defaults are the library's (and the command line's).
    let pd = ParallelParams::default();
    raven_session_params {
        n_threads: 0,
        n_ctx: 0,
        cache_type: RAVEN_CACHE_COMPRESS,
        cache_k: 0,
        exit_criterion: RAVEN_EXIT_NONE,
        exit_threshold: 0.0,
        min_steps: 1,
        max_steps: 0,
        check_every: 1,
        prefill_steps: 0,
        budget_ms: 0.0,
        warm_start: false,
        init_scale: 1.0,
        seed: 0,
        sampling: default_sampling(),
        kv_cap_bytes: 0,
        render_special: false,
        sampler: RAVEN_SAMPLER_PLAIN,
        parallel_mode: RAVEN_PARALLEL_OFFICIAL,
        inner_steps: pd.inner_steps as i32,
        wavefront: pd.wavefront as i32,
        headway: pd.headway as i32,
        ema: pd.ema,
        noise: pd.noise,
        noise_dampened: pd.noise_dampened,
        noise_sqrt: pd.noise_sqrt,
        max_sampler_steps: pd.max_sampler_steps as i32,
        kv_type: KV_TYPES
            .iter()
            .find(|(_, t)| *t == raven_core::session::DEFAULT_CACHE_TYPE)
            .expect("KV_TYPES lists every KvType")
            .0,
    }
}

pub(crate) fn nonneg(v: i32, what: &str) -> R<usize> {
    usize::try_from(v).map_err(|_| invalid(format!("{what} = {v} must not be negative")))
}

pub(crate) fn sampling_from_c(s: &raven_sampling_params) -> R<SamplingParams> {
    let p = SamplingParams {
        temperature: s.temperature,
        top_k: nonneg(s.top_k, "sampling.top_k")?,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: nonneg(s.repeat_last_n, "sampling.repeat_last_n")?,
    };
    p.validate()?;
    Ok(p)
}

fn criterion_from_c(kind: raven_exit_criterion, thr: f32) -> R<Criterion> {
    if !(thr.is_finite() && thr >= 0.0) {
        return Err(invalid(format!(
            "exit_threshold = {thr} must be a positive number, or 0 for the criterion's default"
        )));
    }
    let name = match kind {
        RAVEN_EXIT_NONE => return Ok(Criterion::None),
        RAVEN_EXIT_KL => "kl",
        RAVEN_EXIT_MINP_KL => "minp-kl",
        RAVEN_EXIT_ENTROPY_DIFF => "entropy-diff",
        RAVEN_EXIT_LATENT_DIFF => "latent-diff",
        RAVEN_EXIT_COSINE => "cosine",
        RAVEN_EXIT_ARGMAX_STABILITY => "argmax-stability",
        RAVEN_EXIT_GATE => "gate",
        RAVEN_EXIT_GATE_FULL => "gate-full",
        k => {
            return Err(invalid(format!(
                "exit_criterion = {k} is not one of RAVEN_EXIT_NONE (0) .. RAVEN_EXIT_GATE_FULL (8)"
            )))
        }
    };
    // The defaults and the checks of each threshold are Criterion::parse's.
    let spec = if thr == 0.0 {
        name.to_string()
    } else {
        format!("{name}:{thr}")
    };
    Criterion::parse(&spec).map_err(|e| {
        invalid(format!(
            "exit_threshold = {thr} does not suit exit_criterion {name}: {}",
            e.message_for(|_| "exit_threshold")
        ))
    })
}

/// The parallel sampler's knobs when `sampler` asks for it (None for the plain sampler, whose
/// session ignores them).
pub(crate) fn parallel_from_c(p: &raven_session_params) -> R<Option<ParallelParams>> {
    match p.sampler {
        RAVEN_SAMPLER_PLAIN => return Ok(None),
        RAVEN_SAMPLER_PARALLEL => {}
        k => {
            return Err(invalid(format!(
                "sampler = {k} is not one of RAVEN_SAMPLER_PLAIN (0), RAVEN_SAMPLER_PARALLEL (1)"
            )))
        }
    }
    let mode = match p.parallel_mode {
        RAVEN_PARALLEL_OFFICIAL => Mode::Official,
        RAVEN_PARALLEL_CORRECTED => Mode::Corrected,
        k => {
            return Err(invalid(format!(
                "parallel_mode = {k} is not one of RAVEN_PARALLEL_OFFICIAL (0), RAVEN_PARALLEL_CORRECTED (1)"
            )))
        }
    };
    // Ranges and the combinations with the session's parameters are the library's checks
    // (ParallelParams::validate), naming these fields.
    Ok(Some(ParallelParams {
        mode,
        inner_steps: nonneg(p.inner_steps, "inner_steps")?,
        wavefront: nonneg(p.wavefront, "wavefront")?,
        headway: nonneg(p.headway, "headway")?,
        ema: p.ema,
        noise: p.noise,
        noise_dampened: p.noise_dampened,
        noise_sqrt: p.noise_sqrt,
        max_sampler_steps: nonneg(p.max_sampler_steps, "max_sampler_steps")?,
    }))
}

pub(crate) fn params_from_c(p: &raven_session_params, m: &Model) -> R<SessionParams> {
    let c = &m.config;
    let k = match nonneg(p.cache_k, "cache_k")? {
        0 => c.n_core,
        k => k,
    };
    let cache = match p.cache_type {
        RAVEN_CACHE_FULL => CacheStrategy::Full,
        RAVEN_CACHE_COMPRESS => CacheStrategy::Compress(k),
        RAVEN_CACHE_LATEST => CacheStrategy::Latest(k),
        t => {
            return Err(invalid(format!(
                "cache_type = {t} is not one of RAVEN_CACHE_FULL (0), RAVEN_CACHE_COMPRESS (1), RAVEN_CACHE_LATEST (2)"
            )))
        }
    };
    let cache_type = match KV_TYPES.iter().find(|(c, _)| *c == p.kv_type) {
        Some(&(_, t)) => t,
        None => {
            return Err(invalid(format!(
                "kv_type = {} is not one of RAVEN_KV_F32 (0), RAVEN_KV_F16 (1), RAVEN_KV_Q8_0 (2)",
                p.kv_type
            )))
        }
    };
    let max_steps = match nonneg(p.max_steps, "max_steps")? {
        0 => c.mean_recurrence,
        n => n,
    };
    let exit = ExitPolicy {
        criterion: criterion_from_c(p.exit_criterion, p.exit_threshold)?,
        min_steps: nonneg(p.min_steps, "min_steps")?,
        max_steps,
        check_every: nonneg(p.check_every, "check_every")?,
    };
    if !(p.budget_ms.is_finite() && p.budget_ms >= 0.0) {
        return Err(invalid(format!(
            "budget_ms = {} must be a positive number of milliseconds, or 0 for none",
            p.budget_ms
        )));
    }
    let ctx = nonneg(p.n_ctx, "n_ctx")?;
    if ctx > c.context {
        return Err(invalid(format!(
            "n_ctx = {ctx} is larger than the model's trained context ({})",
            c.context
        )));
    }
    Ok(SessionParams {
        ctx,
        cache,
        cache_type,
        exit,
        prefill_steps: nonneg(p.prefill_steps, "prefill_steps")?,
        budget_ms: (p.budget_ms > 0.0).then_some(p.budget_ms),
        warm_start: p.warm_start,
        init_scale: p.init_scale,
        seed: p.seed,
        threads: nonneg(p.n_threads, "n_threads")?,
        sampling: sampling_from_c(&p.sampling)?,
        kv_cap_bytes: (p.kv_cap_bytes > 0).then_some(p.kv_cap_bytes),
        ignore_eos: false,
    })
}
