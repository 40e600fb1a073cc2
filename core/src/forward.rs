//! The fast forward pass: batched blocks over the KV cache, matrix products through
//! `raven-quant` kernels split across threads. The readable oracle is [`crate::reference`].
//!
//! The pieces are exposed separately because the exit policies of SPEC §2 interleave them:
//! [`Model::embed_prelude`] (tokens → e), [`Model::core_step`] (s ← core(adapter([s; e]))),
//! [`Model::coda_head`] (s → ln_f → coda → ln_f → logits). State lives in a [`Workspace`].

use raven_quant::{Activations, SERIAL_WORK};

use crate::config::BlockKind;
use crate::kv::{KvCache, Slot};
use crate::model::{Block, Model, Weight};

/// Scratch buffers and the recurrent state of the tokens being processed.
#[derive(Default)]
pub struct Workspace {
    /// Tokens in the current batch.
    pub n: usize,
    /// Position of the first token of the batch.
    pub start: usize,
    /// Prelude output e, [n, h].
    pub e: Vec<f32>,
    /// Recurrent state s, [n, h].
    pub s: Vec<f32>,
    /// Latent ln_f(s) of the last coda_head call, [n, h].
    pub latent: Vec<f32>,
    /// Logits of the last coda_head call, [rows, V].
    pub logits: Vec<f32>,
    /// Raw exit-gate values of the last core step, [n] (models with a gate).
    pub exit_gate: Vec<f32>,
    x: Vec<f32>,
    xn: Vec<f32>,
    cat: Vec<f32>,
    qkv: Vec<f32>,
    y: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    act: Activations,
    scatter: Vec<f32>,
    /// Cache row offsets each token of the batch attends to.
    visible: Vec<Vec<usize>>,
    /// Attention scores of one head, when heads run on the calling thread.
    scores: Vec<f32>,
    /// Queries and attention outputs of a batch grouped by head, [head][token][d].
    qh: Vec<f32>,
    yh: Vec<f32>,
}

impl Workspace {
    /// An empty workspace; buffers grow to the largest batch seen and are then reused.
    pub fn new() -> Workspace {
        Workspace::default()
    }
}

fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.resize(n, 0.0);
    }
}

/// `out[i] = x[i] / sqrt(mean(x²) + eps) * w[i]` for each row of `x`.
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let h = w.len();
    for (o, xr) in out.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = xv * r * wv;
        }
    }
}

/// The residual add of a branch output `y` into `x`, with the block kind's norm: on the sum
/// (Huginn's sandwich), on the branch (OLMo-2, Ouro), or none (pre-norm).
fn residual(kind: BlockKind, x: &mut [f32], y: &mut [f32], norm: Option<&[f32]>, eps: f32) {
    match (kind, norm) {
        (BlockKind::Sandwich, Some(w)) => {
            x.iter_mut().zip(y.iter()).for_each(|(x, a)| *x += a);
            rmsnorm_inplace(x, w, eps);
        }
        (_, Some(w)) => {
            rmsnorm_inplace(y, w, eps);
            x.iter_mut().zip(y.iter()).for_each(|(x, a)| *x += a);
        }
        (_, None) => x.iter_mut().zip(y.iter()).for_each(|(x, a)| *x += a),
    }
}

fn rmsnorm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let h = w.len();
    for xr in x.chunks_exact_mut(h) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let r = 1.0 / (ss + eps).sqrt();
        for (xv, &wv) in xr.iter_mut().zip(w) {
            *xv = *xv * r * wv;
        }
    }
}

/// Runs `head(scores, (i, chunk))` over the `chunk`-sized pieces of `out`: on the calling
/// thread with `scores` as scratch when `work` (multiply-adds) is under [`SERIAL_WORK`], else
/// across the current team (or rayon pool), each member with its own scratch.
fn for_each_head(
    out: &mut [f32],
    chunk: usize,
    work: usize,
    scores: &mut Vec<f32>,
    head: impl Fn(&mut Vec<f32>, (usize, &mut [f32])) + Sync + Send,
) {
    if work < SERIAL_WORK {
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|x| head(scores, x));
        return;
    }
    raven_quant::for_each_chunk(out, chunk, scores, &|s, i, piece| head(s, (i, piece)));
}

impl Model {
    fn linear(
        &self,
        w: &Weight,
        x: &[f32],
        n: usize,
        out: &mut Vec<f32>,
        act: &mut Activations,
        scatter: &mut Vec<f32>,
    ) {
        resize(out, n * w.rows);
        act.prepare(x, n, w.cols, w.ty);
        raven_quant::par_matmul(self.weights(w), act, out, scatter);
    }

    fn set_rope(&self, ws: &mut Workspace) {
        let half = self.config.head_dim() / 2;
        resize(&mut ws.rope_cos, ws.n * half);
        resize(&mut ws.rope_sin, ws.n * half);
        let inv = &self.rope_inv_freq;
        for t in 0..ws.n {
            let pos = (ws.start + t) as f32;
            for (i, f) in inv.iter().enumerate() {
                let a = pos * f;
                ws.rope_cos[t * half + i] = a.cos();
                ws.rope_sin[t * half + i] = a.sin();
            }
        }
    }

    /// One block on `ws.x` ([n, h]) for the batch, reading and writing cache `slot`. The norms
    /// act where the family's [`BlockKind`] puts them.
    fn block(&self, b: &Block, slot: Slot, cache: &mut KvCache, ws: &mut Workspace) {
        let c = &self.config;
        let (h, n, nh, d) = (c.n_embd, ws.n, c.n_heads, c.head_dim());
        let (qw, kw) = (c.q_width(), c.kv_width());
        let group = nh / c.n_kv_heads;
        let stride = qw + 2 * kw;
        let eps = c.norm_eps;
        let kind = c.family.block();
        let halves = c.family.rope_halves();
        resize(&mut ws.xn, n * h);
        let attn_in: &[f32] = match &b.attn_norm {
            Some(w) => {
                rmsnorm(&mut ws.xn, &ws.x, w, eps);
                &ws.xn
            }
            None => &ws.x,
        };
        self.linear(
            &b.qkv,
            attn_in,
            n,
            &mut ws.qkv,
            &mut ws.act,
            &mut ws.scatter,
        );
        // Biases, q/k norms and RoPE on q and k; store k, v in the cache.
        let half = d / 2;
        for t in 0..n {
            let row = &mut ws.qkv[t * stride..(t + 1) * stride];
            let (q, rest) = row.split_at_mut(qw);
            let (k, v) = rest.split_at_mut(kw);
            if let (Some(qb), Some(kb)) = (&b.q_bias, &b.k_bias) {
                q.iter_mut().zip(qb).for_each(|(a, b)| *a += b);
                k.iter_mut().zip(kb).for_each(|(a, b)| *a += b);
            }
            if let (Some(qn), Some(kn)) = (&b.q_norm, &b.k_norm) {
                rmsnorm_inplace(q, qn, eps);
                rmsnorm_inplace(k, kn, eps);
            }
            let cs = &ws.rope_cos[t * half..(t + 1) * half];
            let sn = &ws.rope_sin[t * half..(t + 1) * half];
            for x in q.chunks_exact_mut(d).chain(k.chunks_exact_mut(d)) {
                if halves {
                    let (lo, hi) = x.split_at_mut(half);
                    for i in 0..half {
                        let (a, bb) = (lo[i], hi[i]);
                        lo[i] = a * cs[i] - bb * sn[i];
                        hi[i] = bb * cs[i] + a * sn[i];
                    }
                } else {
                    for i in 0..half {
                        let (a, bb) = (x[2 * i], x[2 * i + 1]);
                        x[2 * i] = a * cs[i] - bb * sn[i];
                        x[2 * i + 1] = bb * cs[i] + a * sn[i];
                    }
                }
            }
            cache.write(slot, ws.start + t, k, v);
        }
        // Attention: the positions each token sees (one walk of the cache per token, shared by
        // its heads), then one task per (token, head). Query head `hd` reads key/value head
        // `hd / group` (its columns within the cached rows): grouped-query attention without
        // copying keys.
        resize(&mut ws.y, n * qw);
        let scale = 1.0 / (d as f32).sqrt();
        ws.visible.resize_with(n, Vec::new);
        for (t, offs) in ws.visible.iter_mut().enumerate() {
            cache.visible_offsets(slot, ws.start + t, offs);
        }
        let (qkv, visible) = (&ws.qkv, &ws.visible);
        let kv = cache.rows();
        let work: usize = visible.iter().map(|v| v.len()).sum::<usize>() * qw * 2;
        let nested = n > 1 && visible.windows(2).all(|w| w[1].starts_with(&w[0]));
        if nested {
            // A batch whose positions nest (the prompt, a speculative verification): each
            // head's queries together, the cache read once per block of positions for all of
            // them; outputs per head, [head][token][d], then into [token][H·d].
            let lens: Vec<usize> = visible.iter().map(|v| v.len()).collect();
            resize(&mut ws.yh, n * qw);
            let q_heads = &mut ws.qh;
            resize(q_heads, n * qw);
            for t in 0..n {
                for hd in 0..nh {
                    q_heads[(hd * n + t) * d..(hd * n + t + 1) * d]
                        .copy_from_slice(&qkv[t * stride + hd * d..t * stride + (hd + 1) * d]);
                }
            }
            let q_heads = &ws.qh;
            // At most 64 queries per call: their scores (64 × positions) stay small for long
            // prompts.
            let head = |scores: &mut Vec<f32>, (hd, yo): (usize, &mut [f32])| {
                for t0 in (0..n).step_by(64) {
                    let t1 = (t0 + 64).min(n);
                    raven_quant::attend_queries(
                        &q_heads[(hd * n + t0) * d..(hd * n + t1) * d],
                        d,
                        kv,
                        &visible[t1 - 1],
                        &lens[t0..t1],
                        cache.head_col((hd / group) * d),
                        scale,
                        scores,
                        &mut yo[t0 * d..t1 * d],
                        d,
                    );
                }
            };
            for_each_head(&mut ws.yh, n * d, work, &mut ws.scores, head);
            for t in 0..n {
                for hd in 0..nh {
                    ws.y[t * qw + hd * d..t * qw + (hd + 1) * d]
                        .copy_from_slice(&ws.yh[(hd * n + t) * d..(hd * n + t + 1) * d]);
                }
            }
        } else {
            // One token at a time (decoding): a task per key/value head, whose query heads
            // (one, or a grouped-query attention's group: heads kvh·group .. +group, adjacent in
            // q and in the output) are one multi-query call, so each cached row is read once for
            // the group, in blocks of positions with the next rows prefetched. Bit for bit the
            // single-query results. Every query of token t sees its `visible[t]`: `group` equal
            // lengths per token, made once per block rather than per head.
            let nkv = c.n_kv_heads;
            let lens: Vec<usize> = visible
                .iter()
                .flat_map(|v| std::iter::repeat_n(v.len(), group))
                .collect();
            let head = |scores: &mut Vec<f32>, (idx, yo): (usize, &mut [f32])| {
                let (t, kvh) = (idx / nkv, idx % nkv);
                let q0 = t * stride + kvh * group * d;
                raven_quant::attend_queries(
                    &qkv[q0..q0 + group * d],
                    d,
                    kv,
                    &visible[t],
                    &lens[t * group..(t + 1) * group],
                    cache.head_col(kvh * d),
                    scale,
                    scores,
                    yo,
                    d,
                );
            };
            for_each_head(&mut ws.y, group * d, work, &mut ws.scores, head);
        }
        self.linear(
            &b.attn_out,
            &ws.y,
            n,
            &mut ws.tmp,
            &mut ws.act,
            &mut ws.scatter,
        );
        residual(
            kind,
            &mut ws.x,
            &mut ws.tmp,
            b.attn_post_norm.as_deref(),
            eps,
        );
        // Gated MLP.
        let mlp_in: &[f32] = match &b.ffn_norm {
            Some(w) => {
                rmsnorm(&mut ws.xn, &ws.x, w, eps);
                &ws.xn
            }
            None => &ws.x,
        };
        self.linear(
            &b.gate,
            mlp_in,
            n,
            &mut ws.gate,
            &mut ws.act,
            &mut ws.scatter,
        );
        // `up` takes the same activations: reuse the prepared ones when the types pair alike.
        self.linear(&b.up, mlp_in, n, &mut ws.up, &mut ws.act, &mut ws.scatter);
        raven_quant::silu_mul(&mut ws.gate, &ws.up);
        let gate = std::mem::take(&mut ws.gate);
        self.linear(&b.down, &gate, n, &mut ws.tmp, &mut ws.act, &mut ws.scatter);
        ws.gate = gate;
        residual(
            kind,
            &mut ws.x,
            &mut ws.tmp,
            b.ffn_post_norm.as_deref(),
            eps,
        );
    }

    /// Embeds `tokens` at positions `start..` and runs the prelude: fills `ws.e`, sets the batch.
    pub fn embed_prelude(
        &self,
        tokens: &[u32],
        start: usize,
        cache: &mut KvCache,
        ws: &mut Workspace,
    ) {
        let h = self.config.n_embd;
        ws.n = tokens.len();
        ws.start = start;
        self.set_rope(ws);
        resize(&mut ws.x, ws.n * h);
        for (t, &tok) in tokens.iter().enumerate() {
            self.embed(tok, &mut ws.x[t * h..(t + 1) * h]);
        }
        for j in 0..self.config.n_prelude {
            self.block(&self.blocks[j], Slot::Prelude(j), cache, ws);
        }
        std::mem::swap(&mut ws.e, &mut ws.x);
    }

    /// One core iteration `iter` (0-based): `ws.s ← core(adapter([ws.s; ws.e]))`; for a
    /// looped-stack model (Ouro) `ws.s ← ln_f(stack(ws.s))`, and `ws.exit_gate` gets each
    /// token's raw gate value.
    pub fn core_step(&self, iter: usize, cache: &mut KvCache, ws: &mut Workspace) {
        let (h, n) = (self.config.n_embd, ws.n);
        match &self.adapter {
            Some(adapter) => {
                resize(&mut ws.cat, n * 2 * h);
                for t in 0..n {
                    ws.cat[t * 2 * h..t * 2 * h + h].copy_from_slice(&ws.s[t * h..(t + 1) * h]);
                    ws.cat[t * 2 * h + h..(t + 1) * 2 * h]
                        .copy_from_slice(&ws.e[t * h..(t + 1) * h]);
                }
                let cat = std::mem::take(&mut ws.cat);
                self.linear(adapter, &cat, n, &mut ws.x, &mut ws.act, &mut ws.scatter);
                ws.cat = cat;
            }
            None => {
                resize(&mut ws.x, n * h);
                ws.x.copy_from_slice(&ws.s);
            }
        }
        let p = self.config.n_prelude;
        for j in 0..self.config.n_core {
            self.block(
                &self.blocks[p + j],
                Slot::Core { iter, layer: j },
                cache,
                ws,
            );
        }
        if self.config.family.looped_stack() {
            rmsnorm_inplace(&mut ws.x, &self.output_norm, self.config.norm_eps);
        }
        if let Some((w, bias)) = &self.exit_gate {
            ws.exit_gate.clear();
            ws.exit_gate.extend(
                ws.x.chunks_exact(h)
                    .map(|x| x.iter().zip(w).map(|(a, b)| a * b).sum::<f32>() + bias),
            );
        }
        std::mem::swap(&mut ws.s, &mut ws.x);
    }

    /// The read-out of the current state: `ws.latent` is what feeds the coda (ln_f(s) for
    /// Huginn, s itself otherwise), then the coda (writing its cache slots for the batch), ln_f
    /// and the head — for a looped-stack model, whose state is already normed, the head alone.
    /// Logits are computed for the last `logit_rows` tokens of the batch only (1 when
    /// generating; n for `raven logits`), into `ws.logits` ([logit_rows, V]).
    pub fn coda_head(&self, logit_rows: usize, cache: &mut KvCache, ws: &mut Workspace) {
        let c = &self.config;
        let (h, n) = (c.n_embd, ws.n);
        resize(&mut ws.latent, n * h);
        if c.family.norm_before_coda() {
            rmsnorm(&mut ws.latent, &ws.s, &self.output_norm, c.norm_eps);
        } else {
            ws.latent.copy_from_slice(&ws.s);
        }
        let rows = logit_rows.min(n);
        let last = if c.family.looped_stack() {
            ws.latent[(n - rows) * h..].to_vec()
        } else {
            resize(&mut ws.x, n * h);
            ws.x.copy_from_slice(&ws.latent);
            let base = c.n_prelude + c.n_core;
            for j in 0..c.n_coda {
                self.block(&self.blocks[base + j], Slot::Coda(j), cache, ws);
            }
            resize(&mut ws.xn, n * h);
            rmsnorm(&mut ws.xn, &ws.x, &self.output_norm, c.norm_eps);
            ws.xn[(n - rows) * h..].to_vec()
        };
        self.linear(
            &self.output,
            &last,
            rows,
            &mut ws.logits,
            &mut ws.act,
            &mut ws.scatter,
        );
    }

    /// Sets `ws.s` to the initial state for the batch: zeros when `init_scale` is 0, otherwise a
    /// truncated normal (±3σ) with σ = state_init_std · init_scale, times sqrt(h) (SPEC §1.2).
    /// A looped-stack model (Ouro) has no initial state: it starts from the embedding `ws.e`.
    pub fn init_state(&self, init_scale: f32, rng: &mut crate::rng::Rng, ws: &mut Workspace) {
        let h = self.config.n_embd;
        resize(&mut ws.s, ws.n * h);
        if self.config.family.looped_stack() {
            ws.s.copy_from_slice(&ws.e);
            return;
        }
        let std = self.config.state_init_std * init_scale;
        if std > 0.0 {
            for x in ws.s.iter_mut() {
                *x = rng.trunc_normal() * std * self.config.embed_scale;
            }
        } else {
            ws.s.iter_mut().for_each(|x| *x = 0.0);
        }
    }
}
