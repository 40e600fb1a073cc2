//! The parser: reads and validates the header, metadata and tensor table of a
//! byte slice, never indexing without a bounds check, never allocating from an
//! unchecked count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use raven_quant::GgmlType;

use crate::tensor::{align_up, checked_n_bytes, MAX_DIMS};
use crate::value::{type_id as t, MAX_ARRAY_DEPTH};
use crate::{Array, GgufError, TensorInfo, Value, DEFAULT_ALIGNMENT};

type Result<T> = std::result::Result<T, GgufError>;

/// Fewest bytes a metadata entry can take: key length, a 1-byte key, type id, 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Fewest bytes a tensor info can take: name length, a 1-byte name, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 4 + 8;

/// What [`Parser::parse`] finds.
pub(crate) struct Parsed {
    pub(crate) version: u32,
    pub(crate) alignment: u64,
    pub(crate) data_offset: u64,
    pub(crate) metadata: Vec<(String, Value)>,
    pub(crate) key_index: HashMap<String, usize>,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) tensor_index: HashMap<String, usize>,
}

/// A bounds-checked cursor over the file. Invariant: `pos <= buf.len()`.
pub(crate) struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
    path: Option<&'a Path>,
}

/// Decodes little-endian fixed-size elements; `bytes.len()` is a multiple of `N`.
fn decode<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| f(c.try_into().unwrap_or([0; N])))
        .collect()
}

impl<'a> Parser<'a> {
    fn path(&self) -> Option<PathBuf> {
        self.path.map(Path::to_path_buf)
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    /// The next `n` bytes, or a `Truncated` error describing `what`.
    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n));
        match end.and_then(|end| Some((end, self.buf.get(self.pos..end)?))) {
            Some((end, bytes)) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(GgufError::Truncated {
                path: self.path(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    fn fixed<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        Ok(b.try_into().unwrap_or([0; N]))
    }

    fn u8(&mut self, what: impl FnOnce() -> String) -> Result<u8> {
        Ok(self.fixed::<1>(what)?[0])
    }
    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.fixed(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.fixed(what).map(u64::from_le_bytes)
    }

    /// A u64 count of items of at least `min_bytes` each, checked against what remains.
    fn count(&mut self, min_bytes: u64, what: impl Fn() -> String) -> Result<u64> {
        let offset = self.pos as u64;
        let count = self.u64(&what)?;
        let available = self.remaining();
        if count > available / min_bytes {
            return Err(GgufError::CountTooLarge {
                path: self.path(),
                what: what(),
                offset,
                count,
                available,
                min_bytes,
            });
        }
        Ok(count)
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String> {
        let len = self.count(1, || format!("length of {}", what()))?;
        let offset = self.pos as u64;
        let bytes = self.take(len, &what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                path: self.path(),
                what: what(),
                offset,
            }),
        }
    }

    /// A parser over `buf`; `path` only labels errors.
    pub(crate) fn new(buf: &'a [u8], path: Option<&'a Path>) -> Self {
        Parser { buf, pos: 0, path }
    }

    /// Parses and validates everything but the tensor bytes themselves.
    pub(crate) fn parse(mut self) -> Result<Parsed> {
        match self.buf.get(..4) {
            Some(b"GGUF") => self.pos = 4,
            _ if b"GGUF".starts_with(self.buf) => {
                self.take(4, || "magic".into())?;
            }
            _ => {
                let found = self.buf.iter().take(4).copied().collect();
                return Err(GgufError::BadMagic {
                    path: self.path(),
                    found,
                });
            }
        }
        let version = self.u32(|| "version".into())?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion {
                path: self.path(),
                version,
            });
        }
        let n_tensors = self.count(MIN_TENSOR_INFO_BYTES, || "tensor count".into())?;
        let n_kv = self.count(MIN_KV_BYTES, || "metadata key-value count".into())?;

        let mut metadata = Vec::with_capacity(n_kv.min(1024) as usize);
        let mut key_index = HashMap::new();
        for i in 0..n_kv {
            let key = self.string(|| format!("metadata key #{i}"))?;
            if key.is_empty() {
                return Err(GgufError::EmptyKey {
                    path: self.path(),
                    index: i,
                });
            }
            if key_index.contains_key(&key) {
                return Err(GgufError::DuplicateKey {
                    path: self.path(),
                    key,
                });
            }
            let ty = self.u32(|| format!("value type of key '{key}'"))?;
            let value = self.value(&key, ty)?;
            key_index.insert(key.clone(), metadata.len());
            metadata.push((key, value));
        }

        let alignment_value = key_index
            .get("general.alignment")
            .and_then(|&i| metadata.get(i))
            .map(|(_, v)| v);
        let alignment = match alignment_value {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(GgufError::BadAlignment {
                    path: self.path(),
                    found: format!("{} {}", v.type_name(), v),
                })
            }
        };

        // Checked again now that the metadata is read: a tighter bound.
        let available = self.remaining();
        if n_tensors > available / MIN_TENSOR_INFO_BYTES {
            return Err(GgufError::CountTooLarge {
                path: self.path(),
                what: "tensor count (after the metadata)".into(),
                offset: 8,
                count: n_tensors,
                available,
                min_bytes: MIN_TENSOR_INFO_BYTES,
            });
        }
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(1024) as usize);
        let mut tensor_index = HashMap::new();
        for i in 0..n_tensors {
            let info = self.tensor_info(i)?;
            if tensor_index.contains_key(&info.name) {
                return Err(GgufError::DuplicateTensor {
                    path: self.path(),
                    tensor: info.name,
                });
            }
            tensor_index.insert(info.name.clone(), tensors.len());
            tensors.push(info);
        }

        let data_offset = align_up(self.pos as u64, alignment).unwrap_or(u64::MAX);
        self.check_tensor_ranges(&tensors, alignment, data_offset)?;
        Ok(Parsed {
            version,
            alignment,
            data_offset,
            metadata,
            key_index,
            tensors,
            tensor_index,
        })
    }

    /// A value of type `ty` (already read) for `key`.
    fn value(&mut self, key: &str, ty: u32) -> Result<Value> {
        let what = || format!("value of key '{key}'");
        Ok(match ty {
            t::U8 => Value::U8(self.u8(what)?),
            t::I8 => Value::I8(i8::from_le_bytes(self.fixed(what)?)),
            t::U16 => Value::U16(u16::from_le_bytes(self.fixed(what)?)),
            t::I16 => Value::I16(i16::from_le_bytes(self.fixed(what)?)),
            t::U32 => Value::U32(self.u32(what)?),
            t::I32 => Value::I32(i32::from_le_bytes(self.fixed(what)?)),
            t::F32 => Value::F32(f32::from_le_bytes(self.fixed(what)?)),
            t::U64 => Value::U64(self.u64(what)?),
            t::I64 => Value::I64(i64::from_le_bytes(self.fixed(what)?)),
            t::F64 => Value::F64(f64::from_le_bytes(self.fixed(what)?)),
            t::BOOL => {
                let offset = self.pos as u64;
                match self.u8(what)? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    byte => {
                        return Err(GgufError::InvalidBool {
                            path: self.path(),
                            key: key.to_string(),
                            byte,
                            offset,
                        })
                    }
                }
            }
            t::STR => Value::Str(self.string(what)?),
            t::ARRAY => Value::Array(self.array_value(key, 1)?),
            type_id => {
                return Err(GgufError::UnknownValueType {
                    path: self.path(),
                    key: key.to_string(),
                    type_id,
                    offset: (self.pos as u64).saturating_sub(4),
                })
            }
        })
    }

    /// An array body (element type, count, elements) at nesting level `depth` (1 = outermost).
    fn array_value(&mut self, key: &str, depth: usize) -> Result<Array> {
        let offset = self.pos as u64;
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::ArrayTooDeep {
                path: self.path(),
                key: key.to_string(),
                offset,
            });
        }
        let elem = self.u32(|| format!("element type of array '{key}'"))?;
        let min_bytes = match elem {
            t::U8 | t::I8 | t::BOOL => 1,
            t::U16 | t::I16 => 2,
            t::U32 | t::I32 | t::F32 => 4,
            t::U64 | t::I64 | t::F64 | t::STR => 8,
            t::ARRAY => 4 + 8,
            type_id => {
                return Err(GgufError::UnknownValueType {
                    path: self.path(),
                    key: key.to_string(),
                    type_id,
                    offset,
                })
            }
        };
        let what = || format!("length of array '{key}'");
        let n = self.count(min_bytes, what)?;
        let what = || format!("elements of array '{key}'");
        // For fixed-size elements `n * min_bytes` is at most what remains (checked above).
        let fixed = |p: &mut Self| p.take(n * min_bytes, what);
        Ok(match elem {
            t::U8 => Array::U8(fixed(self)?.to_vec()),
            t::I8 => Array::I8(decode(fixed(self)?, i8::from_le_bytes)),
            t::U16 => Array::U16(decode(fixed(self)?, u16::from_le_bytes)),
            t::I16 => Array::I16(decode(fixed(self)?, i16::from_le_bytes)),
            t::U32 => Array::U32(decode(fixed(self)?, u32::from_le_bytes)),
            t::I32 => Array::I32(decode(fixed(self)?, i32::from_le_bytes)),
            t::F32 => Array::F32(decode(fixed(self)?, f32::from_le_bytes)),
            t::U64 => Array::U64(decode(fixed(self)?, u64::from_le_bytes)),
            t::I64 => Array::I64(decode(fixed(self)?, i64::from_le_bytes)),
            t::F64 => Array::F64(decode(fixed(self)?, f64::from_le_bytes)),
            t::BOOL => {
                let start = self.pos as u64;
                let bytes = fixed(self)?;
                if let Some(i) = bytes.iter().position(|&b| b > 1) {
                    return Err(GgufError::InvalidBool {
                        path: self.path(),
                        key: key.to_string(),
                        byte: bytes.get(i).copied().unwrap_or(0),
                        offset: start + i as u64,
                    });
                }
                Array::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            t::STR => {
                let mut v = Vec::with_capacity(n.min(4096) as usize);
                for j in 0..n {
                    v.push(self.string(|| format!("element {j} of array '{key}'"))?);
                }
                Array::Str(v)
            }
            _ => {
                let mut v = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    v.push(self.array_value(key, depth + 1)?);
                }
                Array::Array(v)
            }
        })
    }

    /// One tensor-table entry, with its shape and type validated.
    fn tensor_info(&mut self, i: u64) -> Result<TensorInfo> {
        let name = self.string(|| format!("name of tensor #{i}"))?;
        if name.is_empty() {
            return Err(GgufError::EmptyTensorName {
                path: self.path(),
                index: i,
            });
        }
        let n_dims = self.u32(|| format!("dimension count of tensor '{name}'"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                path: self.path(),
                tensor: name,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(|| format!("dimensions of tensor '{name}'"))?);
        }
        let type_id = self.u32(|| format!("type of tensor '{name}'"))?;
        let offset = self.u64(|| format!("data offset of tensor '{name}'"))?;
        let Some(ty) = GgmlType::from_u32(type_id) else {
            return Err(GgufError::UnknownTensorType {
                path: self.path(),
                tensor: name,
                type_id,
            });
        };
        let n_bytes = checked_n_bytes(self.path, &name, &dims, ty)?;
        Ok(TensorInfo {
            name,
            dims,
            ty,
            offset,
            n_bytes,
        })
    }

    /// Every tensor aligned, inside the file, and not overlapping another.
    fn check_tensor_ranges(
        &self,
        tensors: &[TensorInfo],
        alignment: u64,
        data_offset: u64,
    ) -> Result<()> {
        let file_len = self.buf.len() as u64;
        for t in tensors {
            if !t.offset.is_multiple_of(alignment) {
                return Err(GgufError::MisalignedTensor {
                    path: self.path(),
                    tensor: t.name.clone(),
                    offset: t.offset,
                    alignment,
                });
            }
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes));
            if end.is_none_or(|end| end > file_len) {
                return Err(GgufError::TensorPastEnd {
                    path: self.path(),
                    tensor: t.name.clone(),
                    start: data_offset.saturating_add(t.offset),
                    n_bytes: t.n_bytes,
                    file_len,
                });
            }
        }
        // All ends fit in the file now, so these sums cannot overflow.
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for pair in order.windows(2) {
            if let [a, b] = pair {
                let a_end = a.offset + a.n_bytes;
                if b.offset < a_end {
                    return Err(GgufError::TensorOverlap {
                        path: self.path(),
                        tensor: b.name.clone(),
                        offset: b.offset,
                        other: a.name.clone(),
                        other_end: a_end,
                    });
                }
            }
        }
        Ok(())
    }
}
