//! The generation loops behind `raven_session_generate`: plain and parallel, token events
//! mapped to the caller's callback.

use super::*;

/// Where generated tokens go: the caller's callback, with each token's text piece.
struct Sink<'t> {
    callback: raven_token_callback,
    user_data: *mut c_void,
    decoder: Option<raven_text::StreamDecoder<'t>>,
    piece: Vec<u8>,
}

impl<'t> Sink<'t> {
    fn new(
        callback: raven_token_callback,
        user_data: *mut c_void,
        model: &'t Model,
        render_special: bool,
    ) -> R<Sink<'t>> {
        let decoder = match (callback, model.tokenizer()) {
            (None, _) => None,
            (Some(_), Ok(t)) if render_special => {
                Some(raven_text::StreamDecoder::with_special_tokens(t))
            }
            (Some(_), Ok(t)) => Some(raven_text::StreamDecoder::new(t)),
            (Some(_), Err(e)) => return Err(e.into()),
        };
        Ok(Sink {
            callback,
            user_data,
            decoder,
            piece: Vec::with_capacity(64),
        })
    }

    /// Calls the callback (true without one).
    ///
    /// # Safety
    /// The callback is callable with the user data (`raven_session_generate`'s contract).
    unsafe fn call(&mut self, token: i32, text: &str, stats: Option<&raven_token_stats>) -> bool {
        let Some(cb) = self.callback else { return true };
        self.piece.clear();
        self.piece.extend_from_slice(text.as_bytes());
        self.piece.push(0);
        let sp = stats.map_or(std::ptr::null(), |x| x as *const raven_token_stats);
        // SAFETY: callable with `user_data` by the contract; `piece` is NUL-terminated and
        // outlives the call, as does `sp`'s target.
        unsafe {
            cb(
                token,
                self.piece.as_ptr().cast(),
                text.len(),
                sp,
                self.user_data,
            )
        }
    }

    /// Reports a generated token with its text piece; false when the callback asks to stop.
    ///
    /// # Safety
    /// As for [`Sink::call`].
    unsafe fn token(&mut self, t: u32, stats: &raven_token_stats) -> R<bool> {
        let text = match self.decoder.as_mut() {
            Some(d) => d.push(t)?.unwrap_or_default(),
            None => String::new(),
        };
        // SAFETY: forwarded contract.
        Ok(unsafe { self.call(t as i32, &text, Some(stats)) })
    }

    /// Reports an incomplete character left over at the end (token -1).
    ///
    /// # Safety
    /// As for [`Sink::call`].
    unsafe fn flush(&mut self) {
        if let Some(rest) = self.decoder.as_mut().and_then(|d| d.flush()) {
            // SAFETY: forwarded contract.
            unsafe { self.call(-1, &rest, None) };
        }
    }
}

/// The body of [`raven_session_generate`].
///
/// # Safety
/// As for `raven_session_generate`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn generate(
    s: &mut Inner,
    cancel: &AtomicBool,
    prompt: *const i32,
    n_prompt: i32,
    max_new: i32,
    callback: raven_token_callback,
    user_data: *mut c_void,
    st: &mut raven_generate_stats,
) -> R<()> {
    // SAFETY: `n_prompt` readable ids by the contract.
    let prompt = tokens_in(unsafe { slice(prompt, n_prompt, "prompt") }?, "prompt")?;
    let max_new = nonneg(max_new, "max_new")?;
    st.stop_reason = RAVEN_STOP_LENGTH;
    let render_special = s.render_special;
    match &mut s.engine {
        Engine::Plain(session) => {
            let model = session.model().clone();
            let mut sink = Sink::new(callback, user_data, &model, render_special)?;
            // SAFETY: forwarded contract.
            unsafe { generate_plain(session, cancel, &prompt, max_new, &mut sink, st) }
        }
        Engine::Parallel(p) => {
            let model = p.model.clone();
            let mut sink = Sink::new(callback, user_data, &model, render_special)?;
            // SAFETY: forwarded contract.
            unsafe { generate_parallel(p, cancel, &prompt, max_new, &mut sink, st) }
        }
    }
}

/// [`generate`] with the plain sampler: feed the prompt, then sample and feed token by token.
///
/// # Safety
/// As for `raven_session_generate`.
unsafe fn generate_plain(
    session: &mut Session,
    cancel: &AtomicBool,
    prompt: &[u32],
    max_new: usize,
    sink: &mut Sink<'_>,
    st: &mut raven_generate_stats,
) -> R<()> {
    let t0 = Instant::now();
    if prompt.is_empty() {
        if session.logits().is_empty() {
            return Err(invalid(
                "n_prompt is 0 and the session has no logits to continue from",
            ));
        }
    } else {
        session.feed_prompt(prompt)?;
        st.n_prompt = prompt.len() as i32;
    }
    let t1 = Instant::now();
    st.prefill_ms = (t1 - t0).as_secs_f64() * 1e3;
    let stops = session.model().stop_tokens();
    let result = (|| -> R<()> {
        for _ in 0..max_new {
            if cancel.load(Ordering::Relaxed) {
                return Err(RavenError::Cancelled.into());
            }
            let (next, ts) = match session.next_token(&stops)? {
                Next::Token(t, ts) => (t, stats_to_c(&ts)),
                Next::Stop(_) => {
                    st.stop_reason = RAVEN_STOP_TOKEN;
                    return Ok(());
                }
                Next::ContextFull => {
                    st.stop_reason = RAVEN_STOP_CONTEXT;
                    return Ok(());
                }
            };
            st.n_generated += 1;
            st.total_steps += ts.steps as i64;
            st.n_exited_early += ts.exited_early as i32;
            st.n_budget_capped += ts.budget_capped as i32;
            st.generate_ms = t1.elapsed().as_secs_f64() * 1e3;
            // SAFETY: forwarded contract.
            if !unsafe { sink.token(next, &ts) }? {
                st.stop_reason = RAVEN_STOP_CALLBACK;
                return Ok(());
            }
        }
        Ok(())
    })();
    st.generate_ms = t1.elapsed().as_secs_f64() * 1e3;
    // SAFETY: forwarded contract.
    unsafe { sink.flush() };
    result
}

/// [`generate`] with the parallel sampler: the session's tokens and the prompt from scratch,
/// the tokens reported as their positions freeze.
///
/// # Safety
/// As for `raven_session_generate`.
unsafe fn generate_parallel(
    p: &mut ParallelSession,
    cancel: &AtomicBool,
    prompt: &[u32],
    max_new: usize,
    sink: &mut Sink<'_>,
    st: &mut raven_generate_stats,
) -> R<()> {
    if prompt.is_empty() && p.history.is_empty() {
        return Err(invalid(
            "n_prompt is 0 and the session has no tokens to continue from",
        ));
    }
    let mut context = p.history.clone();
    context.extend_from_slice(prompt);
    st.n_prompt = prompt.len() as i32;
    let stops = p.model.stop_tokens();
    let t0 = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = t0;
    let mut reported: Vec<u32> = Vec::new();
    let mut by_callback = false;
    let mut failed = None;
    let obs = Observe {
        cancel: Some(cancel),
        ..Default::default()
    };
    let res = parallel::generate(
        &p.model,
        &p.params,
        &p.knobs,
        &context,
        max_new,
        &stops,
        &p.threads,
        &obs,
        |t| {
            let now = Instant::now();
            let start = *first.get_or_insert(now);
            let ts = raven_token_stats {
                token: t as i32,
                steps: 0,
                exited_early: false,
                budget_capped: false,
                ms: (now - last).as_secs_f64() * 1e3,
            };
            last = now;
            reported.push(t);
            st.n_generated += 1;
            st.prefill_ms = (start - t0).as_secs_f64() * 1e3;
            st.generate_ms = (now - start).as_secs_f64() * 1e3;
            // SAFETY: forwarded contract.
            match unsafe { sink.token(t, &ts) } {
                Ok(true) => true,
                Ok(false) => {
                    by_callback = true;
                    false
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        },
    );
    match first {
        Some(start) => st.generate_ms = start.elapsed().as_secs_f64() * 1e3,
        None => st.prefill_ms = t0.elapsed().as_secs_f64() * 1e3,
    }
    // SAFETY: forwarded contract.
    unsafe { sink.flush() };
    // The context grows by the prompt and what was reported (as the plain sampler's does by
    // what it fed), unless nothing was: then it stays as it was.
    if !reported.is_empty() {
        p.history = context;
        p.history.extend_from_slice(&reported);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let out = res?;
    let latent = matches!(p.params.exit.criterion, Criterion::LatentDiff(_));
    let max_steps = p.params.exit.max_steps;
    st.total_steps = out.recurrence.iter().map(|&r| r as i64).sum();
    st.n_exited_early = out
        .recurrence
        .iter()
        .filter(|&&r| latent && (r as usize) < max_steps)
        .count() as i32;
    st.stop_reason = if by_callback {
        RAVEN_STOP_CALLBACK
    } else if out.stopped {
        RAVEN_STOP_TOKEN
    } else if out.tokens.len() >= max_new {
        RAVEN_STOP_LENGTH
    } else if out.counters.seq_len > p.params.context_for(&p.model) {
        RAVEN_STOP_CONTEXT
    } else {
        RAVEN_STOP_SAMPLER_STEPS
    };
    Ok(())
}
