//! Kernel sets, one per instruction set, and the run-time choice between them.
//!
//! [`scalar`] is always built and is the reference the others are tested against. A SIMD set
//! can only be obtained from its module's `kernels()`, which returns `None` unless the CPU has
//! the features its `#[target_feature]` functions need: holding a [`Kernels`] proves it.

/// Runs `$body` for every tile of up to `$maxt` (≤ 4) tokens of `$n`, with `$t` the tile's first
/// token and `$nt` its size as a constant, so kernels are instantiated per tile size.
macro_rules! tile_tokens {
    ($n:expr, $maxt:expr, |$t:ident, $nt:ident| $body:expr) => {{
        let mut $t = 0;
        while $t < $n {
            let rem = $n - $t;
            if rem >= 4 && $maxt >= 4 {
                const $nt: usize = 4;
                $body;
                $t += 4;
            } else if rem >= 3 && $maxt >= 3 {
                const $nt: usize = 3;
                $body;
                $t += 3;
            } else if rem >= 2 {
                const $nt: usize = 2;
                $body;
                $t += 2;
            } else {
                const $nt: usize = 1;
                $body;
                $t += 1;
            }
        }
    }};
}

/// Runs `$body` over `groups` packed groups of 16 rows with `$gi: [usize; $s]` the groups to
/// multiply together, in lockstep through their blocks. With `$streams` (few tokens, so the
/// weights stream from memory once) the groups are split into three runs walked side by side:
/// one thread reading three distant streams keeps more cache-line fills in flight than the
/// hardware prefetcher gives one stream (`benches/roofline.rs` compares both in the same rounds:
/// a few points to 15 points more of the read bandwidth for Q4_0, by this host's state); the
/// one or two groups left over go as one stream each. Otherwise (many
/// tokens: the weights are reused from cache) one group at a time.
#[allow(unused_macros)] // not every target has SIMD kernels
macro_rules! stream_groups {
    ($groups:expr, $streams:expr, |$gi:ident, $s:ident| $body:expr) => {{
        let groups: usize = $groups;
        let per = if $streams { groups / 3 } else { 0 };
        for i in 0..per {
            const $s: usize = 3;
            let $gi: [usize; 3] = [i, per + i, 2 * per + i];
            $body;
        }
        for g in 3 * per..groups {
            const $s: usize = 1;
            let $gi: [usize; 1] = [g];
            $body;
        }
    }};
}

/// The body of every set's `attend`: scores, softmax, weighted sum of values, with a set's
/// `dot_f32` and `axpy_f32` inlined (one indirect call per head instead of two per position:
/// with 16-value heads the calls cost more than the arithmetic). A macro, not a generic
/// function, so that no iterator adapter or closure is compiled outside the caller's
/// `target_feature` context (where the intrinsics would become calls). f16 and Q8_0 rows are
/// widened into scratch, one row at a time, by `KvRows::widen` or (`widen: path;` first) a set's
/// own function of the same signature, which must widen exactly as `KvRows::widen` does (and
/// panic where it does), so that a set computes over f16 and Q8_0 rows what it computes over the
/// f32 rows they widen to, bit for bit.
#[allow(unused_macros)] // not every target has SIMD kernels
macro_rules! attend_body {
    ($dot:path, $axpy:path, $q:expr, $kv:expr, $offs:expr, $col:expr, $scale:expr, $scores:expr, $out:expr) => {
        attend_body!(widen: $crate::kv::KvRows::widen; $dot, $axpy, $q, $kv, $offs, $col, $scale, $scores, $out)
    };
    (widen: $widen:path; $dot:path, $axpy:path, $q:expr, $kv:expr, $offs:expr, $col:expr, $scale:expr, $scores:expr, $out:expr) => {{
        let (q, kv, offs, col, scale): (&[f32], $crate::kv::KvRows<'_>, &[usize], usize, f32) =
            ($q, $kv, $offs, $col, $scale);
        let (scores, out): (&mut Vec<f32>, &mut [f32]) = ($scores, $out);
        let d = q.len();
        let n = offs.len();
        // Scores, then (f16 and Q8_0 caches) one row widened to f32.
        let wide = !matches!(kv, $crate::kv::KvRows::F32 { .. });
        scores.clear();
        scores.resize(n + if wide { d } else { 0 }, 0.0);
        let (sc, row) = scores.split_at_mut(n);
        let mut m = f32::NEG_INFINITY;
        for (i, &o) in offs.iter().enumerate() {
            let s = match kv {
                $crate::kv::KvRows::F32 { k, .. } => $dot(q, &k[o + col..o + col + d]),
                _ => {
                    $widen(&kv, false, o + col, row);
                    $dot(q, row)
                }
            } * scale;
            m = m.max(s);
            sc[i] = s;
        }
        let mut sum = 0.0f32;
        for s in sc.iter_mut() {
            *s = (*s - m).exp();
            sum += *s;
        }
        for y in out.iter_mut() {
            *y = 0.0;
        }
        for (i, &o) in offs.iter().enumerate() {
            match kv {
                $crate::kv::KvRows::F32 { v, .. } => {
                    $axpy(sc[i] / sum, &v[o + col..o + col + d], out)
                }
                _ => {
                    $widen(&kv, true, o + col, row);
                    $axpy(sc[i] / sum, row, out)
                }
            }
        }
    }};
}

/// Defines one kernel set in the module it is invoked in (`x86_64::avx2`, `aarch64::neon` …):
/// its `KERNELS`, its `kernels()` (the set if `$detect`, the run-time check of its features),
/// and the safe entry points. Each entry point wraps an `unsafe` function of the parent module
/// (`super::…`, the architecture's algorithms) in an inner function compiled with
/// `$features`, and is only reachable through `KERNELS`, which `kernels()` hands out only after
/// detection. `$int8` instantiates the int8 kernels with the set's dot-product instruction
/// (VNNI's `vpdpbusd`, dotprod's `sdot`) or without. The entries that differ between sets:
///
/// - `silu_mul: wrap(path)` wraps the parent's kernel; `use(path)` takes a safe one as is.
/// - `attend_multi: wrap(path)` likewise; `each` calls the set's `attend` once per query
///   (`attend_multi_each`).
/// - `mm_q4_0x16` and `mm_q8_0x16`: `wrap(path)` or `use(path)`.
#[allow(unused_macros)] // not every target has SIMD kernels
macro_rules! kernel_set {
    (
        name: $name:expr,
        features: $features:literal,
        int8: $int8:expr,
        silu_mul: $silu:ident $(($silu_imp:path))?,
        attend_multi: $multi:ident $(($multi_imp:path))?,
        mm_q4_0x16: $packed:ident($packed_imp:path),
        mm_q8_0x16: $packed8:ident($packed8_imp:path),
        packed_pays: $packed_pays:expr,
        token_tile: $token_tile:expr,
        detect: $detect:expr $(,)?
    ) => {
        use $crate::arch::{F32View, Kernels, Q8View};
        use $crate::kv::KvRows;

        static KERNELS: Kernels = Kernels {
            name: $name,
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
            packed_pays: $packed_pays,
            token_tile: $token_tile,
        };

        /// This set, if the CPU has its features.
        pub(crate) fn kernels() -> Option<&'static Kernels> {
            if $detect {
                Some(&KERNELS)
            } else {
                None
            }
        }

        kernel_set!(@wrap $features, quantize_q8(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [i32]) -> () = super::quantize_q8);
        kernel_set!(@wrap $features, dot_f32(a: &[f32], b: &[f32]) -> f32 = super::dot_f32);
        kernel_set!(@$silu $features, silu_mul(g: &mut [f32], u: &[f32]) -> () $(= $silu_imp)?);
        kernel_set!(@wrap $features, axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) -> () = super::axpy_f32);
        kernel_set!(@$multi $features, attend_multi(q: &[f32], d: usize, kv: KvRows<'_>, offs: &[usize], lens: &[usize], col: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32], ldo: usize) -> () $(= $multi_imp)?);
        kernel_set!(@wrap $features, attend(q: &[f32], kv: KvRows<'_>, offs: &[usize], col: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) -> () = super::attend);
        kernel_set!(@wrap $features, mm_q8_0(w: &[u8], rows: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_q::<{ $int8 }, false>);
        kernel_set!(@wrap $features, mm_q4_0(w: &[u8], rows: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_q::<{ $int8 }, true>);
        kernel_set!(@wrap $features, mm_f32(w: &[u8], rows: usize, act: F32View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_float::<0>);
        kernel_set!(@wrap $features, mm_f16(w: &[u8], rows: usize, act: F32View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_float::<1>);
        kernel_set!(@wrap $features, mm_bf16(w: &[u8], rows: usize, act: F32View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_float::<2>);
        kernel_set!(@$packed $features, mm_q4_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = $packed_imp);
        kernel_set!(@$packed8 $features, mm_q8_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = $packed8_imp);
    };
    // A safe kernel used as it is (compiled without the set's features).
    (@use $features:literal, $f:ident($($a:ident: $t:ty),*) -> $r:ty = $imp:path) => {
        use $imp as $f;
    };
    // Multi-query attention as one `attend` call per query.
    (@each $features:literal, $f:ident($($a:ident: $t:ty),*) -> $r:ty) => {
        #[allow(clippy::too_many_arguments)]
        fn $f($($a: $t),*) -> $r {
            $crate::arch::attend_multi_each(attend, $($a),*)
        }
    };
    (@wrap $features:literal, $f:ident($($a:ident: $t:ty),*) -> $r:ty = $imp:path) => {
        #[allow(clippy::too_many_arguments)]
        fn $f($($a: $t),*) -> $r {
            /// # Safety
            /// The CPU must have the features named in `target_feature`.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn imp($($a: $t),*) -> $r {
                // SAFETY: the features are enabled on this function; the algorithm checks
                // slice lengths before its unchecked loops.
                unsafe { $imp($($a),*) }
            }
            // SAFETY: `$f` is only reachable through `KERNELS`, which `kernels()` hands out
            // only after detecting the features.
            unsafe { imp($($a),*) }
        }
    };
}

pub(crate) mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;

#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use crate::kv::KvRows;

static STREAMS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether packed kernels walk three distant runs of groups side by side when decoding (the
/// default; see `stream_groups!`). Off: one group at a time. For benchmarks that compare the
/// two in one run.
#[cfg(feature = "bench-hooks")]
#[doc(hidden)]
pub fn set_streams(on: bool) {
    STREAMS.store(on, std::sync::atomic::Ordering::Relaxed);
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the x86 Q4_0 kernels stream
pub(crate) fn streams() -> bool {
    STREAMS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Q8_0 activations, struct-of-arrays: `n` tokens of `nb` blocks.
#[derive(Clone, Copy)]
pub(crate) struct Q8View<'a> {
    /// `n · nb · 32` quantized values, token after token.
    pub qs: &'a [i8],
    /// `n · nb` block scales (the f16-rounded scale, as f32).
    pub d: &'a [f32],
    /// `n · nb` sums of each block's values.
    pub s: &'a [i32],
    /// Tokens.
    pub n: usize,
    /// Blocks per token.
    pub nb: usize,
}

impl<'a> Q8View<'a> {
    /// Tokens `t.start..t.end` only.
    pub fn tokens(self, t: std::ops::Range<usize>) -> Self {
        let nb = self.nb;
        Q8View {
            qs: &self.qs[t.start * nb * crate::blocks::QK..t.end * nb * crate::blocks::QK],
            d: &self.d[t.start * nb..t.end * nb],
            s: &self.s[t.start * nb..t.end * nb],
            n: t.len(),
            nb,
        }
    }
}

/// Checks the activation lengths the unchecked kernel loops rely on.
fn check_act(act: &Q8View<'_>) {
    assert!(
        act.qs.len() >= act.n * act.nb * crate::blocks::QK
            && act.d.len() >= act.n * act.nb
            && act.s.len() >= act.n * act.nb
    );
}

/// Checks what a plain-row kernel indexes unchecked: `rows` rows of `nb` blocks of
/// `block_bytes` in `w`, the activations, and room in `out` for `rows` values per token at
/// stride `ldo`.
#[allow(dead_code)] // not every target has SIMD kernels
pub(crate) fn check_q8(
    w: &[u8],
    rows: usize,
    block_bytes: usize,
    act: &Q8View<'_>,
    out: &[f32],
    ldo: usize,
) {
    assert!(w.len() >= rows * act.nb * block_bytes);
    check_act(act);
    assert!(act.n == 0 || rows == 0 || out.len() >= (act.n - 1) * ldo + rows);
}

/// Checks what a packed kernel indexes unchecked: `groups` interleaved groups of `gb` bytes in
/// `w`, the activations, and room in `out` for 16 rows per group per token at stride `ldo`.
#[allow(dead_code)] // not every target has SIMD kernels
pub(crate) fn check_packed(
    w: &[u8],
    groups: usize,
    gb: usize,
    act: &Q8View<'_>,
    out: &[f32],
    ldo: usize,
) {
    assert!(w.len() >= groups * gb);
    check_act(act);
    assert!(act.n == 0 || groups == 0 || out.len() >= (act.n - 1) * ldo + 16 * groups);
}

/// f32 activations: `n` tokens of `cols` values.
#[derive(Clone, Copy)]
pub(crate) struct F32View<'a> {
    /// `n · cols` values.
    pub x: &'a [f32],
    /// Tokens.
    pub n: usize,
    /// Values per token.
    pub cols: usize,
}

impl<'a> F32View<'a> {
    /// Tokens `t.start..t.end` only.
    pub fn tokens(self, t: std::ops::Range<usize>) -> Self {
        F32View {
            x: &self.x[t.start * self.cols..t.end * self.cols],
            n: t.len(),
            cols: self.cols,
        }
    }
}

/// Quantizes whole blocks of `x` to Q8_0 (ggml's reference rounding), writing `x.len() / 32`
/// blocks into `qs`, `d` and `s`.
pub(crate) type QuantizeQ8Fn = fn(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [i32]);
/// `out[t · ldo + r] = dot(row r, token t)` for `rows` consecutive rows of a block-quantized
/// matrix starting at `w` (each row `act.nb` blocks) and every token of `act`.
pub(crate) type MatQ8Fn = fn(w: &[u8], rows: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize);
/// The same for F32/F16/BF16 rows of `act.cols` values.
pub(crate) type MatF32Fn = fn(w: &[u8], rows: usize, act: F32View<'_>, out: &mut [f32], ldo: usize);
/// The same for [`crate::PackedMatrix`] groups of 16 interleaved Q4_0 or Q8_0 rows: `groups`
/// groups starting at `w`, writing `16 · groups` rows.
pub(crate) type PackedFn =
    fn(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize);

/// One query head against cached rows (see [`crate::attend_head`]; lengths checked there).
pub(crate) type AttendFn = fn(
    q: &[f32],
    kv: KvRows<'_>,
    offs: &[usize],
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
);

/// Several queries of one head over nested position lists (see [`crate::attend_queries`]).
pub(crate) type AttendMultiFn = fn(
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
);

/// Checks the shapes of a multi-query attention call: `lens.len()` queries of `d` values in
/// `q`, each seeing `1..=offs.len()` positions, outputs at stride `ldo ≥ d` in `out`.
pub(crate) fn check_multi(
    q: &[f32],
    d: usize,
    offs: &[usize],
    lens: &[usize],
    out: &[f32],
    ldo: usize,
) {
    let nq = lens.len();
    assert!(
        d > 0 && ldo >= d,
        "attend: head of {d} values at stride {ldo}"
    );
    assert!(
        q.len() >= nq * d,
        "attend: {} query values for {nq} queries of {d}",
        q.len()
    );
    assert!(
        nq == 0 || out.len() >= (nq - 1) * ldo + d,
        "attend: output too short"
    );
    assert!(
        lens.iter().all(|&l| l >= 1 && l <= offs.len()),
        "attend: a query sees no position or more than {}",
        offs.len()
    );
}

/// A multi-query attention made of one single-query call per query (the sets without a
/// blocked version).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_multi_each(
    attend: AttendFn,
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
    check_multi(q, d, offs, lens, out, ldo);
    for (t, &len) in lens.iter().enumerate() {
        let (qt, ot) = (&q[t * d..(t + 1) * d], &mut out[t * ldo..t * ldo + d]);
        attend(qt, kv, &offs[..len], col, scale, scores, ot);
    }
}

/// One instruction set's kernels.
pub(crate) struct Kernels {
    /// Name reported by [`crate::isa`].
    pub name: &'static str,
    pub quantize_q8: QuantizeQ8Fn,
    pub dot_f32: fn(&[f32], &[f32]) -> f32,
    pub axpy_f32: fn(f32, &[f32], &mut [f32]),
    /// `g[i] = silu(g[i]) · u[i]` over the common length (the gated MLP).
    pub silu_mul: fn(&mut [f32], &[f32]),
    pub attend: AttendFn,
    pub attend_multi: AttendMultiFn,
    pub mm_q8_0: MatQ8Fn,
    pub mm_q4_0: MatQ8Fn,
    pub mm_f32: MatF32Fn,
    pub mm_f16: MatF32Fn,
    pub mm_bf16: MatF32Fn,
    pub mm_q4_0x16: PackedFn,
    pub mm_q8_0x16: PackedFn,
    /// Whether the packed layouts are faster than plain rows with these kernels.
    pub packed_pays: bool,
    /// The fewest tokens [`crate::matmul`] hands these kernels at once when a product has
    /// that many (more when they fit its ~128 KiB tile): 4 for the register-tiled kernels,
    /// more for those that walk several tiles of tokens over a group of rows while it is in
    /// cache (AVX-512 VNNI's tiles of 8, AMX's of 16).
    pub token_tile: usize,
}

static CHOSEN: OnceLock<&'static Kernels> = OnceLock::new();

/// The kernels chosen for this CPU (once; `RAVEN_FORCE_SCALAR=1` forces the scalar ones,
/// `RAVEN_ISA=<name>` picks another available set, for benchmarks).
#[inline]
pub(crate) fn kernels() -> &'static Kernels {
    CHOSEN.get_or_init(|| {
        let force = std::env::var("RAVEN_FORCE_SCALAR").is_ok_and(|v| !v.is_empty() && v != "0");
        let named = std::env::var("RAVEN_ISA").ok();
        let sets = available();
        if force {
            &scalar::KERNELS
        } else if let Some(k) = sets.iter().find(|k| Some(k.name) == named.as_deref()) {
            k
        } else {
            sets[0]
        }
    })
}

/// Every kernel set this CPU can run, fastest first; the scalar set is always last.
pub(crate) fn available() -> Vec<&'static Kernels> {
    let mut v: Vec<&'static Kernels> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        v.extend(x86_64::amx::kernels());
        v.extend(x86_64::avx512::kernels());
        v.extend(x86_64::avx2::kernels());
    }
    #[cfg(target_arch = "aarch64")]
    {
        v.extend(aarch64::i8mm::kernels());
        v.extend(aarch64::dotprod::kernels());
        v.extend(aarch64::neon::kernels());
    }
    v.push(&scalar::KERNELS);
    v
}
