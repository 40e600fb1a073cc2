//! Sessions: creating, stepping, sampling, logits and `raven_session_generate`.

use super::*;

/// A session behind its handle's lock.
pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) render_special: bool,
}

/// What a session generates with (its `sampler`).
pub(crate) enum Engine {
    /// Token by token, on a [`Session`] and its KV cache.
    Plain(Box<Session>),
    /// The parallel sampler, which prefills its context and keeps its own cache each call.
    Parallel(Box<ParallelSession>),
}

/// A session of the parallel sampler: its settings, thread pool and tokens so far.
pub(crate) struct ParallelSession {
    pub(crate) model: Arc<Model>,
    pub(crate) params: SessionParams,
    pub(crate) knobs: ParallelParams,
    pub(crate) threads: Threads,
    /// The prompts and generations so far (the next call's context).
    pub(crate) history: Vec<u32>,
}

impl Inner {
    /// The plain sampler's session, for the calls that step it; an error for the parallel one.
    pub(crate) fn plain(&mut self, call: &str) -> R<&mut Session> {
        match &mut self.engine {
            Engine::Plain(s) => Ok(s),
            Engine::Parallel(_) => Err(invalid(format!(
                "{call} needs the plain sampler: this session's sampler is \
                 RAVEN_SAMPLER_PARALLEL, which prefills and generates inside \
                 raven_session_generate"
            ))),
        }
    }
}

/// Creates a session on `model` (`params` may be NULL: defaults). The KV cache for the whole
/// context is allocated here. On success `*out_session` is a new session to free with
/// `raven_session_free`; on failure it is set to NULL.
///
/// # Safety
/// `model` is NULL or a live model; `params` is NULL or valid; `out_session` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn raven_session_new(
    model: *const raven_model,
    params: *const raven_session_params,
    out_session: *mut *mut raven_session,
) -> raven_status {
    status("raven_session_new", || {
        if out_session.is_null() {
            return Err(invalid("out_session is NULL"));
        }
        // SAFETY: non-NULL and writable by the contract.
        unsafe { out_session.write(std::ptr::null_mut()) };
        // SAFETY: NULL or live by the contract.
        let m = unsafe { handle(model, "model") }?;
        // SAFETY: NULL or valid by the contract.
        let p = unsafe { params.as_ref() }
            .copied()
            .unwrap_or_else(default_session);
        let sp = params_from_c(&p, &m.model)?;
        let knobs = parallel_from_c(&p)?;
        if let Some(pp) = &knobs {
            pp.validate(&m.model, &sp)?;
        }
        // Refuse a cache the allocator cannot give, instead of aborting inside the session (the
        // parallel sampler allocates its cache, for r′ iterations at least, at each call).
        let bytes = match &knobs {
            None => sp.kv_bytes(&m.model),
            Some(pp) => sp.cache.bytes(
                &m.model.config,
                sp.cache_type,
                sp.context_for(&m.model),
                sp.exit.max_steps.max(pp.inner_steps),
            ),
        };
        if sp.kv_cap_bytes.is_none_or(|cap| bytes <= cap) {
            let ok = usize::try_from(bytes)
                .ok()
                .is_some_and(|b| Vec::<u8>::new().try_reserve_exact(b).is_ok());
            if !ok {
                return Err(Error {
                    status: RAVEN_ERR_OUT_OF_MEMORY,
                    msg: format!(
                        "cannot allocate the KV cache of {bytes} bytes (use RAVEN_CACHE_COMPRESS, a smaller n_ctx or max_steps)"
                    ),
                });
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let (engine, ctx) = match knobs {
            None => {
                let mut session = Session::new(m.model.clone(), sp.clone())?;
                session.set_cancel_flag(cancel.clone());
                let ctx = session.ctx();
                (Engine::Plain(Box::new(session)), ctx)
            }
            Some(pp) => {
                let ctx = sp.context_for(&m.model);
                let threads = Threads::new(sp.threads)?;
                let s = ParallelSession {
                    model: m.model.clone(),
                    params: sp.clone(),
                    knobs: pp,
                    threads,
                    history: Vec::new(),
                };
                (Engine::Parallel(Box::new(s)), ctx)
            }
        };
        let sampler = match &engine {
            Engine::Plain(_) => "plain sampler".to_string(),
            Engine::Parallel(p) => format!(
                "parallel sampler ({}, r′ {}, wavefront ≤ {})",
                p.knobs.mode, p.knobs.inner_steps, p.knobs.wavefront
            ),
        };
        log(
            RAVEN_LOG_INFO,
            &format!(
                "session: context {ctx}, cache {} ({} MB), steps ≤ {}, exit {:?}, {sampler}, {} threads",
                sp.cache,
                bytes / 1_000_000,
                sp.exit.max_steps,
                sp.exit.criterion,
                if sp.threads == 0 {
                    raven_core::run::default_threads()
                } else {
                    sp.threads
                }
            ),
        );
        let h = Box::new(raven_session {
            cancel,
            inner: Mutex::new(Inner {
                engine,
                render_special: p.render_special,
            }),
        });
        // SAFETY: checked non-NULL above.
        unsafe { out_session.write(Box::into_raw(h)) };
        Ok(())
    })
}

/// Frees a session. NULL is a no-op.
///
/// # Safety
/// `session` is NULL or a session from `raven_session_new` not yet freed; no other thread
/// uses it during or after the call (not even `raven_session_cancel`).
#[no_mangle]
pub unsafe extern "C" fn raven_session_free(session: *mut raven_session) {
    guard(
        "raven_session_free",
        |_| (),
        || {
            if !session.is_null() {
                // SAFETY: made by `Box::into_raw` in `raven_session_new`, freed once.
                drop(unsafe { Box::from_raw(session) });
            }
            Ok(())
        },
    )
}

/// Asks the call running on `session` (in another thread, or from its own token callback) to
/// stop: it returns `RAVEN_ERR_CANCELLED` at the next core iteration. Safe to call from any
/// thread at any time; NULL is a no-op. Each call on the session clears the request when it
/// starts, so a cancel sent while the session is idle has no effect.
///
/// # Safety
/// `session` is NULL or a live session (not being freed).
#[no_mangle]
pub unsafe extern "C" fn raven_session_cancel(session: *const raven_session) {
    guard(
        "raven_session_cancel",
        |_| (),
        || {
            // SAFETY: NULL or live by the contract; only the atomic flag is touched.
            if let Some(s) = unsafe { session.as_ref() } {
                s.cancel.store(true, Ordering::SeqCst);
            }
            Ok(())
        },
    )
}

/// Runs `f` on the locked session after clearing its cancel flag.
///
/// # Safety
/// `session` is NULL or a live session.
unsafe fn with_session(
    name: &str,
    session: *const raven_session,
    f: impl FnOnce(&mut Inner, &AtomicBool) -> R<()>,
) -> raven_status {
    status(name, || {
        // SAFETY: NULL or live by the caller's contract.
        let s = unsafe { handle(session, "session") }?;
        let mut inner = lock(s)?;
        s.cancel.store(false, Ordering::SeqCst);
        f(&mut inner, &s.cancel)
    })
}

/// Forgets the context (the cache stays allocated) and reseeds the sampler.
///
/// # Safety
/// `session` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn raven_session_reset(session: *mut raven_session) -> raven_status {
    // SAFETY: forwarded contract.
    unsafe {
        with_session("raven_session_reset", session, |s, _| {
            match &mut s.engine {
                Engine::Plain(session) => session.reset(),
                Engine::Parallel(p) => p.history.clear(),
            }
            Ok(())
        })
    }
}

/// Replaces the sampling parameters of a session.
///
/// # Safety
/// `session` is NULL or a live session; `params` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn raven_session_set_sampling(
    session: *mut raven_session,
    params: *const raven_sampling_params,
) -> raven_status {
    // SAFETY: forwarded contract.
    unsafe {
        with_session("raven_session_set_sampling", session, |s, _| {
            // SAFETY: NULL or valid by the contract.
            let p = handle(params, "params")?;
            let sampling = sampling_from_c(p)?;
            match &mut s.engine {
                Engine::Plain(session) => session.set_sampling(sampling)?,
                Engine::Parallel(p) => p.params.sampling = sampling,
            }
            Ok(())
        })
    }
}

/// Tokens in the session's context, or -1 when `session` is NULL or busy.
///
/// # Safety
/// `session` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn raven_session_n_tokens(session: *const raven_session) -> i32 {
    guard(
        "raven_session_n_tokens",
        |_| -1,
        || {
            // SAFETY: NULL or live by the contract.
            let s = unsafe { handle(session, "session") }?;
            Ok(match &lock(s)?.engine {
                Engine::Plain(session) => session.len(),
                Engine::Parallel(p) => p.history.len(),
            } as i32)
        },
    )
}

/// The session's context length in tokens, or -1 when `session` is NULL or busy.
///
/// # Safety
/// `session` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn raven_session_n_ctx(session: *const raven_session) -> i32 {
    guard(
        "raven_session_n_ctx",
        |_| -1,
        || {
            // SAFETY: NULL or live by the contract.
            let s = unsafe { handle(session, "session") }?;
            Ok(match &lock(s)?.engine {
                Engine::Plain(session) => session.ctx(),
                Engine::Parallel(p) => p.params.context_for(&p.model),
            } as i32)
        },
    )
}

/// Appends `n_tokens` tokens to the context in one pass (`prefill_steps` iterations), leaving
/// the next-token logits of the last one.
///
/// # Safety
/// `session` is NULL or a live session; `tokens` is NULL or has `n_tokens` ids.
#[no_mangle]
pub unsafe extern "C" fn raven_session_prefill(
    session: *mut raven_session,
    tokens: *const i32,
    n_tokens: i32,
) -> raven_status {
    // SAFETY: forwarded contract.
    unsafe {
        with_session("raven_session_prefill", session, |s, _| {
            // SAFETY: `n_tokens` readable ids by the contract.
            let ids = tokens_in(slice(tokens, n_tokens, "tokens")?, "tokens")?;
            if ids.is_empty() {
                return Err(invalid("n_tokens is 0: nothing to prefill"));
            }
            s.plain("raven_session_prefill")?.prefill(&ids)?;
            Ok(())
        })
    }
}

pub(crate) fn stats_to_c(t: &TokenStats) -> raven_token_stats {
    raven_token_stats {
        token: t.token as i32,
        steps: t.steps as i32,
        exited_early: t.exited_early,
        budget_capped: t.budget_capped,
        ms: t.ms,
    }
}

/// Feeds one token (the exit policy and latency budget decide its iterations), leaving its
/// next-token logits. `out_stats` may be NULL.
///
/// # Safety
/// `session` is NULL or a live session; `out_stats` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn raven_session_step(
    session: *mut raven_session,
    token: i32,
    out_stats: *mut raven_token_stats,
) -> raven_status {
    // SAFETY: forwarded contract.
    unsafe {
        with_session("raven_session_step", session, |s, _| {
            let t = u32::try_from(token)
                .map_err(|_| invalid(format!("token id {token} is negative")))?;
            let st = s.plain("raven_session_step")?.step(t)?;
            if !out_stats.is_null() {
                // SAFETY: non-NULL and writable by the contract.
                out_stats.write(stats_to_c(&st));
            }
            Ok(())
        })
    }
}

/// Draws the next token from the current logits with the session's sampling parameters
/// (it is not fed: pass it to `raven_session_step`).
///
/// # Safety
/// `session` is NULL or a live session; `out_token` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn raven_session_sample(
    session: *mut raven_session,
    out_token: *mut i32,
) -> raven_status {
    // SAFETY: forwarded contract.
    unsafe {
        with_session("raven_session_sample", session, |s, _| {
            if out_token.is_null() {
                return Err(invalid("out_token is NULL"));
            }
            let session = s.plain("raven_session_sample")?;
            if session.logits().is_empty() {
                return Err(invalid(
                    "no logits yet: call raven_session_prefill or _step first",
                ));
            }
            let t = session.sample();
            write_out(out_token, t as i32, "out_token")
        })
    }
}

/// The next-token logits after the last prefill or step: `*out_logits` points to
/// `*out_n_vocab` floats owned by the session, valid until the next call on it.
///
/// # Safety
/// `session` is NULL or a live session; the out pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn raven_session_logits(
    session: *mut raven_session,
    out_logits: *mut *const f32,
    out_n_vocab: *mut i32,
) -> raven_status {
    // SAFETY: forwarded contract.
    unsafe {
        with_session("raven_session_logits", session, |s, _| {
            if out_logits.is_null() || out_n_vocab.is_null() {
                return Err(invalid("out_logits or out_n_vocab is NULL"));
            }
            let l = s.plain("raven_session_logits")?.logits();
            if l.is_empty() {
                return Err(invalid(
                    "no logits yet: call raven_session_prefill or _step first",
                ));
            }
            write_out(out_logits, l.as_ptr(), "out_logits")?;
            write_out(out_n_vocab, l.len() as i32, "out_n_vocab")
        })
    }
}

/// Prefills `prompt` (appended to the context; `n_prompt` may be 0 to continue from the
/// current logits) and generates up to `max_new` tokens: sample, feed, then call `callback`
/// (may be NULL) with the token, its complete-UTF-8 text piece and its statistics. Stops at a
/// stop token (not reported), when the callback returns false, or when the context is full;
/// `out_stats` (may be NULL) says which and what it cost, also when the call fails.
///
/// With `RAVEN_SAMPLER_PARALLEL` the parallel sampler runs on the session's tokens plus
/// `prompt` (`n_prompt` may be 0 to continue after them), and `callback` gets each token when
/// its position freezes (several per sampler step); their `steps` is 0 (a position may go on
/// iterating: `out_stats->total_steps` has the final counts). It also stops after
/// `max_sampler_steps` steps (`RAVEN_STOP_SAMPLER_STEPS`); `raven_session_cancel` ends it at the
/// next core iteration. The prompt and the tokens reported are appended to the session's
/// tokens. In `RAVEN_PARALLEL_OFFICIAL` mode the output is the official code's: it may exceed
/// `max_new` (every token frozen in the last step is reported), and stop tokens are only looked
/// at after `max_steps` sampler steps and are reported with what was frozen beside them.
///
/// # Safety
/// `session` is NULL or a live session; `prompt` is NULL or has `n_prompt` ids; `callback`
/// must be callable with `user_data` during the call; `out_stats` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn raven_session_generate(
    session: *mut raven_session,
    prompt: *const i32,
    n_prompt: i32,
    max_new: i32,
    callback: raven_token_callback,
    user_data: *mut c_void,
    out_stats: *mut raven_generate_stats,
) -> raven_status {
    // SAFETY: forwarded contract.
    unsafe {
        with_session("raven_session_generate", session, |s, cancel| {
            let mut st = raven_generate_stats::default();
            let r = generate(
                s, cancel, prompt, n_prompt, max_new, callback, user_data, &mut st,
            );
            if !out_stats.is_null() {
                // SAFETY: non-NULL and writable by the contract.
                out_stats.write(st);
            }
            if r.is_ok() {
                log(
                    RAVEN_LOG_DEBUG,
                    &format!(
                        "generated {} tokens in {:.1} ms ({:.2} iterations per token)",
                        st.n_generated,
                        st.generate_ms,
                        st.total_steps as f64 / st.n_generated.max(1) as f64
                    ),
                );
            }
            r
        })
    }
}
