//! The parameters callers set, named once for every front end: an invalid one is reported as
//! [`RavenError::InvalidParam`](crate::RavenError::InvalidParam) with its [`Param`], and each
//! adapter names it as its users know it (`--temp` on the command line, `sampling.temperature`
//! in the C ABI, `temperature` in the server's JSON and the Python keywords).

/// A parameter of a session, a generation or a `raven logits` run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Param {
    /// Core iterations of every token of a `raven logits` run without an exit criterion.
    Steps,
    /// Maximum core iterations per token (`--steps` of `raven run`, also `--max-steps`).
    MaxSteps,
    /// Minimum core iterations per token.
    MinSteps,
    /// Check the exit criterion every n iterations.
    CheckEvery,
    /// Exit criterion and threshold.
    Exit,
    /// Core iterations of the prompt.
    PrefillSteps,
    /// Per-token latency budget.
    BudgetMs,
    /// KV-cache strategy.
    Cache,
    /// Element type of the KV cache (f32, f16, q8_0).
    CacheType,
    /// Context length.
    Ctx,
    /// KV-cache memory cap.
    KvCap,
    /// Initial-state scale.
    InitScale,
    /// Worker threads.
    Threads,
    /// Sampling temperature.
    Temperature,
    /// Top-k.
    TopK,
    /// Top-p.
    TopP,
    /// Min-p.
    MinP,
    /// Repetition penalty.
    RepeatPenalty,
    /// Window of the repetition penalty.
    RepeatLastN,
    /// Start each token from the previous latent state.
    WarmStart,
    /// Draft iterations of speculative decoding.
    DraftSteps,
    /// Most tokens drafted per verification.
    Lookahead,
    /// Token ids given by the caller.
    Tokens,
    /// Tokens processed in one pass before decoding the rest.
    DecodeFrom,
    /// The prompt.
    Prompt,
    /// Core iterations per step of the parallel sampler (r′).
    InnerSteps,
    /// Most positions in the parallel sampler's wavefront (0 = no cap).
    Wavefront,
    /// New positions the parallel sampler appends per step.
    Headway,
    /// Momentum η of the parallel sampler's conditioning.
    Ema,
    /// State-noise mixing β of the parallel sampler.
    Noise,
    /// Most steps of the parallel sampler.
    SamplerSteps,
    /// The sampler: plain (token by token) or parallel.
    Sampler,
    /// The parallel sampler's mode: official or corrected.
    ParallelMode,
}

impl Param {
    /// The command line's flag (`--temp`).
    pub fn cli(self) -> &'static str {
        use Param::*;
        match self {
            Steps => "--steps",
            MaxSteps => "--max-steps",
            MinSteps => "--min-steps",
            CheckEvery => "--check-every",
            Exit => "--exit",
            PrefillSteps => "--prefill-steps",
            BudgetMs => "--budget-ms",
            Cache => "--cache",
            CacheType => "--cache-type",
            Ctx => "--ctx",
            KvCap => "--kv-cap-mb",
            InitScale => "--init-scale",
            Threads => "--threads",
            Temperature => "--temp",
            TopK => "--top-k",
            TopP => "--top-p",
            MinP => "--min-p",
            RepeatPenalty => "--repeat-penalty",
            RepeatLastN => "--repeat-last-n",
            WarmStart => "--warm-start",
            DraftSteps => "--draft-steps",
            Lookahead => "--lookahead",
            Tokens => "--tokens",
            DecodeFrom => "--decode-from",
            Prompt => "--prompt",
            InnerSteps => "--inner-steps",
            Wavefront => "--wavefront",
            Headway => "--headway",
            Ema => "--ema",
            Noise => "--noise",
            SamplerSteps => "--max-sampler-steps",
            Sampler => "--sampler",
            ParallelMode => "--parallel-mode",
        }
    }

    /// The C ABI's field (`sampling.temperature` of `raven_session_params`), or argument.
    pub fn c(self) -> &'static str {
        use Param::*;
        match self {
            Steps => "steps",
            MaxSteps => "max_steps",
            MinSteps => "min_steps",
            CheckEvery => "check_every",
            Exit => "exit_criterion/exit_threshold",
            PrefillSteps => "prefill_steps",
            BudgetMs => "budget_ms",
            Cache => "cache_type/cache_k",
            CacheType => "kv_type",
            Ctx => "n_ctx",
            KvCap => "kv_cap_bytes",
            InitScale => "init_scale",
            Threads => "n_threads",
            Temperature => "sampling.temperature",
            TopK => "sampling.top_k",
            TopP => "sampling.top_p",
            MinP => "sampling.min_p",
            RepeatPenalty => "sampling.repeat_penalty",
            RepeatLastN => "sampling.repeat_last_n",
            WarmStart => "warm_start",
            DraftSteps => "draft_steps",
            Lookahead => "lookahead",
            Tokens => "tokens",
            DecodeFrom => "decode_from",
            Prompt => "prompt",
            InnerSteps => "inner_steps",
            Wavefront => "wavefront",
            Headway => "headway",
            Ema => "ema",
            Noise => "noise",
            SamplerSteps => "max_sampler_steps",
            Sampler => "sampler",
            ParallelMode => "parallel_mode",
        }
    }

    /// The name in the server's JSON and the Python keywords (`temperature`).
    pub fn api(self) -> &'static str {
        use Param::*;
        match self {
            Steps => "steps",
            MaxSteps => "steps",
            MinSteps => "min_steps",
            CheckEvery => "check_every",
            Exit => "exit",
            PrefillSteps => "prefill_steps",
            BudgetMs => "budget_ms",
            Cache => "cache",
            CacheType => "cache_type",
            Ctx => "ctx",
            KvCap => "kv_cap",
            InitScale => "init_scale",
            Threads => "threads",
            Temperature => "temperature",
            TopK => "top_k",
            TopP => "top_p",
            MinP => "min_p",
            RepeatPenalty => "repeat_penalty",
            RepeatLastN => "repeat_last_n",
            WarmStart => "warm_start",
            DraftSteps => "draft_steps",
            Lookahead => "lookahead",
            Tokens => "tokens",
            DecodeFrom => "decode_from",
            Prompt => "prompt",
            InnerSteps => "inner_steps",
            Wavefront => "wavefront",
            Headway => "headway",
            Ema => "ema",
            Noise => "noise",
            SamplerSteps => "max_sampler_steps",
            Sampler => "sampler",
            ParallelMode => "parallel_mode",
        }
    }
}
