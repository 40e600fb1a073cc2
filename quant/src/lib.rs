//! Raven's quantization crate: ggml's tensor element types ([`GgmlType`]), block formats,
//! quantizers, dequantizers and the dot-product kernels the model's matrix products run on.
#![deny(missing_docs)]

mod types;

pub use types::GgmlType;
