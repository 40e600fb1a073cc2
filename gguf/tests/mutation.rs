//! Seeded random mutation: byte flips, planted extreme integers, truncations,
//! insertions and deletions of valid files. The reader must return `Ok` or `Err`,
//! never panic, and whatever it accepts must be safe to use.

mod common;

use common::{RawFile, Rng};
use raven_gguf::{Array, GgmlType, Gguf, GgufWriter, Value};

fn writer_file() -> Vec<u8> {
    let mut w = GgufWriter::new(Vec::new());
    w.add_kv("general.architecture", Value::Str("huginn".into()));
    w.add_kv("huginn.block_count", Value::U32(8));
    w.add_kv("huginn.rope.freq_base", Value::F32(5e4));
    w.add_kv("x.i64", Value::I64(-3));
    w.add_kv("x.bool", Value::Bool(false));
    w.add_kv(
        "tokenizer.ggml.tokens",
        Value::Array(Array::Str(vec!["a".into(), "bb".into(), "ccc".into()])),
    );
    w.add_kv(
        "x.nested",
        Value::Array(Array::Array(vec![
            Array::U16(vec![1, 2]),
            Array::Array(vec![Array::Bool(vec![true])]),
        ])),
    );
    w.add_kv("x.f64s", Value::Array(Array::F64(vec![0.5, 2.0])));
    let tensors = [
        ("t.q8", vec![32u64, 2], GgmlType::Q8_0),
        ("t.f32", vec![3, 2, 2], GgmlType::F32),
        ("t.f16", vec![5], GgmlType::F16),
    ];
    for (name, dims, ty) in &tensors {
        w.add_tensor(name, dims, *ty).unwrap();
    }
    w.write_header().unwrap();
    for (i, (name, _, _)) in tensors.iter().enumerate() {
        let n = w.tensors()[i].n_bytes as usize;
        w.write_tensor_data(name, &vec![i as u8; n]).unwrap();
    }
    w.finish().unwrap()
}

/// Uses everything an accepted file offers, as a model loader would.
fn exercise(g: &Gguf) {
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes, "{}", t.name);
        assert!(t.n_elements() >= 1 && t.rows() * t.cols() == t.n_elements());
        assert!(std::ptr::eq(g.tensor(&t.name).unwrap(), t));
    }
    for (k, v) in g.metadata() {
        assert!(std::ptr::eq(g.get(k).unwrap(), v), "{k}");
        let _ = (g.get_u64(k), g.get_u32(k), g.get_i64(k), g.get_f32(k));
        let _ = (g.get_bool(k), g.get_str(k), g.get_str_array(k));
        let _ = (g.get_i32_array(k), g.get_f32_array(k));
        let _ = (v.to_string(), v.type_name());
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    4,
    5,
    31,
    64,
    0xFF,
    1 << 31,
    1 << 32,
    1 << 63,
    u64::MAX,
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len() as u64;
        match rng.below(6) {
            0 | 1 => {
                if let Some(x) = b.get_mut(rng.below(len) as usize) {
                    *x = rng.next() as u8;
                }
            }
            2 => {
                // Plant an extreme value over a (likely) count, length, dim or offset field.
                let at = rng.below(len) as usize;
                let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                for (i, byte) in v.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *byte;
                    }
                }
            }
            3 => b.truncate(rng.below(len + 1) as usize),
            4 => {
                let at = rng.below(len + 1) as usize;
                let n = 1 + rng.below(16) as usize;
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, ins);
            }
            _ => {
                let at = rng.below(len + 1) as usize;
                let end = (at + 1 + rng.below(16) as usize).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
        }
    }
    b
}

#[test]
fn random_mutations_never_panic() {
    let bases = [writer_file(), RawFile::valid().bytes()];
    for base in &bases {
        exercise(&Gguf::from_bytes(base.clone()).unwrap());
    }
    let mut rng = Rng(0x5EED_2025_0125_0001);
    let (mut ok, mut err) = (0u32, 0u32);
    for i in 0..200_000 {
        let base = &bases[i % bases.len()];
        let bytes = mutate(&mut rng, base);
        match Gguf::from_bytes(bytes) {
            Ok(g) => {
                exercise(&g);
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                err += 1;
            }
        }
    }
    eprintln!("random mutations: {ok} accepted, {err} rejected");
    assert!(err > 150_000, "most mutations should be caught: {err}");
}

#[test]
fn every_single_byte_value_at_every_header_position() {
    // Exhaustive over the header and metadata of the small raw file.
    let f = RawFile::valid();
    let base = f.bytes();
    let end = f.header_and_infos().len();
    for pos in 0..end {
        for v in [0u8, 1, 0x7F, 0x80, 0xFF] {
            let mut b = base.clone();
            b[pos] = v;
            if let Ok(g) = Gguf::from_bytes(b) {
                exercise(&g);
            }
        }
    }
}
