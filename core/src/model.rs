//! A loaded Huginn model: hyperparameters, tokenizer metadata and weight views into the GGUF
//! file's memory map. Immutable after loading, so many sessions can share one `Arc<Model>`.

use std::path::Path;

use raven_gguf::{Gguf, TensorInfo};
use raven_quant::{GgmlType, Matrix};

use crate::config::{BlockKind, Config};
use crate::error::{RavenError, Result};
use crate::params::Param;

/// A weight matrix: a view (type, shape, byte range) into the model file's bytes, never a copy.
#[derive(Clone, Debug)]
pub struct Weight {
    /// Element type.
    pub ty: GgmlType,
    /// Rows (output features).
    pub rows: usize,
    /// Columns (input features, the row length).
    pub cols: usize,
    /// Index of the tensor in the GGUF tensor table.
    index: usize,
    /// The rows repacked at load for the int8 kernels, when that pays on this CPU.
    packed: Option<std::sync::Arc<raven_quant::PackedMatrix>>,
}

/// The weights of one block, GGUF names `blk.N.*` (docs/gguf.md). Which norms a block has and
/// where they act is its family's [`BlockKind`](crate::config::BlockKind).
#[derive(Clone, Debug)]
pub struct Block {
    /// `attn_norm`: before attention (Huginn norm_1, Llama norm_1, Ouro input_layernorm).
    pub attn_norm: Option<Vec<f32>>,
    /// `attn_qkv`, (H·d + 2·K·d) × h: q, k, v rows, each head-major.
    pub qkv: Weight,
    /// Per-head q bias (H·d values), if the model has qk biases.
    pub q_bias: Option<Vec<f32>>,
    /// Per-head k bias (H·d values).
    pub k_bias: Option<Vec<f32>>,
    /// `attn_q_norm`: RMSNorm over the whole q projection (OLMo-2).
    pub q_norm: Option<Vec<f32>>,
    /// `attn_k_norm`: RMSNorm over the whole k projection (OLMo-2).
    pub k_norm: Option<Vec<f32>>,
    /// `attn_output`, h × H·d.
    pub attn_out: Weight,
    /// `attn_post_norm`: after attention, on the residual sum (Huginn norm_2) or on the branch
    /// output (OLMo-2 norm_1, Ouro input_layernorm_2).
    pub attn_post_norm: Option<Vec<f32>>,
    /// `ffn_norm`: before the MLP.
    pub ffn_norm: Option<Vec<f32>>,
    /// `ffn_gate`, F × h.
    pub gate: Weight,
    /// `ffn_up`, F × h.
    pub up: Weight,
    /// `ffn_down`, h × F.
    pub down: Weight,
    /// `ffn_post_norm`: after the MLP, on the sum (Huginn norm_4) or the branch (OLMo, Ouro).
    pub ffn_post_norm: Option<Vec<f32>>,
}

/// Tokenizer and chat metadata stored in the GGUF file.
#[derive(Clone, Debug, Default)]
pub struct Vocab {
    /// `tokenizer.huggingface.json`, the authoritative tokenizer.
    pub hf_json: Option<String>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// Beginning-of-text id.
    pub bos: Option<u32>,
    /// End-of-sequence ids (metadata eos plus `huginn.eos_token_ids`).
    pub eos: Vec<u32>,
    /// Padding id.
    pub pad: Option<u32>,
}

/// A Huginn model loaded from GGUF.
pub struct Model {
    /// Hyperparameters.
    pub config: Config,
    /// Tokenizer metadata.
    pub vocab: Vocab,
    /// `token_embd.weight`, V × h.
    pub tok_embd: Weight,
    /// `output_norm.weight` (ln_f).
    pub output_norm: Vec<f32>,
    /// `output.weight`, or the embedding when tied.
    pub output: Weight,
    /// `adapter.weight`, h × 2h (not in a looped-stack model).
    pub adapter: Option<Weight>,
    /// The exit gate (Ouro): `exit_gate.weight` (h values) and its bias.
    pub exit_gate: Option<(Vec<f32>, f32)>,
    /// Blocks: prelude, then core, then coda (a looped-stack model: all core).
    pub blocks: Vec<Block>,
    /// RoPE inverse frequencies, d/2 values ([`Config::rope_inv_freq`]).
    pub(crate) rope_inv_freq: Vec<f32>,
    gguf: Gguf,
    name: String,
    tokenizer: std::sync::OnceLock<std::result::Result<raven_text::Tokenizer, String>>,
    emittable: std::sync::OnceLock<Emittable>,
}

/// The ids generation may emit: those the model's tokenizer can decode. Embeddings are often
/// padded past the tokenizer (a vocabulary rounded up to a multiple, or a tokenizer smaller
/// than the model's rows); such ids have logits like any other but no text, so sampling and
/// greedy choices never pick them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emittable {
    /// Ids `0..n` may be emitted (the tokenizer's id count, at most the embedding's rows).
    pub n: usize,
    /// Ids below `n` the tokenizer has no token for (gaps in its numbering), ascending.
    pub holes: Vec<u32>,
}

impl Emittable {
    /// `logits` (one row of the model's V) cut to the emittable ids, with the holes at −∞.
    /// Borrows when there are no holes.
    pub fn restrict<'a>(&self, logits: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        let row = &logits[..self.n.min(logits.len())];
        if self.holes.is_empty() {
            return std::borrow::Cow::Borrowed(row);
        }
        let mut v = row.to_vec();
        for &h in &self.holes {
            v[h as usize] = f32::NEG_INFINITY;
        }
        std::borrow::Cow::Owned(v)
    }

    /// The greedy choice among the emittable ids.
    pub fn argmax(&self, logits: &[f32]) -> u32 {
        crate::exit::argmax(&self.restrict(logits)) as u32
    }
}

/// How a model file is brought into memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Memory-map the file (else read it into memory: `--no-mmap`).
    pub mmap: bool,
    /// Repack Q4_0/Q8_0 block weights for the int8 kernels when that pays on this CPU. Only
    /// for mapped files: the mapped pages of a repacked tensor are released (the file backs
    /// them), so memory stays at about the file's size; a file read into memory would be held
    /// twice, so `mmap: false` keeps the file's row layout and memory at the file's size.
    pub repack: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            mmap: true,
            repack: true,
        }
    }
}

impl Model {
    /// Memory-maps, validates and prepares a GGUF model with the default [`LoadOptions`].
    pub fn load(path: &Path) -> Result<Model> {
        Model::load_with(path, LoadOptions::default())
    }

    /// Reads a GGUF model into memory without mapping it (`--no-mmap`).
    pub fn load_no_mmap(path: &Path) -> Result<Model> {
        Model::load_with(
            path,
            LoadOptions {
                mmap: false,
                ..Default::default()
            },
        )
    }

    /// Loads with explicit options.
    pub fn load_with(path: &Path, o: LoadOptions) -> Result<Model> {
        let g = if o.mmap {
            Gguf::open(path)?
        } else {
            Gguf::read(path)?
        };
        let mut m = Model::from_gguf(g, &path.display().to_string())?;
        if o.repack && o.mmap {
            m.repack();
        }
        Ok(m)
    }

    /// Builds the model from an opened GGUF file; `what` names it in errors.
    pub fn from_gguf(g: Gguf, what: &str) -> Result<Model> {
        let config = Config::from_gguf(&g, what)?;
        let c = &config;
        let h = c.n_embd;
        let bad = |msg: String| RavenError::Model {
            path: what.to_string(),
            msg,
        };
        let info = |name: &str| -> Result<&TensorInfo> {
            g.tensor(name).ok_or_else(|| {
                bad(format!(
                    "tensor {name} is missing (re-run `raven convert` on the checkpoint)"
                ))
            })
        };
        let weight = |name: &str, rows: usize, cols: usize| -> Result<Weight> {
            let t = info(name)?;
            if t.dims.len() != 2 || t.dims[0] != cols as u64 || t.dims[1] != rows as u64 {
                return Err(bad(format!(
                    "tensor {name} has shape {:?} (ggml order), the metadata implies [{cols}, {rows}]",
                    t.dims
                )));
            }
            if !raven_quant::can_dequantize(t.ty) {
                return Err(bad(format!(
                    "tensor {name} has type {}, which Raven cannot compute with",
                    t.ty
                )));
            }
            let index = g
                .tensors()
                .iter()
                .position(|x| x.name == name)
                .expect("tensor found above");
            Ok(Weight {
                ty: t.ty,
                rows,
                cols,
                index,
                packed: None,
            })
        };
        let vector_n = |name: &str, n: usize| -> Result<Vec<f32>> {
            let t = info(name)?;
            if t.n_elements() != n as u64 || t.dims.len() != 1 {
                return Err(bad(format!(
                    "tensor {name} has shape {:?}, expected [{n}]",
                    t.dims
                )));
            }
            let mut out = vec![0.0; n];
            raven_quant::dequantize_row(t.ty, g.tensor_data(t), &mut out)
                .map_err(|e| bad(format!("tensor {name}: {e}")))?;
            Ok(out)
        };
        let vector = |name: &str| vector_n(name, h);
        let tok_embd = weight("token_embd.weight", c.n_vocab, h)?;
        let output = if g.tensor("output.weight").is_some() {
            weight("output.weight", c.n_vocab, h)?
        } else {
            tok_embd.clone()
        };
        let looped = c.family.looped_stack();
        let adapter = if looped {
            None
        } else {
            Some(weight("adapter.weight", h, 2 * h)?)
        };
        let exit_gate = if c.has_gate() {
            Some((
                vector("exit_gate.weight")?,
                vector_n("exit_gate.bias", 1)?[0],
            ))
        } else {
            None
        };
        let output_norm = vector("output_norm.weight")?;
        let (qw, kw) = (c.q_width(), c.kv_width());
        let kind = c.family.block();
        let mut blocks = Vec::with_capacity(c.n_blocks());
        for i in 0..c.n_blocks() {
            let b = |s: &str| format!("blk.{i}.{s}");
            let when = |yes: bool, s: &str, n: usize| -> Result<Option<Vec<f32>>> {
                if yes {
                    vector_n(&b(s), n).map(Some)
                } else {
                    Ok(None)
                }
            };
            let pre = kind != BlockKind::PostNorm;
            let post = kind != BlockKind::PreNorm;
            let qk_norm = kind == BlockKind::PostNorm;
            blocks.push(Block {
                attn_norm: when(pre, "attn_norm.weight", h)?,
                qkv: weight(&b("attn_qkv.weight"), qw + 2 * kw, h)?,
                q_bias: when(c.qk_bias, "attn_q.bias", qw)?,
                k_bias: when(c.qk_bias, "attn_k.bias", qw)?,
                q_norm: when(qk_norm, "attn_q_norm.weight", qw)?,
                k_norm: when(qk_norm, "attn_k_norm.weight", kw)?,
                attn_out: weight(&b("attn_output.weight"), h, qw)?,
                attn_post_norm: when(post, "attn_post_norm.weight", h)?,
                ffn_norm: when(pre, "ffn_norm.weight", h)?,
                gate: weight(&b("ffn_gate.weight"), c.n_ff, h)?,
                up: weight(&b("ffn_up.weight"), c.n_ff, h)?,
                down: weight(&b("ffn_down.weight"), h, c.n_ff)?,
                ffn_post_norm: when(post, "ffn_post_norm.weight", h)?,
            });
        }
        let vocab = read_vocab(&g, c, what)?;
        Ok(Model {
            rope_inv_freq: config.rope_inv_freq(),
            config,
            vocab,
            tok_embd,
            output_norm,
            output,
            adapter,
            exit_gate,
            blocks,
            name: g.opt_str("general.name")?.unwrap_or("huginn").to_string(),
            tokenizer: std::sync::OnceLock::new(),
            emittable: std::sync::OnceLock::new(),
            gguf: g,
        })
    }

    /// Repacks the Q4_0/Q8_0 block weights into the interleaved layout of the int8 kernels (when
    /// they have one) and releases the file pages they came from, so memory stays at about the
    /// file's size. The embedding and head stay memory-mapped views.
    pub fn repack(&mut self) {
        let gguf = &self.gguf;
        for b in self.blocks.iter_mut() {
            for w in [
                &mut b.qkv,
                &mut b.attn_out,
                &mut b.gate,
                &mut b.up,
                &mut b.down,
            ] {
                if w.packed.is_some() {
                    continue;
                }
                let t = &gguf.tensors()[w.index];
                let Ok(m) = Matrix::new(w.ty, w.rows, w.cols, gguf.tensor_data(t)) else {
                    continue;
                };
                if let Some(p) = raven_quant::repack(&m) {
                    w.packed = Some(std::sync::Arc::new(p));
                    gguf.release_tensor_pages(t);
                }
            }
        }
        if let Some(w) = &mut self.adapter {
            let t = &gguf.tensors()[w.index];
            if let Ok(m) = Matrix::new(w.ty, w.rows, w.cols, gguf.tensor_data(t)) {
                if let Some(p) = raven_quant::repack(&m) {
                    w.packed = Some(std::sync::Arc::new(p));
                    gguf.release_tensor_pages(t);
                }
            }
        }
    }

    /// The weights a product runs on: the repacked rows when there are, else the file's.
    pub fn weights<'a>(&'a self, w: &'a Weight) -> raven_quant::Weights<'a> {
        match &w.packed {
            Some(p) => raven_quant::Weights::Packed(p),
            None => raven_quant::Weights::Plain(self.matrix(w)),
        }
    }

    /// The matrix view of a weight.
    pub(crate) fn matrix(&self, w: &Weight) -> Matrix<'_> {
        Matrix::new(w.ty, w.rows, w.cols, self.bytes(w))
            .expect("weight shapes were validated at load")
    }

    /// The bytes of a weight, borrowed from the file.
    pub fn bytes(&self, w: &Weight) -> &[u8] {
        self.gguf.tensor_data(&self.gguf.tensors()[w.index])
    }

    /// Row `t` of the embedding, dequantized and scaled by sqrt(h), into `out`.
    pub fn embed(&self, token: u32, out: &mut [f32]) {
        let w = &self.tok_embd;
        let bytes = self.bytes(w);
        let rb = bytes.len() / w.rows;
        let start = token as usize * rb;
        raven_quant::dequantize_row(w.ty, &bytes[start..start + rb], out)
            .expect("embedding type validated at load");
        let s = self.config.embed_scale;
        out.iter_mut().for_each(|x| *x *= s);
    }

    /// The tokenizer stored in the file (`tokenizer.huggingface.json`), parsed once.
    pub fn tokenizer(&self) -> Result<&raven_text::Tokenizer> {
        let t = self.tokenizer.get_or_init(|| match &self.vocab.hf_json {
            None => Err(
                "the file has no tokenizer.huggingface.json; re-convert it with `raven convert`"
                    .into(),
            ),
            Some(j) => raven_text::Tokenizer::from_json(j)
                .map_err(|e| format!("its tokenizer does not load: {e}")),
        });
        t.as_ref().map_err(|msg| RavenError::Model {
            path: self.name.clone(),
            msg: msg.clone(),
        })
    }

    /// The ids generation may emit ([`Emittable`]): every id when the file has no usable
    /// tokenizer (generation then fails on decoding anyway, with the tokenizer's error).
    pub fn emittable(&self) -> &Emittable {
        self.emittable.get_or_init(|| {
            let v = self.config.n_vocab;
            match self.tokenizer() {
                Ok(t) => {
                    let n = t.vocab_size().min(v);
                    let holes: Vec<u32> = (0..n as u32).filter(|&id| !t.has_id(id)).collect();
                    if holes.len() == n {
                        // A tokenizer that names none of the ids: let the decoder say so.
                        Emittable {
                            n: v,
                            holes: Vec::new(),
                        }
                    } else {
                        Emittable { n, holes }
                    }
                }
                Err(_) => Emittable {
                    n: v,
                    holes: Vec::new(),
                },
            }
        })
    }

    /// Ids that end a generation: the metadata's end-of-sequence ids plus the end-of-turn and
    /// end-of-text tokens of the families' tokenizers when the tokenizer has them as special
    /// tokens (Huginn `<|end_text|>` `<|end_turn|>`; Llama-3 `<|eot_id|>` `<|eom_id|>`
    /// `<|end_of_text|>`; ChatML `<|im_end|>`).
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut s = self.vocab.eos.clone();
        if let Ok(t) = self.tokenizer() {
            for name in [
                "<|end_text|>",
                "<|end_turn|>",
                "<|eot_id|>",
                "<|eom_id|>",
                "<|end_of_text|>",
                "<|im_end|>",
            ] {
                if let Some(id) = t.token_to_id(name).filter(|&id| t.is_special(id)) {
                    if !s.contains(&id) {
                        s.push(id);
                    }
                }
            }
        }
        s
    }

    /// The underlying GGUF file.
    pub fn gguf(&self) -> &Gguf {
        &self.gguf
    }

    /// `general.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> u64 {
        self.gguf.tensors().iter().map(|t| t.n_bytes).sum()
    }

    /// Bytes of weights one core iteration reads: the adapter (if any) and the core blocks.
    pub fn core_iteration_bytes(&self) -> u64 {
        let c = &self.config;
        let w = |w: &Weight| self.bytes(w).len() as u64;
        let mut b = self.adapter.as_ref().map_or(0, w);
        for blk in &self.blocks[c.n_prelude..c.n_prelude + c.n_core] {
            b += w(&blk.qkv) + w(&blk.attn_out) + w(&blk.gate) + w(&blk.up) + w(&blk.down);
        }
        b
    }

    /// Checks that a token id is inside the vocabulary.
    pub fn check_token(&self, t: u32) -> Result<()> {
        if (t as usize) < self.config.n_vocab {
            Ok(())
        } else {
            Err(RavenError::param(
                Param::Tokens,
                format!(
                    "id {t} is outside the vocabulary (0..{})",
                    self.config.n_vocab
                ),
            ))
        }
    }
}

fn read_vocab(g: &Gguf, c: &Config, what: &str) -> Result<Vocab> {
    let id = |k: &str| -> Result<Option<u32>> {
        match g.opt_u64(k)? {
            None => Ok(None),
            Some(v) if (v as usize) < c.n_vocab => Ok(Some(v as u32)),
            Some(v) => Err(RavenError::Model {
                path: what.into(),
                msg: format!("{k} = {v} is outside the vocabulary (0..{})", c.n_vocab),
            }),
        }
    };
    let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    let eos_key = format!("{}.eos_token_ids", c.family.arch());
    if let Some(v) = g.get(&eos_key) {
        use raven_gguf::{Array, Value};
        // Any integer array (gguf-py writes Python ints as i32 or u64 arrays); values are
        // widened to i128 so negative and huge ids are reported, not wrapped.
        let more: Vec<i128> = match v {
            Value::Array(Array::U32(a)) => a.iter().map(|&x| x.into()).collect(),
            Value::Array(Array::I32(a)) => a.iter().map(|&x| x.into()).collect(),
            Value::Array(Array::U64(a)) => a.iter().map(|&x| x.into()).collect(),
            Value::Array(Array::I64(a)) => a.iter().map(|&x| x.into()).collect(),
            other => {
                return Err(RavenError::Model {
                    path: what.into(),
                    msg: format!(
                        "{eos_key} is {}, expected an array of token ids",
                        other.type_name()
                    ),
                })
            }
        };
        for e in more {
            if e < 0 || e >= c.n_vocab as i128 {
                return Err(RavenError::Model {
                    path: what.into(),
                    msg: format!(
                        "{eos_key} holds {e}, outside the vocabulary (0..{})",
                        c.n_vocab
                    ),
                });
            }
            let e = e as u32;
            if !eos.contains(&e) {
                eos.push(e);
            }
        }
    }
    Ok(Vocab {
        hf_json: g.opt_str("tokenizer.huggingface.json")?.map(str::to_string),
        chat_template: g.opt_str("tokenizer.chat_template")?.map(str::to_string),
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos,
        pad: id("tokenizer.ggml.padding_token_id")?,
    })
}
