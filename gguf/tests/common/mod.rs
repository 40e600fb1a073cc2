//! Test helpers: a raw GGUF byte builder that is independent of the crate's writer
//! (so malformed files can be made field by field), temp paths and Python detection.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// GGUF value type ids.
pub const U8: u32 = 0;
pub const I8: u32 = 1;
pub const U16: u32 = 2;
pub const I16: u32 = 3;
pub const U32: u32 = 4;
pub const I32: u32 = 5;
pub const F32: u32 = 6;
pub const BOOL: u32 = 7;
pub const STR: u32 = 8;
pub const ARRAY: u32 = 9;
pub const U64: u32 = 10;
pub const I64: u32 = 11;
pub const F64: u32 = 12;

/// Encodes a GGUF string: u64 length then bytes.
pub fn gstr(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// One encoded metadata entry: key, type id, payload.
pub fn kv(key: &str, ty: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = gstr(key.as_bytes());
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Array payload: element type, count, raw element bytes.
pub fn arr(elem: u32, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut v = elem.to_le_bytes().to_vec();
    v.extend_from_slice(&count.to_le_bytes());
    v.extend_from_slice(elems);
    v
}

/// One tensor-table entry, every field settable.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub name: Vec<u8>,
    pub n_dims: u32,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub offset: u64,
}

impl RawTensor {
    pub fn new(name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        RawTensor {
            name: name.as_bytes().to_vec(),
            n_dims: dims.len() as u32,
            dims: dims.to_vec(),
            ty,
            offset,
        }
    }
}

/// A GGUF file as fields; `bytes()` lays it out exactly as given.
#[derive(Clone, Debug)]
pub struct RawFile {
    pub magic: [u8; 4],
    pub version: u32,
    /// Tensor and KV counts; `None` means the true counts.
    pub n_tensors: Option<u64>,
    pub n_kv: Option<u64>,
    pub kvs: Vec<Vec<u8>>,
    pub tensors: Vec<RawTensor>,
    /// Padding before the data section.
    pub alignment: u64,
    pub data: Vec<u8>,
}

impl RawFile {
    /// A small valid file: a few metadata entries and two tensors,
    /// `a` (f32, 8 × 2 = 64 bytes at 0) and `b` (q8_0, 32 × 2 = 68 bytes at 64).
    pub fn valid() -> Self {
        let mut tokens = Vec::new();
        for t in ["<s>", "hello", "wörld"] {
            tokens.extend(gstr(t.as_bytes()));
        }
        RawFile {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: vec![
                kv("general.architecture", STR, &gstr(b"huginn")),
                kv("huginn.block_count", U32, &8u32.to_le_bytes()),
                kv("huginn.attention.qk_bias", BOOL, &[1]),
                kv("huginn.rope.freq_base", F32, &50000f32.to_le_bytes()),
                kv("tokenizer.ggml.tokens", ARRAY, &arr(STR, 3, &tokens)),
                kv(
                    "tokenizer.ggml.token_type",
                    ARRAY,
                    &arr(I32, 3, &[3i32, 1, 1].map(i32::to_le_bytes).concat()),
                ),
            ],
            tensors: vec![
                RawTensor::new("a", &[8, 2], 0, 0),
                RawTensor::new("b", &[32, 2], 8, 64),
            ],
            alignment: 32,
            data: (0..160u32).map(|i| (i * 7 % 251) as u8).collect(),
        }
    }

    pub fn header_and_infos(&self) -> Vec<u8> {
        let mut v = self.magic.to_vec();
        v.extend_from_slice(&self.version.to_le_bytes());
        let nt = self.n_tensors.unwrap_or(self.tensors.len() as u64);
        let nk = self.n_kv.unwrap_or(self.kvs.len() as u64);
        v.extend_from_slice(&nt.to_le_bytes());
        v.extend_from_slice(&nk.to_le_bytes());
        for k in &self.kvs {
            v.extend_from_slice(k);
        }
        for t in &self.tensors {
            v.extend(gstr(&t.name));
            v.extend_from_slice(&t.n_dims.to_le_bytes());
            for d in &t.dims {
                v.extend_from_slice(&d.to_le_bytes());
            }
            v.extend_from_slice(&t.ty.to_le_bytes());
            v.extend_from_slice(&t.offset.to_le_bytes());
        }
        v
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut v = self.header_and_infos();
        while !(v.len() as u64).is_multiple_of(self.alignment) {
            v.push(0);
        }
        v.extend_from_slice(&self.data);
        v
    }

    /// Offset of the data section in `bytes()`.
    pub fn data_offset(&self) -> usize {
        let n = self.header_and_infos().len() as u64;
        (n.div_ceil(self.alignment) * self.alignment) as usize
    }
}

/// A fresh path in the system temp directory (the file is not created).
pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("raven-gguf-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// True when `python3 -c 'import gguf'` works; otherwise prints why the test is skipped.
pub fn have_gguf_py(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("note: {test} skipped: `python3 -c 'import gguf'` failed (pip install gguf)");
    }
    ok
}

/// Runs a Python script with arguments; panics with its output on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}
