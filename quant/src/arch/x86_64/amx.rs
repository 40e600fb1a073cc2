//! AMX int8 tiles (Sapphire Rapids and later): the AVX-512 VNNI set, with products over
//! [`MIN_TOKENS`] or more tokens (prompts, speculative verifications, the parallel sampler's
//! wavefront) done by `tdpbssd`,
//! one 16 tokens × 16 rows × 32 values block product per instruction.
//!
//! Weights are the tiles' B operand, activations the A operand. The packed layout already puts
//! 4 consecutive values of 16 rows in each 64-byte line, which is AMX's B layout: Q8_0 quants
//! load as they are stored, Q4_0 nibbles are widened (minus 8, signed) once per group into a
//! per-thread buffer. Activations are copied block-major once per product, so that a tile of
//! 16 tokens' block is 512 consecutive bytes. Each block's
//! 16 × 16 integer sums then take the same float steps as the VNNI kernels (block sum, times
//! the weight scale times the activation scale, added by one fused multiply-add per block in
//! block order), so a token's outputs are the same bits whichever set and however many tokens
//! computed them: a prompt's logits equal token-by-token decoding's.
//!
//! The instructions are written with `asm!` (Rust has no stable AMX intrinsics); Linux must
//! grant the process the tile state first (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which
//! detection asks for once. Elsewhere the set is not offered.

use core::arch::asm;
use core::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::avx512::{zmm_q4_0x16, zmm_q8_0x16};
use crate::arch::check_packed;
use crate::blocks::QK;
use crate::layout::{group_bytes, group_bytes_q8, q4_offsets};
use crate::packed::Line;

kernel_set! {
    name: "amx",
    features: "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    int8: true,
    silu_mul: wrap(super::silu_mul),
    attend_multi: wrap(super::attend_multi),
    mm_q4_0x16: wrap(amx_q4_0x16),
    mm_q8_0x16: wrap(amx_q8_0x16),
    packed_pays: true,
    token_tile: 64,
    detect: super::avx512::kernels().is_some() && usable(),
}

/// Products over fewer tokens than this take the VNNI kernels: decoding streams
/// the weights from memory, where tiles gain nothing. From 4 tokens the tiles win where the
/// weights come from memory, as in a model: one core iteration of full-size Huginn-0125 Q4_0
/// over W positions at 2 threads took 43.5–44.3 ms against VNNI's 43.7–45.7 at W = 4,
/// 45.0–45.7 against 55.6–59.8 at 6, 48.8–49.8 against 65.9–67.9 at 8 (`raven bench -p W
/// --steps 4,12`, alternated). On a matrix that stays in L3 the VNNI kernels do better below
/// 10 tokens (one thread, 5280 × 5280 Q4_0, GMAC/s AMX vs VNNI: 89 vs 196 at 4, 167 vs 188 at
/// 8, 195 vs 189 at 10; `examples/mm_probe.rs`), but a model's weights do not stay there.
pub(crate) const MIN_TOKENS: usize = 4;

/// Whether the CPU has AMX-TILE and AMX-INT8 and the OS lets this process use them (asked once).
fn usable() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // SAFETY: CPUID leaf 7 exists on every x86_64 CPU with AVX-512, which the caller
        // checked first.
        #[allow(unused_unsafe)]
        let leaf = unsafe { __cpuid_count(7, 0) };
        // EDX bit 24: AMX-TILE, bit 25: AMX-INT8.
        leaf.edx >> 24 & 3 == 3 && request_tile_state()
    })
}

/// Asks Linux for the tile data state (XTILEDATA, feature 18), which a process must hold
/// before its first tile instruction; true when granted.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with ARCH_REQ_XCOMP_PERM only changes which register state the kernel
    // lets this process use; it reads and writes no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn request_tile_state() -> bool {
    false
}

thread_local! {
    /// The activations' quants block-major (block column, then token: 32 bytes each), so that
    /// an A tile of 16 tokens is 512 consecutive bytes instead of half of 16 distant lines.
    static BLOCK_MAJOR: Cell<Vec<Line>> = const { Cell::new(Vec::new()) };
}

/// The tile configuration for chunks of `m` tokens. A step multiplies one block column of up
/// to two groups (weights: tiles 6 and 7, 8 × 64 bytes, 32 values of 16 rows) by up to two
/// chunks of tokens (activations: tiles 4 and 5, `m` × 32 bytes) into up to four independent
/// sums (tiles 0–3, `m` × 16 i32; tile `2c + g` for chunk `c` and group `g`): one chain of
/// dependent tile instructions per step kept the tile unit at a third of its rate.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(m: usize) -> TileConfig {
        debug_assert!((1..=16).contains(&m));
        let mut c = [0u8; 64];
        c[0] = 1; // palette 1
        for t in 0..8 {
            let (rows, colsb) = match t {
                0..=3 => (m, 64),
                4 | 5 => (m, 32),
                _ => (8, 64),
            };
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(colsb as u16).to_le_bytes());
            c[48 + t] = rows as u8;
        }
        TileConfig(c)
    }
}

/// `tilezero tmm{T}`.
///
/// # Safety
/// A [`TileConfig`] must be loaded.
#[inline(always)]
unsafe fn tile_zero<const T: usize>() {
    // SAFETY: the caller guarantees the configuration; no memory is touched.
    unsafe { asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) }
}

/// `tileloadd tmm{T}` from `p`, one row every `stride` bytes.
///
/// # Safety
/// A [`TileConfig`] must be loaded; `p` readable for tile `T`'s rows at `stride`.
#[inline(always)]
unsafe fn tile_load<const T: usize>(p: *const u8, stride: usize) {
    // SAFETY: the caller guarantees the configuration and the extent.
    unsafe {
        asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride,
             options(nostack, readonly))
    }
}

/// `tdpbssd tmm{C}, tmm{A}, tmm{B}`: sums += signed activations · signed weights.
///
/// # Safety
/// A [`TileConfig`] must be loaded.
#[inline(always)]
unsafe fn tile_dot<const C: usize, const A: usize, const B: usize>() {
    // SAFETY: the caller guarantees the configuration; tiles only.
    unsafe {
        asm!("tdpbssd tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
             options(nostack, nomem))
    }
}

/// `tilestored` of tile `T` to `p`, 64 bytes per row.
///
/// # Safety
/// A [`TileConfig`] must be loaded; `p` writable for tile `T`'s rows of 64 bytes.
#[inline(always)]
unsafe fn tile_store<const T: usize>(p: *mut i32) {
    // SAFETY: the caller guarantees the configuration and the extent.
    unsafe {
        asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) p, s = in(reg) 64usize,
             options(nostack))
    }
}

/// One step: the B tiles 6 and 7 (block column `b` of `G` groups, loaded by the caller)
/// against `C` chunks of tokens (activations at `a[c]`, a token every `lda` bytes), sums
/// stored to `sums[2c + g]`.
///
/// # Safety
/// A [`TileConfig`] must be loaded and tiles 6 (and 7 when `G = 2`) hold weights; `a[c]`
/// readable as tiles 4 + c, `sums` writable.
#[inline(always)]
unsafe fn step<const G: usize, const C: usize>(
    a: [*const i8; 2],
    lda: usize,
    sums: &mut [[i32; 256]; 4],
) {
    // SAFETY: the caller guarantees the configuration and the extents; tiles 2c + g, 4 + c
    // and 6 + g exist for every c < C ≤ 2 and g < G ≤ 2.
    unsafe {
        tile_zero::<0>();
        if G > 1 {
            tile_zero::<1>();
        }
        if C > 1 {
            tile_zero::<2>();
            if G > 1 {
                tile_zero::<3>();
            }
        }
        tile_load::<4>(a[0] as *const u8, lda);
        if C > 1 {
            tile_load::<5>(a[1] as *const u8, lda);
        }
        tile_dot::<0, 4, 6>();
        if G > 1 {
            tile_dot::<1, 4, 7>();
        }
        if C > 1 {
            tile_dot::<2, 5, 6>();
            if G > 1 {
                tile_dot::<3, 5, 7>();
            }
        }
        tile_store::<0>(sums[0].as_mut_ptr());
        if G > 1 {
            tile_store::<1>(sums[1].as_mut_ptr());
        }
        if C > 1 {
            tile_store::<2>(sums[2].as_mut_ptr());
            if G > 1 {
                tile_store::<3>(sums[3].as_mut_ptr());
            }
        }
    }
}

/// Widens block column `b` of the Q4_0 group at `g` (`nb` columns) into the 8 lines at `out`:
/// its 4 chunks' low nibbles (values 0–15 of each row), then their high nibbles (values
/// 16–31), each minus 8, as signed bytes.
///
/// # Safety
/// AVX-512F/BW; `g` readable for `group_bytes(nb)` bytes, `out` writable for 8 lines.
#[inline(always)]
unsafe fn widen_q4(g: *const u8, nb: usize, b: usize, out: *mut Line) {
    // SAFETY: the caller guarantees the features and extents; `q4_offsets` stays in the group.
    unsafe {
        let mask = _mm512_set1_epi8(0x0f);
        let eight = _mm512_set1_epi8(8);
        let out = out as *mut __m512i;
        let q = g.add(q4_offsets(nb, b).0);
        for k in 0..4 {
            let c = _mm512_loadu_si512(q.add(64 * k) as *const _);
            let lo = _mm512_and_si512(c, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), mask);
            _mm512_store_si512(out.add(k), _mm512_sub_epi8(lo, eight));
            _mm512_store_si512(out.add(4 + k), _mm512_sub_epi8(hi, eight));
        }
    }
}

/// The `G` groups a step multiplies (the second is the first when `G = 1`).
struct Groups<const Q4: bool> {
    g: [*const u8; 2],
    nb: usize,
}

impl<const Q4: bool> Groups<Q4> {
    /// Loads block column `b` of the groups into tiles 6 and 7 (Q4_0: widened through
    /// `scratch` first; Q8_0: the quants as packed).
    ///
    /// # Safety
    /// AVX-512F/BW; a [`TileConfig`] loaded; `b < nb`; `scratch` 16 lines.
    #[inline(always)]
    unsafe fn load_b<const G: usize>(&self, b: usize, scratch: &mut [Line; 16]) {
        // SAFETY: 512 bytes per block column in both layouts; the scratch holds two tiles.
        unsafe {
            for j in 0..G {
                // The weights stream from memory once per product: fetch ahead into L1.
                let ahead = self.g[j].wrapping_add(
                    if Q4 {
                        q4_offsets(self.nb, b).0
                    } else {
                        512 * b
                    } + PREFETCH,
                );
                for k in 0..if Q4 { 5 } else { 8 } {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * k) as *const i8);
                }
                let p = if Q4 {
                    let p = scratch.as_mut_ptr().add(8 * j);
                    widen_q4(self.g[j], self.nb, b, p);
                    p as *const u8
                } else {
                    self.g[j].add(512 * b)
                };
                if j == 0 {
                    tile_load::<6>(p, 64);
                } else {
                    tile_load::<7>(p, 64);
                }
            }
        }
    }

    /// Block `b`'s 16 weight scales of group `j`.
    ///
    /// # Safety
    /// `b < nb`, `j < 2`, and F16C.
    #[inline(always)]
    unsafe fn scales(&self, j: usize, b: usize) -> __m512 {
        let so = if Q4 {
            q4_offsets(self.nb, b).1
        } else {
            self.nb * 512 + 32 * b
        };
        // SAFETY: the scales lie in the group (see `crate::layout`).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(self.g[j].add(so) as *const __m256i)) }
    }
}

/// Chunks of tokens a tile covers: `m` tokens from `t0`, of which those from `t0 + keep` are
/// new (a last chunk ends at `n`, overlapping the one before).
#[derive(Clone, Copy)]
struct Chunk {
    t0: usize,
    keep: usize,
}

/// How far ahead of the block being multiplied its group's weights are prefetched (bytes).
const PREFETCH: usize = 2048;

/// Chunks per pass over the blocks: the accumulators of 64 tokens × 2 groups (8 KiB) and the
/// sums of two blocks (16 KiB) stay in L1.
const SPAN: usize = 4;

/// `G` groups against up to [`SPAN`] chunks of `m` tokens: block by block, the weights'
/// B tiles are loaded once for all chunks, then, every two blocks, their sums take the VNNI
/// kernels' float steps (sum to float, times weight scale times activation scale, fused
/// multiply-add in block order). Each chunk's new tokens are stored, 16 rows per group, at
/// `o + token · ldo + 16 · g`.
///
/// # Safety
/// AVX-512F/BW/VL, F16C; a [`TileConfig`] for `m` tokens loaded; the groups whole; the
/// chunks' tokens in `act` (`qbm` its quants block-major); `o` writable at every stored offset.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn group_span<const Q4: bool, const G: usize>(
    gs: &Groups<Q4>,
    act: &Q8View<'_>,
    qbm: *const i8,
    chunks: &[Chunk],
    m: usize,
    sums: &mut Sums,
    o: *mut f32,
    ldo: usize,
) {
    // SAFETY: the caller guarantees the features, the configuration and the extents; block
    // `b`'s activations of tokens `t0..t0 + m` lie at `(b · n + t0) · 32` in `qbm`.
    unsafe {
        let nb = act.nb;
        let lda = act.n * QK;
        let nc = chunks.len();
        debug_assert!((1..=SPAN).contains(&nc));
        let mut scratch = [Line([0; 64]); 16];
        let mut acc = [[[_mm512_setzero_ps(); 16]; 2]; SPAN];
        let mut b = 0;
        while b < nb {
            let pair = (b + 2 <= nb) as usize + 1;
            for k in 0..pair {
                gs.load_b::<G>(b + k, &mut scratch);
                let a = |c: usize| qbm.add((b + k) * lda + chunks[c.min(nc - 1)].t0 * QK);
                let mut c = 0;
                while c + 2 <= nc {
                    step::<G, 2>([a(c), a(c + 1)], QK, &mut sums.0[k][c / 2]);
                    c += 2;
                }
                if c < nc {
                    step::<G, 1>([a(c), a(c)], QK, &mut sums.0[k][c / 2]);
                }
            }
            let dw: [[__m512; 2]; 2] = core::array::from_fn(|k| {
                core::array::from_fn(|j| gs.scales(j.min(G - 1), (b + k).min(nb - 1)))
            });
            for (c, ch) in chunks.iter().enumerate() {
                let (s0, s1) = (&sums.0[0][c / 2], &sums.0[1][c / 2]);
                let tile = 2 * (c % 2);
                for t in 0..m {
                    let d = act.d.as_ptr().add((ch.t0 + t) * nb + b);
                    let dx0 = _mm512_set1_ps(*d);
                    let dx1 = if pair == 2 {
                        _mm512_set1_ps(*d.add(1))
                    } else {
                        dx0
                    };
                    for j in 0..G {
                        let a = &mut acc[c][j][t];
                        let v = _mm512_load_si512(s0[tile + j].as_ptr().add(16 * t) as *const _);
                        let mut x = _mm512_fmadd_ps(
                            _mm512_cvtepi32_ps(v),
                            _mm512_mul_ps(dw[0][j], dx0),
                            *a,
                        );
                        if pair == 2 {
                            let v =
                                _mm512_load_si512(s1[tile + j].as_ptr().add(16 * t) as *const _);
                            x = _mm512_fmadd_ps(
                                _mm512_cvtepi32_ps(v),
                                _mm512_mul_ps(dw[1][j], dx1),
                                x,
                            );
                        }
                        *a = x;
                    }
                }
            }
            b += pair;
        }
        for (c, ch) in chunks.iter().enumerate() {
            for j in 0..G {
                for t in ch.keep..m {
                    _mm512_storeu_ps(o.add((ch.t0 + t) * ldo + 16 * j), acc[c][j][t]);
                }
            }
        }
    }
}

/// The packed kernels with tiles: `groups` groups at `w` against every token of `act` (fewer
/// than [`MIN_TOKENS`]: the VNNI kernels).
///
/// # Safety
/// AVX-512F/BW/VL/VNNI, F16C, and [`usable`] true; slice lengths are checked here.
#[inline(always)]
unsafe fn tiles<const Q4: bool>(
    w: &[u8],
    groups: usize,
    act: Q8View<'_>,
    out: &mut [f32],
    ldo: usize,
) {
    // SAFETY: the caller guarantees the features and the OS permission; `check_packed`
    // bounds every group, token and output offset used below, and the tiles are configured
    // before and released after their use.
    unsafe {
        let n = act.n;
        if n < MIN_TOKENS {
            if Q4 {
                zmm_q4_0x16(w, groups, act, out, ldo)
            } else {
                zmm_q8_0x16(w, groups, act, out, ldo)
            }
            return;
        }
        let nb = act.nb;
        let gb = if Q4 {
            group_bytes(nb)
        } else {
            group_bytes_q8(nb)
        };
        check_packed(w, groups, gb, &act, out, ldo);
        let m = n.min(16);
        let config = TileConfig::new(m);
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
        let mut bm = BLOCK_MAJOR.take();
        if bm.len() * 64 < n * nb * QK {
            bm.resize((n * nb * QK).div_ceil(64), Line([0; 64]));
        }
        let qbm = bm.as_mut_ptr() as *mut i8;
        for t in 0..n {
            for b in 0..nb {
                core::ptr::copy_nonoverlapping(
                    act.qs.as_ptr().add((t * nb + b) * QK),
                    qbm.add((b * n + t) * QK),
                    QK,
                );
            }
        }
        // Chunks of m tokens; a last one ends at n, overlapping the one before, and keeps only
        // its new tokens (every token's outputs are the same whichever chunk computed them).
        let nc = n.div_ceil(m);
        let chunk = |i: usize| {
            let done = i * m;
            let t0 = if done + m <= n { done } else { n - m };
            Chunk {
                t0,
                keep: done - t0,
            }
        };
        let mut sums = Sums([[[[0; 256]; 4]; 2]; 2]);
        let mut gi = 0;
        while gi < groups {
            let two = gi + 1 < groups;
            let gs = Groups::<Q4> {
                g: core::array::from_fn(|j| w.as_ptr().add((gi + j.min(two as usize)) * gb)),
                nb,
            };
            let o = out.as_mut_ptr().add(16 * gi);
            for c0 in (0..nc).step_by(SPAN) {
                let len = SPAN.min(nc - c0);
                let span: [Chunk; SPAN] = core::array::from_fn(|i| chunk(c0 + i.min(len - 1)));
                let span = &span[..len];
                if two {
                    group_span::<Q4, 2>(&gs, &act, qbm, span, m, &mut sums, o, ldo);
                } else {
                    group_span::<Q4, 1>(&gs, &act, qbm, span, m, &mut sums, o, ldo);
                }
            }
            gi += 1 + two as usize;
        }
        BLOCK_MAJOR.set(bm);
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// The tile sums of two blocks, each for two pairs of chunks (four tiles a pair), 64-byte
/// aligned.
#[repr(C, align(64))]
struct Sums([[[[i32; 256]; 4]; 2]; 2]);

/// [`tiles`] for packed Q4_0.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn amx_q4_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { tiles::<true>(w, groups, act, out, ldo) }
}

/// [`tiles`] for packed Q8_0.
///
/// # Safety
/// As [`tiles`].
#[inline(always)]
unsafe fn amx_q8_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { tiles::<false>(w, groups, act, out, ldo) }
}
