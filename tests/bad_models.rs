//! Model-level consistency (issue #8): well-formed GGUF files whose metadata and tensors do not
//! make a usable Huginn model. Each is the tiny fixture converted to f32 and rewritten with
//! `raven_gguf::GgufWriter` with one thing wrong; `raven::Model::load` (and `load_no_mmap`) must
//! refuse it with a message naming the file and the key or tensor involved, without panicking
//! and before allocating anything sized by the bad claim. Then the run-time options of
//! `raven::run::logits`: bad token ids, prompts longer than the context, bad step counts.

mod common;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::OnceLock;

use common::*;
use raven::exit::{Criterion, ExitPolicy};
use raven::kv::CacheStrategy;
use raven::run::{logits, LogitsOptions, Threads};
use raven::Model;
use raven_gguf::{Array, GgmlType, Gguf, GgufWriter, Value};

/// A GGUF file taken apart: metadata and tensors with their bytes.
#[derive(Clone)]
struct Parts {
    kv: Vec<(String, Value)>,
    tensors: Vec<T>,
}

#[derive(Clone)]
struct T {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

impl Parts {
    /// The tiny fixture converted to f32.
    fn good() -> Parts {
        static P: OnceLock<Parts> = OnceLock::new();
        P.get_or_init(|| {
            let g = Gguf::open(&tiny_gguf("f32")).unwrap();
            Parts {
                kv: g.metadata().to_vec(),
                tensors: g
                    .tensors()
                    .iter()
                    .map(|t| T {
                        name: t.name.clone(),
                        dims: t.dims.clone(),
                        ty: t.ty,
                        data: g.tensor_data(t).to_vec(),
                    })
                    .collect(),
            }
        })
        .clone()
    }

    fn set(&mut self, key: &str, v: Value) -> &mut Self {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some((_, old)) => *old = v,
            None => self.kv.push((key.to_string(), v)),
        }
        self
    }

    fn remove(&mut self, key: &str) -> &mut Self {
        let n = self.kv.len();
        self.kv.retain(|(k, _)| k != key);
        assert_eq!(self.kv.len() + 1, n, "no key {key}");
        self
    }

    fn tensor(&mut self, name: &str) -> &mut T {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn remove_tensor(&mut self, name: &str) -> &mut Self {
        let n = self.tensors.len();
        self.tensors.retain(|t| t.name != name);
        assert_eq!(self.tensors.len() + 1, n, "no tensor {name}");
        self
    }

    /// Gives tensor `name` new dims and type, with data of the right size (zeros past the old).
    fn reshape(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> &mut Self {
        let t = self.tensor(name);
        let n = dims.iter().product::<u64>();
        let bytes = ty.row_bytes(dims[0]).unwrap() * (n / dims[0]);
        t.dims = dims.to_vec();
        t.ty = ty;
        t.data.resize(bytes as usize, 0);
        self
    }

    fn write(&self, path: &Path) {
        let mut w = GgufWriter::new(BufWriter::new(File::create(path).unwrap()));
        for (k, v) in &self.kv {
            w.add_kv(k, v.clone());
        }
        for t in &self.tensors {
            w.add_tensor(&t.name, &t.dims, t.ty).unwrap();
        }
        w.write_header().unwrap();
        for t in &self.tensors {
            w.write_tensor_data(&t.name, &t.data).unwrap();
        }
        w.finish().unwrap().flush().unwrap();
    }
}

#[track_caller]
fn refused(name: &str, p: &Parts, needles: &[&str]) -> String {
    let dir = TempDir::new("bad-model");
    let path = dir.path().join(format!("{name}.gguf"));
    p.write(&path);
    refused_file(&path, needles, true)
}

type Loader = fn(&Path) -> raven::Result<Model>;

#[track_caller]
fn refused_file(path: &Path, needles: &[&str], no_mmap_too: bool) -> String {
    let mut loaders: Vec<(&str, Loader)> = vec![("load", Model::load)];
    if no_mmap_too {
        loaders.push(("load_no_mmap", Model::load_no_mmap));
    }
    let mut first = String::new();
    for (how, load) in loaders {
        let msg = match load(path) {
            Ok(_) => panic!("{how} accepted {}", path.display()),
            Err(e) => e.to_string(),
        };
        eprintln!("{}: {msg}", path.file_name().unwrap().to_string_lossy());
        let file = path.file_name().unwrap().to_str().unwrap();
        assert!(msg.contains(file), "{how}: {msg:?} does not name the file");
        for n in needles {
            assert!(msg.contains(n), "{how}: {msg:?} does not name {n:?}");
        }
        first = msg;
    }
    first
}

const A: &str = "huginn";

fn key(k: &str) -> String {
    format!("{A}.{k}")
}

#[test]
fn the_rewritten_fixture_loads() {
    // The rewriting itself loses nothing: without edits the file loads and matches the original.
    let dir = TempDir::new("bad-model");
    let path = dir.path().join("unchanged.gguf");
    Parts::good().write(&path);
    let m = Model::load(&path).unwrap();
    let orig = Model::load(&tiny_gguf("f32")).unwrap();
    assert_eq!(m.config, orig.config);
    assert_eq!(m.vocab.eos, orig.vocab.eos);
}

// ---------------------------------------------------------------------------------------------
// Architecture and required metadata.

#[test]
fn rejects_foreign_architecture() {
    let mut p = Parts::good();
    p.set("general.architecture", Value::Str("llama".into()));
    refused(
        "arch-llama",
        &p,
        &["general.architecture", "llama", "huginn"],
    );
}

#[test]
fn rejects_missing_architecture() {
    let mut p = Parts::good();
    p.remove("general.architecture");
    refused("arch-missing", &p, &["general.architecture"]);
}

#[test]
fn rejects_missing_required_metadata() {
    for k in [
        "context_length",
        "embedding_length",
        "feed_forward_length",
        "attention.head_count",
        "attention.layer_norm_rms_epsilon",
        "rope.freq_base",
        "block_count",
        "prelude_block_count",
        "core_block_count",
        "coda_block_count",
        "mean_recurrence",
    ] {
        let mut p = Parts::good();
        p.remove(&key(k));
        refused(&format!("missing-{k}"), &p, &[&key(k)]);
    }
}

#[test]
fn rejects_metadata_of_wrong_type() {
    let cases = [
        ("embedding_length", Value::Str("64".into())),
        ("context_length", Value::F32(256.0)),
        ("core_block_count", Value::I32(-4)),
        ("rope.freq_base", Value::Str("50000".into())),
        ("attention.qk_bias", Value::U32(1)),
        ("embedding_scale", Value::Array(Array::F32(vec![8.0]))),
    ];
    for (k, v) in cases {
        let mut p = Parts::good();
        p.set(&key(k), v);
        refused(&format!("type-{k}"), &p, &[&key(k)]);
    }
}

// ---------------------------------------------------------------------------------------------
// Counts that disagree with each other.

#[test]
fn rejects_block_count_not_prelude_core_coda() {
    let mut p = Parts::good();
    p.set(&key("block_count"), Value::U32(9));
    refused("block-count", &p, &[&key("block_count"), "9", "8"]);
}

#[test]
fn rejects_head_count_not_dividing_width() {
    let mut p = Parts::good();
    p.set(&key("attention.head_count"), Value::U32(5))
        .set(&key("attention.head_count_kv"), Value::U32(5));
    refused(
        "heads-5",
        &p,
        &[&key("embedding_length"), &key("attention.head_count"), "5"],
    );
}

#[test]
fn rejects_odd_head_dimension() {
    // 64 heads of width 1: RoPE needs an even head dimension.
    let mut p = Parts::good();
    p.set(&key("attention.head_count"), Value::U32(64))
        .set(&key("attention.head_count_kv"), Value::U32(64));
    refused("heads-64", &p, &[&key("attention.head_count"), "64"]);
}

#[test]
fn rejects_zero_head_count() {
    let mut p = Parts::good();
    p.set(&key("attention.head_count"), Value::U32(0))
        .remove(&key("attention.head_count_kv"));
    refused("heads-0", &p, &[&key("attention.head_count"), "is 0"]);
}

#[test]
fn rejects_grouped_query_attention() {
    let mut p = Parts::good();
    p.set(&key("attention.head_count_kv"), Value::U32(2));
    refused("heads-kv", &p, &[&key("attention.head_count_kv"), "2"]);
}

#[test]
fn rejects_zero_core_blocks() {
    let mut p = Parts::good();
    p.set(&key("core_block_count"), Value::U32(0))
        .set(&key("block_count"), Value::U32(4));
    refused("core-0", &p, &[&key("core_block_count"), "is 0"]);
}

#[test]
fn rejects_more_blocks_than_tensors() {
    let mut p = Parts::good();
    p.set(&key("coda_block_count"), Value::U32(3))
        .set(&key("block_count"), Value::U32(9));
    refused("coda-3", &p, &["blk.8.", "missing"]);
}

// ---------------------------------------------------------------------------------------------
// Tensors that disagree with the metadata.

#[test]
fn rejects_missing_tensor() {
    for name in [
        "token_embd.weight",
        "output_norm.weight",
        "adapter.weight",
        "blk.0.attn_q.bias",
        "blk.3.ffn_up.weight",
        "blk.7.ffn_post_norm.weight",
    ] {
        let mut p = Parts::good();
        p.remove_tensor(name);
        refused(&format!("missing-{name}"), &p, &[name, "missing"]);
    }
}

#[test]
fn rejects_weight_shape_disagreeing_with_metadata() {
    let mut p = Parts::good();
    p.reshape("blk.1.attn_qkv.weight", &[64, 128], GgmlType::F32);
    refused(
        "shape-qkv",
        &p,
        &["blk.1.attn_qkv.weight", "[64, 128]", "[64, 192]"],
    );
}

#[test]
fn rejects_transposed_weight() {
    let mut p = Parts::good();
    p.reshape("blk.4.ffn_down.weight", &[64, 128], GgmlType::F32);
    refused("shape-down", &p, &["blk.4.ffn_down.weight", "[128, 64]"]);
}

#[test]
fn rejects_weight_with_extra_dimension() {
    let mut p = Parts::good();
    p.reshape("blk.2.attn_output.weight", &[64, 64, 1], GgmlType::F32);
    refused("shape-3d", &p, &["blk.2.attn_output.weight"]);
}

#[test]
fn rejects_width_disagreeing_with_tensors() {
    let mut p = Parts::good();
    p.set(&key("embedding_length"), Value::U32(128));
    refused("width-128", &p, &["token_embd.weight", "[128, 1024]"]);
}

#[test]
fn rejects_ffn_length_disagreeing_with_tensors() {
    let mut p = Parts::good();
    p.set(&key("feed_forward_length"), Value::U32(256));
    refused("ffn-256", &p, &["blk.0.ffn_gate.weight", "[64, 256]"]);
}

#[test]
fn rejects_untied_head_of_wrong_shape() {
    let mut p = Parts::good();
    let mut head = p.tensor("token_embd.weight").clone();
    head.name = "output.weight".into();
    head.dims = vec![64, 512];
    head.data.truncate(64 * 512 * 4);
    p.tensors.push(head);
    refused("head-512", &p, &["output.weight", "[64, 512]"]);
}

#[test]
fn rejects_norm_of_wrong_length() {
    let mut p = Parts::good();
    p.reshape("blk.2.ffn_norm.weight", &[32], GgmlType::F32);
    refused("norm-32", &p, &["blk.2.ffn_norm.weight", "[32]", "[64]"]);
}

#[test]
fn rejects_norm_stored_as_matrix() {
    let mut p = Parts::good();
    p.reshape("output_norm.weight", &[64, 1], GgmlType::F32);
    refused("norm-2d", &p, &["output_norm.weight", "[64, 1]"]);
}

#[test]
fn rejects_bias_of_wrong_length() {
    let mut p = Parts::good();
    p.reshape("blk.5.attn_k.bias", &[16], GgmlType::F32);
    refused("bias-16", &p, &["blk.5.attn_k.bias", "[16]"]);
}

#[test]
fn rejects_integer_weight() {
    let mut p = Parts::good();
    p.reshape("token_embd.weight", &[64, 1024], GgmlType::I32);
    refused("int-embd", &p, &["token_embd.weight", "i32"]);
}

#[test]
fn rejects_unsupported_weight_types() {
    for ty in [GgmlType::F64, GgmlType::I8, GgmlType::I16, GgmlType::I64] {
        let mut p = Parts::good();
        p.reshape("blk.6.ffn_gate.weight", &[64, 128], ty);
        refused(
            &format!("ty-{ty}"),
            &p,
            &["blk.6.ffn_gate.weight", &ty.to_string()],
        );
    }
}

#[test]
fn rejects_integer_norm() {
    let mut p = Parts::good();
    p.reshape("blk.0.attn_norm.weight", &[64], GgmlType::I32);
    refused("int-norm", &p, &["blk.0.attn_norm.weight"]);
}

// ---------------------------------------------------------------------------------------------
// Claims too large to honour: refused from the metadata, before anything is allocated.

#[test]
fn rejects_huge_context_length() {
    let mut p = Parts::good();
    p.set(&key("context_length"), Value::U64(1 << 40));
    refused("ctx-huge", &p, &[&key("context_length"), "1099511627776"]);
}

#[test]
fn rejects_context_length_beyond_usize() {
    let mut p = Parts::good();
    p.set(&key("context_length"), Value::U64(u64::MAX));
    refused("ctx-max", &p, &[&key("context_length")]);
}

#[test]
fn rejects_huge_block_counts() {
    for k in [
        "prelude_block_count",
        "core_block_count",
        "coda_block_count",
        "mean_recurrence",
    ] {
        let mut p = Parts::good();
        p.set(&key(k), Value::U32(1 << 30));
        // Keep block_count the sum so that the size limit is what fires.
        let old = match k {
            "prelude_block_count" | "coda_block_count" => 2,
            "core_block_count" => 4,
            _ => 0,
        };
        if old != 0 {
            p.set(&key("block_count"), Value::U64((1 << 30) + 8 - old));
        }
        refused(
            &format!("huge-{k}"),
            &p,
            &[&key(k), "larger than Raven accepts"],
        );
    }
}

#[test]
fn rejects_huge_vocabulary_claim() {
    // A 1 GiB embedding of 4 Mi + 1 rows in a sparse file: the vocabulary limit fires from the
    // tensor table alone; no page of the data is touched. (Only mapped: reading it in would
    // itself be the allocation under test.)
    let rows: u64 = (1 << 22) + 1;
    let mut p = Parts::good();
    let dir = TempDir::new("bad-model");
    let path = dir.path().join("vocab-huge.gguf");
    {
        let mut w = GgufWriter::new(BufWriter::new(File::create(&path).unwrap()));
        for (k, v) in &p.kv {
            w.add_kv(k, v.clone());
        }
        p.tensor("token_embd.weight").dims = vec![64, rows];
        for t in &p.tensors {
            w.add_tensor(&t.name, &t.dims, t.ty).unwrap();
        }
        w.write_header().unwrap();
        let end = w
            .tensors()
            .iter()
            .map(|t| t.offset + t.n_bytes)
            .max()
            .unwrap();
        drop(w);
        let f = File::options().write(true).open(&path).unwrap();
        let header = f.metadata().unwrap().len();
        f.set_len(header + end + 64).unwrap();
    }
    refused_file(
        &path,
        &["vocabulary", "4194305", "larger than Raven accepts"],
        false,
    );
}

#[test]
fn rejects_truncated_model_file() {
    let dir = TempDir::new("bad-model");
    let path = dir.path().join("truncated.gguf");
    Parts::good().write(&path);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    refused_file(&path, &[], true);
}

// ---------------------------------------------------------------------------------------------
// Numbers that are not numbers.

#[test]
fn rejects_non_finite_hyperparameters() {
    let cases = [
        ("rope.freq_base", Value::F32(f32::NAN)),
        ("rope.freq_base", Value::F32(-1.0)),
        (
            "attention.layer_norm_rms_epsilon",
            Value::F32(f32::INFINITY),
        ),
        ("attention.layer_norm_rms_epsilon", Value::F32(-1e-6)),
        ("embedding_scale", Value::F32(f32::NAN)),
        ("state_init_std", Value::F32(f32::NEG_INFINITY)),
    ];
    for (i, (k, v)) in cases.into_iter().enumerate() {
        let mut p = Parts::good();
        p.set(&key(k), v);
        refused(&format!("nan-{i}"), &p, &[&key(k)]);
    }
}

// ---------------------------------------------------------------------------------------------
// Token ids outside the vocabulary.

#[test]
fn rejects_special_tokens_out_of_range() {
    for (i, (k, v)) in [
        ("tokenizer.ggml.bos_token_id", Value::U32(1024)),
        ("tokenizer.ggml.eos_token_id", Value::U32(u32::MAX)),
        ("tokenizer.ggml.padding_token_id", Value::U64(1 << 40)),
        ("tokenizer.ggml.bos_token_id", Value::I32(-1)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = Parts::good();
        p.set(k, v);
        refused(&format!("tok-{i}"), &p, &[k]);
    }
}

#[test]
fn rejects_extra_eos_out_of_range() {
    let mut p = Parts::good();
    p.set(
        &key("eos_token_ids"),
        Value::Array(Array::U32(vec![1015, 5000])),
    );
    refused("eos-list", &p, &[&key("eos_token_ids"), "5000"]);
}

#[test]
fn rejects_extra_eos_of_wrong_type() {
    let mut p = Parts::good();
    p.set(
        &key("eos_token_ids"),
        Value::Array(Array::Str(vec!["<|end_text|>".into()])),
    );
    refused("eos-str", &p, &[&key("eos_token_ids")]);
}

#[test]
fn accepts_extra_eos_as_other_integer_arrays() {
    // gguf-py and others write integer lists as i32 or u64 arrays.
    for (i, a) in [
        Array::I32(vec![1015, 1018]),
        Array::U64(vec![1015, 1018]),
        Array::I64(vec![1018]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = Parts::good();
        p.set(&key("eos_token_ids"), Value::Array(a));
        let dir = TempDir::new("bad-model");
        let path = dir.path().join(format!("eos-int-{i}.gguf"));
        p.write(&path);
        let m = Model::load(&path).unwrap();
        assert!(
            m.vocab.eos.contains(&1015) && m.vocab.eos.contains(&1018),
            "{:?}",
            m.vocab.eos
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Run-time options of `raven logits`.

fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(&tiny_gguf("f32")).unwrap())
}

fn threads() -> &'static Threads {
    static T: OnceLock<Threads> = OnceLock::new();
    T.get_or_init(|| Threads::new(2).unwrap())
}

fn opts() -> LogitsOptions {
    LogitsOptions {
        steps: 2,
        init_scale: 0.0,
        seed: 0,
        exit: None,
        cache: CacheStrategy::Full,
        cache_type: raven::kv::KvType::F32,
        decode_from: None,
    }
}

#[track_caller]
fn logits_refused(tokens: &[u32], o: &LogitsOptions, needles: &[&str]) {
    let msg = match logits(model(), tokens, o, threads()) {
        Ok(_) => panic!("logits accepted tokens {tokens:?}"),
        // `raven logits`' contract names its flags.
        Err(e) => e.message_for(raven::Param::cli),
    };
    eprintln!("logits: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} does not name {n:?}");
    }
}

#[test]
fn logits_rejects_token_out_of_range() {
    logits_refused(&[1, 2, 1024], &opts(), &["token", "1024", "vocabulary"]);
    logits_refused(&[u32::MAX], &opts(), &["token", &u32::MAX.to_string()]);
}

#[test]
fn logits_rejects_no_tokens() {
    logits_refused(&[], &opts(), &["--tokens"]);
}

#[test]
fn logits_rejects_prompt_longer_than_context() {
    let ctx = model().config.context;
    let toks: Vec<u32> = (0..ctx as u32 + 1).map(|i| i % 1000).collect();
    logits_refused(
        &toks,
        &opts(),
        &["context", &(ctx + 1).to_string(), &ctx.to_string()],
    );
    // Exactly the context fits.
    logits(model(), &toks[..ctx], &opts(), threads()).unwrap();
}

#[test]
fn logits_rejects_zero_steps() {
    logits_refused(
        &[1, 2, 3],
        &LogitsOptions { steps: 0, ..opts() },
        &["--steps"],
    );
}

#[test]
fn logits_rejects_decode_from_out_of_range() {
    for n in [0, 4, usize::MAX] {
        let o = LogitsOptions {
            decode_from: Some(n),
            ..opts()
        };
        logits_refused(&[1, 2, 3], &o, &["--decode-from", &n.to_string()]);
    }
    // The ends of the range work.
    for n in [1, 3] {
        let o = LogitsOptions {
            decode_from: Some(n),
            ..opts()
        };
        logits(model(), &[1, 2, 3], &o, threads()).unwrap();
    }
}

#[test]
fn logits_rejects_bad_exit_policies() {
    let policy = |min_steps, max_steps, check_every| ExitPolicy {
        criterion: Criterion::Kl(1e-3),
        min_steps,
        max_steps,
        check_every,
    };
    for (p, flag) in [
        (policy(1, 0, 1), "--max-steps"),
        (policy(1, 4, 0), "--check-every"),
        (policy(5, 4, 1), "--min-steps"),
    ] {
        let o = LogitsOptions {
            exit: Some(p),
            ..opts()
        };
        logits_refused(&[1, 2], &o, &[flag]);
    }
}

#[test]
fn logits_rejects_cache_strategy_for_another_model() {
    let o = LogitsOptions {
        cache: CacheStrategy::Latest(3),
        ..opts()
    };
    logits_refused(&[1, 2], &o, &["--cache", "latest-m3"]);
}
