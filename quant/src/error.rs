//! The crate's error type.

use crate::GgmlType;

/// What went wrong in a quantization call. Every variant names the type and the sizes involved.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// The operation is not implemented for this element type.
    #[error("{op} is not supported for tensor type {ty}")]
    Unsupported {
        /// `quantize`, `dequantize` or `matmul`.
        op: &'static str,
        /// The element type asked for.
        ty: GgmlType,
    },
    /// A row length that is not a whole number of blocks.
    #[error("{n} values are not a whole number of {ty} blocks of {block}")]
    NotBlockMultiple {
        /// The element type.
        ty: GgmlType,
        /// The number of values given.
        n: usize,
        /// The type's block size.
        block: usize,
    },
    /// A buffer whose length does not match the values it should hold.
    #[error("{what}: {ty} buffer of {got} bytes or values where {expected} were expected")]
    LengthMismatch {
        /// Which buffer (`source`, `destination`, `matrix data` …).
        what: &'static str,
        /// The element type.
        ty: GgmlType,
        /// The length expected.
        expected: usize,
        /// The length given.
        got: usize,
    },
}
