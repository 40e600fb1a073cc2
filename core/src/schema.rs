//! The GGUF tensor schema of each family (docs/gguf.md): every GGUF tensor Raven writes, its shape,
//! and the Hugging Face tensors (or parts of them) it is made of. `raven convert` writes from it,
//! `raven_convert::checkpoint::Checkpoint` checks a checkpoint against it, and the model loader reads
//! the same names.

use crate::config::{BlockKind, Config, Family};

/// What a tensor is, for its storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A matrix the forward multiplies by (stored at the requested type).
    Matrix,
    /// The embedding or the output head (Q8_0 when the rest is Q4_0).
    Embedding,
    /// A norm weight or bias (always F32).
    Vector,
}

/// Part of a Hugging Face tensor: its name, the shape it must have, and the range of its
/// elements (row-major) that goes into the GGUF tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Hugging Face name.
    pub hf: String,
    /// The shape it must have.
    pub shape: Vec<usize>,
    /// Elements taken, in order.
    pub elems: std::ops::Range<usize>,
}

/// One GGUF tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// GGUF name.
    pub name: String,
    /// GGUF dims, ggml order (row length first).
    pub dims: Vec<u64>,
    /// Storage role.
    pub role: Role,
    /// The Hugging Face parts, concatenated in order.
    pub parts: Vec<Part>,
}

fn whole(hf: String, shape: Vec<usize>) -> Part {
    let n = shape.iter().product();
    Part {
        hf,
        shape,
        elems: 0..n,
    }
}

/// Rows `rows` of a 2-D (or 1-D) tensor of `shape`.
fn rows(hf: String, shape: Vec<usize>, rows: std::ops::Range<usize>) -> Part {
    let row: usize = shape.iter().skip(1).product();
    Part {
        hf,
        shape,
        elems: rows.start * row..rows.end * row,
    }
}

fn entry(name: String, dims: &[usize], role: Role, parts: Vec<Part>) -> Entry {
    Entry {
        name,
        dims: dims.iter().map(|&d| d as u64).collect(),
        role,
        parts,
    }
}

/// The block index of GGUF tensor names for layer `i` of a group starting at `base`.
fn blk(n: usize, s: &str) -> String {
    format!("blk.{n}.{s}")
}

/// Every GGUF tensor of a model with config `c`, in the order written.
pub fn entries(c: &Config) -> Vec<Entry> {
    let (h, f, v) = (c.n_embd, c.n_ff, c.n_vocab);
    let (qw, kw) = (c.q_width(), c.kv_width());
    let mut out = Vec::new();
    let vec1 = |name: String, hf: String, n: usize| {
        entry(name, &[n], Role::Vector, vec![whole(hf, vec![n])])
    };
    if c.family == Family::Ouro {
        out.push(entry(
            "token_embd.weight".into(),
            &[h, v],
            Role::Embedding,
            vec![whole("model.embed_tokens.weight".into(), vec![v, h])],
        ));
        out.push(vec1(
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            h,
        ));
        if !c.tied {
            out.push(entry(
                "output.weight".into(),
                &[h, v],
                Role::Embedding,
                vec![whole("lm_head.weight".into(), vec![v, h])],
            ));
        }
        out.push(entry(
            "exit_gate.weight".into(),
            &[h],
            Role::Vector,
            vec![whole("model.early_exit_gate.weight".into(), vec![1, h])],
        ));
        out.push(vec1(
            "exit_gate.bias".into(),
            "model.early_exit_gate.bias".into(),
            1,
        ));
        for i in 0..c.n_core {
            let p = |s: &str| format!("model.layers.{i}.{s}");
            out.push(vec1(
                blk(i, "attn_norm.weight"),
                p("input_layernorm.weight"),
                h,
            ));
            out.push(entry(
                blk(i, "attn_qkv.weight"),
                &[h, qw + 2 * kw],
                Role::Matrix,
                vec![
                    whole(p("self_attn.q_proj.weight"), vec![qw, h]),
                    whole(p("self_attn.k_proj.weight"), vec![kw, h]),
                    whole(p("self_attn.v_proj.weight"), vec![kw, h]),
                ],
            ));
            out.push(entry(
                blk(i, "attn_output.weight"),
                &[qw, h],
                Role::Matrix,
                vec![whole(p("self_attn.o_proj.weight"), vec![h, qw])],
            ));
            out.push(vec1(
                blk(i, "attn_post_norm.weight"),
                p("input_layernorm_2.weight"),
                h,
            ));
            out.push(vec1(
                blk(i, "ffn_norm.weight"),
                p("post_attention_layernorm.weight"),
                h,
            ));
            for (g, hf) in [("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj")] {
                out.push(entry(
                    blk(i, &format!("{g}.weight")),
                    &[h, f],
                    Role::Matrix,
                    vec![whole(p(&format!("{hf}.weight")), vec![f, h])],
                ));
            }
            out.push(entry(
                blk(i, "ffn_down.weight"),
                &[f, h],
                Role::Matrix,
                vec![whole(p("mlp.down_proj.weight"), vec![h, f])],
            ));
            out.push(vec1(
                blk(i, "ffn_post_norm.weight"),
                p("post_attention_layernorm_2.weight"),
                h,
            ));
        }
        return out;
    }
    out.push(entry(
        "token_embd.weight".into(),
        &[h, v],
        Role::Embedding,
        vec![whole("transformer.wte.weight".into(), vec![v, h])],
    ));
    out.push(vec1(
        "output_norm.weight".into(),
        "transformer.ln_f.weight".into(),
        h,
    ));
    if !c.tied {
        out.push(entry(
            "output.weight".into(),
            &[h, v],
            Role::Embedding,
            vec![whole("lm_head.weight".into(), vec![v, h])],
        ));
    }
    out.push(entry(
        "adapter.weight".into(),
        &[2 * h, h],
        Role::Matrix,
        vec![whole("transformer.adapter.weight".into(), vec![h, 2 * h])],
    ));
    let groups = [
        ("prelude", c.n_prelude, 0),
        ("core_block", c.n_core, c.n_prelude),
        ("coda", c.n_coda, c.n_prelude + c.n_core),
    ];
    let kind = c.family.block();
    for (group, n, base) in groups {
        for i in 0..n {
            let p = |s: &str| format!("transformer.{group}.{i}.{s}");
            let b = base + i;
            // Norm names by where they act (docs/gguf.md): `attn_norm`/`ffn_norm` before a
            // branch, `*_post_norm` after it (on the sum for Huginn, on the branch otherwise).
            let n1 = match kind {
                BlockKind::PostNorm => "attn_post_norm",
                _ => "attn_norm",
            };
            out.push(vec1(blk(b, &format!("{n1}.weight")), p("norm_1.weight"), h));
            out.push(entry(
                blk(b, "attn_qkv.weight"),
                &[h, qw + 2 * kw],
                Role::Matrix,
                vec![whole(p("attn.Wqkv.weight"), vec![qw + 2 * kw, h])],
            ));
            if c.qk_bias {
                let shape = vec![2, 1, c.n_heads, c.head_dim()];
                out.push(entry(
                    blk(b, "attn_q.bias"),
                    &[qw],
                    Role::Vector,
                    vec![rows(p("attn.qk_bias"), shape.clone(), 0..1)],
                ));
                out.push(entry(
                    blk(b, "attn_k.bias"),
                    &[qw],
                    Role::Vector,
                    vec![rows(p("attn.qk_bias"), shape, 1..2)],
                ));
            }
            if kind == BlockKind::PostNorm {
                out.push(vec1(
                    blk(b, "attn_q_norm.weight"),
                    p("attn.q_norm.weight"),
                    qw,
                ));
                out.push(vec1(
                    blk(b, "attn_k_norm.weight"),
                    p("attn.k_norm.weight"),
                    kw,
                ));
            }
            out.push(entry(
                blk(b, "attn_output.weight"),
                &[qw, h],
                Role::Matrix,
                vec![whole(p("attn.proj.weight"), vec![h, qw])],
            ));
            match kind {
                BlockKind::Sandwich => {
                    out.push(vec1(blk(b, "attn_post_norm.weight"), p("norm_2.weight"), h));
                    out.push(vec1(blk(b, "ffn_norm.weight"), p("norm_3.weight"), h));
                }
                BlockKind::PostNorm => {
                    out.push(vec1(blk(b, "ffn_post_norm.weight"), p("norm_2.weight"), h))
                }
                _ => out.push(vec1(blk(b, "ffn_norm.weight"), p("norm_2.weight"), h)),
            }
            let fc = vec![2 * f, h];
            out.push(entry(
                blk(b, "ffn_gate.weight"),
                &[h, f],
                Role::Matrix,
                vec![rows(p("mlp.fc.weight"), fc.clone(), 0..f)],
            ));
            out.push(entry(
                blk(b, "ffn_up.weight"),
                &[h, f],
                Role::Matrix,
                vec![rows(p("mlp.fc.weight"), fc, f..2 * f)],
            ));
            out.push(entry(
                blk(b, "ffn_down.weight"),
                &[f, h],
                Role::Matrix,
                vec![whole(p("mlp.proj.weight"), vec![h, f])],
            ));
            if kind == BlockKind::Sandwich {
                out.push(vec1(blk(b, "ffn_post_norm.weight"), p("norm_4.weight"), h));
            }
        }
    }
    out
}

/// The Hugging Face tensors a checkpoint of config `c` must hold, name → shape, each once.
pub fn hf_tensors(c: &Config) -> Vec<(String, Vec<usize>)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for e in entries(c) {
        for p in e.parts {
            if seen.insert(p.hf.clone()) {
                out.push((p.hf, p.shape));
            }
        }
    }
    out
}
