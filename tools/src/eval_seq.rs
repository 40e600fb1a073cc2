//! `raven eval-seq`: the multi-token demo (models/demo-trace: where the ball is after every
//! swap) decoded to the end of the reply by each decoding method, side by side in one process:
//! plain decoding at fixed r, adaptive exit, self-speculative decoding and the parallel
//! (diffusion-forcing) sampler at several (r′, W, ε). Per method: whole-reply accuracy, the
//! single answer's accuracy (the reply's last answer, which is the single-answer task's) and
//! the first answer's, by level; total wall time over the set; speed-up against plain r = 32.
//!
//! Protocol: zero initial state, greedy, instances one after the other with the same engine
//! threads (`--threads`, default 2), each from an empty cache. A reply is right when the tokens
//! generated up to the first stop token equal the answer's tokens and a stop token ended them.
//! Wall time is that of the generation calls (session creation, prefill and decoding) summed
//! over the set; with `--repeat N` each method runs N times, methods interleaved, and the
//! fastest total counts (the answers are the same every time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use raven::exit::{Criterion, ExitPolicy};
use raven::kv::{parse_kv_type, CacheStrategy};
use raven::parallel::{Mode, Observe, ParallelParams};
use raven::run::Threads;
use raven::{Model, Session, SessionParams};

#[derive(Args)]
pub struct EvalSeqArgs {
    /// The GGUF model.
    #[arg(
        short = 'm',
        long = "model",
        default_value = "models/demo-trace/demo-trace-q8_0.gguf"
    )]
    model: PathBuf,
    /// The evaluation set (JSON lines with prompt_token_ids, answer_token_ids, answer_index,
    /// level).
    #[arg(long = "set", default_value = "models/demo-trace/eval_set.jsonl")]
    set: PathBuf,
    /// Plain decoding at these fixed iteration counts (the largest is the baseline).
    #[arg(long, default_value = "1,2,4,8,16,32", value_delimiter = ',')]
    steps: Vec<usize>,
    /// Adaptive exit policies (CRIT[:τ]), at most --max-steps iterations.
    #[arg(
        long,
        default_value = "latent-diff:0.03,latent-diff:0.01,kl:1e-3",
        value_delimiter = ','
    )]
    exit: Vec<String>,
    /// Self-speculative decoding settings DRAFT_STEPS:LOOKAHEAD (verified at --max-steps).
    #[arg(long, default_value = "4:8,8:8", value_delimiter = ',')]
    speculative: Vec<String>,
    /// Parallel sampler settings [official:|corrected:]R′:W:ε[:N] (inner iterations per sampler
    /// step, most wavefront positions, latent-diff threshold, num_steps = the prompt's
    /// iterations and a position's most, default --max-steps; corrected mode if not named;
    /// ε = none: the fixed rule).
    #[arg(
        long,
        default_value = "4:16:0.03,4:16:0.01,2:16:0.03,8:16:0.03,4:4:0.03,4:16:none,official:4:128:0.03,4:16:0.03:16,4:16:0.03:12,2:16:0.03:12,4:16:0.03:8",
        value_delimiter = ','
    )]
    parallel: Vec<String>,
    /// Momentum η of the parallel sampler's conditioning.
    #[arg(long, default_value_t = 0.1)]
    ema: f64,
    /// Maximum iterations (the baseline's r, exit policies' and the sampler's num_steps).
    #[arg(long = "max-steps", default_value_t = 32)]
    max_steps: usize,
    /// KV cache of plain, adaptive and speculative decoding (full: equal to the one-pass
    /// training forward, and what speculative decoding needs to equal plain decoding).
    #[arg(long, default_value = "full")]
    cache: String,
    /// KV cache of the parallel sampler (default compress-sC, C = core layers: every committed
    /// position exposes its last iteration, as in the official sampler).
    #[arg(long = "parallel-cache")]
    parallel_cache: Option<String>,
    /// Element type of cached keys and values.
    #[arg(long = "cache-type", default_value = "f32")]
    cache_type: String,
    /// Engine threads.
    #[arg(long, short = 't', default_value_t = 2)]
    threads: usize,
    /// Runs of every method (the fastest total counts).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// At most this many instances per level.
    #[arg(long = "per-level")]
    per_level: Option<usize>,
    /// Write the markdown tables here (also printed).
    #[arg(long)]
    table: Option<PathBuf>,
    /// Write the results as JSON here (with every reply).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a PNG plot (accuracy against wall time, one point per method) here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

struct Item {
    level: usize,
    prompt: Vec<u32>,
    /// The reply's tokens without the final <|end_turn|>.
    answer: Vec<u32>,
    /// Index in `answer` of the single answer.
    single: usize,
}

fn read_set(path: &Path, per_level: Option<usize>) -> Result<Vec<Item>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--set {}", path.display()))?;
    let mut out = Vec::new();
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let j: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let ids = |k: &str| -> Result<Vec<u32>> {
            j.get(k)
                .and_then(|v| v.as_array())
                .with_context(|| format!("{}:{}: no list \"{k}\"", path.display(), i + 1))?
                .iter()
                .map(|x| x.as_u64().map(|x| x as u32).context("bad token id"))
                .collect()
        };
        let num = |k: &str| -> Result<usize> {
            j.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .with_context(|| format!("{}:{}: no number \"{k}\"", path.display(), i + 1))
        };
        let level = num("level")?;
        let mut answer = ids("answer_token_ids")?;
        answer.pop(); // <|end_turn|>
        let single = num("answer_index")?;
        if single >= answer.len() {
            bail!("{}:{}: answer_index out of range", path.display(), i + 1);
        }
        let c = count.entry(level).or_default();
        if per_level.is_some_and(|p| *c >= p) {
            continue;
        }
        *c += 1;
        out.push(Item {
            level,
            prompt: ids("prompt_token_ids")?,
            answer,
            single,
        });
    }
    if out.is_empty() {
        bail!("--set {}: no instances", path.display());
    }
    Ok(out)
}

enum Method {
    Plain(usize),
    Exit(String, Criterion),
    Spec(usize, usize),
    /// Knobs, ε (None: the fixed rule), num_steps.
    Parallel(ParallelParams, Option<f32>, usize),
}

impl Method {
    fn name(&self) -> String {
        match self {
            Method::Plain(r) => format!("plain r={r}"),
            Method::Exit(s, _) => format!("adaptive {s}"),
            Method::Spec(d, l) => format!("speculative draft {d}, lookahead {l}"),
            Method::Parallel(p, e, n) => format!(
                "parallel{} r'={} W={} eps={} N={n}",
                if p.mode == Mode::Official {
                    " (official)"
                } else {
                    ""
                },
                p.inner_steps,
                p.wavefront,
                e.map_or("none".to_string(), |e| e.to_string())
            ),
        }
    }
}

/// One reply: the tokens up to the stop, whether a stop ended them, core iterations summed
/// over generated positions (parallel: core passes, each over the whole wavefront).
struct Reply {
    tokens: Vec<u32>,
    stopped: bool,
    work: usize,
}

struct Ctx<'a> {
    model: &'a Arc<Model>,
    pool: &'a Arc<Threads>,
    base: SessionParams,
    pbase: SessionParams,
    stops: Vec<u32>,
    max_steps: usize,
}

fn run_one(c: &Ctx, m: &Method, it: &Item) -> Result<Reply> {
    let max_new = it.answer.len() + 4;
    let mut tokens = Vec::new();
    let mut p = c.base.clone();
    p.ctx = it.prompt.len() + max_new + 8;
    // generate ends at a stop token (not returned) or after max_new tokens.
    let collect = |stats: Vec<raven::session::TokenStats>, tokens: Vec<u32>| Reply {
        stopped: tokens.len() < max_new,
        work: stats.iter().map(|s| s.steps).sum(),
        tokens,
    };
    match m {
        Method::Plain(r) => {
            p.exit = ExitPolicy::fixed(*r);
            let mut s = Session::with_threads(c.model.clone(), p, c.pool.clone())?;
            let st = s.generate(&it.prompt, max_new, &c.stops, |t, _| {
                tokens.push(t);
                true
            })?;
            Ok(collect(st, tokens))
        }
        Method::Exit(_, crit) => {
            p.exit = ExitPolicy {
                criterion: *crit,
                min_steps: 1,
                max_steps: c.max_steps,
                check_every: 1,
            };
            let mut s = Session::with_threads(c.model.clone(), p, c.pool.clone())?;
            let st = s.generate(&it.prompt, max_new, &c.stops, |t, _| {
                tokens.push(t);
                true
            })?;
            Ok(collect(st, tokens))
        }
        Method::Spec(d, l) => {
            p.exit = ExitPolicy::fixed(c.max_steps);
            let mut s = Session::with_threads(c.model.clone(), p, c.pool.clone())?;
            let st = s.generate_speculative(&it.prompt, max_new, &c.stops, *d, *l, |t, _| {
                tokens.push(t);
                true
            })?;
            Ok(collect(st, tokens))
        }
        Method::Parallel(pp, eps, num_steps) => {
            let mut p = c.pbase.clone();
            p.ctx = it.prompt.len() + max_new + pp.wavefront.max(8) + 8;
            p.exit = ExitPolicy {
                criterion: eps.map_or(Criterion::None, Criterion::LatentDiff),
                min_steps: 1,
                max_steps: *num_steps,
                check_every: 1,
            };
            let r = raven::parallel::generate(
                c.model,
                &p,
                pp,
                &it.prompt,
                max_new,
                &c.stops,
                c.pool,
                &Observe::default(),
                |_| true,
            )?;
            // The official mode keeps what follows a stop token frozen in the same step.
            let cut = r.tokens.iter().position(|t| c.stops.contains(t));
            let tokens = r.tokens[..cut.unwrap_or(r.tokens.len())].to_vec();
            Ok(Reply {
                stopped: cut.is_some() || (r.stopped && tokens.len() < max_new),
                work: r.counters.core_passes.saturating_sub(1),
                tokens,
            })
        }
    }
}

fn parse_methods(a: &EvalSeqArgs) -> Result<Vec<Method>> {
    let mut v = Vec::new();
    for &r in &a.steps {
        if r == 0 {
            bail!("--steps: 0 is not an iteration count");
        }
        v.push(Method::Plain(r));
    }
    if !a.steps.contains(&a.max_steps) {
        v.push(Method::Plain(a.max_steps));
    }
    for e in a.exit.iter().filter(|e| !e.is_empty()) {
        v.push(Method::Exit(e.clone(), Criterion::parse(e)?));
    }
    for s in a.speculative.iter().filter(|e| !e.is_empty()) {
        let (d, l) = s
            .split_once(':')
            .with_context(|| format!("--speculative {s}: use DRAFT_STEPS:LOOKAHEAD"))?;
        v.push(Method::Spec(d.parse()?, l.parse()?));
    }
    for s in a.parallel.iter().filter(|e| !e.is_empty()) {
        let mut parts: Vec<&str> = s.split(':').collect();
        let mode = match parts[0] {
            "official" | "corrected" => Mode::parse(parts.remove(0))?,
            _ => Mode::Corrected,
        };
        let (r, w, e, n) = match parts[..] {
            [r, w, e] => (r, w, e, a.max_steps),
            [r, w, e, n] => (r, w, e, n.parse()?),
            _ => bail!("--parallel {s}: use [official:|corrected:]R':W:EPS[:N]"),
        };
        let eps = if e == "none" {
            None
        } else {
            Some(e.parse::<f32>()?)
        };
        v.push(Method::Parallel(
            ParallelParams {
                mode,
                inner_steps: r.parse()?,
                wavefront: w.parse()?,
                ema: a.ema,
                ..ParallelParams::default()
            },
            eps,
            n,
        ));
    }
    Ok(v)
}

struct Score {
    name: String,
    secs: f64,
    whole: f64,
    single: f64,
    first: f64,
    work: f64,
    /// level -> (whole %, single %, first %)
    by_level: BTreeMap<usize, (f64, f64, f64)>,
    replies: Vec<Vec<u32>>,
}

fn score(name: String, items: &[Item], replies: &[Reply], secs: f64) -> Score {
    let mut lv: BTreeMap<usize, [usize; 4]> = BTreeMap::new();
    let (mut w, mut s, mut f) = (0, 0, 0);
    for (it, r) in items.iter().zip(replies) {
        let whole = r.stopped && r.tokens == it.answer;
        let single = r.tokens.get(it.single) == Some(&it.answer[it.single]);
        let first = r.tokens.first() == it.answer.first();
        let e = lv.entry(it.level).or_default();
        e[0] += whole as usize;
        e[1] += single as usize;
        e[2] += first as usize;
        e[3] += 1;
        w += whole as usize;
        s += single as usize;
        f += first as usize;
    }
    let n = items.len() as f64;
    let pct = |x: usize, n: usize| 100.0 * x as f64 / n as f64;
    Score {
        name,
        secs,
        whole: 100.0 * w as f64 / n,
        single: 100.0 * s as f64 / n,
        first: 100.0 * f as f64 / n,
        work: replies.iter().map(|r| r.work).sum::<usize>() as f64 / n,
        by_level: lv
            .into_iter()
            .map(|(l, e)| (l, (pct(e[0], e[3]), pct(e[1], e[3]), pct(e[2], e[3]))))
            .collect(),
        replies: replies.iter().map(|r| r.tokens.clone()).collect(),
    }
}

pub fn run(a: &EvalSeqArgs) -> Result<()> {
    let model = Arc::new(crate::load_model(&a.model, false)?);
    let items = read_set(&a.set, a.per_level)?;
    let methods = parse_methods(a)?;
    let pool = Arc::new(Threads::new(a.threads)?);
    let mut base = SessionParams::for_model(&model);
    base.init_scale = 0.0;
    base.threads = a.threads;
    base.cache = CacheStrategy::parse(&a.cache)?;
    base.cache_type = parse_kv_type(&a.cache_type)?;
    let mut pbase = base.clone();
    pbase.cache = match &a.parallel_cache {
        Some(c) => CacheStrategy::parse(c)?,
        None => CacheStrategy::Compress(model.config.n_core),
    };
    let c = Ctx {
        model: &model,
        pool: &pool,
        base,
        pbase,
        stops: model.stop_tokens(),
        max_steps: a.max_steps,
    };
    let levels: Vec<usize> = {
        let mut l: Vec<usize> = items.iter().map(|i| i.level).collect();
        l.sort_unstable();
        l.dedup();
        l
    };
    // Warm-up (page in the weights, start the threads).
    for it in items.iter().take(4) {
        run_one(&c, &Method::Plain(a.max_steps), it)?;
    }
    let mut best: Vec<Option<(f64, Vec<Reply>)>> = methods.iter().map(|_| None).collect();
    for round in 0..a.repeat.max(1) {
        for (i, m) in methods.iter().enumerate() {
            let t0 = Instant::now();
            let replies = items
                .iter()
                .map(|it| run_one(&c, m, it))
                .collect::<Result<Vec<_>>>()
                .with_context(|| m.name())?;
            let secs = t0.elapsed().as_secs_f64();
            eprintln!("round {round}: {} {secs:.2} s", m.name());
            if best[i].as_ref().is_none_or(|b| secs < b.0) {
                best[i] = Some((secs, replies));
            }
        }
    }
    let scores: Vec<Score> = methods
        .iter()
        .zip(best)
        .map(|(m, b)| {
            let (secs, r) = b.expect("every method ran");
            score(m.name(), &items, &r, secs)
        })
        .collect();
    let base_i = methods
        .iter()
        .position(|m| matches!(m, Method::Plain(r) if *r == a.max_steps))
        .expect("the baseline runs");
    let base_secs = scores[base_i].secs;
    let base_whole = scores[base_i].whole;
    let mut md = format!(
        "{} instances ({} levels), zero initial state, greedy, {} engine threads, instances one after the other; plain/adaptive/speculative cache {} {}, parallel sampler cache {} {}; {}. Wall time: all instances, fastest of {} run(s), methods interleaved in one process.\n\n",
        items.len(),
        levels.len(),
        a.threads,
        c.base.cache,
        c.base.cache_type,
        c.pbase.cache,
        c.pbase.cache_type,
        model.name(),
        a.repeat.max(1)
    );
    md += "| method | whole reply % | Δ vs plain r=32 (points) | single answer % | first answer % | wall s | speed-up vs plain r=32 |\n|---|---|---|---|---|---|---|\n";
    for s in &scores {
        md += &format!(
            "| {} | {:.1} | {:+.1} | {:.1} | {:.1} | {:.2} | {:.2}x |\n",
            s.name,
            s.whole,
            s.whole - base_whole,
            s.single,
            s.first,
            s.secs,
            base_secs / s.secs
        );
    }
    md += &format!(
        "\nWhole-reply accuracy (%) by level (number of swaps = answer tokens).\n\n| method | {} |\n|---|{}\n",
        levels.iter().map(|l| format!("L{l}")).collect::<Vec<_>>().join(" | "),
        "---|".repeat(levels.len())
    );
    for s in &scores {
        md += &format!(
            "| {} | {} |\n",
            s.name,
            levels
                .iter()
                .map(|l| format!("{:.1}", s.by_level[l].0))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    md += &format!(
        "\nSingle-answer accuracy (%) by level (the reply's last answer: where the ball ends up).\n\n| method | {} |\n|---|{}\n",
        levels.iter().map(|l| format!("L{l}")).collect::<Vec<_>>().join(" | "),
        "---|".repeat(levels.len())
    );
    for s in &scores {
        md += &format!(
            "| {} | {} |\n",
            s.name,
            levels
                .iter()
                .map(|l| format!("{:.1}", s.by_level[l].1))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    println!("{md}");
    if let Some(p) = &a.table {
        crate::write_atomic(p, md.as_bytes())?;
    }
    if let Some(p) = &a.json {
        let j = serde_json::json!({
            "model": model.name(),
            "instances": items.len(),
            "levels": levels,
            "threads": a.threads,
            "repeat": a.repeat,
            "methods": scores.iter().map(|s| serde_json::json!({
                "method": s.name,
                "wall_s": s.secs,
                "speedup_vs_plain_max": base_secs / s.secs,
                "whole_accuracy": s.whole,
                "single_accuracy": s.single,
                "first_accuracy": s.first,
                "mean_work": s.work,
                "by_level": s.by_level.iter().map(|(l, (w, si, f))| (l.to_string(), serde_json::json!({"whole": w, "single": si, "first": f}))).collect::<serde_json::Map<_, _>>(),
                "replies": s.replies,
            })).collect::<Vec<_>>(),
        });
        // Compact: the replies make it large.
        crate::write_atomic(p, format!("{j}\n").as_bytes())?;
    }
    if let Some(p) = &a.plot {
        plot(p, &scores, base_secs).with_context(|| format!("--plot {}", p.display()))?;
    }
    Ok(())
}

/// Whole-reply accuracy against wall time relative to plain r = max, one point per method; grey
/// lines at half the baseline's time and one point under its accuracy.
fn plot(path: &Path, scores: &[Score], base_secs: f64) -> Result<()> {
    use plotters::prelude::*;
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (1100, 800)).into_drawing_area();
        root.fill(&WHITE)?;
        let lo = scores.iter().map(|s| s.whole).fold(100.0f64, f64::min);
        let y0 = (lo - 5.0).clamp(0.0, 95.0).floor();
        let xmax = scores
            .iter()
            .map(|s| s.secs / base_secs)
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Multi-token demo: whole-reply accuracy vs. wall time",
                ("sans-serif", 24),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..xmax, y0..100.5f64)?;
        chart
            .configure_mesh()
            .x_desc("wall time / plain r=32")
            .y_desc("whole-reply accuracy %")
            .label_style(("sans-serif", 15))
            .draw()?;
        // The acceptance region of issue #18: within 1 point of the baseline, at most half its time.
        let base_acc = scores
            .iter()
            .find(|s| s.secs == base_secs)
            .map_or(100.0, |s| s.whole);
        let grey = RGBColor(150, 150, 150);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.5, y0), (0.5, 100.5)],
            grey.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(0.0, base_acc - 1.0), (xmax, base_acc - 1.0)],
            grey.stroke_width(1),
        )))?;
        for (i, s) in scores.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let p = (s.secs / base_secs, s.whole);
            chart
                .draw_series(std::iter::once(Circle::new(p, 5, color.filled())))?
                .label(s.name.clone())
                .legend(move |(x, y)| Circle::new((x + 9, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
