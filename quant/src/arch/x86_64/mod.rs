//! x86_64 kernels. The algorithms live here as `#[inline(always)]` functions generic over
//! whether VNNI's `vpdpbusd` is available; [`avx2`] and [`avx512`] instantiate them inside
//! `#[target_feature]` functions, so each copy is compiled for its instruction set.

#![allow(clippy::needless_range_loop)] // token and lane indices read clearer in these loops

pub(crate) mod amx;
pub(crate) mod avx2;
pub(crate) mod avx512;

use core::arch::x86_64::*;

use super::{check_packed, check_q8, F32View, Q8View};
use crate::blocks::{f16_to_f32, f32_to_f16, Q4_0_BYTES, Q8_0_BYTES, QK};
use crate::kv::KvRows;
use crate::layout::{group_bytes, group_bytes_q8, q4_offsets};

/// Horizontal sum of 8 floats.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// `acc + Σ_{4 bytes} u · s` per 32-bit lane, `u` unsigned and `s` signed bytes (the pairwise
/// sums of `maddubs` cannot saturate: |u| ≤ 255 with |s| ≤ 127 only where callers keep
/// `u ≤ 128`).
///
/// # Safety
/// The CPU must support AVX2. With `VNNI`, also AVX-512 VNNI and AVX-512 VL (`vpdpbusd` on 256-bit
/// vectors).
#[inline(always)]
unsafe fn dot4<const VNNI: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`).
    unsafe {
        if VNNI {
            _mm256_dpbusd_epi32(acc, u, s)
        } else {
            _mm256_add_epi32(
                acc,
                _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
            )
        }
    }
}

/// Round half away from zero (C's `roundf`), exactly.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
unsafe fn round_away(v: __m256) -> __m256 {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        let one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0));
        _mm256_add_ps(t, _mm256_and_ps(up, one))
    }
}

/// Activation quantizer: the same operations as `quantize_block_q8_0`, eight lanes at a time.
///
/// # Safety
/// The CPU must support AVX2. Lengths are checked here: `x` is read in whole blocks
/// and `qs`, `d`, `s` are asserted to hold them.
#[inline(always)]
unsafe fn quantize_q8(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [i32]) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); loads stay in the
    // whole blocks of `x`, stores in `qs`, `d` and `s`, whose lengths are asserted first.
    unsafe {
        let nb = x.len() / QK;
        assert!(qs.len() >= nb * QK && d.len() >= nb && s.len() >= nb);
        let sign = _mm256_set1_ps(-0.0);
        for b in 0..nb {
            let p = x.as_ptr().add(b * QK);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            let amax = _mm_cvtss_f32(m);
            let dd = amax / 127.0;
            let id = _mm256_set1_ps(if dd != 0.0 { 1.0 / dd } else { 0.0 });
            // Not `array::from_fn`: its closure does not inherit the target features, so the
            // intrinsics inside were compiled as out-of-line calls (seen in a decode profile).
            let q = [
                _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[0], id))),
                _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[1], id))),
                _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[2], id))),
                _mm256_cvtps_epi32(round_away(_mm256_mul_ps(v[3], id))),
            ];
            let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let sum = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01));
            let packed = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let packed =
                _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(qs.as_mut_ptr().add(b * QK) as *mut __m256i, packed);
            *d.get_unchecked_mut(b) = f16_to_f32(f32_to_f16(dd));
            *s.get_unchecked_mut(b) = _mm_cvtsi128_si32(sum);
        }
    }
}

/// # Safety
/// The CPU must support AVX and FMA. Reads stay within the shorter slice.
#[inline(always)]
unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); every load is at
    // an index below `n`, the length of the shorter slice.
    unsafe {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * j)),
                    _mm256_loadu_ps(pb.add(i + 8 * j)),
                    *acc,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let mut sum = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            sum += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        sum
    }
}

/// `e^x` in every lane (Cephes' `expf`: `2^n · p(r)` with `r = x − n·ln 2` split in two parts
/// and a degree-5 polynomial; within 2 ulp of `f32::exp`; lanes below −87.3 give ~1e-38, as
/// softmax weights that is 0).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`).
    unsafe {
        let x = _mm256_max_ps(
            _mm256_min_ps(x, _mm256_set1_ps(88.37626)),
            _mm256_set1_ps(-87.33654),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r),
            _mm256_set1_ps(1.0),
        );
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }
}

/// Cached key or value rows of one element type, as the SIMD attention path reads them: value
/// `i` is the `i`-th value from a head's first column (row offsets count values, as
/// `KvRows`' do), widened to f32 as it is loaded. The widening is exact (a half widens without
/// rounding; an int8 times an f16 scale fits in an f32's mantissa) and the kernels then run the
/// same operations whatever the type, so they compute over f16 and Q8_0 rows, bit for bit, what
/// they compute over the f32 rows those values widen to.
trait Rows: Copy {
    /// Values per 64-byte cache line (the stride of the prefetches along a row).
    const PER_LINE: usize;

    /// Values `i..i + 8`, as f32.
    ///
    /// # Safety
    /// The CPU must support AVX2 and F16C. Values `i..i + 8` must lie in the rows (the slices
    /// the rows were made from); for Q8_0 they must also lie in one block of 32 (the head's
    /// column plus `i` a multiple of 8), whose scale is read.
    unsafe fn load8(self, i: usize) -> __m256;

    /// The address of value `i`, for a prefetch (it may point anywhere: never dereferenced).
    fn addr(self, i: usize) -> *const i8;

    /// The address of value `i`'s scale, for a prefetch, where the type has scales.
    #[inline(always)]
    fn scale_addr(self, _i: usize) -> Option<*const i8> {
        None
    }
}

/// f32 rows from a head's column.
#[derive(Clone, Copy)]
struct F32Rows(*const f32);

impl F32Rows {
    /// `rows` from value `col` (`wrapping_add`: with no position `col` may lie past them).
    #[inline(always)]
    fn at(rows: &[f32], col: usize) -> Self {
        F32Rows(rows.as_ptr().wrapping_add(col))
    }
}

impl Rows for F32Rows {
    const PER_LINE: usize = 16;

    #[inline(always)]
    unsafe fn load8(self, i: usize) -> __m256 {
        // SAFETY: the caller guarantees the CPU features and 8 values at `i` in the rows (the
        // weights' `load8` of kind 0: one unaligned load).
        unsafe { load8::<0>(self.0.add(i) as *const u8) }
    }

    #[inline(always)]
    fn addr(self, i: usize) -> *const i8 {
        self.0.wrapping_add(i) as *const i8
    }
}

/// f16 rows (IEEE half bits) from a head's column.
#[derive(Clone, Copy)]
struct F16Rows(*const u16);

impl F16Rows {
    /// `rows` from value `col` (`wrapping_add`: with no position `col` may lie past them).
    #[inline(always)]
    fn at(rows: &[u16], col: usize) -> Self {
        F16Rows(rows.as_ptr().wrapping_add(col))
    }
}

impl Rows for F16Rows {
    const PER_LINE: usize = 32;

    #[inline(always)]
    unsafe fn load8(self, i: usize) -> __m256 {
        // SAFETY: the caller guarantees the CPU features and 8 values (16 bytes) at `i` in the
        // rows (the weights' `load8` of kind 1: an unaligned load widened by `vcvtph2ps`).
        unsafe { load8::<1>(self.0.add(i) as *const u8) }
    }

    #[inline(always)]
    fn addr(self, i: usize) -> *const i8 {
        self.0.wrapping_add(i) as *const i8
    }
}

/// Q8_0 rows from a head's column: quants from `col`, and the block scales of the whole rows
/// (value `i`'s scale is `d[(col + i) / 32]`).
#[derive(Clone, Copy)]
struct Q8Rows {
    q: *const i8,
    d: *const u16,
    col: usize,
}

impl Q8Rows {
    /// Quants `q` and scales `d` from value `col` (`wrapping_add`: with no position `col` may
    /// lie past them).
    #[inline(always)]
    fn at(q: &[i8], d: &[u16], col: usize) -> Self {
        Q8Rows {
            q: q.as_ptr().wrapping_add(col),
            d: d.as_ptr(),
            col,
        }
    }
}

impl Rows for Q8Rows {
    const PER_LINE: usize = 64;

    #[inline(always)]
    unsafe fn load8(self, i: usize) -> __m256 {
        // SAFETY: the caller guarantees the CPU features, 8 quants at `i` in the rows and that
        // they lie in one block, whose scale `d[(col + i) / 32]` is then in the scales too
        // (`KvRows::len` bounds the rows by both); the loads are unaligned.
        unsafe {
            // The scale broadcast before converting (as `block_q`); `q · d` is exact.
            let s = _mm256_cvtph_ps(_mm_set1_epi16(*self.d.add((self.col + i) / QK) as i16));
            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(self.q.add(i) as *const __m128i));
            _mm256_mul_ps(_mm256_cvtepi32_ps(q), s)
        }
    }

    #[inline(always)]
    fn addr(self, i: usize) -> *const i8 {
        self.q.wrapping_add(i)
    }

    #[inline(always)]
    fn scale_addr(self, i: usize) -> Option<*const i8> {
        Some(self.d.wrapping_add((self.col + i) / QK) as *const i8)
    }
}

/// `q · row at o` for a head of `d` values (a multiple of 8): `dot_f32`'s operations (four
/// accumulators over 32 values, then the first over 8), with the row's values widened as they
/// are loaded.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `d` must be a multiple of 8, `qp` valid for reads
/// of `d` f32 and values `o..o + d` of `k` readable (`Rows::load8`).
#[inline(always)]
unsafe fn dot_row<R: Rows>(qp: *const f32, d: usize, k: R, o: usize) -> f32 {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), the query's `d` values
    // and the row's; every load is at an index below `d`, a multiple of 8.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= d {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(qp.add(i + 8 * j)),
                    k.load8(o + i + 8 * j),
                    *acc,
                );
            }
            i += 32;
        }
        while i + 8 <= d {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), k.load8(o + i), acc[0]);
            i += 8;
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    }
}

/// `dst[i] = scale · (q · key row at offs[i])` for a head of `d` values (a multiple of 8):
/// four positions at a time, their sums reduced together instead of one horizontal sum each.
/// The caller checks that every row lies inside the keys.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `d` must be a multiple of 8; `qp` must be valid
/// for reads of `d` f32 and, for every `o` in `offs`, values `o..o + d` of `k` readable
/// (`Rows::load8`); `dst` must be valid for writes of `offs.len()` f32 and not overlap the
/// query or the key rows.
#[inline(always)]
unsafe fn score_rows<R: Rows>(
    qp: *const f32,
    d: usize,
    k: R,
    offs: &[usize],
    scale: f32,
    dst: *mut f32,
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), and that the query,
    // the `d`-value key rows and `dst[..offs.len()]` are valid (`d` a multiple of 8, so the
    // 8-wide loads end at `d`); `dst` does not overlap the rows or the query.
    unsafe {
        let n = offs.len();
        let mut i = 0;
        while i + 4 <= n {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut j = 0;
            while j < d {
                let qv = _mm256_loadu_ps(qp.add(j));
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, k.load8(offs[i + u] + j), *a);
                }
                j += 8;
            }
            let h = _mm256_hadd_ps(
                _mm256_hadd_ps(acc[0], acc[1]),
                _mm256_hadd_ps(acc[2], acc[3]),
            );
            let s4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            _mm_storeu_ps(dst.add(i), _mm_mul_ps(s4, _mm_set1_ps(scale)));
            i += 4;
        }
        while i < n {
            *dst.add(i) = dot_row(qp, d, k, offs[i]) * scale;
            i += 1;
        }
    }
}

/// Transposes the key rows at `offs[0..8]` (`d` values each, a multiple of 8) into `kt`:
/// `kt[8j..8j + 8]` holds value `j` of the eight rows.
///
/// # Safety
/// The CPU must support AVX2 and F16C. `d` must be a multiple of 8; for `i < 8`, values
/// `offs[i]..offs[i] + d` of `k` must be readable (`Rows::load8`), and `kt` valid for writes of
/// `8 · d` f32.
#[inline(always)]
unsafe fn transpose_rows8<R: Rows>(k: R, offs: &[usize], d: usize, kt: *mut f32) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that the eight rows
    // hold `d` (a multiple of 8) values each and that `kt` holds `8 · d`.
    unsafe {
        let mut c = 0;
        while c < d {
            // Not `array::from_fn`: its closure need not inherit the target features.
            let r = [
                k.load8(offs[0] + c),
                k.load8(offs[1] + c),
                k.load8(offs[2] + c),
                k.load8(offs[3] + c),
                k.load8(offs[4] + c),
                k.load8(offs[5] + c),
                k.load8(offs[6] + c),
                k.load8(offs[7] + c),
            ];
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (j, col) in cols.iter().enumerate() {
                _mm256_storeu_ps(kt.add(8 * (c + j)), *col);
            }
            c += 8;
        }
    }
}

/// The scores of eight positions for one query from their transposed keys (`transpose_rows8`),
/// into `dst[0..8]`: bit for bit what `score_rows` gives them (lane `j` of a row's sum takes
/// values `j, j + 8, …` in order, then the same tree of additions), with one multiply-add per
/// product and no horizontal additions.
///
/// # Safety
/// The CPU must support AVX and FMA. `d` must be a multiple of 8, `qp` valid for reads of `d`
/// f32, `kt` for reads of `8 · d` f32 and `dst` for writes of 8 f32.
#[inline(always)]
unsafe fn score8_transposed(qp: *const f32, d: usize, kt: *const f32, scale: f32, dst: *mut f32) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`) and the lengths
    // behind `qp` (`d`), `kt` (`8 · d`) and `dst` (8), `d` a multiple of 8.
    unsafe {
        let mut a = [_mm256_setzero_ps(); 8];
        let mut c = 0;
        while c < d {
            for (j, aj) in a.iter_mut().enumerate() {
                let k = _mm256_loadu_ps(kt.add(8 * (c + j)));
                *aj = _mm256_fmadd_ps(_mm256_set1_ps(*qp.add(c + j)), k, *aj);
            }
            c += 8;
        }
        let s = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])),
            _mm256_add_ps(_mm256_add_ps(a[4], a[5]), _mm256_add_ps(a[6], a[7])),
        );
        _mm256_storeu_ps(dst, _mm256_mul_ps(s, _mm256_set1_ps(scale)));
    }
}

/// `g[i] = g[i] / (1 + e^(−g[i])) · u[i]`, eight at a time (`exp8`; its clamp keeps
/// `e^(−g)` finite, so a very negative `g` gives a tiny value where `f32::exp` gives −0).
///
/// # Safety
/// The CPU must support AVX2 and FMA. Reads and writes stay within the shorter slice.
#[inline(always)]
unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); every access is at
    // an index below `n`, the length of the shorter slice.
    unsafe {
        let n = g.len().min(u.len());
        let (gp, up) = (g.as_mut_ptr(), u.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(gp.add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(gp.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(up.add(i))));
            i += 8;
        }
        super::scalar::silu_mul(&mut g[i..n], &u[i..n]);
    }
}

/// Softmax in place: `e^(s − max)` eight at a time, then each times `1 / Σ` (the weights
/// `wsum_rows` takes).
///
/// # Safety
/// The CPU must support AVX2 and FMA. Accesses stay within `s`.
#[inline(always)]
unsafe fn softmax(s: &mut [f32]) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); every access is at
    // an index below `s.len()`.
    unsafe {
        let (n, sp) = (s.len(), s.as_mut_ptr());
        let mut i = 0;
        let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
        while i + 8 <= n {
            mv = _mm256_max_ps(mv, _mm256_loadu_ps(sp.add(i)));
            i += 8;
        }
        let mut m = hmax(mv);
        while i < n {
            m = m.max(*sp.add(i));
            i += 1;
        }
        let mv = _mm256_set1_ps(m);
        let mut sums = _mm256_setzero_ps();
        i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(i)), mv));
            _mm256_storeu_ps(sp.add(i), e);
            sums = _mm256_add_ps(sums, e);
            i += 8;
        }
        let mut sum = hsum(sums);
        while i < n {
            let e = (*sp.add(i) - m).exp();
            *sp.add(i) = e;
            sum += e;
            i += 1;
        }
        let inv = 1.0 / sum;
        let iv = _mm256_set1_ps(inv);
        i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(sp.add(i), _mm256_mul_ps(_mm256_loadu_ps(sp.add(i)), iv));
            i += 8;
        }
        while i < n {
            *sp.add(i) *= inv;
            i += 1;
        }
    }
}

/// Largest of 8 floats.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`).
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }
}

/// Whether the SIMD attention path takes a head of `d` values (else `attend_body!`).
fn simd_head(d: usize) -> bool {
    d.is_multiple_of(8) && d <= 256
}

/// Panics unless every row `o + col .. o + col + d` lies in the keys and the values (and, for
/// Q8_0, their scales: `KvRows::len`). Returns the bitwise or of the rows' first values
/// `o + col` (a multiple of 8 when every one is: Q8_0's 8-value loads then stay in a block).
fn check_rows(kv: &KvRows<'_>, offs: &[usize], col: usize, d: usize) -> usize {
    let lim = kv.len();
    let mut starts = 0;
    for &o in offs {
        let s = o.saturating_add(col);
        assert!(
            s.saturating_add(d) <= lim,
            "attend: row at {o} outside the cache"
        );
        starts |= s;
    }
    starts
}

/// One query head (see `score_rows`, `softmax`, `wsum_rows`), over rows of any type widened
/// as they are loaded; other head sizes, and Q8_0 rows that do not start on 8-value boundaries:
/// `attend_body!`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. Lengths are checked here (`check_rows`,
/// `out.len()`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend(
    q: &[f32],
    kv: KvRows<'_>,
    offs: &[usize],
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `check_rows` puts
    // every row `o + col .. o + col + d` inside the keys and values (and Q8_0's scales), Q8_0
    // rows start at multiples of 8 (`starts`), `out` holds `d` values (checked first) and `d` is
    // a multiple of 8 (`simd_head`): what `attend_rows` needs.
    unsafe {
        let d = q.len();
        if simd_head(d) && out.len() >= d {
            let starts = check_rows(&kv, offs, col, d);
            match kv {
                KvRows::F32 { k, v } => {
                    let (k, v) = (F32Rows::at(k, col), F32Rows::at(v, col));
                    return attend_rows(q, k, v, offs, scale, scores, out);
                }
                KvRows::F16 { k, v } => {
                    let (k, v) = (F16Rows::at(k, col), F16Rows::at(v, col));
                    return attend_rows(q, k, v, offs, scale, scores, out);
                }
                KvRows::Q8_0 { k, kd, v, vd } if starts.is_multiple_of(8) => {
                    let (k, v) = (Q8Rows::at(k, kd, col), Q8Rows::at(v, vd, col));
                    return attend_rows(q, k, v, offs, scale, scores, out);
                }
                KvRows::Q8_0 { .. } => {}
            }
        }
        attend_body!(dot_f32, axpy_f32, q, kv, offs, col, scale, scores, out)
    }
}

/// `attend`'s SIMD path over rows of one type.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `d = q.len()` must be a multiple of 8, `out` hold
/// `d` values, and for every `o` in `offs` values `o..o + d` of `k` and `v` be readable
/// (`Rows::load8`).
#[inline(always)]
unsafe fn attend_rows<R: Rows>(
    q: &[f32],
    k: R,
    v: R,
    offs: &[usize],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    // SAFETY: the caller guarantees the CPU features, the rows, `d` and `out` (see
    // `# Safety`); `scores` is resized to one value per position.
    unsafe {
        let (n, d) = (offs.len(), q.len());
        scores.clear();
        scores.resize(n, 0.0);
        score_rows(q.as_ptr(), d, k, offs, scale, scores.as_mut_ptr());
        softmax(scores);
        let w = [scores.as_ptr()];
        wsum_rows::<R, 1, true>(v, d, offs, w, [out.as_mut_ptr()], true);
    }
}

/// Several queries of one head over nested position lists (see `crate::attend_queries`):
/// positions in blocks of 64, each block's key and value rows used by every query while they
/// are in L1, instead of each query walking the whole cache. Head sizes and rows `attend`
/// takes through `attend_body!`: one `attend` per query.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. Shapes are checked here (`check_multi`,
/// `check_rows`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_multi(
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
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `check_multi` and
    // `check_rows` bound every query, output and cached row (and Q8_0 scale) used by
    // `attend_multi_rows`, Q8_0 rows start at multiples of 8 (`starts`) and `d` is a multiple
    // of 8, at most 256 (`simd_head`).
    unsafe {
        super::check_multi(q, d, offs, lens, out, ldo);
        if simd_head(d) {
            let starts = check_rows(&kv, offs, col, d);
            match kv {
                KvRows::F32 { k, v } => {
                    let (k, v) = (F32Rows::at(k, col), F32Rows::at(v, col));
                    return attend_multi_rows(q, d, k, v, offs, lens, scale, scores, out, ldo);
                }
                KvRows::F16 { k, v } => {
                    let (k, v) = (F16Rows::at(k, col), F16Rows::at(v, col));
                    return attend_multi_rows(q, d, k, v, offs, lens, scale, scores, out, ldo);
                }
                KvRows::Q8_0 { k, kd, v, vd } if starts.is_multiple_of(8) => {
                    let (k, v) = (Q8Rows::at(k, kd, col), Q8Rows::at(v, vd, col));
                    return attend_multi_rows(q, d, k, v, offs, lens, scale, scores, out, ldo);
                }
                KvRows::Q8_0 { .. } => {}
            }
        }
        for (t, &len) in lens.iter().enumerate() {
            let (qt, ot) = (&q[t * d..(t + 1) * d], &mut out[t * ldo..t * ldo + d]);
            attend(qt, kv, &offs[..len], col, scale, scores, ot);
        }
    }
}

/// `attend_multi`'s blocked path over rows of one type.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. The shapes must pass `check_multi`, `d` be a
/// multiple of 8 and at most 256, and for every `o` in `offs` values `o..o + d` of `k` and `v`
/// be readable (`Rows::load8`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_multi_rows<R: Rows>(
    q: &[f32],
    d: usize,
    k: R,
    v: R,
    offs: &[usize],
    lens: &[usize],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    ldo: usize,
) {
    // SAFETY: the caller guarantees the CPU features, the shapes and the rows (see
    // `# Safety`); `scores` is resized to the scores and partial sums addressed through `sp`,
    // and `kt` holds the `8 · d ≤ 2048` values `transpose_rows8` writes.
    unsafe {
        let nq = lens.len();
        let l = offs.len();
        // Scores [query][position], then each query's partial weighted sums of even and odd
        // positions ([query][even d, odd d]).
        scores.clear();
        scores.resize(nq * l + nq * 2 * d, 0.0);
        let sp = scores.as_mut_ptr();
        // Keys eight positions at a time, transposed once (into `kt`, on the stack: d ≤ 256, each
        // value written before it is read) for all the queries that see all eight; a query's last
        // few positions go through `score_rows`, as the single-query call has them.
        let mut kt_store = core::mem::MaybeUninit::<[__m256; 256]>::uninit();
        let kt = kt_store.as_mut_ptr() as *mut f32;
        let mut i = 0;
        while i < l {
            // A group's work for all queries spans more instructions than the out-of-order window,
            // so the next rows' cache misses would wait for it (the full cache's rows come from L3:
            // 1.9x slower than from L1 without this): keys two groups ahead into L1, values into
            // L2 for the weighted sums, one prefetch per 64-byte line of each row (and of its
            // scales).
            if i + 24 <= l {
                for &o in &offs[i + 16..i + 24] {
                    let mut c = 0;
                    while c < d {
                        _mm_prefetch::<_MM_HINT_T0>(k.addr(o + c));
                        _mm_prefetch::<_MM_HINT_T1>(v.addr(o + c));
                        c += R::PER_LINE;
                    }
                    _mm_prefetch::<_MM_HINT_T0>(k.addr(o + d - 1));
                    _mm_prefetch::<_MM_HINT_T1>(v.addr(o + d - 1));
                    if let (Some(k0), Some(k1), Some(v0), Some(v1)) = (
                        k.scale_addr(o),
                        k.scale_addr(o + d - 1),
                        v.scale_addr(o),
                        v.scale_addr(o + d - 1),
                    ) {
                        _mm_prefetch::<_MM_HINT_T0>(k0);
                        _mm_prefetch::<_MM_HINT_T0>(k1);
                        _mm_prefetch::<_MM_HINT_T1>(v0);
                        _mm_prefetch::<_MM_HINT_T1>(v1);
                    }
                }
            }
            if i + 8 <= l {
                transpose_rows8(k, &offs[i..i + 8], d, kt);
            }
            for (t, &len) in lens.iter().enumerate() {
                if len >= i + 8 {
                    score8_transposed(q.as_ptr().add(t * d), d, kt, scale, sp.add(t * l + i));
                } else if len > i {
                    let qt = q.as_ptr().add(t * d);
                    score_rows(qt, d, k, &offs[i..len], scale, sp.add(t * l + i));
                }
            }
            i += 8;
        }
        const BLOCK: usize = 64;
        // Plain loops: a closure here would be compiled without the kernel's features.
        for (t, &len) in lens.iter().enumerate() {
            softmax(core::slice::from_raw_parts_mut(sp.add(t * l), len));
        }
        // Values in the same blocks, two queries at a time (one load of each row for both). The
        // even/odd partial sums carry from block to block in memory where the single-query call
        // keeps them in registers, so every query's output equals `attend`'s bit for bit (a batch's
        // verification then picks exactly the tokens plain decoding picks).
        let part = sp.add(nq * l);
        let mut b = 0;
        while b < l {
            let e = (b + BLOCK).min(l);
            let mut pending: Option<usize> = None;
            for (t, &len) in lens.iter().enumerate() {
                if len >= e {
                    if let Some(t0) = pending.take() {
                        let w = [sp.add(t0 * l + b) as *const f32, sp.add(t * l + b)];
                        let pt = [part.add(t0 * 2 * d), part.add(t * 2 * d)];
                        wsum_rows::<R, 2, false>(v, d, &offs[b..e], w, pt, b == 0);
                    } else {
                        pending = Some(t);
                    }
                } else if len > b {
                    let (w, pt) = (sp.add(t * l + b) as *const f32, part.add(t * 2 * d));
                    wsum_rows::<R, 1, false>(v, d, &offs[b..len], [w], [pt], b == 0);
                }
            }
            if let Some(t) = pending {
                let (w, pt) = (sp.add(t * l + b) as *const f32, part.add(t * 2 * d));
                wsum_rows::<R, 1, false>(v, d, &offs[b..e], [w], [pt], b == 0);
            }
            b = e;
        }
        let op = out.as_mut_ptr();
        for t in 0..nq {
            let (pe, o) = (part.add(t * 2 * d), op.add(t * ldo));
            let mut c = 0;
            while c < d {
                let r = _mm256_add_ps(_mm256_loadu_ps(pe.add(c)), _mm256_loadu_ps(pe.add(d + c)));
                _mm256_storeu_ps(o.add(c), r);
                c += 8;
            }
        }
    }
}

/// Weighted sums of value rows for `N` queries over the same rows: `Σ_i w[u][i] · value row
/// at offs[i]`, 16 values at a time in registers, each value row loaded once
/// for the `N` queries. Even and odd positions go to separate accumulators (a lone last
/// position to the even ones; an axpy per position would go through memory, a store-to-load
/// chain). With `SUM`, `dst[u]` is query `u`'s output and receives even + odd (`first` must
/// be set). Without, `dst[u]` holds the even and odd sums (`[even d, odd d]`), loaded unless
/// `first` and stored back, so a query's rows can come in blocks (each starting at an even
/// position) and still add in exactly the order of one `SUM` call over all of them.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `d` must be a multiple of 8; for every `o` in
/// `offs`, values `o..o + d` of `v` must be readable (`Rows::load8`); each `w[u]` valid for reads of `offs.len()`
/// f32; each `dst[u]` valid for writes (and, unless `first`, reads) of `d` f32 with `SUM`,
/// `2 · d` without.
#[inline(always)]
unsafe fn wsum_rows<R: Rows, const N: usize, const SUM: bool>(
    v: R,
    d: usize,
    offs: &[usize],
    w: [*const f32; N],
    dst: [*mut f32; N],
    first: bool,
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`) and the lengths
    // behind `v`, `w` and `dst` (`d` a multiple of 8, so the 8-wide accesses end at `d`).
    unsafe {
        debug_assert!(first || !SUM, "final sums start from zero");
        let n = offs.len();
        let mut c = 0;
        while c < d {
            let two = d - c >= 16;
            // acc[u][parity][half]
            let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; N];
            if !first {
                for u in 0..N {
                    for (par, a) in acc[u].iter_mut().enumerate() {
                        a[0] = _mm256_loadu_ps(dst[u].add(par * d + c));
                        if two {
                            a[1] = _mm256_loadu_ps(dst[u].add(par * d + c + 8));
                        }
                    }
                }
            }
            let mut p = 0;
            while p + 2 <= n {
                for e in 0..2 {
                    let o = offs[p + e] + c;
                    let v0 = v.load8(o);
                    let v1 = if two { v.load8(o + 8) } else { v0 };
                    for u in 0..N {
                        let wv = _mm256_set1_ps(*w[u].add(p + e));
                        acc[u][e][0] = _mm256_fmadd_ps(wv, v0, acc[u][e][0]);
                        if two {
                            acc[u][e][1] = _mm256_fmadd_ps(wv, v1, acc[u][e][1]);
                        }
                    }
                }
                p += 2;
            }
            if p < n {
                let o = offs[p] + c;
                let v0 = v.load8(o);
                let v1 = if two { v.load8(o + 8) } else { v0 };
                for u in 0..N {
                    let wv = _mm256_set1_ps(*w[u].add(p));
                    acc[u][0][0] = _mm256_fmadd_ps(wv, v0, acc[u][0][0]);
                    if two {
                        acc[u][0][1] = _mm256_fmadd_ps(wv, v1, acc[u][0][1]);
                    }
                }
            }
            for u in 0..N {
                let [even, odd] = acc[u];
                if SUM {
                    _mm256_storeu_ps(dst[u].add(c), _mm256_add_ps(even[0], odd[0]));
                    if two {
                        _mm256_storeu_ps(dst[u].add(c + 8), _mm256_add_ps(even[1], odd[1]));
                    }
                } else {
                    for (par, a) in [even, odd].iter().enumerate() {
                        _mm256_storeu_ps(dst[u].add(par * d + c), a[0]);
                        if two {
                            _mm256_storeu_ps(dst[u].add(par * d + c + 8), a[1]);
                        }
                    }
                }
            }
            c += if two { 16 } else { 8 };
        }
    }
}

/// # Safety
/// The CPU must support AVX and FMA. Accesses stay within the shorter slice.
#[inline(always)]
unsafe fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); every access is at
    // an index below `n`, the length of the shorter slice.
    unsafe {
        let n = x.len().min(y.len());
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let a = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(
                py.add(i),
                _mm256_fmadd_ps(a, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i))),
            );
            i += 8;
        }
        while i < n {
            *py.add(i) += alpha * *px.add(i);
            i += 1;
        }
    }
}

/// One Q8_0 or Q4_0 block against `NT` tokens, accumulated into `acc`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. With `VNNI`, also AVX-512 VNNI and AVX-512 VL
/// (`vpdpbusd` on 256-bit vectors). `p` must be valid for reads of one block (18 bytes for Q4_0, 34
/// for Q8_0); for each token `t`, `qa[t] + b · 32` valid for reads of 32 i8 and `da[t] + b` for
/// reads of one f32.
#[inline(always)]
unsafe fn block_q<const NT: usize, const VNNI: bool, const Q4: bool>(
    p: *const u8,
    b: usize,
    qa: &[*const i8; NT],
    da: &[*const f32; NT],
    acc: &mut [__m256; NT],
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`) and that the
    // block at `p` and each token's block `b` of quants and scale are readable.
    unsafe {
        // The scale broadcast before converting: no scalar temporaries, no false dependencies.
        let dw = _mm256_cvtph_ps(_mm_set1_epi16((p as *const i16).read_unaligned()));
        // Signed weights (Q4_0: nibble − 8), then |w| · (a with w's sign): exact per lane.
        let w = if Q4 {
            let q = _mm_loadu_si128(p.add(2) as *const __m128i);
            let w = _mm256_and_si256(
                _mm256_set_m128i(_mm_srli_epi16(q, 4), q),
                _mm256_set1_epi8(0x0f),
            );
            _mm256_sub_epi8(w, _mm256_set1_epi8(8))
        } else {
            _mm256_loadu_si256(p.add(2) as *const __m256i)
        };
        let wu = _mm256_sign_epi8(w, w);
        for t in 0..NT {
            let a = _mm256_loadu_si256(qa[t].add(b * QK) as *const __m256i);
            let isum = dot4::<VNNI>(_mm256_setzero_si256(), wu, _mm256_sign_epi8(a, w));
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*da[t].add(b)));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[t]);
        }
    }
}

/// One Q8_0 or Q4_0 row against `NT` tokens starting at token `t0`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. With `VNNI`, also AVX-512 VNNI and AVX-512 VL
/// (`vpdpbusd` on 256-bit vectors). `row` must be valid for reads of `act.nb` blocks (18 bytes each
/// for Q4_0, 34 for Q8_0), and tokens `t0..t0 + NT` must lie in `act` (its slices hold `act.n`
/// tokens, as `check_q8` checks, and `t0 + NT ≤ act.n`).
#[inline(always)]
unsafe fn row_q<const NT: usize, const VNNI: bool, const Q4: bool>(
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
        // Two accumulators per token, alternating blocks, to hide the FMA latency.
        let mut acc0 = [_mm256_setzero_ps(); NT];
        let mut acc1 = [_mm256_setzero_ps(); NT];
        let qa: [*const i8; NT] = core::array::from_fn(|t| act.qs.as_ptr().add((t0 + t) * nb * QK));
        let da: [*const f32; NT] = core::array::from_fn(|t| act.d.as_ptr().add((t0 + t) * nb));
        let mut b = 0;
        while b + 2 <= nb {
            block_q::<NT, VNNI, Q4>(row.add(b * bb), b, &qa, &da, &mut acc0);
            block_q::<NT, VNNI, Q4>(row.add((b + 1) * bb), b + 1, &qa, &da, &mut acc1);
            b += 2;
        }
        if b < nb {
            block_q::<NT, VNNI, Q4>(row.add(b * bb), b, &qa, &da, &mut acc0);
        }
        core::array::from_fn(|t| hsum(_mm256_add_ps(acc0[t], acc1[t])))
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. With `VNNI`, also AVX-512 VNNI and AVX-512 VL
/// (`vpdpbusd` on 256-bit vectors). Lengths are checked here (`check_q8`).
#[inline(always)]
unsafe fn mm_q<const VNNI: bool, const Q4: bool>(
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
                let v = row_q::<NT, VNNI, Q4>(row, &act, t);
                for (j, v) in v.iter().enumerate() {
                    *o.add((t + j) * ldo + r) = *v;
                }
            });
        }
    }
}

/// Eight weights of kind `KIND` (0 f32, 1 f16, 2 bf16) from `p`, as f32.
///
/// # Safety
/// The CPU must support AVX2 and F16C. `p` must be valid for reads of 8 values of the kind
/// (32 bytes for f32, 16 for f16 and bf16); any alignment.
#[inline(always)]
unsafe fn load8<const KIND: u8>(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`) and 8 readable
    // values at `p`; the loads are unaligned.
    unsafe {
        match KIND {
            0 => _mm256_loadu_ps(p as *const f32),
            1 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
                16,
            )),
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
/// The CPU must support AVX2, FMA and F16C. `row` must be valid for reads of `act.cols`
/// values of the kind (4 bytes each for f32, 2 for f16 and bf16), and tokens `t0..t0 + NT`
/// must lie in `act.x` (`(t0 + NT) · act.cols ≤ act.x.len()`).
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
        let mut acc = [[_mm256_setzero_ps(); NT]; 2];
        let mut i = 0;
        while i + 16 <= cols {
            let w0 = load8::<KIND>(row.add(i * size));
            let w1 = load8::<KIND>(row.add((i + 8) * size));
            for t in 0..NT {
                acc[0][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t].add(i)), acc[0][t]);
                acc[1][t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[t].add(i + 8)), acc[1][t]);
            }
            i += 16;
        }
        if i + 8 <= cols {
            let w0 = load8::<KIND>(row.add(i * size));
            for t in 0..NT {
                acc[0][t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t].add(i)), acc[0][t]);
            }
            i += 8;
        }
        let mut sum: [f32; NT] =
            core::array::from_fn(|t| hsum(_mm256_add_ps(acc[0][t], acc[1][t])));
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
/// The CPU must support AVX2, FMA and F16C. Lengths are checked here (the asserts).
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

/// `S` groups of 16 interleaved Q4_0 rows (see `crate::layout`; walked side by side, see
/// `stream_groups!`) against `NT` tokens, 8 rows per vector.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. With `VNNI`, also AVX-512 VNNI and AVX-512 VL
/// (`vpdpbusd` on 256-bit vectors). Each `gs[j]` must be valid for reads of one Q4_0 group of
/// `act.nb` columns (`group_bytes(act.nb)` bytes), and tokens `t0..t0 + NT` must lie in `act` (`t0
/// + NT ≤ act.n`, its slices holding `act.n` tokens).
#[inline(always)]
unsafe fn group_q4_0x16<const NT: usize, const VNNI: bool, const S: usize>(
    gs: [*const u8; S],
    act: &Q8View<'_>,
    t0: usize,
) -> [[[__m256; NT]; 2]; S] {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that each
    // group holds `group_bytes(nb)` bytes (the offsets from `q4_offsets` and the 256 + 32
    // bytes read there stay in it) and that tokens `t0..t0 + NT` are in `act`.
    unsafe {
        let nb = act.nb;
        let mask = _mm256_set1_epi8(0x0f);
        let mut acc = [[[_mm256_setzero_ps(); NT]; 2]; S];
        for b in 0..nb {
            let (qo, so) = q4_offsets(nb, b);
            for (j, &g) in gs.iter().enumerate() {
                let (q, sc) = (g.add(qo), g.add(so));
                for h in 0..2 {
                    let c: [__m256i; 4] = core::array::from_fn(|k| {
                        _mm256_loadu_si256(q.add(64 * k + 32 * h) as *const __m256i)
                    });
                    let lo: [__m256i; 4] = core::array::from_fn(|k| _mm256_and_si256(c[k], mask));
                    let hi: [__m256i; 4] = core::array::from_fn(|k| {
                        _mm256_and_si256(_mm256_srli_epi16(c[k], 4), mask)
                    });
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(sc.add(16 * h) as *const __m128i));
                    for t in 0..NT {
                        let i = (t0 + t) * nb + b;
                        let a = act.qs.as_ptr().add(i * QK) as *const i32;
                        let mut s0 = _mm256_set1_epi32(-8 * *act.s.get_unchecked(i));
                        let mut s1 = _mm256_setzero_si256();
                        for k in 0..4 {
                            s0 = dot4::<VNNI>(
                                s0,
                                lo[k],
                                _mm256_set1_epi32(a.add(k).read_unaligned()),
                            );
                            s1 = dot4::<VNNI>(
                                s1,
                                hi[k],
                                _mm256_set1_epi32(a.add(4 + k).read_unaligned()),
                            );
                        }
                        let isum = _mm256_add_epi32(s0, s1);
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*act.d.get_unchecked(i)));
                        acc[j][h][t] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[j][h][t]);
                    }
                }
            }
        }
        acc
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. With `VNNI`, also AVX-512 VNNI and AVX-512 VL
/// (`vpdpbusd` on 256-bit vectors). Lengths are checked here (`check_packed`).
#[inline(always)]
unsafe fn mm_q4_0x16<const VNNI: bool>(
    w: &[u8],
    groups: usize,
    act: Q8View<'_>,
    out: &mut [f32],
    ldo: usize,
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `check_packed`
    // puts `groups` groups of `gb` bytes in `w`, every token in `act` and 16 values per group
    // per token at `(t + k) · ldo + 16 · g` in `out`.
    unsafe {
        let gb = group_bytes(act.nb);
        check_packed(w, groups, gb, &act, out, ldo);
        let o = out.as_mut_ptr();
        let streams = act.n == 1 && crate::arch::streams();
        stream_groups!(groups, streams, |gi, S| {
            let gp: [*const u8; S] = core::array::from_fn(|j| w.as_ptr().add(gi[j] * gb));
            tile_tokens!(act.n, if VNNI { 4 } else { 2 }, |t, NT| {
                let acc = group_q4_0x16::<NT, VNNI, S>(gp, &act, t);
                for (j, accj) in acc.iter().enumerate() {
                    for k in 0..NT {
                        let p = o.add((t + k) * ldo + 16 * gi[j]);
                        _mm256_storeu_ps(p, accj[0][k]);
                        _mm256_storeu_ps(p.add(8), accj[1][k]);
                    }
                }
            });
        });
    }
}

/// 16 interleaved Q8_0 rows (see `crate::layout`) against `NT` tokens, 8 rows per vector.
/// With VNNI the weights are offset to unsigned (`w + 128`) and `128 · Σ a` subtracted, exactly
/// per lane; without, `maddubs` takes `|w|` and `a` with `w`'s sign.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. With `VNNI`, also AVX-512 VNNI and AVX-512 VL
/// (`vpdpbusd` on 256-bit vectors). `g` must be valid for reads of one Q8_0 group of `act.nb`
/// columns (`group_bytes_q8(act.nb)` bytes), and tokens `t0..t0 + NT` must lie in `act` (`t0 + NT ≤
/// act.n`, its slices holding `act.n` tokens).
#[inline(always)]
unsafe fn group_q8_0x16<const NT: usize, const VNNI: bool>(
    g: *const u8,
    act: &Q8View<'_>,
    t0: usize,
) -> [[__m256; NT]; 2] {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that the group
    // holds `group_bytes_q8(nb)` bytes (quants `512 · nb`, then scales `32 · nb`) and that
    // tokens `t0..t0 + NT` are in `act`.
    unsafe {
        let nb = act.nb;
        let sc = g.add(nb * 512);
        let mut acc = [[_mm256_setzero_ps(); NT]; 2];
        for b in 0..nb {
            let q = g.add(512 * b);
            for h in 0..2 {
                let c: [__m256i; 8] = core::array::from_fn(|k| {
                    _mm256_loadu_si256(q.add(64 * k + 32 * h) as *const __m256i)
                });
                let u: [__m256i; 8] = core::array::from_fn(|k| {
                    if VNNI {
                        _mm256_xor_si256(c[k], _mm256_set1_epi8(-128))
                    } else {
                        _mm256_sign_epi8(c[k], c[k])
                    }
                });
                let dw =
                    _mm256_cvtph_ps(_mm_loadu_si128(sc.add(32 * b + 16 * h) as *const __m128i));
                for t in 0..NT {
                    let i = (t0 + t) * nb + b;
                    let a = act.qs.as_ptr().add(i * QK) as *const i32;
                    let mut s0 = if VNNI {
                        _mm256_set1_epi32(-128 * *act.s.get_unchecked(i))
                    } else {
                        _mm256_setzero_si256()
                    };
                    let mut s1 = _mm256_setzero_si256();
                    for k in 0..8 {
                        let ak = _mm256_set1_epi32(a.add(k).read_unaligned());
                        let sk = if VNNI { ak } else { _mm256_sign_epi8(ak, c[k]) };
                        if k.is_multiple_of(2) {
                            s0 = dot4::<VNNI>(s0, u[k], sk);
                        } else {
                            s1 = dot4::<VNNI>(s1, u[k], sk);
                        }
                    }
                    let isum = _mm256_add_epi32(s0, s1);
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*act.d.get_unchecked(i)));
                    acc[h][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[h][t]);
                }
            }
        }
        acc
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. With `VNNI`, also AVX-512 VNNI and AVX-512 VL
/// (`vpdpbusd` on 256-bit vectors). Lengths are checked here (`check_packed`).
#[inline(always)]
unsafe fn mm_q8_0x16<const VNNI: bool>(
    w: &[u8],
    groups: usize,
    act: Q8View<'_>,
    out: &mut [f32],
    ldo: usize,
) {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`); `check_packed`
    // puts `groups` groups of `gb` bytes in `w`, every token in `act` and 16 values per group
    // per token at `(t + j) · ldo + 16 · g` in `out`.
    unsafe {
        let gb = group_bytes_q8(act.nb);
        check_packed(w, groups, gb, &act, out, ldo);
        let o = out.as_mut_ptr();
        for g in 0..groups {
            let gp = w.as_ptr().add(g * gb);
            tile_tokens!(act.n, if VNNI { 4 } else { 2 }, |t, NT| {
                let acc = group_q8_0x16::<NT, VNNI>(gp, &act, t);
                for j in 0..NT {
                    let p = o.add((t + j) * ldo + 16 * g);
                    _mm256_storeu_ps(p, acc[0][j]);
                    _mm256_storeu_ps(p.add(8), acc[1][j]);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    /// `exp8` stays within 4e-7 relative of `f32::exp` on the softmax range (x ≤ 0).
    #[test]
    fn exp8_matches_exp() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run(x: &[f32; 8]) -> [f32; 8] {
            // SAFETY: `exp8` needs AVX2 and FMA, which the caller guarantees (see `# Safety`);
            // `x` and `out` hold the 8 values loaded and stored.
            unsafe {
                use core::arch::x86_64::*;
                let mut out = [0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), super::exp8(_mm256_loadu_ps(x.as_ptr())));
                out
            }
        }
        let n = if cfg!(miri) { 64 } else { 200_000 };
        for i in 0..n {
            let x: [f32; 8] =
                core::array::from_fn(|j| -87.0 * ((i * 8 + j) as f32 / (n * 8) as f32));
            // SAFETY: the features were detected above.
            let got = unsafe { run(&x) };
            for (g, x) in got.iter().zip(x) {
                let want = x.exp();
                assert!(
                    (g - want).abs() <= 4e-7 * want,
                    "exp({x}) = {g}, want {want}"
                );
            }
        }
    }
}
