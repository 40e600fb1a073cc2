//! The validating reader: parse everything up front, then hand out zero-copy views.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use raven_quant::GgmlType;

use crate::tensor::{align_up, checked_n_bytes, MAX_DIMS};
use crate::value::{type_id as t, MAX_ARRAY_DEPTH};
use crate::{Array, GgufError, TensorInfo, Value, DEFAULT_ALIGNMENT};

type Result<T> = std::result::Result<T, GgufError>;

/// Owned buffers are placed at an address that is a multiple of this, so that
/// tensor data (at multiples of the file's alignment) is as aligned as in a map.
const BUFFER_ALIGN: usize = 64;

/// Fewest bytes a metadata entry can take: key length, a 1-byte key, type id, 1-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
/// Fewest bytes a tensor info can take: name length, a 1-byte name, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 4 + 8;

/// The file's bytes: a read-only map, or an owned buffer starting at `start`.
enum Storage {
    Mmap(Mmap),
    Owned {
        buf: Vec<u8>,
        start: usize,
        len: usize,
    },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned { buf, start, len } => {
                buf.get(*start..start.saturating_add(*len)).unwrap_or(&[])
            }
        }
    }

    /// Copies `bytes` into a fresh buffer whose data starts `BUFFER_ALIGN`-aligned.
    fn aligned_copy(bytes: &[u8]) -> Storage {
        let mut buf: Vec<u8> = Vec::with_capacity(bytes.len() + BUFFER_ALIGN);
        let start = match buf.as_ptr().align_offset(BUFFER_ALIGN) {
            s if s < BUFFER_ALIGN => s,
            _ => 0,
        };
        buf.resize(start, 0);
        buf.extend_from_slice(bytes); // within capacity: no reallocation, `start` stays aligned
        Storage::Owned {
            buf,
            start,
            len: bytes.len(),
        }
    }
}

/// A parsed, validated GGUF file (version 2 or 3) that owns its bytes.
///
/// Everything is checked when the file is opened, so the accessors cannot fail on
/// a malformed file. Tensor data is borrowed from the map (or buffer), never copied;
/// each slice starts at an address aligned to `min(alignment(), 64)` bytes.
pub struct Gguf {
    storage: Storage,
    path: Option<PathBuf>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for Gguf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("file_len", &self.file_len())
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-maps and validates the file at `path`.
    ///
    /// The map is read-only. As with any memory-mapped model file, another process
    /// truncating or rewriting the file while it is mapped is not supported.
    pub fn open(path: &Path) -> Result<Gguf> {
        let io = |action, source| GgufError::Io {
            path: Some(path.to_path_buf()),
            action,
            source,
        };
        let file = File::open(path).map_err(|e| io("cannot open", e))?;
        let len = file.metadata().map_err(|e| io("cannot stat", e))?.len();
        let storage = if len == 0 {
            Storage::Owned {
                buf: Vec::new(),
                start: 0,
                len: 0,
            }
        } else {
            // SAFETY: the map is read-only and private to this `Gguf`, which keeps it
            // alive as long as any slice into it; the file is not modified by us. Other
            // processes changing the file underneath is the documented caveat above.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| io("cannot memory-map", e))?;
            Storage::Mmap(map)
        };
        Gguf::parse(storage, Some(path.to_path_buf()))
    }

    /// Reads the whole file at `path` into memory (no map) and validates it.
    pub fn read(path: &Path) -> Result<Gguf> {
        let io = |action, source| GgufError::Io {
            path: Some(path.to_path_buf()),
            action,
            source,
        };
        let file = File::open(path).map_err(|e| io("cannot open", e))?;
        let len = file.metadata().map_err(|e| io("cannot stat", e))?.len();
        let too_big = || {
            io(
                "cannot read",
                std::io::Error::new(std::io::ErrorKind::OutOfMemory, "file too large"),
            )
        };
        let len_usize = usize::try_from(len).map_err(|_| too_big())?;
        let mut buf: Vec<u8> = Vec::new();
        buf.try_reserve_exact(len_usize.saturating_add(BUFFER_ALIGN))
            .map_err(|_| too_big())?;
        let start = match buf.as_ptr().align_offset(BUFFER_ALIGN) {
            s if s < BUFFER_ALIGN => s,
            _ => 0,
        };
        buf.resize(start, 0);
        file.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| io("cannot read", e))?;
        let got = buf.len().saturating_sub(start);
        let storage = if buf.as_ptr().align_offset(BUFFER_ALIGN) == start {
            Storage::Owned {
                buf,
                start,
                len: got,
            }
        } else {
            Storage::aligned_copy(buf.get(start..).unwrap_or(&[]))
        };
        Gguf::parse(storage, Some(path.to_path_buf()))
    }

    /// Validates a GGUF file held in memory. The bytes are copied once if they do
    /// not start at a 64-byte-aligned address.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Gguf> {
        let storage = if bytes.as_ptr().align_offset(BUFFER_ALIGN) == 0 {
            let len = bytes.len();
            Storage::Owned {
                buf: bytes,
                start: 0,
                len,
            }
        } else {
            Storage::aligned_copy(&bytes)
        };
        Gguf::parse(storage, None)
    }

    fn parse(storage: Storage, path: Option<PathBuf>) -> Result<Gguf> {
        let parsed = Parser {
            buf: storage.bytes(),
            pos: 0,
            path: path.as_deref(),
        }
        .parse()?;
        Ok(Gguf {
            storage,
            path,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            key_index: parsed.key_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
        })
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.key_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// The tensor table in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(*self.tensor_index.get(name)?)
    }

    /// The tensor named `name`, or an error naming it and the file.
    pub fn get_tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })
    }

    /// The bytes of tensor `t`, borrowed from the file (validated when opened).
    ///
    /// `t` must come from this file's [`tensors`](Self::tensors); for any other
    /// `TensorInfo` whose range is not inside the data section the slice is empty.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let range = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| Some((usize::try_from(s).ok()?, usize::try_from(t.n_bytes).ok()?)))
            .and_then(|(s, n)| Some(s..s.checked_add(n)?));
        range
            .and_then(|r| self.storage.bytes().get(r))
            .unwrap_or(&[])
    }

    /// The path the file was opened from (`None` for [`from_bytes`](Self::from_bytes)).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The file's length in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// True when the bytes are memory-mapped ([`open`](Self::open)).
    pub fn is_mmap(&self) -> bool {
        matches!(self.storage, Storage::Mmap(_))
    }
}

/// Typed metadata getters. `get_*` fail when the key is absent; `opt_*` return
/// `Ok(None)` then. Both fail, naming the key and what was found, on a type mismatch.
impl Gguf {
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        match f(v) {
            Some(x) => Ok(Some(x)),
            None => Err(GgufError::WrongType {
                path: self.path.clone(),
                key: key.to_string(),
                expected,
                found: format!("{} {}", v.type_name(), v),
            }),
        }
    }

    fn required<T>(&self, key: &str, v: Result<Option<T>>) -> Result<T> {
        v?.ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    /// An integer of any type that fits in `u64`.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "an integer in u64 range", |v| {
            v.as_i128().and_then(|x| u64::try_from(x).ok())
        })
    }
    /// An integer of any type that fits in `u32`.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "an integer in u32 range", |v| {
            v.as_i128().and_then(|x| u32::try_from(x).ok())
        })
    }
    /// An integer of any type that fits in `i64`.
    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer in i64 range", |v| {
            v.as_i128().and_then(|x| i64::try_from(x).ok())
        })
    }
    /// An `F32`, or an `F64` that stays finite as `f32` when it was finite.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a float (f32 or f64)", |v| {
            let x = v.as_f64()?;
            let y = x as f32;
            (y.is_finite() == x.is_finite()).then_some(y)
        })
    }
    /// A `Bool`.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }
    /// A `Str`.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }
    /// An array of strings.
    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        self.typed(key, "an array of str", |v| match v {
            Value::Array(Array::Str(a)) => Some(a.as_slice()),
            _ => None,
        })
    }
    /// An array of `i32`.
    pub fn opt_i32_array(&self, key: &str) -> Result<Option<&[i32]>> {
        self.typed(key, "an array of i32", |v| match v {
            Value::Array(Array::I32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }
    /// An array of `f32`.
    pub fn opt_f32_array(&self, key: &str) -> Result<Option<&[f32]>> {
        self.typed(key, "an array of f32", |v| match v {
            Value::Array(Array::F32(a)) => Some(a.as_slice()),
            _ => None,
        })
    }

    /// Like [`opt_u64`](Self::opt_u64), but the key must be present.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.required(key, self.opt_u64(key))
    }
    /// Like [`opt_u32`](Self::opt_u32), but the key must be present.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.required(key, self.opt_u32(key))
    }
    /// Like [`opt_i64`](Self::opt_i64), but the key must be present.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.required(key, self.opt_i64(key))
    }
    /// Like [`opt_f32`](Self::opt_f32), but the key must be present.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.required(key, self.opt_f32(key))
    }
    /// Like [`opt_bool`](Self::opt_bool), but the key must be present.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.required(key, self.opt_bool(key))
    }
    /// Like [`opt_str`](Self::opt_str), but the key must be present.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.required(key, self.opt_str(key))
    }
    /// Like [`opt_str_array`](Self::opt_str_array), but the key must be present.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.required(key, self.opt_str_array(key))
    }
    /// Like [`opt_i32_array`](Self::opt_i32_array), but the key must be present.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        self.required(key, self.opt_i32_array(key))
    }
    /// Like [`opt_f32_array`](Self::opt_f32_array), but the key must be present.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        self.required(key, self.opt_f32_array(key))
    }
}

/// What [`Parser::parse`] finds.
struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// A bounds-checked cursor over the file. Invariant: `pos <= buf.len()`.
struct Parser<'a> {
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

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        Ok(b.try_into().unwrap_or([0; N]))
    }

    fn u8(&mut self, what: impl FnOnce() -> String) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
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

    fn parse(mut self) -> Result<Parsed> {
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
            t::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            t::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            t::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            t::U32 => Value::U32(self.u32(what)?),
            t::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            t::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            t::U64 => Value::U64(self.u64(what)?),
            t::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            t::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
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
            if t.offset % alignment != 0 {
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
            if end.map_or(true, |end| end > file_len) {
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
