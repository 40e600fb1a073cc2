//! A Hugging Face checkpoint directory built from the input: `Checkpoint::open`, then
//! `convert` to Q8_0. Errors are fine; a panic or an abort is a finding, and so is an error
//! that leaves a file behind or an accepted conversion that `Model::load` refuses.
//!
//! Input: a u16 LE header, then `config.json` (header & 0x7fff bytes), then the rest is
//! `model.safetensors`. Header bit 15 picks the tokenizer: set, the 8-token
//! `fuzz/tiny_tokenizer.json`; clear, the fixture's `tokenizer.json` (1024 ids).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use raven::convert::{convert, NoProgress, OutType};

const FIXTURE_TOKENIZER: &str = include_str!("../../tests/fixtures/tiny-huginn/tokenizer.json");
const TINY_TOKENIZER: &str = include_str!("../tiny_tokenizer.json");
const INPUTS: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

fn work_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("raven-fuzz-checkpoint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let header = u16::from_le_bytes([data[0], data[1]]);
    let rest = &data[2..];
    let n = usize::from(header & 0x7fff).min(rest.len());
    let (config, safetensors) = rest.split_at(n);
    let tokenizer = if header & 0x8000 != 0 {
        TINY_TOKENIZER
    } else {
        FIXTURE_TOKENIZER
    };
    let dir = work_dir();
    std::fs::write(dir.join("config.json"), config).expect("write");
    std::fs::write(dir.join("model.safetensors"), safetensors).expect("write");
    std::fs::write(dir.join("tokenizer.json"), tokenizer).expect("write");

    if let Ok(ck) = raven::checkpoint::Checkpoint::open(dir) {
        for name in ck.names().map(str::to_string).collect::<Vec<_>>() {
            let t = ck.tensor(&name).expect("listed tensor");
            // Reading every tensor exercises the positioned reads of its data.
            let _ = ck.to_f32(t).map(|v| v.len());
        }
    }

    let out = dir.join("out.gguf");
    match convert(dir, &out, OutType::Q8_0, &mut NoProgress) {
        Ok(_) => {
            if let Err(e) = raven::Model::load(&out) {
                panic!("convert wrote a file that Model::load refuses: {e}");
            }
            std::fs::remove_file(&out).expect("remove output");
        }
        Err(_) => {
            let mut left: Vec<String> = std::fs::read_dir(dir)
                .expect("read dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|n| !INPUTS.contains(&n.as_str()))
                .collect();
            left.sort();
            assert!(left.is_empty(), "a failed conversion left {left:?} behind");
        }
    }
});
