//! Element types of a KV cache and the rows the attention kernels read from one.
//!
//! A cache stores key and value rows of `h` values (every head side by side) as f32, as IEEE
//! half precision (the bits, as `u16`), or as ggml's Q8_0 (32 values per block, an int8 each and
//! one f16 scale per block, ggml's reference rounding). The attention kernels widen each value
//! to f32 as they load it (exactly: a half widens without rounding, and `q · d` of an int8 and a
//! half fits in an f32's mantissa), so a kernel over an f16 or Q8_0 cache computes what the same
//! kernel computes over the f32 rows those values widen to, bit for bit.

use crate::blocks::{f16_to_f32, f32_to_f16, QK};
use crate::quantize::quantize_block_q8_0;

/// The element type of cached keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvType {
    /// 4 bytes per value.
    F32,
    /// IEEE half precision: 2 bytes per value.
    F16,
    /// ggml's Q8_0: blocks of 32 int8 values and an f16 scale, 34 bytes per 32 values (rows
    /// must hold a multiple of 32 values).
    Q8_0,
}

impl KvType {
    /// Every type, in the order `raven inspect` lists them.
    pub const ALL: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8_0];

    /// `f32`, `f16` or `q8_0`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// The type named `f32`, `f16` or `q8_0`.
    pub fn from_name(s: &str) -> Option<KvType> {
        KvType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Bytes that `n` values take (`n` a multiple of 32 for Q8_0).
    pub fn bytes(self, n: u64) -> u64 {
        match self {
            KvType::F32 => 4 * n,
            KvType::F16 => 2 * n,
            KvType::Q8_0 => n + 2 * n.div_ceil(QK as u64),
        }
    }

    /// Whether rows of `h` values can be stored (Q8_0: whole blocks; the kernels also need
    /// heads that start on 8-value boundaries, which every head size that is a multiple of 8
    /// gives).
    pub fn fits(self, h: usize) -> bool {
        match self {
            KvType::Q8_0 => h.is_multiple_of(QK),
            _ => true,
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every cached key and value row of one cache, as the attention kernels read them: row
/// offsets and head columns count values (not bytes). For Q8_0, value `i` is
/// `k[i] · kd[i / 32]` (`kd` f16 bits), likewise for the values.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    /// f32 rows.
    F32 {
        /// Keys.
        k: &'a [f32],
        /// Values.
        v: &'a [f32],
    },
    /// f16 rows (IEEE half bits).
    F16 {
        /// Keys.
        k: &'a [u16],
        /// Values.
        v: &'a [u16],
    },
    /// Q8_0 rows: int8 values and one f16 scale per 32.
    Q8_0 {
        /// Key quants.
        k: &'a [i8],
        /// Key block scales (f16 bits).
        kd: &'a [u16],
        /// Value quants.
        v: &'a [i8],
        /// Value block scales (f16 bits).
        vd: &'a [u16],
    },
}

impl KvRows<'_> {
    /// The element type.
    pub fn kv_type(&self) -> KvType {
        match self {
            KvRows::F32 { .. } => KvType::F32,
            KvRows::F16 { .. } => KvType::F16,
            KvRows::Q8_0 { .. } => KvType::Q8_0,
        }
    }

    /// Values addressable in both keys and values (rows must end at or before this).
    pub fn len(&self) -> usize {
        match *self {
            KvRows::F32 { k, v } => k.len().min(v.len()),
            KvRows::F16 { k, v } => k.len().min(v.len()),
            KvRows::Q8_0 { k, kd, v, vd } => {
                k.len().min(v.len()).min(kd.len() * QK).min(vd.len() * QK)
            }
        }
    }

    /// True when no value is addressable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Key (`value` false) or value values `start..start + out.len()`, widened to f32 into
    /// `out`. Panics when they lie outside the rows.
    pub fn widen(&self, value: bool, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match *self {
            KvRows::F32 { k, v } => out.copy_from_slice(&(if value { v } else { k })[start..end]),
            KvRows::F16 { k, v } => {
                let src = &(if value { v } else { k })[start..end];
                out.iter_mut()
                    .zip(src)
                    .for_each(|(o, &h)| *o = f16_to_f32(h));
            }
            KvRows::Q8_0 { k, kd, v, vd } => {
                let (q, d) = if value { (v, vd) } else { (k, kd) };
                let q = &q[start..end];
                assert!(
                    end == start || (end - 1) / QK < d.len(),
                    "Q8_0 scale out of range"
                );
                for (i, (o, &x)) in out.iter_mut().zip(q).enumerate() {
                    *o = x as f32 * f16_to_f32(d[(start + i) / QK]);
                }
            }
        }
    }
}

/// Stores `x` as half precision (round to nearest even, as F16C and `fcvtn` do).
///
/// # Panics
/// When `out` is shorter than `x`.
pub fn store_f16(x: &[f32], out: &mut [u16]) {
    assert!(out.len() >= x.len(), "store_f16: output too short");
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = f32_to_f16(v));
}

/// Stores `x` (a multiple of 32 values) as Q8_0 with ggml's reference rounding: int8 values in
/// `qs`, one f16 scale per 32 in `d`.
///
/// # Panics
/// When `x.len()` is not a multiple of 32 or the outputs are too short.
pub fn store_q8_0(x: &[f32], qs: &mut [i8], d: &mut [u16]) {
    assert!(
        x.len().is_multiple_of(QK) && qs.len() >= x.len() && d.len() >= x.len() / QK,
        "store_q8_0: {} values into {} quants and {} scales",
        x.len(),
        qs.len(),
        d.len()
    );
    for ((x, qs), d) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(d.iter_mut())
    {
        let (dh, q) = quantize_block_q8_0(x.try_into().expect("32 values"));
        qs.copy_from_slice(&q);
        *d = dh;
    }
}
