//! The `raven` command: convert Hugging Face Huginn checkpoints to GGUF, inspect GGUF files, and
//! compute logits (SPEC §4). It only wires the library crates together.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use raven::convert::{OutType, Progress};
use raven::exit::{Criterion, ExitPolicy};
use raven::kv::CacheStrategy;
use raven::run::{LogitsOptions, Threads};
use raven::Model;

mod bench;
mod demo;
mod eval;
mod eval_seq;
mod generate;
mod inspect;

#[derive(Parser)]
#[command(
    name = "raven",
    version,
    about = "Run recurrent-depth latent-reasoning models (Huginn) on CPUs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert a Hugging Face Huginn checkpoint directory to a GGUF file.
    Convert {
        /// The checkpoint directory (config.json, *.safetensors, tokenizer.json …).
        hf_dir: PathBuf,
        /// The GGUF file to write (written atomically).
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// Weight type: f32, f16, bf16, q8_0 or q4_0.
        #[arg(long = "type", default_value = "f16")]
        ty: String,
    },
    /// Show a GGUF model's metadata, tensors and the memory a session needs.
    Inspect {
        /// The GGUF file.
        model: PathBuf,
        /// Context length to size the KV cache for (default: the model's).
        #[arg(long)]
        ctx: Option<usize>,
        /// Maximum core iterations to size the cache for (default: the model's mean recurrence).
        #[arg(long)]
        steps: Option<usize>,
        /// Print every metadata value in full.
        #[arg(long)]
        all: bool,
    },
    /// Compute logits for a token sequence and write them to a safetensors file.
    Logits(LogitsArgs),
    /// Generate text from a prompt, streaming it.
    Run {
        /// The prompt.
        #[arg(
            short = 'p',
            long = "prompt",
            required_unless_present = "prompt_tokens"
        )]
        prompt: Option<String>,
        /// The prompt as token ids, 1,2,3 (instead of -p; for scripts that check generation
        /// exactly).
        #[arg(long = "prompt-tokens", conflicts_with_all = ["prompt", "chat"])]
        prompt_tokens: Option<String>,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        #[command(flatten)]
        gen: generate::GenArgs,
    },
    /// Measure prompt and decode speed, time per core iteration against the memory-bandwidth bound.
    Bench(bench::BenchArgs),
    /// Write a model of Huginn-0125's shape with random weights: a GGUF (`-o`), or a Hugging
    /// Face checkpoint in the published layout (`--hf DIR`) to run `raven convert` on.
    Synth {
        /// Output GGUF.
        #[arg(
            short = 'o',
            long = "out",
            required_unless_present = "hf",
            conflicts_with = "hf"
        )]
        out: Option<PathBuf>,
        /// Write a Hugging Face checkpoint into this (new or empty) directory instead:
        /// config.json, bf16 safetensors shards named, ordered and split as save_pretrained
        /// does, the index, tokenizer.json, tokenizer_config.json, generation_config.json.
        #[arg(long, value_name = "DIR")]
        hf: Option<PathBuf>,
        /// Weight type of the GGUF: f32, f16, bf16, q8_0, q4_0.
        #[arg(long = "type", default_value = "q4_0")]
        ty: String,
        /// Shape: huginn-0125 (or huginn-0125/N: h, F and heads divided by N), ouro-1.4b,
        /// ouro-2.6b, recurrent-llama-3.2, recurrent-olmo-2: the published models' exact shapes.
        #[arg(long, default_value = "huginn-0125")]
        shape: String,
        /// Blocks in prelude, core and coda, P,C,K (default the shape's, 2,4,2).
        #[arg(long, value_name = "P,C,K")]
        layers: Option<String>,
        /// Embedding rows (default the shape's, 65536).
        #[arg(long)]
        vocab: Option<usize>,
        /// With --hf: the largest shard in bytes (save_pretrained's max_shard_size; default the
        /// family's published layout: Huginn 2 GiB, retrofitted 5 GB, Ouro one file).
        #[arg(long, value_name = "BYTES")]
        max_shard_size: Option<u64>,
        /// With --hf: element type of the tensors, bf16 (as published) or f32.
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// With --hf: ship this tokenizer.json instead of a synthetic one that fills the
        /// vocabulary (a smaller one leaves embedding rows no token decodes to).
        #[arg(long, value_name = "FILE")]
        tokenizer: Option<PathBuf>,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Accuracy of the demo task by difficulty against iterations and exit policies.
    Eval(eval::EvalArgs),
    /// The multi-token demo (models/demo-trace) decoded to the end of each reply by plain
    /// decoding, adaptive exit, speculative decoding and the parallel sampler: accuracy by level
    /// and wall time, side by side.
    EvalSeq(eval_seq::EvalSeqArgs),
    /// Serve the model over HTTP: OpenAI-compatible /v1/chat/completions, /v1/completions,
    /// /v1/models and /health (the generation options below are the defaults requests override).
    Serve(ServeArgs),
    /// Chat interactively with the model's chat template.
    Chat {
        /// A system message.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        gen: generate::GenArgs,
    },
}

#[derive(Args)]
struct LogitsArgs {
    /// The GGUF model.
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// Comma-separated token ids.
    #[arg(long)]
    tokens: String,
    /// Core iterations (default: the model's mean recurrence).
    #[arg(long)]
    steps: Option<usize>,
    /// Initial-state scale (0 = zero state).
    #[arg(long = "init-scale", default_value_t = 1.0)]
    init_scale: f32,
    /// Seed of the initial state.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Per-token exit criterion CRIT[:τ]: kl, minp-kl, entropy-diff, latent-diff, cosine, argmax-stability, none.
    #[arg(long)]
    exit: Option<String>,
    /// Maximum iterations with --exit (default: --steps).
    #[arg(long = "max-steps")]
    max_steps: Option<usize>,
    /// Minimum iterations with --exit.
    #[arg(long = "min-steps", default_value_t = 1)]
    min_steps: usize,
    /// Check the exit criterion every n iterations.
    #[arg(long = "check-every", default_value_t = 1)]
    check_every: usize,
    /// KV cache strategy: full, compress-sK, latest-mC.
    #[arg(long, default_value = "full")]
    cache: String,
    /// Element type of cached keys and values: f32 (default here: exactness), f16, q8_0.
    #[arg(long = "cache-type", default_value = "f32")]
    cache_type: String,
    /// Process the first N tokens in one pass, the rest one at a time through the cache. With
    /// --exit the N tokens exit together (criterion on the last one, latent criteria averaged),
    /// as the official generation runs a prompt.
    #[arg(long = "decode-from")]
    decode_from: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    threads: usize,
    /// Read the model into memory instead of mapping it.
    #[arg(long = "no-mmap")]
    no_mmap: bool,
    /// Compute with the readable reference forward (src/reference.rs: SPEC §1 line by line,
    /// f32, no cache) instead of the fast path: the oracle the tests hold the fast path to,
    /// slow (seconds per token at full size). Needs --init-scale 0; no --exit, --decode-from.
    #[arg(long)]
    reference: bool,
    /// Output safetensors file (`logits` f32 [T, V], `steps` i32 [T]).
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (loopback by default: expose it deliberately).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model id clients send (default: the file name without .gguf, or raven-demo).
    #[arg(long)]
    alias: Option<String>,
    /// Generations that run at once; the cores are divided among them.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Requests that may wait for a free generation; beyond that: 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest max_tokens a request may ask for (and the default when it asks for none).
    #[arg(long = "max-tokens-limit", default_value_t = 4096)]
    max_tokens_limit: usize,
    /// Largest request body in bytes.
    #[arg(long = "max-body-bytes", default_value_t = 1 << 20)]
    max_body_bytes: usize,
    #[command(flatten)]
    gen: generate::GenArgs,
}

fn serve(a: ServeArgs) -> Result<()> {
    if a.gen.parallel()? {
        bail!("--sampler parallel: raven serve takes the sampler per request: send \"sampler\": \"parallel\" (with parallel_mode, inner_steps, wavefront, headway, ema, noise, noise_dampened, noise_sqrt, max_sampler_steps) in the request body");
    }
    let model = a.gen.load()?;
    let defaults = a.gen.params(&model)?;
    let model_id = a.alias.clone().unwrap_or_else(|| match &a.gen.model {
        Some(p) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "raven".into()),
        None => "raven-demo".into(),
    });
    let o = raven_server::ServeOptions {
        host: a.host,
        port: a.port,
        model_id: model_id.clone(),
        parallel: a.parallel,
        threads: a.gen.threads,
        queue: a.queue,
        max_tokens_limit: a.max_tokens_limit,
        max_body_bytes: a.max_body_bytes,
        defaults,
    };
    raven_server::serve(model, o, move |addr| {
        eprintln!("raven serve: {model_id} on http://{addr} (Ctrl-C to stop)");
    })?;
    eprintln!("raven serve: stopped");
    Ok(())
}

struct Bar(Option<indicatif::ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, total: u64) {
        if std::io::stderr().is_terminal() {
            let pb = indicatif::ProgressBar::new(total);
            pb.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            self.0 = Some(pb);
        }
    }
    fn advance(&mut self, done: u64, name: &str) {
        if let Some(pb) = &self.0 {
            pb.set_position(done);
            pb.set_message(name.to_string());
        }
    }
    fn note(&mut self, msg: &str) {
        match &self.0 {
            Some(pb) => pb.println(format!("note: {msg}")),
            None => eprintln!("note: {msg}"),
        }
    }
}

pub(crate) fn load_model(path: &Path, no_mmap: bool) -> Result<Model> {
    load_model_with(
        path,
        raven::model::LoadOptions {
            mmap: !no_mmap,
            repack: true,
        },
    )
}

pub(crate) fn load_model_with(path: &Path, o: raven::model::LoadOptions) -> Result<Model> {
    if !path.exists() {
        bail!(
            "{}: no such file (convert a checkpoint first with `raven convert HF_DIR -o {}`)",
            path.display(),
            path.display()
        );
    }
    if path.is_dir() {
        bail!("{}: is a directory, not a GGUF model file", path.display());
    }
    Model::load_with(path, o).with_context(|| format!("cannot load model {}", path.display()))
}

fn parse_tokens(s: &str, flag: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>().with_context(|| {
                format!("{flag}: \"{t}\" is not a token id (a non-negative integer)")
            })
        })
        .collect()
}

/// Writes f32 `logits` [t, v] and i32 `steps` [t] to a safetensors file, atomically.
fn write_logits(path: &Path, logits: &[f32], t: usize, v: usize, steps: &[i32]) -> Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let lb: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let sb: Vec<u8> = steps.iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        (
            "logits".to_string(),
            TensorView::new(Dtype::F32, vec![t, v], &lb)?,
        ),
        (
            "steps".to_string(),
            TensorView::new(Dtype::I32, vec![t], &sb)?,
        ),
    ];
    let bytes = safetensors::serialize(views, None)?;
    write_atomic(path, &bytes)
}

/// Fails early, naming `flag`, when `path` cannot be an output file: its directory is missing or
/// it is itself a directory. Saves computing a result that could not be written.
pub(crate) fn check_output(flag: &str, path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.file_name().is_none() {
        bail!("{flag} {}: names no file", path.display());
    }
    if !dir.is_dir() {
        bail!(
            "{flag} {}: the directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        bail!("{flag} {}: is a directory, not a file name", path.display());
    }
    Ok(())
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("-o {}: names no file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

fn cmd_logits(a: LogitsArgs) -> Result<()> {
    let tokens = parse_tokens(&a.tokens, "--tokens")?;
    let cache = CacheStrategy::parse(&a.cache)?;
    if !(a.init_scale.is_finite() && a.init_scale >= 0.0) {
        bail!("--init-scale {}: must be a finite number ≥ 0", a.init_scale);
    }
    if a.steps == Some(0) {
        bail!("--steps 0: must be at least 1");
    }
    if a.reference {
        if a.exit.is_some() || a.decode_from.is_some() {
            bail!("--reference computes the one-pass forward: it takes neither --exit nor --decode-from");
        }
        if a.init_scale != 0.0 {
            bail!("--reference needs --init-scale 0 (the reference starts from a zero state)");
        }
    }
    check_output("-o", &a.out)?;
    let m = load_model(&a.model, a.no_mmap)?;
    let (v, ctx) = (m.config.n_vocab, m.config.context);
    if let Some(t) = tokens.iter().find(|&&t| t as usize >= v) {
        bail!("--tokens: id {t} is outside the model's vocabulary (0..{v})");
    }
    if tokens.len() > ctx {
        bail!(
            "--tokens: {} tokens, more than the model's context of {ctx}",
            tokens.len()
        );
    }
    let steps = a.steps.unwrap_or(m.config.mean_recurrence);
    let exit = match &a.exit {
        None => None,
        Some(e) => {
            let p = ExitPolicy {
                criterion: Criterion::parse(e)?,
                min_steps: a.min_steps,
                max_steps: a.max_steps.unwrap_or(steps),
                check_every: a.check_every,
            };
            p.validate()?;
            Some(p)
        }
    };
    let threads = Threads::new(a.threads)?;
    if a.reference {
        let s0 = vec![vec![0.0; m.config.n_embd]; tokens.len()];
        let out = threads.run(|| raven::reference::forward(&m, &tokens, steps, s0));
        let steps = vec![steps as i32; tokens.len()];
        return write_logits(&a.out, &out.logits.concat(), tokens.len(), v, &steps);
    }
    let opts = LogitsOptions {
        steps,
        init_scale: a.init_scale,
        seed: a.seed,
        exit,
        cache,
        cache_type: raven::kv::parse_kv_type(&a.cache_type)?,
        decode_from: a.decode_from,
    };
    let out = raven::run::logits(&m, &tokens, &opts, &threads)?;
    write_logits(
        &a.out,
        &out.logits,
        tokens.len(),
        m.config.n_vocab,
        &out.steps,
    )
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Serve(..)) {
        quiet_on_closed_stdout();
    }
    match cli.cmd {
        Cmd::Convert { hf_dir, out, ty } => {
            let ty = OutType::parse(&ty)?;
            let mut bar = Bar(None);
            let rep = raven::convert::convert(&hf_dir, &out, ty, &mut bar)
                .with_context(|| format!("cannot convert {}", hf_dir.display()))?;
            if let Some(pb) = &bar.0 {
                pb.finish_and_clear();
            }
            eprintln!(
                "wrote {} ({} tensors, {:.1} MB)",
                out.display(),
                rep.n_tensors,
                rep.bytes as f64 / 1e6
            );
            Ok(())
        }
        Cmd::Inspect {
            model,
            ctx,
            steps,
            all,
        } => inspect::run(&model, ctx, steps, all),
        Cmd::Logits(a) => cmd_logits(a),
        Cmd::Bench(a) => bench::run(&a),
        Cmd::Eval(a) => eval::run(&a),
        Cmd::EvalSeq(a) => eval_seq::run(&a),
        Cmd::Synth {
            out,
            hf,
            ty,
            shape,
            layers,
            vocab,
            max_shard_size,
            dtype,
            tokenizer,
            seed,
        } => {
            let mut c = raven::synth::shape(&shape)?;
            if let Some(l) = &layers {
                let n: Vec<usize> = l
                    .split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<std::result::Result<_, _>>()
                    .ok()
                    .filter(|n: &Vec<usize>| n.len() == 3 && n[1] > 0)
                    .with_context(|| {
                        format!("--layers {l}: expected P,C,K (three counts, C at least 1)")
                    })?;
                (c.n_prelude, c.n_core, c.n_coda) = (n[0], n[1], n[2]);
            }
            if let Some(v) = vocab {
                if v == 0 {
                    bail!("--vocab must be at least 1");
                }
                c.n_vocab = v;
            }
            if let Some(dir) = hf {
                let dtype = match dtype.as_str() {
                    "bf16" => raven::synth::HfDtype::BF16,
                    "f32" => raven::synth::HfDtype::F32,
                    _ => bail!("--dtype {dtype}: use bf16 or f32"),
                };
                let tokenizer_json = match &tokenizer {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .with_context(|| format!("--tokenizer {}", p.display()))?,
                    ),
                    None => None,
                };
                let o = raven::synth::HfOptions {
                    seed,
                    max_shard_bytes: max_shard_size
                        .unwrap_or(raven::synth::default_shard_bytes(c.family)),
                    dtype,
                    tokenizer_json,
                };
                let r = raven::synth::write_hf(&c, &dir, &o)?;
                eprintln!(
                    "wrote {} ({} tensors, {:.1} MB in {} shards)",
                    dir.display(),
                    r.n_tensors,
                    r.total_bytes as f64 / 1e6,
                    r.shards.len()
                );
                return Ok(());
            }
            let out = out.expect("clap requires -o without --hf");
            let bytes = raven::synth::write_random(&c, OutType::parse(&ty)?, seed, &out)?;
            eprintln!("wrote {} ({:.1} MB)", out.display(), bytes as f64 / 1e6);
            Ok(())
        }
        Cmd::Run {
            prompt,
            prompt_tokens,
            chat,
            gen,
        } => {
            let prompt = match (prompt, prompt_tokens) {
                (_, Some(t)) => generate::Prompt::Tokens(parse_tokens(&t, "--prompt-tokens")?),
                (Some(p), None) => generate::Prompt::Text(p),
                (None, None) => bail!("-p or --prompt-tokens is required"),
            };
            generate::run(&gen, &prompt, chat)
        }
        Cmd::Chat { system, gen } => generate::chat(&gen, system.as_deref()),
        Cmd::Serve(a) => serve(a),
    }
}

/// `a: b: c` like anyhow's `{:#}`, but without a cause its parent's message already shows (an
/// I/O error quoted by the error that wraps it would otherwise appear twice).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut prev = String::new();
    for cause in e.chain() {
        // The library names an invalid parameter neutrally; here it is the flag that set it.
        let t = match cause.downcast_ref::<raven::RavenError>() {
            Some(r) => r.message_for(raven::Param::cli),
            None => cause.to_string(),
        };
        if !prev.contains(&t) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&t);
        }
        prev = t;
    }
    out
}

/// Like other command-line tools, end quietly when the reader of stdout goes away
/// (`raven inspect m.gguf | head`): Rust ignores SIGPIPE, so println! panicked instead.
/// Not for `serve`: a client that hangs up mid-stream would kill the server (its sockets are
/// written with `write`, which raises SIGPIPE); there a closed peer is an error to handle.
fn quiet_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}
