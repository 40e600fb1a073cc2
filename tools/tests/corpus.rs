//! The malformed-file corpus of issue #8 (`tests/fixtures/malformed/`, written by
//! `tools/make_malformed_corpus.py`): every file is `base.gguf`, a valid micro Huginn model, with
//! one thing wrong in its header, metadata, tensor table or model-level consistency. `raven logits`
//! (mapped and `--no-mmap`) and `raven inspect` must refuse each one the same way: exit code
//! exactly 1 (not a panic's 101, not a signal, not a hang), a message on stderr that starts with
//! `error:` and names the file, no panic text, and no output file, not even a temporary one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one invocation on a file of a few KB may take before it counts as a hang.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The classes, as file-name prefixes, and the fewest files each must have.
const CLASSES: [&str; 4] = ["header-", "metadata-", "tensor-info-", "model-"];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/malformed")
}

/// The malformed files (everything `.gguf` but the base), sorted.
fn malformed_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/fixtures/malformed exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .filter(|p| p.file_name().is_some_and(|n| n != "base.gguf"))
        .collect();
    v.sort();
    v
}

/// A fresh empty directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("raven-corpus-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

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

/// What one run of `raven` did.
struct Run {
    code: Option<i32>,
    stderr: String,
    timed_out: bool,
}

/// Runs `raven args` in `dir`, killing it after [`TIMEOUT`].
fn raven(dir: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_raven"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run raven");
    // Read stderr on a thread so a chatty child cannot block on a full pipe.
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let start = Instant::now();
    let (status, timed_out) = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break (Some(s), false);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.and_then(|s| s.code()),
        stderr: reader.join().unwrap(),
        timed_out,
    }
}

/// Checks one refusal; returns what is wrong with it, if anything.
fn check_refusal(file: &Path, how: &str, r: &Run, dir: &TempDir) -> Option<String> {
    let name = file.file_name().unwrap().to_string_lossy();
    let mut problems = Vec::new();
    if r.timed_out {
        problems.push(format!("did not finish within {TIMEOUT:?}"));
    } else if r.code != Some(1) {
        problems.push(format!("exit code {:?}, expected 1", r.code));
    }
    if !r.stderr.starts_with("error:") {
        problems.push("stderr does not start with `error:`".into());
    }
    if !r.stderr.contains(name.as_ref()) {
        problems.push("the message does not name the file".into());
    }
    if r.stderr.contains("panicked") || r.stderr.contains("RUST_BACKTRACE") {
        problems.push("it panicked".into());
    }
    let left = dir.entries();
    if !left.is_empty() {
        problems.push(format!("left files behind: {left:?}"));
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "{name} ({how}): {}\n    stderr: {}",
            problems.join("; "),
            r.stderr.trim_end()
        ))
    }
}

/// Runs `args_for(file, out)` on every malformed file in a fresh temp dir and checks each refusal;
/// fails listing every file that was not refused properly.
fn all_refused(how: &str, args_for: impl Fn(&str, &str) -> Vec<String>) {
    let files = malformed_files();
    assert!(!files.is_empty(), "no corpus files found");
    let mut failures = Vec::new();
    for f in &files {
        let dir = TempDir::new("run");
        let out = dir.0.join("out.safetensors");
        let args = args_for(f.to_str().unwrap(), out.to_str().unwrap());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = raven(&dir.0, &args);
        if let Some(problem) = check_refusal(f, how, &r, &dir) {
            failures.push(problem);
        }
    }
    // The corpus directory itself gains nothing (no temporary file next to the model).
    let stray: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') || n.ends_with(".tmp"))
        .collect();
    assert!(stray.is_empty(), "files left in the corpus dir: {stray:?}");
    assert!(
        failures.is_empty(),
        "{} of {} files not refused properly by {how}:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

fn logits_args(file: &str, out: &str) -> Vec<String> {
    [
        "logits", "-m", file, "--tokens", "1,2,3", "--steps", "2", "-o", out,
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn corpus_has_at_least_40_files_covering_all_four_classes() {
    let files = malformed_files();
    assert!(files.len() >= 40, "only {} malformed files", files.len());
    let readme = std::fs::read_to_string(corpus_dir().join("README.md")).unwrap();
    for class in CLASSES {
        let n = files
            .iter()
            .filter(|f| f.file_name().unwrap().to_str().unwrap().starts_with(class))
            .count();
        assert!(n >= 5, "class {class}* has only {n} files");
    }
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            CLASSES.iter().any(|c| name.starts_with(c)),
            "{name} is in no class"
        );
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not listed in README.md"
        );
    }
}

#[test]
fn base_control_file_runs_logits_and_inspect() {
    let base = corpus_dir().join("base.gguf");
    let dir = TempDir::new("base");
    let out = dir.0.join("out.safetensors");
    let r = raven(
        &dir.0,
        &logits_args(base.to_str().unwrap(), out.to_str().unwrap())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(r.code, Some(0), "logits on base.gguf: {}", r.stderr);
    assert!(out.is_file(), "no output written");
    assert_eq!(dir.entries(), ["out.safetensors"]);
    let r = raven(&dir.0, &["inspect", base.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "inspect on base.gguf: {}", r.stderr);
}

#[test]
fn logits_refuses_every_malformed_file_with_exit_1_and_no_output() {
    all_refused("logits", logits_args);
}

#[test]
fn logits_no_mmap_refuses_every_malformed_file_with_exit_1_and_no_output() {
    all_refused("logits --no-mmap", |f, out| {
        let mut a = logits_args(f, out);
        a.push("--no-mmap".into());
        a
    });
}

#[test]
fn inspect_refuses_every_malformed_file_with_exit_1() {
    all_refused("inspect", |f, _| vec!["inspect".into(), f.into()]);
}
