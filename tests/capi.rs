//! The C ABI end to end: `include/raven.h` is what cbindgen makes of capi/src today, and C
//! programs (tests/c/*.c), compiled with the system `cc` against the library cargo built
//! (libraven.a), run under valgrind when it is installed:
//!
//! - `generate.c`: greedy decoding with a zero initial state and 8 iterations gives the
//!   official tokens of the fixture's `decode.full.p0.r8` case;
//! - `threads.c`: four sessions on one model in four threads all give them;
//! - `cancel.c`: a generation cancelled from another thread returns `RAVEN_ERR_CANCELLED`
//!   promptly;
//! - `misuse.c`: NULLs, bad parameters, missing and malformed files give error codes with
//!   messages;
//! - `padded.c`: on a model whose embedding has more rows than its tokenizer has tokens,
//!   sampled and greedy generation emit only ids the tokenizer decodes;
//! - `parallel.c`: the parallel sampler (`sampler` = `RAVEN_SAMPLER_PARALLEL`) in deterministic
//!   settings streams the official sampler's tokens of the tiny-huginn-diffusion fixture's
//!   `diffusion.conservative.p0` case; its corrected mode with a wavefront of 1 gives plain
//!   decoding's tokens; invalid knobs are refused naming their field.
//!
//! When the tests are cross-compiled (aarch64 under qemu) the host `cc` cannot link the
//! library: the C programs are then skipped with a note.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use raven::convert::{convert, NoProgress, OutType};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn generated_header() -> String {
    let config = cbindgen::Config::from_file(root().join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root().join("capi/src/lib.rs"))
        .generate()
        .expect("cbindgen cannot read capi/src");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).unwrap()
}

/// include/raven.h is checked in; it must be what cbindgen makes of capi/src (lib.rs and its modules).
#[test]
fn header_is_up_to_date() {
    let path = root().join("include/raven.h");
    let want = generated_header();
    if std::env::var_os("RAVEN_UPDATE_HEADER").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "include/raven.h is stale: it differs from what cbindgen generates from capi/src.\n\
         Regenerate it with `RAVEN_UPDATE_HEADER=1 cargo test --test capi header` and commit it."
    );
}

/// What the C tests need: the compiler, the library, the fixture model, valgrind or not.
struct CEnv {
    lib: PathBuf,
    valgrind: bool,
}

/// None (with a note) when the host `cc` cannot build for the architecture of this test binary.
fn c_env() -> Option<&'static CEnv> {
    static ENV: OnceLock<Option<CEnv>> = OnceLock::new();
    ENV.get_or_init(|| {
        let machine = Command::new("cc").arg("-dumpmachine").output();
        let machine = match machine {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => panic!("the C ABI tests need a C compiler: install one as `cc` (e.g. apt-get install gcc)"),
        };
        let arch = std::env::consts::ARCH;
        if !machine.starts_with(arch) || !cfg!(target_os = "linux") {
            eprintln!(
                "note: skipping the C programs: this test binary is {arch}-{}, the host cc builds for {machine}",
                std::env::consts::OS
            );
            return None;
        }
        let valgrind = Command::new("valgrind")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !valgrind {
            eprintln!("note: valgrind is not installed; the C programs run without it");
        }
        Some(CEnv {
            lib: static_lib(),
            valgrind,
        })
    })
    .as_ref()
}

/// libraven.a of this build: the newest of deps/libraven*.a beside this test binary (where
/// `cargo test` writes it) and target/<profile>/libraven.a (where `cargo build` puts it).
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let profile_dir = deps.parent().unwrap();
    std::fs::read_dir(deps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n == "libraven.a" || (n.starts_with("libraven-") && n.ends_with(".a"))
        })
        .chain(Some(profile_dir.join("libraven.a")).filter(|p| p.exists()))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no libraven.a in {} or {}: the library's crate-type must include staticlib",
                deps.display(),
                profile_dir.display()
            )
        })
}

/// Compiles tests/c/NAME.c into `dir` against include/raven.h and libraven.a, strict warnings
/// as errors.
fn build(env: &CEnv, dir: &TempDir, name: &str) -> PathBuf {
    let exe = dir.path().join(name);
    let src = root().join(format!("tests/c/{name}.c"));
    let out = Command::new("cc")
        .args([
            "-std=c11",
            "-g",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .arg(&env.lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs a C test program (under valgrind when available), failing on a non-zero exit, a
/// valgrind error or leak, or a hang.
fn run(env: &CEnv, exe: &Path, args: &[String]) {
    let mut cmd = if env.valgrind {
        let mut c = Command::new("valgrind");
        c.args([
            "-q",
            "--error-exitcode=99",
            "--leak-check=full",
            // Only definite leaks fail: hashbrown tables in lazily initialised statics (the
            // tokenizer's byte maps) are held through interior pointers, which valgrind
            // reports as "possibly lost" although they stay reachable until exit.
            "--errors-for-leak-kinds=definite",
            "--show-possibly-lost=no",
            // Valgrind runs one thread at a time; its default lock lets a computing thread
            // take it back at once, so a canceller woken from a sleep, or a team's helper,
            // could wait minutes (cancel.c took 1 to over 12 minutes instead of 11 s).
            "--fair-sched=yes",
        ])
        .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let limit = Duration::from_secs(if env.valgrind { 900 } else { 300 });
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("{} did not finish in {limit:?}", exe.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "{} ({}, {:.1} s):\n{stdout}{stderr}",
        exe.file_name().unwrap().to_string_lossy(),
        if env.valgrind { "valgrind" } else { "native" },
        t0.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}{stderr}",
        exe.display(),
        out.status
    );
}

/// The fixture converted to f32 GGUF in the test's own directory (removed with it).
fn model(dir: &TempDir) -> String {
    let out = dir.path().join("tiny-f32.gguf");
    convert(
        &tiny_dir(),
        &out,
        OutType::parse("f32").unwrap(),
        &mut NoProgress,
    )
    .unwrap();
    out.display().to_string()
}

fn ids(v: &[u32]) -> String {
    v.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Prompt 0 of the fixture (ids and text) and the official greedy tokens of
/// `decode.full.p0.r8`.
fn decode_case() -> (Vec<u32>, String, Vec<u32>) {
    let r = reference();
    let case = r
        .cases()
        .find(|c| c["name"] == "decode.full.p0.r8")
        .expect("the fixture has decode.full.p0.r8");
    assert_eq!(case["prompt"], 0);
    assert_eq!(case["num_steps"], 8);
    assert_eq!(case["init_scale"], 0.0);
    let new = list(&case["new_tokens"])
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let text = r.json["prompts"][0].as_str().unwrap().to_string();
    (r.prompt(0), text, new)
}

#[test]
fn c_greedy_generation_matches_official_tokens() {
    let Some(env) = c_env() else { return };
    let (prompt, text, new) = decode_case();
    let dir = TempDir::new("capi-generate");
    let exe = build(env, &dir, "generate");
    run(env, &exe, &[model(&dir), ids(&prompt), ids(&new), text]);
}

#[test]
fn c_four_threads_share_one_model() {
    let Some(env) = c_env() else { return };
    let (prompt, _, new) = decode_case();
    let dir = TempDir::new("capi-threads");
    let exe = build(env, &dir, "threads");
    run(env, &exe, &[model(&dir), ids(&prompt), ids(&new)]);
}

#[test]
fn c_cancel_from_another_thread_is_prompt() {
    let Some(env) = c_env() else { return };
    let (prompt, _, _) = decode_case();
    let dir = TempDir::new("capi-cancel");
    let exe = build(env, &dir, "cancel");
    // Cancellation is checked at every core iteration, which takes well under a millisecond
    // for the tiny model (a few under valgrind); the limits leave room for a loaded machine.
    let limit_ms = if env.valgrind { 5000 } else { 500 };
    run(
        env,
        &exe,
        &[model(&dir), ids(&prompt), limit_ms.to_string()],
    );
}

#[test]
fn c_misuse_returns_errors_not_crashes() {
    let Some(env) = c_env() else { return };
    let dir = TempDir::new("capi-misuse");
    let exe = build(env, &dir, "misuse");
    let missing = dir.path().join("no-such-model.gguf");
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"\x00\x01garbage, not GGUF\xff").unwrap();
    run(
        env,
        &exe,
        &[
            model(&dir),
            missing.display().to_string(),
            garbage.display().to_string(),
        ],
    );
}

#[test]
fn c_padded_vocabulary_is_never_emitted() {
    let Some(env) = c_env() else { return };
    let dir = TempDir::new("capi-padded");
    let (model, n_tok) = padded_model(&dir);
    let m = raven::Model::load(&model).unwrap();
    let prompt = m.tokenizer().unwrap().encode("Ball: 3", false).unwrap();
    let exe = build(env, &dir, "padded");
    run(
        env,
        &exe,
        &[model.display().to_string(), ids(&prompt), n_tok.to_string()],
    );
}

/// The parallel sampler from C: the fixture's deterministic conservative case (init_scale 0,
/// noise 0, temperature 0; official mode, r′ 4, wavefront 128, headway 1, η 0.1, latent-diff
/// 0.03, 32 steps: the knobs' defaults) gives the official tokens and iterations.
#[test]
fn c_parallel_sampler_matches_official_tokens() {
    let Some(env) = c_env() else { return };
    let r = Reference::load(&fixtures().join("tiny-huginn-diffusion"));
    let case = r
        .cases()
        .find(|c| c["name"] == "diffusion.conservative.p0")
        .expect("the fixture has diffusion.conservative.p0");
    let p = &case["params"];
    assert_eq!(case["deterministic"], true);
    for (k, v) in [
        ("init_scale", 0.0),
        ("state_noise_mixing", 0.0),
        ("ema_embeds", 0.1),
        ("exit_t", 0.03),
    ] {
        assert_eq!(p[k].as_f64(), Some(v), "{k}");
    }
    for (k, v) in [
        ("inner_recurrence", 4),
        ("num_steps", 32),
        ("headway", 1),
        ("max_wavefront", 128),
        ("max_diffusion_steps", 4096),
    ] {
        assert_eq!(p[k].as_u64(), Some(v), "{k}");
    }
    assert_eq!(p["freeze_strategy"], "latent-diff");
    assert_eq!(p["continuous_compute"], false);
    // The C program asks for one token fewer than the official output holds (it keeps every
    // token frozen in the last step).
    assert_eq!(
        list(&case["new_tokens"]).len(),
        case["max_new_tokens"].as_u64().unwrap() as usize + 1
    );
    let to_ids = |v: &serde_json::Value| -> Vec<u32> {
        list(v).iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let prompt = to_ids(&r.json["prompt_token_ids"][case["prompt"].to_string()]);
    let new = to_ids(&case["new_tokens"]);
    let steps: u64 = list(&case["recurrence_per_position"])
        .iter()
        .map(|x| x.as_u64().unwrap())
        .sum();
    let dir = TempDir::new("capi-parallel");
    let exe = build(env, &dir, "parallel");
    run(
        env,
        &exe,
        &[model(&dir), ids(&prompt), ids(&new), steps.to_string()],
    );
}

/// The header is also valid C++ (its declarations are `extern "C"`).
/// Ouro and a retrofitted Llama from C: the official greedy tokens, the gate exit, and a gate
/// refused (naming the field) on a model without one.
#[test]
fn c_other_families() {
    let Some(env) = c_env() else { return };
    let dir = TempDir::new("capi-families");
    let exe = build(env, &dir, "families");
    let mut args = Vec::new();
    for (fixture, case) in [
        ("tiny-ouro", "decode.p0"),
        ("tiny-recurrent-llama", "decode.full.p0.r8"),
    ] {
        let src = fixtures().join(fixture);
        let out = dir.path().join(format!("{fixture}.gguf"));
        convert(&src, &out, OutType::F32, &mut NoProgress).unwrap();
        let r = Reference::load(&src);
        let c = r.cases().find(|c| c["name"] == case).unwrap();
        let new: Vec<u32> = list(&c["new_tokens"])
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let p = c["prompt"].as_u64().unwrap() as usize;
        args.extend([out.display().to_string(), ids(&r.prompt(p)), ids(&new)]);
    }
    run(env, &exe, &args);
}

#[test]
fn header_compiles_as_cpp() {
    if c_env().is_none() {
        return;
    }
    let Ok(o) = Command::new("c++").arg("--version").output() else {
        eprintln!("note: no c++ compiler; skipping the C++ header check");
        return;
    };
    if !o.status.success() {
        return;
    }
    let dir = TempDir::new("capi-cpp");
    let src = dir.path().join("t.cpp");
    std::fs::write(
        &src,
        "#include \"raven.h\"\nint main() { raven_session_params p = raven_session_default_params(); return p.n_ctx; }\n",
    )
    .unwrap();
    let out = Command::new("c++")
        .args([
            "-std=c++11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(root().join("include"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "raven.h does not compile as C++:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
