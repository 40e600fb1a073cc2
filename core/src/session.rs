//! A generation session over a shared, immutable [`Model`]: its own KV cache, workspace, seeded
//! generator and thread pool. Prefill, per-token steps with an exit policy and a latency budget,
//! sampling, stop tokens, warm start, cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::engine::{Engine, Init, Threads, TokenControl};
use crate::error::{RavenError, Result};
use crate::exit::{Criterion, ExitPolicy};
use crate::kv::{validate_kv_type, CacheStrategy, KvCache};
use crate::model::Model;
use crate::params::Param;
use crate::rng::Rng;
use crate::sample::{sample, SamplingParams};
use raven_quant::KvType;

/// The element type of a generation session's KV cache unless asked otherwise (llama.cpp's
/// default too): the one place the CLI, C ABI, server and Python take it from.
pub const DEFAULT_CACHE_TYPE: KvType = KvType::F16;

/// Everything a session can be asked to do differently.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// Context length in tokens (0 = the model's, at most 4096).
    pub ctx: usize,
    /// KV cache strategy.
    pub cache: CacheStrategy,
    /// Element type of the cached keys and values (f16 by default, as llama.cpp's).
    pub cache_type: KvType,
    /// Exit policy of generated tokens (criterion, min/max iterations, check interval).
    pub exit: ExitPolicy,
    /// Core iterations for the prompt (0 = `exit.max_steps`).
    pub prefill_steps: usize,
    /// Per-token latency budget in milliseconds (None = unbounded).
    pub budget_ms: Option<f64>,
    /// Start each token's state from the previous token's final latent (the reference's
    /// `continuous_compute`).
    pub warm_start: bool,
    /// Scale of the random initial state (0 = zeros).
    pub init_scale: f32,
    /// Seed of sampling and of the initial state.
    pub seed: u64,
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Refuse a session whose KV cache would be larger than this many bytes.
    pub kv_cap_bytes: Option<u64>,
    /// Keep generating past the model's end-of-sequence tokens (llama.cpp's `--ignore-eos`;
    /// for benchmarks). Explicit stop tokens still stop.
    pub ignore_eos: bool,
}

impl SessionParams {
    /// Defaults for a model: its mean recurrence as the maximum, no early exit, KV sharing over
    /// the core layers (`compress-sC`), greedy decoding, zero initial state variance scale 1.
    pub fn for_model(m: &Model) -> SessionParams {
        SessionParams {
            ctx: 0,
            cache: CacheStrategy::Compress(m.config.n_core),
            cache_type: DEFAULT_CACHE_TYPE,
            exit: ExitPolicy::fixed(m.config.mean_recurrence),
            prefill_steps: 0,
            budget_ms: None,
            warm_start: false,
            init_scale: 1.0,
            seed: 0,
            threads: 0,
            sampling: SamplingParams::default(),
            kv_cap_bytes: None,
            ignore_eos: false,
        }
    }

    /// Checks every parameter against `m` (the one place they are checked; a session is
    /// created only from parameters that pass): an invalid one is
    /// [`RavenError::InvalidParam`], a KV cache over the cap [`RavenError::CacheTooLarge`].
    pub fn validate(&self, m: &Model) -> Result<()> {
        self.exit.validate()?;
        self.exit.criterion.for_model(&m.config)?;
        if self.warm_start && m.config.family.looped_stack() {
            return Err(RavenError::param(
                Param::WarmStart,
                format!(
                    "{} models start each token's loop from its embedding: there is no state to warm-start",
                    m.config.family.name()
                ),
            ));
        }
        self.sampling.validate()?;
        self.cache.validate(&m.config)?;
        validate_kv_type(self.cache_type, &m.config)?;
        if let Some(b) = self.budget_ms {
            if !(b.is_finite() && b > 0.0) {
                return Err(RavenError::param(
                    Param::BudgetMs,
                    format!("{b} must be a positive number of milliseconds"),
                ));
            }
        }
        if !(self.init_scale.is_finite() && self.init_scale >= 0.0) {
            return Err(RavenError::param(
                Param::InitScale,
                format!("{} must be a finite number ≥ 0", self.init_scale),
            ));
        }
        let ctx = self.context_for(m);
        if ctx > m.config.context {
            return Err(RavenError::param(
                Param::Ctx,
                format!(
                    "{ctx} is larger than the model's trained context ({})",
                    m.config.context
                ),
            ));
        }
        let needed = self.kv_bytes(m);
        if let Some(cap) = self.kv_cap_bytes {
            if needed > cap {
                return Err(RavenError::CacheTooLarge {
                    needed,
                    cap,
                    n_core: m.config.n_core,
                });
            }
        }
        Ok(())
    }

    /// The context length these parameters give for `m`.
    pub fn context_for(&self, m: &Model) -> usize {
        if self.ctx == 0 {
            m.config.context.min(4096)
        } else {
            self.ctx
        }
    }

    /// KV cache bytes a session with these parameters allocates for `m`.
    pub fn kv_bytes(&self, m: &Model) -> u64 {
        let steps = self.exit.max_steps.max(self.prefill_steps);
        self.cache
            .bytes(&m.config, self.cache_type, self.context_for(m), steps)
    }
}

/// What one generated position cost and how it ended.
#[derive(Clone, Debug, Default)]
pub struct TokenStats {
    /// The token fed.
    pub token: u32,
    /// Core iterations run.
    pub steps: usize,
    /// The exit criterion stopped it before the maximum.
    pub exited_early: bool,
    /// The latency budget stopped it.
    pub budget_capped: bool,
    /// Wall time of the step in milliseconds.
    pub ms: f64,
    /// Of which core iterations (adapter + core blocks).
    pub core_ms: f64,
}

/// What [`Session::next_token`] did.
#[derive(Clone, Debug)]
pub enum Next {
    /// A token was sampled and fed.
    Token(u32, TokenStats),
    /// This stop token was sampled (not fed).
    Stop(u32),
    /// The context is full: nothing was fed.
    ContextFull,
}

/// A generation session.
pub struct Session {
    engine: Engine,
    params: SessionParams,
    rng: Rng,
    history: Vec<u32>,
    logits: Vec<f32>,
    warm: Option<Vec<f32>>,
    scratch: Vec<(f32, u32)>,
    cancel: Option<Arc<AtomicBool>>,
    spec: SpecStats,
}

/// Counters of self-speculative decoding over a session's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Verification passes.
    pub rounds: usize,
    /// Tokens drafted (and verified).
    pub drafted: usize,
    /// Drafted tokens the full model agreed with.
    pub accepted: usize,
}

impl Session {
    /// A session with its own thread pool.
    pub fn new(model: Arc<Model>, params: SessionParams) -> Result<Session> {
        let threads = Arc::new(Threads::new(params.threads)?);
        Session::with_threads(model, params, threads)
    }

    /// A session on a shared thread pool.
    pub fn with_threads(
        model: Arc<Model>,
        params: SessionParams,
        threads: Arc<Threads>,
    ) -> Result<Session> {
        params.validate(&model)?;
        let ctx = params.context_for(&model);
        let steps = params.exit.max_steps.max(params.prefill_steps);
        let cache = KvCache::new(&model.config, params.cache, params.cache_type, ctx, steps)?;
        Ok(Session {
            rng: Rng::new(params.seed),
            engine: Engine::new(model, cache, threads),
            params,
            history: Vec::new(),
            logits: Vec::new(),
            warm: None,
            scratch: Vec::new(),
            cancel: None,
            spec: SpecStats::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<Model> {
        self.engine.model()
    }
    /// The parameters.
    pub fn params(&self) -> &SessionParams {
        &self.params
    }
    /// Replaces the sampling parameters.
    pub fn set_sampling(&mut self, s: SamplingParams) -> Result<()> {
        s.validate()?;
        self.params.sampling = s;
        Ok(())
    }
    /// Sets a flag that, when raised from any thread, makes the running call return
    /// [`RavenError::Cancelled`] at the next iteration boundary.
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }
    /// The session's thread pool.
    pub fn threads(&self) -> &Arc<Threads> {
        self.engine.threads()
    }
    /// Bytes of the KV cache (allocated once at creation).
    pub fn kv_bytes(&self) -> u64 {
        self.engine.cache().bytes()
    }
    /// Context length.
    pub fn ctx(&self) -> usize {
        self.engine.ctx()
    }
    /// Tokens in the context.
    pub fn len(&self) -> usize {
        self.history.len()
    }
    /// True when the context is empty.
    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }
    /// Tokens in the context.
    pub fn history(&self) -> &[u32] {
        &self.history
    }
    /// Next-token logits after the last prefill or step.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
    /// Forgets the context (the cache stays allocated); the generator is reseeded.
    pub fn reset(&mut self) {
        self.engine.truncate(0);
        self.history.clear();
        self.logits.clear();
        self.warm = None;
        self.rng = Rng::new(self.params.seed);
    }

    /// Benchmarks: a context of `n` positions whose cache holds random entries (see
    /// [`KvCache::fill_synthetic`]) and whose tokens are 0, so the next step decodes at
    /// position `n` reading that much cache. Replaces the context.
    #[doc(hidden)]
    pub fn fill_synthetic_context(&mut self, n: usize) -> Result<()> {
        if n >= self.engine.ctx() {
            return Err(RavenError::ContextOverflow {
                needed: n + 1,
                context: self.engine.ctx(),
            });
        }
        self.reset();
        let seed = self.params.seed;
        self.engine.cache_mut().fill_synthetic(n, seed);
        self.history = vec![0; n];
        Ok(())
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Token ids in the vocabulary and room for all of them in the context: checked before
    /// anything is fed, so a bad prompt leaves the session as it was.
    fn check_prompt(&self, tokens: &[u32]) -> Result<()> {
        for &t in tokens {
            self.engine.model().check_token(t)?;
        }
        self.check_room(tokens.len())
    }

    fn check_room(&self, n: usize) -> Result<()> {
        let needed = self.history.len() + n;
        if needed > self.engine.ctx() {
            return Err(RavenError::ContextOverflow {
                needed,
                context: self.engine.ctx(),
            });
        }
        Ok(())
    }

    /// Processes `tokens` in one pass (each weight read once for all of them) with the prefill
    /// iteration count, leaving the next-token logits of the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(RavenError::param(Param::Prompt, "is empty"));
        }
        self.check_prompt(tokens)?;
        let steps = if self.params.prefill_steps == 0 {
            self.params.exit.max_steps
        } else {
            self.params.prefill_steps
        };
        let ctl = TokenControl {
            policy: ExitPolicy::fixed(steps),
            budget_ms: None,
            start: Instant::now(),
            cancel: self.cancel.as_deref(),
        };
        let init = Init::Random(self.params.init_scale, &mut self.rng);
        self.engine.pass(tokens, 1, init, None, &ctl)?;
        self.history.extend_from_slice(tokens);
        self.logits.clear();
        self.logits.extend_from_slice(self.engine.logits());
        if self.params.warm_start {
            let h = self.engine.model().config.n_embd;
            let n = self.engine.rows();
            self.warm = Some(self.engine.latents()[(n - 1) * h..n * h].to_vec());
        }
        Ok(())
    }

    /// Feeds one token: recurrence with the exit policy and the latency budget, then coda and
    /// head. Leaves its next-token logits.
    pub fn step(&mut self, token: u32) -> Result<TokenStats> {
        self.engine.model().check_token(token)?;
        self.check_room(1)?;
        let t0 = Instant::now();
        let ctl = TokenControl {
            policy: self.params.exit,
            budget_ms: self.params.budget_ms,
            start: t0,
            cancel: self.cancel.as_deref(),
        };
        let warm = if self.params.warm_start {
            self.warm.take()
        } else {
            None
        };
        let init = match &warm {
            Some(w) => Init::Warm(w),
            None => Init::Random(self.params.init_scale, &mut self.rng),
        };
        let r = match self.engine.step(token, init, &ctl) {
            Ok(r) => r,
            Err(e) => {
                self.warm = warm;
                return Err(e);
            }
        };
        self.history.push(token);
        self.logits.clear();
        self.logits.extend_from_slice(self.engine.logits());
        if self.params.warm_start {
            self.warm = Some(self.engine.latents().to_vec());
        }
        Ok(TokenStats {
            token,
            steps: r.steps,
            exited_early: r.exited_early,
            budget_capped: r.budget_capped,
            ms: t0.elapsed().as_secs_f64() * 1e3,
            core_ms: r.core_ms,
        })
    }

    /// Draws the next token from the current logits, among the ids the tokenizer can decode
    /// ([`crate::model::Emittable`]).
    pub fn sample(&mut self) -> u32 {
        sample(
            &self.engine.model().emittable().restrict(&self.logits),
            &self.history,
            &self.params.sampling,
            &mut self.rng,
            &mut self.scratch,
        )
    }

    /// The stop tokens of this session's generations: the model's ([`Model::stop_tokens`]),
    /// none with `ignore_eos`.
    pub fn stop_tokens(&self) -> Vec<u32> {
        if self.params.ignore_eos {
            Vec::new()
        } else {
            self.engine.model().stop_tokens()
        }
    }

    /// True when `t` ends a generation: the model's end-of-sequence ids, plus `<|end_text|>` and
    /// `<|end_turn|>` when the vocabulary has them (`extra_stops`).
    pub fn is_stop(&self, t: u32, extra_stops: &[u32]) -> bool {
        (!self.params.ignore_eos && self.engine.model().vocab.eos.contains(&t))
            || extra_stops.contains(&t)
    }

    /// Feeds a prompt (appended to the context), leaving the next-token logits. Without an exit
    /// criterion or budget this is [`Session::prefill`]; with one, all but the last token are
    /// prefilled and the last goes through [`Session::step`], so the first answer token is
    /// chosen with the same adaptive compute and deadline as the others (as `raven eval`
    /// measures).
    pub fn feed_prompt(&mut self, prompt: &[u32]) -> Result<()> {
        let adaptive =
            self.params.exit.criterion != Criterion::None || self.params.budget_ms.is_some();
        match prompt.split_last() {
            Some((&last, rest)) if adaptive => {
                self.check_prompt(prompt)?;
                if !rest.is_empty() {
                    self.prefill(rest)?;
                }
                self.step(last)?;
                Ok(())
            }
            _ => self.prefill(prompt),
        }
    }

    /// One step of generation from the current logits: sample a token; if it is a stop token
    /// ([`Session::is_stop`] with `extra_stops`) or the context is full, say so without feeding
    /// it; otherwise feed it ([`Session::step`], which leaves the next logits) and return it
    /// with its statistics. Every generation loop (here, the C ABI, text generation for the
    /// server and Python) is this step repeated.
    pub fn next_token(&mut self, extra_stops: &[u32]) -> Result<Next> {
        if self.cancelled() {
            return Err(RavenError::Cancelled);
        }
        let next = self.sample();
        if self.is_stop(next, extra_stops) {
            return Ok(Next::Stop(next));
        }
        if self.history.len() >= self.engine.ctx() {
            return Ok(Next::ContextFull);
        }
        let stats = self.step(next)?;
        Ok(Next::Token(next, stats))
    }

    /// Feeds `prompt` ([`Session::feed_prompt`]) and generates up to `max_new` tokens, calling
    /// `on_token(token, stats)` for each; it returns false to stop. Stops before a stop token
    /// (which is neither reported nor fed); a full context is [`RavenError::ContextOverflow`].
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stops: &[u32],
        mut on_token: impl FnMut(u32, &TokenStats) -> bool,
    ) -> Result<Vec<TokenStats>> {
        self.feed_prompt(prompt)?;
        let mut all = Vec::new();
        for _ in 0..max_new {
            let (next, stats) = match self.next_token(stops)? {
                Next::Token(t, st) => (t, st),
                Next::Stop(_) => break,
                Next::ContextFull => {
                    return Err(RavenError::ContextOverflow {
                        needed: self.history.len() + 1,
                        context: self.engine.ctx(),
                    })
                }
            };
            let go = on_token(next, &stats);
            all.push(stats);
            if !go {
                break;
            }
        }
        Ok(all)
    }

    /// Acceptance counters of [`Session::generate_speculative`] so far.
    pub fn speculative_stats(&self) -> SpecStats {
        self.spec
    }

    /// Self-speculative greedy decoding (the reference's `generate_speculative`): draft up to
    /// `lookahead` tokens one at a time with `draft_steps` iterations, verify them in one batched
    /// pass with the full iterations (each weight read once for all of them), keep the prefix the
    /// full model agrees with plus its own next token. The number drafted adapts
    /// ([`next_lookahead`]): where drafts disagree few are wasted, where they agree the batches
    /// grow back to `lookahead`. With greedy sampling, `init_scale` 0 and
    /// the `full` cache the output is exactly that of [`Session::generate`] (the verification
    /// pass lets each drafted token read the others' entries of the same iteration, which is
    /// what plain decoding leaves only in a `full` cache; drafts read the deep entries of
    /// committed positions, see [`crate::kv::KvCache::set_draft_view`]). Returns the stats of
    /// every emitted token (drafting and verification time is spread over the tokens of a
    /// round); [`Session::speculative_stats`] counts drafted and accepted tokens.
    pub fn generate_speculative(
        &mut self,
        prompt: &[u32],
        max_new: usize,
        stops: &[u32],
        draft_steps: usize,
        lookahead: usize,
        mut on_token: impl FnMut(u32, &TokenStats) -> bool,
    ) -> Result<Vec<TokenStats>> {
        if self.params.sampling.temperature != 0.0 {
            return Err(RavenError::param(
                Param::DraftSteps,
                "speculative decoding is greedy: the temperature must be 0",
            ));
        }
        if self.params.warm_start {
            return Err(RavenError::param(
                Param::DraftSteps,
                "speculative decoding cannot be combined with a warm start",
            ));
        }
        let full = self.params.exit.max_steps;
        if draft_steps == 0 || draft_steps > full {
            return Err(RavenError::param(
                Param::DraftSteps,
                format!("{draft_steps} must be between 1 and the maximum steps ({full})"),
            ));
        }
        if lookahead == 0 || lookahead > 64 {
            return Err(RavenError::param(
                Param::Lookahead,
                format!("{lookahead} must be between 1 and 64"),
            ));
        }
        self.prefill(prompt)?;
        let mut all = Vec::new();
        let mut next = self.sample();
        let m = self.engine.model().clone();
        let v = m.config.n_vocab;
        let mut round_ms = 0.0;
        let mut want = lookahead;
        while all.len() < max_new {
            // `next` is the full model's choice: emit it, then feed it with the drafts.
            if self.is_stop(next, stops) {
                break;
            }
            let st = TokenStats {
                token: next,
                steps: full,
                ms: round_ms,
                ..Default::default()
            };
            let go = on_token(next, &st);
            all.push(st);
            if !go || all.len() >= max_new {
                break;
            }
            if self.cancelled() {
                return Err(RavenError::Cancelled);
            }
            let t0 = Instant::now();
            let l = self.history.len();
            let k = want.min(max_new - all.len());
            if l + k > self.engine.ctx() {
                return Err(RavenError::ContextOverflow {
                    needed: l + k,
                    context: self.engine.ctx(),
                });
            }
            let init_scale = self.params.init_scale;
            let rng = &mut self.rng;
            let (drafts, preds) = self.engine.entered(|engine| {
                // Draft k tokens one at a time with few iterations.
                let ctl = TokenControl {
                    policy: ExitPolicy::fixed(draft_steps),
                    budget_ms: None,
                    start: t0,
                    cancel: None,
                };
                let mut drafts = Vec::with_capacity(k);
                let mut tok = next;
                engine
                    .cache_mut()
                    .set_draft_view(Some((l, full - draft_steps)));
                for _ in 0..k {
                    if let Err(e) = engine.step(tok, Init::Random(init_scale, rng), &ctl) {
                        engine.cache_mut().set_draft_view(None);
                        engine.truncate(l);
                        return Err(e);
                    }
                    tok = m.emittable().argmax(engine.logits());
                    drafts.push(tok);
                }
                engine.cache_mut().set_draft_view(None);
                engine.truncate(l);
                // Verify [next, d1 .. d(k-1)] in one pass with the full iterations.
                let mut batch = Vec::with_capacity(k);
                batch.push(next);
                batch.extend_from_slice(&drafts[..k - 1]);
                let ctl = TokenControl {
                    policy: ExitPolicy::fixed(full),
                    ..ctl
                };
                engine.pass(&batch, k, Init::Random(init_scale, rng), None, &ctl)?;
                let preds: Vec<u32> = engine
                    .logits()
                    .chunks_exact(v)
                    .map(|r| m.emittable().argmax(r))
                    .collect();
                Ok((drafts, preds))
            })?;
            // Row j of the verification predicts the token after batch[j]; drafts[j] is the
            // draft's guess for it. Keep next and the drafts the full model agrees with.
            let matched = preds
                .iter()
                .zip(&drafts)
                .take_while(|(p, d)| p == d)
                .count();
            let committed = (matched + 1).min(k);
            want = next_lookahead(want, k, matched, lookahead);
            self.spec.rounds += 1;
            self.spec.drafted += k;
            self.spec.accepted += matched;
            self.engine.truncate(l + committed);
            self.history.push(next);
            self.history.extend_from_slice(&drafts[..committed - 1]);
            self.logits.clear();
            self.logits
                .extend_from_slice(&self.engine.logits()[(committed - 1) * v..committed * v]);
            next = if matched == k {
                drafts[k - 1]
            } else {
                preds[matched]
            };
            round_ms = t0.elapsed().as_secs_f64() * 1e3 / committed as f64;
            for &t in &drafts[..committed - 1] {
                if self.is_stop(t, stops) {
                    return Ok(all);
                }
                let st = TokenStats {
                    token: t,
                    steps: full,
                    ms: round_ms,
                    ..Default::default()
                };
                let go = on_token(t, &st);
                all.push(st);
                if !go || all.len() >= max_new {
                    return Ok(all);
                }
            }
        }
        Ok(all)
    }
}

/// Tokens to draft in the next speculative round, after `matched` of `drafted` were accepted
/// with `want` asked for: twice `want` after a fully accepted round, one more than the accepted
/// ones after a rejection, always 1 to `max`. (Drafts that disagree cost a draft each and make
/// the verification batch longer for nothing; a fixed `max` wasted most of that on a model whose
/// drafts agree rarely.)
pub fn next_lookahead(want: usize, drafted: usize, matched: usize, max: usize) -> usize {
    let next = if matched >= drafted {
        2 * want
    } else {
        matched + 1
    };
    next.clamp(1, max.max(1))
}

#[cfg(test)]
mod tests {
    use super::next_lookahead;

    #[test]
    fn lookahead_shrinks_on_rejection_and_grows_back() {
        assert_eq!(next_lookahead(16, 16, 16, 16), 16); // all accepted, at the cap
        assert_eq!(next_lookahead(16, 16, 3, 16), 4); // rejected after 3
        assert_eq!(next_lookahead(4, 4, 0, 16), 1); // the first draft wrong
        assert_eq!(next_lookahead(1, 1, 1, 16), 2);
        assert_eq!(next_lookahead(2, 2, 2, 16), 4);
        assert_eq!(next_lookahead(8, 8, 8, 12), 12);
        // A round cut short by the token limit counts as fully accepted.
        assert_eq!(next_lookahead(8, 3, 3, 16), 16);
        assert_eq!(next_lookahead(5, 5, 5, 0), 1);
    }
}
