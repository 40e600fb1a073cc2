//! The C ABI (`include/raven.h`, generated from this file by cbindgen).
//!
//! - [`raven_model`]: an immutable loaded model (`Arc<Model>`), shared by any number of sessions
//!   and threads. [`raven_model_load`] / [`raven_model_free`].
//! - [`raven_session`]: one generation context (KV cache, sampler, thread pool) used by one
//!   thread at a time, except [`raven_session_cancel`], which any thread may call.
//!   [`raven_session_new`] / [`raven_session_free`].
//! - Every call returns a [`raven_status`] (or a size, for the buffer-filling calls) and leaves a
//!   message for [`raven_last_error`] when it fails. Every export runs inside one
//!   `catch_unwind` wrapper (`guard`), so no panic crosses into the caller.
//! - "Enum" parameters are plain `int32_t` typedefs with `#define`d values, not C enums: a value
//!   outside the list is then an error the library reports, not undefined behaviour in Rust.
//!
//! Regenerate the header after changing this file:
//! `RAVEN_UPDATE_HEADER=1 cargo test --test capi header` (the test fails while it is stale).
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use raven_core::error::RavenError;
use raven_core::exit::{Criterion, ExitPolicy};
use raven_core::kv::CacheStrategy;
use raven_core::model::Model;
use raven_core::parallel::{self, Mode, Observe, ParallelParams};
use raven_core::run::Threads;
use raven_core::sample::SamplingParams;
use raven_core::session::{Next, Session, SessionParams, TokenStats};
use raven_quant::KvType;

// ---------------------------------------------------------------------------------------------
// Status codes

/// A status code: `RAVEN_OK` (0) or one of the `RAVEN_ERR_*` values (positive).
/// `raven_status_string` names it; `raven_last_error` says what went wrong.
pub type raven_status = i32;
/// Success.
pub const RAVEN_OK: raven_status = 0;
/// A NULL handle or pointer, or a parameter out of range (the message names it).
pub const RAVEN_ERR_INVALID_ARGUMENT: raven_status = 1;
/// A file could not be opened or read.
pub const RAVEN_ERR_IO: raven_status = 2;
/// A file is not a usable Raven GGUF model (or its tokenizer does not load).
pub const RAVEN_ERR_FORMAT: raven_status = 3;
/// The tokens do not fit the session's context.
pub const RAVEN_ERR_CONTEXT_OVERFLOW: raven_status = 4;
/// The call was cancelled (`raven_session_cancel`, or a progress callback returned false).
pub const RAVEN_ERR_CANCELLED: raven_status = 5;
/// Memory could not be allocated, or the KV cache would exceed `kv_cap_bytes`.
pub const RAVEN_ERR_OUT_OF_MEMORY: raven_status = 6;
/// A session was used from two threads at once (or re-entered from its own callback).
pub const RAVEN_ERR_BUSY: raven_status = 7;
/// A bug in Raven (a caught panic); the session involved should be freed.
pub const RAVEN_ERR_INTERNAL: raven_status = 8;

/// What a size-returning call (`raven_tokenize`, `raven_detokenize`, `raven_model_name`)
/// returns when it fails for a reason other than a small buffer; see `raven_last_error`.
pub const RAVEN_SIZE_ERROR: i32 = i32::MIN;

// ---------------------------------------------------------------------------------------------
// Option values

/// KV cache strategy (SPEC §2).
pub type raven_cache_type = i32;
/// One slot per (layer, iteration): exact, the most memory.
pub const RAVEN_CACHE_FULL: raven_cache_type = 0;
/// KV sharing with a budget of `cache_k` core slots (0 = the model's core layer count).
pub const RAVEN_CACHE_COMPRESS: raven_cache_type = 1;
/// Full storage; a token lacking a slot reads the deepest one it computed (`cache_k` must be
/// 0 or the model's core layer count).
pub const RAVEN_CACHE_LATEST: raven_cache_type = 2;

/// Element type of the KV cache's keys and values.
pub type raven_kv_type = i32;
/// 4 bytes per value: what `raven logits` and the exactness tests use.
pub const RAVEN_KV_F32: raven_kv_type = 0;
/// IEEE half precision, 2 bytes per value (the default, as llama.cpp's).
pub const RAVEN_KV_F16: raven_kv_type = 1;
/// ggml's Q8_0, 34 bytes per 32 values (needs rows of a multiple of 32 values).
pub const RAVEN_KV_Q8_0: raven_kv_type = 2;

/// The `RAVEN_KV_*` value of each element type (both directions map through it).
const KV_TYPES: [(raven_kv_type, KvType); 3] = [
    (RAVEN_KV_F32, KvType::F32),
    (RAVEN_KV_F16, KvType::F16),
    (RAVEN_KV_Q8_0, KvType::Q8_0),
];

/// Per-token exit criterion (SPEC §2). A threshold of 0 takes the criterion's default.
pub type raven_exit_criterion = i32;
/// Never exit early: every token runs `max_steps` iterations.
pub const RAVEN_EXIT_NONE: raven_exit_criterion = 0;
/// KL divergence of successive next-token distributions below the threshold (default 1e-3).
pub const RAVEN_EXIT_KL: raven_exit_criterion = 1;
/// KL on min-p filtered distributions (default 1e-5).
pub const RAVEN_EXIT_MINP_KL: raven_exit_criterion = 2;
/// Change of the entropy below the threshold (default 1e-3).
pub const RAVEN_EXIT_ENTROPY_DIFF: raven_exit_criterion = 3;
/// Relative change of the latent state below the threshold (default 0.03; the cheapest).
pub const RAVEN_EXIT_LATENT_DIFF: raven_exit_criterion = 4;
/// 1 − cosine of successive latent states below the threshold (default 1e-3).
pub const RAVEN_EXIT_COSINE: raven_exit_criterion = 5;
/// Argmax unchanged for `threshold` consecutive checks (a whole number, default 5).
pub const RAVEN_EXIT_ARGMAX_STABILITY: raven_exit_criterion = 6;
/// The model's learned exit gate (Ouro): exit at the first step whose cumulative exit
/// probability reaches the threshold q in (0, 1] (0: the model's `early_exit_threshold`); the
/// later steps are not computed. Refused for models without a gate.
pub const RAVEN_EXIT_GATE: raven_exit_criterion = 7;
/// As `RAVEN_EXIT_GATE`, but every step is computed and cached and the gate only chooses which
/// step's output is read (the official Ouro behaviour, exact; no compute saved).
pub const RAVEN_EXIT_GATE_FULL: raven_exit_criterion = 8;

/// Why `raven_session_generate` stopped.
pub type raven_stop_reason = i32;
/// `max_new` tokens were generated.
pub const RAVEN_STOP_LENGTH: raven_stop_reason = 0;
/// The model produced a stop token (end of text or end of turn; it is not reported or fed).
pub const RAVEN_STOP_TOKEN: raven_stop_reason = 1;
/// The token callback returned false.
pub const RAVEN_STOP_CALLBACK: raven_stop_reason = 2;
/// The context is full.
pub const RAVEN_STOP_CONTEXT: raven_stop_reason = 3;
/// The parallel sampler ran `max_sampler_steps` steps.
pub const RAVEN_STOP_SAMPLER_STEPS: raven_stop_reason = 4;

/// The sampler of `raven_session_generate` (`sampler` of `raven_session_params`).
pub type raven_sampler = i32;
/// Token by token: each token runs its iterations (with the exit criterion and the budget),
/// then the next is sampled. The default.
pub const RAVEN_SAMPLER_PLAIN: raven_sampler = 0;
/// The parallel (diffusion-forcing) sampler of arXiv 2510.14961: a wavefront of positions
/// advances together, `inner_steps` iterations per sampler step in one batched pass, and
/// positions whose state has converged are frozen (`raven run --sampler parallel`).
pub const RAVEN_SAMPLER_PARALLEL: raven_sampler = 1;

/// Which version of the parallel sampler runs (`parallel_mode`).
pub type raven_parallel_mode = i32;
/// The official code's behaviour, quirks included (the default; what the tiny-huginn-diffusion
/// fixture records).
pub const RAVEN_PARALLEL_OFFICIAL: raven_parallel_mode = 0;
/// The quirks fixed: each position compared with its own previous state, the output cut at
/// `max_new` and before a stop token; a wavefront of 1 is ordinary decoding.
pub const RAVEN_PARALLEL_CORRECTED: raven_parallel_mode = 1;

/// Severity of a log message.
pub type raven_log_level = i32;
/// Detail for debugging.
pub const RAVEN_LOG_DEBUG: raven_log_level = 0;
/// What was loaded or created, and what it cost.
pub const RAVEN_LOG_INFO: raven_log_level = 1;
/// Something the caller may want to change.
pub const RAVEN_LOG_WARN: raven_log_level = 2;
/// A call failed (the same text as `raven_last_error`).
pub const RAVEN_LOG_ERROR: raven_log_level = 3;

// ---------------------------------------------------------------------------------------------
// Handles, parameter and statistics structs, callbacks

/// A loaded model: immutable, shared by any number of sessions; every `raven_model_*` call is
/// thread-safe. Sessions keep the model alive, so it may be freed before them.
pub struct raven_model {
    model: Arc<Model>,
}

/// A generation session: its own KV cache, sampler and worker threads. One thread at a time
/// (a concurrent call returns `RAVEN_ERR_BUSY`), except `raven_session_cancel`.
pub struct raven_session {
    cancel: Arc<AtomicBool>,
    inner: Mutex<Inner>,
}

struct Inner {
    engine: Engine,
    render_special: bool,
}

/// What a session generates with (its `sampler`).
enum Engine {
    /// Token by token, on a [`Session`] and its KV cache.
    Plain(Box<Session>),
    /// The parallel sampler, which prefills its context and keeps its own cache each call.
    Parallel(Box<ParallelSession>),
}

/// A session of the parallel sampler: its settings, thread pool and tokens so far.
struct ParallelSession {
    model: Arc<Model>,
    params: SessionParams,
    knobs: ParallelParams,
    threads: Threads,
    /// The prompts and generations so far (the next call's context).
    history: Vec<u32>,
}

impl Inner {
    /// The plain sampler's session, for the calls that step it; an error for the parallel one.
    fn plain(&mut self, call: &str) -> R<&mut Session> {
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

/// How a model is loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct raven_model_params {
    /// Map the file into memory (default) instead of reading it; mapped weights are paged in
    /// on demand and shared with the OS page cache.
    pub use_mmap: bool,
}

/// How the next token is drawn from the logits.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct raven_sampling_params {
    /// 0 = greedy (argmax; the other fields are then ignored except the repetition penalty).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off). Default 40.
    pub top_k: i32,
    /// Keep the smallest set reaching this probability, in (0, 1] (1 = off). Default 0.95.
    pub top_p: f32,
    /// Drop tokens below min_p × the top probability, in [0, 1) (0 = off). Default 0.05.
    pub min_p: f32,
    /// Penalty for recently seen tokens, > 0 (1 = off). Default 1.
    pub repeat_penalty: f32,
    /// Window of the repetition penalty, in tokens. Default 64.
    pub repeat_last_n: i32,
}

/// Everything a session can be asked to do differently. Start from
/// `raven_session_default_params()`; 0 means "the model's value" where noted.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct raven_session_params {
    /// Worker threads (0 = all cores).
    pub n_threads: i32,
    /// Context length in tokens: 0 = the model's trained context, capped at 4096; otherwise at
    /// most the model's trained context (`raven_model_n_ctx_train`), larger is refused.
    pub n_ctx: i32,
    /// KV cache strategy: `RAVEN_CACHE_*`. Default `RAVEN_CACHE_COMPRESS`.
    pub cache_type: raven_cache_type,
    /// The strategy's number (`compress`: core slots kept; `latest`: the core layer count);
    /// 0 = the model's core layer count.
    pub cache_k: i32,
    /// Exit criterion of generated tokens: `RAVEN_EXIT_*`. Default `RAVEN_EXIT_NONE`.
    pub exit_criterion: raven_exit_criterion,
    /// Threshold of the criterion (> 0), or 0 for the criterion's default.
    pub exit_threshold: f32,
    /// Never exit before this many iterations (≥ 1). Default 1.
    pub min_steps: i32,
    /// Never run more than this many iterations per token (0 = the model's mean recurrence).
    pub max_steps: i32,
    /// Check the criterion every this many iterations (≥ 1). Default 1.
    pub check_every: i32,
    /// Iterations for the prompt (0 = `max_steps`).
    pub prefill_steps: i32,
    /// Per-token latency budget in milliseconds (0 = none): a token stops iterating when one
    /// more iteration would miss it.
    pub budget_ms: f64,
    /// Start each token's recurrence from the previous token's final state.
    pub warm_start: bool,
    /// Scale of the random initial state (0 = zeros, deterministic). Default 1.
    pub init_scale: f32,
    /// Seed of the sampler and of the initial state.
    pub seed: u64,
    /// Sampling.
    pub sampling: raven_sampling_params,
    /// Refuse a session whose KV cache would exceed this many bytes (0 = no cap).
    pub kv_cap_bytes: u64,
    /// Include special tokens (e.g. `<|end_turn|>`) in the text pieces of
    /// `raven_session_generate`. Default false.
    pub render_special: bool,
    /// The sampler of `raven_session_generate`: `RAVEN_SAMPLER_*`. Default
    /// `RAVEN_SAMPLER_PLAIN`; the fields below are read only with `RAVEN_SAMPLER_PARALLEL`.
    ///
    /// With the parallel sampler the exit criterion is the freezing rule:
    /// `RAVEN_EXIT_LATENT_DIFF` (threshold ε, default 0.03: the paper's, and the default of
    /// `raven run --sampler parallel`; set it, the struct's default is `RAVEN_EXIT_NONE`) or
    /// `RAVEN_EXIT_NONE` (the fixed rule); `max_steps` is `num_steps` (the prompt's
    /// iterations, and the fixed rule's count); `min_steps` (corrected mode only), the cache,
    /// context, initial-state scale, seed, sampling and `warm_start` apply; `check_every` must
    /// be 1, `budget_ms` 0 and `prefill_steps` 0 (or `max_steps`). Each
    /// `raven_session_generate` runs the sampler on the session's tokens (the earlier prompts
    /// and generations) plus `prompt`, from scratch, its random draws seeded with `seed` at
    /// each call; `raven_session_prefill`, `_step`, `_sample` and `_logits` are refused.
    /// `init_scale` 0, `noise` 0 and temperature 0 make it deterministic.
    pub sampler: raven_sampler,
    /// `RAVEN_PARALLEL_OFFICIAL` (default) or `RAVEN_PARALLEL_CORRECTED`.
    pub parallel_mode: raven_parallel_mode,
    /// Core iterations per sampler step, r′, from 1 to 4096. Default 4.
    pub inner_steps: i32,
    /// Most positions in the wavefront (0 = no cap). Default 128.
    pub wavefront: i32,
    /// New positions appended per sampler step, from 1 to 1024. Default 1.
    pub headway: i32,
    /// Momentum η of the conditioning, in [0, 1) (0 = off). Default 0.1.
    pub ema: f64,
    /// State-noise mixing β, in [0, 1] (0 = off). Default 0.
    pub noise: f64,
    /// Damp the noise per position as β / (1 + its iterations so far); false: a constant β.
    /// Default true.
    pub noise_dampened: bool,
    /// Square-root noise mixing z·√(1−a) + √a·noise instead of z·(1−a) + a·noise. Default
    /// false.
    pub noise_sqrt: bool,
    /// Most sampler steps (≥ 1). Default 4096.
    pub max_sampler_steps: i32,
    /// Element type of the KV cache: `RAVEN_KV_*`. Default `RAVEN_KV_F16`.
    pub kv_type: raven_kv_type,
}

/// What one token cost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct raven_token_stats {
    /// The token fed.
    pub token: i32,
    /// Core iterations it ran.
    pub steps: i32,
    /// The exit criterion stopped it before `max_steps`.
    pub exited_early: bool,
    /// The latency budget stopped it.
    pub budget_capped: bool,
    /// Wall time in milliseconds.
    pub ms: f64,
}

/// What a `raven_session_generate` call did (filled also when it fails, e.g. when cancelled).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct raven_generate_stats {
    /// Prompt tokens prefilled.
    pub n_prompt: i32,
    /// Tokens generated (fed and reported to the callback).
    pub n_generated: i32,
    /// Why generation stopped: `RAVEN_STOP_*` (meaningful when the call returned `RAVEN_OK`).
    pub stop_reason: raven_stop_reason,
    /// Generated tokens that exited early (parallel sampler: whose position the latent-diff
    /// rule froze before `max_steps` iterations).
    pub n_exited_early: i32,
    /// Generated tokens stopped by the latency budget.
    pub n_budget_capped: i32,
    /// Core iterations over all generated tokens (parallel sampler: of their positions, when
    /// the run ended).
    pub total_steps: i64,
    /// Milliseconds of the prefill (parallel sampler: until the first token).
    pub prefill_ms: f64,
    /// Milliseconds of generation after the prefill.
    pub generate_ms: f64,
}

/// Load progress in [0, 1]; return false to abort loading (`RAVEN_ERR_CANCELLED`).
pub type raven_progress_callback =
    Option<unsafe extern "C" fn(progress: f32, user_data: *mut c_void) -> bool>;

/// Called for each generated token with its text piece: `piece` holds `piece_len` bytes of
/// complete UTF-8 (possibly 0 bytes, when a character is still incomplete or the token is a
/// special token not rendered), followed by a NUL. `stats` describes the token (with the
/// parallel sampler its `steps` is 0: the position may still be iterating). Return false
/// to stop generating. After the last token, if an incomplete character is left over, the
/// callback is called once more with `token` = -1, `stats` = NULL and its text (U+FFFD); its
/// return value is then ignored. `piece` and `stats` are valid only during the call.
pub type raven_token_callback = Option<
    unsafe extern "C" fn(
        token: i32,
        piece: *const c_char,
        piece_len: usize,
        stats: *const raven_token_stats,
        user_data: *mut c_void,
    ) -> bool,
>;

/// Receives log messages (one line each, NUL-terminated, without a trailing newline).
pub type raven_log_callback = Option<
    unsafe extern "C" fn(level: raven_log_level, text: *const c_char, user_data: *mut c_void),
>;

// ---------------------------------------------------------------------------------------------
// The one wrapper: catch_unwind, status, last error

/// An error crossing the boundary: its status and message.
struct Error {
    status: raven_status,
    msg: String,
}

type R<T> = std::result::Result<T, Error>;

fn invalid(msg: impl Into<String>) -> Error {
    Error {
        status: RAVEN_ERR_INVALID_ARGUMENT,
        msg: msg.into(),
    }
}

impl From<RavenError> for Error {
    fn from(e: RavenError) -> Error {
        let status = match &e {
            RavenError::Io { .. } => RAVEN_ERR_IO,
            RavenError::Gguf(raven_gguf::GgufError::Io { .. }) => RAVEN_ERR_IO,
            RavenError::Gguf(_)
            | RavenError::Json { .. }
            | RavenError::Checkpoint { .. }
            | RavenError::Model { .. } => RAVEN_ERR_FORMAT,
            RavenError::Text(raven_text::TextError::UnknownTokenId { .. }) => {
                RAVEN_ERR_INVALID_ARGUMENT
            }
            RavenError::Text(_) => RAVEN_ERR_FORMAT,
            RavenError::InvalidArgument { .. } | RavenError::InvalidParam { .. } => {
                RAVEN_ERR_INVALID_ARGUMENT
            }
            RavenError::ContextOverflow { .. } => RAVEN_ERR_CONTEXT_OVERFLOW,
            RavenError::CacheTooLarge { .. } => RAVEN_ERR_OUT_OF_MEMORY,
            RavenError::Cancelled => RAVEN_ERR_CANCELLED,
            RavenError::Quant(_) => RAVEN_ERR_INTERNAL,
        };
        Error {
            status,
            // A parameter is named as its field of raven_session_params (never a CLI flag).
            msg: e.message_for(raven_core::Param::c),
        }
    }
}

impl From<raven_text::TextError> for Error {
    fn from(e: raven_text::TextError) -> Error {
        RavenError::from(e).into()
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "unknown panic"
    }
}

/// Runs the body of export `name` so that nothing unwinds out of it: a panic becomes
/// `RAVEN_ERR_INTERNAL`, an error its status; both leave their message for
/// [`raven_last_error`] and the log. `fail` turns the status into the export's return value.
fn guard<T>(name: &str, fail: impl FnOnce(raven_status) -> T, body: impl FnOnce() -> R<T>) -> T {
    let err = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(payload) => {
            let e = Error {
                status: RAVEN_ERR_INTERNAL,
                msg: format!(
                    "internal error (a bug in Raven; please report it): {}",
                    panic_message(&*payload)
                ),
            };
            // Dropping a panic payload can itself panic; keep that inside too.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            e
        }
    };
    // Reporting must not unwind either (a log callback cannot, being `extern "C"`).
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        let msg = format!("{name}: {}", err.msg);
        set_last_error(&msg);
        log(RAVEN_LOG_ERROR, &msg);
    }));
    fail(err.status)
}

/// [`guard`] for exports that return a status.
fn status(name: &str, body: impl FnOnce() -> R<()>) -> raven_status {
    guard(name, |s| s, || body().map(|()| RAVEN_OK))
}

/// [`guard`] for the two-call size exports: the size, its negation, or `RAVEN_SIZE_ERROR`.
fn sized(name: &str, body: impl FnOnce() -> R<i32>) -> i32 {
    guard(name, |_| RAVEN_SIZE_ERROR, body)
}

// ---------------------------------------------------------------------------------------------
// Logging

#[derive(Clone, Copy)]
struct Logger {
    cb: unsafe extern "C" fn(raven_log_level, *const c_char, *mut c_void),
    user_data: usize,
}

static LOGGER: Mutex<Option<Logger>> = Mutex::new(None);

fn log(level: raven_log_level, msg: &str) {
    let logger = match LOGGER.lock() {
        Ok(l) => *l,
        Err(p) => *p.into_inner(),
    };
    if let Some(l) = logger {
        if let Ok(c) = CString::new(msg.replace('\0', " ")) {
            // SAFETY: the callback and its user data were registered together by
            // `raven_log_set`, whose contract makes them valid until replaced; `c` lives over
            // the call.
            unsafe { (l.cb)(level, c.as_ptr(), l.user_data as *mut c_void) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pointer helpers

/// # Safety
/// `p` is NULL or points to a live `T` (a handle made by this library).
unsafe fn handle<'a, T>(p: *const T, what: &str) -> R<&'a T> {
    // SAFETY: the caller's contract: NULL or a valid handle.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// # Safety
/// `p` is NULL or points to `n` readable `T`s when `n > 0`.
unsafe fn slice<'a, T>(p: *const T, n: i32, what: &str) -> R<&'a [T]> {
    if n < 0 {
        return Err(invalid(format!("{what}: count {n} is negative")));
    }
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL but its count is {n}")));
    }
    // SAFETY: non-NULL, and the caller's contract gives `n` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n as usize) })
}

fn tokens_in(ids: &[i32], what: &str) -> R<Vec<u32>> {
    ids.iter()
        .map(|&t| {
            u32::try_from(t).map_err(|_| invalid(format!("{what}: token id {t} is negative")))
        })
        .collect()
}

/// # Safety
/// `text` is NULL, or NUL-terminated when `len < 0`, or has `len` readable bytes.
unsafe fn text_in<'a>(text: *const c_char, len: i32, what: &str) -> R<&'a str> {
    if text.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    let bytes = if len < 0 {
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        unsafe { CStr::from_ptr(text) }.to_bytes()
    } else {
        // SAFETY: non-NULL with `len` readable bytes by the caller's contract.
        unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len as usize) }
    };
    std::str::from_utf8(bytes).map_err(|e| invalid(format!("{what} is not valid UTF-8: {e}")))
}

/// Copies `s` and a NUL into `buf` when `buf_len` ≥ its length + 1 and returns the length;
/// otherwise returns minus that size.
///
/// # Safety
/// `buf` is NULL or has `buf_len` writable bytes.
unsafe fn text_out(s: &str, buf: *mut c_char, buf_len: i32, what: &str) -> R<i32> {
    let need = i32::try_from(s.len() + 1)
        .map_err(|_| invalid(format!("{what}: the text is larger than 2 GiB")))?;
    if buf_len < need || buf.is_null() {
        if buf.is_null() && buf_len > 0 {
            return Err(invalid(format!(
                "{what}: buffer is NULL but its length is {buf_len}"
            )));
        }
        return Ok(-need);
    }
    // SAFETY: `buf` is non-NULL with at least `need` = len + 1 writable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(need - 1)
}

/// # Safety
/// `out` is NULL or points to a writable `T`.
unsafe fn write_out<T>(out: *mut T, v: T, what: &str) -> R<()> {
    if out.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and writable by the caller's contract; `write` drops nothing old.
    unsafe { out.write(v) };
    Ok(())
}

fn lock(s: &raven_session) -> R<std::sync::MutexGuard<'_, Inner>> {
    match s.inner.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(Error {
            status: RAVEN_ERR_BUSY,
            msg: "the session is in use by another call (one thread at a time; a token \
                  callback must not call into its own session)"
                .into(),
        }),
        Err(TryLockError::Poisoned(_)) => Err(Error {
            status: RAVEN_ERR_INTERNAL,
            msg: "the session is unusable after an internal error; free it".into(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Library

/// The library version, e.g. "0.1.0" (a static string).
#[no_mangle]
pub extern "C" fn raven_version() -> *const c_char {
    guard(
        "raven_version",
        |_| c"".as_ptr(),
        || Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()),
    )
}

/// A static name for a status code, e.g. "RAVEN_ERR_CANCELLED"; "unknown status" for a value
/// outside the list.
#[no_mangle]
pub extern "C" fn raven_status_string(status: raven_status) -> *const c_char {
    guard(
        "raven_status_string",
        |_| c"".as_ptr(),
        || Ok(status_name(status).as_ptr().cast()),
    )
}

fn status_name(status: raven_status) -> &'static str {
    match status {
        RAVEN_OK => "RAVEN_OK\0",
        RAVEN_ERR_INVALID_ARGUMENT => "RAVEN_ERR_INVALID_ARGUMENT\0",
        RAVEN_ERR_IO => "RAVEN_ERR_IO\0",
        RAVEN_ERR_FORMAT => "RAVEN_ERR_FORMAT\0",
        RAVEN_ERR_CONTEXT_OVERFLOW => "RAVEN_ERR_CONTEXT_OVERFLOW\0",
        RAVEN_ERR_CANCELLED => "RAVEN_ERR_CANCELLED\0",
        RAVEN_ERR_OUT_OF_MEMORY => "RAVEN_ERR_OUT_OF_MEMORY\0",
        RAVEN_ERR_BUSY => "RAVEN_ERR_BUSY\0",
        RAVEN_ERR_INTERNAL => "RAVEN_ERR_INTERNAL\0",
        _ => "unknown status\0",
    }
}

/// The message of the last call that failed on this thread ("" if none): the function, then
/// what went wrong and what to do. Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn raven_last_error() -> *const c_char {
    guard(
        "raven_last_error",
        |_| c"".as_ptr(),
        || {
            Ok(LAST_ERROR
                .try_with(|e| e.borrow().as_ptr())
                .unwrap_or(c"".as_ptr()))
        },
    )
}

/// Sends the library's log messages to `callback` (NULL: discard them, the default). The
/// callback may be called from any thread that calls into the library, and must not call
/// `raven_log_set`.
///
/// # Safety
/// `callback` must stay callable with `user_data` until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn raven_log_set(callback: raven_log_callback, user_data: *mut c_void) {
    guard(
        "raven_log_set",
        |_| (),
        || {
            let new = callback.map(|cb| Logger {
                cb,
                user_data: user_data as usize,
            });
            match LOGGER.lock() {
                Ok(mut l) => *l = new,
                Err(p) => *p.into_inner() = new,
            }
            Ok(())
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Model

/// Default model parameters (memory-mapped).
#[no_mangle]
pub extern "C" fn raven_model_default_params() -> raven_model_params {
    const D: raven_model_params = raven_model_params { use_mmap: true };
    guard("raven_model_default_params", |_| D, || Ok(D))
}

/// Loads a GGUF model (made by `raven convert`). `params` may be NULL (defaults).
/// `progress` (may be NULL) is called with values from 0 to 1 and may return false to abort
/// (`RAVEN_ERR_CANCELLED`). On success `*out_model` is a new model to free with
/// `raven_model_free`; on failure it is set to NULL.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `params` is NULL or valid; `out_model` is NULL
/// or writable; `progress` must be callable with `user_data` during the call.
#[no_mangle]
pub unsafe extern "C" fn raven_model_load(
    path: *const c_char,
    params: *const raven_model_params,
    progress: raven_progress_callback,
    user_data: *mut c_void,
    out_model: *mut *mut raven_model,
) -> raven_status {
    status("raven_model_load", || {
        if out_model.is_null() {
            return Err(invalid("out_model is NULL"));
        }
        // SAFETY: non-NULL and writable by the contract.
        unsafe { out_model.write(std::ptr::null_mut()) };
        if path.is_null() {
            return Err(invalid("path is NULL"));
        }
        // SAFETY: non-NULL and NUL-terminated by the contract.
        let path = path_from_c(unsafe { CStr::from_ptr(path) })?;
        // SAFETY: NULL or valid by the contract.
        let p = unsafe { params.as_ref() }
            .copied()
            .unwrap_or(raven_model_params { use_mmap: true });
        let report = |x: f32| -> R<()> {
            match progress {
                // SAFETY: callable with `user_data` during this call by the contract.
                Some(cb) if !unsafe { cb(x, user_data) } => Err(Error {
                    status: RAVEN_ERR_CANCELLED,
                    msg: "loading was cancelled by the progress callback".into(),
                }),
                _ => Ok(()),
            }
        };
        let t0 = Instant::now();
        report(0.0)?;
        let model = if p.use_mmap {
            Model::load(&path)?
        } else {
            let bytes = read_with_progress(&path, |x| report(0.9 * x))?;
            let g = raven_gguf::Gguf::from_bytes(bytes).map_err(|e| Error {
                status: RAVEN_ERR_FORMAT,
                msg: format!("{}: {e}", path.display()),
            })?;
            Model::from_gguf(g, &path.display().to_string())?
        };
        report(1.0)?;
        let c = &model.config;
        log(
            RAVEN_LOG_INFO,
            &format!(
                "loaded {} ({}): {} MB of weights, h={} V={} layers {}+{}+{}, context {}, in {:.0} ms",
                path.display(),
                model.name(),
                model.weight_bytes() / 1_000_000,
                c.n_embd,
                c.n_vocab,
                c.n_prelude,
                c.n_core,
                c.n_coda,
                c.context,
                t0.elapsed().as_secs_f64() * 1e3
            ),
        );
        let h = Box::new(raven_model {
            model: Arc::new(model),
        });
        // SAFETY: checked non-NULL above.
        unsafe { out_model.write(Box::into_raw(h)) };
        Ok(())
    })
}

fn path_from_c(p: &CStr) -> R<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        p.to_str()
            .map(PathBuf::from)
            .map_err(|_| invalid("path is not valid UTF-8"))
    }
}

fn read_with_progress(path: &std::path::Path, mut report: impl FnMut(f32) -> R<()>) -> R<Vec<u8>> {
    let io = |e| {
        Error::from(RavenError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len as usize).map_err(|_| Error {
        status: RAVEN_ERR_OUT_OF_MEMORY,
        msg: format!(
            "{}: cannot allocate {len} bytes to read it (load it memory-mapped instead)",
            path.display()
        ),
    })?;
    let mut chunk = vec![0u8; 1 << 22];
    loop {
        let n = f.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        report(if len == 0 {
            1.0
        } else {
            (bytes.len() as f64 / len as f64).min(1.0) as f32
        })?;
    }
    Ok(bytes)
}

/// Frees a model. NULL is a no-op. Sessions made from it stay usable (they keep it alive).
///
/// # Safety
/// `model` is NULL or a model from `raven_model_load` not yet freed; no other thread uses
/// this handle during or after the call.
#[no_mangle]
pub unsafe extern "C" fn raven_model_free(model: *mut raven_model) {
    guard(
        "raven_model_free",
        |_| (),
        || {
            if !model.is_null() {
                // SAFETY: made by `Box::into_raw` in `raven_model_load`, freed once.
                drop(unsafe { Box::from_raw(model) });
            }
            Ok(())
        },
    )
}

/// Runs a query on a model handle: its value, or `fail` when the handle is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
unsafe fn query<T>(
    name: &str,
    model: *const raven_model,
    fail: T,
    f: impl FnOnce(&Model) -> T,
) -> T {
    guard(
        name,
        |_| fail,
        || {
            // SAFETY: NULL or live by the caller's contract.
            let m = unsafe { handle(model, "model") }?;
            Ok(f(&m.model))
        },
    )
}

/// Token ids of the vocabulary (valid ids are 0 .. n-1), or -1 when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_n_vocab(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_n_vocab", model, -1, |m| {
            m.config.n_vocab as i32
        })
    }
}

/// The context length the model was trained with, or -1 when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_n_ctx_train(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_n_ctx_train", model, -1, |m| {
            m.config.context as i32
        })
    }
}

/// The embedding width, or -1 when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_n_embd(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { query("raven_model_n_embd", model, -1, |m| m.config.n_embd as i32) }
}

/// The core (recurrent) layer count, or -1 when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_n_core_layers(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_n_core_layers", model, -1, |m| {
            m.config.n_core as i32
        })
    }
}

/// The default number of core iterations (the model's mean recurrence), or -1 when `model` is
/// NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_mean_recurrence(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_mean_recurrence", model, -1, |m| {
            m.config.mean_recurrence as i32
        })
    }
}

/// The beginning-of-text token, or -1 when the model has none or `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_token_bos(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_token_bos", model, -1, |m| {
            m.vocab.bos.map_or(-1, |t| t as i32)
        })
    }
}

/// True when `token` ends a generation (end of text, end of turn); false for other tokens or
/// a NULL `model`.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_token_is_stop(model: *const raven_model, token: i32) -> bool {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_token_is_stop", model, false, |m| {
            u32::try_from(token).is_ok_and(|t| m.stop_tokens().contains(&t))
        })
    }
}

/// Writes the model's name (`general.name`) and a NUL into `buf`. Returns its length in bytes;
/// when `buf_len` is less than length + 1, writes nothing and returns minus that size;
/// `RAVEN_SIZE_ERROR` when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model; `buf` is NULL or has `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn raven_model_name(
    model: *const raven_model,
    buf: *mut c_char,
    buf_len: i32,
) -> i32 {
    sized("raven_model_name", || {
        // SAFETY: NULL or live by the contract.
        let m = unsafe { handle(model, "model") }?;
        // SAFETY: `buf` has `buf_len` writable bytes by the contract.
        unsafe { text_out(m.model.name(), buf, buf_len, "raven_model_name") }
    })
}

// ---------------------------------------------------------------------------------------------
// Text

/// Turns UTF-8 `text` into token ids. `text_len` is its length in bytes, or negative when
/// `text` is NUL-terminated. `add_special` lets the tokenizer add its tokens (e.g. a BOS);
/// special tokens written in the text are recognised either way. Writes at most `n_max` ids
/// into `tokens` and returns how many there are; when `n_max` is too small, writes nothing
/// and returns minus the count needed (call again with a buffer that large). On other errors
/// returns `RAVEN_SIZE_ERROR`.
///
/// # Safety
/// `model` is NULL or a live model; `text` is NULL or as described; `tokens` is NULL or has
/// `n_max` writable ids.
#[no_mangle]
pub unsafe extern "C" fn raven_tokenize(
    model: *const raven_model,
    text: *const c_char,
    text_len: i32,
    add_special: bool,
    tokens: *mut i32,
    n_max: i32,
) -> i32 {
    sized("raven_tokenize", || {
        // SAFETY: NULL or live by the contract.
        let m = unsafe { handle(model, "model") }?;
        // SAFETY: the text contract.
        let text = unsafe { text_in(text, text_len, "text") }?;
        let ids = m.model.tokenizer()?.encode(text, add_special)?;
        let n = i32::try_from(ids.len()).map_err(|_| invalid("text: too many tokens"))?;
        if n_max < n || (tokens.is_null() && n > 0) {
            if tokens.is_null() && n_max > 0 {
                return Err(invalid(format!("tokens is NULL but n_max is {n_max}")));
            }
            return Ok(-n);
        }
        for (i, &t) in ids.iter().enumerate() {
            // SAFETY: `tokens` has at least `n_max` ≥ n writable ids.
            unsafe { tokens.add(i).write(t as i32) };
        }
        Ok(n)
    })
}

/// Turns token ids into UTF-8 text (special tokens left out when `skip_special`), written
/// with a NUL into `buf`. Returns the text's length in bytes; when `buf_len` is less than
/// length + 1, writes nothing and returns minus that size. An unknown id or other error
/// returns `RAVEN_SIZE_ERROR`.
///
/// # Safety
/// `model` is NULL or a live model; `tokens` is NULL or has `n_tokens` ids; `buf` is NULL or
/// has `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn raven_detokenize(
    model: *const raven_model,
    tokens: *const i32,
    n_tokens: i32,
    skip_special: bool,
    buf: *mut c_char,
    buf_len: i32,
) -> i32 {
    sized("raven_detokenize", || {
        // SAFETY: NULL or live by the contract.
        let m = unsafe { handle(model, "model") }?;
        // SAFETY: `n_tokens` readable ids by the contract.
        let ids = tokens_in(unsafe { slice(tokens, n_tokens, "tokens") }?, "tokens")?;
        let s = m.model.tokenizer()?.decode(&ids, skip_special)?;
        // SAFETY: `buf` has `buf_len` writable bytes by the contract.
        unsafe { text_out(&s, buf, buf_len, "raven_detokenize") }
    })
}

// ---------------------------------------------------------------------------------------------
// Session

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

fn default_session() -> raven_session_params {
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

fn nonneg(v: i32, what: &str) -> R<usize> {
    usize::try_from(v).map_err(|_| invalid(format!("{what} = {v} must not be negative")))
}

fn sampling_from_c(s: &raven_sampling_params) -> R<SamplingParams> {
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
fn parallel_from_c(p: &raven_session_params) -> R<Option<ParallelParams>> {
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

fn params_from_c(p: &raven_session_params, m: &Model) -> R<SessionParams> {
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

fn stats_to_c(t: &TokenStats) -> raven_token_stats {
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
unsafe fn generate(
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
