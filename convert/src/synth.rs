//! Synthetic models: a GGUF of any Huginn shape with random weights, written straight from Rust,
//! so full-size speed and memory can be measured without the real checkpoint.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use rayon::prelude::*;

use raven_gguf::{GgufWriter, Value};
use raven_quant::GgmlType;

use crate::convert::OutType;
use raven_core::config::{Config, Family};
use raven_core::error::{RavenError, Result};
use raven_core::rng::Rng;
use raven_core::schema::Role;

/// The demo model's tokenizer (`models/demo/hf/tokenizer.json`).
const DEMO_TOKENIZER: &str = include_str!("../../models/demo/hf/tokenizer.json");

/// Huginn-0125's shape: h=5280, 55 heads, F=17920, V=65536, 2/4/2 blocks, r̄=32, context 4096.
pub fn huginn_0125() -> Config {
    let h = 5280usize;
    Config {
        family: raven_core::config::Family::Huginn,
        n_embd: h,
        n_heads: 55,
        n_kv_heads: 55,
        d_head: 96,
        rope_scaling: None,
        exit_threshold: None,
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

/// Ouro-1.4B's shape (ByteDance/Ouro-1.4B config.json): h 2048, 16 heads × 128 (MHA), F 5632,
/// 24 layers looped T = 4 times, vocabulary 49152, θ 1e6, untied head, context 65536.
pub fn ouro_1_4b() -> Config {
    Config {
        family: Family::Ouro,
        n_embd: 2048,
        n_heads: 16,
        n_kv_heads: 16,
        d_head: 128,
        rope_scaling: None,
        exit_threshold: Some(1.0),
        n_ff: 5632,
        n_vocab: 49152,
        n_prelude: 0,
        n_core: 24,
        n_coda: 0,
        mean_recurrence: 4,
        qk_bias: false,
        rope_base: 1e6,
        norm_eps: 1e-6,
        tied: false,
        context: 65536,
        embed_scale: 1.0,
        state_init_std: 0.0,
    }
}

/// Recurrent-Llama-3.2's shape (smcleish/Recurrent-Llama-3.2-train-recurrence-*): h 2048,
/// 32 query / 8 KV heads × 64, F 8192, prelude / core / coda 4 / 6 / 4, vocabulary 128256,
/// θ 5e5 with llama3 scaling (32, 1, 4, 8192), untied head, trained context 1024.
pub fn recurrent_llama_3_2() -> Config {
    Config {
        family: Family::RecurrentLlama,
        n_embd: 2048,
        n_heads: 32,
        n_kv_heads: 8,
        d_head: 64,
        rope_scaling: Some(raven_core::config::Llama3Scaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192.0,
        }),
        exit_threshold: None,
        n_ff: 8192,
        n_vocab: 128256,
        n_prelude: 4,
        n_core: 6,
        n_coda: 4,
        mean_recurrence: 32,
        qk_bias: false,
        rope_base: 500000.0,
        norm_eps: 1e-5,
        tied: false,
        context: 1024,
        embed_scale: 1.0,
        state_init_std: 0.008_703_883,
    }
}

/// Recurrent-OLMo-2's shape (OLMo-2-0425-1B layers, 4 / 6 / 4): h 2048, 16 heads × 128,
/// F 8192, vocabulary 100352, ε 1e-6, θ 5e5 without scaling, q/k norms, untied head.
pub fn recurrent_olmo_2() -> Config {
    Config {
        family: Family::RecurrentOlmo2,
        n_heads: 16,
        n_kv_heads: 16,
        d_head: 128,
        rope_scaling: None,
        n_vocab: 100352,
        norm_eps: 1e-6,
        ..recurrent_llama_3_2()
    }
}

/// A shape by name: `huginn-0125`, `ouro-1.4b`, `ouro-2.6b`, `recurrent-llama-3.2`,
/// `recurrent-olmo-2`, each optionally `/N`: h, the query and key/value heads and F divided by N
/// (F rounded down to a multiple of 32), the head size, depth, vocabulary and context kept.
pub fn shape(name: &str) -> Result<Config> {
    let (base, div) = match name.split_once('/') {
        Some((b, d)) => (
            b,
            d.parse::<usize>().map_err(|_| {
                RavenError::arg(
                    "--shape",
                    format!("\"{name}\": expected NAME/N with a number N"),
                )
            })?,
        ),
        None => (name, 1),
    };
    let c = match base {
        "huginn-0125" => huginn_0125(),
        "ouro-1.4b" => ouro_1_4b(),
        "ouro-2.6b" => Config {
            n_core: 48,
            ..ouro_1_4b()
        },
        "recurrent-llama-3.2" => recurrent_llama_3_2(),
        "recurrent-olmo-2" => recurrent_olmo_2(),
        _ => {
            return Err(RavenError::arg(
                "--shape",
                format!("\"{name}\" is not one of huginn-0125, ouro-1.4b, ouro-2.6b, recurrent-llama-3.2, recurrent-olmo-2 (optionally /N)"),
            ))
        }
    };
    scaled(c, div, base)
}

/// `c` with h, heads, key/value heads and F divided by `div` (which must divide the key/value
/// heads); F rounded down to a multiple of 32.
fn scaled(mut c: Config, div: usize, base: &str) -> Result<Config> {
    if div == 0 || !c.n_kv_heads.is_multiple_of(div) || !c.n_heads.is_multiple_of(div) {
        return Err(RavenError::arg(
            "--shape",
            format!(
                "{base}/{div}: N must divide the {} key/value heads (and the {} heads)",
                c.n_kv_heads, c.n_heads
            ),
        ));
    }
    c.n_embd /= div;
    c.n_heads /= div;
    c.n_kv_heads /= div;
    c.n_ff /= div;
    c.n_ff -= c.n_ff % 32;
    if c.family == Family::Huginn {
        c.embed_scale = (c.n_embd as f32).sqrt();
        c.state_init_std = (2.0 / (5.0 * c.n_embd as f64)).sqrt() as f32;
    }
    Ok(c)
}

/// Huginn-0125 scaled down by `div` (which must divide its 55 heads: 1, 5, 11 or 55): h, heads
/// and F divided by `div` (F rounded down to a multiple of 32), the same depth, vocabulary and
/// context. `huginn-0125/5` (h = 1056) keeps the full model's proportions at 1/25 of its weights.
pub fn huginn_0125_scaled(div: usize) -> Result<Config> {
    scaled(huginn_0125(), div, "huginn-0125")
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
    // (name, dims in ggml order, type, std of the values; 0 = a norm of ones), from the
    // family's schema: the names and shapes `raven convert` writes.
    let plan: Vec<(String, Vec<u64>, GgmlType, f32)> = raven_core::schema::entries(c)
        .into_iter()
        .map(|e| {
            let (mut t, std) = match e.role {
                Role::Vector if e.name.ends_with(".bias") => (GgmlType::F32, 0.01),
                Role::Vector if e.name.starts_with("exit_gate") => (GgmlType::F32, 0.02),
                Role::Vector => (GgmlType::F32, 0.0),
                Role::Embedding => (et, 0.02),
                Role::Matrix => (wt, 0.02),
            };
            if t.row_bytes(e.dims[0]).is_none() {
                t = GgmlType::F16;
            }
            (e.name, e.dims, t, std)
        })
        .collect();
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
        w.add_kv("general.architecture", Value::Str(c.family.arch().into()));
        w.add_kv(
            "general.name",
            Value::Str(format!("synthetic-{}", c.family.arch())),
        );
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

/// Element type of the tensors [`write_hf`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDtype {
    /// bfloat16, as Huginn-0125 is published.
    BF16,
    /// float32.
    F32,
}

impl HfDtype {
    fn bytes(self) -> u64 {
        match self {
            HfDtype::BF16 => 2,
            HfDtype::F32 => 4,
        }
    }
    fn name(self) -> &'static str {
        match self {
            HfDtype::BF16 => "BF16",
            HfDtype::F32 => "F32",
        }
    }
}

/// The largest shard the family's published checkpoints were saved with: Huginn-0125 2 GiB,
/// the retrofitted models save_pretrained's default 5 GB, Ouro one file.
pub fn default_shard_bytes(f: Family) -> u64 {
    match f {
        Family::Huginn => 2 << 30,
        Family::RecurrentLlama | Family::RecurrentOlmo2 => 5_000_000_000,
        Family::Ouro => u64::MAX,
    }
}

/// Options of [`write_hf`].
#[derive(Clone, Debug)]
pub struct HfOptions {
    /// Seed of the weights.
    pub seed: u64,
    /// Largest shard in bytes of tensor data (`save_pretrained`'s `max_shard_size`); a tensor
    /// larger than this gets a shard of its own.
    pub max_shard_bytes: u64,
    /// Element type of every tensor.
    pub dtype: HfDtype,
    /// `tokenizer.json` to ship; `None` writes the demo tokenizer filled up to the vocabulary
    /// with Huginn's special tokens at the top of the id range.
    pub tokenizer_json: Option<String>,
}

impl Default for HfOptions {
    fn default() -> Self {
        HfOptions {
            seed: 0,
            max_shard_bytes: 2 << 30,
            dtype: HfDtype::BF16,
            tokenizer_json: None,
        }
    }
}

/// How [`write_hf`] fills a tensor.
#[derive(Clone, Copy, Debug)]
enum HfInit {
    /// Normal values of this standard deviation.
    Normal(f32),
    /// Norm weights: 1 + N(0, 0.1²), so that a norm read from the wrong place shows.
    Norm,
    /// The `freqs_cis` RoPE buffer: (cos, sin) of pos · θ^(−2i/d).
    Rope,
}

/// One tensor of a Hugging Face Huginn checkpoint.
struct HfTensor {
    name: String,
    shape: Vec<usize>,
    init: HfInit,
}

impl HfTensor {
    fn elems(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// The tensors of a Huginn checkpoint in the order `save_pretrained` walks the state dict (the
/// model's own buffer `freqs_cis`, then `transformer.wte`, the prelude, the adapter, the core
/// blocks, the coda, `ln_f`, and `lm_head` when untied; inside a block a module's own parameter
/// (`qk_bias`) before its children's), which decides how tensors fall into shards.
fn hf_tensors(c: &Config) -> Vec<HfTensor> {
    match c.family {
        Family::Huginn => hf_tensors_huginn(c),
        Family::Ouro => hf_tensors_ouro(c),
        Family::RecurrentLlama | Family::RecurrentOlmo2 => hf_tensors_retro(c),
    }
}

/// Ouro's tensors in `OuroForCausalLM`'s state-dict order: the embedding, each layer's
/// attention (q, k, v, o), MLP (gate, up, down) and four norms, the final norm, the exit gate,
/// the head.
fn hf_tensors_ouro(c: &Config) -> Vec<HfTensor> {
    let (h, f, v) = (c.n_embd, c.n_ff, c.n_vocab);
    let (qw, kw) = (c.q_width(), c.kv_width());
    let t = |name: String, shape: Vec<usize>, init| HfTensor { name, shape, init };
    let n = HfInit::Normal(0.02);
    let mut out = vec![t("model.embed_tokens.weight".into(), vec![v, h], n)];
    for i in 0..c.n_core {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        out.push(t(p("self_attn.q_proj.weight"), vec![qw, h], n));
        out.push(t(p("self_attn.k_proj.weight"), vec![kw, h], n));
        out.push(t(p("self_attn.v_proj.weight"), vec![kw, h], n));
        out.push(t(p("self_attn.o_proj.weight"), vec![h, qw], n));
        out.push(t(p("mlp.gate_proj.weight"), vec![f, h], n));
        out.push(t(p("mlp.up_proj.weight"), vec![f, h], n));
        out.push(t(p("mlp.down_proj.weight"), vec![h, f], n));
        for norm in [
            "input_layernorm",
            "input_layernorm_2",
            "post_attention_layernorm",
            "post_attention_layernorm_2",
        ] {
            out.push(t(p(&format!("{norm}.weight")), vec![h], HfInit::Norm));
        }
    }
    out.push(t("model.norm.weight".into(), vec![h], HfInit::Norm));
    out.push(t("model.early_exit_gate.weight".into(), vec![1, h], n));
    out.push(t("model.early_exit_gate.bias".into(), vec![1], n));
    out.push(t("lm_head.weight".into(), vec![v, h], n));
    out
}

/// The retrofitted models' tensors in `convert_llama.py` / `convert_olmo.py`'s module order:
/// the embedding, the prelude, the adapter, the core, the coda, ln_f, the head; per block
/// norm_1, the attention (Wqkv, OLMo's q/k norms, proj), norm_2, the MLP.
fn hf_tensors_retro(c: &Config) -> Vec<HfTensor> {
    let (h, f, v) = (c.n_embd, c.n_ff, c.n_vocab);
    let (qw, kw) = (c.q_width(), c.kv_width());
    let std = (2.0 / (5.0 * h as f64)).sqrt() as f32;
    let n = HfInit::Normal(std);
    let t = |name: String, shape: Vec<usize>, init| HfTensor { name, shape, init };
    let block = |out: &mut Vec<HfTensor>, p: String| {
        out.push(t(format!("{p}.norm_1.weight"), vec![h], HfInit::Norm));
        out.push(t(format!("{p}.attn.Wqkv.weight"), vec![qw + 2 * kw, h], n));
        if c.family == Family::RecurrentOlmo2 {
            out.push(t(format!("{p}.attn.q_norm.weight"), vec![qw], HfInit::Norm));
            out.push(t(format!("{p}.attn.k_norm.weight"), vec![kw], HfInit::Norm));
        }
        out.push(t(format!("{p}.attn.proj.weight"), vec![h, qw], n));
        out.push(t(format!("{p}.norm_2.weight"), vec![h], HfInit::Norm));
        out.push(t(format!("{p}.mlp.fc.weight"), vec![2 * f, h], n));
        out.push(t(format!("{p}.mlp.proj.weight"), vec![h, f], n));
    };
    let mut out = vec![t("transformer.wte.weight".into(), vec![v, h], n)];
    for i in 0..c.n_prelude {
        block(&mut out, format!("transformer.prelude.{i}"));
    }
    out.push(t("transformer.adapter.weight".into(), vec![h, 2 * h], n));
    for i in 0..c.n_core {
        block(&mut out, format!("transformer.core_block.{i}"));
    }
    for i in 0..c.n_coda {
        block(&mut out, format!("transformer.coda.{i}"));
    }
    out.push(t("transformer.ln_f.weight".into(), vec![h], HfInit::Norm));
    out.push(t("lm_head.weight".into(), vec![v, h], n));
    out
}

fn hf_tensors_huginn(c: &Config) -> Vec<HfTensor> {
    let (h, f, v, d) = (c.n_embd, c.n_ff, c.n_vocab, c.head_dim());
    // Huginn's "takase" initialisation: std sqrt(2/(5h)); output projections scaled down by
    // sqrt(2 · effective depth) (132 for Huginn-0125's shape).
    let std = (2.0 / (5.0 * h as f64)).sqrt() as f32;
    let depth = (c.n_prelude + c.n_core * c.mean_recurrence + c.n_coda).max(1);
    let out_std = std / (2.0 * depth as f32).sqrt();
    let t = |name: String, shape: Vec<usize>, init| HfTensor { name, shape, init };
    let mut out = vec![
        t(
            "freqs_cis".into(),
            vec![1, c.context, 1, d / 2, 2],
            HfInit::Rope,
        ),
        t(
            "transformer.wte.weight".into(),
            vec![v, h],
            HfInit::Normal(std),
        ),
    ];
    let block = |out: &mut Vec<HfTensor>, p: String| {
        out.push(t(format!("{p}.norm_1.weight"), vec![h], HfInit::Norm));
        if c.qk_bias {
            out.push(t(
                format!("{p}.attn.qk_bias"),
                vec![2, 1, c.n_heads, d],
                HfInit::Normal(0.02),
            ));
        }
        out.push(t(
            format!("{p}.attn.Wqkv.weight"),
            vec![3 * h, h],
            HfInit::Normal(std),
        ));
        out.push(t(
            format!("{p}.attn.proj.weight"),
            vec![h, h],
            HfInit::Normal(out_std),
        ));
        out.push(t(format!("{p}.norm_2.weight"), vec![h], HfInit::Norm));
        out.push(t(
            format!("{p}.mlp.fc.weight"),
            vec![2 * f, h],
            HfInit::Normal(std),
        ));
        out.push(t(
            format!("{p}.mlp.proj.weight"),
            vec![h, f],
            HfInit::Normal(out_std),
        ));
        out.push(t(format!("{p}.norm_3.weight"), vec![h], HfInit::Norm));
        out.push(t(format!("{p}.norm_4.weight"), vec![h], HfInit::Norm));
    };
    for i in 0..c.n_prelude {
        block(&mut out, format!("transformer.prelude.{i}"));
    }
    out.push(t(
        "transformer.adapter.weight".into(),
        vec![h, 2 * h],
        HfInit::Normal(std),
    ));
    for i in 0..c.n_core {
        block(&mut out, format!("transformer.core_block.{i}"));
    }
    for i in 0..c.n_coda {
        block(&mut out, format!("transformer.coda.{i}"));
    }
    out.push(t("transformer.ln_f.weight".into(), vec![h], HfInit::Norm));
    if !c.tied {
        out.push(t("lm_head.weight".into(), vec![v, h], HfInit::Normal(std)));
    }
    out
}

/// `huggingface_hub`'s sharding (what `save_pretrained` uses): walk the tensors in order, start
/// a new shard when the next one would pass `max` bytes; a tensor larger than `max` alone.
fn hf_shards(tensors: &[HfTensor], elem_bytes: u64, max: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_bytes = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let b = t.elems() * elem_bytes;
        if b > max {
            shards.push(vec![i]);
            continue;
        }
        if cur_bytes + b > max && !cur.is_empty() {
            shards.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.push(i);
        cur_bytes += b;
    }
    if !cur.is_empty() {
        shards.push(cur);
    }
    shards
}

/// Huginn's `config.json` for shape `c` (model_type `huginn_raven`, every key of the published
/// Huginn-0125 config), with the special ids of the tokenizer shipped beside it.
fn hf_config_json(c: &Config, bos: u32, eos: u32, pad: u32, dtype: HfDtype) -> serde_json::Value {
    let torch_dtype = if dtype == HfDtype::BF16 {
        "bfloat16"
    } else {
        "float32"
    };
    if c.family == Family::Ouro {
        // The keys OuroConfig.save_pretrained writes, with the published conventions.
        return serde_json::json!({
            "architectures": ["OuroForCausalLM"],
            "attention_dropout": 0.0,
            "auto_map": {
                "AutoConfig": "configuration_ouro.OuroConfig",
                "AutoModel": "modeling_ouro.OuroModel",
                "AutoModelForCausalLM": "modeling_ouro.OuroForCausalLM"
            },
            "bos_token_id": bos,
            "early_exit_threshold": c.exit_threshold.unwrap_or(1.0),
            "eos_token_id": eos,
            "head_dim": c.head_dim(),
            "hidden_act": "silu",
            "hidden_size": c.n_embd,
            "initializer_range": 0.02,
            "intermediate_size": c.n_ff,
            "layer_types": vec!["full_attention"; c.n_core],
            "max_position_embeddings": c.context,
            "max_window_layers": 28,
            "model_type": "ouro",
            "num_attention_heads": c.n_heads,
            "num_hidden_layers": c.n_core,
            "num_key_value_heads": c.n_kv_heads,
            "rms_norm_eps": c.norm_eps,
            "rope_scaling": null,
            "rope_theta": c.rope_base,
            "sliding_window": null,
            "tie_word_embeddings": c.tied,
            "torch_dtype": torch_dtype,
            "total_ut_steps": c.mean_recurrence,
            "transformers_version": "4.57.1",
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": c.n_vocab
        });
    }
    let mut j = hf_config_json_huginn(c, bos, eos, pad, torch_dtype);
    if c.family != Family::Huginn {
        // convert_llama.get_llama_huginn_config's update_dict on Huginn's config.
        let o = j.as_object_mut().expect("an object");
        o.insert("num_key_value_heads".into(), c.n_kv_heads.into());
        o.insert("head_dim".into(), c.head_dim().into());
        o.insert("rope_theta".into(), c.rope_base.into());
        o.insert("rope_base".into(), c.rope_base.into());
        o.insert("tie_embeddings".into(), false.into());
        o.insert("tie_word_embeddings".into(), false.into());
        // Llama-3.2's 131072; OLMo-2-0425-1B's 4096.
        let max_pos = if c.family == Family::RecurrentOlmo2 {
            4096
        } else {
            131072
        };
        o.insert("max_position_embeddings".into(), max_pos.into());
        o.insert(
            "init_values".into(),
            serde_json::json!({
                "embed_scale": 1.0,
                "embedding": c.state_init_std,
                "out_proj": c.state_init_std / 16.25,
                "std": c.state_init_std
            }),
        );
        if let Some(r) = c.rope_scaling {
            o.insert(
                "rope_scaling".into(),
                serde_json::json!({
                    "factor": r.factor,
                    "high_freq_factor": r.high_freq_factor,
                    "low_freq_factor": r.low_freq_factor,
                    "original_max_position_embeddings": r.original_context,
                    "rope_type": "llama3"
                }),
            );
        }
    }
    j
}

fn hf_config_json_huginn(
    c: &Config,
    bos: u32,
    eos: u32,
    pad: u32,
    torch_dtype: &str,
) -> serde_json::Value {
    let std = (2.0 / (5.0 * c.n_embd as f64)).sqrt();
    let depth = c.n_prelude + c.n_core * c.mean_recurrence + c.n_coda;
    // Two literals: one is past serde_json's macro recursion limit.
    let mut a = serde_json::json!({
        "activation_checkpoint_impl": "per-iteration",
        "architecture_class_name": "RecurrentGPT",
        "architectures": ["RavenForCausalLM"],
        "auto_map": {
            "AutoConfig": "raven_config_minimal.RavenConfig",
            "AutoModelForCausalLM": "raven_modeling_minimal.RavenForCausalLM"
        },
        "bias": false,
        "block_class_name": "SandwichBlock",
        "block_size": c.context,
        "bos_token_id": bos,
        "effective_expected_depth": depth,
        "eos_token_id": eos,
        "head_dim": c.head_dim(),
        "init_orthogonal": false,
        "init_strategy": "takase",
        "init_values": {
            "embed_scale": (c.n_embd as f64).sqrt(),
            "embedding": std,
            "out_proj": std / (2.0 * depth.max(1) as f64).sqrt(),
            "std": std
        },
        "injection_type": "linear",
        "intermediate_size": c.n_ff
    });
    let b = serde_json::json!({
        "mean_backprop_depth": 8,
        "mean_recurrence": c.mean_recurrence,
        "mlp_class_name": "GatedMLP",
        "model_type": "huginn_raven",
        "n_embd": c.n_embd,
        "n_heads": c.n_heads,
        "n_layers": c.n_blocks(),
        "n_layers_in_coda": c.n_coda,
        "n_layers_in_prelude": c.n_prelude,
        "n_layers_in_recurrent_block": c.n_core,
        "nonlin_name": "SiLU",
        "norm_class_name": "RMSNorm_llama",
        "norm_eps": c.norm_eps,
        "num_key_value_heads": c.n_heads,
        "pad_token_id": pad,
        "padded_vocab_size": c.n_vocab,
        "padding_multiple": 4096,
        "qk_bias": c.qk_bias,
        "rope_base": c.rope_base,
        "sampling_scheme": "poisson-lognormal-filling",
        "state_init": "like-init",
        "test_time_noise": 0,
        "test_time_noise_type": "fixed",
        "tie_embeddings": c.tied,
        "torch_dtype": torch_dtype,
        "transformers_version": "4.51.3",
        "vocab_size": c.n_vocab
    });
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Huginn's chat template (the published `tokenizer_config.json`'s).
const HUGINN_CHAT_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{{ '<|begin_header|>' + message['role'] + '<|end_header|>\n\n' + message['content'] | trim + '<|end_turn|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|begin_header|>Huginn<|end_header|>\n\n' }}{% endif %}";

/// Values `first..first + out.len()` of tensor `t` (index `ti`), in row-major order: the same
/// for any chunking and thread count (each block of 4096 values has its own seeded generator).
fn hf_values(c: &Config, t: &HfTensor, ti: usize, seed: u64, first: u64, out: &mut [f32]) {
    const BLOCK: u64 = 4096;
    match t.init {
        HfInit::Rope => {
            let half = t.shape[3] as u64;
            for (k, o) in out.iter_mut().enumerate() {
                let e = first + k as u64;
                let (pos, i, sin) = (e / (2 * half), (e / 2) % half, e % 2 == 1);
                let inv = 1.0f64 / (c.rope_base as f64).powf((2 * i) as f64 / (2 * half) as f64);
                let a = pos as f64 * inv;
                *o = if sin { a.sin() } else { a.cos() } as f32;
            }
        }
        HfInit::Normal(_) | HfInit::Norm => {
            // Irwin–Hall of four 16-bit uniforms: near-normal, a few ns per value (a full-size
            // checkpoint has 3.6 billion).
            let one = |r: u64| -> f32 {
                let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
                (s as f32 / 65536.0 - 2.0) * 3f32.sqrt()
            };
            let mut k = 0usize;
            while k < out.len() {
                let e = first + k as u64;
                let (b, off) = (e / BLOCK, e % BLOCK);
                let mut rng = Rng::new(seed ^ ((ti as u64) << 44) ^ b.wrapping_mul(0x9E37));
                for _ in 0..off {
                    rng.next_u64();
                }
                let n = ((BLOCK - off) as usize).min(out.len() - k);
                for o in &mut out[k..k + n] {
                    let z = one(rng.next_u64());
                    *o = match t.init {
                        HfInit::Normal(std) => z * std,
                        _ => 1.0 + 0.1 * z,
                    };
                }
                k += n;
            }
        }
    }
}

/// What [`write_hf`] wrote.
#[derive(Debug)]
pub struct HfReport {
    /// Shard files, in order.
    pub shards: Vec<std::path::PathBuf>,
    /// Bytes of tensor data.
    pub total_bytes: u64,
    /// Tensors written.
    pub n_tensors: usize,
}

/// Writes a Hugging Face Huginn checkpoint of shape `c` with random weights into the directory
/// `dir` (created; it must not exist or be empty): `config.json`, sharded safetensors with
/// `model.safetensors.index.json` named, ordered and split as `save_pretrained` does,
/// `tokenizer.json`, `tokenizer_config.json` (Huginn's chat template) and
/// `generation_config.json`. With `huginn_0125()` this is the published checkpoint's exact
/// layout (7.1 GB of bf16 in four shards), so `raven convert` can be run at full size by anyone.
/// Every file is written under a temporary name and renamed when complete.
pub fn write_hf(c: &Config, dir: &Path, o: &HfOptions) -> Result<HfReport> {
    use std::io::Write;
    c.validate("synthetic checkpoint")?;
    if o.max_shard_bytes == 0 {
        return Err(RavenError::arg(
            "--max-shard-size",
            "must be at least 1 byte",
        ));
    }
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| RavenError::io(dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(RavenError::io(
                dir,
                std::io::Error::other(
                    "the directory exists and is not empty (synth --hf writes a new checkpoint)",
                ),
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| RavenError::io(dir, e))?;

    // Tokenizer and special ids first: a tokenizer that does not fit fails before 7 GB are made.
    let (tok_json, synthetic_tok) = match &o.tokenizer_json {
        Some(j) => (j.clone(), false),
        None => (tokenizer_json(c.n_vocab)?.0, true),
    };
    let tok = raven_text::Tokenizer::from_json(&tok_json)
        .map_err(|e| RavenError::arg("--tokenizer", format!("not a usable tokenizer: {e}")))?;
    if tok.vocab_size() > c.n_vocab {
        return Err(RavenError::arg(
            "--tokenizer",
            format!(
                "the tokenizer has {} ids but the embedding only {} rows",
                tok.vocab_size(),
                c.n_vocab
            ),
        ));
    }
    let id = |s: &str| tok.token_to_id(s);
    let (bos, eos, pad) = (
        id("<|begin_text|>").unwrap_or(0),
        id("<|end_text|>").unwrap_or(0),
        id("<|pad|>").unwrap_or(0),
    );
    let end_turn = id("<|end_turn|>");

    let tensors = hf_tensors(c);
    let eb = o.dtype.bytes();
    let shards = hf_shards(&tensors, eb, o.max_shard_bytes);
    let n_sh = shards.len();
    let mut written: Vec<std::path::PathBuf> = Vec::new();
    let res = (|| -> Result<HfReport> {
        let mut weight_map = std::collections::BTreeMap::new();
        let mut total = 0u64;
        let mut shard_paths = Vec::new();
        for (si, members) in shards.iter().enumerate() {
            // One shard: `model.safetensors` without an index, as save_pretrained writes it
            // (and as the published Ouro checkpoints are).
            let fname = if n_sh == 1 {
                "model.safetensors".to_string()
            } else {
                format!("model-{:05}-of-{:05}.safetensors", si + 1, n_sh)
            };
            // safetensors stores a shard's tensors sorted by name (all of one type here).
            let mut order = members.clone();
            order.sort_by(|&a, &b| tensors[a].name.cmp(&tensors[b].name));
            let mut header = serde_json::Map::new();
            // The published Ouro files carry no metadata; save_pretrained's do.
            if c.family != Family::Ouro {
                header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
            }
            let mut off = 0u64;
            for &ti in &order {
                let t = &tensors[ti];
                let n = t.elems() * eb;
                header.insert(
                    t.name.clone(),
                    serde_json::json!({
                        "dtype": o.dtype.name(),
                        "shape": t.shape,
                        "data_offsets": [off, off + n],
                    }),
                );
                weight_map.insert(t.name.clone(), fname.clone());
                off += n;
            }
            total += off;
            let mut hbytes =
                serde_json::to_vec(&header).map_err(|e| RavenError::arg("synth", e.to_string()))?;
            while hbytes.len() % 8 != 0 {
                hbytes.push(b' ');
            }
            let path = dir.join(&fname);
            let tmp = dir.join(format!(".{fname}.tmp"));
            written.push(tmp.clone());
            let file = File::create(&tmp).map_err(|e| RavenError::io(&tmp, e))?;
            let mut w = BufWriter::with_capacity(1 << 22, file);
            let io = |e| RavenError::io(&tmp, e);
            w.write_all(&(hbytes.len() as u64).to_le_bytes())
                .map_err(io)?;
            w.write_all(&hbytes).map_err(io)?;
            let mut vals = Vec::new();
            let mut bytes = Vec::new();
            for &ti in &order {
                let t = &tensors[ti];
                let n = t.elems();
                let chunk = 1u64 << 22;
                let mut e0 = 0u64;
                while e0 < n {
                    let e1 = (e0 + chunk).min(n);
                    vals.resize((e1 - e0) as usize, 0.0f32);
                    vals.par_chunks_mut(1 << 16)
                        .enumerate()
                        .for_each(|(k, part)| {
                            hf_values(c, t, ti, o.seed, e0 + (k << 16) as u64, part)
                        });
                    bytes.clear();
                    match o.dtype {
                        HfDtype::BF16 => bytes.extend(
                            vals.iter()
                                .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()),
                        ),
                        HfDtype::F32 => bytes.extend(vals.iter().flat_map(|&x| x.to_le_bytes())),
                    }
                    w.write_all(&bytes).map_err(io)?;
                    e0 = e1;
                }
            }
            let file = w
                .into_inner()
                .map_err(|e| RavenError::io(&tmp, e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(|e| RavenError::io(&path, e))?;
            written.pop();
            written.push(path.clone());
            shard_paths.push(path);
        }
        let write_json = |written: &mut Vec<std::path::PathBuf>,
                          name: &str,
                          v: &serde_json::Value|
         -> Result<()> {
            let p = dir.join(name);
            let text = serde_json::to_string_pretty(v)
                .map_err(|e| RavenError::arg("synth", e.to_string()))?;
            std::fs::write(&p, text + "\n").map_err(|e| RavenError::io(&p, e))?;
            written.push(p);
            Ok(())
        };
        if n_sh > 1 {
            write_json(
                &mut written,
                "model.safetensors.index.json",
                &serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map }),
            )?;
        }
        write_json(
            &mut written,
            "config.json",
            &hf_config_json(c, bos, eos, pad, o.dtype),
        )?;
        let mut eos_ids = vec![eos];
        eos_ids.extend(end_turn);
        write_json(
            &mut written,
            "generation_config.json",
            &serde_json::json!({ "bos_token_id": bos, "eos_token_id": eos_ids, "pad_token_id": pad }),
        )?;
        write_json(
            &mut written,
            "tokenizer_config.json",
            &serde_json::json!({
                "bos_token": "<|begin_text|>",
                "eos_token": "<|end_text|>",
                "pad_token": "<|pad|>",
                "chat_template": HUGINN_CHAT_TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast"
            }),
        )?;
        let tp = dir.join("tokenizer.json");
        let tok_text = if synthetic_tok {
            // Pretty-printed like the published file (it is read by people too).
            let v: serde_json::Value = serde_json::from_str(&tok_json)
                .map_err(|e| RavenError::arg("synth", e.to_string()))?;
            serde_json::to_string_pretty(&v).map_err(|e| RavenError::arg("synth", e.to_string()))?
        } else {
            tok_json.clone()
        };
        std::fs::write(&tp, tok_text).map_err(|e| RavenError::io(&tp, e))?;
        written.push(tp);
        Ok(HfReport {
            shards: shard_paths,
            total_bytes: total,
            n_tensors: tensors.len(),
        })
    })();
    if res.is_err() {
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
    }
    res
}
