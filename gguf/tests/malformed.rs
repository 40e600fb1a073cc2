//! One malformed file per class of defect, each made by mutating a valid file,
//! each rejected with the right error and a message that names the problem.
//!
//! Set `RAVEN_GGUF_DUMP_MALFORMED=DIR` to also write every file to DIR (for
//! trying them on the command line).

mod common;

use common::*;
use raven_gguf::{Gguf, GgufError};

/// Parses `bytes`, expecting failure; returns the error and checks its message.
fn reject(test: &str, bytes: Vec<u8>, parts: &[&str]) -> GgufError {
    if let Some(dir) = std::env::var_os("RAVEN_GGUF_DUMP_MALFORMED") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{test}.gguf")), &bytes).unwrap();
    }
    let e = match Gguf::from_bytes(bytes) {
        Ok(_) => panic!("{test}: malformed file was accepted"),
        Err(e) => e,
    };
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "{test}: message {msg:?} lacks {p:?}");
    }
    e
}

fn with_kv(key: &str, ty: u32, payload: &[u8]) -> RawFile {
    let mut f = RawFile::valid();
    f.kvs.push(kv(key, ty, payload));
    f
}

#[test]
fn valid_base_file_is_accepted() {
    let f = RawFile::valid();
    let g = Gguf::from_bytes(f.bytes()).unwrap();
    assert_eq!(g.tensors().len(), 2);
    assert_eq!(g.data_offset() as usize, f.data_offset());
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens").unwrap()[2],
        "wörld"
    );
    let b = g.tensor("b").unwrap();
    assert_eq!((b.n_bytes, b.offset), (68, 64));
    assert_eq!(g.tensor_data(b), &f.data[64..132]);
}

#[test]
fn rejects_empty_file() {
    let e = reject("rejects_empty_file", vec![], &["truncated", "magic"]);
    assert!(matches!(e, GgufError::Truncated { .. }));
}

#[test]
fn rejects_bad_magic() {
    let mut f = RawFile::valid();
    f.magic = *b"GGML";
    let e = reject("rejects_bad_magic", f.bytes(), &["not a GGUF file"]);
    assert!(matches!(e, GgufError::BadMagic { .. }));
}

#[test]
fn rejects_version_1() {
    let mut f = RawFile::valid();
    f.version = 1;
    let e = reject(
        "rejects_version_1",
        f.bytes(),
        &["version 1", "no longer supported"],
    );
    assert!(matches!(
        e,
        GgufError::UnsupportedVersion { version: 1, .. }
    ));
}

#[test]
fn rejects_future_version() {
    let mut f = RawFile::valid();
    f.version = 4;
    let e = reject(
        "rejects_future_version",
        f.bytes(),
        &["version 4", "2 and 3"],
    );
    assert!(matches!(
        e,
        GgufError::UnsupportedVersion { version: 4, .. }
    ));
}

#[test]
fn rejects_big_endian_file() {
    let mut f = RawFile::valid();
    f.version = 3u32.swap_bytes();
    reject("rejects_big_endian_file", f.bytes(), &["big-endian"]);
}

#[test]
fn accepts_version_2() {
    let mut f = RawFile::valid();
    f.version = 2;
    assert_eq!(Gguf::from_bytes(f.bytes()).unwrap().version(), 2);
}

#[test]
fn rejects_truncated_header() {
    let bytes = RawFile::valid().bytes()[..13].to_vec();
    let e = reject(
        "rejects_truncated_header",
        bytes,
        &["truncated", "tensor count"],
    );
    assert!(matches!(e, GgufError::Truncated { offset: 8, .. }));
}

#[test]
fn rejects_huge_tensor_count() {
    let mut f = RawFile::valid();
    f.n_tensors = Some(u64::MAX / 2);
    let e = reject("rejects_huge_tensor_count", f.bytes(), &["tensor count"]);
    assert!(matches!(e, GgufError::CountTooLarge { .. }));
}

#[test]
fn rejects_tensor_count_larger_than_rest_of_file() {
    // Plausible by header size alone, impossible after the metadata.
    let mut f = RawFile::valid();
    f.n_tensors = Some(f.bytes().len() as u64 / 25);
    let e = reject(
        "rejects_tensor_count_larger_than_rest_of_file",
        f.bytes(),
        &["tensor count"],
    );
    assert!(matches!(e, GgufError::CountTooLarge { .. }));
}

#[test]
fn rejects_huge_kv_count() {
    let mut f = RawFile::valid();
    f.n_kv = Some(1 << 40);
    let e = reject(
        "rejects_huge_kv_count",
        f.bytes(),
        &["key-value count", "1099511627776"],
    );
    assert!(matches!(e, GgufError::CountTooLarge { .. }));
}

#[test]
fn rejects_huge_key_length() {
    let mut f = RawFile::valid();
    f.kvs[0][..8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let e = reject(
        "rejects_huge_key_length",
        f.bytes(),
        &["length of metadata key #0"],
    );
    assert!(matches!(e, GgufError::CountTooLarge { .. }));
}

#[test]
fn rejects_huge_string_value_length() {
    let mut payload = (1u64 << 33).to_le_bytes().to_vec();
    payload.extend_from_slice(b"abc");
    let f = with_kv("general.name", STR, &payload);
    reject(
        "rejects_huge_string_value_length",
        f.bytes(),
        &["length of value of key 'general.name'"],
    );
}

#[test]
fn rejects_huge_array_length() {
    let f = with_kv("x.scores", ARRAY, &arr(F32, 1 << 61, &[0; 8]));
    let e = reject(
        "rejects_huge_array_length",
        f.bytes(),
        &["length of array 'x.scores'"],
    );
    assert!(matches!(e, GgufError::CountTooLarge { min_bytes: 4, .. }));
}

#[test]
fn rejects_string_array_longer_than_file() {
    // A count a small file could never hold, for 8-byte-minimum elements.
    let f = with_kv("x.tokens", ARRAY, &arr(STR, 1_000_000, &gstr(b"a")));
    let e = reject(
        "rejects_string_array_longer_than_file",
        f.bytes(),
        &["x.tokens"],
    );
    assert!(matches!(e, GgufError::CountTooLarge { min_bytes: 8, .. }));
}

#[test]
fn rejects_truncated_string_array_element() {
    // The count fits the remaining bytes, but an element's string runs past the end.
    let mut elems = gstr(b"ok");
    elems.extend_from_slice(&1000u64.to_le_bytes());
    let mut f = RawFile::valid();
    f.tensors.clear();
    f.data.clear();
    f.kvs.push(kv("x.tokens", ARRAY, &arr(STR, 2, &elems)));
    let bytes = f.header_and_infos();
    reject(
        "rejects_truncated_string_array_element",
        bytes,
        &["element 1 of array 'x.tokens'"],
    );
}

#[test]
fn rejects_non_utf8_key() {
    let mut f = RawFile::valid();
    f.kvs.push(kv("ok", U8, &[1]));
    let last = f.kvs.last_mut().unwrap();
    last[8] = 0xFF;
    let e = reject(
        "rejects_non_utf8_key",
        f.bytes(),
        &["metadata key #6", "UTF-8"],
    );
    assert!(matches!(e, GgufError::InvalidUtf8 { .. }));
}

#[test]
fn rejects_non_utf8_string_value() {
    let f = with_kv("general.name", STR, &gstr(&[b'a', 0xC3, 0x28]));
    let e = reject(
        "rejects_non_utf8_string_value",
        f.bytes(),
        &["key 'general.name'", "UTF-8"],
    );
    assert!(matches!(e, GgufError::InvalidUtf8 { .. }));
}

#[test]
fn rejects_non_utf8_tensor_name() {
    let mut f = RawFile::valid();
    f.tensors[1].name = vec![b'b', 0x80];
    let e = reject(
        "rejects_non_utf8_tensor_name",
        f.bytes(),
        &["name of tensor #1", "UTF-8"],
    );
    assert!(matches!(e, GgufError::InvalidUtf8 { .. }));
}

#[test]
fn rejects_empty_key() {
    let f = with_kv("", U8, &[1]);
    let e = reject("rejects_empty_key", f.bytes(), &["key #6 is empty"]);
    assert!(matches!(e, GgufError::EmptyKey { index: 6, .. }));
}

#[test]
fn rejects_duplicate_key() {
    let f = with_kv("huginn.block_count", U32, &9u32.to_le_bytes());
    let e = reject(
        "rejects_duplicate_key",
        f.bytes(),
        &["duplicate", "'huginn.block_count'"],
    );
    assert!(matches!(e, GgufError::DuplicateKey { .. }));
}

#[test]
fn rejects_unknown_value_type() {
    let f = with_kv("x.weird", 13, &[0; 8]);
    let e = reject(
        "rejects_unknown_value_type",
        f.bytes(),
        &["'x.weird'", "type id 13"],
    );
    assert!(matches!(e, GgufError::UnknownValueType { type_id: 13, .. }));
}

#[test]
fn rejects_unknown_array_element_type() {
    let f = with_kv("x.arr", ARRAY, &arr(0xFFFF_FFFF, 1, &[0; 8]));
    let e = reject(
        "rejects_unknown_array_element_type",
        f.bytes(),
        &["'x.arr'", "4294967295"],
    );
    assert!(matches!(e, GgufError::UnknownValueType { .. }));
}

#[test]
fn rejects_invalid_bool() {
    let f = with_kv("x.flag", BOOL, &[2]);
    let e = reject("rejects_invalid_bool", f.bytes(), &["'x.flag'", "byte 2"]);
    assert!(matches!(e, GgufError::InvalidBool { byte: 2, .. }));
    let f = with_kv("x.flags", ARRAY, &arr(BOOL, 3, &[0, 1, 7]));
    reject(
        "rejects_invalid_bool_in_array",
        f.bytes(),
        &["'x.flags'", "byte 7"],
    );
}

#[test]
fn rejects_nested_array_too_deep() {
    // Five levels of arrays, each holding one array; the innermost holds one u8.
    let mut body = arr(U8, 1, &[42]);
    for _ in 0..4 {
        body = arr(ARRAY, 1, &body);
    }
    let f = with_kv("x.deep", ARRAY, &body);
    let e = reject(
        "rejects_nested_array_too_deep",
        f.bytes(),
        &["'x.deep'", "nested"],
    );
    assert!(matches!(e, GgufError::ArrayTooDeep { .. }));

    // Four levels are fine.
    let mut body = arr(U8, 1, &[42]);
    for _ in 0..3 {
        body = arr(ARRAY, 1, &body);
    }
    Gguf::from_bytes(with_kv("x.deep", ARRAY, &body).bytes()).unwrap();
}

#[test]
fn rejects_alignment_zero() {
    let f = with_kv("general.alignment", U32, &0u32.to_le_bytes());
    let e = reject(
        "rejects_alignment_zero",
        f.bytes(),
        &["general.alignment", "found u32 0"],
    );
    assert!(matches!(e, GgufError::BadAlignment { .. }));
}

#[test]
fn rejects_alignment_not_power_of_two() {
    let f = with_kv("general.alignment", U32, &48u32.to_le_bytes());
    reject(
        "rejects_alignment_not_power_of_two",
        f.bytes(),
        &["power of two", "found u32 48"],
    );
}

#[test]
fn rejects_alignment_wrong_type() {
    let f = with_kv("general.alignment", U64, &32u64.to_le_bytes());
    reject(
        "rejects_alignment_wrong_type",
        f.bytes(),
        &["of type u32", "found u64 32"],
    );
}

#[test]
fn rejects_too_many_dims() {
    let mut f = RawFile::valid();
    f.tensors[0] = RawTensor::new("a", &[8, 2, 1, 1, 1], 0, 0);
    let e = reject(
        "rejects_too_many_dims",
        f.bytes(),
        &["tensor 'a'", "5 dimensions"],
    );
    assert!(matches!(e, GgufError::TooManyDims { n_dims: 5, .. }));
    // A huge dimension count is caught before reading dimensions.
    let mut f = RawFile::valid();
    f.tensors[0].n_dims = u32::MAX;
    reject(
        "rejects_huge_dim_count",
        f.bytes(),
        &["4294967295 dimensions"],
    );
}

#[test]
fn rejects_zero_dim() {
    let mut f = RawFile::valid();
    f.tensors[0].dims[1] = 0;
    let e = reject(
        "rejects_zero_dim",
        f.bytes(),
        &["tensor 'a'", "dimension 1 is 0"],
    );
    assert!(matches!(
        e,
        GgufError::BadDim {
            index: 1,
            value: 0,
            ..
        }
    ));
}

#[test]
fn rejects_negative_dim() {
    let mut f = RawFile::valid();
    f.tensors[0].dims[0] = (-8i64) as u64;
    let e = reject(
        "rejects_negative_dim",
        f.bytes(),
        &["tensor 'a'", "dimension 0"],
    );
    assert!(matches!(e, GgufError::BadDim { index: 0, .. }));
}

#[test]
fn rejects_element_count_overflow() {
    let mut f = RawFile::valid();
    f.tensors[0].dims = vec![1 << 32, 1 << 32, 1 << 32];
    f.tensors[0].n_dims = 3;
    let e = reject(
        "rejects_element_count_overflow",
        f.bytes(),
        &["tensor 'a'", "too large"],
    );
    assert!(matches!(e, GgufError::ShapeOverflow { .. }));
}

#[test]
fn rejects_byte_count_overflow() {
    // 2^61 f64 elements fit in i64, but 2^64 bytes do not fit in u64.
    let mut f = RawFile::valid();
    f.tensors[0] = RawTensor::new("a", &[1 << 31, 1 << 30], 28, 0);
    let e = reject(
        "rejects_byte_count_overflow",
        f.bytes(),
        &["tensor 'a'", "too large"],
    );
    assert!(matches!(e, GgufError::ShapeOverflow { .. }));
}

#[test]
fn rejects_unknown_tensor_type() {
    let mut f = RawFile::valid();
    f.tensors[1].ty = 99;
    let e = reject(
        "rejects_unknown_tensor_type",
        f.bytes(),
        &["tensor 'b'", "type id 99"],
    );
    assert!(matches!(
        e,
        GgufError::UnknownTensorType { type_id: 99, .. }
    ));
}

#[test]
fn rejects_removed_tensor_types() {
    for id in [4u32, 5, 31, 32, 33] {
        let mut f = RawFile::valid();
        f.tensors[1].ty = id;
        let e = reject(
            &format!("rejects_removed_tensor_type_{id}"),
            f.bytes(),
            &["removed", &format!("type id {id}")],
        );
        assert!(matches!(e, GgufError::UnknownTensorType { .. }));
    }
}

#[test]
fn rejects_row_not_whole_blocks() {
    let mut f = RawFile::valid();
    f.tensors[1].dims[0] = 33;
    let e = reject(
        "rejects_row_not_whole_blocks",
        f.bytes(),
        &["tensor 'b'", "row length 33", "q8_0 block size 32"],
    );
    assert!(matches!(e, GgufError::RowNotWholeBlocks { .. }));
}

#[test]
fn rejects_misaligned_tensor_offset() {
    let mut f = RawFile::valid();
    f.tensors[1].offset = 65;
    let e = reject(
        "rejects_misaligned_tensor_offset",
        f.bytes(),
        &["tensor 'b'", "offset 65", "alignment 32"],
    );
    assert!(matches!(e, GgufError::MisalignedTensor { .. }));
}

#[test]
fn rejects_tensor_offset_past_end() {
    let mut f = RawFile::valid();
    f.tensors[1].offset = 1 << 20;
    let e = reject(
        "rejects_tensor_offset_past_end",
        f.bytes(),
        &["tensor 'b'", "runs past the end of the file"],
    );
    assert!(matches!(e, GgufError::TensorPastEnd { .. }));
}

#[test]
fn rejects_tensor_offset_overflow() {
    let mut f = RawFile::valid();
    f.tensors[1].offset = !31; // the largest aligned u64
    let e = reject(
        "rejects_tensor_offset_overflow",
        f.bytes(),
        &["tensor 'b'", "past the end"],
    );
    assert!(matches!(e, GgufError::TensorPastEnd { .. }));
}

#[test]
fn rejects_truncated_tensor_data() {
    let f = RawFile::valid();
    let mut bytes = f.bytes();
    bytes.truncate(f.data_offset() + 100); // `b` needs up to data + 132
    let e = reject(
        "rejects_truncated_tensor_data",
        bytes,
        &["tensor 'b'", "(68 bytes)"],
    );
    assert!(matches!(e, GgufError::TensorPastEnd { .. }));
}

#[test]
fn rejects_overlapping_tensors() {
    let mut f = RawFile::valid();
    f.tensors[1].offset = 32; // `a` covers 0..64
    let e = reject(
        "rejects_overlapping_tensors",
        f.bytes(),
        &["tensor 'b'", "overlaps tensor 'a'"],
    );
    assert!(matches!(e, GgufError::TensorOverlap { .. }));
}

#[test]
fn accepts_tensors_out_of_order_without_overlap() {
    let mut f = RawFile::valid();
    f.tensors[0].offset = 96;
    f.tensors[1].offset = 0;
    f.data.resize(160, 0);
    let g = Gguf::from_bytes(f.bytes()).unwrap();
    assert_eq!(g.tensor("a").unwrap().offset, 96);
}

#[test]
fn rejects_duplicate_tensor_names() {
    let mut f = RawFile::valid();
    f.tensors[1].name = b"a".to_vec();
    let e = reject(
        "rejects_duplicate_tensor_names",
        f.bytes(),
        &["duplicate tensor name 'a'"],
    );
    assert!(matches!(e, GgufError::DuplicateTensor { .. }));
}

#[test]
fn rejects_empty_tensor_name() {
    let mut f = RawFile::valid();
    f.tensors[1].name.clear();
    let e = reject(
        "rejects_empty_tensor_name",
        f.bytes(),
        &["tensor #1 has an empty name"],
    );
    assert!(matches!(e, GgufError::EmptyTensorName { index: 1, .. }));
}

#[test]
fn rejects_truncation_anywhere() {
    // Every strict prefix that cuts into the header, metadata, tensor table or
    // tensor data is an error (prefixes that only drop trailing padding are fine).
    let f = RawFile::valid();
    let bytes = f.bytes();
    let needed = f.data_offset() + 132;
    for len in 0..bytes.len() {
        let r = Gguf::from_bytes(bytes[..len].to_vec());
        if len < needed {
            let e = r.expect_err("truncated file accepted");
            if len < f.header_and_infos().len() {
                assert!(
                    matches!(
                        e,
                        GgufError::Truncated { .. } | GgufError::CountTooLarge { .. }
                    ),
                    "cut at {len}: {e}"
                );
            } else {
                assert!(
                    matches!(e, GgufError::TensorPastEnd { .. }),
                    "cut at {len}: {e}"
                );
            }
        } else {
            r.unwrap();
        }
    }
}

#[test]
fn rejects_truncated_metadata_value() {
    // Cut two bytes into the u32 value of the second key (of two, no tensors).
    let mut f = RawFile::valid();
    f.kvs.truncate(2);
    f.tensors.clear();
    let cut = 24 + f.kvs[0].len() + f.kvs[1].len() - 2;
    let e = reject(
        "rejects_truncated_metadata_value",
        f.bytes()[..cut].to_vec(),
        &[
            "truncated file",
            "value of key 'huginn.block_count'",
            "needs 4 bytes but only 2 remain",
        ],
    );
    assert!(matches!(e, GgufError::Truncated { .. }));
}

#[test]
fn error_names_the_file_when_opened_from_a_path() {
    let mut f = RawFile::valid();
    f.tensors[1].offset = 1 << 20;
    let path = temp_path("past-end.gguf");
    std::fs::write(&path, f.bytes()).unwrap();
    for r in [Gguf::open(&path), Gguf::read(&path)] {
        let e = r.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{}: tensor 'b': data at offset", path.display())),
            "{msg}"
        );
        assert_eq!(e.path(), Some(path.as_path()));
    }
    let missing = temp_path("does-not-exist.gguf");
    let msg = Gguf::open(&missing).unwrap_err().to_string();
    assert!(msg.contains("does-not-exist.gguf: cannot open"), "{msg}");
    std::fs::remove_file(&path).unwrap();
}
