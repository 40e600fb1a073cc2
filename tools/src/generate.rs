//! `raven run` and `raven chat`: streaming generation with exit policies, a latency budget,
//! KV sharing and warm start.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;

use raven::exit::{Criterion, ExitPolicy};
use raven::kv::{parse_kv_type, CacheStrategy};
use raven::parallel::{Mode, Observe, ParallelParams};
use raven::run::Threads;
use raven::sample::SamplingParams;
use raven::session::TokenStats;
use raven::{Model, Session, SessionParams};
use raven_text::{ChatMessage, StreamDecoder};

/// Options shared by `run` and `chat`.
#[derive(Args, Clone)]
pub struct GenArgs {
    /// The GGUF model (default: the bundled demo model).
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    pub n_predict: usize,
    /// Maximum core iterations per token (default: the model's mean recurrence).
    #[arg(long = "steps", alias = "max-steps")]
    pub steps: Option<usize>,
    /// Minimum core iterations per token.
    #[arg(long = "min-steps", default_value_t = 1)]
    pub min_steps: usize,
    /// Exit criterion CRIT[:τ]: kl, minp-kl, entropy-diff, latent-diff, cosine, argmax-stability,
    /// none (default none; with --sampler parallel the freezing rule: latent-diff[:ε], the
    /// default, or none for the fixed rule).
    #[arg(long)]
    pub exit: Option<String>,
    /// Check the exit criterion every n iterations.
    #[arg(long = "check-every", default_value_t = 1)]
    pub check_every: usize,
    /// Per-token latency budget in milliseconds: iterations are capped to finish in time.
    #[arg(long = "budget-ms")]
    pub budget_ms: Option<f64>,
    /// Core iterations for the prompt (default: --steps).
    #[arg(long = "prefill-steps")]
    pub prefill_steps: Option<usize>,
    /// KV cache strategy: full, compress-sK, latest-mC (default: compress-s<core layers>).
    #[arg(long)]
    pub cache: Option<String>,
    /// Element type of cached keys and values: f32, f16 (default, half of f32's memory),
    /// q8_0 (a little over a quarter).
    #[arg(long = "cache-type")]
    pub cache_type: Option<String>,
    /// Start each token's latent state from the previous token's.
    #[arg(long = "warm-start")]
    pub warm_start: bool,
    /// Initial-state scale (0 = zero state).
    #[arg(long = "init-scale", default_value_t = 1.0)]
    pub init_scale: f32,
    /// Seed of sampling and of the initial state.
    #[arg(long, short = 's', default_value_t = 0)]
    pub seed: u64,
    /// Temperature (0 = greedy).
    #[arg(long = "temp", default_value_t = 0.0)]
    pub temp: f32,
    /// Top-k (0 = off).
    #[arg(long = "top-k", default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Window of the repetition penalty.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Context length (default: the model's, at most 4096).
    #[arg(long, short = 'c', default_value_t = 0)]
    pub ctx: usize,
    /// Refuse a KV cache larger than this many MiB.
    #[arg(long = "kv-cap-mb", default_value_t = 16384)]
    pub kv_cap_mb: u64,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Read the model into memory instead of mapping it.
    #[arg(long = "no-mmap")]
    pub no_mmap: bool,
    /// Self-speculative decoding: draft with this many iterations, verify at full depth
    /// (greedy only; output identical to plain decoding with --cache full, the default here
    /// when it fits, and --init-scale 0).
    #[arg(long = "draft-steps")]
    pub draft_steps: Option<usize>,
    /// Most tokens drafted per verification with --draft-steps (fewer after a rejected draft,
    /// doubling back after fully accepted rounds).
    #[arg(long = "lookahead", default_value_t = 16)]
    pub lookahead: usize,
    /// Keep generating past end-of-sequence tokens (for timing long outputs).
    #[arg(long = "ignore-eos")]
    pub ignore_eos: bool,
    /// Show the iterations each token used, as [n] after it.
    #[arg(long = "show-steps")]
    pub show_steps: bool,
    /// Print one JSON object per generation on stdout instead of streaming text: the generated
    /// token ids, the text, the iterations of each token and the counters.
    #[arg(long)]
    pub json: bool,
    /// Sampler: plain (token by token) or parallel (the diffusion-forcing sampler of arXiv
    /// 2510.14961: a wavefront of positions advances together, one batched pass per step).
    #[arg(long, default_value = "plain")]
    pub sampler: String,
    /// With --sampler parallel: official (the official code's behaviour, quirks included; the
    /// default) or corrected (quirks fixed; a wavefront of 1 is ordinary decoding).
    #[arg(long = "parallel-mode", value_name = "MODE")]
    pub parallel_mode: Option<String>,
    /// With --sampler parallel: core iterations per sampler step, r′ (default 4).
    #[arg(long = "inner-steps", value_name = "R")]
    pub inner_steps: Option<usize>,
    /// With --sampler parallel: most positions in the wavefront (default 128; 0 = no cap).
    #[arg(long, value_name = "W")]
    pub wavefront: Option<usize>,
    /// With --sampler parallel: new positions appended per step (default 1).
    #[arg(long, value_name = "H")]
    pub headway: Option<usize>,
    /// With --sampler parallel: momentum η of the conditioning, in [0, 1) (default 0.1).
    #[arg(long, value_name = "ETA", allow_negative_numbers = true)]
    pub ema: Option<f64>,
    /// With --sampler parallel: state-noise mixing β, in [0, 1] (default 0), damped per position
    /// as β / (1 + iterations so far).
    #[arg(long, value_name = "BETA", allow_negative_numbers = true)]
    pub noise: Option<f64>,
    /// With --sampler parallel: a constant noise coefficient β instead of the damped one.
    #[arg(long = "noise-constant")]
    pub noise_constant: bool,
    /// With --sampler parallel: square-root noise mixing z·√(1−a) + √a·noise.
    #[arg(long = "noise-sqrt")]
    pub noise_sqrt: bool,
    /// With --sampler parallel: most sampler steps (default 4096).
    #[arg(long = "max-sampler-steps", value_name = "N")]
    pub max_sampler_steps: Option<usize>,
}

/// What `raven run` is given to continue.
pub enum Prompt {
    /// Text (`-p`).
    Text(String),
    /// Token ids (`--prompt-tokens`).
    Tokens(Vec<u32>),
}

impl GenArgs {
    /// True for `--sampler parallel`; an error for an unknown sampler, or for parallel-sampler
    /// options without it.
    pub fn parallel(&self) -> Result<bool> {
        let parallel = match self.sampler.as_str() {
            "plain" => false,
            "parallel" => true,
            s => bail!("--sampler {s}: use plain or parallel"),
        };
        if !parallel {
            let given = [
                ("--parallel-mode", self.parallel_mode.is_some()),
                ("--inner-steps", self.inner_steps.is_some()),
                ("--wavefront", self.wavefront.is_some()),
                ("--headway", self.headway.is_some()),
                ("--ema", self.ema.is_some()),
                ("--noise", self.noise.is_some()),
                ("--noise-constant", self.noise_constant),
                ("--noise-sqrt", self.noise_sqrt),
                ("--max-sampler-steps", self.max_sampler_steps.is_some()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
                bail!("{flag}: only used with --sampler parallel");
            }
        }
        Ok(parallel)
    }

    /// The parallel sampler's knobs (`--sampler parallel`), the paper's conservative setting
    /// where not given; `None` for the plain sampler.
    pub fn parallel_params(&self) -> Result<Option<ParallelParams>> {
        if !self.parallel()? {
            return Ok(None);
        }
        if self.draft_steps.is_some() {
            bail!("--draft-steps: speculative decoding and --sampler parallel are exclusive");
        }
        if self.show_steps {
            bail!("--show-steps: not available with --sampler parallel (--json gives the iterations of each token)");
        }
        let d = ParallelParams::default();
        let mode = match self.parallel_mode.as_deref() {
            None => d.mode,
            Some(s) => match Mode::parse(s) {
                Ok(m) => m,
                Err(_) => bail!("--parallel-mode {s}: use official or corrected"),
            },
        };
        if mode == Mode::Official && self.wavefront == Some(1) {
            eprintln!(
                "note: with a wavefront of 1 the official sampler never advances (it drops the \
                 new position every step); --parallel-mode corrected decodes token by token"
            );
        }
        Ok(Some(ParallelParams {
            mode,
            inner_steps: self.inner_steps.unwrap_or(d.inner_steps),
            wavefront: self.wavefront.unwrap_or(d.wavefront),
            headway: self.headway.unwrap_or(d.headway),
            ema: self.ema.unwrap_or(d.ema),
            noise: self.noise.unwrap_or(d.noise),
            noise_dampened: !self.noise_constant,
            noise_sqrt: self.noise_sqrt,
            max_sampler_steps: self.max_sampler_steps.unwrap_or(d.max_sampler_steps),
        }))
    }

    pub fn load(&self) -> Result<Arc<Model>> {
        Ok(Arc::new(match &self.model {
            Some(p) => crate::load_model(p, self.no_mmap)?,
            None => crate::demo::load()?,
        }))
    }

    pub fn params(&self, m: &Model) -> Result<SessionParams> {
        let mut p = SessionParams::for_model(m);
        let steps = self.steps.unwrap_or(m.config.mean_recurrence);
        if steps == 0 {
            bail!("--steps 0: must be at least 1");
        }
        let default_exit = if self.parallel()? {
            "latent-diff"
        } else {
            "none"
        };
        p.exit = ExitPolicy {
            criterion: Criterion::parse(self.exit.as_deref().unwrap_or(default_exit))?,
            min_steps: self.min_steps,
            max_steps: steps,
            check_every: self.check_every,
        };
        p.exit.validate()?;
        p.prefill_steps = self.prefill_steps.unwrap_or(0);
        if let Some(b) = self.budget_ms {
            if !(b.is_finite() && b > 0.0) {
                bail!("--budget-ms {b}: must be a positive number of milliseconds");
            }
        }
        p.budget_ms = self.budget_ms;
        if let Some(c) = &self.cache {
            p.cache = CacheStrategy::parse(c)?;
        }
        if let Some(t) = &self.cache_type {
            p.cache_type = parse_kv_type(t)?;
        }
        p.warm_start = self.warm_start;
        p.init_scale = self.init_scale;
        p.seed = self.seed;
        p.threads = self.threads;
        p.ctx = self.ctx;
        p.kv_cap_bytes = Some(self.kv_cap_mb.saturating_mul(1 << 20));
        p.ignore_eos = self.ignore_eos;
        p.sampling = SamplingParams {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
        };
        p.sampling.validate()?;
        if self.draft_steps.is_some() {
            // Verification runs the drafted tokens in one pass, where each reads the others'
            // entries of the same iteration: that is what plain decoding leaves only with the
            // `full` cache. Take it when no cache was asked for and it fits; otherwise say so.
            let mut full = p.clone();
            full.cache = CacheStrategy::Full;
            let fits = full.kv_bytes(m) <= p.kv_cap_bytes.unwrap_or(u64::MAX);
            if self.cache.is_none() && fits {
                p.cache = CacheStrategy::Full;
            } else if p.cache != CacheStrategy::Full {
                eprintln!(
                    "note: with --draft-steps and a {} cache the output can differ from plain \
                     decoding; --cache full keeps it identical ({} MiB for this context)",
                    p.cache,
                    full.kv_bytes(m) >> 20
                );
            }
            if p.init_scale != 0.0 {
                eprintln!(
                    "note: with --draft-steps the random initial states are drawn in another \
                     order than in plain decoding; --init-scale 0 makes the output identical"
                );
            }
        }
        Ok(p)
    }
}

/// Peak resident memory of this process in bytes (Linux), if known.
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Summary of a generation, printed after it.
pub fn summary(
    stats: &[TokenStats],
    secs: f64,
    prompt_tokens: usize,
    prompt_secs: f64,
    session: &Session,
) -> String {
    let n = stats.len();
    let mean_steps = if n > 0 {
        stats.iter().map(|s| s.steps).sum::<usize>() as f64 / n as f64
    } else {
        0.0
    };
    let early = stats.iter().filter(|s| s.exited_early).count();
    let capped = stats.iter().filter(|s| s.budget_capped).count();
    let mut out = format!(
        "prompt: {prompt_tokens} tokens in {:.2} s ({:.1} tokens/s); generated: {n} tokens in {:.2} s ({:.2} tokens/s); mean iterations/token {:.2} (max {}), {early} exited early; KV cache {:.2} MB ({} {}); peak RSS {}",
        prompt_secs,
        prompt_tokens as f64 / prompt_secs.max(1e-9),
        secs,
        n as f64 / secs.max(1e-9),
        mean_steps,
        session.params().exit.max_steps,
        session.kv_bytes() as f64 / 1e6,
        session.params().cache,
        session.params().cache_type,
        peak_rss().map(|b| format!("{:.1} MB", b as f64 / 1e6)).unwrap_or_else(|| "n/a".into()),
    );
    if let Some(b) = session.params().budget_ms {
        let within = stats.iter().filter(|s| s.ms <= b * 1.1).count();
        let mut ms: Vec<f64> = stats.iter().map(|s| s.ms).collect();
        ms.sort_by(|a, b| a.total_cmp(b));
        let p95 = ms
            .get((ms.len() * 95 / 100).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0);
        out += &format!(
            "; budget {b} ms: {within}/{n} tokens ({:.1}%) within budget+10%, p95 {p95:.2} ms, {capped} capped",
            100.0 * within as f64 / n.max(1) as f64
        );
    }
    out
}

fn stream_generate(
    session: &mut Session,
    prompt: &[u32],
    a: &GenArgs,
    out: &mut impl Write,
) -> Result<String> {
    let model = session.model().clone();
    let tok = model.tokenizer()?;
    let stops = session.stop_tokens();
    let mut dec = StreamDecoder::new(tok);
    let mut text = String::new();
    let t0 = std::time::Instant::now();
    let mut prompt_secs = 0.0;
    let mut first = true;
    let mut io_err = None;
    let mut tokens = Vec::new();
    // A thinking model's <think> and </think> are special tokens, which text leaves out; shown
    // here, so that the reasoning is told from the answer.
    let tags = raven::textgen::think_tags(tok);
    let on_token = |t: u32, st: &TokenStats| {
        if first {
            prompt_secs = t0.elapsed().as_secs_f64() - st.ms / 1e3;
            first = false;
        }
        tokens.push(t);
        let mut piece = match dec.push(t) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                io_err = Some(anyhow::anyhow!(e));
                return false;
            }
        };
        if let Some((open, close)) = tags {
            if t == open || t == close {
                piece += &dec.flush().unwrap_or_default();
                piece += if t == open { "<think>" } else { "</think>" };
            }
        }
        if a.show_steps && !a.json {
            piece += &format!("[{}]", st.steps);
        }
        text += &piece;
        if a.json {
            return true;
        }
        if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            io_err = Some(e.into());
            return false;
        }
        true
    };
    let stats = match a.draft_steps {
        Some(d) => {
            session.generate_speculative(prompt, a.n_predict, &stops, d, a.lookahead, on_token)?
        }
        None => session.generate(prompt, a.n_predict, &stops, on_token)?,
    };
    if let Some(e) = io_err {
        return Err(e);
    }
    let rest = dec.flush().unwrap_or_default();
    text += &rest;
    if a.json {
        let spec = session.speculative_stats();
        let n = stats.len();
        let v = serde_json::json!({
            "tokens": tokens,
            "text": text,
            "steps": stats.iter().map(|s| s.steps).collect::<Vec<_>>(),
            "prompt_tokens": prompt.len(),
            "counters": {
                "generated": n,
                "mean_steps": stats.iter().map(|s| s.steps).sum::<usize>() as f64 / n.max(1) as f64,
                "exited_early": stats.iter().filter(|s| s.exited_early).count(),
                "budget_capped": stats.iter().filter(|s| s.budget_capped).count(),
                "speculative_rounds": spec.rounds,
                "drafted": spec.drafted,
                "accepted": spec.accepted,
            },
        });
        writeln!(out, "{v}")?;
    } else {
        out.write_all(rest.as_bytes())?;
        writeln!(out)?;
    }
    if first {
        prompt_secs = t0.elapsed().as_secs_f64();
    }
    let secs = t0.elapsed().as_secs_f64() - prompt_secs;
    eprintln!(
        "{}",
        summary(&stats, secs, prompt.len(), prompt_secs, session)
    );
    Ok(text)
}

/// Generation with the parallel sampler (`--sampler parallel`): the prompt from scratch, the
/// tokens streamed as they freeze; with `--json` one object with the tokens, the text, the
/// iterations at each new position and the sampler's counters.
fn parallel_generate(
    model: &Arc<Model>,
    params: &SessionParams,
    pp: &ParallelParams,
    prompt: &[u32],
    a: &GenArgs,
    out: &mut impl Write,
) -> Result<String> {
    let tok = model.tokenizer()?;
    let stops = if params.ignore_eos {
        Vec::new()
    } else {
        model.stop_tokens()
    };
    let threads = Threads::new(params.threads)?;
    let mut dec = StreamDecoder::new(tok);
    let mut text = String::new();
    let mut io_err = None;
    let t0 = std::time::Instant::now();
    let mut first_at = None;
    let res = raven::parallel::generate(
        model,
        params,
        pp,
        prompt,
        a.n_predict,
        &stops,
        &threads,
        &Observe::default(),
        |t| {
            first_at.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            let piece = match dec.push(t) {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => {
                    io_err = Some(anyhow::anyhow!(e));
                    return false;
                }
            };
            text += &piece;
            if a.json {
                return true;
            }
            if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                io_err = Some(e.into());
                return false;
            }
            true
        },
    );
    if let Some(e) = io_err {
        return Err(e);
    }
    let r = res?;
    let rest = dec.flush().unwrap_or_default();
    text += &rest;
    let secs = t0.elapsed().as_secs_f64();
    let c = r.counters;
    let n = r.tokens.len();
    // Positions advanced per sampler step, and the mean wavefront (positions per core pass).
    let per_step = n as f64 / c.sampler_steps.max(1) as f64;
    let mean_wave = (c.tokens_forward - c.prefill_len) as f64 / (c.core_passes - 1).max(1) as f64;
    if a.json {
        let mut counters = serde_json::json!(c);
        for (k, x) in [
            ("generated", serde_json::json!(n)),
            (
                "mean_steps",
                serde_json::json!(
                    r.recurrence.iter().map(|&x| x as f64).sum::<f64>() / n.max(1) as f64
                ),
            ),
            ("sampler", serde_json::json!("parallel")),
            ("parallel_mode", serde_json::json!(pp.mode.to_string())),
            ("stopped", serde_json::json!(r.stopped)),
            ("tokens_per_step", serde_json::json!(per_step)),
            ("mean_wavefront", serde_json::json!(mean_wave)),
            ("token_stable", serde_json::json!(r.token_stable)),
        ] {
            counters[k] = x;
        }
        let v = serde_json::json!({
            "tokens": r.tokens,
            "text": text,
            "steps": r.recurrence,
            "prompt_tokens": prompt.len(),
            "counters": counters,
        });
        writeln!(out, "{v}")?;
    } else {
        out.write_all(rest.as_bytes())?;
        writeln!(out)?;
    }
    let prompt_secs = first_at.unwrap_or(secs);
    eprintln!(
        "prompt: {} tokens in {:.2} s; parallel sampler ({}, r′ {}, wavefront ≤ {}): {n} tokens in {:.2} s ({:.2} tokens/s), {} sampler steps ({per_step:.2} tokens/step), {} core passes over {mean_wave:.2} positions on average, {} standing waves, {} KV entries recomputed; cache {} {}; peak RSS {}",
        prompt.len(),
        prompt_secs,
        pp.mode,
        pp.inner_steps,
        pp.wavefront,
        secs - prompt_secs,
        n as f64 / (secs - prompt_secs).max(1e-9),
        c.sampler_steps,
        c.core_passes,
        c.standing_waves,
        c.cache_clears,
        params.cache,
        params.cache_type,
        peak_rss().map(|b| format!("{:.1} MB", b as f64 / 1e6)).unwrap_or_else(|| "n/a".into()),
    );
    Ok(text)
}

/// `raven run`.
pub fn run(a: &GenArgs, prompt: &Prompt, chat: bool) -> Result<()> {
    let parallel = a.parallel_params()?;
    let model = a.load()?;
    let params = a.params(&model)?;
    let tok = model.tokenizer()?;
    let (ids, echo) = match prompt {
        Prompt::Tokens(ids) => {
            let v = model.config.n_vocab;
            if let Some(t) = ids.iter().find(|&&t| t as usize >= v) {
                bail!("--prompt-tokens: id {t} is outside the model's vocabulary (0..{v})");
            }
            (ids.clone(), None)
        }
        Prompt::Text(p) if chat => (
            tok.encode(&model.render_chat(&[ChatMessage::new("user", p)])?, false)?,
            None,
        ),
        Prompt::Text(p) => (tok.encode(p, false)?, Some(p.as_str())),
    };
    if ids.is_empty() {
        bail!("-p: the prompt is empty");
    }
    if let Some(pp) = &parallel {
        // Checked before the prompt is echoed.
        pp.validate(&model, &params)?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let (Some(p), false) = (echo, a.json) {
        out.write_all(p.as_bytes())?;
    }
    if let Some(pp) = &parallel {
        return parallel_generate(&model, &params, pp, &ids, a, &mut out).map(|_| ());
    }
    let mut session = Session::new(model.clone(), params)?;
    stream_generate(&mut session, &ids, a, &mut out).map(|_| ())
}

/// `raven chat`: an interactive conversation on standard input.
pub fn chat(a: &GenArgs, system: Option<&str>) -> Result<()> {
    let parallel = a.parallel_params()?;
    let model = a.load()?;
    let params = a.params(&model)?;
    if let Some(pp) = &parallel {
        pp.validate(&model, &params)?;
    }
    let tok = model.tokenizer()?;
    // The plain sampler keeps a session (and its cache) across turns.
    let mut session = match parallel {
        None => Some(Session::new(model.clone(), params.clone())?),
        Some(_) => None,
    };
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(s) = system {
        messages.push(ChatMessage::new("system", s));
    }
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    eprintln!(
        "raven chat: {} — type a message, an empty line or Ctrl-D to quit",
        model.name()
    );
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            break;
        }
        messages.push(ChatMessage::new("user", line.trim()));
        let text = model.render_chat(&messages)?;
        let ids = tok.encode(&text, false)?;
        let (Some(session), None) = (session.as_mut(), &parallel) else {
            // The parallel sampler starts from the whole conversation each turn.
            let pp = parallel
                .as_ref()
                .expect("no session without --sampler parallel");
            let mut out = stdout.lock();
            let reply = parallel_generate(&model, &params, pp, &ids, a, &mut out)?;
            messages.push(ChatMessage::new("Huginn", reply.trim()));
            continue;
        };
        // Reuse the cached prefix when the conversation only grew.
        let h = session.history().to_vec();
        let new: Vec<u32> = if ids.len() > h.len() && ids[..h.len()] == h[..] {
            ids[h.len()..].to_vec()
        } else {
            session.reset();
            ids
        };
        let mut out = stdout.lock();
        let reply = stream_generate(session, &new, a, &mut out)?;
        messages.push(ChatMessage::new("Huginn", reply.trim()));
    }
    Ok(())
}
