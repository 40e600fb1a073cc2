//! Model hyperparameters (SPEC §1), read from a Hugging Face `config.json` or from GGUF metadata.

use std::path::Path;

use raven_gguf::{Gguf, Value};
use serde_json::Value as Json;

use crate::error::{RavenError, Result};

/// The GGUF architecture name Raven writes and accepts.
pub const ARCH: &str = "huginn";

/// Huginn hyperparameters. Names follow SPEC §1.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Embedding width h.
    pub n_embd: usize,
    /// Attention heads H (no GQA).
    pub n_heads: usize,
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
    /// Head dimension d = h / H.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_heads
    }

    /// Total blocks P + C + K.
    pub fn n_blocks(&self) -> usize {
        self.n_prelude + self.n_core + self.n_coda
    }

    /// Checks internal consistency and sane bounds (a file may claim anything). Messages name
    /// the GGUF metadata keys; `what` names the file.
    pub fn validate(&self, what: &str) -> Result<()> {
        self.check(what, KeyNames::Gguf)
    }

    fn check(&self, what: &str, keys: KeyNames) -> Result<()> {
        let bad = |msg: String| RavenError::Model {
            path: what.to_string(),
            msg,
        };
        let k = |key: Key| keys.name(key);
        let limits: [(Key, usize, usize); 9] = [
            (Key::Embd, self.n_embd, 1 << 16),
            (Key::Heads, self.n_heads, 1 << 12),
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
        // (No `%`: clippy wants is_multiple_of, which is newer than some MSRVs of this crate.)
        if self.head_dim() * self.n_heads != self.n_embd || self.head_dim() & 1 == 1 {
            return Err(bad(format!(
                "{} = {} is not a multiple of 2 × {} = {}: the head dimension must be a whole even number",
                k(Key::Embd),
                self.n_embd,
                k(Key::Heads),
                self.n_heads
            )));
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
        if !(self.embed_scale.is_finite()
            && self.state_init_std.is_finite()
            && self.state_init_std >= 0.0)
        {
            return Err(bad(format!(
                "{ARCH}.embedding_scale ({}) or {ARCH}.state_init_std ({}) is not finite",
                self.embed_scale, self.state_init_std
            )));
        }
        Ok(())
    }

    /// Reads a Hugging Face Huginn `config.json` (model_type `huginn_raven`).
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
        if let Some(mt) = j.get("model_type").and_then(Json::as_str) {
            if mt != "huginn_raven" {
                return Err(err(format!(
                    "model_type is \"{mt}\", Raven converts only \"huginn_raven\" (Huginn) checkpoints"
                )));
            }
        }
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
        let n_embd = uint("n_embd")?;
        let n_heads = uint("n_heads")?;
        if let Some(kv) = j.get("num_key_value_heads") {
            if kv.as_u64() != Some(n_heads as u64) {
                return Err(err(format!(
                    "num_key_value_heads {kv} differs from n_heads {n_heads}: grouped-query attention is not part of Huginn"
                )));
            }
        }
        let n_vocab = match j.get("padded_vocab_size") {
            Some(_) => uint("padded_vocab_size")?,
            None => uint("vocab_size")?,
        };
        let cfg = Config {
            n_embd,
            n_heads,
            n_ff: uint("intermediate_size")?,
            n_vocab,
            n_prelude: uint("n_layers_in_prelude")?,
            n_core: uint("n_layers_in_recurrent_block")?,
            n_coda: uint("n_layers_in_coda")?,
            mean_recurrence: uint("mean_recurrence")?,
            qk_bias: boolean("qk_bias", false)?,
            rope_base: float("rope_base", Some(50000.0))?,
            norm_eps: float("norm_eps", Some(1e-6))?,
            tied: boolean("tie_embeddings", true)?,
            context: uint("block_size")?,
            embed_scale: (n_embd as f64).sqrt() as f32,
            state_init_std: (2.0 / (5.0 * n_embd as f64)).sqrt() as f32,
        };
        cfg.check(&path.display().to_string(), KeyNames::HfJson)?;
        Ok(cfg)
    }

    /// Reads the `huginn.*` metadata of a GGUF file (SPEC §3).
    pub fn from_gguf(g: &Gguf, what: &str) -> Result<Config> {
        let arch = g.get_str("general.architecture")?;
        if arch != ARCH {
            return Err(RavenError::Model {
                path: what.into(),
                msg: format!(
                    "general.architecture is \"{arch}\", Raven runs \"{ARCH}\" (Huginn) models; convert a Huginn checkpoint with `raven convert`"
                ),
            });
        }
        let u = |k: &str| -> Result<usize> {
            let v = g.get_u64(&format!("{ARCH}.{k}"))?;
            usize::try_from(v).map_err(|_| RavenError::Model {
                path: what.into(),
                msg: format!("{ARCH}.{k} = {v} does not fit this machine"),
            })
        };
        let f = |k: &str| -> Result<f32> { Ok(g.get_f32(&format!("{ARCH}.{k}"))?) };
        let n_embd = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let kv = g.opt_u64(&format!("{ARCH}.attention.head_count_kv"))?;
        if let Some(kv) = kv {
            if kv != n_heads as u64 {
                return Err(RavenError::Model {
                    path: what.into(),
                    msg: format!(
                        "{ARCH}.attention.head_count_kv = {kv} differs from head_count {n_heads}"
                    ),
                });
            }
        }
        let n_prelude = u("prelude_block_count")?;
        let n_core = u("core_block_count")?;
        let n_coda = u("coda_block_count")?;
        let blocks = u("block_count")?;
        // u128: three counts near u64::MAX must not overflow before the limits are checked.
        let sum = n_prelude as u128 + n_core as u128 + n_coda as u128;
        if blocks as u128 != sum {
            return Err(RavenError::Model {
                path: what.into(),
                msg: format!("{ARCH}.block_count = {blocks} but prelude + core + coda = {sum}"),
            });
        }
        let tok_embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| RavenError::Model {
                path: what.into(),
                msg: "tensor token_embd.weight is missing".into(),
            })?;
        let n_vocab = tok_embd.rows() as usize;
        let cfg = Config {
            n_embd,
            n_heads,
            n_ff: u("feed_forward_length")?,
            n_vocab,
            n_prelude,
            n_core,
            n_coda,
            mean_recurrence: u("mean_recurrence")?,
            qk_bias: g
                .opt_bool(&format!("{ARCH}.attention.qk_bias"))?
                .unwrap_or(false),
            rope_base: f("rope.freq_base")?,
            norm_eps: f("attention.layer_norm_rms_epsilon")?,
            tied: g.tensor("output.weight").is_none(),
            context: u("context_length")?,
            embed_scale: match g.opt_f32(&format!("{ARCH}.embedding_scale"))? {
                Some(s) => s,
                None => (n_embd as f64).sqrt() as f32,
            },
            state_init_std: match g.opt_f32(&format!("{ARCH}.state_init_std"))? {
                Some(s) => s,
                None => (2.0 / (5.0 * n_embd as f64)).sqrt() as f32,
            },
        };
        cfg.validate(what)?;
        Ok(cfg)
    }

    /// The `huginn.*` metadata for a GGUF file (SPEC §3).
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let k = |s: &str| format!("{ARCH}.{s}");
        vec![
            (k("context_length"), Value::U32(self.context as u32)),
            (k("embedding_length"), Value::U32(self.n_embd as u32)),
            (k("feed_forward_length"), Value::U32(self.n_ff as u32)),
            (k("attention.head_count"), Value::U32(self.n_heads as u32)),
            (
                k("attention.head_count_kv"),
                Value::U32(self.n_heads as u32),
            ),
            (
                k("attention.layer_norm_rms_epsilon"),
                Value::F32(self.norm_eps),
            ),
            (k("rope.freq_base"), Value::F32(self.rope_base)),
            (k("block_count"), Value::U32(self.n_blocks() as u32)),
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
        ]
    }
}

/// A hyperparameter, for messages that name it as the file does.
#[derive(Clone, Copy)]
enum Key {
    Embd,
    Heads,
    Ff,
    Vocab,
    Prelude,
    Core,
    Coda,
    Recurrence,
    Context,
    Eps,
    Rope,
}

/// Which file's key names to use in messages.
#[derive(Clone, Copy)]
enum KeyNames {
    Gguf,
    HfJson,
}

impl KeyNames {
    fn name(self, k: Key) -> &'static str {
        match (self, k) {
            (KeyNames::Gguf, Key::Embd) => "huginn.embedding_length",
            (KeyNames::Gguf, Key::Heads) => "huginn.attention.head_count",
            (KeyNames::Gguf, Key::Ff) => "huginn.feed_forward_length",
            (KeyNames::Gguf, Key::Vocab) => "the vocabulary (rows of token_embd.weight)",
            (KeyNames::Gguf, Key::Prelude) => "huginn.prelude_block_count",
            (KeyNames::Gguf, Key::Core) => "huginn.core_block_count",
            (KeyNames::Gguf, Key::Coda) => "huginn.coda_block_count",
            (KeyNames::Gguf, Key::Recurrence) => "huginn.mean_recurrence",
            (KeyNames::Gguf, Key::Context) => "huginn.context_length",
            (KeyNames::Gguf, Key::Eps) => "huginn.attention.layer_norm_rms_epsilon",
            (KeyNames::Gguf, Key::Rope) => "huginn.rope.freq_base",
            (KeyNames::HfJson, Key::Embd) => "n_embd",
            (KeyNames::HfJson, Key::Heads) => "n_heads",
            (KeyNames::HfJson, Key::Ff) => "intermediate_size",
            (KeyNames::HfJson, Key::Vocab) => "padded_vocab_size (or vocab_size)",
            (KeyNames::HfJson, Key::Prelude) => "n_layers_in_prelude",
            (KeyNames::HfJson, Key::Core) => "n_layers_in_recurrent_block",
            (KeyNames::HfJson, Key::Coda) => "n_layers_in_coda",
            (KeyNames::HfJson, Key::Recurrence) => "mean_recurrence",
            (KeyNames::HfJson, Key::Context) => "block_size",
            (KeyNames::HfJson, Key::Eps) => "norm_eps",
            (KeyNames::HfJson, Key::Rope) => "rope_base",
        }
    }
}
