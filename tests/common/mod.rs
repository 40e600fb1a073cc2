//! Shared helpers of the end-to-end tests: fixture paths, temporary directories, converted
//! models and the official reference outputs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use raven::convert::{convert, NoProgress, OutType};
use serde_json::Value;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn tiny_dir() -> PathBuf {
    fixtures().join("tiny-huginn")
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("raven-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fixture converted to `ty`, once per test binary.
pub fn tiny_gguf(ty: &str) -> PathBuf {
    static DIR: OnceLock<TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| TempDir::new("models"));
    let out = dir.path().join(format!("tiny-{ty}.gguf"));
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    if !out.exists() {
        convert(
            &tiny_dir(),
            &out,
            OutType::parse(ty).unwrap(),
            &mut NoProgress,
        )
        .unwrap();
    }
    out
}

/// reference.json and reference.safetensors of the fixture.
pub struct Reference {
    pub json: Value,
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

pub fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| Reference::load(&tiny_dir()))
}

impl Reference {
    /// reference.json and reference.safetensors of a fixture directory.
    pub fn load(dir: &Path) -> Reference {
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let data = v
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (name, (v.shape().to_vec(), data))
            })
            .collect();
        Reference { json, tensors }
    }
}

/// A fixture checkpoint converted to `ty` into `dir` (once per name and type).
pub fn converted(fixture: &Path, ty: &str, dir: &TempDir) -> PathBuf {
    let name = fixture.to_string_lossy().replace(['/', '\\'], "_");
    let out = dir.path().join(format!("{name}-{ty}.gguf"));
    if !out.exists() {
        convert(fixture, &out, OutType::parse(ty).unwrap(), &mut NoProgress).unwrap();
    }
    out
}

impl Reference {
    pub fn cases(&self) -> impl Iterator<Item = &Value> {
        self.json["cases"].as_array().unwrap().iter()
    }
    pub fn prompt(&self, i: usize) -> Vec<u32> {
        self.json["prompt_token_ids"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    }
    pub fn tensor(&self, name: &str) -> &[f32] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no {name}"))
            .1
    }
}

/// A JSON value that may be a list or a string holding a list (the fixture stores long lists
/// as strings).
pub fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::String(s) => serde_json::from_str::<Vec<Value>>(s).unwrap(),
        _ => panic!("not a list: {v}"),
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A tiny model whose embedding has 1024 rows and whose tokenizer (the demo's) has 294 ids:
/// 730 ids have logits but no text.
pub fn padded_model(dir: &TempDir) -> (std::path::PathBuf, usize) {
    let mut c = raven::synth::huginn_0125_scaled(55).unwrap();
    (c.n_prelude, c.n_core, c.n_coda, c.n_vocab, c.context) = (1, 1, 1, 1024, 256);
    let tok_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/hf/tokenizer.json");
    let tok = std::fs::read_to_string(tok_path).unwrap();
    let n_tok = raven_text::Tokenizer::from_json(&tok).unwrap().vocab_size();
    let ck = dir.path().join("padded-hf");
    let o = raven::synth::HfOptions {
        seed: 3,
        tokenizer_json: Some(tok),
        ..Default::default()
    };
    raven::synth::write_hf(&c, &ck, &o).unwrap();
    let out = dir.path().join("padded.gguf");
    convert(&ck, &out, OutType::Q8_0, &mut NoProgress).unwrap();
    (out, n_tok)
}

/// KL(p ‖ q) summed over the rows of two logit matrices, divided by the rows.
pub fn mean_kl(p: &[f32], q: &[f32], v: usize) -> f64 {
    let mut total = 0.0f64;
    for (a, b) in p.chunks_exact(v).zip(q.chunks_exact(v)) {
        let lse = |x: &[f32]| {
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            m + x.iter().map(|&y| (y as f64 - m).exp()).sum::<f64>().ln()
        };
        let (la, lb) = (lse(a), lse(b));
        total += a
            .iter()
            .zip(b)
            .map(|(&x, &y)| {
                let lp = x as f64 - la;
                lp.exp() * (lp - (y as f64 - lb))
            })
            .sum::<f64>();
    }
    total / (p.len() / v) as f64
}
