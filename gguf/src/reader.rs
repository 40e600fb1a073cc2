//! The validating reader: parse everything up front, then hand out zero-copy views.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::parse::Parser;
use crate::{Array, GgufError, TensorInfo, Value};

type Result<T> = std::result::Result<T, GgufError>;

/// Owned buffers are placed at an address that is a multiple of this, so that
/// tensor data (at multiples of the file's alignment) is as aligned as in a map.
const BUFFER_ALIGN: usize = 64;

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
        let parsed = Parser::new(storage.bytes(), path.as_deref()).parse()?;
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

    /// Lets the operating system drop the resident pages that lie wholly inside tensor `t`'s
    /// data (after the caller made its own copy, e.g. a repacked layout), so they stop counting
    /// towards the process's memory. Reading the tensor again later still works: the pages are
    /// read back from the file. A no-op for files read into memory and on non-Unix systems.
    pub fn release_tensor_pages(&self, t: &TensorInfo) {
        #[cfg(unix)]
        if let Storage::Mmap(m) = &self.storage {
            let data = self.tensor_data(t);
            if data.is_empty() {
                return;
            }
            let base = m.as_ptr() as usize;
            let start = data.as_ptr() as usize - base;
            let end = start + data.len();
            const PAGE: usize = 4096;
            let (a, b) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
            if b > a {
                // SAFETY: the map is read-only and private, so MADV_DONTNEED cannot discard
                // modifications: the pages are read back from the file, unchanged, on the next
                // access. No reference into the map is invalidated.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = t;
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
