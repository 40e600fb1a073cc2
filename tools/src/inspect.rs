//! `raven inspect`: metadata, tensor table, parameter count and predicted session memory.

use std::path::Path;

use anyhow::Result;
use raven::kv::CacheStrategy;
use raven_gguf::{Array, Value};
use raven_quant::KvType;

fn show(v: &Value, all: bool) -> String {
    match v {
        Value::Str(s) if !all && s.len() > 80 => format!(
            "\"{}…\" ({} bytes)",
            s.chars().take(60).collect::<String>().escape_debug(),
            s.len()
        ),
        Value::Str(s) => format!("\"{}\"", s.escape_debug()),
        Value::Array(a) => {
            let n = a.len();
            let preview = match a {
                Array::Str(x) => x
                    .iter()
                    .take(if all { n } else { 5 })
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                Array::I32(x) => x
                    .iter()
                    .take(if all { n } else { 8 })
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                Array::U32(x) => x
                    .iter()
                    .take(if all { n } else { 8 })
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::from("…"),
            };
            format!(
                "[{preview}{}] ({n} {})",
                if all || n <= 8 { "" } else { ", …" },
                a.element_type_name()
            )
        }
        other => format!("{other:?}"),
    }
}

pub fn run(path: &Path, ctx: Option<usize>, steps: Option<usize>, all: bool) -> Result<()> {
    let m = crate::load_model(path, false)?;
    let g = m.gguf();
    println!(
        "file: {} ({:.2} MB, GGUF v{}, alignment {})",
        path.display(),
        g.file_len() as f64 / 1e6,
        g.version(),
        g.alignment()
    );
    println!("\nmetadata:");
    for (k, v) in g.metadata() {
        println!("  {k:<42} {}", show(v, all));
    }
    println!("\ntensors:");
    println!(
        "  {:<32} {:>6} {:>16} {:>12}",
        "name", "type", "shape", "bytes"
    );
    let mut params = 0u64;
    for t in g.tensors() {
        params += t.n_elements();
        let shape = t
            .dims
            .iter()
            .rev()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" × ");
        println!(
            "  {:<32} {:>6} {:>16} {:>12}",
            t.name,
            t.ty.to_string(),
            shape,
            t.n_bytes
        );
    }
    let c = &m.config;
    println!(
        "\nparameters: {params} ({:.2} M); weights {:.2} MB",
        params as f64 / 1e6,
        m.weight_bytes() as f64 / 1e6
    );
    let loops = if c.family.looped_stack() {
        format!(
            "layers={} looped {} times, exit gate q={}",
            c.n_core,
            c.mean_recurrence,
            c.exit_threshold.unwrap_or(1.0)
        )
    } else {
        format!(
            "prelude/core/coda={}/{}/{} mean recurrence={}",
            c.n_prelude, c.n_core, c.n_coda, c.mean_recurrence
        )
    };
    println!(
        "model: {} ({}) h={} heads={} kv heads={} d={} F={} V={} {loops} context={}",
        c.family.name(),
        c.family.arch(),
        c.n_embd,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim(),
        c.n_ff,
        c.n_vocab,
        c.context
    );
    let ctx = ctx.unwrap_or(c.context);
    let steps = steps.unwrap_or(c.mean_recurrence);
    println!(
        "\nKV cache for a session of {ctx} tokens, up to {steps} iterations (keys and values; \
         --cache-type f16 is the default of run/chat/serve, f32 of logits):"
    );
    let full = CacheStrategy::Full.bytes(c, KvType::F32, ctx, steps);
    let types: Vec<KvType> = KvType::ALL
        .into_iter()
        .filter(|&t| raven::kv::validate_kv_type(t, c).is_ok())
        .collect();
    print!("  {:<14}", "strategy");
    for t in &types {
        print!(" {:>36}", t.name());
    }
    println!();
    for s in [
        CacheStrategy::Full,
        CacheStrategy::Compress(c.n_core),
        CacheStrategy::Latest(c.n_core),
    ] {
        print!("  {:<14}", s.to_string());
        for &t in &types {
            let b = s.bytes(c, t, ctx, steps);
            let cell = format!(
                "{b} B ({:.1} MB, {:.4})",
                b as f64 / 1e6,
                b as f64 / full as f64
            );
            print!(" {cell:>36}");
        }
        println!();
    }
    println!("  (in parentheses: the fraction of full f32)");
    Ok(())
}
