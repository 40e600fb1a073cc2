//! AVX-512 VNNI kernels (Ice Lake, Zen 4 and later): the AVX2 algorithms with `vpdpbusd` on
//! 256-bit vectors for plain rows, and a 512-bit kernel for interleaved Q4_0, where one
//! `vpdpbusd` covers 4 values of all 16 rows of a group.

use core::arch::x86_64::*;

use crate::arch::check_packed;
use crate::blocks::QK;
use crate::layout::{group_bytes, group_bytes_q8, q4_offsets};

kernel_set! {
    name: "avx512vnni",
    features: "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    int8: true,
    silu_mul: wrap(super::silu_mul),
    attend_multi: wrap(super::attend_multi),
    mm_q4_0x16: wrap(zmm_q4_0x16),
    mm_q8_0x16: wrap(zmm_q8_0x16),
    packed_pays: true,
    token_tile: 16,
    detect: std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni"),
}

/// How far ahead of the Q4_0 quants being multiplied to prefetch into L1 (bytes), when one
/// group streams at a time. The Q4_0 kernel issues about 9 instructions per 64-byte line (Q8_0:
/// 3), so the out-of-order window covers few lines; with one stream a prefetch into L2 8 KiB
/// ahead gained 5–10% (`benches/roofline.rs`), and with the pair layout a standalone test of
/// one stream found L1 at 4 KiB best (L2 at 4–8 KiB lost ~10 points).
const PREFETCH: usize = 4096;

/// The same for the three streams of `stream_groups!` and for Q8_0 groups. An earlier AVX-512
/// host lost ~10% to it with three streams (more requests than the fill buffers hold), but on
/// a Sapphire Rapids host (2 vCPUs, AMX) decoding full-size Huginn-0125 without it ran at
/// 1.45–1.49× the paired read bound (Q4_0, one thread; 1.46–1.47× at two) and with it at
/// 1.12–1.15× (1.16–1.20×); Q8_0 1.28–1.29× → 1.14–1.18× (`raven bench`, alternated;
/// 1, 2 and 4 KiB within noise of each other).
const PREFETCH_NEAR: usize = 2048;

/// The same for [`group_wide`]: two threads multiplying a few tokens each read at 25–40 GB/s
/// while computing, so more must be in flight than decoding's 4 KiB. Full-size Huginn-0125,
/// Q4_0, 2 threads, AMD Zen 5 (`raven bench --wavefront`, two runs per distance): one core
/// iteration over 4 positions took 1.31–1.33× a single-position iteration with 4 KiB,
/// 1.13–1.16× with 8 KiB, 1.10× with 16 KiB, 1.11–1.12× with 24 KiB (2 KiB: 1.60–1.63×);
/// over 8 positions 1.74–1.76×, 1.64–1.66×, 1.62–1.63×, 1.62–1.64×.
const PREFETCH_WIDE: usize = 16384;

/// Prefetches `N` consecutive 64-byte lines from `p` into L1 (a hint: never faults).
///
/// # Safety
/// The CPU must support SSE (every x86_64 CPU does). `p` may point anywhere: a prefetch reads
/// nothing the program sees and never faults.
#[inline(always)]
unsafe fn prefetch_lines<const N: usize>(p: *const u8) {
    for k in 0..N {
        // SAFETY: SSE is part of x86_64; the address is only a hint (`wrapping_add`, no
        // dereference).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * k) as *const i8) };
    }
}

/// Activation pointers of tokens `t0..t0 + NT`: quants, scales and block sums.
///
/// # Safety
/// Tokens `t0..t0 + NT` must lie in `act`: `t0 + NT ≤ act.n`, with `act`'s slices holding
/// `act.n` tokens (as `check_packed` checks).
#[inline(always)]
#[allow(clippy::type_complexity)]
unsafe fn act_ptrs<const NT: usize>(
    act: &Q8View<'_>,
    t0: usize,
) -> ([*const i32; NT], [*const f32; NT], [*const i32; NT]) {
    // SAFETY: the caller guarantees tokens `t0..t0 + NT` are in `act`, so every offset
    // stays inside its slice.
    unsafe {
        let nb = act.nb;
        (
            core::array::from_fn(|t| act.qs.as_ptr().add((t0 + t) * nb * QK) as *const i32),
            core::array::from_fn(|t| act.d.as_ptr().add((t0 + t) * nb)),
            core::array::from_fn(|t| act.s.as_ptr().add((t0 + t) * nb)),
        )
    }
}

/// `S` groups of 16 interleaved Q4_0 rows (walked side by side, see `stream_groups!`) against
/// `NT` tokens: lane `r` of `acc[j][t]` is row `r` of group `gs[j]`. Decoding's kernel (one or
/// two tokens); more go to [`group_wide`].
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI (and AVX, F16C), as the
/// `avx512vnni` set that inlines it does. Each `gs[j]` must be valid for reads of one
/// Q4_0 group of `act.nb` columns (`group_bytes(act.nb)` bytes), and tokens `t0..t0 + NT`
/// must lie in `act` (`t0 + NT ≤ act.n`, its slices holding `act.n` tokens).
#[inline(always)]
unsafe fn group<const NT: usize, const S: usize>(
    gs: [*const u8; S],
    act: &Q8View<'_>,
    t0: usize,
) -> [[__m512; NT]; S] {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that each
    // group holds `group_bytes(nb)` bytes (the offsets from `q4_offsets` and the 256 + 32
    // bytes read there stay in it; the prefetches may point past it, which is harmless) and
    // that tokens `t0..t0 + NT` are in `act`.
    unsafe {
        let nb = act.nb;
        let mask = _mm512_set1_epi8(0x0f);
        let mask_hi = _mm512_set1_epi8(0xf0u8 as i8);
        let (qa, da, sa) = act_ptrs::<NT>(act, t0);
        let mut acc = [[_mm512_setzero_ps(); NT]; S];
        for b in 0..nb {
            let (qo, so) = q4_offsets(nb, b);
            for (j, &g) in gs.iter().enumerate() {
                let q = g.add(qo);
                // The column's quants and (every other column) the pair's scales line.
                if S == 1 {
                    prefetch_lines::<5>(q.wrapping_add(PREFETCH));
                } else {
                    prefetch_lines::<5>(q.wrapping_add(PREFETCH_NEAR));
                }
                let c: [__m512i; 4] =
                    core::array::from_fn(|k| _mm512_loadu_si512(q.add(64 * k) as *const _));
                let lo: [__m512i; 4] = core::array::from_fn(|k| _mm512_and_si512(c[k], mask));
                // High nibbles left in place (16 × value): one AND instead of a shift and an AND;
                // their sums are exact multiples of 16, divided back below.
                let hi: [__m512i; 4] = core::array::from_fn(|k| _mm512_and_si512(c[k], mask_hi));
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(g.add(so) as *const __m256i));
                for t in 0..NT {
                    let a = qa[t].add(b * QK / 4);
                    // Σ nibble·a − 8·Σ a, exact in each lane.
                    let mut s0 = _mm512_set1_epi32(-8 * *sa[t].add(b));
                    let mut s1 = _mm512_setzero_si512();
                    for k in 0..4 {
                        s0 = _mm512_dpbusd_epi32(
                            s0,
                            lo[k],
                            _mm512_set1_epi32(a.add(k).read_unaligned()),
                        );
                        s1 = _mm512_dpbusd_epi32(
                            s1,
                            hi[k],
                            _mm512_set1_epi32(a.add(4 + k).read_unaligned()),
                        );
                    }
                    let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*da[t].add(b)));
                    let s = _mm512_add_epi32(s0, _mm512_srai_epi32(s1, 4));
                    acc[j][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[j][t]);
                }
            }
        }
        acc
    }
}

/// One group of 16 interleaved Q4_0 rows against `NT` tokens (up to 8), the token loop
/// innermost: each weight vector meets `NT` independent accumulators in a row, so `vpdpbusd`'s
/// latency hides behind the other tokens and the multiply pipes issue every cycle. Both
/// nibbles are shifted into place once per block (shared by the tokens), and each token keeps
/// one integer chain per block.
///
/// # Safety
/// As [`group`] with `S = 1`.
#[inline(always)]
unsafe fn group_wide<const NT: usize>(g: *const u8, act: &Q8View<'_>, t0: usize) -> [__m512; NT] {
    // SAFETY: as `group`: the CPU features, one group of `group_bytes(nb)` bytes at `g`, and
    // tokens `t0..t0 + NT` in `act`.
    unsafe {
        let nb = act.nb;
        let mask = _mm512_set1_epi8(0x0f);
        let (qa, da, sa) = act_ptrs::<NT>(act, t0);
        let mut acc = [_mm512_setzero_ps(); NT];
        for b in 0..nb {
            let (qo, so) = q4_offsets(nb, b);
            let q = g.add(qo);
            prefetch_lines::<5>(q.wrapping_add(PREFETCH_WIDE));
            let c: [__m512i; 4] =
                core::array::from_fn(|k| _mm512_loadu_si512(q.add(64 * k) as *const _));
            let w: [__m512i; 8] = core::array::from_fn(|k| {
                if k < 4 {
                    _mm512_and_si512(c[k], mask)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16(c[k - 4], 4), mask)
                }
            });
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(g.add(so) as *const __m256i));
            let mut s: [__m512i; NT] =
                core::array::from_fn(|t| _mm512_set1_epi32(-8 * *sa[t].add(b)));
            for k in 0..8 {
                for t in 0..NT {
                    let a = _mm512_set1_epi32(qa[t].add(b * QK / 4 + k).read_unaligned());
                    s[t] = _mm512_dpbusd_epi32(s[t], w[k], a);
                }
            }
            for t in 0..NT {
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*da[t].add(b)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), scale, acc[t]);
            }
        }
        acc
    }
}

/// Every token of `act` against one Q4_0 group at `g`, in tiles of up to 8 ([`group_wide`]):
/// token `t`'s 16 values go to `o + t · ldo`.
///
/// # Safety
/// As [`group_wide`] for every tile, and `o + t · ldo + 0..16` writable for every token `t`.
#[inline(always)]
unsafe fn wide_tiles(g: *const u8, act: &Q8View<'_>, o: *mut f32, ldo: usize) {
    let mut t = 0;
    while t < act.n {
        let nt = (act.n - t).min(8);
        macro_rules! tile {
            ($($n:literal)*) => {
                match nt {
                    $($n => {
                        // SAFETY: tokens `t..t + $n` are in `act` (`nt ≤ act.n − t`); the
                        // CPU features, the group at `g` and the output rows as the caller
                        // guarantees.
                        unsafe {
                            let acc = group_wide::<$n>(g, act, t);
                            for (k, v) in acc.iter().enumerate() {
                                _mm512_storeu_ps(o.add((t + k) * ldo), *v);
                            }
                        }
                    })*
                    _ => unreachable!("tiles hold 1 to 8 tokens"),
                }
            };
        }
        tile!(1 2 3 4 5 6 7 8);
        t += nt;
    }
}

/// `S` groups of 16 interleaved Q8_0 rows against `NT` tokens: weights offset to unsigned
/// (`w + 128`) for `vpdpbusd`, and `128 · Σ a` subtracted, exactly per lane.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI (and AVX, F16C), as the
/// `avx512vnni` set that inlines it does. Each `gs[j]` must be valid for reads of one
/// Q8_0 group of `act.nb` columns (`group_bytes_q8(act.nb)` bytes), and tokens
/// `t0..t0 + NT` must lie in `act` (`t0 + NT ≤ act.n`, its slices holding `act.n` tokens).
#[inline(always)]
unsafe fn group_q8<const NT: usize, const S: usize>(
    gs: [*const u8; S],
    act: &Q8View<'_>,
    t0: usize,
) -> [[__m512; NT]; S] {
    // SAFETY: the caller guarantees the CPU features (see `# Safety`), that each
    // group holds `group_bytes_q8(nb)` bytes (quants `512 · nb`, then scales `32 · nb`) and that
    // tokens `t0..t0 + NT` are in `act`.
    unsafe {
        let nb = act.nb;
        let flip = _mm512_set1_epi8(-128);
        let (qa, da, sa) = act_ptrs::<NT>(act, t0);
        let mut acc = [[_mm512_setzero_ps(); NT]; S];
        for b in 0..nb {
            for (j, &g) in gs.iter().enumerate() {
                let q = g.add(512 * b);
                prefetch_lines::<8>(q.wrapping_add(PREFETCH_NEAR));
                let u: [__m512i; 8] = core::array::from_fn(|k| {
                    _mm512_xor_si512(_mm512_loadu_si512(q.add(64 * k) as *const _), flip)
                });
                let dw = _mm512_cvtph_ps(_mm256_loadu_si256(
                    g.add(nb * 512 + 32 * b) as *const __m256i
                ));
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
                    acc[j][t] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),
                        scale,
                        acc[j][t],
                    );
                }
            }
        }
        acc
    }
}

/// The drivers of the packed kernels: groups in streams (`stream_groups!`, when `$streams`),
/// against every tile of tokens (up to 2 per tile when streaming, so the accumulators stay in
/// registers). With `$wide` (Q4_0), three or more tokens go to [`wide_tiles`] one group at a
/// time: on an AMD Zen 5 core it multiplied 8 tokens at 395 GMAC/s where `group`'s tiles of 4
/// reached 360 (`examples/mm_probe.rs`, 5280 × 5280), and a 2-thread product of the
/// full-size shapes took 15–20% less time (`examples/mm2_probe.rs`).
macro_rules! zmm_packed {
    ($name:ident, $group:ident, $group_bytes:ident, $streams:expr, $wide:expr) => {
        /// # Safety
        /// Needs AVX-512 F/BW/VL/VNNI (and F16C); slice lengths are checked here.
        #[inline(always)]
        pub(super) unsafe fn $name(
            w: &[u8],
            groups: usize,
            act: Q8View<'_>,
            out: &mut [f32],
            ldo: usize,
        ) {
            let gb = $group_bytes(act.nb);
            check_packed(w, groups, gb, &act, out, ldo);
            let o = out.as_mut_ptr();
            let decode = $streams && act.n <= 2 && crate::arch::streams();
            stream_groups!(groups, decode, |gi, S| {
                // SAFETY: the caller guarantees the CPU features (see `# Safety`);
                // `check_packed` puts `groups` groups of `gb` bytes in `w` (so each `gi[j]`
                // group), every token in `act` (so tiles `t..t + NT`) and 16 values per group
                // per token at `(t + k) · ldo + 16 · gi[j]` in `out`.
                unsafe {
                    let gp: [*const u8; S] = core::array::from_fn(|j| w.as_ptr().add(gi[j] * gb));
                    if $wide && S == 1 && act.n >= 3 {
                        wide_tiles(gp[0], &act, o.add(16 * gi[0]), ldo);
                    } else {
                        tile_tokens!(act.n, if S > 1 { 2 } else { 4 }, |t, NT| {
                            let acc = $group::<NT, S>(gp, &act, t);
                            for (j, accj) in acc.iter().enumerate() {
                                for (k, a) in accj.iter().enumerate() {
                                    _mm512_storeu_ps(o.add((t + k) * ldo + 16 * gi[j]), *a);
                                }
                            }
                        });
                    }
                }
            });
        }
    };
}

zmm_packed!(zmm_q4_0x16, group, group_bytes, true, true);
// Q8_0 streams at 85–90% of the bandwidth one group at a time; three streams lost ~10%,
// prefetching 4 KiB ahead 5–15 points (on an earlier host; on the AMX host 2 KiB gained, see
// `PREFETCH_NEAR`), and Q4_0's pair layout (scales after each pair of
// columns) 5 points on average, −13 to +1 over 9 runs (`benches/roofline.rs` and an A/B in
// one process, side by side).
zmm_packed!(zmm_q8_0x16, group_q8, group_bytes_q8, false, false);
