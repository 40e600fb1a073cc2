//! The other families against their official implementations' outputs (tests/fixtures/README.md):
//! retrofitted recurrence (Llama, OLMo-2) and Ouro, converted from their Hugging Face layout and
//! run through `raven::run::logits`, the engine behind `raven logits`.

mod common;

use std::path::PathBuf;

use common::*;
use raven::kv::CacheStrategy;
use raven::run::{logits, LogitsOptions, Threads};
use raven::Model;
use serde_json::Value;

const TOL: f32 = 2e-4;

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn models() -> &'static TempDir {
    static D: std::sync::OnceLock<TempDir> = std::sync::OnceLock::new();
    D.get_or_init(|| TempDir::new("families"))
}

fn load(name: &str, ty: &str) -> (Reference, Model) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap();
    let dir = fixture(name);
    let m = Model::load(&converted(&dir, ty, models())).unwrap();
    (Reference::load(&dir), m)
}

fn prompt(r: &Reference, c: &Value) -> Vec<u32> {
    let ids = match &c["prompt"] {
        Value::String(s) if s == "long" => &r.json["long_prompt_token_ids"],
        p => &r.json["prompt_token_ids"][p.as_u64().unwrap() as usize],
    };
    ids.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    list(v).iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every zero-initialised `forward.*` case (and `forward-long.r8`, last 8 rows): logits and
/// latents (s_r).
fn retro_forward(name: &str) {
    let (r, m) = load(name, "f32");
    let threads = Threads::new(2).unwrap();
    let (v, h) = (m.config.n_vocab, m.config.n_embd);
    let mut n = 0;
    for c in r
        .cases()
        .filter(|c| c["kind"] == "forward" && c["init_scale"] == 0.0)
    {
        let case = c["name"].as_str().unwrap();
        let toks = prompt(&r, c);
        let steps = c["num_steps"].as_u64().unwrap() as usize;
        let out = logits(&m, &toks, &LogitsOptions::fixed(steps), &threads).unwrap();
        let want = r.tensor(&format!("{case}.logits"));
        let rows = want.len() / v;
        let got = &out.logits[(toks.len() - rows) * v..];
        let dl = max_abs_diff(got, want);
        let dz = max_abs_diff(
            &out.latents[(toks.len() - rows) * h..],
            r.tensor(&format!("{case}.latents")),
        );
        assert!(
            dl <= TOL && dz <= TOL,
            "{name} {case}: logits Δ {dl}, latents Δ {dz}"
        );
        n += 1;
    }
    assert_eq!(n, 13, "{name}: forward cases");
}

#[test]
fn recurrent_llama_forward_matches_official() {
    retro_forward("tiny-recurrent-llama");
}

#[test]
fn recurrent_olmo_forward_matches_official() {
    retro_forward("tiny-recurrent-olmo");
}

/// Greedy decoding after a one-pass prefill, through the cache (teacher forcing with the
/// official tokens): the same tokens (argmax over every row, as the official code) and logits.
fn retro_decode(name: &str, want_cases: usize) {
    let (r, m) = load(name, "f32");
    let threads = Threads::new(2).unwrap();
    let v = m.config.n_vocab;
    let mut n = 0;
    for c in r.cases().filter(|c| c["kind"] == "greedy_decode") {
        let case = c["name"].as_str().unwrap();
        let p = prompt(&r, c);
        let new = ids(&c["new_tokens"]);
        let mut toks = p.clone();
        toks.extend_from_slice(&new[..new.len() - 1]);
        let mut o = LogitsOptions::fixed(c["num_steps"].as_u64().unwrap() as usize);
        o.cache = CacheStrategy::parse(c["cache_lookup_strategy"].as_str().unwrap()).unwrap();
        o.decode_from = Some(p.len());
        let out = logits(&m, &toks, &o, &threads).unwrap();
        let got = &out.logits[(p.len() - 1) * v..];
        let d = max_abs_diff(got, r.tensor(&format!("{case}.logits")));
        assert!(d <= TOL, "{name} {case}: logits Δ {d}");
        for (t, row) in got.chunks_exact(v).enumerate() {
            assert_eq!(
                raven::exit::argmax(row) as u32,
                new[t],
                "{name} {case}: token {t}"
            );
        }
        n += 1;
    }
    assert_eq!(n, want_cases, "{name}: decode cases");
}

#[test]
fn recurrent_llama_decode_matches_official() {
    retro_decode("tiny-recurrent-llama", 4);
}

#[test]
fn recurrent_olmo_decode_matches_official() {
    retro_decode("tiny-recurrent-olmo", 2);
}
