//! ggml's block formats, field for field (`ggml-common.h`).
//!
//! Scales are stored as the raw bits of an IEEE half (`u16`, little-endian in the file), so
//! every block is plain old data with an alignment of at most 2. Weights come from a memory
//! map at arbitrary offsets: read blocks with [`read_blocks`] (or `bytemuck::pod_read_unaligned`),
//! never by casting a pointer that may be misaligned.

use bytemuck::{Pod, Zeroable};

/// Values per block of the 32-value formats (Q4_0 … Q8_1).
pub const QK: usize = 32;
/// Values per super-block of the K-quants.
pub const QK_K: usize = 256;

/// Bytes of one Q4_0 block ([`BlockQ4_0`]).
pub(crate) const Q4_0_BYTES: usize = std::mem::size_of::<BlockQ4_0>();
/// Bytes of one Q8_0 block ([`BlockQ8_0`]).
pub(crate) const Q8_0_BYTES: usize = std::mem::size_of::<BlockQ8_0>();

/// Q8_0: 32 signed bytes times one scale: `x = d · qs[i]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// Q8_1: like Q8_0 plus `s = d · Σ qs` (ggml uses it as the activation of Q4_1/Q5_1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_1 {
    /// Scale (f16 bits).
    pub d: u16,
    /// `d` times the sum of `qs` (f16 bits).
    pub s: u16,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// Q4_0: 32 nibbles (value `i` in the low nibble of `qs[i]`, value `i + 16` in the high nibble)
/// and one scale: `x = d · (q − 8)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Nibbles.
    pub qs: [u8; QK / 2],
}

/// Q4_1: nibbles as in Q4_0 with a scale and a minimum: `x = d · q + m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Minimum (f16 bits).
    pub m: u16,
    /// Nibbles.
    pub qs: [u8; QK / 2],
}

/// Q5_0: Q4_0's nibbles plus a fifth bit per value in `qh` (bit `i` for value `i`, little-endian
/// u32): `x = d · (q − 16)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_0 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Fifth bits.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; QK / 2],
}

/// Q5_1: Q5_0's values with a scale and a minimum: `x = d · q + m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ5_1 {
    /// Scale (f16 bits).
    pub d: u16,
    /// Minimum (f16 bits).
    pub m: u16,
    /// Fifth bits.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; QK / 2],
}

/// Q4_K: 256 values in 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit minimum packed
/// in `scales`: `x = d · sc · q − dmin · m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4K {
    /// Super-block scale of the scales (f16 bits).
    pub d: u16,
    /// Super-block scale of the minimums (f16 bits).
    pub dmin: u16,
    /// Packed 6-bit scales and minimums.
    pub scales: [u8; 12],
    /// Nibbles.
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 256 6-bit values (low 4 bits in `ql`, high 2 in `qh`) in 16 sub-blocks of 16 with
/// signed 8-bit scales: `x = d · scales[s] · (q − 32)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ6K {
    /// Low 4 bits.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits.
    pub qh: [u8; QK_K / 4],
    /// Sub-block scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale (f16 bits).
    pub d: u16,
}

// ggml's block sizes (`ggml-common.h`), checked: the structs above define them for this crate
// (`Q4_0_BYTES`, `Q8_0_BYTES`, `GgmlType::type_size`, which `block!` checks against them).
const _: () = {
    assert!(std::mem::size_of::<BlockQ8_0>() == 34);
    assert!(std::mem::size_of::<BlockQ8_1>() == 36);
    assert!(std::mem::size_of::<BlockQ4_0>() == 18);
    assert!(std::mem::size_of::<BlockQ4_1>() == 20);
    assert!(std::mem::size_of::<BlockQ5_0>() == 22);
    assert!(std::mem::size_of::<BlockQ5_1>() == 24);
    assert!(std::mem::size_of::<BlockQ4K>() == 144);
    assert!(std::mem::size_of::<BlockQ6K>() == 210);
};

/// A ggml block type: its [`crate::GgmlType`] and the number of values it holds.
pub trait Block: Pod {
    /// The element type this block belongs to.
    const TYPE: crate::GgmlType;
    /// Values per block.
    const VALUES: usize;
}

macro_rules! block {
    ($t:ty, $g:ident, $n:expr) => {
        impl Block for $t {
            const TYPE: crate::GgmlType = crate::GgmlType::$g;
            const VALUES: usize = $n;
        }
        const _: () = assert!(std::mem::size_of::<$t>() == crate::GgmlType::$g.type_size());
    };
}
block!(BlockQ8_0, Q8_0, QK);
block!(BlockQ8_1, Q8_1, QK);
block!(BlockQ4_0, Q4_0, QK);
block!(BlockQ4_1, Q4_1, QK);
block!(BlockQ5_0, Q5_0, QK);
block!(BlockQ5_1, Q5_1, QK);
block!(BlockQ4K, Q4K, QK_K);
block!(BlockQ6K, Q6K, QK_K);

/// Iterates over the blocks in `bytes` (any alignment), reading each one unaligned-safe.
/// A trailing partial block is ignored; callers check lengths first.
pub fn read_blocks<B: Block>(bytes: &[u8]) -> impl Iterator<Item = B> + '_ {
    bytes
        .chunks_exact(std::mem::size_of::<B>())
        .map(bytemuck::pod_read_unaligned::<B>)
}

/// Converts f16 bits to f32 exactly (normals, subnormals, infinities and NaN), without tables.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // Shifting the exponent and mantissa into place and scaling by 2^112 rebiases the exponent;
    // f16 subnormals land on f32 subnormals, which the scale makes normal exactly.
    let mut v = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    if em >= 0x7c00 {
        v = f32::from_bits(0x7f80_0000 | (em & 0x3ff) << 13);
    }
    f32::from_bits(v.to_bits() | sign)
}

/// Converts f32 to f16 bits, rounding to nearest even (as ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// Converts bf16 bits to f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Converts f32 to bf16 bits as ggml does (`ggml_compute_fp32_to_bf16`): round to nearest even,
/// NaN kept quiet.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#x}");
            }
        }
    }

    #[test]
    fn blocks_read_from_odd_offsets() {
        let mut bytes = [0u8; 1 + 2 * Q4_0_BYTES];
        bytes[1] = 0x00;
        bytes[2] = 0x3c; // 1.0
        bytes[3] = 0x21;
        let blocks: Vec<BlockQ4_0> = read_blocks(&bytes[1..]).collect();
        assert_eq!(blocks.len(), 2);
        assert_eq!(f16_to_f32(blocks[0].d), 1.0);
        assert_eq!(blocks[0].qs[0], 0x21);
    }
}
