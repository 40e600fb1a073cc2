//! `raven bench`: prompt and decode speed, time per core iteration against the memory-bandwidth
//! bound measured in the same run, peak memory; by threads, steps and exit policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use rayon::prelude::*;

use raven::exit::{Criterion, ExitPolicy};
use raven::kv::{parse_kv_type, CacheStrategy};
use raven::run::Threads;
use raven::session::SpecStats;
use raven::{Session, SessionParams};
use raven_quant::KvType;

#[derive(Args)]
pub struct BenchArgs {
    /// The GGUF model (e.g. one written by `raven synth`).
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// Prompt tokens processed in one pass.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 64)]
    n_prompt: usize,
    /// Tokens decoded one at a time.
    #[arg(short = 'n', long = "n-gen", default_value_t = 16)]
    n_gen: usize,
    /// Core iterations per token (comma-separated list).
    #[arg(long, default_value = "32", value_delimiter = ',')]
    steps: Vec<usize>,
    /// Thread counts (comma-separated list; 0 = all cores).
    #[arg(short = 't', long, default_value = "0", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Exit criteria (comma-separated list).
    #[arg(long, default_value = "none", value_delimiter = ',')]
    exit: Vec<String>,
    /// KV cache strategy (default compress-s<core layers>, as `raven run`).
    #[arg(long)]
    cache: Option<String>,
    /// Element types of the KV cache (comma-separated list): f32, f16, q8_0 (default: the
    /// sessions' default, f16).
    #[arg(long = "cache-type", value_delimiter = ',')]
    cache_type: Vec<String>,
    /// Decode after a context of this many positions (comma-separated list) instead of after
    /// the prompt: the cache is filled with random entries for every slot (decode time does not
    /// depend on their values), so a 4096-token context costs no 4096-token prompt. The bound
    /// then counts the cached keys and values each core iteration reads.
    #[arg(long = "context", value_delimiter = ',')]
    context: Vec<usize>,
    /// Also decode the prompt's tokens one by one, to compare with the one-pass prompt.
    #[arg(long = "prompt-one-by-one")]
    one_by_one: bool,
    /// Output: md or json.
    #[arg(short = 'o', long = "output", default_value = "md")]
    output: String,
    /// Budget check: after the unconstrained decode, decode again with --budget-ms set to half
    /// the median unconstrained token time and report how many tokens met budget + 10%.
    #[arg(long = "budget-check")]
    budget_check: bool,
    /// Also decode greedily with self-speculative decoding (draft iterations) and compare.
    #[arg(long = "draft-steps")]
    draft_steps: Option<usize>,
    /// Most drafted tokens per verification (fewer after a rejected draft).
    #[arg(long = "lookahead", default_value_t = 16)]
    lookahead: usize,
    /// Keep Q4_0/Q8_0 weights in the file's row layout (no load-time repacking).
    #[arg(long = "no-repack")]
    no_repack: bool,
    /// Packed Q4_0 kernels read one group of rows at a time instead of three streams side by
    /// side (to compare the two).
    #[arg(long = "one-stream")]
    one_stream: bool,
    /// Skip the memory-bandwidth probe.
    #[arg(long = "no-probe")]
    no_probe: bool,
    /// Instead of the prompt and decode rows: time one core iteration over W positions in one
    /// pass (what a parallel-sampler step with W positions in flight runs per inner iteration)
    /// against a single-position decode iteration, alternated (comma-separated list of W).
    #[arg(long = "wavefront", value_delimiter = ',')]
    wavefront: Vec<usize>,
    /// Rounds of the --wavefront measurement (medians are reported).
    #[arg(long = "rounds", default_value_t = 7)]
    rounds: usize,
}

/// The memory-read probe: sums a 512 MiB buffer from every thread of the pool.
pub struct Probe {
    buf: Vec<u64>,
}

impl Probe {
    pub fn new() -> Probe {
        // 512 MiB of u64, on huge pages where Linux gives them (as the repacked weights get):
        // the bound must be the best this machine reads.
        let mut buf = raven_quant::huge_page_vec(64usize << 20, 0u64);
        for (i, x) in buf.iter_mut().enumerate() {
            *x = i as u64;
        }
        Probe { buf }
    }

    /// One pass: GB/s.
    pub fn once(&self, threads: &Threads) -> f64 {
        let t = Instant::now();
        let s: u64 = threads.run(|| {
            self.buf
                .par_chunks(1 << 16)
                .map(|c| {
                    let mut a = [0u64; 8];
                    for x in c.chunks_exact(8) {
                        for i in 0..8 {
                            a[i] = a[i].wrapping_add(x[i]);
                        }
                    }
                    a.iter().fold(0u64, |x, y| x.wrapping_add(*y))
                })
                .reduce(|| 0, |a, b| a.wrapping_add(b))
        });
        std::hint::black_box(s);
        (self.buf.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // The probe's 512 MiB is not Raven's memory: reset the peak-RSS mark (VmHWM) to what is
        // resident now, so the reported peak RSS does not include it (Linux; elsewhere a no-op).
        self.buf = Vec::new();
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Read bandwidth in GB/s: best of 3 probe passes.
pub fn read_bandwidth(threads: &Threads) -> f64 {
    let p = Probe::new();
    (0..3).map(|_| p.once(threads)).fold(0.0, f64::max)
}

struct Row {
    threads: usize,
    steps: usize,
    exit: String,
    cache_type: KvType,
    /// Positions before the first decoded token.
    context: usize,
    /// Bytes of cached keys and values one core iteration reads (mean over the decode).
    kv_bytes: u64,
    prompt_tps: f64,
    decode_tps: f64,
    one_by_one_tps: Option<f64>,
    mean_iters: f64,
    ms_per_iter: f64,
    bound_ms: Option<f64>,
    bandwidth: Option<f64>,
    /// Median over decoded tokens of (ms per core iteration ÷ bound from a probe pass run just
    /// before that token), and the median of those probes.
    paired: Option<(f64, f64)>,
    peak_rss: Option<u64>,
    budget: Option<(f64, f64, f64, f64)>,
    /// Plain and speculative decode tokens/s, identical output, acceptance, median ratio.
    spec: Option<(f64, f64, bool, SpecStats, f64)>,
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if a.n_prompt == 0 || a.n_gen == 0 {
        bail!("-p and -n must be at least 1");
    }
    let model = Arc::new(crate::load_model_with(
        &a.model,
        raven::model::LoadOptions {
            mmap: true,
            repack: !a.no_repack,
        },
    )?);
    let cache_name = a
        .cache
        .clone()
        .unwrap_or_else(|| format!("compress-s{}", model.config.n_core));
    let cache = CacheStrategy::parse(&cache_name)?;
    let types = if a.cache_type.is_empty() {
        vec![raven::session::DEFAULT_CACHE_TYPE]
    } else {
        a.cache_type
            .iter()
            .map(|t| Ok(parse_kv_type(t)?))
            .collect::<Result<Vec<KvType>>>()?
    };
    // No --context: decode right after the prompt (context 0 stands for that).
    let contexts = if a.context.is_empty() {
        vec![0]
    } else {
        a.context.clone()
    };
    let v = model.config.n_vocab as u32;
    let prompt: Vec<u32> = (0..a.n_prompt as u32)
        .map(|i| (i * 7919 + 13) % v)
        .collect();
    raven_quant::set_streams(!a.one_stream);
    if !a.wavefront.is_empty() {
        return wavefront(a, &model, &cache_name, cache, &types, &prompt);
    }
    let core_bytes = model.core_iteration_bytes();
    // Loading (mapping, repacking) may peak above what stays resident; the probes below reset
    // the peak-RSS mark, so keep this one.
    let load_peak = crate::generate::peak_rss();
    let mut rows = Vec::new();
    for &t in &a.threads {
        let threads = Arc::new(Threads::new(t)?);
        let bw = if a.no_probe {
            None
        } else {
            Some(read_bandwidth(&threads))
        };
        for &steps in &a.steps {
            for exit in &a.exit {
                for &ty in &types {
                    for &context in &contexts {
                        let mut p = SessionParams::for_model(&model);
                        p.exit = ExitPolicy {
                            criterion: Criterion::parse(exit)?,
                            min_steps: 1,
                            max_steps: steps,
                            check_every: 1,
                        };
                        p.cache = cache;
                        p.cache_type = ty;
                        p.ctx = a.n_prompt.max(context) + a.n_gen;
                        if p.ctx > model.config.context {
                            bail!(
                        "--context {context} / -p {} with -n {}: {} positions, more than the model's context of {}",
                        a.n_prompt,
                        a.n_gen,
                        p.ctx,
                        model.config.context
                    );
                        }
                        p.init_scale = 1.0;
                        let mut s =
                            Session::with_threads(model.clone(), p.clone(), threads.clone())?;
                        let t0 = Instant::now();
                        s.prefill(&prompt)?;
                        let prompt_s = t0.elapsed().as_secs_f64();
                        if context > 0 {
                            s.fill_synthetic_context(context)?;
                        }
                        // Keys and values one core iteration reads: every core layer's rows of the
                        // positions seen (the context, then the decoded tokens: their mean).
                        let c = &model.config;
                        let seen = s.len() as u64 + a.n_gen as u64 / 2;
                        let kv_bytes = c.n_core as u64 * seen * 2 * ty.bytes(c.kv_width() as u64);
                        let iter_bytes = core_bytes as f64 + kv_bytes as f64;
                        let mut iters = 0usize;
                        let mut core_ms = 0.0;
                        let mut token_ms = Vec::new();
                        // Paired bound: a probe pass right before each token (this host's bandwidth
                        // drifts within seconds), timed apart from the decode.
                        let probe = (!a.no_probe).then(Probe::new);
                        let (mut ratios, mut probes) = (Vec::new(), Vec::new());
                        let mut gen_s = 0.0;
                        for i in 0..a.n_gen {
                            let pg = probe.as_ref().map(|p| p.once(&threads));
                            let t1 = Instant::now();
                            let st = s.step(prompt[i % prompt.len()])?;
                            gen_s += t1.elapsed().as_secs_f64();
                            iters += st.steps;
                            core_ms += st.core_ms;
                            token_ms.push(st.ms);
                            if let Some(pg) = pg {
                                let bound = iter_bytes / (pg * 1e9) * 1e3;
                                ratios.push(st.core_ms / st.steps.max(1) as f64 / bound);
                                probes.push(pg);
                            }
                        }
                        drop(probe);
                        let paired = (!ratios.is_empty())
                            .then(|| (median(&mut ratios), median(&mut probes)));
                        // This host's bandwidth drifts within minutes: probe again right after the
                        // decode and take the better figure, so the bound stays a bound.
                        let bw = bw.map(|b| b.max(read_bandwidth(&threads)));
                        let budget = if a.budget_check {
                            let med = median(&mut token_ms);
                            let b = med / 2.0;
                            let mut pb = p.clone();
                            pb.budget_ms = Some(b);
                            let mut sb = Session::with_threads(model.clone(), pb, threads.clone())?;
                            sb.prefill(&prompt)?;
                            let (mut within, mut iters_b) = (0usize, 0usize);
                            for i in 0..a.n_gen {
                                let st = sb.step(prompt[i % prompt.len()])?;
                                within += (st.ms <= b * 1.1) as usize;
                                iters_b += st.steps;
                            }
                            let pct = 100.0 * within as f64 / a.n_gen as f64;
                            Some((med, b, pct, iters_b as f64 / a.n_gen as f64))
                        } else {
                            None
                        };
                        let one_by_one_tps = if a.one_by_one {
                            let mut s2 =
                                Session::with_threads(model.clone(), p.clone(), threads.clone())?;
                            let t2 = Instant::now();
                            for &tok in &prompt {
                                s2.step(tok)?;
                            }
                            Some(a.n_prompt as f64 / t2.elapsed().as_secs_f64())
                        } else {
                            None
                        };
                        let spec = match a.draft_steps {
                            None => None,
                            Some(d) => {
                                let mut pg = p.clone();
                                pg.init_scale = 0.0;
                                pg.sampling = raven::sample::SamplingParams::greedy();
                                pg.ctx = a.n_prompt + a.n_gen + a.lookahead + 2;
                                pg.ignore_eos = true;
                                // Decode speed: tokens after the first (which follows the prompt's
                                // pass) over the time since it, as for the plain decode above.
                                let run = |spec: bool| -> Result<(f64, Vec<u32>, SpecStats)> {
                                    let mut s = Session::with_threads(
                                        model.clone(),
                                        pg.clone(),
                                        threads.clone(),
                                    )?;
                                    let mut toks = Vec::new();
                                    let mut first = None;
                                    let f = |tok: u32, _: &raven::session::TokenStats| {
                                        first.get_or_insert_with(Instant::now);
                                        toks.push(tok);
                                        true
                                    };
                                    if spec {
                                        s.generate_speculative(
                                            &prompt,
                                            a.n_gen,
                                            &[],
                                            d,
                                            a.lookahead,
                                            f,
                                        )?;
                                    } else {
                                        s.generate(&prompt, a.n_gen, &[], f)?;
                                    }
                                    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
                                    let tps =
                                        (toks.len().saturating_sub(1)) as f64 / secs.max(1e-9);
                                    Ok((tps, toks, s.speculative_stats()))
                                };
                                // Five pairs, plain then speculative, medians: one pass of a small
                                // model lasts tens of milliseconds, shorter than this host's drifts.
                                let (mut pt, mut stps, mut ratios) = (vec![], vec![], vec![]);
                                let mut same = true;
                                let mut stats = SpecStats::default();
                                for _ in 0..5 {
                                    let (plain_tps, plain, _) = run(false)?;
                                    let (spec_tps, spec, st) = run(true)?;
                                    same &= plain == spec;
                                    stats = st;
                                    ratios.push(spec_tps / plain_tps);
                                    pt.push(plain_tps);
                                    stps.push(spec_tps);
                                }
                                Some((
                                    median(&mut pt),
                                    median(&mut stps),
                                    same,
                                    stats,
                                    median(&mut ratios),
                                ))
                            }
                        };
                        rows.push(Row {
                            threads: threads.count(),
                            steps,
                            exit: exit.clone(),
                            cache_type: ty,
                            context: s.len() - a.n_gen,
                            kv_bytes,
                            prompt_tps: a.n_prompt as f64 / prompt_s,
                            decode_tps: a.n_gen as f64 / gen_s,
                            one_by_one_tps,
                            mean_iters: iters as f64 / a.n_gen as f64,
                            ms_per_iter: core_ms / iters.max(1) as f64,
                            bound_ms: bw.map(|b| iter_bytes / (b * 1e9) * 1e3),
                            bandwidth: bw,
                            paired,
                            peak_rss: crate::generate::peak_rss().max(load_peak),
                            budget,
                            spec,
                        });
                    }
                }
            }
        }
    }
    let file_mb = std::fs::metadata(&a.model)
        .map(|m| m.len() as f64 / 1e6)
        .unwrap_or(0.0);
    if a.output == "json" {
        let arr: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "model": a.model.display().to_string(), "file_mb": file_mb, "isa": raven_quant::isa(),
                    "threads": r.threads, "steps": r.steps, "exit": r.exit, "cache": cache_name,
                    "cache_type": r.cache_type.name(), "context": r.context, "kv_bytes_per_core_iteration": r.kv_bytes,
                    "n_prompt": a.n_prompt, "n_gen": a.n_gen,
                    "prompt_tokens_per_s": r.prompt_tps, "decode_tokens_per_s": r.decode_tps,
                    "prompt_one_by_one_tokens_per_s": r.one_by_one_tps,
                    "mean_iterations": r.mean_iters, "ms_per_core_iteration": r.ms_per_iter,
                    "iterations_per_s": 1e3 / r.ms_per_iter,
                    "core_iteration_bytes": core_bytes, "read_bandwidth_gb_s": r.bandwidth,
                    "bandwidth_bound_ms": r.bound_ms, "peak_rss_bytes": r.peak_rss,
                    "iteration_over_paired_bound_median": r.paired.map(|p| p.0),
                    "paired_probe_gb_s_median": r.paired.map(|p| p.1),
                    "speculative": r.spec.map(|(plain, spec, same, st, ratio)| serde_json::json!({
                        "draft_steps": a.draft_steps, "lookahead": a.lookahead,
                        "plain_decode_tokens_per_s": plain, "speculative_decode_tokens_per_s": spec,
                        "identical": same, "speedup_median": ratio, "rounds": st.rounds, "drafted": st.drafted, "accepted": st.accepted})),
                    "budget_check": r.budget.map(|(med, b, pct, it)| serde_json::json!({
                        "median_token_ms": med, "budget_ms": b, "pct_within_budget_plus_10": pct, "mean_iterations": it})),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr)?);
        return Ok(());
    }
    println!(
        "model {} ({file_mb:.0} MB, {}), kernels {}, cache {}, prompt {} tokens, decode {} tokens; one core iteration reads {:.1} MB",
        a.model.display(),
        model.name(),
        raven_quant::isa(),
        cache_name,
        a.n_prompt,
        a.n_gen,
        core_bytes as f64 / 1e6
    );
    println!("\n| threads | steps | exit | cache type | context | KV MB/iter | prompt t/s | decode t/s | prompt 1-by-1 t/s | iters/token | ms/iter | bound ms/iter (best read GB/s) | iter/bound | iter/bound paired (probe GB/s) | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2} | {:.3} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.threads,
            r.steps,
            r.exit,
            r.cache_type,
            r.context,
            r.kv_bytes as f64 / 1e6,
            r.prompt_tps,
            r.decode_tps,
            r.one_by_one_tps
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "-".into()),
            r.mean_iters,
            r.ms_per_iter,
            match (r.bound_ms, r.bandwidth) {
                (Some(b), Some(g)) => format!("{b:.2} ({g:.1})"),
                _ => "-".into(),
            },
            r.bound_ms
                .map(|b| format!("{:.2}", r.ms_per_iter / b))
                .unwrap_or_else(|| "-".into()),
            r.paired
                .map(|(q, g)| format!("{q:.2} ({g:.1})"))
                .unwrap_or_else(|| "-".into()),
            r.peak_rss
                .map(|b| format!("{:.0}", b as f64 / 1e6))
                .unwrap_or_else(|| "-".into()),
        );
    }
    for r in rows.iter().filter(|r| r.spec.is_some()) {
        let (plain, spec, same, st, ratio) = r.spec.unwrap_or_default();
        println!(
            "\nspeculative ({} threads, {} steps, draft {} iterations, lookahead {}; medians of 5 pairs): plain greedy decode {plain:.2} tokens/s, speculative {spec:.2} tokens/s: {ratio:.2}x, output {}; {} of {} drafted tokens accepted ({:.0}%) in {} rounds",
            r.threads,
            r.steps,
            a.draft_steps.unwrap_or(0),
            a.lookahead,
            if same { "identical" } else { "DIFFERS" },
            st.accepted,
            st.drafted,
            100.0 * st.accepted as f64 / st.drafted.max(1) as f64,
            st.rounds,
        );
    }
    for r in rows.iter().filter(|r| r.budget.is_some()) {
        let (med, b, pct, it) = r.budget.unwrap_or_default();
        println!(
            "\nbudget check ({} threads, {} steps, exit {}): unconstrained median {med:.2} ms/token; with --budget-ms {b:.2}: {pct:.1}% of tokens within budget + 10%, {it:.2} iterations/token",
            r.threads, r.steps, r.exit
        );
    }
    Ok(())
}

/// One `--wavefront` row: milliseconds per core iteration over `w` positions and over one
/// (medians), the median of the rounds' ratios and their range.
struct WaveRow {
    threads: usize,
    steps: usize,
    ty: KvType,
    w: usize,
    ms: f64,
    one: f64,
    ratio: f64,
    lo: f64,
    hi: f64,
}

/// `--wavefront`: per thread count, steps and cache type, `rounds` rounds of one single-position decode
/// step and one pass of W positions for every W, each at `steps` fixed iterations after the
/// prompt (and truncated back to it), timing their core iterations (adapter + core blocks, as
/// the engine reports them). Medians over rounds; the ratio is the median of the rounds' own
/// ratios, so a drift of the host's bandwidth between rounds cancels.
fn wavefront(
    a: &BenchArgs,
    model: &Arc<raven::Model>,
    cache_name: &str,
    cache: CacheStrategy,
    types: &[KvType],
    prompt: &[u32],
) -> Result<()> {
    use raven::engine::{Init, TokenControl};
    use raven::kv::KvCache;
    if a.wavefront.contains(&0) || a.rounds == 0 {
        bail!("--wavefront sizes and --rounds must be at least 1");
    }
    // What the prompt/decode rows measure has no meaning here: refused rather than ignored.
    let others = [
        ("--context", !a.context.is_empty()),
        ("--exit", a.exit.iter().any(|e| e != "none")),
        ("--prompt-one-by-one", a.one_by_one),
        ("--budget-check", a.budget_check),
        ("--draft-steps", a.draft_steps.is_some()),
    ];
    if let Some((flag, _)) = others.iter().find(|(_, set)| *set) {
        bail!("--wavefront times fixed iterations right after the prompt: {flag} does not apply");
    }
    let c = &model.config;
    let wmax = a.wavefront.iter().copied().max().unwrap_or(1);
    let ctx = a.n_prompt + wmax;
    if ctx > c.context {
        bail!(
            "-p {} with --wavefront {wmax}: {ctx} positions, more than the model's context of {}",
            a.n_prompt,
            c.context
        );
    }
    let mut out = Vec::new();
    for &t in &a.threads {
        let threads = Arc::new(Threads::new(t)?);
        for (&steps, &ty) in a
            .steps
            .iter()
            .flat_map(|s| types.iter().map(move |t| (s, t)))
        {
            let kv = KvCache::new(c, cache, ty, ctx, steps)?;
            let mut e = raven::Engine::new(model.clone(), kv, threads.clone());
            let mut rng = raven::rng::Rng::new(0);
            let ctl = || TokenControl {
                policy: ExitPolicy::fixed(steps),
                budget_ms: None,
                start: Instant::now(),
                cancel: None,
            };
            e.pass(prompt, 1, Init::Random(0.0, &mut rng), None, &ctl())?;
            let base = e.len();
            // Per round: the single-position iteration, then every W's iteration (ms).
            let mut single = Vec::new();
            let mut per_w: Vec<Vec<f64>> = vec![Vec::new(); a.wavefront.len()];
            let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); a.wavefront.len()];
            for round in 0..a.rounds + 1 {
                let tok = prompt[round % prompt.len()];
                let o = e.step(tok, Init::Random(0.0, &mut rng), &ctl())?;
                e.truncate(base);
                let one = o.core_ms / o.steps.max(1) as f64;
                let mut row = Vec::new();
                for &w in &a.wavefront {
                    let toks: Vec<u32> =
                        (0..w).map(|i| prompt[(round + i) % prompt.len()]).collect();
                    let o = e.pass(&toks, 1, Init::Random(0.0, &mut rng), None, &ctl())?;
                    e.truncate(base);
                    row.push(o.core_ms / o.steps.max(1) as f64);
                }
                // The first round warms the caches and the pool: not counted.
                if round == 0 {
                    continue;
                }
                single.push(one);
                for (i, ms) in row.into_iter().enumerate() {
                    per_w[i].push(ms);
                    ratios[i].push(ms / one);
                }
            }
            let one = median(&mut single);
            for (i, &w) in a.wavefront.iter().enumerate() {
                let ms = median(&mut per_w[i]);
                let (lo, hi) = (
                    ratios[i].iter().copied().fold(f64::INFINITY, f64::min),
                    ratios[i].iter().copied().fold(0.0, f64::max),
                );
                out.push(WaveRow {
                    threads: threads.count(),
                    steps,
                    ty,
                    w,
                    ms,
                    one,
                    ratio: median(&mut ratios[i]),
                    lo,
                    hi,
                });
            }
        }
    }
    if a.output == "json" {
        let arr: Vec<serde_json::Value> = out
            .iter()
            .map(|r| {
                serde_json::json!({
                    "model": a.model.display().to_string(), "isa": raven_quant::isa(),
                    "threads": r.threads, "steps": r.steps, "cache": cache_name,
                    "cache_type": r.ty.name(), "context": a.n_prompt, "wavefront": r.w,
                    "rounds": a.rounds, "ms_per_core_iteration": r.ms,
                    "single_position_ms_per_core_iteration": r.one, "ratio_median": r.ratio,
                    "ratio_min": r.lo, "ratio_max": r.hi, "ms_per_position": r.ms / r.w as f64,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr)?);
        return Ok(());
    }
    println!(
        "model {} ({}), kernels {}, cache {cache_name}, after a {}-token prompt; one core iteration over W positions in one pass against a single-position decode iteration, {} alternated rounds (medians; ratio: median of the rounds' ratios, min-max)",
        a.model.display(),
        model.name(),
        raven_quant::isa(),
        a.n_prompt,
        a.rounds
    );
    println!("\n| threads | steps | cache type | W | ms per core iteration | single-position ms | × single (min-max) | ms per position |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &out {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} ({:.2}-{:.2}) | {:.2} |",
            r.threads,
            r.steps,
            r.ty.name(),
            r.w,
            r.ms,
            r.one,
            r.ratio,
            r.lo,
            r.hi,
            r.ms / r.w as f64
        );
    }
    Ok(())
}
