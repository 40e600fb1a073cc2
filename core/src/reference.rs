//! The readable reference forward pass: SPEC §1 line by line, scalar f32, no cache.
//! Slow on purpose; tests use it as the oracle for the fast path ([`crate::forward`]).
//! Quantized weights are dequantized row by row, so it computes on exactly the weights the fast
//! path reads; only the fast path's activation quantization differs.

use crate::config::BlockKind;
use crate::model::{Block, Model, Weight};

/// `y[r] = Σ_c W[r][c] · x[c]` for every row of a weight, x of length cols. Rows are spread
/// over the current rayon pool (each row's sum is the same sequential loop on any thread, so
/// the result does not depend on the thread count): a full-size model is billions of
/// multiply-adds per token.
fn matvec(m: &Model, w: &Weight, x: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let bytes = m.bytes(w);
    let rb = bytes.len() / w.rows;
    (0..w.rows)
        .into_par_iter()
        .map_init(
            || vec![0.0f32; w.cols],
            |row, r| {
                raven_quant::dequantize_row(w.ty, &bytes[r * rb..(r + 1) * rb], row)
                    .expect("validated");
                row.iter().zip(x).map(|(a, b)| a * b).sum()
            },
        )
        .collect()
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * r * b).collect()
}

/// Attention of a whole sequence xs ([T][h], already normed) at positions 0..T.
fn attention(m: &Model, b: &Block, xs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let c = &m.config;
    let (nh, d) = (c.n_heads, c.head_dim());
    let (qw, kw) = (c.q_width(), c.kv_width());
    let group = nh / c.n_kv_heads;
    let inv = c.rope_inv_freq();
    // qkv = x · Wqkvᵀ, split into q (H·d), k and v (K·d each).
    let mut q = Vec::new();
    let mut k = Vec::new();
    let mut v = Vec::new();
    for (pos, x) in xs.iter().enumerate() {
        let qkv = matvec(m, &b.qkv, x);
        let (mut qi, mut ki) = (qkv[..qw].to_vec(), qkv[qw..qw + kw].to_vec());
        if let (Some(qb), Some(kb)) = (&b.q_bias, &b.k_bias) {
            qi.iter_mut().zip(qb).for_each(|(a, b)| *a += b);
            ki.iter_mut().zip(kb).for_each(|(a, b)| *a += b);
        }
        // OLMo-2: one RMSNorm over the whole q and the whole k projection.
        if let (Some(qn), Some(kn)) = (&b.q_norm, &b.k_norm) {
            qi = rmsnorm(&qi, qn, c.norm_eps);
            ki = rmsnorm(&ki, kn, c.norm_eps);
        }
        // RoPE: dims (2i, 2i+1) (Huginn) or (i, i + d/2) (rotate-half) of each head rotate by
        // pos·inv_i.
        for t in [&mut qi, &mut ki] {
            for head in t.chunks_exact_mut(d) {
                for (i, &f) in inv.iter().enumerate() {
                    let (cs, sn) = ((pos as f32 * f).cos(), (pos as f32 * f).sin());
                    let (ia, ib) = if c.family.rope_halves() {
                        (i, i + d / 2)
                    } else {
                        (2 * i, 2 * i + 1)
                    };
                    let (a, bb) = (head[ia], head[ib]);
                    head[ia] = a * cs - bb * sn;
                    head[ib] = bb * cs + a * sn;
                }
            }
        }
        q.push(qi);
        k.push(ki);
        v.push(qkv[qw + kw..].to_vec());
    }
    // Causal softmax attention with scale 1/sqrt(d), per head (query head i reads key/value
    // head i / (H/K)); then the output projection.
    let scale = 1.0 / (d as f32).sqrt();
    (0..xs.len())
        .map(|t| {
            let mut y = vec![0.0f32; qw];
            for head in 0..nh {
                let r = head * d..(head + 1) * d;
                let kr = (head / group) * d..(head / group + 1) * d;
                let s: Vec<f32> = (0..=t)
                    .map(|u| {
                        q[t][r.clone()]
                            .iter()
                            .zip(&k[u][kr.clone()])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            * scale
                    })
                    .collect();
                let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f32 = e.iter().sum();
                for (u, w) in e.iter().enumerate() {
                    for (i, j) in r.clone().zip(kr.clone()) {
                        y[i] += w / z * v[u][j];
                    }
                }
            }
            matvec(m, &b.attn_out, &y)
        })
        .collect()
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(p, q)| p + q).collect()
}

/// `x + branch` with the block kind's post-norm: on the sum (Huginn), on the branch (OLMo-2,
/// Ouro) or none (Llama).
fn residual(kind: BlockKind, x: &[f32], branch: &[f32], w: Option<&[f32]>, eps: f32) -> Vec<f32> {
    match (kind, w) {
        (BlockKind::Sandwich, Some(w)) => rmsnorm(&add(x, branch), w, eps),
        (_, Some(w)) => add(x, &rmsnorm(branch, w, eps)),
        (_, None) => add(x, branch),
    }
}

/// One block: Huginn x = n2(Attn(n1 x) + x), x = n4(MLP(n3 x) + x); Llama x += Attn(n1 x),
/// x += MLP(n2 x); OLMo-2 x += n1(Attn x), x += n2(MLP x); Ouro x += n2(Attn(n1 x)),
/// x += n4(MLP(n3 x)).
fn block(m: &Model, b: &Block, xs: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let eps = m.config.norm_eps;
    let kind = m.config.family.block();
    let pre = |x: &Vec<f32>, w: &Option<Vec<f32>>| match w {
        Some(w) => rmsnorm(x, w, eps),
        None => x.clone(),
    };
    let normed: Vec<Vec<f32>> = xs.iter().map(|x| pre(x, &b.attn_norm)).collect();
    let att = attention(m, b, &normed);
    xs.iter()
        .zip(att)
        .map(|(x, a)| {
            let x1 = residual(kind, x, &a, b.attn_post_norm.as_deref(), eps);
            // MLP: (silu(g) ⊙ u) · downᵀ.
            let xn = pre(&x1, &b.ffn_norm);
            let g = matvec(m, &b.gate, &xn);
            let u = matvec(m, &b.up, &xn);
            let act: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let mlp = matvec(m, &b.down, &act);
            residual(kind, &x1, &mlp, b.ffn_post_norm.as_deref(), eps)
        })
        .collect()
}

/// Output of [`forward`].
pub struct RefOutput {
    /// Logits [T][V].
    pub logits: Vec<Vec<f32>>,
    /// Latents [T][h]: what fed the coda (ln_f(s) for Huginn, s for the retrofitted models, the
    /// normed state for Ouro).
    pub latents: Vec<Vec<f32>>,
}

/// Forward of `tokens` at positions 0..T with `steps` core iterations (Ouro: loop steps) from
/// initial state `s0` ([T][h]; zeros for `init_scale = 0`; ignored by Ouro, which starts from
/// the embedding).
pub fn forward(m: &Model, tokens: &[u32], steps: usize, s0: Vec<Vec<f32>>) -> RefOutput {
    let c = &m.config;
    let h = c.n_embd;
    // 1. e = wte[t] · embed_scale; e = Prelude(e).
    let mut e: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&t| {
            let mut row = vec![0.0; h];
            m.embed(t, &mut row);
            row
        })
        .collect();
    for j in 0..c.n_prelude {
        e = block(m, &m.blocks[j], e);
    }
    // 2. For i in 0..r: s = adapter([s ; e]), then the core blocks (Ouro: s = ln_f(stack(s))
    //    from s = e).
    let mut s = match &m.adapter {
        Some(_) => s0,
        None => e.clone(),
    };
    for _ in 0..steps {
        if let Some(adapter) = &m.adapter {
            s = s
                .iter()
                .zip(&e)
                .map(|(si, ei)| {
                    let cat: Vec<f32> = si.iter().chain(ei.iter()).copied().collect();
                    matvec(m, adapter, &cat)
                })
                .collect();
        }
        for j in 0..c.n_core {
            s = block(m, &m.blocks[c.n_prelude + j], s);
        }
        if c.family.looped_stack() {
            s = s
                .iter()
                .map(|x| rmsnorm(x, &m.output_norm, c.norm_eps))
                .collect();
        }
    }
    // 3. Huginn: latent = ln_f(s); others: latent = s. Then x = Coda(latent);
    //    logits = ln_f(x) · lm_headᵀ (Ouro: logits = s · lm_headᵀ).
    let latents: Vec<Vec<f32>> = if c.family.norm_before_coda() {
        s.iter()
            .map(|x| rmsnorm(x, &m.output_norm, c.norm_eps))
            .collect()
    } else {
        s
    };
    if c.family.looped_stack() {
        let logits = latents.iter().map(|x| matvec(m, &m.output, x)).collect();
        return RefOutput { logits, latents };
    }
    let mut x = latents.clone();
    for j in 0..c.n_coda {
        x = block(m, &m.blocks[c.n_prelude + c.n_core + j], x);
    }
    let logits = x
        .iter()
        .map(|xi| matvec(m, &m.output, &rmsnorm(xi, &m.output_norm, c.norm_eps)))
        .collect();
    RefOutput { logits, latents }
}
