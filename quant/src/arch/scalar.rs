//! Portable kernels: the reference every SIMD set is tested against, and the fallback.

use super::{F32View, Kernels, Q8View};
use crate::blocks::{bf16_to_f32, f16_to_f32, Q4_0_BYTES, Q8_0_BYTES, QK};
use crate::kv::KvRows;
use crate::layout::{group_bytes, group_bytes_q8, q4_offsets, GROUP};
use crate::quantize::quantize_block_q8_0;

pub(crate) static KERNELS: Kernels = Kernels {
    name: "scalar",
    quantize_q8,
    dot_f32,
    axpy_f32,
    silu_mul,
    attend,
    attend_multi,
    mm_q8_0,
    mm_q4_0,
    mm_f32,
    mm_f16,
    mm_bf16,
    mm_q4_0x16,
    mm_q8_0x16,
    packed_pays: false,
    token_tile: 4,
};

pub(crate) fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (g, u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

pub(crate) fn quantize_q8(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [i32]) {
    let blocks = x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(d.iter_mut().zip(s));
    for ((x, qs), (d, s)) in blocks {
        let (dh, q) = quantize_block_q8_0(x.try_into().expect("32 values"));
        qs.copy_from_slice(&q);
        *d = f16_to_f32(dh);
        *s = q.iter().map(|&v| v as i32).sum();
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &[f32],
    kv: KvRows<'_>,
    offs: &[usize],
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_body!(dot_f32, axpy_f32, q, kv, offs, col, scale, scores, out)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_multi(
    q: &[f32],
    d: usize,
    kv: KvRows<'_>,
    offs: &[usize],
    lens: &[usize],
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    ldo: usize,
) {
    super::attend_multi_each(attend, q, d, kv, offs, lens, col, scale, scores, out, ldo)
}

/// Dot product with eight partial sums (which compilers keep in vector registers).
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        sum += x * y;
    }
    sum
}

pub(crate) fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

fn mm_q8(
    w: &[u8],
    rows: usize,
    act: Q8View<'_>,
    out: &mut [f32],
    ldo: usize,
    block_bytes: usize,
    block_dot: impl Fn(&[u8], &[i8], i32) -> i32,
) {
    let nb = act.nb;
    for (r, row) in w.chunks_exact(nb * block_bytes).take(rows).enumerate() {
        for t in 0..act.n {
            let mut sum = 0f32;
            for (b, blk) in row.chunks_exact(block_bytes).enumerate() {
                let i = t * nb + b;
                let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                let isum = block_dot(&blk[2..], &act.qs[i * QK..(i + 1) * QK], act.s[i]);
                sum += dw * act.d[i] * isum as f32;
            }
            out[t * ldo + r] = sum;
        }
    }
}

pub(crate) fn mm_q8_0(w: &[u8], rows: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
    mm_q8(w, rows, act, out, ldo, Q8_0_BYTES, |qw, qa, _| {
        qw.iter()
            .zip(qa)
            .map(|(&w, &a)| w as i8 as i32 * a as i32)
            .sum()
    });
}

pub(crate) fn mm_q4_0(w: &[u8], rows: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
    mm_q8(w, rows, act, out, ldo, Q4_0_BYTES, |qw, qa, _| {
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            sum += ((qw[j] & 0x0f) as i32 - 8) * qa[j] as i32;
            sum += ((qw[j] >> 4) as i32 - 8) * qa[j + QK / 2] as i32;
        }
        sum
    });
}

fn mm_float(
    w: &[u8],
    rows: usize,
    act: F32View<'_>,
    out: &mut [f32],
    ldo: usize,
    size: usize,
    convert: impl Fn(&[u8]) -> f32,
) {
    let cols = act.cols;
    let mut buf = [0f32; 256];
    for (r, row) in w.chunks_exact(cols * size).take(rows).enumerate() {
        for t in 0..act.n {
            out[t * ldo + r] = 0.0;
        }
        for (c, chunk) in row.chunks(256 * size).enumerate() {
            let m = chunk.len() / size;
            for (o, v) in buf.iter_mut().zip(chunk.chunks_exact(size)) {
                *o = convert(v);
            }
            for t in 0..act.n {
                let x = &act.x[t * cols + c * 256..][..m];
                out[t * ldo + r] += dot_f32(&buf[..m], x);
            }
        }
    }
}

pub(crate) fn mm_f32(w: &[u8], rows: usize, act: F32View<'_>, out: &mut [f32], ldo: usize) {
    mm_float(w, rows, act, out, ldo, 4, |v| {
        f32::from_le_bytes([v[0], v[1], v[2], v[3]])
    });
}

pub(crate) fn mm_f16(w: &[u8], rows: usize, act: F32View<'_>, out: &mut [f32], ldo: usize) {
    mm_float(w, rows, act, out, ldo, 2, |v| {
        f16_to_f32(u16::from_le_bytes([v[0], v[1]]))
    });
}

pub(crate) fn mm_bf16(w: &[u8], rows: usize, act: F32View<'_>, out: &mut [f32], ldo: usize) {
    mm_float(w, rows, act, out, ldo, 2, |v| {
        bf16_to_f32(u16::from_le_bytes([v[0], v[1]]))
    });
}

/// Packed Q4_0: see [`crate::layout`] for the layout.
pub(crate) fn mm_q4_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
    let nb = act.nb;
    for (g, grp) in w.chunks(group_bytes(nb)).take(groups).enumerate() {
        for t in 0..act.n {
            let mut sum = [0f32; GROUP];
            for b in 0..nb {
                let i = t * nb + b;
                let qa = &act.qs[i * QK..(i + 1) * QK];
                let (qo, so) = q4_offsets(nb, b);
                let (blk, scales) = (&grp[qo..], &grp[so..]);
                for (r, sum) in sum.iter_mut().enumerate() {
                    let dw = f16_to_f32(u16::from_le_bytes([scales[2 * r], scales[2 * r + 1]]));
                    let mut isum = 0i32;
                    for k in 0..4 {
                        for j in 0..4 {
                            let q = blk[64 * k + 4 * r + j];
                            isum += ((q & 0x0f) as i32 - 8) * qa[4 * k + j] as i32;
                            isum += ((q >> 4) as i32 - 8) * qa[16 + 4 * k + j] as i32;
                        }
                    }
                    *sum += dw * act.d[i] * isum as f32;
                }
            }
            out[t * ldo + GROUP * g..][..GROUP].copy_from_slice(&sum);
        }
    }
}

/// Packed Q8_0: see [`crate::layout`] for the layout.
pub(crate) fn mm_q8_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
    let nb = act.nb;
    for (g, grp) in w.chunks(group_bytes_q8(nb)).take(groups).enumerate() {
        let (qs, scales) = grp.split_at(nb * 512);
        for t in 0..act.n {
            let mut sum = [0f32; GROUP];
            for b in 0..nb {
                let i = t * nb + b;
                let qa = &act.qs[i * QK..(i + 1) * QK];
                let blk = &qs[512 * b..];
                for (r, sum) in sum.iter_mut().enumerate() {
                    let dw = f16_to_f32(u16::from_le_bytes([
                        scales[32 * b + 2 * r],
                        scales[32 * b + 2 * r + 1],
                    ]));
                    let mut isum = 0i32;
                    for k in 0..8 {
                        for j in 0..4 {
                            isum += blk[64 * k + 4 * r + j] as i8 as i32 * qa[4 * k + j] as i32;
                        }
                    }
                    *sum += dw * act.d[i] * isum as f32;
                }
            }
            out[t * ldo + GROUP * g..][..GROUP].copy_from_slice(&sum);
        }
    }
}
