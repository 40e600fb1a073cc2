//! Writer → reader round trips, typed getters, and writer misuse.

mod common;

use common::temp_path;
use raven_gguf::{Array, GgmlType, Gguf, GgufError, GgufWriter, Value};

fn every_value() -> Vec<(&'static str, Value)> {
    vec![
        ("v.u8", Value::U8(200)),
        ("v.i8", Value::I8(-100)),
        ("v.u16", Value::U16(60000)),
        ("v.i16", Value::I16(-30000)),
        ("v.u32", Value::U32(4_000_000_000)),
        ("v.i32", Value::I32(-2_000_000_000)),
        ("v.f32", Value::F32(1.5e-6)),
        ("v.bool", Value::Bool(true)),
        ("v.str", Value::Str("Grüße, 世界 \u{1F600}".into())),
        ("v.u64", Value::U64(u64::MAX)),
        ("v.i64", Value::I64(i64::MIN)),
        ("v.f64", Value::F64(std::f64::consts::PI)),
        ("a.u8", Value::Array(Array::U8(vec![0, 1, 255]))),
        ("a.i8", Value::Array(Array::I8(vec![-128, 0, 127]))),
        ("a.u16", Value::Array(Array::U16(vec![0, 65535]))),
        ("a.i16", Value::Array(Array::I16(vec![-32768, 32767]))),
        ("a.u32", Value::Array(Array::U32(vec![7, u32::MAX]))),
        ("a.i32", Value::Array(Array::I32(vec![-1, 0, 1, i32::MAX]))),
        ("a.f32", Value::Array(Array::F32(vec![-0.0, 1.0, f32::MAX]))),
        ("a.bool", Value::Array(Array::Bool(vec![true, false, true]))),
        (
            "a.str",
            Value::Array(Array::Str(vec!["".into(), "Ġthe".into(), "\n".into()])),
        ),
        ("a.u64", Value::Array(Array::U64(vec![u64::MAX, 0]))),
        ("a.i64", Value::Array(Array::I64(vec![i64::MIN, -1]))),
        ("a.f64", Value::Array(Array::F64(vec![1e300, -2.5]))),
        ("a.empty", Value::Array(Array::I32(vec![]))),
        (
            "a.nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::Str(vec!["x".into()]),
                Array::Array(vec![Array::F64(vec![0.5])]),
            ])),
        ),
    ]
}

/// A written tensor: name, dims, type, bytes.
type Written = (&'static str, Vec<u64>, GgmlType, Vec<u8>);

/// A file with every value type and tensors of several types; returns its bytes
/// and the tensor contents written.
fn sample(alignment: Option<u32>) -> (Vec<u8>, Vec<Written>) {
    let tensors = vec![
        ("token_embd.weight", vec![64, 3], GgmlType::Q8_0),
        ("output_norm.weight", vec![5], GgmlType::F32),
        ("blk.0.attn_qkv.weight", vec![32, 2], GgmlType::Q4_0),
        ("blk.0.ffn_up.weight", vec![7, 3], GgmlType::F16),
        ("blk.0.ffn_down.weight", vec![3, 2, 2], GgmlType::BF16),
        ("k.weight", vec![256], GgmlType::Q4K),
        ("ids", vec![3, 1, 1, 2], GgmlType::I32),
    ];
    let mut w = GgufWriter::new(Vec::new());
    if let Some(a) = alignment {
        w.add_kv("general.alignment", Value::U32(a));
    }
    for (k, v) in every_value() {
        w.add_kv(k, v);
    }
    let mut out = Vec::new();
    for (i, (name, dims, ty)) in tensors.into_iter().enumerate() {
        w.add_tensor(name, &dims, ty).unwrap();
        let n = w.tensors()[i].n_bytes as usize;
        let data: Vec<u8> = (0..n).map(|j| (j * 31 + i * 17) as u8).collect();
        out.push((name, dims, ty, data));
    }
    w.write_header().unwrap();
    for (name, _, _, data) in &out {
        w.write_tensor_data(name, data).unwrap();
    }
    (w.finish().unwrap(), out)
}

#[test]
fn every_value_type_round_trips() {
    let (bytes, _) = sample(None);
    let g = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    let want = every_value();
    assert_eq!(g.metadata().len(), want.len());
    for ((k, v), (k2, v2)) in g.metadata().iter().zip(&want) {
        assert_eq!(k, k2);
        assert_eq!(v, v2, "{k}");
        assert_eq!(g.get(k), Some(v2));
    }
}

#[test]
fn tensors_round_trip_with_alignment() {
    for alignment in [None, Some(1), Some(8), Some(64), Some(4096)] {
        let (bytes, written) = sample(alignment);
        let file_len = bytes.len() as u64;
        let g = Gguf::from_bytes(bytes).unwrap();
        let a = u64::from(alignment.unwrap_or(32));
        assert_eq!(g.alignment(), a);
        assert_eq!(g.data_offset() % a, 0);
        assert_eq!(g.file_len(), file_len);
        assert_eq!(g.tensors().len(), written.len());
        for (t, (name, dims, ty, data)) in g.tensors().iter().zip(&written) {
            assert_eq!((&t.name[..], &t.dims, t.ty), (*name, dims, *ty));
            assert_eq!(t.offset % a, 0);
            let bytes = g.tensor_data(t);
            assert_eq!(bytes, &data[..], "{name}");
            // Owned buffers are aligned like a map, so data is aligned to min(a, 64).
            assert_eq!(bytes.as_ptr() as u64 % a.min(64), 0, "{name}");
        }
        let t = g.tensor("blk.0.ffn_down.weight").unwrap();
        assert_eq!(
            (t.n_elements(), t.rows(), t.cols(), t.n_bytes),
            (12, 4, 3, 24)
        );
        let t = g.tensor("token_embd.weight").unwrap();
        assert_eq!((t.rows(), t.cols(), t.n_bytes), (3, 64, 3 * 2 * 34));
    }
}

#[test]
fn open_read_and_from_bytes_agree() {
    let (bytes, written) = sample(Some(64));
    let path = temp_path("agree.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let mapped = Gguf::open(&path).unwrap();
    let read = Gguf::read(&path).unwrap();
    let owned = Gguf::from_bytes(bytes).unwrap();
    assert!(mapped.is_mmap() && !read.is_mmap());
    assert_eq!(mapped.path(), Some(path.as_path()));
    assert_eq!(owned.path(), None);
    for g in [&read, &owned] {
        assert_eq!(g.metadata(), mapped.metadata());
        assert_eq!(g.tensors(), mapped.tensors());
        assert_eq!(g.data_offset(), mapped.data_offset());
    }
    for (name, _, _, data) in &written {
        for g in [&mapped, &read, &owned] {
            let t = g.get_tensor(name).unwrap();
            assert_eq!(g.tensor_data(t), &data[..]);
            assert_eq!(g.tensor_data(t).as_ptr() as usize % 64, 0);
        }
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn metadata_only_file() {
    let mut w = GgufWriter::new(Vec::new());
    w.add_kv("general.name", Value::Str("x".into()));
    let g = Gguf::from_bytes(w.finish().unwrap()).unwrap();
    assert!(g.tensors().is_empty());
    assert_eq!(g.get_str("general.name").unwrap(), "x");
}

#[test]
fn typed_getters_convert_and_explain() {
    let (bytes, _) = sample(None);
    let g = Gguf::from_bytes(bytes).unwrap();
    assert_eq!(g.get_u64("v.u8").unwrap(), 200);
    assert_eq!(g.get_u32("v.u16").unwrap(), 60000);
    assert_eq!(g.get_u32("v.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_u64("v.u64").unwrap(), u64::MAX);
    assert_eq!(g.get_i64("v.i8").unwrap(), -100);
    assert_eq!(g.get_i64("v.i64").unwrap(), i64::MIN);
    assert_eq!(g.get_i64("v.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_f32("v.f32").unwrap(), 1.5e-6);
    assert_eq!(g.get_f32("v.f64").unwrap(), std::f64::consts::PI as f32);
    assert!(g.get_bool("v.bool").unwrap());
    assert_eq!(g.get_str("v.str").unwrap(), "Grüße, 世界 \u{1F600}");
    assert_eq!(g.get_str_array("a.str").unwrap()[1], "Ġthe");
    assert_eq!(g.get_i32_array("a.i32").unwrap(), &[-1, 0, 1, i32::MAX]);
    assert_eq!(g.get_f32_array("a.f32").unwrap()[1], 1.0);
    assert_eq!(g.opt_u32("absent").unwrap(), None);
    assert_eq!(g.opt_str("v.str").unwrap(), Some("Grüße, 世界 \u{1F600}"));

    let e = g.get_u32("v.i32").unwrap_err();
    assert!(matches!(e, GgufError::WrongType { .. }));
    assert_eq!(
        e.to_string(),
        "metadata key 'v.i32': expected an integer in u32 range, found i32 -2000000000"
    );
    let e = g.get_u64("v.i8").unwrap_err().to_string();
    assert!(e.contains("found i8 -100"), "{e}");
    let e = g.get_i64("v.u64").unwrap_err().to_string();
    assert!(e.contains("found u64 18446744073709551615"), "{e}");
    let e = g.get_u32("v.f32").unwrap_err().to_string();
    assert!(e.contains("found f32"), "{e}");
    let e = g.get_f32("v.u8").unwrap_err().to_string();
    assert!(e.contains("expected a float"), "{e}");
    let e = g.get_str("a.str").unwrap_err().to_string();
    assert!(e.contains("found array of str [3 × str]"), "{e}");
    let e = g.get_str_array("a.i32").unwrap_err().to_string();
    assert!(
        e.contains("expected an array of str, found array of i32"),
        "{e}"
    );
    let e = g.get_bool("v.u8").unwrap_err().to_string();
    assert!(e.contains("expected a bool, found u8 200"), "{e}");
    let e = g.get_u32("huginn.block_count").unwrap_err();
    assert!(matches!(e, GgufError::MissingKey { .. }));
    assert_eq!(
        e.to_string(),
        "metadata key 'huginn.block_count' is missing"
    );
    let e = g.get_tensor("nope").unwrap_err().to_string();
    assert_eq!(e, "tensor 'nope' is missing");
}

#[test]
fn getters_name_the_file() {
    let (bytes, _) = sample(None);
    let path = temp_path("getters.gguf");
    std::fs::write(&path, bytes).unwrap();
    let g = Gguf::open(&path).unwrap();
    let e = g.get_u32("missing.key").unwrap_err().to_string();
    assert_eq!(
        e,
        format!("{}: metadata key 'missing.key' is missing", path.display())
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn tensor_data_of_a_foreign_tensor_info_is_empty_not_a_panic() {
    let (bytes, _) = sample(None);
    let g = Gguf::from_bytes(bytes).unwrap();
    let mut t = g.tensors()[0].clone();
    t.offset = u64::MAX - 3;
    assert!(g.tensor_data(&t).is_empty());
    t.offset = 0;
    t.n_bytes = u64::MAX;
    assert!(g.tensor_data(&t).is_empty());
}

#[test]
fn writer_streams_tensors_in_parts() {
    let mut w = GgufWriter::new(Vec::new());
    w.add_tensor("a", &[4, 4], GgmlType::F32).unwrap();
    w.add_tensor("b", &[3], GgmlType::F32).unwrap();
    w.write_header().unwrap();
    let a: Vec<u8> = (0..64).collect();
    for chunk in a.chunks(10) {
        w.write_tensor_part("a", chunk).unwrap();
    }
    w.write_tensor_part("b", &[9; 12]).unwrap();
    let g = Gguf::from_bytes(w.finish().unwrap()).unwrap();
    assert_eq!(g.tensor_data(g.tensor("a").unwrap()), &a[..]);
    assert_eq!(g.tensor_data(g.tensor("b").unwrap()), &[9; 12]);
    assert_eq!(g.tensor("b").unwrap().offset, 64);
}

#[test]
fn writer_rejects_misuse() {
    let msg = |e: GgufError| e.to_string();

    let mut w = GgufWriter::new(Vec::new());
    w.add_tensor("a", &[4], GgmlType::F32).unwrap();
    assert!(matches!(
        w.add_tensor("a", &[4], GgmlType::F32),
        Err(GgufError::DuplicateTensor { .. })
    ));
    assert!(matches!(
        w.add_tensor("q", &[33], GgmlType::Q8_0),
        Err(GgufError::RowNotWholeBlocks { .. })
    ));
    assert!(matches!(
        w.add_tensor("z", &[4, 0], GgmlType::F32),
        Err(GgufError::BadDim { .. })
    ));
    assert!(matches!(
        w.add_tensor("d", &[1, 1, 1, 1, 1], GgmlType::F32),
        Err(GgufError::TooManyDims { .. })
    ));
    assert!(matches!(
        w.add_tensor(&"x".repeat(64), &[1], GgmlType::F32),
        Err(GgufError::TensorNameTooLong { .. })
    ));
    assert!(matches!(
        w.add_tensor("", &[1], GgmlType::F32),
        Err(GgufError::EmptyTensorName { .. })
    ));
    assert!(msg(w.write_tensor_data("a", &[0; 16]).unwrap_err()).contains("before write_header"));
    w.add_tensor("b", &[2], GgmlType::F32).unwrap();
    w.write_header().unwrap();
    assert!(msg(w.add_tensor("c", &[1], GgmlType::F32).unwrap_err()).contains("after write_header"));
    let e = w.write_tensor_data("b", &[0; 8]).unwrap_err();
    assert!(msg(e).contains("got data of tensor 'b' but tensor 'a' comes next"));
    let e = w.write_tensor_data("a", &[0; 15]).unwrap_err();
    assert_eq!(msg(e), "GGUF writer: tensor 'a' needs 16 bytes, got 15");
    w.write_tensor_data("a", &[0; 16]).unwrap();
    let e = w.finish().unwrap_err();
    assert!(msg(e).contains("tensor 'b' is incomplete"));

    let mut w = GgufWriter::new(Vec::new());
    w.add_kv("k", Value::U8(1));
    w.add_kv("k", Value::U8(2));
    assert!(matches!(
        w.write_header(),
        Err(GgufError::DuplicateKey { .. })
    ));

    let mut w = GgufWriter::new(Vec::new());
    w.add_kv("general.alignment", Value::U32(24));
    assert!(matches!(w.finish(), Err(GgufError::BadAlignment { .. })));

    let mut w = GgufWriter::new(Vec::new());
    w.add_kv("general.alignment", Value::U64(32));
    assert!(matches!(w.finish(), Err(GgufError::BadAlignment { .. })));

    let mut deep = Array::U8(vec![1]);
    for _ in 0..4 {
        deep = Array::Array(vec![deep]);
    }
    let mut w = GgufWriter::new(Vec::new());
    w.add_kv("deep", Value::Array(deep));
    assert!(matches!(w.finish(), Err(GgufError::ArrayTooDeep { .. })));

    let mut w = GgufWriter::new(Vec::new());
    w.add_kv("", Value::U8(1));
    assert!(matches!(w.finish(), Err(GgufError::EmptyKey { .. })));
}

#[test]
fn writer_reports_io_errors() {
    struct Full;
    impl std::io::Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "disk full",
            ))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = GgufWriter::new(Full);
    w.add_kv("a", Value::U8(1));
    let e = w.write_header().unwrap_err();
    assert_eq!(e.to_string(), "cannot write GGUF data: disk full");
}

#[test]
fn alignment_set_after_tensors_is_applied() {
    let mut w = GgufWriter::new(Vec::new());
    w.add_tensor("a", &[3], GgmlType::F32).unwrap();
    w.add_tensor("b", &[3], GgmlType::F32).unwrap();
    w.add_kv("general.alignment", Value::U32(128));
    w.write_header().unwrap();
    w.write_tensor_data("a", &[1; 12]).unwrap();
    w.write_tensor_data("b", &[2; 12]).unwrap();
    let g = Gguf::from_bytes(w.finish().unwrap()).unwrap();
    assert_eq!(g.alignment(), 128);
    assert_eq!(g.data_offset() % 128, 0);
    assert_eq!(g.tensor("b").unwrap().offset, 128);
    assert_eq!(g.tensor_data(g.tensor("b").unwrap()), &[2; 12]);
}

#[test]
fn values_convert_from_rust_types_and_gguf_is_shareable() {
    assert_eq!(Value::from(3u32), Value::U32(3));
    assert_eq!(Value::from("x"), Value::Str("x".into()));
    assert_eq!(
        Value::from(vec![1i32, 2]),
        Value::Array(Array::I32(vec![1, 2]))
    );
    assert_eq!(
        Value::from(vec!["a".to_string()]),
        Value::Array(Array::Str(vec!["a".into()]))
    );
    fn shareable<T: Send + Sync>() {}
    shareable::<Gguf>();
    shareable::<GgufError>();
}
