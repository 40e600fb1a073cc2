//! Drivers over the forward pieces: a one-pass prompt, token-by-token decoding through the cache,
//! and per-token adaptive exit (the reference's `forward_with_adaptive_compute`). `raven logits`
//! and the fixture tests run these.

use crate::error::{RavenError, Result};
use crate::exit::{Criterion, ExitPolicy, ExitState};
use crate::forward::Workspace;
use crate::kv::{CacheStrategy, KvCache};
use crate::model::Model;
use crate::rng::Rng;

/// A thread pool entered once per call (rayon's cost per parallel region is only low inside
/// `install`; see DEPENDENCIES.md).
pub struct Threads {
    pool: rayon::ThreadPool,
}

impl Threads {
    /// A pool of `n` threads (0 = the number of cores).
    pub fn new(n: usize) -> Result<Threads> {
        let n = if n == 0 { default_threads() } else { n };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("raven-{i}"))
            .build()
            .map_err(|e| RavenError::arg("--threads", format!("cannot start {n} threads: {e}")))?;
        Ok(Threads { pool })
    }

    /// Runs `f` inside the pool.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
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
    /// First N tokens in one pass, the rest one at a time.
    pub decode_from: Option<usize>,
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

/// Runs one token through the recurrence with an exit policy; leaves its logits in `ws.logits`.
/// Returns (iterations run, criterion values).
pub fn adaptive_token(
    m: &Model,
    token: u32,
    pos: usize,
    policy: &ExitPolicy,
    init_scale: f32,
    rng: &mut Rng,
    cache: &mut KvCache,
    ws: &mut Workspace,
) -> (usize, Vec<f32>) {
    m.embed_prelude(&[token], pos, cache, ws);
    m.init_state(init_scale, rng, ws);
    let mut st = ExitState::new(policy.criterion, &ws.s, m.config.n_vocab);
    let mut values = Vec::new();
    let mut have_logits = false;
    let mut steps = policy.max_steps;
    for i in 0..policy.max_steps {
        m.core_step(i, cache, ws);
        have_logits = false;
        let done = i + 1;
        if policy.criterion == Criterion::None || done % policy.check_every != 0 {
            continue;
        }
        let (v, exit) = if policy.criterion.needs_logits() {
            m.coda_head(1, cache, ws);
            have_logits = true;
            st.check(&ws.s, Some(&ws.logits))
        } else {
            st.check(&ws.s, None)
        };
        values.push(v);
        if exit && done >= policy.min_steps {
            steps = done;
            break;
        }
    }
    if !have_logits {
        m.coda_head(1, cache, ws);
    }
    cache.set_len(pos + 1);
    (steps, values)
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
        return Err(RavenError::arg("--tokens", "no tokens given"));
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
        return Err(RavenError::arg("--steps", "must be at least 1"));
    }
    if let Some(n) = o.decode_from {
        if n == 0 || n > t_len {
            return Err(RavenError::arg(
                "--decode-from",
                format!("{n} must be between 1 and the number of tokens ({t_len})"),
            ));
        }
    }
    let max_steps = o.exit.map(|p| p.max_steps).unwrap_or(o.steps);
    if let Some(p) = &o.exit {
        p.validate()?;
    }
    let mut cache = KvCache::new(&m.config, o.cache, t_len, max_steps)?;
    let mut ws = Workspace::new();
    let mut rng = Rng::new(o.seed);
    let (v, h) = (m.config.n_vocab, m.config.n_embd);
    let mut out = LogitsOutput {
        logits: vec![0.0; t_len * v],
        steps: vec![0; t_len],
        latents: vec![0.0; t_len * m.config.n_embd],
        criterion_values: Vec::new(),
    };
    threads.run(|| {
        if let Some(policy) = &o.exit {
            for (pos, &tok) in tokens.iter().enumerate() {
                let (steps, vals) = adaptive_token(
                    m,
                    tok,
                    pos,
                    policy,
                    o.init_scale,
                    &mut rng,
                    &mut cache,
                    &mut ws,
                );
                out.logits[pos * v..(pos + 1) * v].copy_from_slice(&ws.logits);
                out.latents[pos * h..(pos + 1) * h].copy_from_slice(&ws.latent);
                out.steps[pos] = steps as i32;
                out.criterion_values.push(vals);
            }
            return;
        }
        let first = o.decode_from.unwrap_or(t_len);
        let fixed = ExitPolicy::fixed(o.steps);
        // One pass over the first tokens.
        m.embed_prelude(&tokens[..first], 0, &mut cache, &mut ws);
        m.init_state(o.init_scale, &mut rng, &mut ws);
        for i in 0..o.steps {
            m.core_step(i, &mut cache, &mut ws);
        }
        m.coda_head(first, &mut cache, &mut ws);
        cache.set_len(first);
        out.logits[..first * v].copy_from_slice(&ws.logits);
        out.latents[..first * h].copy_from_slice(&ws.latent);
        out.steps[..first]
            .iter_mut()
            .for_each(|s| *s = o.steps as i32);
        // The rest one at a time through the cache.
        for pos in first..t_len {
            let (steps, _) = adaptive_token(
                m,
                tokens[pos],
                pos,
                &fixed,
                o.init_scale,
                &mut rng,
                &mut cache,
                &mut ws,
            );
            out.logits[pos * v..(pos + 1) * v].copy_from_slice(&ws.logits);
            out.latents[pos * h..(pos + 1) * h].copy_from_slice(&ws.latent);
            out.steps[pos] = steps as i32;
        }
    });
    Ok(out)
}
