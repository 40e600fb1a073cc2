//! Synthetic models: a GGUF of any Huginn shape with random weights, written straight from Rust,
//! so full-size speed and memory can be measured without the real checkpoint.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use rayon::prelude::*;

use raven_gguf::{GgufWriter, Value};
use raven_quant::GgmlType;

use crate::config::{Config, ARCH};
use crate::convert::OutType;
use crate::error::{RavenError, Result};
use crate::rng::Rng;

/// The demo model's tokenizer (`models/demo/hf/tokenizer.json`).
const DEMO_TOKENIZER: &str = include_str!("../models/demo/hf/tokenizer.json");

/// Huginn-0125's shape: h=5280, 55 heads, F=17920, V=65536, 2/4/2 blocks, r̄=32, context 4096.
pub fn huginn_0125() -> Config {
    let h = 5280usize;
    Config {
        n_embd: h,
        n_heads: 55,
        n_ff: 17920,
        n_vocab: 65536,
        n_prelude: 2,
        n_core: 4,
        n_coda: 2,
        mean_recurrence: 32,
        qk_bias: true,
        rope_base: 50000.0,
        norm_eps: 1e-6,
        tied: true,
        context: 4096,
        embed_scale: (h as f64).sqrt() as f32,
        state_init_std: (2.0 / (5.0 * h as f64)).sqrt() as f32,
    }
}

/// Huginn-0125 scaled down by `div` (which must divide its 55 heads: 1, 5, 11 or 55): h, heads
/// and F divided by `div` (F rounded down to a multiple of 32), the same depth, vocabulary and
/// context. `huginn-0125/5` (h = 1056) keeps the full model's proportions at 1/25 of its weights.
pub fn huginn_0125_scaled(div: usize) -> Result<Config> {
    let mut c = huginn_0125();
    if div == 0 || !c.n_heads.is_multiple_of(div) {
        return Err(RavenError::arg(
            "--shape",
            format!("huginn-0125/{div}: N must divide the 55 heads (1, 5, 11, 55)"),
        ));
    }
    c.n_embd /= div;
    c.n_heads /= div;
    c.n_ff /= div;
    c.n_ff -= c.n_ff % 32;
    c.embed_scale = (c.n_embd as f32).sqrt();
    c.state_init_std = (2.0 / (5.0 * c.n_embd as f64)).sqrt() as f32;
    Ok(c)
}

/// The demo model's byte-level BPE tokenizer with its vocabulary filled up to `n_vocab` by
/// tokens `<288>`, `<289>`, … (printable ASCII, so they decode to their own text) and its special
/// tokens moved to the last ids: random weights pick any id. Returns the JSON and the id of
/// `<|end_text|>`.
fn tokenizer_json(n_vocab: usize) -> Result<(String, u32)> {
    let bad = |e: String| RavenError::arg("synth", format!("demo tokenizer: {e}"));
    let mut t: serde_json::Value =
        serde_json::from_str(DEMO_TOKENIZER).map_err(|e| bad(e.to_string()))?;
    let base = t["model"]["vocab"].as_object().map_or(0, |v| v.len());
    let specials = t["added_tokens"].as_array().map_or(0, |a| a.len());
    if n_vocab < base + specials {
        return Err(bad(format!("a vocabulary of {n_vocab} is too small")));
    }
    let first_special = n_vocab - specials;
    if let Some(vocab) = t["model"]["vocab"].as_object_mut() {
        for id in base..first_special {
            vocab.insert(format!("<{id}>"), id.into());
        }
    }
    let mut eos = None;
    if let Some(added) = t["added_tokens"].as_array_mut() {
        for (i, tok) in added.iter_mut().enumerate() {
            let id = (first_special + i) as u32;
            tok["id"] = id.into();
            if tok["content"] == "<|end_text|>" {
                eos = Some(id);
            }
        }
    }
    let eos = eos.ok_or_else(|| bad("no <|end_text|>".into()))?;
    Ok((
        serde_json::to_string(&t).map_err(|e| bad(e.to_string()))?,
        eos,
    ))
}

/// Writes a model of shape `c` with random weights of type `ty` to `out` (atomically).
pub fn write_random(c: &Config, ty: OutType, seed: u64, out: &Path) -> Result<u64> {
    c.validate("synthetic model")?;
    let h = c.n_embd as u64;
    let f = c.n_ff as u64;
    let v = c.n_vocab as u64;
    let wt = match ty {
        OutType::F32 => GgmlType::F32,
        OutType::F16 => GgmlType::F16,
        OutType::BF16 => GgmlType::BF16,
        OutType::Q8_0 => GgmlType::Q8_0,
        OutType::Q4_0 => GgmlType::Q4_0,
    };
    let et = if ty == OutType::Q4_0 {
        GgmlType::Q8_0
    } else {
        wt
    };
    // (name, dims in ggml order, type, std of the values; 0 = a norm of ones)
    let mut plan: Vec<(String, Vec<u64>, GgmlType, f32)> = vec![
        ("token_embd.weight".into(), vec![h, v], et, 0.02),
        ("output_norm.weight".into(), vec![h], GgmlType::F32, 0.0),
        ("adapter.weight".into(), vec![2 * h, h], wt, 0.02),
    ];
    for b in 0..c.n_blocks() {
        let n = |s: &str| format!("blk.{b}.{s}");
        plan.push((n("attn_norm.weight"), vec![h], GgmlType::F32, 0.0));
        plan.push((n("attn_qkv.weight"), vec![h, 3 * h], wt, 0.02));
        if c.qk_bias {
            plan.push((n("attn_q.bias"), vec![h], GgmlType::F32, 0.01));
            plan.push((n("attn_k.bias"), vec![h], GgmlType::F32, 0.01));
        }
        plan.push((n("attn_output.weight"), vec![h, h], wt, 0.02));
        plan.push((n("attn_post_norm.weight"), vec![h], GgmlType::F32, 0.0));
        plan.push((n("ffn_norm.weight"), vec![h], GgmlType::F32, 0.0));
        plan.push((n("ffn_gate.weight"), vec![h, f], wt, 0.02));
        plan.push((n("ffn_up.weight"), vec![h, f], wt, 0.02));
        plan.push((n("ffn_down.weight"), vec![f, h], wt, 0.02));
        plan.push((n("ffn_post_norm.weight"), vec![h], GgmlType::F32, 0.0));
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        out.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let res = (|| -> Result<()> {
        let file = File::create(&tmp).map_err(|e| RavenError::io(&tmp, e))?;
        let mut w = GgufWriter::new(BufWriter::with_capacity(1 << 22, file));
        w.add_kv("general.architecture", Value::Str(ARCH.into()));
        w.add_kv("general.name", Value::Str("synthetic-huginn".into()));
        w.add_kv("general.file_type", Value::U32(ty.file_type()));
        w.add_kv("general.quantization_version", Value::U32(2));
        for (k, val) in c.gguf_metadata() {
            w.add_kv(&k, val);
        }
        // A tokenizer for the whole vocabulary, so `raven run` and `raven chat` work on
        // synthetic models too.
        let (tokenizer, eos) = tokenizer_json(c.n_vocab)?;
        w.add_kv("tokenizer.huggingface.json", Value::Str(tokenizer));
        w.add_kv("tokenizer.ggml.eos_token_id", Value::U32(eos));
        for (name, dims, t, _) in &plan {
            w.add_tensor(name, dims, *t)?;
        }
        w.write_header()?;
        for (ti, (name, dims, t, std)) in plan.iter().enumerate() {
            let cols = dims[0] as usize;
            let rows: usize = dims[1..].iter().product::<u64>() as usize;
            let rb = t.row_bytes(cols as u64).expect("whole blocks") as usize;
            let chunk = (1usize << 24) / rb.max(1) + 1;
            let mut r0 = 0;
            let mut buf = Vec::new();
            while r0 < rows {
                let r1 = (r0 + chunk).min(rows);
                buf.resize((r1 - r0) * rb, 0);
                buf.par_chunks_mut(rb)
                    .enumerate()
                    .try_for_each(|(i, dst)| {
                        let r = r0 + i;
                        let mut rng = Rng::new(seed ^ ((ti as u64) << 40) ^ r as u64);
                        let row: Vec<f32> = (0..cols)
                            .map(|_| if *std == 0.0 { 1.0 } else { rng.normal() * std })
                            .collect();
                        raven_quant::quantize_row(*t, &row, dst)
                    })?;
                w.write_tensor_part(name, &buf)?;
                r0 = r1;
            }
        }
        let bw = w.finish()?;
        let file = bw
            .into_inner()
            .map_err(|e| RavenError::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| RavenError::io(&tmp, e))?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, out).map_err(|e| RavenError::io(out, e))?;
    Ok(std::fs::metadata(out)
        .map_err(|e| RavenError::io(out, e))?
        .len())
}
