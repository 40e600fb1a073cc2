//! The streaming writer: metadata and the tensor table first, then each tensor's
//! bytes in order, so tensor data never has to be held all at once.

use std::collections::HashSet;
use std::io::Write;

use raven_quant::GgmlType;

use crate::tensor::{align_up, checked_n_bytes, MAX_NAME_LEN};
use crate::value::MAX_ARRAY_DEPTH;
use crate::{Array, GgufError, TensorInfo, Value, DEFAULT_ALIGNMENT};

type Result<T> = std::result::Result<T, GgufError>;

/// Writes a GGUF v3 file in one pass.
///
/// Use: [`add_kv`](Self::add_kv) and [`add_tensor`](Self::add_tensor) for everything,
/// then [`write_header`](Self::write_header), then [`write_tensor_data`](Self::write_tensor_data)
/// (or [`write_tensor_part`](Self::write_tensor_part)) for each tensor in the order added,
/// then [`finish`](Self::finish). The writer does its own small writes; wrap a file
/// in a `BufWriter`.
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<TensorInfo>,
    names: HashSet<String>,
    /// The first error from `add_kv`, which cannot return one; reported by the next fallible call.
    pending: Option<GgufError>,
    header_written: bool,
    /// Index of the tensor whose data comes next, and how many of its bytes are written.
    next_tensor: usize,
    next_written: u64,
}

impl<W: Write> GgufWriter<W> {
    /// A writer to `out`, with alignment 32 unless `general.alignment` is added.
    pub fn new(out: W) -> Self {
        GgufWriter {
            out,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            pending: None,
            header_written: false,
            next_tensor: 0,
            next_written: 0,
        }
    }

    fn defer(&mut self, e: GgufError) {
        self.pending.get_or_insert(e);
    }

    /// Adds a metadata entry. Mistakes (an empty or duplicate key, a bad
    /// `general.alignment`, arrays nested too deep, a call after the header) are
    /// reported by the next `add_tensor`, `write_header`, `write_tensor_*` or `finish`.
    pub fn add_kv(&mut self, key: &str, value: Value) {
        if self.header_written {
            return self.defer(misuse(format!("add_kv('{key}') after write_header")));
        }
        if key.is_empty() {
            let index = self.metadata.len() as u64;
            return self.defer(GgufError::EmptyKey { path: None, index });
        }
        if !self.keys.insert(key.to_string()) {
            let key = key.to_string();
            return self.defer(GgufError::DuplicateKey { path: None, key });
        }
        if let Value::Array(a) = &value {
            if depth(a) > MAX_ARRAY_DEPTH {
                let key = key.to_string();
                let e = GgufError::ArrayTooDeep {
                    path: None,
                    key,
                    offset: 0,
                };
                return self.defer(e);
            }
        }
        if key == "general.alignment" {
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = u64::from(a),
                ref v => {
                    let found = format!("{} {}", v.type_name(), v);
                    return self.defer(GgufError::BadAlignment { path: None, found });
                }
            }
        }
        self.metadata.push((key.to_string(), value));
    }

    /// Adds a tensor to the table; `dims` in ggml order (`dims[0]` is the row length).
    /// Its size is computed from the shape and type; offsets are laid out by `write_header`.
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> Result<()> {
        self.check_pending()?;
        if self.header_written {
            return Err(misuse(format!("add_tensor('{name}') after write_header")));
        }
        if name.is_empty() {
            let index = self.tensors.len() as u64;
            return Err(GgufError::EmptyTensorName { path: None, index });
        }
        if name.len() > MAX_NAME_LEN {
            return Err(GgufError::TensorNameTooLong {
                path: None,
                tensor: name.to_string(),
                len: name.len(),
            });
        }
        if self.names.contains(name) {
            let tensor = name.to_string();
            return Err(GgufError::DuplicateTensor { path: None, tensor });
        }
        let n_bytes = checked_n_bytes(None, name, dims, ty)?;
        self.names.insert(name.to_string());
        self.tensors.push(TensorInfo {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            offset: 0,
            n_bytes,
        });
        Ok(())
    }

    /// The data alignment in effect (32, or `general.alignment`).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The tensor table as it will be (offsets are final after `write_header`).
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Lays out the tensor offsets and writes the header, metadata, tensor table
    /// and padding up to the data section.
    pub fn write_header(&mut self) -> Result<()> {
        self.check_pending()?;
        if self.header_written {
            return Err(misuse("write_header called twice".into()));
        }
        let mut offset = 0u64;
        for t in &mut self.tensors {
            t.offset = offset;
            offset = offset
                .checked_add(t.n_bytes)
                .and_then(|end| align_up(end, self.alignment))
                .ok_or_else(|| misuse(format!("data section overflows at tensor '{}'", t.name)))?;
        }

        let mut buf = Vec::new();
        buf.extend_from_slice(b"GGUF");
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut buf, key);
            buf.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut buf, value);
        }
        for t in &self.tensors {
            put_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&(t.ty as u32).to_le_bytes());
            buf.extend_from_slice(&t.offset.to_le_bytes());
        }
        let len = buf.len() as u64;
        self.put(&buf)?;
        self.put_zeros(align_up(len, self.alignment).unwrap_or(len) - len)?;
        self.header_written = true;
        Ok(())
    }

    /// Writes all of tensor `name`'s bytes; tensors must come in the order added.
    pub fn write_tensor_data(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let expected = self.current(name)?.n_bytes;
        if self.next_written != 0 || bytes.len() as u64 != expected {
            return Err(GgufError::WrongDataLength {
                tensor: name.to_string(),
                expected,
                found: self.next_written + bytes.len() as u64,
            });
        }
        self.write_tensor_part(name, bytes)
    }

    /// Writes the next part of tensor `name`'s bytes (for tensors produced piece by
    /// piece); the tensor is complete, and padded, once all its bytes are written.
    pub fn write_tensor_part(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let expected = self.current(name)?.n_bytes;
        let written = self.next_written + bytes.len() as u64;
        if written > expected {
            return Err(GgufError::WrongDataLength {
                tensor: name.to_string(),
                expected,
                found: written,
            });
        }
        self.put(bytes)?;
        self.next_written = written;
        if written == expected {
            let pad = align_up(expected, self.alignment).unwrap_or(expected) - expected;
            self.put_zeros(pad)?;
            self.next_tensor += 1;
            self.next_written = 0;
        }
        Ok(())
    }

    /// Checks that every tensor was written, flushes, and returns the output.
    /// Writes the header first if it was not (a file with metadata only).
    pub fn finish(mut self) -> Result<W> {
        if !self.header_written {
            self.write_header()?;
        }
        self.check_pending()?;
        if let Some(t) = self.tensors.get(self.next_tensor) {
            let left = self.tensors.len() - self.next_tensor;
            return Err(misuse(format!(
                "finish: the data of tensor '{}' is incomplete ({} of {} tensors not written)",
                t.name,
                left,
                self.tensors.len()
            )));
        }
        self.out.flush().map_err(write_error)?;
        Ok(self.out)
    }

    /// The tensor whose data comes next, checked to be `name`.
    fn current(&mut self, name: &str) -> Result<&TensorInfo> {
        self.check_pending()?;
        if !self.header_written {
            return Err(misuse(format!(
                "data of tensor '{name}' before write_header"
            )));
        }
        match self.tensors.get(self.next_tensor) {
            Some(t) if t.name == name => Ok(t),
            Some(t) => Err(misuse(format!(
                "got data of tensor '{name}' but tensor '{}' comes next (data goes in the order added)",
                t.name
            ))),
            None => Err(misuse(format!(
                "got data of tensor '{name}' but all {} tensors are written",
                self.tensors.len()
            ))),
        }
    }

    fn check_pending(&mut self) -> Result<()> {
        match self.pending.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(write_error)
    }

    fn put_zeros(&mut self, mut n: u64) -> Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64);
            self.put(ZEROS.get(..k as usize).unwrap_or(&[]))?;
            n -= k;
        }
        Ok(())
    }
}

fn misuse(message: String) -> GgufError {
    GgufError::WriterMisuse { message }
}

fn write_error(source: std::io::Error) -> GgufError {
    GgufError::Io {
        path: None,
        action: "cannot write GGUF data",
        source,
    }
}

/// Nesting depth of an array (1 for a flat array).
fn depth(a: &Array) -> usize {
    match a {
        Array::Array(v) => 1 + v.iter().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A value's payload (without its type id).
fn put_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(u8::from(*x)),
        Value::Str(s) => put_str(buf, s),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Array(a) => put_array(buf, a),
    }
}

/// An array body: element type, count, elements (inner arrays likewise).
fn put_array(buf: &mut Vec<u8>, a: &Array) {
    buf.extend_from_slice(&a.element_type_id().to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        Array::U8(v) => buf.extend_from_slice(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::Bool(v) => buf.extend(v.iter().map(|&b| u8::from(b))),
        Array::Str(v) => v.iter().for_each(|s| put_str(buf, s)),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Array(v) => v.iter().for_each(|x| put_array(buf, x)),
    }
}
