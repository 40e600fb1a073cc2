//! `raven eval`: accuracy of the demo task by difficulty level against the number of core
//! iterations and against each exit policy, as a markdown table, JSON and a PNG plot.
//!
//! Protocol (the same as tools/train_demo/eval.py): zero initial state, greedy. Fixed r: the whole
//! prompt in one pass with r iterations, prediction = argmax at the last position. Exit policy:
//! the prompt but its last token in one pass at the maximum, then the last token alone with the
//! criterion; its iterations are the ones reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use raven::exit::{argmax, Criterion, ExitPolicy};
use raven::kv::{CacheStrategy, KvType};
use raven::run::Threads;
use raven::{Model, Session, SessionParams};

#[derive(Args)]
pub struct EvalArgs {
    /// The GGUF model (default: the bundled demo model).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// The evaluation set (JSON lines with prompt_token_ids, answer_token_id, level).
    #[arg(long = "set", default_value = "models/demo/eval_set.jsonl")]
    set: PathBuf,
    /// Fixed iteration counts to evaluate.
    #[arg(long, default_value = "1,2,4,8,16,32", value_delimiter = ',')]
    steps: Vec<usize>,
    /// Exit policies to evaluate (CRIT[:τ]).
    #[arg(
        long,
        default_value = "latent-diff:0.03,kl:1e-3",
        value_delimiter = ','
    )]
    exit: Vec<String>,
    /// Maximum iterations under an exit policy.
    #[arg(long = "max-steps", default_value_t = 32)]
    max_steps: usize,
    /// KV cache strategy (full, as the PyTorch evaluation; compress-sK shares slots).
    #[arg(long, default_value = "full")]
    cache: String,
    /// Element type of cached keys and values (f32, as the PyTorch evaluation; f16, q8_0).
    #[arg(long = "cache-type", default_value = "f32")]
    cache_type: String,
    /// Evaluate at most this many instances per level.
    #[arg(long = "per-level")]
    per_level: Option<usize>,
    /// Write the markdown table here (also printed).
    #[arg(long)]
    table: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a PNG plot (accuracy by level against iterations) here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

struct Item {
    level: usize,
    prompt: Vec<u32>,
    answer: u32,
}

fn read_set(path: &Path, per_level: Option<usize>) -> Result<Vec<Item>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--set {}", path.display()))?;
    let mut out: Vec<Item> = Vec::new();
    let mut count: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let j: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let field = |k: &str| {
            j.get(k)
                .with_context(|| format!("{}:{}: no \"{k}\"", path.display(), i + 1))
        };
        let level = field("level")?.as_u64().context("level is not a number")? as usize;
        let prompt: Vec<u32> = field("prompt_token_ids")?
            .as_array()
            .context("prompt_token_ids is not a list")?
            .iter()
            .map(|x| x.as_u64().map(|x| x as u32).context("bad token id"))
            .collect::<Result<_>>()?;
        let answer = field("answer_token_id")?
            .as_u64()
            .context("answer_token_id is not a number")? as u32;
        let c = count.entry(level).or_default();
        if per_level.is_some_and(|p| *c >= p) {
            continue;
        }
        *c += 1;
        out.push(Item {
            level,
            prompt,
            answer,
        });
    }
    if out.is_empty() {
        bail!("--set {}: no instances", path.display());
    }
    Ok(out)
}

fn params(
    m: &Model,
    max_steps: usize,
    cache: (CacheStrategy, KvType),
    ctx: usize,
) -> SessionParams {
    let mut p = SessionParams::for_model(m);
    p.init_scale = 0.0;
    p.threads = 1;
    (p.cache, p.cache_type) = cache;
    p.exit = ExitPolicy::fixed(max_steps);
    p.ctx = ctx;
    p
}

/// (correct, iterations) per item.
/// Maps `f` over `items` on plain scoped threads, one per core. (Not rayon's global pool: each
/// session enters its own pool, and a global-pool worker waiting in `install` would steal
/// further items and nest without bound.)
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let n = raven::run::default_threads().max(1);
    let chunk = items.len().div_ceil(n).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("an evaluation thread panicked"))??,
            );
        }
        Ok(out)
    })
}

fn run_fixed(
    m: &Arc<Model>,
    items: &[Item],
    steps: usize,
    cache: (CacheStrategy, KvType),
    pool: &Arc<Threads>,
) -> Result<Vec<(bool, usize)>> {
    par_map(items, |it| {
        let mut s = Session::with_threads(
            m.clone(),
            params(m, steps, cache, it.prompt.len()),
            pool.clone(),
        )?;
        s.prefill(&it.prompt)?;
        Ok((argmax(s.logits()) as u32 == it.answer, steps))
    })
}

fn run_exit(
    m: &Arc<Model>,
    items: &[Item],
    crit: Criterion,
    max: usize,
    cache: (CacheStrategy, KvType),
    pool: &Arc<Threads>,
) -> Result<Vec<(bool, usize)>> {
    par_map(items, |it| {
        let mut p = params(m, max, cache, it.prompt.len());
        p.exit = ExitPolicy {
            criterion: crit,
            min_steps: 1,
            max_steps: max,
            check_every: 1,
        };
        let mut s = Session::with_threads(m.clone(), p, pool.clone())?;
        let n = it.prompt.len();
        if n < 2 {
            bail!("an instance has a prompt of {n} token(s)");
        }
        s.prefill(&it.prompt[..n - 1])?;
        let st = s.step(it.prompt[n - 1])?;
        Ok((argmax(s.logits()) as u32 == it.answer, st.steps))
    })
}

fn by_level(items: &[Item], res: &[(bool, usize)]) -> BTreeMap<usize, (f64, f64)> {
    let mut acc: BTreeMap<usize, (usize, usize, usize)> = BTreeMap::new();
    for (it, &(ok, steps)) in items.iter().zip(res) {
        let e = acc.entry(it.level).or_default();
        e.0 += ok as usize;
        e.1 += steps;
        e.2 += 1;
    }
    acc.into_iter()
        .map(|(l, (ok, st, n))| (l, (100.0 * ok as f64 / n as f64, st as f64 / n as f64)))
        .collect()
}

fn overall(res: &[(bool, usize)]) -> (f64, f64) {
    let n = res.len().max(1) as f64;
    (
        100.0 * res.iter().filter(|r| r.0).count() as f64 / n,
        res.iter().map(|r| r.1).sum::<usize>() as f64 / n,
    )
}

pub fn run(a: &EvalArgs) -> Result<()> {
    let model = Arc::new(match &a.model {
        Some(p) => crate::load_model(p, false)?,
        None => crate::demo::load()?,
    });
    let items = read_set(&a.set, a.per_level)?;
    let cache = (
        CacheStrategy::parse(&a.cache)?,
        raven::kv::parse_kv_type(&a.cache_type)?,
    );
    let pool = Arc::new(Threads::new(1)?);
    let levels: Vec<usize> = {
        let mut l: Vec<usize> = items.iter().map(|i| i.level).collect();
        l.sort_unstable();
        l.dedup();
        l
    };
    let mut fixed = Vec::new();
    for &r in &a.steps {
        if r == 0 {
            bail!("--steps: 0 is not an iteration count");
        }
        let res = run_fixed(&model, &items, r, cache, &pool)?;
        fixed.push((r, overall(&res).0, by_level(&items, &res)));
    }
    let mut exits = Vec::new();
    let fixed_max = run_fixed(&model, &items, a.max_steps, cache, &pool)?;
    exits.push((
        format!("none (r={})", a.max_steps),
        overall(&fixed_max),
        by_level(&items, &fixed_max),
    ));
    for e in &a.exit {
        let res = run_exit(
            &model,
            &items,
            Criterion::parse(e)?,
            a.max_steps,
            cache,
            &pool,
        )?;
        exits.push((e.clone(), overall(&res), by_level(&items, &res)));
    }
    // Markdown.
    let mut md = String::new();
    md += &format!(
        "Accuracy (%) by level and core iterations r ({} instances, zero initial state, greedy, {} {} cache, {}).\n\n",
        items.len(),
        cache.0,
        cache.1,
        model.name()
    );
    md += &format!(
        "| level | {} |\n|---|{}\n",
        a.steps
            .iter()
            .map(|r| format!("r={r}"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(a.steps.len())
    );
    for &l in &levels {
        md += &format!(
            "| {l} | {} |\n",
            fixed
                .iter()
                .map(|(_, _, bl)| format!("{:.1}", bl[&l].0))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    md += &format!(
        "| all | {} |\n",
        fixed
            .iter()
            .map(|(_, o, _)| format!("{o:.1}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let base_steps = (exits[0].1).1;
    md += &format!(
        "\nExit policies (max {} iterations): accuracy, mean iterations, saving against the fixed maximum, and mean iterations by level.\n\n| policy | accuracy % | mean iterations | saved | {} |\n|---|---|---|---|{}\n",
        a.max_steps,
        levels.iter().map(|l| format!("L{l} it.")).collect::<Vec<_>>().join(" | "),
        "---|".repeat(levels.len())
    );
    for (name, (accu, it), bl) in &exits {
        md += &format!(
            "| {name} | {accu:.1} | {it:.2} | {:.0}% | {} |\n",
            100.0 * (1.0 - it / base_steps),
            levels
                .iter()
                .map(|l| format!("{:.1}", bl[l].1))
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
            "fixed": fixed.iter().map(|(r, o, bl)| serde_json::json!({
                "steps": r, "accuracy": o,
                "by_level": bl.iter().map(|(l, (acc, _))| (l.to_string(), serde_json::json!(acc))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "exit": exits.iter().map(|(n, (acc, it), bl)| serde_json::json!({
                "policy": n, "accuracy": acc, "mean_steps": it,
                "by_level": bl.iter().map(|(l, (acc, st))| (l.to_string(), serde_json::json!({"accuracy": acc, "mean_steps": st}))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
        });
        crate::write_atomic(p, serde_json::to_string_pretty(&j)?.as_bytes())?;
    }
    if let Some(p) = &a.plot {
        plot(p, &a.steps, &levels, &fixed).with_context(|| format!("--plot {}", p.display()))?;
    }
    Ok(())
}

type Fixed = Vec<(usize, f64, BTreeMap<usize, (f64, f64)>)>;

fn plot(path: &Path, steps: &[usize], levels: &[usize], fixed: &Fixed) -> Result<()> {
    use plotters::prelude::*;
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_r = *steps.iter().max().unwrap_or(&32) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Accuracy by difficulty vs. core iterations",
                ("sans-serif", 24),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d((0.8f64..max_r * 1.25).log_scale(), 0f64..100f64)?;
        chart
            .configure_mesh()
            .x_desc("core iterations r (log scale)")
            .y_desc("accuracy %")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 15))
            .draw()?;
        for (i, &l) in levels.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = fixed
                .iter()
                .map(|(r, _, bl)| (*r as f64, bl[&l].0))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(format!("level {l}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
