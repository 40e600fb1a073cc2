//! A GGUF written by another tool (gguf-py's GGUFWriter, following SPEC §3) loads in Raven and
//! gives the same logits as Raven's own conversion.

mod common;

use common::*;
use raven::kv::CacheStrategy;
use raven::run::{logits, LogitsOptions, Threads};
use raven::Model;

#[test]
fn gguf_written_by_gguf_py_gives_same_logits() {
    let py = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output();
    if !py.map(|o| o.status.success()).unwrap_or(false) {
        eprintln!("note: python3 with gguf and numpy is not installed (pip install -r tools/requirements-test.txt); skipping");
        return;
    }
    let dir = TempDir::new("ggufpy");
    let out = dir.path().join("by-gguf-py.gguf");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/gguf_py_check.py");
    let st = std::process::Command::new("python3")
        .arg(&script)
        .arg("--write")
        .arg(tiny_dir())
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let theirs = Model::load(&out).unwrap();
    let ours = Model::load(&tiny_gguf("f32")).unwrap();
    let threads = Threads::new(1).unwrap();
    let o = LogitsOptions {
        steps: 4,
        init_scale: 0.0,
        seed: 0,
        exit: None,
        cache: CacheStrategy::Full,
        cache_type: raven::kv::KvType::F32,
        decode_from: Some(3),
    };
    let toks = reference().prompt(0);
    let a = logits(&theirs, &toks, &o, &threads).unwrap();
    let b = logits(&ours, &toks, &o, &threads).unwrap();
    assert_eq!(a.logits, b.logits);
    let d = max_abs_diff(
        &a.logits[..1024],
        &reference().tensor("forward.p0.r4.logits")[..1024],
    );
    assert!(d < 2e-4, "{d}");
}
