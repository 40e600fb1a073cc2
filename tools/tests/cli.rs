//! The `raven` binary as scripts call it (SPEC §4): `raven convert` then `raven logits` with the
//! flags exactly as the SPEC writes them, checked against the library; `raven inspect`; and bad
//! invocations, which must exit with code 1 (not a panic's 101, not a signal), print `error: …`
//! naming the flag or file, and leave no output file (nor a temporary one) behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use raven::exit::{Criterion, ExitPolicy};
use raven::kv::CacheStrategy;
use raven::run::{LogitsOptions, Threads};
use raven::Model;
use safetensors::{Dtype, SafeTensors};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-huginn")
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("raven-cli-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
    /// Names of the entries, sorted.
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn raven(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raven"))
        .args(args)
        .output()
        .expect("run raven")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[track_caller]
fn ok(args: &[&str]) -> Output {
    let o = raven(args);
    assert!(
        o.status.success(),
        "raven {args:?} failed ({:?}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs `raven args`, expects exit code 1 with `error: …` on stderr naming each of `needles`,
/// and returns stderr.
#[track_caller]
fn fails(args: &[&str], needles: &[&str]) -> String {
    let o = raven(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("raven {args:?}\n  -> {:?}: {}", o.status.code(), err.trim());
    assert_eq!(
        o.status.code(),
        Some(1),
        "raven {args:?}: expected exit code 1, got {:?}; stderr: {err}",
        o.status
    );
    assert!(!err.contains("panicked"), "raven {args:?} panicked: {err}");
    assert!(err.starts_with("error: "), "raven {args:?}: stderr {err:?}");
    for n in needles {
        assert!(
            err.contains(n),
            "raven {args:?}: {err:?} does not name {n:?}"
        );
    }
    let parts: Vec<&str> = err.trim().split(": ").collect();
    assert!(
        parts.windows(2).all(|w| w[0] != w[1]),
        "raven {args:?}: a cause is repeated in {err:?}"
    );
    err
}

/// The fixture converted by `raven convert … --type f32`, once per test binary, into cargo's
/// scratch directory for integration tests (a static is never dropped, so not a TempDir).
fn model() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-tiny-f32.gguf");
        ok(&["convert", s(&fixture()), "-o", s(&out), "--type", "f32"]);
        out
    })
}

fn library_model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load(model()).unwrap())
}

/// `logits` f32 [T, V] and `steps` i32 [T] from a `raven logits` output file.
fn read_logits(p: &Path) -> (Vec<usize>, Vec<f32>, Vec<i32>) {
    let bytes = std::fs::read(p).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names, ["logits", "steps"]);
    let l = st.tensor("logits").unwrap();
    let k = st.tensor("steps").unwrap();
    assert_eq!(l.dtype(), Dtype::F32);
    assert_eq!(k.dtype(), Dtype::I32);
    assert_eq!(k.shape(), &l.shape()[..1]);
    let logits = l
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let steps = k
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (l.shape().to_vec(), logits, steps)
}

/// Runs `raven logits -m MODEL <args> -o OUT` and the library with `o`; both must agree.
#[track_caller]
fn logits_match_library(args: &[&str], tokens: &[u32], o: &LogitsOptions) -> Vec<i32> {
    let dir = TempDir::new("logits");
    let out = dir.join("out.safetensors");
    let mut full = vec!["logits", "-m", s(model())];
    full.extend_from_slice(args);
    full.extend_from_slice(&["-o", s(&out)]);
    ok(&full);
    assert_eq!(dir.entries(), ["out.safetensors"], "stray files");
    let (shape, logits, steps) = read_logits(&out);
    let m = library_model();
    assert_eq!(shape, [tokens.len(), m.config.n_vocab]);
    let want = raven::run::logits(m, tokens, o, &Threads::new(0).unwrap()).unwrap();
    assert_eq!(steps, want.steps, "steps differ for {args:?}");
    let d = logits
        .iter()
        .zip(&want.logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d <= 1e-5, "{args:?}: logits differ from the library by {d}");
    assert!(logits.iter().all(|x| x.is_finite()));
    steps
}

fn opts(steps: usize) -> LogitsOptions {
    LogitsOptions::fixed(steps)
}

// ---------------------------------------------------------------------------------------------
// SPEC §4 as written.

#[test]
fn logits_as_spec_writes_it() {
    let steps = logits_match_library(
        &["--tokens", "1,2,3", "--steps", "4", "--init-scale", "0"],
        &[1, 2, 3],
        &opts(4),
    );
    assert_eq!(steps, [4, 4, 4]);
}

#[test]
fn logits_with_exit_and_max_steps() {
    let o = LogitsOptions {
        exit: Some(ExitPolicy {
            criterion: Criterion::Kl(1e-3),
            min_steps: 1,
            max_steps: 8,
            check_every: 1,
        }),
        ..opts(4)
    };
    let steps = logits_match_library(
        &[
            "--tokens",
            "1,2,3",
            "--steps",
            "4",
            "--init-scale",
            "0",
            "--exit",
            "kl:1e-3",
            "--max-steps",
            "8",
        ],
        &[1, 2, 3],
        &o,
    );
    assert!(steps.iter().all(|&k| (1..=8).contains(&k)), "{steps:?}");
}

#[test]
fn logits_with_compressed_cache() {
    let o = LogitsOptions {
        cache: CacheStrategy::Compress(4),
        decode_from: Some(1),
        ..opts(4)
    };
    logits_match_library(
        &[
            "--tokens",
            "1,2,3",
            "--steps",
            "4",
            "--init-scale",
            "0",
            "--cache",
            "compress-s4",
            "--decode-from",
            "1",
        ],
        &[1, 2, 3],
        &o,
    );
}

#[test]
fn logits_with_decode_from() {
    let o = LogitsOptions {
        decode_from: Some(2),
        ..opts(4)
    };
    logits_match_library(
        &[
            "--tokens",
            "1,2,3",
            "--steps",
            "4",
            "--init-scale",
            "0",
            "--decode-from",
            "2",
        ],
        &[1, 2, 3],
        &o,
    );
}

#[test]
fn logits_with_seeded_state_and_no_mmap() {
    let o = LogitsOptions {
        init_scale: 1.0,
        seed: 7,
        ..opts(3)
    };
    logits_match_library(
        &[
            "--tokens",
            "5, 6,7",
            "--steps",
            "3",
            "--seed",
            "7",
            "--no-mmap",
        ],
        &[5, 6, 7],
        &o,
    );
}

#[test]
fn logits_overwrites_an_existing_output() {
    let dir = TempDir::new("overwrite");
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"old").unwrap();
    ok(&[
        "logits",
        "-m",
        s(model()),
        "--tokens",
        "1",
        "--steps",
        "1",
        "-o",
        s(&out),
    ]);
    assert_eq!(read_logits(&out).0, [1, 1024]);
    assert_eq!(dir.entries(), ["out.safetensors"]);
}

#[test]
fn inspect_prints_tensors_and_cache_predictions() {
    let o = ok(&["inspect", s(model())]);
    let out = String::from_utf8(o.stdout).unwrap();
    for want in [
        "general.architecture",
        "\"huginn\"",
        "huginn.block_count",
        "tensors:",
        "token_embd.weight",
        "output_norm.weight",
        "adapter.weight",
        "blk.0.attn_q.bias",
        "blk.7.ffn_post_norm.weight",
        "1024 × 64",
        "parameters:",
        "KV cache",
        "full",
        "compress-s4",
        "latest-m4",
    ] {
        assert!(out.contains(want), "inspect output lacks {want:?}:\n{out}");
    }
    // Every tensor appears in the table.
    let g = raven_gguf::Gguf::open(model()).unwrap();
    for t in g.tensors() {
        assert!(
            out.contains(&format!("  {} ", t.name)),
            "{} missing",
            t.name
        );
    }
    let o = ok(&["inspect", s(model()), "--ctx", "4096", "--steps", "64"]);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("4096 tokens, up to 64 iterations"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// Bad `raven logits` invocations: exit 1, `error:` naming the flag or file, no output.

/// `raven logits -m MODEL --tokens 1,2,3 <extra> -o DIR/out.safetensors` must fail naming
/// `needles` and leave DIR empty.
#[track_caller]
fn logits_fails(extra: &[&str], needles: &[&str]) {
    logits_fails_with(s(model()), "1,2,3", extra, needles);
}

#[track_caller]
fn logits_fails_with(model: &str, tokens: &str, extra: &[&str], needles: &[&str]) {
    let dir = TempDir::new("bad-logits");
    let out = dir.join("out.safetensors");
    let mut args = vec!["logits", "-m", model, "--tokens", tokens];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-o", s(&out)]);
    fails(&args, needles);
    assert!(dir.entries().is_empty(), "left behind: {:?}", dir.entries());
}

#[test]
fn rejects_unknown_exit_criterion() {
    logits_fails(&["--exit", "bogus"], &["--exit", "bogus"]);
    logits_fails(&["--exit", "kl:"], &["--exit"]);
    logits_fails(&["--exit", "none:3"], &["--exit", "none"]);
}

#[test]
fn rejects_negative_exit_threshold() {
    logits_fails(&["--exit", "kl:-1e-3"], &["--exit", "-1e-3"]);
    logits_fails(&["--exit", "latent-diff:nan"], &["--exit", "nan"]);
    logits_fails(&["--exit", "argmax-stability:0"], &["--exit"]);
}

#[test]
fn rejects_bogus_cache() {
    logits_fails(&["--cache", "bogus"], &["--cache", "bogus"]);
    logits_fails(&["--cache", "compress-s0"], &["--cache"]);
    logits_fails(&["--cache", "latest-m3"], &["--cache", "latest-m3"]);
}

#[test]
fn rejects_bad_step_options() {
    logits_fails(&["--steps", "0"], &["--steps"]);
    logits_fails(&["--exit", "kl", "--max-steps", "0"], &["--max-steps"]);
    logits_fails(&["--exit", "kl", "--check-every", "0"], &["--check-every"]);
    logits_fails(
        &["--exit", "kl", "--max-steps", "4", "--min-steps", "5"],
        &["--min-steps"],
    );
    logits_fails(&["--init-scale=-1"], &["--init-scale"]);
    logits_fails(&["--init-scale", "inf"], &["--init-scale"]);
}

#[test]
fn rejects_decode_from_out_of_range() {
    logits_fails(&["--decode-from", "0"], &["--decode-from", "0"]);
    logits_fails(&["--decode-from", "4"], &["--decode-from", "4"]);
    // With --exit the first N tokens exit together; N must still lie in the prompt.
    logits_fails(
        &["--exit", "kl", "--decode-from", "4"],
        &["--decode-from", "4"],
    );
}

#[test]
fn rejects_tokens_that_are_not_ids() {
    logits_fails_with(s(model()), "1,x", &[], &["--tokens", "\"x\""]);
    logits_fails_with(s(model()), "1,-2", &[], &["--tokens", "-2"]);
    logits_fails_with(s(model()), "4294967296", &[], &["--tokens"]);
    logits_fails_with(s(model()), "", &[], &["--tokens"]);
}

#[test]
fn rejects_token_id_out_of_range() {
    logits_fails_with(
        s(model()),
        "1,1024",
        &[],
        &["--tokens", "1024", "vocabulary"],
    );
}

#[test]
fn rejects_more_tokens_than_the_context() {
    let toks: Vec<String> = (0..257).map(|i| (i % 1000).to_string()).collect();
    logits_fails_with(
        s(model()),
        &toks.join(","),
        &[],
        &["--tokens", "257", "256"],
    );
}

#[test]
fn rejects_missing_model_file() {
    let dir = TempDir::new("no-model");
    let m = dir.join("nope.gguf");
    logits_fails_with(s(&m), "1,2", &[], &["nope.gguf", "no such file"]);
    fails(&["inspect", s(&m)], &["nope.gguf"]);
}

#[test]
fn rejects_malformed_model_files() {
    let dir = TempDir::new("bad-model");
    let good = std::fs::read(model()).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.gguf", Vec::new()),
        ("magic-only.gguf", b"GGUF".to_vec()),
        ("text.gguf", b"not a model at all\n".to_vec()),
        ("truncated.gguf", good[..good.len() / 2].to_vec()),
        ("header-cut.gguf", good[..100].to_vec()),
        (
            "checkpoint.gguf",
            std::fs::read(fixture().join("model-00003-of-00003.safetensors")).unwrap(),
        ),
        ("version-9.gguf", {
            let mut b = good.clone();
            b[4..8].copy_from_slice(&9u32.to_le_bytes());
            b
        }),
        ("tensors-huge.gguf", {
            let mut b = good.clone();
            b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
    ];
    for (name, bytes) in cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        logits_fails_with(s(&p), "1,2", &[], &[name]);
        fails(&["inspect", s(&p)], &[name]);
    }
    // A directory given as the model.
    logits_fails_with(s(dir.path()), "1", &[], &[s(dir.path()), "is a directory"]);
}

#[test]
fn rejects_output_in_missing_directory() {
    let dir = TempDir::new("out-missing");
    let out = dir.join("no/such/out.safetensors");
    fails(
        &[
            "logits",
            "-m",
            s(model()),
            "--tokens",
            "1",
            "--steps",
            "1",
            "-o",
            s(&out),
        ],
        &["-o", "no/such"],
    );
    assert!(dir.entries().is_empty());
}

#[test]
fn rejects_output_that_is_a_directory() {
    let dir = TempDir::new("out-dir");
    let out = dir.join("out.safetensors");
    std::fs::create_dir(&out).unwrap();
    fails(
        &[
            "logits",
            "-m",
            s(model()),
            "--tokens",
            "1",
            "--steps",
            "1",
            "-o",
            s(&out),
        ],
        &["-o", "directory"],
    );
    assert_eq!(dir.entries(), ["out.safetensors"]);
    assert!(out.is_dir());
}

#[test]
fn failed_logits_keeps_an_existing_output() {
    let dir = TempDir::new("keep");
    let out = dir.join("out.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    fails(
        &[
            "logits",
            "-m",
            s(model()),
            "--tokens",
            "1,5000",
            "-o",
            s(&out),
        ],
        &["--tokens"],
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    assert_eq!(dir.entries(), ["out.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// Bad `raven convert` invocations.

/// A copy of the fixture checkpoint (without the reference outputs).
fn checkpoint_copy(dir: &TempDir) -> PathBuf {
    let ck = dir.join("tiny-huginn");
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("reference.") {
            std::fs::copy(&p, ck.join(name)).unwrap();
        }
    }
    ck
}

#[test]
fn convert_rejects_unknown_type() {
    let dir = TempDir::new("type");
    let out = dir.join("m.gguf");
    fails(
        &["convert", s(&fixture()), "-o", s(&out), "--type", "q3_k"],
        &["--type", "q3_k"],
    );
    assert!(dir.entries().is_empty());
}

#[test]
fn convert_rejects_missing_checkpoint() {
    let dir = TempDir::new("no-ckpt");
    let out = dir.join("m.gguf");
    fails(
        &["convert", s(&dir.join("nowhere")), "-o", s(&out)],
        &["nowhere"],
    );
    assert!(dir.entries().is_empty());
}

#[test]
fn convert_rejects_output_in_missing_directory() {
    let dir = TempDir::new("convert-out");
    let out = dir.join("no/such/m.gguf");
    fails(
        &["convert", s(&fixture()), "-o", s(&out)],
        &["no/such/m.gguf", "does not exist"],
    );
    assert!(dir.entries().is_empty());
}

#[test]
fn failed_convert_leaves_nothing() {
    // A checkpoint whose last shard is truncated: refused, naming the shard; no output, no
    // temporary file.
    let dir = TempDir::new("convert-trunc");
    let ck = checkpoint_copy(&dir);
    let shard = ck.join("model-00003-of-00003.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 4096]).unwrap();
    let out_dir = TempDir::new("convert-trunc-out");
    let out = out_dir.join("m.gguf");
    fails(
        &["convert", s(&ck), "-o", s(&out), "--type", "f16"],
        &["model-00003-of-00003.safetensors"],
    );
    assert!(!out.exists());
    assert!(out_dir.entries().is_empty(), "{:?}", out_dir.entries());
}

/// Runs `raven convert` under a file-size limit of 64 KiB (the f32 output is ~1.7 MB), with
/// SIGXFSZ ignored (`write` then fails with EFBIG) or at its default (the process is killed
/// mid-write).
fn convert_with_size_limit(out: &Path, ignore_signal: bool) -> Output {
    let script = format!(
        "ulimit -f 128; {} exec \"$0\" convert \"$1\" -o \"$2\" --type f32",
        if ignore_signal { "trap '' XFSZ;" } else { "" }
    );
    Command::new("sh")
        .args([
            "-c",
            &script,
            env!("CARGO_BIN_EXE_raven"),
            s(&fixture()),
            s(out),
        ])
        .output()
        .unwrap()
}

#[test]
fn convert_failing_mid_write_leaves_nothing() {
    let dir = TempDir::new("convert-efbig");
    let out = dir.join("m.gguf");
    let o = convert_with_size_limit(&out, true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{:?}: {err}", o.status);
    assert!(
        err.starts_with("error: ") && err.contains("m.gguf"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(dir.entries().is_empty(), "{:?}", dir.entries());
}

#[test]
fn convert_killed_mid_write_leaves_no_output() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new("convert-killed");
    let out = dir.join("m.gguf");
    let o = convert_with_size_limit(&out, false);
    assert_eq!(
        o.status.signal(),
        Some(25),
        "expected SIGXFSZ: {:?}",
        o.status
    );
    // The output path never exists half-written. A killed process cannot remove its temporary
    // file, which is hidden and named after the output and the process id.
    assert!(!out.exists());
    for e in dir.entries() {
        assert!(
            e.starts_with(".m.gguf.") && e.ends_with(".tmp"),
            "unexpected {e}"
        );
    }
}

/// `--draft-steps` on the bundled demo model prints what plain decoding prints: with no
/// `--cache` it takes the full cache, and `--init-scale 0` fixes the initial states. With
/// another cache it says the output may differ.
#[test]
fn speculative_run_prints_the_plain_output() {
    let base = [
        "run",
        "--chat",
        "-p",
        "Ball: 2. Swaps: 12 23 31",
        "--steps",
        "32",
        "--init-scale",
        "0",
        "--ignore-eos",
        "-n",
        "24",
        "-t",
        "1",
    ];
    let plain = ok(&base);
    let spec = ok(&[&base[..], &["--draft-steps", "4", "--lookahead", "6"]].concat());
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&spec.stdout)
    );
    let compressed = ok(&[&base[..], &["--draft-steps", "4", "--cache", "compress-s2"]].concat());
    let note = String::from_utf8_lossy(&compressed.stderr);
    assert!(note.contains("--cache full keeps it identical"), "{note}");
}

/// `raven synth --hf` → `raven convert` → `raven run`: a checkpoint whose embedding (1024 rows)
/// is larger than its tokenizer (the demo's 294 tokens) generates at temperature 1 with no
/// truncation without ever emitting an undecodable id (it used to stop with "token id N is not
/// in the vocabulary"), and synth refuses to overwrite a checkpoint.
#[test]
fn synth_hf_convert_run_with_padded_vocabulary() {
    let dir = TempDir::new("padded");
    let hf = dir.join("hf");
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo/hf/tokenizer.json");
    let synth = [
        "synth",
        "--hf",
        s(&hf),
        "--shape",
        "huginn-0125/55",
        "--layers",
        "1,1,1",
        "--vocab",
        "1024",
        "--tokenizer",
        s(&tok),
    ];
    ok(&synth);
    let err = fails(&synth, &["not empty"]);
    assert!(err.contains(s(&hf)), "{err}");
    let gguf = dir.join("padded.gguf");
    ok(&["convert", s(&hf), "-o", s(&gguf), "--type", "q8_0"]);
    for seed in ["1", "2", "3"] {
        let o = ok(&[
            "run",
            "-m",
            s(&gguf),
            "-p",
            "Ball: 2. Swaps:",
            "-n",
            "40",
            "--steps",
            "2",
            "--temp",
            "1",
            "--top-k",
            "0",
            "--top-p",
            "1",
            "--min-p",
            "0",
            "--seed",
            seed,
            "--ignore-eos",
        ]);
        assert!(!o.stdout.is_empty());
    }
    fails(
        &["synth", "--hf", s(&dir.join("x")), "--layers", "1,0,1"],
        &["--layers"],
    );
}

/// `raven logits --reference` writes the readable oracle's logits (the tests' reference for the
/// fast path), which agree with the fast path; it refuses options the oracle does not have.
#[test]
fn logits_reference_is_the_oracle() {
    let dir = TempDir::new("logits-reference");
    let out = dir.join("ref.safetensors");
    let m = library_model();
    let v = m.config.n_vocab;
    let toks = format!("0,5,{}", v - 1);
    let args = |extra: &[&str]| {
        let mut a = vec![
            "logits",
            "-m",
            s(model()),
            "--tokens",
            &toks,
            "--steps",
            "3",
        ];
        a.extend_from_slice(&["--init-scale", "0", "-o", s(&out)]);
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        ok(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
        read_logits(&out)
    };
    let (shape, reference, steps) = run(&["--reference"]);
    assert_eq!(shape, [3, v]);
    assert_eq!(steps, [3, 3, 3]);
    let want = raven::reference::forward(
        m,
        &[0, 5, v as u32 - 1],
        3,
        vec![vec![0.0; m.config.n_embd]; 3],
    );
    assert_eq!(reference, want.logits.concat(), "the oracle, bit for bit");
    let (_, fast, _) = run(&[]);
    let d = fast
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(d < 1e-4, "fast path and oracle differ by {d}");
    for (extra, needle) in [
        (&["--reference", "--exit", "kl"][..], "--exit"),
        (&["--reference", "--decode-from", "1"][..], "--decode-from"),
    ] {
        let a = args(extra);
        fails(&a.iter().map(|x| x.as_str()).collect::<Vec<_>>(), &[needle]);
    }
    let mut a = vec![
        "logits",
        "-m",
        s(model()),
        "--tokens",
        "1",
        "--reference",
        "-o",
        s(&out),
    ];
    a.extend_from_slice(&["--init-scale", "1"]);
    fails(&a, &["--init-scale 0"]);
}

/// `raven inspect m.gguf | head -1`: the reader goes away; raven ends quietly (SIGPIPE) instead
/// of panicking on "failed printing to stdout".
#[cfg(unix)]
#[test]
fn closed_stdout_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_raven"))
        .args(["inspect", s(model()), "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe's read end is closed here, before raven has written everything.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

/// `raven run --prompt-tokens … --json` (SPEC §6): the generated ids, text and iterations as one
/// JSON object; greedy decoding of the fixture gives the official tokens of decode.full.p0.r8.
#[test]
fn run_prompt_tokens_json_gives_the_official_tokens() {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
            .unwrap();
    let case = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "decode.full.p0.r8")
        .unwrap();
    let want: Vec<u64> = match &case["new_tokens"] {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
        v => serde_json::from_value(v.clone()).unwrap(),
    };
    let prompt: Vec<String> = r["prompt_token_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect();
    let prompt = prompt.join(",");
    let n = want.len().to_string();
    let o = ok(&[
        "run",
        "-m",
        s(model()),
        "--prompt-tokens",
        &prompt,
        "--json",
        "-n",
        &n,
        "--steps",
        "8",
        "--init-scale",
        "0",
        "--cache",
        "full",
        "--ignore-eos",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    let got: Vec<u64> = serde_json::from_value(j["tokens"].clone()).unwrap();
    assert_eq!(got, want);
    assert_eq!(j["steps"], serde_json::json!(vec![8; want.len()]));
    assert_eq!(
        j["prompt_tokens"],
        r["prompt_token_ids"][0].as_array().unwrap().len()
    );
    assert_eq!(j["counters"]["generated"], want.len());
    assert!(j["text"].is_string());
    fails(
        &["run", "-m", s(model()), "--prompt-tokens", "1,x"],
        &["--prompt-tokens", "\"x\""],
    );
    fails(
        &["run", "-m", s(model()), "--prompt-tokens", "1,99999"],
        &["--prompt-tokens", "99999"],
    );
}

/// `raven run --sampler parallel … --json` (SPEC §6): with `--noise 0 --init-scale 0 --temp 0`
/// the official sampler's tokens and counters from tests/fixtures/tiny-huginn-diffusion, in the
/// conservative setting (the defaults), the fixed rule and a capped wavefront.
#[test]
fn run_parallel_sampler_gives_the_official_tokens() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-huginn-diffusion");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let cases: [(&str, &[&str]); 3] = [
        ("diffusion.conservative.p0", &[]),
        ("diffusion.fixed-r4.p1", &["--exit", "none", "--ema", "0"]),
        (
            "diffusion.r2-eta0-wave4.p1",
            &["--inner-steps", "2", "--ema", "0", "--wavefront", "4"],
        ),
    ];
    for (name, extra) in cases {
        let case = r["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let p = case["prompt"].as_u64().unwrap().to_string();
        let prompt: Vec<String> = r["prompt_token_ids"][&p]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        let prompt = prompt.join(",");
        let mut args = vec![
            "run",
            "-m",
            s(model()),
            "--prompt-tokens",
            &prompt,
            "--sampler",
            "parallel",
            "--noise",
            "0",
            "--init-scale",
            "0",
            "--temp",
            "0",
            "-n",
            "16",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = ok(&args);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
        assert_eq!(j["tokens"], case["new_tokens"], "{name}");
        assert_eq!(j["steps"], case["recurrence_per_position"], "{name}");
        let (got, want) = (&j["counters"], &case["counters"]);
        for (g, w) in [
            ("core_passes", "num_core_forward_passes"),
            ("tokens_forward", "num_tokens_forward"),
            ("cache_clears", "num_cache_clears"),
            ("standing_waves", "num_standing_waves"),
            ("sampler_steps", "diffusion_steps"),
            ("seq_len", "gen_seq_length"),
        ] {
            assert_eq!(got[g], want[w], "{name}: {g}");
        }
        assert_eq!(
            got["generated"],
            case["new_tokens"].as_array().unwrap().len()
        );
    }
    let m = s(model());
    let base = ["run", "-m", m, "--prompt-tokens", "1,2,3"];
    let bad: [(&[&str], &[&str]); 7] = [
        (
            &["--sampler", "parallel", "--inner-steps", "0"],
            &["--inner-steps"],
        ),
        (&["--sampler", "parallel", "--ema", "1.5"], &["--ema"]),
        (&["--sampler", "parallel", "--noise", "-1"], &["--noise"]),
        (
            &[
                "--sampler",
                "parallel",
                "--exit",
                "none",
                "--wavefront",
                "4",
            ],
            &["--wavefront"],
        ),
        (&["--sampler", "parallel", "--exit", "kl"], &["--exit"]),
        (
            &["--inner-steps", "2"],
            &["--inner-steps", "--sampler parallel"],
        ),
        (&["--sampler", "bogus"], &["--sampler", "bogus"]),
    ];
    for (extra, needles) in bad {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        fails(&args, needles);
    }
}

/// The multi-token demo model (models/demo-trace) answers an easy puzzle with the ball's place
/// after every swap, the same reply by plain decoding and by the parallel sampler, and
/// `raven eval-seq` scores a few instances of its evaluation set with every kind of method.
#[test]
fn demo_trace_answers_with_every_swap() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = root.join("models/demo-trace/demo-trace-q8_0.gguf");
    let base = [
        "run",
        "-m",
        s(&gguf),
        "--chat",
        "-p",
        "Ball: 2. Swaps: 12 13 34",
        "--steps",
        "32",
        "--init-scale",
        "0",
        "-t",
        "1",
    ];
    let plain = ok(&base);
    assert_eq!(String::from_utf8_lossy(&plain.stdout).trim(), "1 3 4");
    let par = ok(&[
        &base[..],
        &[
            "--sampler",
            "parallel",
            "--parallel-mode",
            "corrected",
            "--inner-steps",
            "4",
            "--wavefront",
            "8",
        ],
    ]
    .concat());
    assert_eq!(String::from_utf8_lossy(&par.stdout).trim(), "1 3 4");
    let dir = TempDir::new("evalseq");
    let json = dir.join("r.json");
    ok(&[
        "eval-seq",
        "-m",
        s(&gguf),
        "--set",
        s(&root.join("models/demo-trace/eval_set.jsonl")),
        "--per-level",
        "1",
        "--steps",
        "8",
        "--max-steps",
        "8",
        "--exit",
        "latent-diff:0.03",
        "--speculative",
        "2:4",
        "--parallel",
        "2:8:0.03",
        "-t",
        "1",
        "--json",
        s(&json),
    ]);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let m = j["methods"].as_array().unwrap();
    assert_eq!(m.len(), 4);
    // Level 1 is easy for every method.
    for x in m {
        assert_eq!(x["by_level"]["1"]["whole"], 100.0, "{x}");
    }
}

/// `raven bench --wavefront`: one row per size with its core-iteration time, the
/// single-position time and their ratio; bad sizes and rounds are refused naming the flags.
#[test]
fn bench_wavefront_times_each_size_against_one_position() {
    let m = s(model());
    let o = ok(&[
        "bench",
        "-m",
        m,
        "-p",
        "4",
        "--steps",
        "2",
        "-t",
        "1",
        "--wavefront",
        "1,3",
        "--rounds",
        "2",
        "-o",
        "json",
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    for (r, w) in rows.iter().zip([1, 3]) {
        assert_eq!(r["wavefront"], w);
        assert_eq!(r["steps"], 2);
        assert_eq!(r["rounds"], 2);
        let ms = r["ms_per_core_iteration"].as_f64().unwrap();
        let one = r["single_position_ms_per_core_iteration"].as_f64().unwrap();
        let ratio = r["ratio_median"].as_f64().unwrap();
        assert!(
            ms > 0.0 && one > 0.0 && ratio.is_finite() && ratio > 0.0,
            "{r}"
        );
        assert!(
            r["ratio_min"].as_f64().unwrap() <= ratio && ratio <= r["ratio_max"].as_f64().unwrap()
        );
    }
    fails(&["bench", "-m", m, "--wavefront", "0"], &["--wavefront"]);
    fails(
        &["bench", "-m", m, "--wavefront", "2", "--rounds", "0"],
        &["--rounds"],
    );
    fails(
        &["bench", "-m", m, "-p", "100000", "--wavefront", "2"],
        &["context"],
    );
    fails(
        &["bench", "-m", m, "--wavefront", "2", "--context", "16"],
        &["--wavefront", "--context"],
    );
}
