//! Real-size paths (issue: conversion at Huginn-0125's width never ran before a user tried it):
//!
//! - `raven synth --hf` lays a checkpoint out exactly as `save_pretrained` does (the fixture was
//!   written by it): shard names, which tensors each holds, offsets, index, config;
//! - a checkpoint of Huginn-0125's widths (h 5280, 55 heads, F 17920) with one block per group
//!   and a small vocabulary converts to every output type: each GGUF tensor equals its source
//!   rows quantized directly (bit for bit), and the logits equal the reference forward's;
//! - a model whose embedding has more rows than its tokenizer has tokens never emits an id the
//!   tokenizer cannot decode.
//!
//! The width test writes a 2.5 GB checkpoint and converts it five times (about a minute
//! natively). Under qemu it would take most of an hour, so `RAVEN_TEST_SKIP_REAL_WIDTH=1`
//! (set by tools/test.sh for the emulated runs only) skips it there.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use raven::checkpoint::Checkpoint;
use raven::config::Config;
use raven::convert::{convert, NoProgress, OutType};
use raven::run::{logits, LogitsOptions, Threads};
use raven::session::{Session, SessionParams};
use raven::synth::{huginn_0125, write_hf, HfOptions};
use raven::Model;
use raven_gguf::Gguf;
use serde_json::Value;

/// A safetensors file's header without `__metadata__`.
fn header(path: &Path) -> Value {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let mut v: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    v.as_object_mut().unwrap().remove("__metadata__");
    v
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture is `save_pretrained`'s output for its shape with a 300 kB shard limit: synth
/// --hf with the same shape and limit must lay out the same shards, names, shapes and offsets.
#[test]
fn synth_hf_lays_out_like_save_pretrained() {
    let c = Config::from_hf_json(&tiny_dir().join("config.json")).unwrap();
    let dir = TempDir::new("synth-hf-layout");
    let out = dir.path().join("ck");
    let o = HfOptions {
        max_shard_bytes: 300_000,
        tokenizer_json: Some(std::fs::read_to_string(tiny_dir().join("tokenizer.json")).unwrap()),
        ..Default::default()
    };
    let rep = write_hf(&c, &out, &o).unwrap();
    assert_eq!(rep.shards.len(), 3);
    let index = "model.safetensors.index.json";
    assert_eq!(json(&out.join(index)), json(&tiny_dir().join(index)));
    for i in 1..=3 {
        let f = format!("model-0000{i}-of-00003.safetensors");
        assert_eq!(header(&out.join(&f)), header(&tiny_dir().join(&f)), "{f}");
    }
    assert_eq!(Config::from_hf_json(&out.join("config.json")).unwrap(), c);
    // The special ids come from the tokenizer shipped beside them.
    let cfg = json(&out.join("config.json"));
    let want = json(&tiny_dir().join("config.json"));
    for k in [
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "block_size",
        "head_dim",
    ] {
        assert_eq!(cfg[k], want[k], "{k}");
    }
    // A non-empty directory is refused, and nothing in it is touched.
    let err = write_hf(&c, &out, &o).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(json(&out.join(index)), json(&tiny_dir().join(index)));
}

/// GGUF name → the checkpoint tensor and the elements of it (row-major) it holds (SPEC §3).
fn source(c: &Config, name: &str) -> (String, std::ops::Range<usize>) {
    let (h, f) = (c.n_embd, c.n_ff);
    let all = 0..usize::MAX;
    match name {
        "token_embd.weight" => return ("transformer.wte.weight".into(), all),
        "output_norm.weight" => return ("transformer.ln_f.weight".into(), all),
        "output.weight" => return ("lm_head.weight".into(), all),
        "adapter.weight" => return ("transformer.adapter.weight".into(), all),
        _ => {}
    }
    let rest = name.strip_prefix("blk.").expect("a block tensor");
    let (n, what) = rest.split_once('.').unwrap();
    let n: usize = n.parse().unwrap();
    let (group, i) = if n < c.n_prelude {
        ("prelude", n)
    } else if n < c.n_prelude + c.n_core {
        ("core_block", n - c.n_prelude)
    } else {
        ("coda", n - c.n_prelude - c.n_core)
    };
    let (hf, range) = match what {
        "attn_norm.weight" => ("norm_1.weight", all),
        "attn_qkv.weight" => ("attn.Wqkv.weight", all),
        "attn_q.bias" => ("attn.qk_bias", 0..h),
        "attn_k.bias" => ("attn.qk_bias", h..2 * h),
        "attn_output.weight" => ("attn.proj.weight", all),
        "attn_post_norm.weight" => ("norm_2.weight", all),
        "ffn_norm.weight" => ("norm_3.weight", all),
        "ffn_gate.weight" => ("mlp.fc.weight", 0..f * h),
        "ffn_up.weight" => ("mlp.fc.weight", f * h..2 * f * h),
        "ffn_down.weight" => ("mlp.proj.weight", all),
        "ffn_post_norm.weight" => ("norm_4.weight", all),
        _ => panic!("unexpected tensor {name}"),
    };
    (format!("transformer.{group}.{i}.{hf}"), range)
}

/// Every tensor of the GGUF equals its source elements, read whole row by row from the
/// checkpoint and quantized to the tensor's type here: the converter's chunking cannot drop,
/// shift or reorder anything unnoticed.
fn tensors_equal_their_sources(ck: &Checkpoint, gguf: &Path) {
    let g = Gguf::open(gguf).unwrap();
    assert!(!g.tensors().is_empty());
    let mut vals = Vec::new();
    let mut q = Vec::new();
    for t in g.tensors() {
        let (hf, range) = source(&ck.config, &t.name);
        let src = ck.tensor(&hf).unwrap_or_else(|| panic!("{hf}"));
        let n = Checkpoint::n_elems(src);
        let range = range.start..range.end.min(n);
        assert_eq!(range.len() as u64, t.n_elements(), "{}", t.name);
        let cols = t.cols() as usize;
        let rb = t.ty.row_bytes(cols as u64).unwrap() as usize;
        let data = g.tensor_data(t);
        for r in 0..t.rows() as usize {
            let first = range.start + r * cols;
            ck.elems_f32(src, first..first + cols, &mut vals).unwrap();
            q.resize(rb, 0);
            raven_quant::quantize_row(t.ty, &vals, &mut q).unwrap();
            assert!(
                q == data[r * rb..(r + 1) * rb],
                "{} ({}): row {r} differs from {hf}",
                t.name,
                t.ty
            );
        }
    }
}

fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Mean over rows of KL(softmax(a) ‖ softmax(b)).
fn mean_kl(a: &[f32], b: &[f32], v: usize) -> f64 {
    let rows = a.len() / v;
    (0..rows)
        .map(|r| {
            let (p, q) = (
                softmax(&a[r * v..(r + 1) * v]),
                softmax(&b[r * v..(r + 1) * v]),
            );
            p.iter()
                .zip(&q)
                .map(|(p, q)| if *p > 0.0 { p * (p / q).ln() } else { 0.0 })
                .sum::<f64>()
        })
        .sum::<f64>()
        / rows as f64
}

#[test]
fn huginn_widths_convert_to_every_type() {
    if std::env::var_os("RAVEN_TEST_SKIP_REAL_WIDTH").is_some() {
        eprintln!("skipped: RAVEN_TEST_SKIP_REAL_WIDTH is set");
        return;
    }
    let mut c = huginn_0125();
    (c.n_prelude, c.n_core, c.n_coda, c.n_vocab) = (1, 1, 1, 1024);
    let dir = TempDir::new("real-width");
    let ck_dir = dir.path().join("ck");
    let rep = write_hf(&c, &ck_dir, &HfOptions::default()).unwrap();
    assert_eq!(
        rep.shards.len(),
        2,
        "2.5 GB of bf16 in shards of at most 2 GiB"
    );
    let ck = Checkpoint::open(&ck_dir).unwrap();
    assert_eq!(ck.config, c);
    let v = c.n_vocab;
    let tokens = [0u32, 1, 517, v as u32 - 1];
    let threads = Threads::new(2).unwrap();
    // The oracle: the readable reference forward on the bf16 file, whose weights are the
    // checkpoint's values exactly.
    let mut oracle = Vec::new();
    for ty in ["bf16", "f32", "f16", "q8_0", "q4_0"] {
        let out = dir.path().join(format!("m-{ty}.gguf"));
        convert(&ck_dir, &out, OutType::parse(ty).unwrap(), &mut NoProgress)
            .unwrap_or_else(|e| panic!("convert to {ty}: {e}"));
        tensors_equal_their_sources(&ck, &out);
        let m = Model::load(&out).unwrap();
        let fast = logits(&m, &tokens, &LogitsOptions::fixed(1), &threads)
            .unwrap()
            .logits;
        if ty == "bf16" {
            let s0 = vec![vec![0.0; c.n_embd]; tokens.len()];
            oracle = raven::reference::forward(&m, &tokens, 1, s0)
                .logits
                .concat();
        }
        let d = max_abs_diff(&fast, &oracle);
        let kl = mean_kl(&oracle, &fast, v);
        eprintln!("{ty}: max |Δ logits| {d:.2e}, mean KL {kl:.2e}");
        match ty {
            "q8_0" => assert!(kl < 2e-3, "{ty}: mean KL {kl}"),
            "q4_0" => assert!(kl < 2e-2, "{ty}: mean KL {kl}"),
            _ => assert!(d < 1e-3, "{ty}: logits differ from the reference by {d}"),
        }
        drop(m);
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn padded_vocabulary_is_never_emitted() {
    let dir = TempDir::new("padded-vocab");
    let (path, n_tok) = padded_model(&dir);
    let m = Arc::new(Model::load(&path).unwrap());
    assert!(m.config.n_vocab > n_tok);
    assert_eq!(m.emittable().n, n_tok);
    let tok = m.tokenizer().unwrap();
    let prompt = tok.encode("Ball: 1. Swaps: 12 34", false).unwrap();
    // Sampling over everything left (temperature 1, no truncation) and greedy alike.
    for temp in [1.0f32, 0.0] {
        let mut p = SessionParams::for_model(&m);
        p.exit.max_steps = 2;
        p.seed = 11;
        p.sampling.temperature = temp;
        p.sampling.top_k = 0;
        p.sampling.top_p = 1.0;
        p.sampling.min_p = 0.0;
        p.ignore_eos = true;
        let mut s = Session::new(m.clone(), p).unwrap();
        let mut out = Vec::new();
        s.generate(&prompt, 64, &[], |t, _| {
            out.push(t);
            true
        })
        .unwrap();
        assert_eq!(out.len(), 64);
        assert!(
            out.iter().all(|&t| (t as usize) < n_tok),
            "temperature {temp}: emitted {out:?}"
        );
        tok.decode(&out, false).unwrap();
    }
    // Without the restriction these weights would emit padded ids at once: most of the
    // probability after the prompt lies on them (so the test above can fail).
    let mut p = SessionParams::for_model(&m);
    p.exit.max_steps = 2;
    let mut s = Session::new(m.clone(), p).unwrap();
    s.prefill(&prompt).unwrap();
    let probs = softmax(s.logits());
    let padded: f64 = probs[n_tok..].iter().sum();
    assert!(padded > 0.3, "only {padded} of the probability is padded");
}
