//! Tensor descriptions and the shape checks shared by the reader and the writer.

use std::path::Path;

use raven_quant::GgmlType;

use crate::GgufError;

/// GGUF (and ggml) allow at most this many dimensions.
pub const MAX_DIMS: usize = 4;

/// ggml keeps tensor names in a 64-byte buffer with a terminating NUL.
pub const MAX_NAME_LEN: usize = 63;

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.3.ffn_up.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (`ne0`), the
    /// contiguous one; a PyTorch `[rows, cols]` weight is stored as `[cols, rows]`.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data relative to the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of elements (the product of the dimensions; 1 for a scalar).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Number of rows: the product of `dims[1..]` (1 for a vector).
    pub fn rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }

    /// Row length: `dims[0]` (1 for a scalar).
    pub fn cols(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
}

/// Checks a tensor's shape and type and returns its size in bytes.
///
/// Rejects more than [`MAX_DIMS`] dimensions, a dimension that is zero or does
/// not fit in an `i64`, an element count over `i64::MAX`, a row length that is not
/// a whole number of blocks, and a byte size that overflows.
pub(crate) fn checked_n_bytes(
    path: Option<&Path>,
    name: &str,
    dims: &[u64],
    ty: GgmlType,
) -> Result<u64, GgufError> {
    let path = || path.map(Path::to_path_buf);
    if dims.len() > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            path: path(),
            tensor: name.to_string(),
            n_dims: u32::try_from(dims.len()).unwrap_or(u32::MAX),
        });
    }
    for (index, &value) in dims.iter().enumerate() {
        if value == 0 || value > i64::MAX as u64 {
            return Err(GgufError::BadDim {
                path: path(),
                tensor: name.to_string(),
                index,
                value,
            });
        }
    }
    let overflow = || GgufError::ShapeOverflow {
        path: path(),
        tensor: name.to_string(),
        dims: dims.to_vec(),
        ty,
    };
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(overflow)?;
    let row_len = dims.first().copied().unwrap_or(1);
    let row_bytes = match ty.row_bytes(row_len) {
        Some(b) => b,
        None if row_len % ty.block_size() as u64 != 0 => {
            return Err(GgufError::RowNotWholeBlocks {
                path: path(),
                tensor: name.to_string(),
                ty,
                row_len,
                block_size: ty.block_size(),
            })
        }
        None => return Err(overflow()),
    };
    row_bytes
        .checked_mul(n_elements / row_len)
        .ok_or_else(overflow)
}

/// `x` rounded up to a multiple of `alignment` (a power of two), or `None` on overflow.
pub(crate) fn align_up(x: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}
