//! The readable reference forward pass: SPEC §1 line by line, scalar f32, no cache.
//! Slow on purpose; tests use it as the oracle for the fast path ([`crate::forward`]).
//! Quantized weights are dequantized row by row, so it computes on exactly the weights the fast
//! path reads; only the fast path's activation quantization differs.

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
    let (h, nh, d) = (c.n_embd, c.n_heads, c.head_dim());
    // qkv = x · Wqkvᵀ, split into q, k, v of h each.
    let mut q = Vec::new();
    let mut k = Vec::new();
    let mut v = Vec::new();
    for (pos, x) in xs.iter().enumerate() {
        let qkv = matvec(m, &b.qkv, x);
        let (mut qi, mut ki) = (qkv[..h].to_vec(), qkv[h..2 * h].to_vec());
        if let (Some(qb), Some(kb)) = (&b.q_bias, &b.k_bias) {
            (0..h).for_each(|i| {
                qi[i] += qb[i];
                ki[i] += kb[i];
            });
        }
        // RoPE on interleaved pairs: dims (2i, 2i+1) of each head rotate by pos·θ^(−2i/d).
        for head in 0..nh {
            for i in 0..d / 2 {
                let inv = 1.0f32 / c.rope_base.powf((2 * i) as f32 / d as f32);
                let (cs, sn) = ((pos as f32 * inv).cos(), (pos as f32 * inv).sin());
                for t in [&mut qi, &mut ki] {
                    let (a, bb) = (t[head * d + 2 * i], t[head * d + 2 * i + 1]);
                    t[head * d + 2 * i] = a * cs - bb * sn;
                    t[head * d + 2 * i + 1] = bb * cs + a * sn;
                }
            }
        }
        q.push(qi);
        k.push(ki);
        v.push(qkv[2 * h..].to_vec());
    }
    // Causal softmax attention with scale 1/sqrt(d), per head; then the output projection.
    let scale = 1.0 / (d as f32).sqrt();
    (0..xs.len())
        .map(|t| {
            let mut y = vec![0.0f32; h];
            for head in 0..nh {
                let r = head * d..(head + 1) * d;
                let s: Vec<f32> = (0..=t)
                    .map(|u| {
                        q[t][r.clone()]
                            .iter()
                            .zip(&k[u][r.clone()])
                            .map(|(a, b)| a * b)
                            .sum::<f32>()
                            * scale
                    })
                    .collect();
                let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f32 = e.iter().sum();
                for (u, w) in e.iter().enumerate() {
                    for i in r.clone() {
                        y[i] += w / z * v[u][i];
                    }
                }
            }
            matvec(m, &b.attn_out, &y)
        })
        .collect()
}

/// Sandwich block: x = norm_2(Attn(norm_1(x)) + x); x = norm_4(MLP(norm_3(x)) + x).
fn block(m: &Model, b: &Block, xs: Vec<Vec<f32>>) -> Vec<Vec<f32>> {
    let eps = m.config.norm_eps;
    let normed: Vec<Vec<f32>> = xs.iter().map(|x| rmsnorm(x, &b.attn_norm, eps)).collect();
    let att = attention(m, b, &normed);
    xs.iter()
        .zip(att)
        .map(|(x, a)| {
            let x1: Vec<f32> = x.iter().zip(&a).map(|(p, q)| p + q).collect();
            let x1 = rmsnorm(&x1, &b.attn_post_norm, eps);
            // MLP: (silu(g) ⊙ u) · projᵀ.
            let xn = rmsnorm(&x1, &b.ffn_norm, eps);
            let g = matvec(m, &b.gate, &xn);
            let u = matvec(m, &b.up, &xn);
            let act: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let mlp = matvec(m, &b.down, &act);
            let x2: Vec<f32> = x1.iter().zip(&mlp).map(|(p, q)| p + q).collect();
            rmsnorm(&x2, &b.ffn_post_norm, eps)
        })
        .collect()
}

/// Output of [`forward`].
pub struct RefOutput {
    /// Logits [T][V].
    pub logits: Vec<Vec<f32>>,
    /// Latents ln_f(s) [T][h].
    pub latents: Vec<Vec<f32>>,
}

/// Forward of `tokens` at positions 0..T with `steps` core iterations from initial state `s0`
/// ([T][h]; zeros for `init_scale = 0`).
pub fn forward(m: &Model, tokens: &[u32], steps: usize, s0: Vec<Vec<f32>>) -> RefOutput {
    let c = &m.config;
    let h = c.n_embd;
    // 1. e = wte[t] · sqrt(h); e = Prelude(e).
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
    // 3. For i in 0..r: s = adapter([s ; e]), then the core blocks.
    let mut s = s0;
    for _ in 0..steps {
        s = s
            .iter()
            .zip(&e)
            .map(|(si, ei)| {
                let cat: Vec<f32> = si.iter().chain(ei.iter()).copied().collect();
                matvec(m, &m.adapter, &cat)
            })
            .collect();
        for j in 0..c.n_core {
            s = block(m, &m.blocks[c.n_prelude + j], s);
        }
    }
    // 4. latent = ln_f(s); x = Coda(latent); logits = ln_f(x) · lm_headᵀ.
    let latents: Vec<Vec<f32>> = s
        .iter()
        .map(|x| rmsnorm(x, &m.output_norm, c.norm_eps))
        .collect();
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
