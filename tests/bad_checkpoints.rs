//! Broken Hugging Face checkpoints (issues #2 and #8): each class of damage, made from a copy of
//! the tiny-huginn fixture, is refused by `raven::convert::convert` with a message naming the
//! file, tensor or key involved, and leaves nothing in the output directory: no output file and
//! no temporary file. Also the layouts that must keep working: shards without an index, a single
//! `model.safetensors`, and f16/f32 inputs.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use raven::convert::{convert, NoProgress, OutType};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const SHARDS: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];
const INDEX: &str = "model.safetensors.index.json";

/// A scratch copy of the fixture checkpoint plus an empty output directory.
struct Scratch {
    _tmp: TempDir,
    /// The checkpoint copy, named like the fixture so `general.name` is the same.
    ckpt: PathBuf,
    /// Where outputs go; must stay empty after a failed conversion.
    out_dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let tmp = TempDir::new(tag);
        let ckpt = tmp.path().join("tiny-huginn");
        let out_dir = tmp.path().join("out");
        fs::create_dir(&ckpt).unwrap();
        fs::create_dir(&out_dir).unwrap();
        for e in fs::read_dir(tiny_dir()).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_str().unwrap();
            // The reference outputs are not part of a checkpoint.
            if !name.starts_with("reference.") {
                fs::copy(&p, ckpt.join(name)).unwrap();
            }
        }
        Scratch {
            _tmp: tmp,
            ckpt,
            out_dir,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.ckpt.join(name)
    }

    fn out(&self) -> PathBuf {
        self.out_dir.join("model.gguf")
    }

    fn edit_json(&self, name: &str, f: impl FnOnce(&mut Value)) {
        let p = self.file(name);
        let mut j: Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut j);
        fs::write(&p, serde_json::to_string_pretty(&j).unwrap()).unwrap();
    }

    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        self.edit_json("config.json", |j| f(j.as_object_mut().unwrap()));
    }

    /// Rewrites a shard through `f`, which may drop, add or change tensors.
    fn edit_shard(&self, shard: &str, f: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
        let p = self.file(shard);
        let mut tensors = read_shard(&p);
        f(&mut tensors);
        write_shard(&p, &tensors);
    }

    /// Converts to `out` (f32) and returns the result.
    fn convert_to(&self, out: &Path) -> raven::Result<raven::convert::ConvertReport> {
        convert(&self.ckpt, out, OutType::F32, &mut NoProgress)
    }

    /// Converts to the output directory, expects an error whose message (with its sources)
    /// contains every one of `needles`, and checks the output directory is still empty.
    #[track_caller]
    fn refused(&self, needles: &[&str]) -> String {
        let out = self.out();
        let msg = match self.convert_to(&out) {
            Ok(_) => panic!("conversion succeeded; expected an error naming {needles:?}"),
            Err(e) => chain(&e),
        };
        eprintln!("{}: {msg}", self.ckpt.parent().unwrap().display());
        for n in needles {
            assert!(msg.contains(n), "error {msg:?} does not name {n:?}");
        }
        assert_empty(&self.out_dir);
        msg
    }
}

/// The error and its sources, as `anyhow`'s `{:#}` would print them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

#[track_caller]
fn assert_empty(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{} holds {left:?}", dir.display());
}

/// A tensor of a shard, owned.
#[derive(Clone)]
struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_shard(p: &Path) -> BTreeMap<String, Tensor> {
    let bytes = fs::read(p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                Tensor {
                    dtype: v.dtype(),
                    shape: v.shape().to_vec(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

fn write_shard(p: &Path, tensors: &BTreeMap<String, Tensor>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    fs::write(p, bytes).unwrap();
}

fn bf16_to_f32(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(2)
        .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
        .collect()
}

/// Every bf16 tensor of every shard re-encoded as `dtype` (F32 or F16).
fn reencode_shards(s: &Scratch, dtype: Dtype) {
    for shard in SHARDS {
        s.edit_shard(shard, |ts| {
            for t in ts.values_mut() {
                assert_eq!(t.dtype, Dtype::BF16);
                let v = bf16_to_f32(&t.data);
                t.data = match dtype {
                    Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    Dtype::F16 => v
                        .iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                        .collect(),
                    _ => unreachable!(),
                };
                t.dtype = dtype;
            }
        });
    }
}

/// The fixture converted in place (no copy), the bytes to compare the scratch variants with.
fn fixture_bytes(ty: OutType) -> Vec<u8> {
    let s = Scratch::new("fixture-bytes");
    convert(&s.ckpt, &s.out(), ty, &mut NoProgress).unwrap();
    fs::read(s.out()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Shards and tensors.

#[test]
fn rejects_missing_shard() {
    let s = Scratch::new("missing-shard");
    fs::remove_file(s.file(SHARDS[1])).unwrap();
    s.refused(&[SHARDS[1], "missing"]);
}

#[test]
fn rejects_missing_shard_without_index() {
    // No index, but the other shards' names say there are three.
    let s = Scratch::new("missing-shard-noindex");
    fs::remove_file(s.file(INDEX)).unwrap();
    fs::remove_file(s.file(SHARDS[2])).unwrap();
    s.refused(&[SHARDS[2], "missing", "index"]);
}

#[test]
fn rejects_missing_unnumbered_shard() {
    // Shards whose names carry no count: the tensors the missing one held are named instead.
    let s = Scratch::new("missing-unnumbered");
    fs::remove_file(s.file(INDEX)).unwrap();
    fs::rename(s.file(SHARDS[0]), s.file("model-a.safetensors")).unwrap();
    fs::rename(s.file(SHARDS[1]), s.file("model-b.safetensors")).unwrap();
    fs::remove_file(s.file(SHARDS[2])).unwrap();
    s.refused(&["transformer.ln_f.weight", "missing"]);
}

#[test]
fn rejects_shard_names_disagreeing_on_the_count() {
    let s = Scratch::new("shard-count");
    fs::remove_file(s.file(INDEX)).unwrap();
    fs::rename(
        s.file(SHARDS[2]),
        s.file("model-00003-of-00004.safetensors"),
    )
    .unwrap();
    s.refused(&["model-00003-of-00004.safetensors", "disagree"]);
}

#[test]
fn rejects_shard_numbered_beyond_the_count() {
    let s = Scratch::new("shard-number");
    fs::remove_file(s.file(INDEX)).unwrap();
    fs::write(s.file("model-00004-of-00003.safetensors"), b"").unwrap();
    s.refused(&["model-00004-of-00003.safetensors", "number 4 of 3"]);
}

#[test]
fn rejects_missing_tensor() {
    let s = Scratch::new("missing-tensor");
    s.edit_shard(SHARDS[2], |ts| {
        ts.remove("transformer.ln_f.weight").unwrap();
    });
    s.refused(&["transformer.ln_f.weight", "missing"]);
}

#[test]
fn rejects_missing_qk_bias() {
    let s = Scratch::new("missing-bias");
    s.edit_shard(SHARDS[1], |ts| {
        ts.remove("transformer.core_block.2.attn.qk_bias").unwrap();
    });
    s.refused(&["transformer.core_block.2.attn.qk_bias"]);
}

#[test]
fn rejects_shape_mismatch() {
    let s = Scratch::new("shape");
    s.edit_shard(SHARDS[1], |ts| {
        let t = ts.get_mut("transformer.adapter.weight").unwrap();
        // [64, 128] → [64, 64]: half the columns.
        t.shape = vec![64, 64];
        t.data.truncate(64 * 64 * 2);
    });
    s.refused(&[
        "transformer.adapter.weight",
        SHARDS[1],
        "[64, 64]",
        "[64, 128]",
    ]);
}

#[test]
fn rejects_transposed_weight() {
    let s = Scratch::new("transposed");
    s.edit_shard(SHARDS[2], |ts| {
        let t = ts.get_mut("transformer.coda.1.mlp.proj.weight").unwrap();
        t.shape = vec![128, 64];
    });
    s.refused(&["transformer.coda.1.mlp.proj.weight", "[128, 64]"]);
}

#[test]
fn rejects_wrong_rank_norm() {
    let s = Scratch::new("rank");
    s.edit_shard(SHARDS[0], |ts| {
        let t = ts.get_mut("transformer.prelude.0.norm_2.weight").unwrap();
        t.shape = vec![1, 64];
    });
    s.refused(&["transformer.prelude.0.norm_2.weight", "[1, 64]"]);
}

#[test]
fn rejects_integer_dtype() {
    let s = Scratch::new("dtype-i32");
    s.edit_shard(SHARDS[1], |ts| {
        let t = ts
            .get_mut("transformer.core_block.1.norm_3.weight")
            .unwrap();
        t.dtype = Dtype::I32;
        t.data = (0..64i32).flat_map(|x| x.to_le_bytes()).collect();
    });
    s.refused(&["transformer.core_block.1.norm_3.weight", "I32", SHARDS[1]]);
}

#[test]
fn rejects_f64_dtype() {
    let s = Scratch::new("dtype-f64");
    s.edit_shard(SHARDS[0], |ts| {
        let t = ts.get_mut("transformer.wte.weight").unwrap();
        let v = bf16_to_f32(&t.data);
        t.dtype = Dtype::F64;
        t.data = v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect();
    });
    s.refused(&["transformer.wte.weight", "F64"]);
}

#[test]
fn rejects_tensor_in_two_shards() {
    let s = Scratch::new("duplicate");
    let dup = read_shard(&s.file(SHARDS[2]))["transformer.ln_f.weight"].clone();
    s.edit_shard(SHARDS[0], |ts| {
        ts.insert("transformer.ln_f.weight".into(), dup);
    });
    s.refused(&["transformer.ln_f.weight", "more than one shard"]);
}

#[test]
fn rejects_truncated_shard() {
    let s = Scratch::new("truncated");
    let p = s.file(SHARDS[2]);
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    s.refused(&[SHARDS[2], "safetensors"]);
}

#[test]
fn rejects_shard_truncated_inside_header() {
    let s = Scratch::new("truncated-header");
    let p = s.file(SHARDS[0]);
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..100]).unwrap();
    s.refused(&[SHARDS[0], "safetensors"]);
}

#[test]
fn rejects_empty_shard() {
    let s = Scratch::new("empty-shard");
    fs::write(s.file(SHARDS[1]), b"").unwrap();
    s.refused(&[SHARDS[1], "safetensors"]);
}

#[test]
fn rejects_garbage_safetensors_header() {
    let s = Scratch::new("garbage-header");
    let p = s.file(SHARDS[1]);
    let mut bytes = fs::read(&p).unwrap();
    // A plausible header length, then bytes that are not JSON.
    for b in &mut bytes[8..200] {
        *b = 0xA5;
    }
    fs::write(&p, &bytes).unwrap();
    s.refused(&[SHARDS[1], "safetensors"]);
}

#[test]
fn rejects_huge_safetensors_header_length() {
    let s = Scratch::new("huge-header");
    let p = s.file(SHARDS[0]);
    let mut bytes = fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(&p, &bytes).unwrap();
    s.refused(&[SHARDS[0], "safetensors"]);
}

#[test]
fn rejects_safetensors_offsets_out_of_order() {
    // Valid JSON header whose data offsets point past the end of the file.
    let s = Scratch::new("bad-offsets");
    let p = s.file(SHARDS[2]);
    let bytes = fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["transformer.ln_f.weight"]["data_offsets"] = serde_json::json!([0, 1u64 << 40]);
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() & 7 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    fs::write(&p, out).unwrap();
    s.refused(&[SHARDS[2], "safetensors"]);
}

#[test]
fn rejects_directory_without_shards() {
    let s = Scratch::new("no-shards");
    fs::remove_file(s.file(INDEX)).unwrap();
    for sh in SHARDS {
        fs::remove_file(s.file(sh)).unwrap();
    }
    s.refused(&["tiny-huginn", "no model*.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// model.safetensors.index.json.

#[test]
fn rejects_bad_json_in_index() {
    let s = Scratch::new("index-json");
    fs::write(s.file(INDEX), "{\"weight_map\": {\"a\": ").unwrap();
    s.refused(&[INDEX, "JSON"]);
}

#[test]
fn rejects_index_without_weight_map() {
    let s = Scratch::new("index-no-map");
    fs::write(s.file(INDEX), "{\"metadata\": {}}").unwrap();
    s.refused(&[INDEX, "weight_map"]);
}

#[test]
fn rejects_index_entry_not_a_string() {
    let s = Scratch::new("index-entry");
    s.edit_json(INDEX, |j| {
        j["weight_map"]["transformer.ln_f.weight"] = serde_json::json!(3);
    });
    s.refused(&[INDEX, "transformer.ln_f.weight"]);
}

#[test]
fn rejects_index_path_outside_directory() {
    for evil in [
        "../model-00001-of-00003.safetensors",
        "/etc/passwd",
        "sub/../../x.safetensors",
        "..",
    ] {
        let s = Scratch::new("index-escape");
        s.edit_json(INDEX, |j| {
            j["weight_map"]["transformer.ln_f.weight"] = Value::String(evil.into());
        });
        s.refused(&[INDEX, evil, "not a plain file name"]);
    }
}

#[test]
fn rejects_index_naming_a_missing_shard() {
    let s = Scratch::new("index-missing");
    s.edit_json(INDEX, |j| {
        j["weight_map"]["transformer.ln_f.weight"] =
            Value::String("model-00004-of-00003.safetensors".into());
    });
    s.refused(&["model-00004-of-00003.safetensors", "missing"]);
}

// ---------------------------------------------------------------------------------------------
// config.json.

#[test]
fn rejects_missing_config() {
    let s = Scratch::new("no-config");
    fs::remove_file(s.file("config.json")).unwrap();
    s.refused(&["config.json", "missing"]);
}

#[test]
fn rejects_bad_json_in_config() {
    let s = Scratch::new("config-json");
    fs::write(s.file("config.json"), "{\"n_embd\": 64,,}").unwrap();
    s.refused(&["config.json", "JSON"]);
}

#[test]
fn rejects_config_that_is_not_an_object() {
    let s = Scratch::new("config-array");
    fs::write(s.file("config.json"), "[1, 2, 3]").unwrap();
    s.refused(&["config.json"]);
}

#[test]
fn rejects_missing_config_key() {
    for key in [
        "n_embd",
        "n_heads",
        "intermediate_size",
        "n_layers_in_prelude",
        "n_layers_in_recurrent_block",
        "n_layers_in_coda",
        "mean_recurrence",
        "block_size",
    ] {
        let s = Scratch::new("config-key");
        s.edit_config(|c| {
            c.remove(key).unwrap();
        });
        s.refused(&["config.json", key]);
    }
}

#[test]
fn rejects_missing_vocab_size() {
    let s = Scratch::new("config-vocab");
    s.edit_config(|c| {
        c.remove("padded_vocab_size").unwrap();
        c.remove("vocab_size").unwrap();
    });
    s.refused(&["config.json", "vocab_size"]);
}

#[test]
fn rejects_config_value_of_wrong_type() {
    let cases: [(&str, Value); 6] = [
        ("n_heads", Value::String("four".into())),
        ("n_embd", serde_json::json!(64.5)),
        ("n_layers_in_coda", serde_json::json!(-2)),
        ("qk_bias", Value::String("yes".into())),
        ("rope_base", Value::String("fifty thousand".into())),
        ("tie_embeddings", serde_json::json!(1)),
    ];
    for (key, v) in cases {
        let s = Scratch::new("config-type");
        s.edit_config(|c| {
            c.insert(key.into(), v.clone());
        });
        s.refused(&["config.json", key]);
    }
}

#[test]
fn rejects_model_type_other_than_huginn() {
    let s = Scratch::new("model-type");
    s.edit_config(|c| {
        c.insert("model_type".into(), Value::String("llama".into()));
    });
    s.refused(&["config.json", "model_type", "llama", "huginn_raven"]);
}

#[test]
fn rejects_grouped_query_attention() {
    let s = Scratch::new("gqa");
    s.edit_config(|c| {
        c.insert("num_key_value_heads".into(), serde_json::json!(2));
    });
    s.refused(&["config.json", "num_key_value_heads"]);
}

#[test]
fn rejects_heads_not_dividing_width() {
    let s = Scratch::new("heads");
    s.edit_config(|c| {
        c.insert("n_heads".into(), serde_json::json!(5));
        c.insert("num_key_value_heads".into(), serde_json::json!(5));
    });
    s.refused(&["config.json", "n_embd = 64", "n_heads = 5"]);
}

#[test]
fn rejects_zero_heads() {
    let s = Scratch::new("zero-heads");
    s.edit_config(|c| {
        c.insert("n_heads".into(), serde_json::json!(0));
        c.remove("num_key_value_heads");
    });
    s.refused(&["config.json", "n_heads is 0"]);
}

#[test]
fn rejects_huge_config_claims() {
    // Each is refused from config.json alone, before any tensor is read or anything sized by it
    // is allocated.
    for (key, v) in [
        ("n_embd", u64::MAX),
        ("padded_vocab_size", 1 << 40),
        ("block_size", 1 << 50),
        ("mean_recurrence", 1 << 33),
        ("intermediate_size", u64::MAX / 2),
        ("n_layers_in_recurrent_block", 1 << 20),
    ] {
        let s = Scratch::new("config-huge");
        s.edit_config(|c| {
            c.insert(key.into(), serde_json::json!(v));
        });
        s.refused(&["config.json", key, "larger than Raven accepts"]);
    }
}

#[test]
fn rejects_config_disagreeing_with_tensors() {
    // A consistent config for another model: every shape is wrong, and the first is named.
    let s = Scratch::new("config-other");
    s.edit_config(|c| {
        c.insert("n_embd".into(), serde_json::json!(128));
    });
    s.refused(&["shape", "config.json implies"]);
}

#[test]
fn rejects_more_layers_than_the_shards_hold() {
    let s = Scratch::new("config-layers");
    s.edit_config(|c| {
        c.insert("n_layers_in_coda".into(), serde_json::json!(3));
    });
    s.refused(&["transformer.coda.2", "missing"]);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer and the other JSON files.

#[test]
fn rejects_missing_tokenizer() {
    let s = Scratch::new("no-tokenizer");
    fs::remove_file(s.file("tokenizer.json")).unwrap();
    s.refused(&["tokenizer.json", "missing"]);
}

#[test]
fn rejects_broken_tokenizer() {
    let s = Scratch::new("tokenizer-json");
    fs::write(
        s.file("tokenizer.json"),
        "{\"model\": {\"type\": \"BPE\", \"vocab\": ",
    )
    .unwrap();
    s.refused(&["tokenizer.json"]);
}

#[test]
fn rejects_tokenizer_with_unknown_model() {
    let s = Scratch::new("tokenizer-model");
    s.edit_json("tokenizer.json", |j| {
        j["model"]["type"] = Value::String("Nonsense".into());
    });
    s.refused(&["tokenizer.json"]);
}

#[test]
fn rejects_vocab_larger_than_embedding() {
    // A consistent 512-row model whose tokenizer still has ~1020 tokens.
    let s = Scratch::new("vocab");
    s.edit_config(|c| {
        c.insert("padded_vocab_size".into(), serde_json::json!(512));
        c.insert("vocab_size".into(), serde_json::json!(512));
    });
    s.edit_shard(SHARDS[0], |ts| {
        let t = ts.get_mut("transformer.wte.weight").unwrap();
        t.shape = vec![512, 64];
        t.data.truncate(512 * 64 * 2);
    });
    s.refused(&["tokenizer.json", "512"]);
}

#[test]
fn rejects_special_token_outside_vocabulary() {
    let s = Scratch::new("bos");
    s.edit_json("generation_config.json", |j| {
        j["bos_token_id"] = serde_json::json!(4096);
    });
    s.refused(&["generation_config.json", "bos", "4096"]);
}

#[test]
fn rejects_bad_json_in_generation_config() {
    let s = Scratch::new("gen-json");
    fs::write(s.file("generation_config.json"), "{").unwrap();
    s.refused(&["generation_config.json", "JSON"]);
}

#[test]
fn rejects_bad_json_in_tokenizer_config() {
    let s = Scratch::new("tcfg-json");
    fs::write(s.file("tokenizer_config.json"), "chat_template: x").unwrap();
    s.refused(&["tokenizer_config.json", "JSON"]);
}

// ---------------------------------------------------------------------------------------------
// Input and output paths.

#[test]
fn rejects_missing_checkpoint_directory() {
    let s = Scratch::new("no-dir");
    let gone = s.ckpt.join("nope");
    let e = convert(&gone, &s.out(), OutType::F32, &mut NoProgress).unwrap_err();
    assert!(chain(&e).contains("nope"), "{e}");
    assert_empty(&s.out_dir);
}

#[test]
fn rejects_checkpoint_path_that_is_a_file() {
    let s = Scratch::new("dir-file");
    let f = s.file("config.json");
    let e = convert(&f, &s.out(), OutType::F32, &mut NoProgress).unwrap_err();
    assert!(chain(&e).contains("config.json"), "{e}");
    assert_empty(&s.out_dir);
}

#[test]
fn rejects_missing_output_directory() {
    let s = Scratch::new("out-missing");
    let out = s.out_dir.join("no/such/dir/model.gguf");
    let msg = chain(&s.convert_to(&out).unwrap_err());
    assert!(
        msg.contains("no/such/dir") && msg.contains("does not exist"),
        "{msg}"
    );
    assert_empty(&s.out_dir);
}

#[test]
fn rejects_output_path_that_is_a_directory() {
    let s = Scratch::new("out-dir");
    let out = s.out_dir.join("model.gguf");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep.txt"), "mine").unwrap();
    let msg = chain(&s.convert_to(&out).unwrap_err());
    assert!(msg.contains("model.gguf"), "{msg}");
    // The directory and its contents are untouched, and no temporary file is left next to it.
    let left: Vec<_> = fs::read_dir(&s.out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["model.gguf"]);
    assert_eq!(fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
}

#[test]
fn rejects_output_path_naming_no_file() {
    let s = Scratch::new("out-dotdot");
    let out = s.out_dir.join("..");
    assert!(s.convert_to(&out).is_err());
    assert_empty(&s.out_dir);
}

#[test]
fn failed_conversion_keeps_an_existing_output() {
    // An earlier good file at the output path survives a failed conversion unchanged.
    let s = Scratch::new("keep-old");
    fs::write(s.out(), b"previous model").unwrap();
    fs::remove_file(s.file("tokenizer.json")).unwrap();
    assert!(s.convert_to(&s.out()).is_err());
    assert_eq!(fs::read(s.out()).unwrap(), b"previous model");
    assert_eq!(fs::read_dir(&s.out_dir).unwrap().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Layouts and input types that must convert.

#[test]
fn converts_shards_without_index_identically() {
    let want = fixture_bytes(OutType::F32);
    let s = Scratch::new("noindex");
    fs::remove_file(s.file(INDEX)).unwrap();
    s.convert_to(&s.out()).unwrap();
    assert!(fs::read(s.out()).unwrap() == want, "GGUF bytes differ");
}

#[test]
fn converts_renamed_shards_without_index_identically() {
    // Four shards named model-0000N-of-00004: the files are found by their names alone.
    let want = fixture_bytes(OutType::F32);
    let s = Scratch::new("renamed");
    fs::remove_file(s.file(INDEX)).unwrap();
    let mut all = BTreeMap::new();
    for sh in SHARDS {
        all.extend(read_shard(&s.file(sh)));
        fs::remove_file(s.file(sh)).unwrap();
    }
    let names: Vec<String> = all.keys().cloned().collect();
    for (i, chunk) in names.chunks(names.len().div_ceil(4)).enumerate() {
        let part: BTreeMap<_, _> = chunk.iter().map(|n| (n.clone(), all[n].clone())).collect();
        write_shard(
            &s.file(&format!("model-{:05}-of-00004.safetensors", i + 1)),
            &part,
        );
    }
    s.convert_to(&s.out()).unwrap();
    assert!(fs::read(s.out()).unwrap() == want, "GGUF bytes differ");
}

#[test]
fn converts_single_model_safetensors_identically() {
    let want = fixture_bytes(OutType::F32);
    let s = Scratch::new("single");
    fs::remove_file(s.file(INDEX)).unwrap();
    let mut all = BTreeMap::new();
    for sh in SHARDS {
        all.extend(read_shard(&s.file(sh)));
        fs::remove_file(s.file(sh)).unwrap();
    }
    write_shard(&s.file("model.safetensors"), &all);
    s.convert_to(&s.out()).unwrap();
    assert!(fs::read(s.out()).unwrap() == want, "GGUF bytes differ");
}

#[test]
fn converts_f32_inputs_identically() {
    // bf16 → f32 is exact, so the f32 and bf16 outputs are byte for byte those of the bf16 input.
    let want_f32 = fixture_bytes(OutType::F32);
    let want_bf16 = fixture_bytes(OutType::BF16);
    let s = Scratch::new("in-f32");
    reencode_shards(&s, Dtype::F32);
    s.convert_to(&s.out()).unwrap();
    assert!(
        fs::read(s.out()).unwrap() == want_f32,
        "f32 GGUF bytes differ"
    );
    let out = s.out_dir.join("bf16.gguf");
    convert(&s.ckpt, &out, OutType::BF16, &mut NoProgress).unwrap();
    assert!(
        fs::read(&out).unwrap() == want_bf16,
        "bf16 GGUF bytes differ"
    );
}

#[test]
fn converts_f16_inputs_exactly() {
    // An f16 checkpoint converted to f32 holds exactly the f16 values.
    let s = Scratch::new("in-f16");
    reencode_shards(&s, Dtype::F16);
    s.convert_to(&s.out()).unwrap();
    let g = raven_gguf::Gguf::open(&s.out()).unwrap();
    let src = read_shard(&s.file(SHARDS[0]));
    for (hf, gguf) in [
        ("transformer.wte.weight", "token_embd.weight"),
        (
            "transformer.prelude.1.norm_2.weight",
            "blk.1.attn_post_norm.weight",
        ),
        (
            "transformer.prelude.0.attn.proj.weight",
            "blk.0.attn_output.weight",
        ),
    ] {
        let want: Vec<f32> = src[hf]
            .data
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect();
        let t = g.tensor(gguf).unwrap();
        let got: Vec<f32> = g
            .tensor_data(t)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(got == want, "{gguf} differs from {hf}");
    }
    // And the model runs.
    raven::Model::load(&s.out()).unwrap();
}
