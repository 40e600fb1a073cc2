//! Inputs found by fuzzing (fuzz/README.md, target `gguf_reader`), each named after what it
//! exercised. Files are under tests/data/regressions/ or inline.

use raven_gguf::Gguf;

/// A 162-byte file without tensors declaring `general.alignment` = 1 GiB is valid: the reader
/// takes it without allocating for the (empty) data section, whose aligned start lies past the
/// end of the file. (Found when the fuzz target rewrote the file with `GgufWriter`, which pads
/// the header to the alignment: 1 GiB of zeros.)
#[test]
fn alignment_1gib_without_tensors_is_read_without_allocating() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/regressions/alignment_1gib_without_tensors.gguf");
    let bytes = std::fs::read(&path).expect("regression file");
    assert_eq!(bytes.len(), 162);
    for g in [
        Gguf::from_bytes(bytes).expect("valid"),
        Gguf::read(&path).expect("valid"),
        Gguf::open(&path).expect("valid"),
    ] {
        assert_eq!(g.alignment(), 1 << 30);
        assert!(g.tensors().is_empty());
        assert_eq!(g.data_offset(), 1 << 30);
        assert_eq!(g.file_len(), 162);
        assert_eq!(g.get_u32("general.alignment").expect("key"), 1 << 30);
    }
}

/// Version 3, no tensors, no metadata, then 4 stray bytes: the data section would start at 32,
/// past the 28-byte file. Valid (nothing is read from it); the fuzz harness first assumed
/// `data_offset() <= file_len()` for every accepted file.
#[test]
fn file_without_tensors_may_end_before_its_data_offset() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes()); // tensors
    bytes.extend_from_slice(&0u64.to_le_bytes()); // metadata
    bytes.extend_from_slice(b"+\0\0\0");
    let g = Gguf::from_bytes(bytes).expect("valid");
    assert_eq!((g.data_offset(), g.file_len()), (32, 28));
    assert!(g.tensors().is_empty() && g.metadata().is_empty());
}
