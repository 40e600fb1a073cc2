//! Interoperability with gguf-py (`pip install gguf`), the reference Python
//! implementation: it reads what we write, and we read what it writes. Tests that
//! need Python print a note and pass when `python3 -c 'import gguf'` fails.

mod common;

use std::path::{Path, PathBuf};

use common::{have_gguf_py, run_python, temp_path};
use raven_gguf::{Array, GgmlType, Gguf, GgufWriter, TensorInfo, Value};

/// Tensor `i`'s test pattern (the Python check recomputes it).
fn pattern(i: usize, n: u64) -> Vec<u8> {
    (0..n as usize)
        .map(|j| ((j * 31 + i * 17) % 256) as u8)
        .collect()
}

const OUR_TENSORS: [(&str, &[u64], GgmlType); 6] = [
    ("token_embd.weight", &[64, 3], GgmlType::Q8_0),
    ("output_norm.weight", &[5], GgmlType::F32),
    ("blk.0.attn_qkv.weight", &[32, 2, 2], GgmlType::Q4_0),
    ("blk.0.ffn_up.weight", &[7, 3], GgmlType::F16),
    ("adapter.weight", &[4, 2], GgmlType::BF16),
    ("ids", &[3, 1, 1, 2], GgmlType::I32),
];

fn write_our_file(path: &Path) -> Gguf {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut w = GgufWriter::new(file);
    w.add_kv("general.architecture", Value::Str("huginn".into()));
    w.add_kv("general.alignment", Value::U32(64));
    w.add_kv("x.u8", Value::U8(250));
    w.add_kv("x.i8", Value::I8(-7));
    w.add_kv("x.u16", Value::U16(65000));
    w.add_kv("x.i16", Value::I16(-32000));
    w.add_kv("x.u32", Value::U32(4_000_000_000));
    w.add_kv("x.i32", Value::I32(-123456));
    w.add_kv("x.f32", Value::F32(0.25));
    w.add_kv("x.bool", Value::Bool(true));
    w.add_kv("x.str", Value::Str("wörld ✓".into()));
    w.add_kv("x.u64", Value::U64((1 << 63) + 5));
    w.add_kv("x.i64", Value::I64(-(1 << 40)));
    w.add_kv("x.f64", Value::F64(0.1));
    w.add_kv("a.u8", Value::Array(Array::U8(vec![1, 2, 255])));
    w.add_kv("a.i8", Value::Array(Array::I8(vec![-1, 2])));
    w.add_kv("a.u16", Value::Array(Array::U16(vec![3, 65535])));
    w.add_kv("a.i16", Value::Array(Array::I16(vec![-3, 4])));
    w.add_kv("a.u32", Value::Array(Array::U32(vec![5, 6])));
    w.add_kv("a.i32", Value::Array(Array::I32(vec![3, 1, -1])));
    w.add_kv("a.f32", Value::Array(Array::F32(vec![0.0, -1.5, -2.25])));
    w.add_kv("a.bool", Value::Array(Array::Bool(vec![true, false])));
    w.add_kv(
        "a.str",
        Value::Array(Array::Str(vec!["<s>".into(), "Ġhello".into(), "".into()])),
    );
    w.add_kv("a.u64", Value::Array(Array::U64(vec![u64::MAX])));
    w.add_kv("a.i64", Value::Array(Array::I64(vec![i64::MIN, 7])));
    w.add_kv("a.f64", Value::Array(Array::F64(vec![1e300])));
    for (name, dims, ty) in OUR_TENSORS {
        w.add_tensor(name, dims, ty).unwrap();
    }
    let infos: Vec<TensorInfo> = w.tensors().to_vec();
    w.write_header().unwrap();
    for (i, t) in infos.iter().enumerate() {
        w.write_tensor_data(&t.name, &pattern(i, t.n_bytes))
            .unwrap();
    }
    drop(w.finish().unwrap());
    Gguf::open(path).unwrap()
}

const CHECK_OUR_FILE: &str = r#"
import sys
from gguf import GGUFReader, GGUFValueType as T, GGMLQuantizationType as Q
path, data_offset = sys.argv[1], int(sys.argv[2])
r = GGUFReader(path)
assert r.alignment == 64, r.alignment
assert r.data_offset == data_offset, (r.data_offset, data_offset)
want = {
    "general.architecture": ([T.STRING], "huginn"),
    "general.alignment": ([T.UINT32], 64),
    "x.u8": ([T.UINT8], 250), "x.i8": ([T.INT8], -7),
    "x.u16": ([T.UINT16], 65000), "x.i16": ([T.INT16], -32000),
    "x.u32": ([T.UINT32], 4000000000), "x.i32": ([T.INT32], -123456),
    "x.f32": ([T.FLOAT32], 0.25), "x.bool": ([T.BOOL], True),
    "x.str": ([T.STRING], "wörld ✓"), "x.u64": ([T.UINT64], 2**63 + 5),
    "x.i64": ([T.INT64], -(2**40)), "x.f64": ([T.FLOAT64], 0.1),
    "a.u8": ([T.ARRAY, T.UINT8], [1, 2, 255]), "a.i8": ([T.ARRAY, T.INT8], [-1, 2]),
    "a.u16": ([T.ARRAY, T.UINT16], [3, 65535]), "a.i16": ([T.ARRAY, T.INT16], [-3, 4]),
    "a.u32": ([T.ARRAY, T.UINT32], [5, 6]), "a.i32": ([T.ARRAY, T.INT32], [3, 1, -1]),
    "a.f32": ([T.ARRAY, T.FLOAT32], [0.0, -1.5, -2.25]),
    "a.bool": ([T.ARRAY, T.BOOL], [True, False]),
    "a.str": ([T.ARRAY, T.STRING], ["<s>", "Ġhello", ""]),
    "a.u64": ([T.ARRAY, T.UINT64], [2**64 - 1]),
    "a.i64": ([T.ARRAY, T.INT64], [-(2**63), 7]), "a.f64": ([T.ARRAY, T.FLOAT64], [1e300]),
}
assert list(r.fields) == ["GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"] + list(want), list(r.fields)
for key, (types, value) in want.items():
    f = r.fields[key]
    assert f.types == types, (key, f.types)
    assert f.contents() == value, (key, f.contents(), value)
tensors = [
    ("token_embd.weight", [64, 3], Q.Q8_0), ("output_norm.weight", [5], Q.F32),
    ("blk.0.attn_qkv.weight", [32, 2, 2], Q.Q4_0), ("blk.0.ffn_up.weight", [7, 3], Q.F16),
    ("adapter.weight", [4, 2], Q.BF16), ("ids", [3, 1, 1, 2], Q.I32),
]
assert len(r.tensors) == len(tensors)
for i, (t, (name, shape, ty)) in enumerate(zip(r.tensors, tensors)):
    assert (t.name, t.shape.tolist(), t.tensor_type) == (name, shape, ty), (t.name, t.shape, t.tensor_type)
    assert t.data_offset % 64 == 0
    data = t.data.tobytes()
    assert len(data) == t.n_bytes
    assert data == bytes((j * 31 + i * 17) % 256 for j in range(t.n_bytes)), name
    print(name, t.data_offset, t.n_bytes)
print("OK")
"#;

#[test]
fn gguf_py_reads_what_we_write() {
    if !have_gguf_py("gguf_py_reads_what_we_write") {
        return;
    }
    let path = temp_path("ours-for-gguf-py.gguf");
    let g = write_our_file(&path);
    let out = run_python(
        CHECK_OUR_FILE,
        &[path.to_str().unwrap(), &g.data_offset().to_string()],
    );
    assert!(out.ends_with("OK\n"), "{out}");
    // gguf-py's absolute data offsets and sizes are ours.
    for (line, t) in out.lines().zip(g.tensors()) {
        let want = format!("{} {} {}", t.name, g.data_offset() + t.offset, t.n_bytes);
        assert_eq!(line, want);
    }
    std::fs::remove_file(&path).unwrap();
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Checks a file made by `tests/data/make_gguf_py_file.py`.
fn check_gguf_py_file(g: &Gguf) {
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.get_str("general.architecture").unwrap(), "huginn");
    assert_eq!(g.get_str("general.name").unwrap(), "tiny-huginn");
    assert_eq!(g.get("x.u8"), Some(&Value::U8(250)));
    assert_eq!(g.get("x.i8"), Some(&Value::I8(-7)));
    assert_eq!(g.get("x.u16"), Some(&Value::U16(65000)));
    assert_eq!(g.get("x.i16"), Some(&Value::I16(-32000)));
    assert_eq!(g.get_u32("huginn.block_count").unwrap(), 8);
    assert_eq!(g.get("x.i32"), Some(&Value::I32(-123456)));
    assert_eq!(g.get_f32("huginn.rope.freq_base").unwrap(), 50000.0);
    assert!(g.get_bool("huginn.attention.qk_bias").unwrap());
    assert_eq!(g.get_u64("x.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(g.get_i64("x.i64").unwrap(), -(1 << 40));
    assert_eq!(g.get("x.f64"), Some(&Value::F64(0.1)));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<|begin_text|>", "Ġhello", "wörld"]
    );
    assert_eq!(
        g.get_i32_array("tokenizer.ggml.token_type").unwrap(),
        [3, 1, 1]
    );
    assert_eq!(
        g.get_f32_array("tokenizer.ggml.scores").unwrap(),
        [0.0, -1.5, -2.25]
    );
    assert_eq!(
        g.get("x.u64s"),
        Some(&Value::Array(Array::U64(vec![1, u64::MAX])))
    );
    assert_eq!(
        g.get("x.bools"),
        Some(&Value::Array(Array::Bool(vec![true, false])))
    );

    let shapes: Vec<(&str, &[u64], GgmlType)> = vec![
        ("output_norm.weight", &[3, 2], GgmlType::F32),
        ("blk.0.ffn_up.weight", &[8, 5], GgmlType::F16),
        ("ids", &[4, 1], GgmlType::I32),
        ("token_embd.weight", &[64, 2], GgmlType::Q8_0),
        ("adapter.weight", &[4], GgmlType::BF16),
    ];
    assert_eq!(g.tensors().len(), shapes.len());
    for (t, (name, dims, ty)) in g.tensors().iter().zip(shapes) {
        assert_eq!((t.name.as_str(), t.dims.as_slice(), t.ty), (name, dims, ty));
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
    }
    let f32s: Vec<f32> = g
        .tensor_data(g.tensor("output_norm.weight").unwrap())
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(f32s, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let ids = g.tensor_data(g.tensor("ids").unwrap());
    assert_eq!(ids, [(-1i32), 2, 3, 4].map(i32::to_le_bytes).concat());
    let bf16 = g.tensor_data(g.tensor("adapter.weight").unwrap());
    assert_eq!(
        bf16,
        [0u16, 0x3F80, 0x4000, 0x4040]
            .map(u16::to_le_bytes)
            .concat()
    );
}

#[test]
fn reads_committed_gguf_py_file() {
    let g = Gguf::open(&data_dir().join("gguf_py_writer.gguf")).unwrap();
    check_gguf_py_file(&g);
}

#[test]
fn reads_fresh_gguf_py_file_byte_for_byte() {
    if !have_gguf_py("reads_fresh_gguf_py_file_byte_for_byte") {
        return;
    }
    let path = temp_path("from-gguf-py.gguf");
    let script = std::fs::read_to_string(data_dir().join("make_gguf_py_file.py")).unwrap();
    let p = path.to_str().unwrap();
    // `python3 -c` puts "-c" in sys.argv[0], so the script sees the same arguments.
    run_python(&script, &[p, "--sidecars"]);
    let g = Gguf::read(&path).unwrap();
    check_gguf_py_file(&g);
    for t in g.tensors() {
        let side = PathBuf::from(format!("{p}.{}.bin", t.name));
        assert_eq!(
            g.tensor_data(t),
            std::fs::read(&side).unwrap(),
            "{}",
            t.name
        );
        std::fs::remove_file(side).unwrap();
    }
    // Our writer, given the same content, writes the same bytes as gguf-py.
    let mut w = GgufWriter::new(Vec::new());
    for (k, v) in g.metadata() {
        w.add_kv(k, v.clone());
    }
    for t in g.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty).unwrap();
    }
    w.write_header().unwrap();
    for t in g.tensors() {
        w.write_tensor_data(&t.name, g.tensor_data(t)).unwrap();
    }
    assert!(w.finish().unwrap() == std::fs::read(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
}
