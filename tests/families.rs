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
/// Iterations are `num_steps` (retrofitted) or `total_ut_steps` (Ouro, T = 4 and T = 1).
fn decode_cases(name: &str, ty: &str, want_cases: usize) {
    let (r, m) = load(name, ty);
    let threads = Threads::new(2).unwrap();
    let v = m.config.n_vocab;
    let mut n = 0;
    for c in r.cases().filter(|c| c["kind"] == "greedy_decode") {
        let case = c["name"].as_str().unwrap();
        let p = prompt(&r, c);
        let new = ids(&c["new_tokens"]);
        let mut toks = p.clone();
        toks.extend_from_slice(&new[..new.len() - 1]);
        let steps = c.get("num_steps").unwrap_or(&c["total_ut_steps"]);
        let mut o = LogitsOptions::fixed(steps.as_u64().unwrap() as usize);
        if let Some(s) = c["cache_lookup_strategy"].as_str() {
            o.cache = CacheStrategy::parse(s).unwrap();
        }
        o.decode_from = Some(p.len());
        let out = logits(&m, &toks, &o, &threads).unwrap();
        let got = &out.logits[(p.len() - 1) * v..];
        let d = max_abs_diff(got, r.tensor(&format!("{case}.logits")));
        assert!(d <= TOL, "{name} {ty} {case}: logits Δ {d}");
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
    decode_cases("tiny-recurrent-llama", "f32", 4);
}

#[test]
fn recurrent_olmo_decode_matches_official() {
    decode_cases("tiny-recurrent-olmo", "f32", 2);
}

/// Ouro: every step's logits and hidden state for N = 1…4 loop steps (`forward.*`), the
/// default read-out with fewer loops (`loops*`), from f32 and bf16 conversions.
fn ouro_forward(name: &str, ty: &str) {
    let (r, m) = load(name, ty);
    let threads = Threads::new(2).unwrap();
    let (v, h) = (m.config.n_vocab, m.config.n_embd);
    let mut n = 0;
    for c in r.cases().filter(|c| c["kind"] == "forward") {
        let case = c["name"].as_str().unwrap();
        let toks = prompt(&r, c);
        let l = toks.len();
        let hidden = r.tensor(&format!("{case}.step_hidden"));
        for steps in 1..=4 {
            let out = logits(&m, &toks, &LogitsOptions::fixed(steps), &threads).unwrap();
            let want_h = &hidden[(steps - 1) * l * h..steps * l * h];
            let dz = max_abs_diff(&out.latents, want_h);
            let dl = match r.tensors.get(&format!("{case}.step_logits")) {
                Some((_, sl)) => max_abs_diff(&out.logits, &sl[(steps - 1) * l * v..steps * l * v]),
                // gqa/: the default output (all four steps) only.
                None if steps == 4 => {
                    max_abs_diff(&out.logits, r.tensor(&format!("{case}.logits")))
                }
                None => 0.0,
            };
            assert!(
                dl <= TOL && dz <= TOL,
                "{name} {ty} {case} N={steps}: logits Δ {dl}, hidden Δ {dz}"
            );
        }
        n += 1;
    }
    for c in r.cases().filter(|c| c["kind"] == "fewer_loops") {
        let case = c["name"].as_str().unwrap();
        let toks = prompt(&r, c);
        let steps = c["total_ut_steps"].as_u64().unwrap() as usize;
        let out = logits(&m, &toks, &LogitsOptions::fixed(steps), &threads).unwrap();
        let d = max_abs_diff(&out.logits, r.tensor(&format!("{case}.logits")));
        assert!(d <= TOL, "{name} {ty} {case}: logits Δ {d}");
        n += 1;
    }
    assert!(n >= 3, "{name}: forward cases");
}

#[test]
fn ouro_forward_matches_official_f32() {
    ouro_forward("tiny-ouro", "f32");
}

#[test]
fn ouro_forward_matches_official_bf16() {
    ouro_forward("tiny-ouro", "bf16");
}

#[test]
fn ouro_gqa_forward_matches_official() {
    ouro_forward("tiny-ouro/gqa", "f32");
    ouro_forward("tiny-ouro/gqa", "bf16");
}

#[test]
fn ouro_decode_matches_official() {
    decode_cases("tiny-ouro", "f32", 3);
    decode_cases("tiny-ouro", "bf16", 3);
    decode_cases("tiny-ouro/gqa", "f32", 1);
}

/// `--exit gate:q` on the `early_exit.*` cases: with `gate-full` (every step computed, the gate
/// picks the read-out: the official behaviour) the official exit step and logits on every row;
/// with `gate` (later steps not computed) on every row the fixture flags
/// `exact_under_physical_exit`. Also `early_exit_decode.*` with `gate-full`.
fn ouro_gate(name: &str, ty: &str) {
    use raven::exit::{Criterion, ExitPolicy};
    let (r, m) = load(name, ty);
    let threads = Threads::new(2).unwrap();
    let v = m.config.n_vocab;
    let mut n = 0;
    for c in r
        .cases()
        .filter(|c| c["kind"] == "early_exit_forward" || c["kind"] == "early_exit_decode")
    {
        let case = c["name"].as_str().unwrap();
        let q = c["exit_threshold"].as_f64().unwrap();
        let p = prompt(&r, c);
        let decode = c["kind"] == "early_exit_decode";
        let mut toks = p.clone();
        let first = if decode {
            let new = ids(&c["new_tokens"]);
            toks.extend_from_slice(&new[..new.len() - 1]);
            p.len() - 1
        } else {
            0
        };
        let want_steps: Vec<i32> = list(&c["exit_steps"])
            .iter()
            .map(|x| x.as_i64().unwrap() as i32 + 1)
            .collect();
        let want = r.tensor(&format!("{case}.logits"));
        for full in [true, false] {
            if decode && !full {
                continue;
            }
            let crit =
                Criterion::parse(&format!("{}:{q}", if full { "gate-full" } else { "gate" }))
                    .unwrap();
            let mut o = LogitsOptions::fixed(4);
            o.exit = Some(ExitPolicy {
                criterion: crit,
                min_steps: 1,
                max_steps: 4,
                check_every: 1,
            });
            let out = logits(&m, &toks, &o, &threads).unwrap();
            let exact: Vec<bool> = if full {
                vec![true; want_steps.len()]
            } else {
                list(&c["exact_under_physical_exit"])
                    .iter()
                    .map(|x| x.as_bool().unwrap())
                    .collect()
            };
            assert!(exact.iter().filter(|&&e| e).count() >= 1);
            for (row, &ok) in exact.iter().enumerate() {
                if !ok {
                    continue;
                }
                let t = first + row;
                assert_eq!(
                    out.steps[t], want_steps[row],
                    "{name} {case} full={full}: row {row} exit step"
                );
                let d = max_abs_diff(
                    &out.logits[t * v..(t + 1) * v],
                    &want[row * v..(row + 1) * v],
                );
                assert!(
                    d <= TOL,
                    "{name} {ty} {case} full={full}: row {row} logits Δ {d}"
                );
            }
        }
        n += 1;
    }
    assert_eq!(n, 11, "{name}: early-exit cases");
}

#[test]
fn ouro_gate_exit_matches_official() {
    ouro_gate("tiny-ouro", "f32");
    ouro_gate("tiny-ouro", "bf16");
}

/// The default q is the checkpoint's `early_exit_threshold` (1.0 here: every token runs all
/// four steps), and a model without a gate refuses the criterion, naming it.
#[test]
fn gate_defaults_and_refusals() {
    use raven::exit::{Criterion, ExitPolicy};
    let (_, m) = load("tiny-ouro", "f32");
    assert_eq!(m.config.exit_threshold, Some(1.0));
    let threads = Threads::new(1).unwrap();
    let mut o = LogitsOptions::fixed(4);
    o.exit = Some(ExitPolicy {
        criterion: Criterion::parse("gate").unwrap(),
        min_steps: 1,
        max_steps: 4,
        check_every: 1,
    });
    let out = logits(&m, &[5, 6, 7], &o, &threads).unwrap();
    assert_eq!(out.steps, vec![4, 4, 4]);
    let (_, llama) = load("tiny-recurrent-llama", "f32");
    let e = logits(&llama, &[5, 6, 7], &o, &threads).err().unwrap();
    assert!(e.to_string().contains("no exit gate"), "{e}");
    assert!(Criterion::parse("gate:1.5").is_err());
}

struct Notes(Vec<String>);
impl raven::convert::Progress for Notes {
    fn note(&mut self, msg: &str) {
        self.0.push(msg.to_string());
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The published retrofitted configs carry Huginn-0125's special ids (65504/65505/65509, plain
/// words in Llama-3's vocabulary): conversion takes BOS/EOS from the tokenizer and says so, and
/// generation stops on `<|eot_id|>` and `<|end_of_text|>`.
#[test]
fn huginn_special_ids_are_replaced_by_the_tokenizers() {
    let tmp = TempDir::new("huginn-ids");
    let dir = tmp.path().join("hf");
    copy_dir(&fixture("tiny-recurrent-llama"), &dir);
    for f in ["config.json", "generation_config.json"] {
        let p = dir.join(f);
        let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        j["bos_token_id"] = 65504.into();
        j["eos_token_id"] = 65505.into();
        j["pad_token_id"] = 65509.into();
        std::fs::write(&p, j.to_string()).unwrap();
    }
    let out = tmp.path().join("m.gguf");
    let mut notes = Notes(Vec::new());
    raven::convert::convert(&dir, &out, raven::convert::OutType::F32, &mut notes).unwrap();
    let said = notes.0.join("\n");
    assert!(
        said.contains("eos id 65505") && said.contains("using 1001 (<|end_of_text|>)"),
        "{said}"
    );
    assert!(
        said.contains("bos id 65504") && said.contains("using 1000 (<|begin_of_text|>)"),
        "{said}"
    );
    let m = Model::load(&out).unwrap();
    assert_eq!(m.vocab.bos, Some(1000));
    assert_eq!(m.vocab.eos, vec![1001]);
    let stops = m.stop_tokens();
    assert!(stops.contains(&1001) && stops.contains(&1009), "{stops:?}");
    assert_eq!(m.config.family, raven::config::Family::RecurrentLlama);
}

/// Ouro's base checkpoints say bos = eos = 0; a ChatML turn ends with <|im_end|>: conversion
/// corrects BOS, adds the end of turn, and says so. The OLMo variant is told from the Llama one
/// by its q/k norms.
#[test]
fn ouro_special_ids_and_family_detection() {
    let tmp = TempDir::new("ouro-ids");
    let out = tmp.path().join("o.gguf");
    let mut notes = Notes(Vec::new());
    raven::convert::convert(
        &fixture("tiny-ouro"),
        &out,
        raven::convert::OutType::Q8_0,
        &mut notes,
    )
    .unwrap();
    assert!(
        notes
            .0
            .iter()
            .any(|n| n.contains("corrected to 1 (<|im_start|>")),
        "{:?}",
        notes.0
    );
    let m = Model::load(&out).unwrap();
    assert_eq!((m.vocab.bos, m.vocab.eos.clone()), (Some(1), vec![2, 0]));
    assert_eq!(m.config.family, raven::config::Family::Ouro);
    let (_, olmo) = load("tiny-recurrent-olmo", "f32");
    assert_eq!(olmo.config.family, raven::config::Family::RecurrentOlmo2);
    assert_eq!(
        olmo.gguf().get_str("general.architecture").unwrap(),
        "recurrent-olmo2"
    );
}

/// The readable oracle (`raven::reference`) agrees with each family's official outputs, and the
/// fast path on Q8_0 / Q4_0 weights stays within mean KL 2e-3 of the oracle on the same
/// dequantized weights (the kernels are shared; this checks the wiring).
#[test]
fn oracle_and_quantized_families() {
    let threads = Threads::new(2).unwrap();
    for (name, steps, case) in [
        ("tiny-recurrent-llama", 8, "forward.p1.r8.logits"),
        ("tiny-recurrent-olmo", 8, "forward.p1.r8.logits"),
        ("tiny-ouro", 4, ""),
        ("tiny-ouro/gqa", 4, "forward.p1.logits"),
    ] {
        let (r, m) = load(name, "f32");
        let toks: Vec<u32> = ids(&r.json["prompt_token_ids"][1]);
        let s0 = vec![vec![0.0; m.config.n_embd]; toks.len()];
        let oracle: Vec<f32> = threads.run(|| {
            raven::reference::forward(&m, &toks, steps, s0)
                .logits
                .concat()
        });
        let want: Vec<f32> = if case.is_empty() {
            let v = m.config.n_vocab;
            let sl = r.tensor("forward.p1.step_logits");
            sl[3 * toks.len() * v..].to_vec()
        } else {
            r.tensor(case).to_vec()
        };
        let d = max_abs_diff(&oracle, &want);
        assert!(d <= TOL, "{name}: oracle Δ {d}");
        for ty in ["q8_0", "q4_0"] {
            let (_, q) = load(name, ty);
            let v = q.config.n_vocab;
            let fast = logits(&q, &toks, &LogitsOptions::fixed(steps), &threads).unwrap();
            let s0 = vec![vec![0.0; q.config.n_embd]; toks.len()];
            let oracle: Vec<f32> = threads.run(|| {
                raven::reference::forward(&q, &toks, steps, s0)
                    .logits
                    .concat()
            });
            let kl = mean_kl(&oracle, &fast.logits, v);
            eprintln!("{name} {ty}: mean KL {kl:.2e}");
            assert!(kl <= 2e-3, "{name} {ty}: mean KL {kl}");
        }
    }
}

/// A synthetic checkpoint with each family's real tensor names, dtype and layout (`raven synth
/// --hf`, narrowed), converted, against the readable oracle: the conversion and the fast path
/// agree with the description at shapes other than the fixtures' (GQA 4:1 with d = 64 for
/// Llama, d = 128 for OLMo-2 and Ouro).
#[test]
fn synthetic_family_checkpoints_convert_and_run() {
    let tmp = TempDir::new("synth-families");
    let threads = Threads::new(2).unwrap();
    for (shape, layers, dtype) in [
        (
            "recurrent-llama-3.2/4",
            (1, 2, 1),
            raven::synth::HfDtype::F32,
        ),
        ("recurrent-olmo-2/8", (1, 1, 1), raven::synth::HfDtype::F32),
        ("ouro-1.4b/8", (0, 2, 0), raven::synth::HfDtype::BF16),
    ] {
        let mut c = raven::synth::shape(shape).unwrap();
        (c.n_prelude, c.n_core, c.n_coda, c.n_vocab) = (layers.0, layers.1, layers.2, 512);
        let dir = tmp.path().join(shape.replace('/', "_"));
        let o = raven::synth::HfOptions {
            seed: 7,
            dtype,
            max_shard_bytes: raven::synth::default_shard_bytes(c.family),
            ..Default::default()
        };
        raven::synth::write_hf(&c, &dir, &o).unwrap();
        let out = tmp.path().join(format!("{}.gguf", shape.replace('/', "_")));
        raven::convert::convert(
            &dir,
            &out,
            raven::convert::OutType::F32,
            &mut raven::convert::NoProgress,
        )
        .unwrap();
        let m = Model::load(&out).unwrap();
        assert_eq!(m.config.family, c.family, "{shape}");
        assert_eq!(
            (m.config.n_kv_heads, m.config.head_dim()),
            (c.n_kv_heads, c.head_dim())
        );
        let toks = [3u32, 100, 7, 250, 11];
        let steps = 3;
        let fast = logits(&m, &toks, &LogitsOptions::fixed(steps), &threads).unwrap();
        let s0 = vec![vec![0.0; m.config.n_embd]; toks.len()];
        let oracle: Vec<f32> = threads.run(|| {
            raven::reference::forward(&m, &toks, steps, s0)
                .logits
                .concat()
        });
        let scale = oracle.iter().fold(0f32, |a, x| a.max(x.abs())).max(1.0);
        let d = max_abs_diff(&fast.logits, &oracle);
        assert!(
            d <= 1e-4 * scale,
            "{shape}: fast vs oracle Δ {d} (logits up to {scale})"
        );
        // Decoding through the cache equals the one-pass prompt.
        let mut o = LogitsOptions::fixed(steps);
        o.decode_from = Some(2);
        let dec = logits(&m, &toks, &o, &threads).unwrap();
        let d = max_abs_diff(&dec.logits, &fast.logits);
        assert!(d <= 1e-4 * scale, "{shape}: decode vs prompt Δ {d}");
    }
}

/// KV sharing on Recurrent-Llama-3.2's 4 / 6 / 4 geometry: `compress-s6` allocates 6 core slots
/// per position, a prelude or coda layer only ever reads its own entries and a core layer only
/// its own layer's (the official code folds core layers 4 and 5 into prelude slots 2 and 3:
/// README defect 6), and at r = 1 it decodes exactly as the full cache.
#[test]
fn kv_sharing_on_the_real_geometry() {
    use raven::kv::{KvCache, KvType, Slot};
    let mut c = raven::synth::shape("recurrent-llama-3.2/8").unwrap();
    c.n_vocab = 512;
    assert_eq!((c.n_prelude, c.n_core, c.n_coda), (4, 6, 4));
    let (ctx, steps) = (16, 8);
    let s6 = CacheStrategy::parse("compress-s6").unwrap();
    let kv = c.kv_width();
    let cache = KvCache::new(&c, s6, KvType::F32, ctx, steps).unwrap();
    assert_eq!(cache.bytes(), ((4 + 6 + 4) * ctx * kv * 2 * 4) as u64);
    assert_eq!(s6.bytes(&c, KvType::F32, ctx, steps), cache.bytes());
    let full = KvCache::new(&c, CacheStrategy::Full, KvType::F32, ctx, steps).unwrap();
    assert_eq!(
        full.bytes(),
        ((4 + 6 * steps + 4) * ctx * kv * 2 * 4) as u64
    );
    // Tag every entry with its layer (prelude j: j; core layer j: 100 + j; coda j: 200 + j)
    // and check what each layer reads.
    let mut cache = cache;
    let mut slots = Vec::new();
    for j in 0..4 {
        slots.push((Slot::Prelude(j), j as f32));
        slots.push((Slot::Coda(j), 200.0 + j as f32));
    }
    for iter in 0..steps {
        for layer in 0..6 {
            slots.push((Slot::Core { iter, layer }, 100.0 + layer as f32));
        }
    }
    for pos in 0..ctx {
        // Prelude, then every iteration's core layers, then the coda, as the forward writes.
        let mut order: Vec<(Slot, f32)> = slots.clone();
        order.sort_by_key(|(s, _)| match s {
            Slot::Prelude(j) => *j,
            Slot::Core { iter, layer } => 10 + iter * 6 + layer,
            Slot::Coda(j) => 1000 + j,
        });
        for (slot, tag) in order {
            cache.write(slot, pos, &vec![tag; kv], &vec![tag; kv]);
            let mut offs = Vec::new();
            cache.visible_offsets(slot, pos, &mut offs);
            assert_eq!(
                offs.len(),
                pos + 1,
                "{slot:?} at {pos} sees every position once"
            );
            for &o in &offs {
                let mut key = [0f32];
                cache.rows().widen(false, o, &mut key);
                assert_eq!(key[0], tag, "{slot:?} at {pos} read another layer's key");
            }
        }
        cache.set_len(pos + 1);
    }
    // r = 1: compress-s6 decodes as the full cache.
    let tmp = TempDir::new("kv-geometry");
    let path = tmp.path().join("r.gguf");
    raven::synth::write_random(&c, raven::convert::OutType::F32, 5, &path).unwrap();
    let m = Model::load(&path).unwrap();
    let threads = Threads::new(2).unwrap();
    let toks = [1u32, 2, 3, 4, 5, 6, 7, 8];
    let run = |cache: CacheStrategy| {
        let mut o = LogitsOptions::fixed(1);
        o.cache = cache;
        o.decode_from = Some(3);
        logits(&m, &toks, &o, &threads).unwrap().logits
    };
    assert_eq!(run(s6), run(CacheStrategy::Full));
}

/// The retrofitted models' adaptive generation with the read-out they were trained with
/// (`adaptive-forward-readout.*`, README defect 3): the prompt exits as one chunk (criterion on
/// its last position, latent-diff averaged over positions), each new token on its own; the
/// official exit steps, tokens and logits (`raven logits --exit C:τ --decode-from N`).
fn retro_adaptive(name: &str) {
    use raven::exit::{Criterion, ExitPolicy};
    let (r, m) = load(name, "f32");
    let threads = Threads::new(2).unwrap();
    let v = m.config.n_vocab;
    let mut n = 0;
    for c in r.cases().filter(|c| {
        c["kind"] == "adaptive_exit"
            && c["name"]
                .as_str()
                .unwrap()
                .starts_with("adaptive-forward-readout")
    }) {
        let case = c["name"].as_str().unwrap();
        let p = prompt(&r, c);
        let new = ids(&c["new_tokens"]);
        let mut toks = p.clone();
        toks.extend_from_slice(&new[..new.len() - 1]);
        let crit = format!(
            "{}:{}",
            c["criterion"].as_str().unwrap(),
            c["exit_threshold"]
        );
        let max_steps = c["max_steps"].as_u64().unwrap() as usize;
        let mut o = LogitsOptions::fixed(max_steps);
        o.decode_from = Some(p.len());
        o.exit = Some(ExitPolicy {
            criterion: Criterion::parse(&crit).unwrap(),
            min_steps: 1,
            max_steps,
            check_every: 1,
        });
        let out = logits(&m, &toks, &o, &threads).unwrap();
        let want_steps: Vec<i32> = list(&c["compute_steps"])
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect();
        let got_steps: Vec<i32> = out.steps[p.len() - 1..].to_vec();
        assert_eq!(
            got_steps,
            want_steps[..got_steps.len()],
            "{name} {case}: exit steps"
        );
        let got = &out.logits[(p.len() - 1) * v..];
        let d = max_abs_diff(got, &r.tensor(&format!("{case}.logits"))[..got.len()]);
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
    assert_eq!(n, 4, "{name}: forward-readout adaptive cases");
}

#[test]
fn recurrent_llama_adaptive_exit_matches_official() {
    retro_adaptive("tiny-recurrent-llama");
}

#[test]
fn recurrent_olmo_adaptive_exit_matches_official() {
    retro_adaptive("tiny-recurrent-olmo");
}

/// A thinking model's reasoning (Ouro-Thinking's `<think> … </think>`) is kept apart from its
/// answer: a prompt whose template opened `<think>` generates reasoning; after `</think>` the
/// answer resumes; stop strings apply to the answer only.
#[test]
fn thinking_models_reasoning_is_separated() {
    use raven::session::{Session, SessionParams};
    use raven::textgen::{generate_text, TextOptions};
    let (r, m) = load("tiny-ouro", "f32");
    let m = std::sync::Arc::new(m);
    let tok = m.tokenizer().unwrap();
    let (open, close) = (
        tok.token_to_id("<think>").unwrap(),
        tok.token_to_id("</think>").unwrap(),
    );
    let mut p = SessionParams::for_model(&m);
    p.init_scale = 0.0;
    p.ignore_eos = true;
    let prompt = ids(&r.json["prompt_token_ids"][0]);
    let o = TextOptions {
        max_tokens: 6,
        stop: Vec::new(),
    };
    let gen = |extra: &[u32]| {
        let mut s = Session::new(m.clone(), p.clone()).unwrap();
        let mut pr = prompt.clone();
        pr.extend_from_slice(extra);
        let mut pieces = Vec::new();
        let out = generate_text(&mut s, &pr, &o, |g| {
            pieces.push((g.text.to_string(), g.reasoning));
            true
        })
        .unwrap();
        (out, pieces)
    };
    let (plain, _) = gen(&[]);
    assert!(
        !plain.text.is_empty() && plain.reasoning.is_empty(),
        "{plain:?}"
    );
    let (thinking, pieces) = gen(&[open]);
    assert!(
        thinking.text.is_empty() && !thinking.reasoning.is_empty(),
        "{thinking:?}"
    );
    assert!(pieces.iter().all(|(_, r)| *r));
    let joined: String = pieces.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(joined, thinking.reasoning);
    // Opened and closed in the prompt: an answer again.
    let (closed, _) = gen(&[open, 105, close]);
    assert!(
        closed.reasoning.is_empty() && !closed.text.is_empty(),
        "{closed:?}"
    );
}
