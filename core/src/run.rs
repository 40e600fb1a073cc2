//! `raven logits` (SPEC §4) on the engine: a one-pass prompt, token-by-token decoding through
//! the cache, and per-token adaptive exit (the reference's `forward_with_adaptive_compute`).
//! The fixture tests run it.

use std::time::Instant;

pub use crate::engine::{default_threads, Threads};
use crate::engine::{Engine, Init, TokenControl, TokenOutcome};
use crate::error::{RavenError, Result};
use crate::exit::ExitPolicy;
use crate::kv::{CacheStrategy, KvCache};
use crate::model::Model;
use crate::params::Param;
use crate::rng::Rng;
use raven_quant::KvType;

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
    let cache = KvCache::new(&m.config, o.cache, o.cache_type, t_len, max_steps)?;
    let mut engine = Engine::new(m, cache, threads);
    let mut rng = Rng::new(o.seed);
    let (v, h) = (m.config.n_vocab, m.config.n_embd);
    let mut out = LogitsOutput {
        logits: vec![0.0; t_len * v],
        steps: vec![0; t_len],
        latents: vec![0.0; t_len * h],
        criterion_values: Vec::new(),
    };
    let ctl = |policy: ExitPolicy| TokenControl {
        policy,
        budget_ms: None,
        start: Instant::now(),
        cancel: None,
    };
    // The first tokens in one pass (all of them without --exit; with --exit and --decode-from N
    // the first N, exiting together as the official generation runs a prompt), the rest one at
    // a time through the cache, each under the policy.
    let policy = o.exit.unwrap_or(ExitPolicy::fixed(o.steps));
    let first = o
        .decode_from
        .unwrap_or(if o.exit.is_some() { 0 } else { t_len });
    let row = |out: &mut LogitsOutput, e: &Engine<&Model, &Threads>, at: usize, r: TokenOutcome| {
        let n = e.rows();
        out.logits[at * v..(at + n) * v].copy_from_slice(e.logits());
        out.latents[at * h..(at + n) * h].copy_from_slice(e.latents());
        out.steps[at..at + n]
            .iter_mut()
            .for_each(|s| *s = r.steps as i32);
        out.criterion_values.resize(at + n - 1, Vec::new());
        out.criterion_values.push(r.values);
    };
    engine.entered(|engine| {
        if first > 0 {
            let init = Init::Random(o.init_scale, &mut rng);
            let r = engine.pass(&tokens[..first], first, init, None, &ctl(policy))?;
            row(&mut out, engine, 0, r);
        }
        for (pos, &tok) in tokens.iter().enumerate().skip(first) {
            let init = Init::Random(o.init_scale, &mut rng);
            let r = engine.step(tok, init, &ctl(policy))?;
            row(&mut out, engine, pos, r);
        }
        Ok::<(), RavenError>(())
    })?;
    Ok(out)
}
