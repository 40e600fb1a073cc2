//! AVX-512 VNNI kernels (Ice Lake, Zen 4 and later): the AVX2 algorithms with `vpdpbusd` on
//! 256-bit vectors for plain rows, and a 512-bit kernel for interleaved Q4_0, where one
//! `vpdpbusd` covers 4 values of all 16 rows of a group.

use core::arch::x86_64::*;

use crate::arch::check_packed;
use crate::blocks::QK;
use crate::packed::{group_bytes, group_bytes_q8};

super::kernel_set!(
    "avx512vnni",
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    true,
    mm_q4_0x16,
    mm_q8_0x16,
    true,
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
);

super::kernel_set!(@wrap "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", mm_q4_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = zmm_q4_0x16);

super::kernel_set!(@wrap "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", mm_q8_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = zmm_q8_0x16);

/// How far ahead of the Q4_0 quants being multiplied to prefetch into L2 (bytes). The Q4_0
/// kernel issues about 9 instructions per 64-byte line (Q8_0: 3), so the out-of-order window
/// covers too few lines to hide memory latency and the hardware prefetcher alone leaves it well
/// below the read bandwidth (`benches/roofline.rs`: +5–10% with this prefetch; Q8_0 gains
/// nothing and has none).
const PREFETCH: usize = 8192;

/// Prefetches `N` consecutive 64-byte lines from `p` into L2 (a hint: never faults).
#[inline(always)]
unsafe fn prefetch_lines<const N: usize>(p: *const u8) {
    for k in 0..N {
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64 * k) as *const i8);
    }
}

/// One group of 16 interleaved Q4_0 rows against `NT` tokens: lane `r` of every vector is row `r`.
#[inline(always)]
unsafe fn group<const NT: usize>(g: *const u8, act: &Q8View<'_>, t0: usize) -> [__m512; NT] {
    let nb = act.nb;
    let sc = g.add(nb * 256);
    let mask = _mm512_set1_epi8(0x0f);
    let mask_hi = _mm512_set1_epi8(0xf0u8 as i8);
    let qa: [*const i32; NT] =
        core::array::from_fn(|t| act.qs.as_ptr().add((t0 + t) * nb * QK) as *const i32);
    let da: [*const f32; NT] = core::array::from_fn(|t| act.d.as_ptr().add((t0 + t) * nb));
    let sa: [*const i32; NT] = core::array::from_fn(|t| act.s.as_ptr().add((t0 + t) * nb));
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..nb {
        let q = g.add(256 * b);
        prefetch_lines::<4>(q.wrapping_add(PREFETCH));
        let c: [__m512i; 4] =
            core::array::from_fn(|k| _mm512_loadu_si512(q.add(64 * k) as *const _));
        let lo: [__m512i; 4] = core::array::from_fn(|k| _mm512_and_si512(c[k], mask));
        // High nibbles left in place (16 × value): one AND instead of a shift and an AND;
        // their sums are exact multiples of 16, divided back below.
        let hi: [__m512i; 4] = core::array::from_fn(|k| _mm512_and_si512(c[k], mask_hi));
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(32 * b) as *const __m256i));
        for t in 0..NT {
            let a = qa[t].add(b * QK / 4);
            // Σ nibble·a − 8·Σ a, exact in each lane.
            let mut s0 = _mm512_set1_epi32(-8 * *sa[t].add(b));
            let mut s1 = _mm512_setzero_si512();
            for k in 0..4 {
                s0 = _mm512_dpbusd_epi32(s0, lo[k], _mm512_set1_epi32(a.add(k).read_unaligned()));
                s1 = _mm512_dpbusd_epi32(
                    s1,
                    hi[k],
                    _mm512_set1_epi32(a.add(4 + k).read_unaligned()),
                );
            }
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*da[t].add(b)));
            let s = _mm512_add_epi32(s0, _mm512_srai_epi32(s1, 4));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[t]);
        }
    }
    acc
}

/// One group of 16 interleaved Q8_0 rows against `NT` tokens: weights offset to unsigned
/// (`w + 128`) for `vpdpbusd`, and `128 · Σ a` subtracted, exactly per lane.
#[inline(always)]
unsafe fn group_q8<const NT: usize>(g: *const u8, act: &Q8View<'_>, t0: usize) -> [__m512; NT] {
    let nb = act.nb;
    let sc = g.add(nb * 512);
    let flip = _mm512_set1_epi8(-128);
    let qa: [*const i32; NT] =
        core::array::from_fn(|t| act.qs.as_ptr().add((t0 + t) * nb * QK) as *const i32);
    let da: [*const f32; NT] = core::array::from_fn(|t| act.d.as_ptr().add((t0 + t) * nb));
    let sa: [*const i32; NT] = core::array::from_fn(|t| act.s.as_ptr().add((t0 + t) * nb));
    let mut acc = [_mm512_setzero_ps(); NT];
    for b in 0..nb {
        let q = g.add(512 * b);
        let u: [__m512i; 8] = core::array::from_fn(|k| {
            _mm512_xor_si512(_mm512_loadu_si512(q.add(64 * k) as *const _), flip)
        });
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sc.add(32 * b) as *const __m256i));
        for t in 0..NT {
            let a = qa[t].add(b * QK / 4);
            let mut s0 = _mm512_set1_epi32(-128 * *sa[t].add(b));
            let mut s1 = _mm512_setzero_si512();
            for k in 0..4 {
                s0 = _mm512_dpbusd_epi32(
                    s0,
                    u[2 * k],
                    _mm512_set1_epi32(a.add(2 * k).read_unaligned()),
                );
                s1 = _mm512_dpbusd_epi32(
                    s1,
                    u[2 * k + 1],
                    _mm512_set1_epi32(a.add(2 * k + 1).read_unaligned()),
                );
            }
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*da[t].add(b)));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), scale, acc[t]);
        }
    }
    acc
}

/// The drivers of the packed kernels: every group of 16 rows against every tile of tokens.
macro_rules! zmm_packed {
    ($name:ident, $group:ident, $group_bytes:ident) => {
        /// # Safety
        /// Needs AVX-512 F/BW/VL/VNNI (and F16C); slice lengths are checked here.
        #[inline(always)]
        unsafe fn $name(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
            let gb = $group_bytes(act.nb);
            check_packed(w, groups, gb, &act, out, ldo);
            let o = out.as_mut_ptr();
            for g in 0..groups {
                let gp = w.as_ptr().add(g * gb);
                tile_tokens!(act.n, 4, |t, NT| {
                    let acc = $group::<NT>(gp, &act, t);
                    for (j, a) in acc.iter().enumerate() {
                        _mm512_storeu_ps(o.add((t + j) * ldo + 16 * g), *a);
                    }
                });
            }
        }
    };
}

zmm_packed!(zmm_q4_0x16, group, group_bytes);
zmm_packed!(zmm_q8_0x16, group_q8, group_bytes_q8);
