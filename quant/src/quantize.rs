//! ggml's reference quantizers and dequantizers, row at a time.
//!
//! Each quantizer reproduces ggml's `quantize_row_*_ref` bit for bit (same operations in the
//! same order, f32 arithmetic, f16 rounding to nearest even); the dequantizers reproduce
//! `dequantize_row_*`.

use crate::blocks::*;
use crate::{GgmlType, QuantError};

/// True when [`quantize_row`] supports `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(ty, F32 | F16 | BF16 | Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1)
}

/// True when [`dequantize_row`] supports `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType::*;
    can_quantize(ty) || matches!(ty, Q4K | Q6K | Q8_1)
}

fn check(
    op: &'static str,
    ty: GgmlType,
    n: usize,
    bytes: usize,
    what: &'static str,
) -> Result<(), QuantError> {
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::NotBlockMultiple { ty, n, block });
    }
    let expected = n / block * ty.type_size();
    if bytes != expected {
        return Err(QuantError::LengthMismatch {
            what,
            ty,
            expected,
            got: bytes,
        });
    }
    let _ = op;
    Ok(())
}

/// Quantizes `src` (a whole number of blocks) into `dst`, which must be exactly
/// `ty.row_bytes(src.len())` bytes. Supports F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1,
/// bit for bit as ggml's reference quantizers.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    if !can_quantize(ty) {
        return Err(QuantError::Unsupported { op: "quantize", ty });
    }
    check("quantize", ty, src.len(), dst.len(), "destination")?;
    let size = ty.type_size();
    let chunks = src
        .chunks_exact(ty.block_size())
        .zip(dst.chunks_exact_mut(size));
    match ty {
        GgmlType::F32 => {
            for (x, y) in chunks {
                y.copy_from_slice(&x[0].to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (x, y) in chunks {
                y.copy_from_slice(&f32_to_f16(x[0]).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (x, y) in chunks {
                y.copy_from_slice(&f32_to_bf16(x[0]).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            for (x, y) in chunks {
                let (d, qs) = quantize_block_q8_0(x.try_into().expect("32 values"));
                let b = BlockQ8_0 { d, qs };
                y.copy_from_slice(bytemuck::bytes_of(&b));
            }
        }
        GgmlType::Q4_0 => {
            for (x, y) in chunks {
                y.copy_from_slice(bytemuck::bytes_of(&quantize_block_q4_0(x)));
            }
        }
        GgmlType::Q4_1 => {
            for (x, y) in chunks {
                y.copy_from_slice(bytemuck::bytes_of(&quantize_block_q4_1(x)));
            }
        }
        GgmlType::Q5_0 => {
            for (x, y) in chunks {
                y.copy_from_slice(bytemuck::bytes_of(&quantize_block_q5_0(x)));
            }
        }
        GgmlType::Q5_1 => {
            for (x, y) in chunks {
                y.copy_from_slice(bytemuck::bytes_of(&quantize_block_q5_1(x)));
            }
        }
        _ => unreachable!("checked by can_quantize"),
    }
    Ok(())
}

/// ggml's `roundf`: round half away from zero.
#[inline(always)]
fn roundf(x: f32) -> f32 {
    x.round()
}

/// Quantizes one block of 32 values to Q8_0 as ggml's `quantize_row_q8_0_ref`: `d = amax / 127`
/// (stored as f16), `q = roundf(x · (1 / d))`. Returns the f16 bits of `d` and the values.
/// The activation quantizers of every instruction set reproduce this bit for bit.
#[inline]
pub(crate) fn quantize_block_q8_0(x: &[f32; QK]) -> (u16, [i8; QK]) {
    let mut amax = 0.0f32;
    for &v in x {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = roundf(v * id) as i8;
    }
    (f32_to_f16(d), qs)
}

/// The value of largest magnitude (the first one on ties), as ggml's Q4_0/Q5_0 quantizers pick it.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// C's `(int8_t)f` for the ranges these quantizers produce (truncation toward zero).
#[inline(always)]
fn trunc_i8(f: f32) -> i32 {
    f as i8 as i32
}

fn quantize_block_q4_0(x: &[f32]) -> BlockQ4_0 {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ4_0 {
        d: f32_to_f16(d),
        qs: [0; 16],
    };
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = trunc_i8(x0 + 8.5).min(15) as u8;
        let xi1 = trunc_i8(x1 + 8.5).min(15) as u8;
        b.qs[j] = xi0 | (xi1 << 4);
    }
    b
}

fn quantize_block_q4_1(x: &[f32]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ4_1 {
        d: f32_to_f16(d),
        m: f32_to_f16(min),
        qs: [0; 16],
    };
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let xi0 = trunc_i8(x0 + 0.5).min(15) as u8;
        let xi1 = trunc_i8(x1 + 0.5).min(15) as u8;
        b.qs[j] = xi0 | (xi1 << 4);
    }
    b
}

fn quantize_block_q5_0(x: &[f32]) -> BlockQ5_0 {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ5_0 {
        d: f32_to_f16(d),
        qh: [0; 4],
        qs: [0; 16],
    };
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        let xi0 = trunc_i8(x0 + 16.5).min(31) as u32;
        let xi1 = trunc_i8(x1 + 16.5).min(31) as u32;
        b.qs[j] = ((xi0 & 0x0f) | ((xi1 & 0x0f) << 4)) as u8;
        qh |= ((xi0 & 0x10) >> 4) << j;
        qh |= ((xi1 & 0x10) >> 4) << (j + QK / 2);
    }
    b.qh = qh.to_le_bytes();
    b
}

fn quantize_block_q5_1(x: &[f32]) -> BlockQ5_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut b = BlockQ5_1 {
        d: f32_to_f16(d),
        m: f32_to_f16(min),
        qh: [0; 4],
        qs: [0; 16],
    };
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        // ggml casts to uint8_t here; the values are in [0, 31.5).
        let xi0 = (x0 + 0.5) as u8 as u32;
        let xi1 = (x1 + 0.5) as u8 as u32;
        b.qs[j] = ((xi0 & 0x0f) | ((xi1 & 0x0f) << 4)) as u8;
        qh |= ((xi0 & 0x10) >> 4) << j;
        qh |= ((xi1 & 0x10) >> 4) << (j + QK / 2);
    }
    b.qh = qh.to_le_bytes();
    b
}

/// Dequantizes `src` (exactly `ty.row_bytes(dst.len())` bytes) into `dst`. Supports every type
/// [`quantize_row`] does plus Q8_1, Q4_K and Q6_K.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if !can_dequantize(ty) {
        return Err(QuantError::Unsupported {
            op: "dequantize",
            ty,
        });
    }
    check("dequantize", ty, dst.len(), src.len(), "source")?;
    dequantize_unchecked(ty, src, dst);
    Ok(())
}

/// [`dequantize_row`] without the checks: `src` holds `dst.len() / block` whole blocks.
pub(crate) fn dequantize_unchecked(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    let bs = ty.block_size();
    let size = ty.type_size();
    let chunks = src.chunks_exact(size).zip(dst.chunks_exact_mut(bs));
    match ty {
        GgmlType::F32 => {
            for (x, y) in chunks {
                y[0] = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
            }
        }
        GgmlType::F16 => {
            for (x, y) in chunks {
                y[0] = f16_to_f32(u16::from_le_bytes([x[0], x[1]]));
            }
        }
        GgmlType::BF16 => {
            for (x, y) in chunks {
                y[0] = bf16_to_f32(u16::from_le_bytes([x[0], x[1]]));
            }
        }
        GgmlType::Q8_0 => {
            for (x, y) in chunks {
                let b: BlockQ8_0 = bytemuck::pod_read_unaligned(x);
                let d = f16_to_f32(b.d);
                for (o, &q) in y.iter_mut().zip(&b.qs) {
                    *o = q as f32 * d;
                }
            }
        }
        GgmlType::Q8_1 => {
            for (x, y) in chunks {
                let b: BlockQ8_1 = bytemuck::pod_read_unaligned(x);
                let d = f16_to_f32(b.d);
                for (o, &q) in y.iter_mut().zip(&b.qs) {
                    *o = q as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (x, y) in chunks {
                let b: BlockQ4_0 = bytemuck::pod_read_unaligned(x);
                let d = f16_to_f32(b.d);
                for j in 0..QK / 2 {
                    y[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
                    y[j + QK / 2] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (x, y) in chunks {
                let b: BlockQ4_1 = bytemuck::pod_read_unaligned(x);
                let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
                for j in 0..QK / 2 {
                    y[j] = (b.qs[j] & 0x0f) as f32 * d + m;
                    y[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (x, y) in chunks {
                let b: BlockQ5_0 = bytemuck::pod_read_unaligned(x);
                let d = f16_to_f32(b.d);
                let qh = u32::from_le_bytes(b.qh);
                for j in 0..QK / 2 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    let x0 = ((b.qs[j] as u32 & 0x0f) | h0) as i32 - 16;
                    let x1 = ((b.qs[j] as u32 >> 4) | h1) as i32 - 16;
                    y[j] = x0 as f32 * d;
                    y[j + QK / 2] = x1 as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (x, y) in chunks {
                let b: BlockQ5_1 = bytemuck::pod_read_unaligned(x);
                let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
                let qh = u32::from_le_bytes(b.qh);
                for j in 0..QK / 2 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    let x0 = (b.qs[j] as u32 & 0x0f) | h0;
                    let x1 = (b.qs[j] as u32 >> 4) | h1;
                    y[j] = x0 as f32 * d + m;
                    y[j + QK / 2] = x1 as f32 * d + m;
                }
            }
        }
        GgmlType::Q4K => {
            for (x, y) in chunks {
                let b: BlockQ4K = bytemuck::pod_read_unaligned(x);
                let (d, min) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
                for (j, (q, y)) in
                    b.qs.chunks_exact(32)
                        .zip(y.chunks_exact_mut(64))
                        .enumerate()
                {
                    let (sc1, m1) = scale_min_k4(2 * j, &b.scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, &b.scales);
                    let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
                    for l in 0..32 {
                        y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                        y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            for (x, y) in chunks {
                let b: BlockQ6K = bytemuck::pod_read_unaligned(x);
                let d = f16_to_f32(b.d);
                for half in 0..2 {
                    let ql = &b.ql[64 * half..];
                    let qh = &b.qh[32 * half..];
                    let sc = &b.scales[8 * half..];
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * sc[is] as f32 * q1 as f32;
                        y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                        y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                        y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
                    }
                }
            }
        }
        _ => unreachable!("checked by can_dequantize"),
    }
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K block (`get_scale_min_k4`).
#[inline]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
