//! Metadata values: the thirteen GGUF value types, with arrays (possibly nested).

use std::fmt;

/// GGUF value type ids, as stored in the file (`enum gguf_type` in `gguf.h`).
pub(crate) mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STR: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Arrays may hold arrays; deeper nesting than this is rejected as malformed
/// (no real model nests at all, and this bounds the reader's recursion).
pub const MAX_ARRAY_DEPTH: usize = 4;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `float32`
    F32(f32),
    /// `bool` (one byte, 0 or 1)
    Bool(bool),
    /// UTF-8 string
    Str(String),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float64`
    F64(f64),
    /// A homogeneous array.
    Array(Array),
}

/// A homogeneous metadata array. `Array::Array` nests arrays (each inner array may
/// have its own element type), up to [`MAX_ARRAY_DEPTH`] levels.
#[derive(Clone, Debug, PartialEq)]
pub enum Array {
    /// `uint8` elements
    U8(Vec<u8>),
    /// `int8` elements
    I8(Vec<i8>),
    /// `uint16` elements
    U16(Vec<u16>),
    /// `int16` elements
    I16(Vec<i16>),
    /// `uint32` elements
    U32(Vec<u32>),
    /// `int32` elements
    I32(Vec<i32>),
    /// `float32` elements
    F32(Vec<f32>),
    /// `bool` elements
    Bool(Vec<bool>),
    /// string elements
    Str(Vec<String>),
    /// `uint64` elements
    U64(Vec<u64>),
    /// `int64` elements
    I64(Vec<i64>),
    /// `float64` elements
    F64(Vec<f64>),
    /// array elements
    Array(Vec<Array>),
}

impl Value {
    /// The GGUF type id written before this value.
    pub(crate) fn type_id(&self) -> u32 {
        use type_id as t;
        match self {
            Value::U8(_) => t::U8,
            Value::I8(_) => t::I8,
            Value::U16(_) => t::U16,
            Value::I16(_) => t::I16,
            Value::U32(_) => t::U32,
            Value::I32(_) => t::I32,
            Value::F32(_) => t::F32,
            Value::Bool(_) => t::BOOL,
            Value::Str(_) => t::STR,
            Value::U64(_) => t::U64,
            Value::I64(_) => t::I64,
            Value::F64(_) => t::F64,
            Value::Array(_) => t::ARRAY,
        }
    }

    /// The GGUF type name (`u32`, `str`, `array of str` …), for messages.
    pub fn type_name(&self) -> String {
        match self {
            Value::Array(a) => format!("array of {}", a.element_type_name()),
            v => type_name(v.type_id()).to_string(),
        }
    }

    /// The value as an integer when it is one (any width or signedness).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v.into(),
            Value::I8(v) => v.into(),
            Value::U16(v) => v.into(),
            Value::I16(v) => v.into(),
            Value::U32(v) => v.into(),
            Value::I32(v) => v.into(),
            Value::U64(v) => v.into(),
            Value::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float when it is `F32` or `F64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, when the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The GGUF type id of the elements.
    pub(crate) fn element_type_id(&self) -> u32 {
        use type_id as t;
        match self {
            Array::U8(_) => t::U8,
            Array::I8(_) => t::I8,
            Array::U16(_) => t::U16,
            Array::I16(_) => t::I16,
            Array::U32(_) => t::U32,
            Array::I32(_) => t::I32,
            Array::F32(_) => t::F32,
            Array::Bool(_) => t::BOOL,
            Array::Str(_) => t::STR,
            Array::U64(_) => t::U64,
            Array::I64(_) => t::I64,
            Array::F64(_) => t::F64,
            Array::Array(_) => t::ARRAY,
        }
    }

    /// The GGUF type name of the elements (`u8` … `array`).
    pub fn element_type_name(&self) -> &'static str {
        type_name(self.element_type_id())
    }
}

/// GGUF's short name for a value type id.
pub(crate) fn type_name(id: u32) -> &'static str {
    use type_id as t;
    match id {
        t::U8 => "u8",
        t::I8 => "i8",
        t::U16 => "u16",
        t::I16 => "i16",
        t::U32 => "u32",
        t::I32 => "i32",
        t::F32 => "f32",
        t::BOOL => "bool",
        t::STR => "str",
        t::ARRAY => "array",
        t::U64 => "u64",
        t::I64 => "i64",
        t::F64 => "f64",
        _ => "unknown",
    }
}

impl fmt::Display for Value {
    /// A short rendering for messages: scalars in full, strings up to 40 chars,
    /// arrays as their type and length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::Str(s) if s.chars().count() > 40 => {
                let head: String = s.chars().take(40).collect();
                write!(f, "{head:?}…")
            }
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Array(a) => write!(f, "[{} × {}]", a.len(), a.element_type_name()),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Value {
                Value::$v(x)
            }
        }
        impl From<Vec<$t>> for Value {
            fn from(x: Vec<$t>) -> Value {
                Value::Array(Array::$v(x))
            }
        }
    )*};
}

value_from!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
    f32 => F32, bool => Bool, String => Str, u64 => U64, i64 => I64, f64 => F64,
);

impl From<&str> for Value {
    fn from(x: &str) -> Value {
        Value::Str(x.to_string())
    }
}

impl From<Array> for Value {
    fn from(x: Array) -> Value {
        Value::Array(x)
    }
}
