//! The error type: every variant names the file (when known) and what is wrong.

use std::path::{Path, PathBuf};

use raven_quant::GgmlType;

/// Renders `"path: "` or nothing, as the prefix of every message.
fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

/// Why a GGUF file could not be read or written, or a metadata lookup failed.
///
/// `path` is the file concerned, when one is known (it is `None` for
/// [`Gguf::from_bytes`](crate::Gguf::from_bytes) and the writer).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Opening, mapping, reading or writing failed.
    #[error("{}{action}: {source}", at(.path))]
    Io {
        /// The file concerned.
        path: Option<PathBuf>,
        /// What was being done (`"cannot open"`, `"cannot write"` …).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error(
        "{}not a GGUF file: it starts with \"{}\", expected \"GGUF\"",
        at(.path),
        .found.escape_ascii()
    )]
    BadMagic {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The first four bytes (fewer if the file is shorter).
        found: Vec<u8>,
    },
    /// A GGUF version other than 2 or 3.
    #[error("{}unsupported GGUF version {version}: {}", at(.path), version_hint(*.version))]
    UnsupportedVersion {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The version field as read (little-endian).
        version: u32,
    },
    /// The file ends inside a header field, key, value or tensor info.
    #[error(
        "{}truncated file: {what} at offset {offset} needs {needed} bytes but only {available} remain",
        at(.path)
    )]
    Truncated {
        /// The file concerned.
        path: Option<PathBuf>,
        /// What was being read.
        what: String,
        /// Byte offset where it starts.
        offset: u64,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: u64,
    },
    /// A count or length field larger than the rest of the file could hold.
    #[error(
        "{}{what} at offset {offset} is {count}, but only {available} bytes remain \
         (each element needs at least {min_bytes}): the file is corrupt or truncated",
        at(.path)
    )]
    CountTooLarge {
        /// The file concerned.
        path: Option<PathBuf>,
        /// Which count (`"tensor count"`, `"length of key #3"` …).
        what: String,
        /// Byte offset of the count field.
        offset: u64,
        /// The count as read.
        count: u64,
        /// Bytes left in the file after the field.
        available: u64,
        /// The fewest bytes one counted item can take.
        min_bytes: u64,
    },
    /// A string that is not valid UTF-8.
    #[error("{}{what} at offset {offset} is not valid UTF-8", at(.path))]
    InvalidUtf8 {
        /// The file concerned.
        path: Option<PathBuf>,
        /// Which string.
        what: String,
        /// Byte offset of the string's bytes.
        offset: u64,
    },
    /// A metadata key of length zero.
    #[error("{}metadata key #{index} is empty", at(.path))]
    EmptyKey {
        /// The file concerned.
        path: Option<PathBuf>,
        /// Position of the key among the metadata.
        index: u64,
    },
    /// The same metadata key twice.
    #[error("{}duplicate metadata key '{key}'", at(.path))]
    DuplicateKey {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The key.
        key: String,
    },
    /// A value type id outside 0..=12.
    #[error("{}key '{key}': unknown value type id {type_id} at offset {offset}", at(.path))]
    UnknownValueType {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The key whose value it is.
        key: String,
        /// The type id as read.
        type_id: u32,
        /// Byte offset of the type field.
        offset: u64,
    },
    /// A boolean byte other than 0 or 1.
    #[error("{}key '{key}': boolean byte {byte} at offset {offset} is neither 0 nor 1", at(.path))]
    InvalidBool {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The key whose value it is.
        key: String,
        /// The byte as read.
        byte: u8,
        /// Its offset.
        offset: u64,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`](crate::MAX_ARRAY_DEPTH).
    #[error(
        "{}key '{key}': arrays nested more than {} deep at offset {offset}",
        at(.path),
        crate::MAX_ARRAY_DEPTH
    )]
    ArrayTooDeep {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The key whose value it is.
        key: String,
        /// Byte offset of the too-deep array.
        offset: u64,
    },
    /// `general.alignment` is not a u32 power of two.
    #[error("{}general.alignment must be a non-zero power of two of type u32, found {found}", at(.path))]
    BadAlignment {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The value found, with its type.
        found: String,
    },
    /// A tensor with an empty name.
    #[error("{}tensor #{index} has an empty name", at(.path))]
    EmptyTensorName {
        /// The file concerned.
        path: Option<PathBuf>,
        /// Position of the tensor in the tensor table.
        index: u64,
    },
    /// A tensor name too long for ggml (it must be shorter than 64 bytes).
    #[error("{}tensor name '{tensor}' is {len} bytes; ggml allows at most 63", at(.path))]
    TensorNameTooLong {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The name.
        tensor: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The same tensor name twice.
    #[error("{}duplicate tensor name '{tensor}'", at(.path))]
    DuplicateTensor {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The name.
        tensor: String,
    },
    /// More than 4 dimensions.
    #[error("{}tensor '{tensor}' has {n_dims} dimensions; GGUF allows at most 4", at(.path))]
    TooManyDims {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// The dimension count as read.
        n_dims: u32,
    },
    /// A dimension that is zero or does not fit in an `i64` (negative in ggml's view).
    #[error("{}tensor '{tensor}': dimension {index} is {value}, expected 1 ..= 2^63-1", at(.path))]
    BadDim {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// Which dimension (0 is the row length).
        index: usize,
        /// The value as read.
        value: u64,
    },
    /// A ggml type id this reader does not know (or that ggml removed).
    #[error(
        "{}tensor '{tensor}': unknown or removed ggml type id {type_id} \
         (re-convert the model with a current converter)",
        at(.path)
    )]
    UnknownTensorType {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// The type id as read.
        type_id: u32,
    },
    /// The row length is not a whole number of blocks of the tensor's type.
    #[error(
        "{}tensor '{tensor}': row length {row_len} is not a multiple of the {ty} block size {block_size}",
        at(.path)
    )]
    RowNotWholeBlocks {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// Its type.
        ty: GgmlType,
        /// `dims[0]`.
        row_len: u64,
        /// The type's block size.
        block_size: usize,
    },
    /// The element count or byte size overflows 64 bits (or ggml's `i64`).
    #[error("{}tensor '{tensor}': shape {dims:?} of type {ty} is too large (size overflows)", at(.path))]
    ShapeOverflow {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// Its dimensions.
        dims: Vec<u64>,
        /// Its type.
        ty: GgmlType,
    },
    /// A tensor offset that is not a multiple of the alignment.
    #[error(
        "{}tensor '{tensor}': data offset {offset} is not a multiple of the alignment {alignment}",
        at(.path)
    )]
    MisalignedTensor {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// Its offset relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },
    /// Tensor data that runs past the end of the file.
    #[error(
        "{}tensor '{tensor}': data at offset {start} ({n_bytes} bytes) runs past the end of the file ({file_len} bytes)",
        at(.path)
    )]
    TensorPastEnd {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
        /// Absolute file offset of its data (saturating at `u64::MAX`).
        start: u64,
        /// Its size in bytes.
        n_bytes: u64,
        /// The file's length.
        file_len: u64,
    },
    /// Two tensors whose data overlap.
    #[error(
        "{}tensor '{tensor}': data at relative offset {offset} overlaps tensor '{other}', which ends at {other_end}",
        at(.path)
    )]
    TensorOverlap {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The later tensor.
        tensor: String,
        /// Its offset relative to the data section.
        offset: u64,
        /// The tensor it overlaps.
        other: String,
        /// End of `other`, relative to the data section.
        other_end: u64,
    },
    /// A metadata key that a caller required is absent.
    #[error("{}metadata key '{key}' is missing", at(.path))]
    MissingKey {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The key.
        key: String,
    },
    /// A metadata value of the wrong type, or out of range for the requested type.
    #[error("{}metadata key '{key}': expected {expected}, found {found}", at(.path))]
    WrongType {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What is there (type and value).
        found: String,
    },
    /// A tensor that a caller required is absent.
    #[error("{}tensor '{tensor}' is missing", at(.path))]
    MissingTensor {
        /// The file concerned.
        path: Option<PathBuf>,
        /// The tensor.
        tensor: String,
    },
    /// The writer was used out of order (tensor data in another order than added,
    /// a tensor added after the header, tensors left unwritten …).
    #[error("GGUF writer: {message}")]
    WriterMisuse {
        /// What went wrong.
        message: String,
    },
    /// Tensor data of the wrong length given to the writer.
    #[error("GGUF writer: tensor '{tensor}' needs {expected} bytes, got {found}")]
    WrongDataLength {
        /// The tensor.
        tensor: String,
        /// Bytes its shape and type need.
        expected: u64,
        /// Bytes given.
        found: u64,
    },
}

fn version_hint(version: u32) -> &'static str {
    if version == 1 {
        "GGUF v1 is no longer supported; re-convert the model with a current converter"
    } else if version != 0 && version & 0xFFFF == 0 {
        "this looks like a big-endian GGUF; only little-endian files are supported"
    } else {
        "only versions 2 and 3 are supported"
    }
}

impl GgufError {
    /// The file concerned, when known.
    pub fn path(&self) -> Option<&Path> {
        use GgufError::*;
        match self {
            Io { path, .. }
            | BadMagic { path, .. }
            | UnsupportedVersion { path, .. }
            | Truncated { path, .. }
            | CountTooLarge { path, .. }
            | InvalidUtf8 { path, .. }
            | EmptyKey { path, .. }
            | DuplicateKey { path, .. }
            | UnknownValueType { path, .. }
            | InvalidBool { path, .. }
            | ArrayTooDeep { path, .. }
            | BadAlignment { path, .. }
            | EmptyTensorName { path, .. }
            | TensorNameTooLong { path, .. }
            | DuplicateTensor { path, .. }
            | TooManyDims { path, .. }
            | BadDim { path, .. }
            | UnknownTensorType { path, .. }
            | RowNotWholeBlocks { path, .. }
            | ShapeOverflow { path, .. }
            | MisalignedTensor { path, .. }
            | TensorPastEnd { path, .. }
            | TensorOverlap { path, .. }
            | MissingKey { path, .. }
            | WrongType { path, .. }
            | MissingTensor { path, .. } => path.as_deref(),
            WriterMisuse { .. } | WrongDataLength { .. } => None,
        }
    }
}
