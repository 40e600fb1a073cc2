//! Model hyperparameters (SPEC §1), read from a Hugging Face `config.json` or from GGUF metadata.

use std::path::Path;

use raven_gguf::{Gguf, Value};
use serde_json::Value as Json;

use crate::error::{RavenError, Result};

/// The GGUF architecture name of Huginn-0125 (SPEC §3).
pub const ARCH: &str = "huginn";

/// The families of recurrent-depth models Raven runs (docs/gguf.md). The family fixes what the
/// hyperparameters do not: the block's norm placement, the RoPE convention, where the final norm
/// applies and how the loop is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Huginn-0125: 4-norm sandwich blocks, interleaved RoPE, prelude / core / coda with an
    /// adapter, ln_f before and after the coda.
    Huginn,
    /// Retrofitted recurrence on Llama (Recurrent-Llama-3.2, TinyLlama): pre-norm 2-norm blocks,
    /// grouped-query attention, rotate-half RoPE (optionally llama3-scaled), ln_f after the coda only.
    RecurrentLlama,
    /// Retrofitted recurrence on OLMo-2: post-norm blocks (norms on the branch outputs) with
    /// q/k norms over the whole projections; otherwise as `RecurrentLlama`.
    RecurrentOlmo2,
    /// Ouro (LoopLM): the whole stack looped, a shared final norm after every step feeding the
    /// next, 4 norms per layer (2 on branch outputs), a learned exit gate.
    Ouro,
}

/// Where a block's norms act (the block kinds of the families).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// x ← n2(x + attn(n1 x)); x ← n4(x + mlp(n3 x)) (Huginn).
    Sandwich,
    /// x ← x + attn(n1 x); x ← x + mlp(n2 x) (Llama).
    PreNorm,
    /// x ← x + n1(attn x); x ← x + n2(mlp x), q/k normed (OLMo-2).
    PostNorm,
    /// x ← x + n2(attn(n1 x)); x ← x + n4(mlp(n3 x)) (Ouro).
    PrePostNorm,
}

impl Family {
    /// The GGUF `general.architecture` name; also the prefix of the family's metadata keys.
    pub fn arch(self) -> &'static str {
        match self {
            Family::Huginn => ARCH,
            Family::RecurrentLlama => "recurrent-llama",
            Family::RecurrentOlmo2 => "recurrent-olmo2",
            Family::Ouro => "ouro",
        }
    }

    /// The family of a GGUF architecture name.
    pub fn from_arch(a: &str) -> Option<Family> {
        [
            Family::Huginn,
            Family::RecurrentLlama,
            Family::RecurrentOlmo2,
            Family::Ouro,
        ]
        .into_iter()
        .find(|f| f.arch() == a)
    }

    /// The block kind.
    pub fn block(self) -> BlockKind {
        match self {
            Family::Huginn => BlockKind::Sandwich,
            Family::RecurrentLlama => BlockKind::PreNorm,
            Family::RecurrentOlmo2 => BlockKind::PostNorm,
            Family::Ouro => BlockKind::PrePostNorm,
        }
    }

    /// RoPE rotates pairs (i, i + d/2) (rotate-half, HF Llama) instead of (2i, 2i + 1) (Huginn).
    pub fn rope_halves(self) -> bool {
        self != Family::Huginn
    }

    /// The coda reads ln_f(s) (Huginn) instead of s itself (the retrofitted models).
    pub fn norm_before_coda(self) -> bool {
        self == Family::Huginn
    }

    /// The whole stack is the loop (Ouro): no prelude, coda or adapter; the state starts as the
    /// embedding and ln_f follows every step.
    pub fn looped_stack(self) -> bool {
        self == Family::Ouro
    }

    /// A human name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::Huginn => "Huginn",
            Family::RecurrentLlama => "retrofitted-recurrence Llama",
            Family::RecurrentOlmo2 => "retrofitted-recurrence OLMo-2",
            Family::Ouro => "Ouro",
        }
    }
}

/// llama3 RoPE frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// `factor`.
    pub factor: f32,
    /// `low_freq_factor`.
    pub low_freq_factor: f32,
    /// `high_freq_factor`.
    pub high_freq_factor: f32,
    /// `original_max_position_embeddings`.
    pub original_context: f32,
}

/// Model hyperparameters. Names follow SPEC §1; for Ouro the core is the whole stack and
/// `mean_recurrence` its trained loop count.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The family.
    pub family: Family,
    /// Embedding width h.
    pub n_embd: usize,
    /// Attention (query) heads H.
    pub n_heads: usize,
    /// Key/value heads K (H for plain multi-head attention); query head i reads K head i / (H/K).
    pub n_kv_heads: usize,
    /// Head dimension d.
    pub d_head: usize,
    /// llama3 RoPE scaling, if any.
    pub rope_scaling: Option<Llama3Scaling>,
    /// Default q of the exit gate (Ouro's `early_exit_threshold`); None without a gate.
    pub exit_threshold: Option<f32>,
    /// MLP width F.
    pub n_ff: usize,
    /// Vocabulary rows of the embedding V.
    pub n_vocab: usize,
    /// Prelude blocks P.
    pub n_prelude: usize,
    /// Core (recurrent) blocks C.
    pub n_core: usize,
    /// Coda blocks K.
    pub n_coda: usize,
    /// Default number of core iterations R.
    pub mean_recurrence: usize,
    /// Whether attention has q/k biases.
    pub qk_bias: bool,
    /// RoPE base θ.
    pub rope_base: f32,
    /// RMSNorm ε.
    pub norm_eps: f32,
    /// Whether the output head is the embedding.
    pub tied: bool,
    /// Trained context length.
    pub context: usize,
    /// Embedding scale, sqrt(h).
    pub embed_scale: f32,
    /// Initial-state standard deviation before scaling, sqrt(2/(5h)).
    pub state_init_std: f32,
}

impl Config {
    /// Head dimension d.
    pub fn head_dim(&self) -> usize {
        self.d_head
    }

    /// Width of the query projection H·d.
    pub fn q_width(&self) -> usize {
        self.n_heads * self.d_head
    }

    /// Width of one key (or value) row in the cache, K·d.
    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.d_head
    }

    /// Whether the model has an exit gate (Ouro).
    pub fn has_gate(&self) -> bool {
        self.exit_threshold.is_some()
    }

    /// Total blocks P + C + K.
    pub fn n_blocks(&self) -> usize {
        self.n_prelude + self.n_core + self.n_coda
    }

    /// Checks internal consistency and sane bounds (a file may claim anything). Messages name
    /// the GGUF metadata keys; `what` names the file.
    pub fn validate(&self, what: &str) -> Result<()> {
        self.check(what, KeyNames::Gguf(self.family))
    }

    fn check(&self, what: &str, keys: KeyNames) -> Result<()> {
        let bad = |msg: String| RavenError::Model {
            path: what.to_string(),
            msg,
        };
        let k = |key: Key| keys.name(key);
        let limits: [(Key, usize, usize); 10] = [
            (Key::Embd, self.n_embd, 1 << 16),
            (Key::Heads, self.n_heads, 1 << 12),
            (Key::KvHeads, self.n_kv_heads, 1 << 12),
            (Key::Ff, self.n_ff, 1 << 18),
            (Key::Vocab, self.n_vocab, 1 << 22),
            (Key::Prelude, self.n_prelude, 256),
            (Key::Core, self.n_core, 256),
            (Key::Coda, self.n_coda, 256),
            (Key::Recurrence, self.mean_recurrence, 4096),
            (Key::Context, self.context, 1 << 22),
        ];
        for (key, v, max) in limits {
            if v > max {
                return Err(bad(format!(
                    "{} = {v} is larger than Raven accepts ({max})",
                    k(key)
                )));
            }
        }
        for (key, v) in [
            (Key::Embd, self.n_embd),
            (Key::Heads, self.n_heads),
            (Key::Ff, self.n_ff),
            (Key::Vocab, self.n_vocab),
            (Key::Core, self.n_core),
            (Key::Context, self.context),
        ] {
            if v == 0 {
                return Err(bad(format!("{} is 0", k(key))));
            }
        }
        if self.d_head == 0 || self.d_head & 1 == 1 || self.d_head > 1 << 12 {
            return Err(bad(format!(
                "{} = {}: the head dimension must be a positive even number (at most 4096; {} = {})",
                k(Key::HeadDim),
                self.d_head,
                k(Key::Heads),
                self.n_heads
            )));
        }
        if self.family == Family::Huginn && self.d_head * self.n_heads != self.n_embd {
            return Err(bad(format!(
                "{} = {} is not {} = {} times the head dimension {}: Huginn's heads split the width",
                k(Key::Embd),
                self.n_embd,
                k(Key::Heads),
                self.n_heads,
                self.d_head
            )));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(format!(
                "{} = {} does not divide {} = {}: each key/value head must serve a whole group of query heads",
                k(Key::KvHeads),
                self.n_kv_heads,
                k(Key::Heads),
                self.n_heads
            )));
        }
        if self.family.looped_stack() && (self.n_prelude != 0 || self.n_coda != 0) {
            return Err(bad(format!(
                "a {} model loops its whole stack: it has no prelude or coda",
                self.family.name()
            )));
        }
        if let Some(q) = self.exit_threshold {
            if !(q.is_finite() && q > 0.0 && q <= 1.0) {
                return Err(bad(format!(
                    "{} = {q} is not in (0, 1]",
                    k(Key::ExitThreshold)
                )));
            }
        }
        if let Some(r) = self.rope_scaling {
            let ok = [
                r.factor,
                r.low_freq_factor,
                r.high_freq_factor,
                r.original_context,
            ]
            .iter()
            .all(|x| x.is_finite() && *x > 0.0)
                && r.high_freq_factor > r.low_freq_factor;
            if !ok {
                return Err(bad(format!(
                    "{} {r:?}: factors must be positive and high_freq_factor above low_freq_factor",
                    k(Key::RopeScaling)
                )));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(bad(format!(
                "{} = {} is not a finite non-negative number",
                k(Key::Eps),
                self.norm_eps
            )));
        }
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(bad(format!(
                "{} = {} is not a positive number",
                k(Key::Rope),
                self.rope_base
            )));
        }
        let a = self.family.arch();
        if !(self.embed_scale.is_finite()
            && self.state_init_std.is_finite()
            && self.state_init_std >= 0.0)
        {
            return Err(bad(format!(
                "{a}.embedding_scale ({}) or {a}.state_init_std ({}) is not finite",
                self.embed_scale, self.state_init_std
            )));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`: Huginn-0125 and the retrofitted models
    /// (`model_type` "huginn_raven"), Ouro ("ouro"). A retrofitted model is told from Huginn by
    /// its Llama-style keys (`rope_theta`, `rope_scaling`, fewer KV heads, `embed_scale` 1); its
    /// OLMo-2 variant only by its tensors (q/k norms), see `raven_convert::checkpoint::Checkpoint`.
    pub fn from_hf_json(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| RavenError::io(path, e))?;
        let j: Json = serde_json::from_str(&text).map_err(|e| RavenError::Json {
            path: path.into(),
            msg: format!("not valid JSON: {e}"),
        })?;
        let err = |msg: String| RavenError::Json {
            path: path.into(),
            msg,
        };
        let mt = j.get("model_type").and_then(Json::as_str);
        let family = match mt {
            Some("ouro") => Family::Ouro,
            Some("huginn_raven") | None => {
                let one = j
                    .get("init_values")
                    .and_then(|v| v.get("embed_scale"))
                    .and_then(Json::as_f64)
                    == Some(1.0);
                if j.get("rope_theta").is_some() || j.get("rope_scaling").is_some() || one {
                    Family::RecurrentLlama
                } else {
                    Family::Huginn
                }
            }
            Some(other) => {
                let arch = j
                    .get("architectures")
                    .map(|a| format!(" (architectures {a})"))
                    .unwrap_or_default();
                return Err(err(format!(
                    "model_type is \"{other}\"{arch}: Raven converts Huginn-0125 and the retrofitted-recurrence models (\"huginn_raven\") and Ouro (\"ouro\")"
                )));
            }
        };
        let uint = |key: &str| -> Result<usize> {
            match j.get(key) {
                Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    err(format!(
                        "key \"{key}\" must be a non-negative integer, found {v}"
                    ))
                }),
                None => Err(err(format!("missing key \"{key}\""))),
            }
        };
        let opt_uint = |key: &str| -> Result<Option<usize>> {
            match j.get(key) {
                None | Some(Json::Null) => Ok(None),
                Some(_) => uint(key).map(Some),
            }
        };
        let float = |key: &str, default: Option<f64>| -> Result<f32> {
            match j.get(key) {
                Some(v) => v
                    .as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| err(format!("key \"{key}\" must be a number, found {v}"))),
                None => default
                    .map(|d| d as f32)
                    .ok_or_else(|| err(format!("missing key \"{key}\""))),
            }
        };
        let boolean = |key: &str, default: bool| -> Result<bool> {
            match j.get(key) {
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| err(format!("key \"{key}\" must be true or false, found {v}"))),
                None => Ok(default),
            }
        };
        let rope_scaling = match j.get("rope_scaling") {
            None | Some(Json::Null) => None,
            Some(r) => {
                let ty = r
                    .get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Json::as_str);
                if ty != Some("llama3") {
                    return Err(err(format!(
                        "rope_scaling {r} is not supported (Raven knows the llama3 scaling)"
                    )));
                }
                let f = |k: &str| -> Result<f32> {
                    r.get(k)
                        .and_then(Json::as_f64)
                        .map(|x| x as f32)
                        .ok_or_else(|| err(format!("rope_scaling.{k} is missing or not a number")))
                };
                Some(Llama3Scaling {
                    factor: f("factor")?,
                    low_freq_factor: f("low_freq_factor")?,
                    high_freq_factor: f("high_freq_factor")?,
                    original_context: f("original_max_position_embeddings")?,
                })
            }
        };
        let cfg = if family == Family::Ouro {
            let n_embd = uint("hidden_size")?;
            let n_heads = uint("num_attention_heads")?;
            if n_heads == 0 {
                return Err(err("num_attention_heads is 0".into()));
            }
            let n_kv_heads = opt_uint("num_key_value_heads")?.unwrap_or(n_heads);
            if boolean("use_sliding_window", false)? {
                return Err(err(
                    "use_sliding_window is true: Raven runs Ouro with full attention only".into(),
                ));
            }
            if j.get("hidden_act")
                .and_then(Json::as_str)
                .is_some_and(|a| a != "silu")
            {
                return Err(err(format!(
                    "hidden_act {} is not supported (Ouro uses silu)",
                    j["hidden_act"]
                )));
            }
            Config {
                family,
                n_embd,
                n_heads,
                n_kv_heads,
                d_head: opt_uint("head_dim")?.unwrap_or(n_embd / n_heads),
                rope_scaling,
                exit_threshold: Some(float("early_exit_threshold", Some(1.0))?),
                n_ff: uint("intermediate_size")?,
                n_vocab: uint("vocab_size")?,
                n_prelude: 0,
                n_core: uint("num_hidden_layers")?,
                n_coda: 0,
                mean_recurrence: opt_uint("total_ut_steps")?.unwrap_or(4),
                qk_bias: false,
                rope_base: float("rope_theta", Some(10000.0))?,
                norm_eps: float("rms_norm_eps", Some(1e-6))?,
                tied: boolean("tie_word_embeddings", false)?,
                context: uint("max_position_embeddings")?,
                embed_scale: 1.0,
                state_init_std: 0.0,
            }
        } else {
            let n_embd = uint("n_embd")?;
            let n_heads = uint("n_heads")?;
            if n_heads == 0 {
                return Err(err("n_heads is 0".into()));
            }
            let retro = family != Family::Huginn;
            let n_vocab = match j.get("padded_vocab_size") {
                Some(_) => uint("padded_vocab_size")?,
                None => uint("vocab_size")?,
            };
            let init = |k: &str| {
                j.get("init_values")
                    .and_then(|v| v.get(k))
                    .and_then(Json::as_f64)
            };
            Config {
                family,
                n_embd,
                n_heads,
                n_kv_heads: opt_uint("num_key_value_heads")?.unwrap_or(n_heads),
                // Huginn's and the Llama code take d = h / H; OLMo's reads head_dim (equal in
                // every published config).
                d_head: if retro {
                    opt_uint("head_dim")?.unwrap_or(n_embd / n_heads)
                } else {
                    n_embd / n_heads
                },
                rope_scaling,
                exit_threshold: None,
                n_ff: uint("intermediate_size")?,
                n_vocab,
                n_prelude: uint("n_layers_in_prelude")?,
                n_core: uint("n_layers_in_recurrent_block")?,
                n_coda: uint("n_layers_in_coda")?,
                mean_recurrence: uint("mean_recurrence")?,
                qk_bias: boolean("qk_bias", false)?,
                // The retrofitted code reads rope_theta (rope_base, inherited, is unused).
                rope_base: if retro {
                    float("rope_theta", Some(500000.0))?
                } else {
                    float("rope_base", Some(50000.0))?
                },
                norm_eps: float("norm_eps", Some(1e-6))?,
                tied: boolean("tie_embeddings", true)?,
                // The retrofitted models were trained on `block_size` (1024) tokens from bases
                // whose RoPE (llama3-scaled for Llama-3.2) serves `max_position_embeddings`.
                context: match (retro, opt_uint("max_position_embeddings")?) {
                    (true, Some(p)) => p.max(uint("block_size")?),
                    _ => uint("block_size")?,
                },
                embed_scale: init("embed_scale").unwrap_or((n_embd as f64).sqrt()) as f32,
                state_init_std: init("std").unwrap_or((2.0 / (5.0 * n_embd as f64)).sqrt()) as f32,
            }
        };
        if family == Family::Huginn && cfg.n_kv_heads != cfg.n_heads {
            return Err(err(format!(
                "num_key_value_heads {} differs from n_heads {}: grouped-query attention is not part of Huginn",
                cfg.n_kv_heads, cfg.n_heads
            )));
        }
        cfg.check(&path.display().to_string(), KeyNames::HfJson(family))?;
        // Huginn's code (and the Llama variant's without head_dim) takes d = h / H.
        if family != Family::Ouro
            && (family == Family::Huginn || j.get("head_dim").is_none())
            && cfg.d_head * cfg.n_heads != cfg.n_embd
        {
            return Err(err(format!(
                "n_embd = {} is not a multiple of n_heads = {}: the head dimension must be a whole number",
                cfg.n_embd, cfg.n_heads
            )));
        }
        Ok(cfg)
    }

    /// Reads the `<arch>.*` metadata of a GGUF file (SPEC §3, docs/gguf.md).
    pub fn from_gguf(g: &Gguf, what: &str) -> Result<Config> {
        let arch = g.get_str("general.architecture")?;
        let Some(family) = Family::from_arch(arch) else {
            return Err(RavenError::Model {
                path: what.into(),
                msg: format!(
                    "general.architecture is \"{arch}\"; Raven runs huginn, recurrent-llama, recurrent-olmo2 and ouro models (convert a checkpoint with `raven convert`)"
                ),
            });
        };
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| -> Result<usize> {
            let v = g.get_u64(&key(k))?;
            usize::try_from(v).map_err(|_| RavenError::Model {
                path: what.into(),
                msg: format!("{arch}.{k} = {v} does not fit this machine"),
            })
        };
        let opt_u = |k: &str| -> Result<Option<usize>> {
            match g.opt_u64(&key(k))? {
                None => Ok(None),
                Some(_) => u(k).map(Some),
            }
        };
        let f = |k: &str| -> Result<f32> { Ok(g.get_f32(&key(k))?) };
        let n_embd = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        if n_heads == 0 {
            return Err(RavenError::Model {
                path: what.into(),
                msg: format!("{arch}.attention.head_count is 0"),
            });
        }
        let n_kv_heads = opt_u("attention.head_count_kv")?.unwrap_or(n_heads);
        if family == Family::Huginn && n_kv_heads != n_heads {
            return Err(RavenError::Model {
                path: what.into(),
                msg: format!(
                    "{arch}.attention.head_count_kv = {n_kv_heads} differs from head_count {n_heads}"
                ),
            });
        }
        let looped = family.looped_stack();
        let n_prelude = if looped { 0 } else { u("prelude_block_count")? };
        let n_core = if looped {
            u("block_count")?
        } else {
            u("core_block_count")?
        };
        let n_coda = if looped { 0 } else { u("coda_block_count")? };
        // Huginn's code takes d = h / H (key_length, written for gguf-py readers, is ignored).
        let key_length = match family {
            Family::Huginn => None,
            _ => opt_u("attention.key_length")?,
        };
        let d_head = match key_length {
            Some(d) => d,
            None if n_embd.is_multiple_of(n_heads) => n_embd / n_heads,
            None => {
                return Err(RavenError::Model {
                    path: what.into(),
                    msg: format!(
                        "{arch}.embedding_length = {n_embd} is not a multiple of {arch}.attention.head_count = {n_heads} (and {arch}.attention.key_length is not given)"
                    ),
                })
            }
        };
        let blocks = u("block_count")?;
        // u128: three counts near u64::MAX must not overflow before the limits are checked.
        let sum = n_prelude as u128 + n_core as u128 + n_coda as u128;
        if blocks as u128 != sum {
            return Err(RavenError::Model {
                path: what.into(),
                msg: format!("{arch}.block_count = {blocks} but prelude + core + coda = {sum}"),
            });
        }
        let tok_embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| RavenError::Model {
                path: what.into(),
                msg: "tensor token_embd.weight is missing".into(),
            })?;
        let n_vocab = tok_embd.rows() as usize;
        let rope_scaling = match g.opt_str(&key("rope.scaling.type"))? {
            None => None,
            Some("llama3") => Some(Llama3Scaling {
                factor: f("rope.scaling.factor")?,
                low_freq_factor: f("rope.scaling.low_freq_factor")?,
                high_freq_factor: f("rope.scaling.high_freq_factor")?,
                original_context: f("rope.scaling.original_context_length")?,
            }),
            Some(other) => {
                return Err(RavenError::Model {
                    path: what.into(),
                    msg: format!(
                        "{arch}.rope.scaling.type \"{other}\" is not one Raven knows (llama3)"
                    ),
                })
            }
        };
        let cfg = Config {
            family,
            n_embd,
            n_heads,
            n_kv_heads,
            d_head,
            rope_scaling,
            exit_threshold: if family == Family::Ouro {
                Some(g.opt_f32(&key("exit_gate.threshold"))?.unwrap_or(1.0))
            } else {
                None
            },
            n_ff: u("feed_forward_length")?,
            n_vocab,
            n_prelude,
            n_core,
            n_coda,
            mean_recurrence: if family.looped_stack() {
                u("loop_count")?
            } else {
                u("mean_recurrence")?
            },
            qk_bias: g.opt_bool(&key("attention.qk_bias"))?.unwrap_or(false),
            rope_base: f("rope.freq_base")?,
            norm_eps: f("attention.layer_norm_rms_epsilon")?,
            tied: g.tensor("output.weight").is_none(),
            context: u("context_length")?,
            embed_scale: match g.opt_f32(&key("embedding_scale"))? {
                Some(s) => s,
                None if family == Family::Huginn => (n_embd as f64).sqrt() as f32,
                None => 1.0,
            },
            state_init_std: match g.opt_f32(&key("state_init_std"))? {
                Some(s) => s,
                None if family == Family::Huginn => (2.0 / (5.0 * n_embd as f64)).sqrt() as f32,
                None => 0.0,
            },
        };
        cfg.validate(what)?;
        Ok(cfg)
    }

    /// The `<arch>.*` metadata for a GGUF file (SPEC §3, docs/gguf.md).
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let a = self.family.arch();
        let k = |s: &str| format!("{a}.{s}");
        let mut v = vec![
            (k("context_length"), Value::U32(self.context as u32)),
            (k("embedding_length"), Value::U32(self.n_embd as u32)),
            (k("feed_forward_length"), Value::U32(self.n_ff as u32)),
            (k("attention.head_count"), Value::U32(self.n_heads as u32)),
            (
                k("attention.head_count_kv"),
                Value::U32(self.n_kv_heads as u32),
            ),
            (k("attention.key_length"), Value::U32(self.d_head as u32)),
            (k("attention.value_length"), Value::U32(self.d_head as u32)),
            (
                k("attention.layer_norm_rms_epsilon"),
                Value::F32(self.norm_eps),
            ),
            (k("rope.freq_base"), Value::F32(self.rope_base)),
            (k("block_count"), Value::U32(self.n_blocks() as u32)),
        ];
        if self.family.looped_stack() {
            v.push((k("loop_count"), Value::U32(self.mean_recurrence as u32)));
        } else {
            v.extend([
                (k("prelude_block_count"), Value::U32(self.n_prelude as u32)),
                (k("core_block_count"), Value::U32(self.n_core as u32)),
                (k("coda_block_count"), Value::U32(self.n_coda as u32)),
                (
                    k("mean_recurrence"),
                    Value::U32(self.mean_recurrence as u32),
                ),
                (k("attention.qk_bias"), Value::Bool(self.qk_bias)),
                (k("embedding_scale"), Value::F32(self.embed_scale)),
                (k("state_init_std"), Value::F32(self.state_init_std)),
            ]);
        }
        if let Some(q) = self.exit_threshold {
            v.push((k("exit_gate.threshold"), Value::F32(q)));
        }
        if let Some(r) = self.rope_scaling {
            v.extend([
                (k("rope.scaling.type"), Value::Str("llama3".into())),
                (k("rope.scaling.factor"), Value::F32(r.factor)),
                (
                    k("rope.scaling.low_freq_factor"),
                    Value::F32(r.low_freq_factor),
                ),
                (
                    k("rope.scaling.high_freq_factor"),
                    Value::F32(r.high_freq_factor),
                ),
                (
                    k("rope.scaling.original_context_length"),
                    Value::F32(r.original_context),
                ),
            ]);
        }
        v
    }

    /// RoPE inverse frequencies θ^(−2i/d) for i < d/2, llama3-adjusted when configured, in
    /// float32 as the Hugging Face code computes them.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.d_head;
        (0..d / 2)
            .map(|i| {
                // 1 / base ** (arange(0, d, 2).float() / d), as every official code computes it.
                let inv = 1.0f32 / self.rope_base.powf((2 * i) as f32 / d as f32);
                match self.rope_scaling {
                    None => inv,
                    Some(r) => {
                        let low_wl = r.original_context / r.low_freq_factor;
                        let high_wl = r.original_context / r.high_freq_factor;
                        let wl = 2.0 * std::f32::consts::PI / inv;
                        if wl < high_wl {
                            inv
                        } else if wl > low_wl {
                            inv / r.factor
                        } else {
                            let smooth = (r.original_context / wl - r.low_freq_factor)
                                / (r.high_freq_factor - r.low_freq_factor);
                            (1.0 - smooth) * inv / r.factor + smooth * inv
                        }
                    }
                }
            })
            .collect()
    }
}

/// A hyperparameter, for messages that name it as the file does.
#[derive(Clone, Copy)]
enum Key {
    Embd,
    Heads,
    KvHeads,
    HeadDim,
    Ff,
    Vocab,
    Prelude,
    Core,
    Coda,
    Recurrence,
    Context,
    Eps,
    Rope,
    RopeScaling,
    ExitThreshold,
}

/// Which file's key names to use in messages.
#[derive(Clone, Copy)]
enum KeyNames {
    Gguf(Family),
    HfJson(Family),
}

impl KeyNames {
    fn name(self, k: Key) -> String {
        match self {
            KeyNames::Gguf(f) => {
                let s = match k {
                    Key::Embd => "embedding_length",
                    Key::Heads => "attention.head_count",
                    Key::KvHeads => "attention.head_count_kv",
                    Key::HeadDim => "attention.key_length",
                    Key::Ff => "feed_forward_length",
                    Key::Vocab => return "the vocabulary (rows of token_embd.weight)".into(),
                    Key::Prelude => "prelude_block_count",
                    Key::Core if f.looped_stack() => "block_count",
                    Key::Core => "core_block_count",
                    Key::Coda => "coda_block_count",
                    Key::Recurrence if f.looped_stack() => "loop_count",
                    Key::Recurrence => "mean_recurrence",
                    Key::Context => "context_length",
                    Key::Eps => "attention.layer_norm_rms_epsilon",
                    Key::Rope => "rope.freq_base",
                    Key::RopeScaling => "rope.scaling.*",
                    Key::ExitThreshold => "exit_gate.threshold",
                };
                format!("{}.{s}", f.arch())
            }
            KeyNames::HfJson(Family::Ouro) => match k {
                Key::Embd => "hidden_size",
                Key::Heads => "num_attention_heads",
                Key::KvHeads => "num_key_value_heads",
                Key::HeadDim => "head_dim",
                Key::Ff => "intermediate_size",
                Key::Vocab => "vocab_size",
                Key::Prelude | Key::Coda | Key::Core => "num_hidden_layers",
                Key::Recurrence => "total_ut_steps",
                Key::Context => "max_position_embeddings",
                Key::Eps => "rms_norm_eps",
                Key::Rope => "rope_theta",
                Key::RopeScaling => "rope_scaling",
                Key::ExitThreshold => "early_exit_threshold",
            }
            .into(),
            KeyNames::HfJson(f) => match k {
                Key::Embd => "n_embd",
                Key::Heads => "n_heads",
                Key::KvHeads => "num_key_value_heads",
                Key::HeadDim if f == Family::Huginn => "n_embd / n_heads",
                Key::HeadDim => "head_dim",
                Key::Ff => "intermediate_size",
                Key::Vocab => "padded_vocab_size (or vocab_size)",
                Key::Prelude => "n_layers_in_prelude",
                Key::Core => "n_layers_in_recurrent_block",
                Key::Coda => "n_layers_in_coda",
                Key::Recurrence => "mean_recurrence",
                Key::Context => "block_size",
                Key::Eps => "norm_eps",
                Key::Rope if f == Family::Huginn => "rope_base",
                Key::Rope => "rope_theta",
                Key::RopeScaling => "rope_scaling",
                Key::ExitThreshold => "early_exit_threshold",
            }
            .into(),
        }
    }
}
