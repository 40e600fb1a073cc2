//! The interface's types: status codes, option values, handles, parameter and statistics structs,
//! callbacks.

use super::*;

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
pub(crate) const KV_TYPES: [(raven_kv_type, KvType); 3] = [
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
    pub(crate) model: Arc<Model>,
}

/// A generation session: its own KV cache, sampler and worker threads. One thread at a time
/// (a concurrent call returns `RAVEN_ERR_BUSY`), except `raven_session_cancel`.
pub struct raven_session {
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) inner: Mutex<Inner>,
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
