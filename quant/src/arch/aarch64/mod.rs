//! aarch64 kernels. The algorithms live here as `#[inline(always)]` functions generic over
//! whether the dotprod extension's `sdot` is available; [`neon`], [`dotprod`] and [`i8mm`]
//! instantiate them inside `#[target_feature]` functions. `sdot`, `smmla` and the f16
//! conversion `fcvtl` are emitted with `asm!` because their intrinsics are not stable in
//! Rust 1.95.
#![allow(clippy::needless_range_loop)] // token and lane indices read clearer in these loops

pub(crate) mod dotprod;
pub(crate) mod i8mm;
pub(crate) mod neon;

use core::arch::aarch64::*;
use core::arch::asm;

use super::{check_packed, check_q8, F32View, Q8View};
use crate::blocks::{f16_to_f32, f32_to_f16, Q4_0_BYTES, Q8_0_BYTES, QK};
use crate::layout::{group_bytes, group_bytes_q8, q4_offsets};

/// `acc + Σ a·b` over 16 byte pairs, spread over the four lanes in some order.
///
/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default). With
/// `DOT`, also the dotprod extension (`sdot`).
#[inline(always)]
unsafe fn dot16<const DOT: bool>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `sdot` only
    // reads and writes registers.
    unsafe {
        if DOT {
            let mut acc = acc;
            asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
                 options(pure, nomem, nostack));
            acc
        } else {
            // |a·b| ≤ 128·127, so two products fit in an i16.
            let p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
            let p = vmlal_high_s8(p, a, b);
            vpadalq_s16(acc, p)
        }
    }
}

/// `acc[i] + Σ_j a[4i + j] · b[4L + j]`: `sdot` by element.
///
/// # Safety
/// The CPU must support the dotprod extension (`sdot`).
#[inline(always)]
unsafe fn sdot_lane<const L: i32>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `sdot` only
    // reads and writes registers.
    unsafe {
        let mut acc = acc;
        asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.4b[{l}]", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
             l = const L, options(pure, nomem, nostack));
        acc
    }
}

/// Four f16 (as bits) to f32, exactly.
///
/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default).
#[inline(always)]
unsafe fn cvt_f16x4(h: uint16x4_t) -> float32x4_t {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `fcvtl` only
    // reads and writes registers.
    unsafe {
        let out: float32x4_t;
        asm!("fcvtl {o:v}.4s, {i:v}.4h", o = lateout(vreg) out, i = in(vreg) h, options(pure, nomem, nostack));
        out
    }
}

/// Activation quantizer: the operations of `quantize_block_q8_0`, four lanes at a time
/// (`vcvtaq_s32_f32` rounds half away from zero, as `roundf`).
///
/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default).
/// Lengths are checked here: `x` is read in whole blocks and `qs`, `d`, `s` are asserted to hold
/// them.
#[inline(always)]
unsafe fn quantize_q8(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [i32]) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); loads stay in the
    // whole blocks of `x`, stores in `qs`, `d` and `s`, whose lengths are asserted first.
    unsafe {
        let nb = x.len() / QK;
        assert!(qs.len() >= nb * QK && d.len() >= nb && s.len() >= nb);
        for b in 0..nb {
            let p = x.as_ptr().add(b * QK);
            let v: [float32x4_t; 8] = core::array::from_fn(|i| vld1q_f32(p.add(4 * i)));
            let mut m = vabsq_f32(v[0]);
            for vi in &v[1..] {
                m = vmaxq_f32(m, vabsq_f32(*vi));
            }
            let amax = vmaxvq_f32(m);
            let dd = amax / 127.0;
            let id = if dd != 0.0 { 1.0 / dd } else { 0.0 };
            let q: [int32x4_t; 8] = core::array::from_fn(|i| vcvtaq_s32_f32(vmulq_n_f32(v[i], id)));
            let mut sum = q[0];
            for qi in &q[1..] {
                sum = vaddq_s32(sum, *qi);
            }
            let out = qs.as_mut_ptr().add(b * QK);
            for h in 0..2 {
                let a = vcombine_s16(vqmovn_s32(q[4 * h]), vqmovn_s32(q[4 * h + 1]));
                let c = vcombine_s16(vqmovn_s32(q[4 * h + 2]), vqmovn_s32(q[4 * h + 3]));
                vst1q_s8(out.add(16 * h), vcombine_s8(vqmovn_s16(a), vqmovn_s16(c)));
            }
            *d.get_unchecked_mut(b) = f16_to_f32(f32_to_f16(dd));
            *s.get_unchecked_mut(b) = vaddvq_s32(sum);
        }
    }
}

/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default). Reads
/// stay within the shorter slice.
#[inline(always)]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); every load is at
    // an index below `n`, the length of the shorter slice.
    unsafe {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for j in 0..4 {
                acc[j] = vfmaq_f32(
                    acc[j],
                    vld1q_f32(pa.add(i + 4 * j)),
                    vld1q_f32(pb.add(i + 4 * j)),
                );
            }
            i += 16;
        }
        while i + 4 <= n {
            acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
            i += 4;
        }
        let mut sum = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        while i < n {
            sum += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        sum
    }
}

/// One query head (`attend_body!`) with this module's `dot_f32` and `axpy_f32`.
///
/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default).
/// Indexing in `attend_body!` is checked.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend(
    q: &[f32],
    kv: crate::kv::KvRows<'_>,
    offs: &[usize],
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `attend_body!`
    // slices the keys and values with bounds checks (`widen` too) and passes slices to
    // `dot_f32` and `axpy_f32`, which stay within them.
    unsafe { attend_body!(widen: widen; dot_f32, axpy_f32, q, kv, offs, col, scale, scores, out) }
}

/// `KvRows::widen` with NEON: f16 four values per `fcvtl`, Q8_0 eight per block run (int8 to
/// f32, times the block's scale). Both are exact and so equal `KvRows::widen` bit for bit; it
/// panics where that does (values or, for Q8_0, scales outside the rows).
///
/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default).
/// Lengths are checked here (slicing).
#[inline(always)]
unsafe fn widen(kv: &crate::kv::KvRows<'_>, value: bool, start: usize, out: &mut [f32]) {
    use crate::kv::KvRows;
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `src` and `q` are
    // slices of `out.len()` values (checked by slicing) and every access below is at an
    // index below `n = out.len()` (four or eight at a time only while they fit).
    unsafe {
        let n = out.len();
        let o = out.as_mut_ptr();
        match *kv {
            KvRows::F32 { .. } => kv.widen(value, start, out),
            KvRows::F16 { k, v } => {
                let src = &(if value { v } else { k })[start..start + n];
                let p = src.as_ptr();
                let mut i = 0;
                while i + 4 <= n {
                    vst1q_f32(o.add(i), cvt_f16x4(vld1_u16(p.add(i))));
                    i += 4;
                }
                while i < n {
                    *o.add(i) = f16_to_f32(*p.add(i));
                    i += 1;
                }
            }
            KvRows::Q8_0 { k, kd, v, vd } => {
                let (q, d) = if value { (v, vd) } else { (k, kd) };
                let q = &q[start..start + n];
                if n > 0 {
                    assert!((start + n - 1) / QK < d.len(), "Q8_0 scale out of range");
                }
                let p = q.as_ptr();
                let mut i = 0;
                while i < n {
                    // The values of one block: the same scale (`q · d`, exact).
                    let b = (start + i) / QK;
                    let s = f16_to_f32(*d.get_unchecked(b));
                    let stop = ((b + 1) * QK - start).min(n);
                    while i + 8 <= stop {
                        let w = vmovl_s8(vld1_s8(p.add(i)));
                        let lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(w)));
                        let hi = vcvtq_f32_s32(vmovl_high_s16(w));
                        vst1q_f32(o.add(i), vmulq_n_f32(lo, s));
                        vst1q_f32(o.add(i + 4), vmulq_n_f32(hi, s));
                        i += 8;
                    }
                    while i < stop {
                        *o.add(i) = *p.add(i) as f32 * s;
                        i += 1;
                    }
                }
            }
        }
    }
}

/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default).
/// Accesses stay within the shorter slice.
#[inline(always)]
unsafe fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); every access is at
    // an index below `n`, the length of the shorter slice.
    unsafe {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 4 <= n {
            vst1q_f32(
                py.add(i),
                vfmaq_n_f32(vld1q_f32(py.add(i)), vld1q_f32(px.add(i)), alpha),
            );
            i += 4;
        }
        while i < n {
            *py.add(i) += alpha * *px.add(i);
            i += 1;
        }
    }
}

/// One Q8_0 or Q4_0 row against `NT` tokens starting at token `t0`.
///
/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default). With
/// `DOT`, also the dotprod extension (`sdot`). `row` must be valid for reads of `act.nb` blocks (18
/// bytes each for Q4_0, 34 for Q8_0), and tokens `t0..t0 + NT` must lie in `act` (its slices hold
/// `act.n` tokens, as `check_q8` checks, and `t0 + NT ≤ act.n`).
#[inline(always)]
unsafe fn row_q<const NT: usize, const DOT: bool, const Q4: bool>(
    row: *const u8,
    act: &Q8View<'_>,
    t0: usize,
) -> [f32; NT] {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that `row` holds
    // `act.nb` blocks and that tokens `t0..t0 + NT` are in `act`: every pointer below stays in
    // those.
    unsafe {
        let nb = act.nb;
        let bb = if Q4 { Q4_0_BYTES } else { Q8_0_BYTES };
        let qa: [*const i8; NT] = core::array::from_fn(|t| act.qs.as_ptr().add((t0 + t) * nb * QK));
        let da: [*const f32; NT] = core::array::from_fn(|t| act.d.as_ptr().add((t0 + t) * nb));
        let mut acc = [[vdupq_n_f32(0.0); NT]; 2];
        for b in 0..nb {
            let p = row.add(b * bb);
            let dw = f16_to_f32((p as *const u16).read_unaligned());
            let (w0, w1) = if Q4 {
                let q = vld1q_u8(p.add(2));
                let eight = vdupq_n_s8(8);
                (
                    vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), eight),
                    vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight),
                )
            } else {
                (
                    vld1q_s8(p.add(2) as *const i8),
                    vld1q_s8(p.add(2 + 16) as *const i8),
                )
            };
            for t in 0..NT {
                let a = qa[t].add(b * QK);
                let isum = dot16::<DOT>(vdupq_n_s32(0), w0, vld1q_s8(a));
                let isum = dot16::<DOT>(isum, w1, vld1q_s8(a.add(16)));
                acc[b & 1][t] = vfmaq_n_f32(acc[b & 1][t], vcvtq_f32_s32(isum), dw * *da[t].add(b));
            }
        }
        core::array::from_fn(|t| vaddvq_f32(vaddq_f32(acc[0][t], acc[1][t])))
    }
}

/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default). With
/// `DOT`, also the dotprod extension (`sdot`). Lengths are checked here (`check_q8`).
#[inline(always)]
unsafe fn mm_q<const DOT: bool, const Q4: bool>(
    w: &[u8],
    rows: usize,
    act: Q8View<'_>,
    out: &mut [f32],
    ldo: usize,
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `check_q8`
    // puts `rows` rows of `act.nb` blocks in `w`, every token in `act` and every
    // `(t + j) · ldo + r` in `out`.
    unsafe {
        let bb = if Q4 { Q4_0_BYTES } else { Q8_0_BYTES };
        check_q8(w, rows, bb, &act, out, ldo);
        let rb = act.nb * bb;
        let o = out.as_mut_ptr();
        for r in 0..rows {
            let row = w.as_ptr().add(r * rb);
            tile_tokens!(act.n, 4, |t, NT| {
                let v = row_q::<NT, DOT, Q4>(row, &act, t);
                for (j, v) in v.iter().enumerate() {
                    *o.add((t + j) * ldo + r) = *v;
                }
            });
        }
    }
}

/// Four weights of kind `KIND` (0 f32, 1 f16, 2 bf16) from `p`, as f32.
///
/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default). `p`
/// must be valid for reads of 4 values of the kind (16 bytes for f32, 8 for f16 and bf16); any
/// alignment (`vld1` needs only the element's).
#[inline(always)]
unsafe fn load4<const KIND: u8>(p: *const u8) -> float32x4_t {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`) and 4 readable
    // values at `p`.
    unsafe {
        match KIND {
            0 => vld1q_f32(p as *const f32),
            1 => cvt_f16x4(vld1_u16(p as *const u16)),
            _ => vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p as *const u16), 16)),
        }
    }
}

/// # Safety
/// `p` must be valid for reads of one value of the kind (4 bytes for f32, 2 for f16 and bf16);
/// any alignment.
#[inline(always)]
unsafe fn scalar1<const KIND: u8>(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees one readable value at `p`; the reads are unaligned.
    unsafe {
        match KIND {
            0 => (p as *const f32).read_unaligned(),
            1 => f16_to_f32((p as *const u16).read_unaligned()),
            _ => crate::blocks::bf16_to_f32((p as *const u16).read_unaligned()),
        }
    }
}

/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default). `row`
/// must be valid for reads of `act.cols` values of the kind (4 bytes each for f32, 2 for f16 and
/// bf16), and tokens `t0..t0 + NT` must lie in `act.x` (`(t0 + NT) · act.cols ≤ act.x.len()`).
#[inline(always)]
unsafe fn row_float<const NT: usize, const KIND: u8>(
    row: *const u8,
    act: &F32View<'_>,
    t0: usize,
) -> [f32; NT] {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that `row` holds
    // `act.cols` values and that tokens `t0..t0 + NT` are in `act.x`: every access below is at
    // a value index below `cols`.
    unsafe {
        let size = if KIND == 0 { 4 } else { 2 };
        let cols = act.cols;
        let x: [*const f32; NT] = core::array::from_fn(|t| act.x.as_ptr().add((t0 + t) * cols));
        let mut acc = [[vdupq_n_f32(0.0); NT]; 2];
        let mut i = 0;
        while i + 8 <= cols {
            let w0 = load4::<KIND>(row.add(i * size));
            let w1 = load4::<KIND>(row.add((i + 4) * size));
            for t in 0..NT {
                acc[0][t] = vfmaq_f32(acc[0][t], w0, vld1q_f32(x[t].add(i)));
                acc[1][t] = vfmaq_f32(acc[1][t], w1, vld1q_f32(x[t].add(i + 4)));
            }
            i += 8;
        }
        let mut sum: [f32; NT] =
            core::array::from_fn(|t| vaddvq_f32(vaddq_f32(acc[0][t], acc[1][t])));
        while i < cols {
            let wv = scalar1::<KIND>(row.add(i * size));
            for t in 0..NT {
                sum[t] += wv * *x[t].add(i);
            }
            i += 1;
        }
        sum
    }
}

/// # Safety
/// The CPU must support NEON (which the aarch64 targets Raven builds for enable by default).
/// Lengths are checked here (the asserts).
#[inline(always)]
unsafe fn mm_float<const KIND: u8>(
    w: &[u8],
    rows: usize,
    act: F32View<'_>,
    out: &mut [f32],
    ldo: usize,
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); the asserts put
    // `rows` rows of `act.cols` values in `w`, every token in `act.x` and every
    // `(t + j) · ldo + r` in `out`.
    unsafe {
        let size = if KIND == 0 { 4 } else { 2 };
        let rb = act.cols * size;
        assert!(w.len() >= rows * rb && act.x.len() >= act.n * act.cols);
        assert!(act.n == 0 || rows == 0 || out.len() >= (act.n - 1) * ldo + rows);
        let o = out.as_mut_ptr();
        for r in 0..rows {
            let row = w.as_ptr().add(r * rb);
            tile_tokens!(act.n, 4, |t, NT| {
                let v = row_float::<NT, KIND>(row, &act, t);
                for (j, v) in v.iter().enumerate() {
                    *o.add((t + j) * ldo + r) = *v;
                }
            });
        }
    }
}

/// 16 interleaved Q4_0 rows (see `crate::layout`) against `NT` tokens with `sdot` by element:
/// each 128-bit vector holds 4 bytes of 4 rows, each activation word is one lane.
///
/// # Safety
/// The CPU must support NEON and the dotprod extension (`sdot`). `g` must be valid for reads
/// of one Q4_0 group of `act.nb` columns (`group_bytes(act.nb)` bytes), and tokens
/// `t0..t0 + NT` must lie in `act` (`t0 + NT ≤ act.n`, its slices holding `act.n` tokens).
#[inline(always)]
unsafe fn group_q4_0x16<const NT: usize>(
    g: *const u8,
    act: &Q8View<'_>,
    t0: usize,
) -> [[float32x4_t; 4]; NT] {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that the group
    // holds `group_bytes(nb)` bytes (the offsets from `q4_offsets` and the 256 + 32 bytes read
    // there stay in it) and that tokens `t0..t0 + NT` are in `act`.
    unsafe {
        let nb = act.nb;
        let mask = vdupq_n_u8(0x0f);
        let mut acc = [[vdupq_n_f32(0.0); 4]; NT];
        for b in 0..nb {
            let (qo, so) = q4_offsets(nb, b);
            let (q, sc) = (g.add(qo), g.add(so));
            let a: [(int8x16_t, int8x16_t); NT] = core::array::from_fn(|t| {
                let p = act.qs.as_ptr().add(((t0 + t) * nb + b) * QK);
                (vld1q_s8(p), vld1q_s8(p.add(16)))
            });
            for quad in 0..4 {
                let dw = cvt_f16x4(vld1_u16(sc.add(8 * quad) as *const u16));
                let c: [uint8x16_t; 4] =
                    core::array::from_fn(|k| vld1q_u8(q.add(64 * k + 16 * quad)));
                let lo: [int8x16_t; 4] =
                    core::array::from_fn(|k| vreinterpretq_s8_u8(vandq_u8(c[k], mask)));
                let hi: [int8x16_t; 4] =
                    core::array::from_fn(|k| vreinterpretq_s8_u8(vshrq_n_u8(c[k], 4)));
                for t in 0..NT {
                    let i = (t0 + t) * nb + b;
                    let (alo, ahi) = a[t];
                    let mut s0 = vdupq_n_s32(-8 * *act.s.get_unchecked(i));
                    let mut s1 = vdupq_n_s32(0);
                    s0 = sdot_lane::<0>(s0, lo[0], alo);
                    s1 = sdot_lane::<0>(s1, hi[0], ahi);
                    s0 = sdot_lane::<1>(s0, lo[1], alo);
                    s1 = sdot_lane::<1>(s1, hi[1], ahi);
                    s0 = sdot_lane::<2>(s0, lo[2], alo);
                    s1 = sdot_lane::<2>(s1, hi[2], ahi);
                    s0 = sdot_lane::<3>(s0, lo[3], alo);
                    s1 = sdot_lane::<3>(s1, hi[3], ahi);
                    let isum = vaddq_s32(s0, s1);
                    let scale = vmulq_n_f32(dw, *act.d.get_unchecked(i));
                    acc[t][quad] = vfmaq_f32(acc[t][quad], vcvtq_f32_s32(isum), scale);
                }
            }
        }
        acc
    }
}

/// # Safety
/// The CPU must support NEON and the dotprod extension (`sdot`). Lengths are checked here
/// (`check_packed`).
#[inline(always)]
unsafe fn mm_q4_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `check_packed`
    // puts `groups` groups of `gb` bytes in `w`, every token in `act` and 16 values per group
    // per token at `(t + j) · ldo + 16 · g` in `out`.
    unsafe {
        let gb = group_bytes(act.nb);
        check_packed(w, groups, gb, &act, out, ldo);
        let o = out.as_mut_ptr();
        for g in 0..groups {
            let gp = w.as_ptr().add(g * gb);
            tile_tokens!(act.n, 2, |t, NT| {
                let acc = group_q4_0x16::<NT>(gp, &act, t);
                for j in 0..NT {
                    for quad in 0..4 {
                        vst1q_f32(o.add((t + j) * ldo + 16 * g + 4 * quad), acc[j][quad]);
                    }
                }
            });
        }
    }
}

/// 16 interleaved Q8_0 rows against `NT` tokens with `sdot` by element (signed × signed).
///
/// # Safety
/// The CPU must support NEON and the dotprod extension (`sdot`). `g` must be valid for reads
/// of one Q8_0 group of `act.nb` columns (`group_bytes_q8(act.nb)` bytes), and tokens
/// `t0..t0 + NT` must lie in `act` (`t0 + NT ≤ act.n`, its slices holding `act.n` tokens).
#[inline(always)]
unsafe fn group_q8_0x16<const NT: usize>(
    g: *const u8,
    act: &Q8View<'_>,
    t0: usize,
) -> [[float32x4_t; 4]; NT] {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that the group
    // holds `group_bytes_q8(nb)` bytes (quants `512 · nb`, then scales `32 · nb`) and that
    // tokens `t0..t0 + NT` are in `act`.
    unsafe {
        let nb = act.nb;
        let sc = g.add(nb * 512);
        let mut acc = [[vdupq_n_f32(0.0); 4]; NT];
        for b in 0..nb {
            let q = g.add(512 * b);
            let a: [(int8x16_t, int8x16_t); NT] = core::array::from_fn(|t| {
                let p = act.qs.as_ptr().add(((t0 + t) * nb + b) * QK);
                (vld1q_s8(p), vld1q_s8(p.add(16)))
            });
            for quad in 0..4 {
                let dw = cvt_f16x4(vld1_u16(sc.add(32 * b + 8 * quad) as *const u16));
                let c: [int8x16_t; 8] =
                    core::array::from_fn(|k| vld1q_s8(q.add(64 * k + 16 * quad) as *const i8));
                for t in 0..NT {
                    let (alo, ahi) = a[t];
                    let mut s0 = vdupq_n_s32(0);
                    let mut s1 = vdupq_n_s32(0);
                    s0 = sdot_lane::<0>(s0, c[0], alo);
                    s1 = sdot_lane::<0>(s1, c[4], ahi);
                    s0 = sdot_lane::<1>(s0, c[1], alo);
                    s1 = sdot_lane::<1>(s1, c[5], ahi);
                    s0 = sdot_lane::<2>(s0, c[2], alo);
                    s1 = sdot_lane::<2>(s1, c[6], ahi);
                    s0 = sdot_lane::<3>(s0, c[3], alo);
                    s1 = sdot_lane::<3>(s1, c[7], ahi);
                    let i = (t0 + t) * nb + b;
                    let scale = vmulq_n_f32(dw, *act.d.get_unchecked(i));
                    acc[t][quad] = vfmaq_f32(acc[t][quad], vcvtq_f32_s32(vaddq_s32(s0, s1)), scale);
                }
            }
        }
        acc
    }
}

/// # Safety
/// The CPU must support NEON and the dotprod extension (`sdot`). Lengths are checked here
/// (`check_packed`).
#[inline(always)]
unsafe fn mm_q8_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `check_packed`
    // puts `groups` groups of `gb` bytes in `w`, every token in `act` and 16 values per group
    // per token at `(t + j) · ldo + 16 · g` in `out`.
    unsafe {
        let gb = group_bytes_q8(act.nb);
        check_packed(w, groups, gb, &act, out, ldo);
        let o = out.as_mut_ptr();
        for g in 0..groups {
            let gp = w.as_ptr().add(g * gb);
            tile_tokens!(act.n, 2, |t, NT| {
                let acc = group_q8_0x16::<NT>(gp, &act, t);
                for j in 0..NT {
                    for quad in 0..4 {
                        vst1q_f32(o.add((t + j) * ldo + 16 * g + 4 * quad), acc[j][quad]);
                    }
                }
            });
        }
    }
}

/// `acc + A · Bᵀ` for two 2 × 8 matrices of bytes (`a`: rows 0–7 and 8–15, likewise `b`):
/// lanes `acc[2i + k] += Σ_x a[8i + x] · b[8k + x]` (`smmla`).
///
/// # Safety
/// The CPU must support the i8mm extension.
#[inline(always)]
unsafe fn smmla(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `smmla` only
    // reads and writes registers.
    unsafe {
        let mut acc = acc;
        asm!("smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) a, b = in(vreg) b,
             options(pure, nomem, nostack));
        acc
    }
}

/// The low (`HI = false`) or high 64-bit halves of `a` and `b`, side by side.
#[inline(always)]
fn zip64<const HI: bool>(a: int8x16_t, b: int8x16_t) -> int8x16_t {
    // SAFETY: NEON is part of the aarch64 targets Raven builds for; registers only.
    unsafe {
        let (a, b) = (vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b));
        vreinterpretq_s8_s64(if HI {
            vzip2q_s64(a, b)
        } else {
            vzip1q_s64(a, b)
        })
    }
}

/// The 32-bit lanes of `a` and `b` interleaved: `[a0, b0, a1, b1]` or (`HI`) `[a2, b2, a3, b3]`.
#[inline(always)]
fn zip32<const HI: bool>(a: int8x16_t, b: int8x16_t) -> int8x16_t {
    // SAFETY: NEON is part of the aarch64 targets Raven builds for; registers only.
    unsafe {
        let (a, b) = (vreinterpretq_s32_s8(a), vreinterpretq_s32_s8(b));
        vreinterpretq_s8_s32(if HI {
            vzip2q_s32(a, b)
        } else {
            vzip1q_s32(a, b)
        })
    }
}

thread_local! {
    /// The activations of token pairs as `smmla` operands: for pair `p`, block column `b`,
    /// values `8j..8j + 8` of both tokens at `(p · nb + b) · 4 + j`.
    static PAIRS: std::cell::Cell<Vec<[i8; 16]>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Rows `4q..4q + 4` of block column `b` of a group as `smmla` operands: `[j][h]` holds rows
/// `4q + 2h` and `4q + 2h + 1`, values `8j..8j + 8` (Q4_0: the nibbles, unsigned), and the
/// quad's four weight scales.
///
/// # Safety
/// NEON; `g` a whole group of `nb` block columns of the packed type, `b < nb`, `q < 4`.
#[inline(always)]
unsafe fn mmla_weights<const Q4: bool>(
    g: *const u8,
    nb: usize,
    b: usize,
    q: usize,
) -> ([[int8x16_t; 2]; 4], float32x4_t) {
    // SAFETY: the caller guarantees the features and the group; the offsets are those of
    // `crate::layout`, 16 bytes of each 64-byte chunk per quad.
    unsafe {
        let (pairs, sc): ([(int8x16_t, int8x16_t); 4], *const u8) = if Q4 {
            let (qo, so) = q4_offsets(nb, b);
            let mask = vdupq_n_u8(0x0f);
            let c: [uint8x16_t; 4] =
                core::array::from_fn(|k| vld1q_u8(g.add(qo + 64 * k + 16 * q)));
            let lo: [int8x16_t; 4] =
                core::array::from_fn(|k| vreinterpretq_s8_u8(vandq_u8(c[k], mask)));
            let hi: [int8x16_t; 4] =
                core::array::from_fn(|k| vreinterpretq_s8_u8(vshrq_n_u8(c[k], 4)));
            (
                [
                    (lo[0], lo[1]),
                    (lo[2], lo[3]),
                    (hi[0], hi[1]),
                    (hi[2], hi[3]),
                ],
                g.add(so),
            )
        } else {
            let c: [int8x16_t; 8] =
                core::array::from_fn(|k| vld1q_s8(g.add(512 * b + 64 * k + 16 * q) as *const i8));
            (
                core::array::from_fn(|j| (c[2 * j], c[2 * j + 1])),
                g.add(nb * 512 + 32 * b),
            )
        };
        let dw = cvt_f16x4(vld1_u16(sc.add(8 * q) as *const u16));
        (
            pairs.map(|(x, y)| [zip32::<false>(x, y), zip32::<true>(x, y)]),
            dw,
        )
    }
}

/// `P` token pairs from pair `p0` against rows `4q..4q + 4` of the group at `g`: per block
/// column, `smmla` sums of the pairs, then the dotprod kernels' float steps (sum to float,
/// times weight scale times activation scale, fused multiply-add in block order), so that each
/// token's outputs are those bits. Returns `[pair][token of the pair]`.
///
/// # Safety
/// NEON, dotprod and i8mm; `g` a whole group; pairs `p0..p0 + P` in `pairs` and their tokens
/// (`2p`, `2p + 1`) in `act`.
#[inline(always)]
unsafe fn quad_pairs<const Q4: bool, const P: usize>(
    g: *const u8,
    act: &Q8View<'_>,
    pairs: *const [i8; 16],
    p0: usize,
    q: usize,
) -> [[float32x4_t; 2]; P] {
    // SAFETY: the caller guarantees the features and the extents.
    unsafe {
        let nb = act.nb;
        let mut acc = [[vdupq_n_f32(0.0); 2]; P];
        for b in 0..nb {
            let (w, dw) = mmla_weights::<Q4>(g, nb, b, q);
            for (p, acc) in acc.iter_mut().enumerate() {
                let t = 2 * (p0 + p);
                let (i0, i1) = (t * nb + b, (t + 1) * nb + b);
                let a = pairs.add(((p0 + p) * nb + b) * 4);
                let (mut s01, mut s23) = if Q4 {
                    // Σ (nibble − 8) · x = Σ nibble · x − 8 · Σ x, per token: lanes t0, t0, t1, t1.
                    let c = vcombine_s32(
                        vdup_n_s32(-8 * *act.s.get_unchecked(i0)),
                        vdup_n_s32(-8 * *act.s.get_unchecked(i1)),
                    );
                    (c, c)
                } else {
                    (vdupq_n_s32(0), vdupq_n_s32(0))
                };
                for j in 0..4 {
                    let x = vld1q_s8((*a.add(j)).as_ptr());
                    s01 = smmla(s01, x, w[j][0]);
                    s23 = smmla(s23, x, w[j][1]);
                }
                // Lanes [t0r0, t0r1, t1r0, t1r1] and [t0r2, t0r3, t1r2, t1r3] to rows per token.
                let (s01, s23) = (vreinterpretq_s8_s32(s01), vreinterpretq_s8_s32(s23));
                let isum = [
                    vreinterpretq_s32_s8(zip64::<false>(s01, s23)),
                    vreinterpretq_s32_s8(zip64::<true>(s01, s23)),
                ];
                for (k, i) in [i0, i1].into_iter().enumerate() {
                    let scale = vmulq_n_f32(dw, *act.d.get_unchecked(i));
                    acc[k] = vfmaq_f32(acc[k], vcvtq_f32_s32(isum[k]), scale);
                }
            }
        }
        acc
    }
}

/// The packed kernels with `smmla`: `groups` groups at `w` against every token of `act`, two
/// tokens at a time (one token, and a last odd one: the dotprod kernels).
///
/// # Safety
/// NEON, dotprod and i8mm. Lengths are checked here (`check_packed`).
#[inline(always)]
unsafe fn mm_mmla<const Q4: bool>(
    w: &[u8],
    groups: usize,
    act: Q8View<'_>,
    out: &mut [f32],
    ldo: usize,
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `check_packed`
    // puts `groups` groups of `gb` bytes in `w`, every token in `act` and 16 values per group
    // per token at `t · ldo + 16 · g` in `out`; the pair buffer holds every pair's blocks.
    unsafe {
        let n = act.n;
        if n < 2 {
            return if Q4 {
                mm_q4_0x16(w, groups, act, out, ldo)
            } else {
                mm_q8_0x16(w, groups, act, out, ldo)
            };
        }
        let nb = act.nb;
        let gb = if Q4 {
            group_bytes(nb)
        } else {
            group_bytes_q8(nb)
        };
        check_packed(w, groups, gb, &act, out, ldo);
        let np = n / 2;
        let mut buf = PAIRS.take();
        if buf.len() < np * nb * 4 {
            buf.resize(np * nb * 4, [0; 16]);
        }
        for p in 0..np {
            for b in 0..nb {
                let x: [*const i8; 2] =
                    core::array::from_fn(|k| act.qs.as_ptr().add(((2 * p + k) * nb + b) * QK));
                let (lo, hi) = (
                    [vld1q_s8(x[0]), vld1q_s8(x[1])],
                    [vld1q_s8(x[0].add(16)), vld1q_s8(x[1].add(16))],
                );
                let d = buf.as_mut_ptr().add((p * nb + b) * 4);
                vst1q_s8((*d).as_mut_ptr(), zip64::<false>(lo[0], lo[1]));
                vst1q_s8((*d.add(1)).as_mut_ptr(), zip64::<true>(lo[0], lo[1]));
                vst1q_s8((*d.add(2)).as_mut_ptr(), zip64::<false>(hi[0], hi[1]));
                vst1q_s8((*d.add(3)).as_mut_ptr(), zip64::<true>(hi[0], hi[1]));
            }
        }
        let o = out.as_mut_ptr();
        let pairs = buf.as_ptr();
        for g in 0..groups {
            let gp = w.as_ptr().add(g * gb);
            for q in 0..4 {
                let mut p0 = 0;
                while p0 < np {
                    macro_rules! pass {
                        ($p:literal) => {{
                            let acc = quad_pairs::<Q4, $p>(gp, &act, pairs, p0, q);
                            for (p, a) in acc.iter().enumerate() {
                                for (k, v) in a.iter().enumerate() {
                                    vst1q_f32(o.add((2 * (p0 + p) + k) * ldo + 16 * g + 4 * q), *v);
                                }
                            }
                            p0 += $p;
                        }};
                    }
                    match np - p0 {
                        4.. => pass!(4),
                        3 => pass!(3),
                        2 => pass!(2),
                        _ => pass!(1),
                    }
                }
            }
            if n % 2 == 1 {
                let acc = if Q4 {
                    group_q4_0x16::<1>(gp, &act, n - 1)
                } else {
                    group_q8_0x16::<1>(gp, &act, n - 1)
                };
                for quad in 0..4 {
                    vst1q_f32(o.add((n - 1) * ldo + 16 * g + 4 * quad), acc[0][quad]);
                }
            }
        }
        PAIRS.set(buf);
    }
}
