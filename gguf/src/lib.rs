//! A validating, zero-copy GGUF (v2/v3) reader and a streaming GGUF v3 writer.
//!
//! - [`Gguf`] opens a file ([`Gguf::open`] memory-maps it, [`Gguf::read`] reads it,
//!   [`Gguf::from_bytes`] takes a buffer), checks every count, length, type, shape,
//!   offset and alignment against the file before using it, and then hands out the
//!   metadata ([`Value`], [`Array`], typed getters such as [`Gguf::get_u32`]) and the
//!   tensor table ([`TensorInfo`]) with zero-copy data slices ([`Gguf::tensor_data`]).
//! - [`GgufWriter`] writes the header, metadata and tensor table, then streams each
//!   tensor's bytes in order with alignment padding; it never holds tensor data.
//! - [`GgufError`] says what is wrong, naming the file, key, tensor and offset.
//!
//! Tensor element types are [`raven_quant::GgmlType`] (ggml's numbering). Shapes are
//! in ggml order: `dims[0]` is the row length.
//!
//! ```
//! use raven_gguf::{Gguf, GgufWriter, Value};
//! use raven_quant::GgmlType;
//!
//! let mut w = GgufWriter::new(Vec::new());
//! w.add_kv("general.architecture", Value::Str("huginn".into()));
//! w.add_tensor("output_norm.weight", &[4], GgmlType::F32).unwrap();
//! w.write_header().unwrap();
//! w.write_tensor_data("output_norm.weight", &[0u8; 16]).unwrap();
//! let bytes = w.finish().unwrap();
//!
//! let g = Gguf::from_bytes(bytes).unwrap();
//! assert_eq!(g.get_str("general.architecture").unwrap(), "huginn");
//! let t = g.tensor("output_norm.weight").unwrap();
//! assert_eq!(g.tensor_data(t).len(), 16);
//! ```
#![deny(missing_docs)]

mod error;
mod parse;
mod reader;
mod tensor;
mod value;
mod writer;

pub use error::GgufError;
pub use raven_quant::GgmlType;
pub use reader::Gguf;
pub use tensor::{TensorInfo, MAX_DIMS, MAX_NAME_LEN};
pub use value::{Array, Value, MAX_ARRAY_DEPTH};
pub use writer::GgufWriter;

/// The data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
