//! Every kernel set against the scalar one, on this CPU.

use super::{available, scalar, Kernels};
use crate::blocks::{Q8_0_BYTES, QK};
use crate::kv::{store_f16, store_q8_0, KvRows, KvType};
use crate::matmul::{matmul_with, Weights};
use crate::packed::repack_always;
use crate::{dequantize_row, quantize_row, Activations, GgmlType, Matrix};

/// xorshift64*: a seeded generator, so failures reproduce.
pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    pub(crate) fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random cases of a test: `native` natively, 3 under Miri (which interprets ~1000× slower; 3
/// still reach every kernel branch: tails, partial groups, 1–3 tokens).
const fn cases(native: usize) -> usize {
    if cfg!(miri) {
        3
    } else {
        native
    }
}

/// Values with some structure: mixed magnitudes, exact halves, zeros, and whole zero blocks.
fn values(rng: &mut Rng, n: usize) -> Vec<f32> {
    let scale = [0.01f32, 1.0, 30.0][rng.below(3)];
    (0..n)
        .map(|i| match rng.below(16) {
            0 => 0.0,
            1 => (rng.below(255) as f32 - 127.0) * 0.5,
            _ if (i / 32) % 7 == 5 => 0.0,
            _ => rng.f32() * scale,
        })
        .collect()
}

fn names(ks: &[&Kernels]) -> Vec<&'static str> {
    ks.iter().map(|k| k.name).collect()
}

#[test]
fn sets_on_this_cpu() {
    let ks = available();
    eprintln!(
        "kernel sets on this CPU: {:?}; chosen: {}",
        names(&ks),
        crate::isa()
    );
    assert_eq!(ks.last().unwrap().name, "scalar");
    let forced = std::env::var("RAVEN_FORCE_SCALAR").is_ok_and(|v| !v.is_empty() && v != "0");
    if forced {
        assert_eq!(crate::isa(), "scalar");
    } else if std::env::var_os("RAVEN_ISA").is_none() {
        assert_eq!(crate::isa(), ks[0].name, "the fastest set is chosen");
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("i8mm") {
        assert_eq!(ks[0].name, "neon-i8mm");
    } else if std::arch::is_aarch64_feature_detected!("dotprod") {
        assert_eq!(ks[0].name, "neon-dotprod");
    }
}

#[test]
fn activation_quantizers_are_bit_identical() {
    let mut rng = Rng::new(1);
    for case in 0..200usize {
        let nb = 1 + rng.below(12);
        let mut x = values(&mut rng, nb * 32);
        if case.is_multiple_of(10) {
            // Values that land exactly on halves after scaling.
            for (i, v) in x.iter_mut().enumerate() {
                *v = (i % 64) as f32 * 0.5 - 16.0 + if i.is_multiple_of(32) { 127.0 } else { 0.0 };
            }
        }
        let mut want = (vec![0i8; nb * QK], vec![0f32; nb], vec![0i32; nb]);
        scalar::quantize_q8(&x, &mut want.0, &mut want.1, &mut want.2);
        // The scalar activation quantizer is ggml's reference quantizer.
        let mut bytes = vec![0u8; nb * Q8_0_BYTES];
        quantize_row(GgmlType::Q8_0, &x, &mut bytes).unwrap();
        for b in 0..nb {
            let q: Vec<i8> = bytes[b * Q8_0_BYTES + 2..(b + 1) * Q8_0_BYTES]
                .iter()
                .map(|&v| v as i8)
                .collect();
            assert_eq!(q, want.0[b * QK..(b + 1) * QK]);
        }
        for k in available() {
            let mut got = (vec![0i8; nb * QK], vec![0f32; nb], vec![0i32; nb]);
            (k.quantize_q8)(&x, &mut got.0, &mut got.1, &mut got.2);
            assert_eq!(got.0, want.0, "{} case {case}", k.name);
            assert_eq!(
                got.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(got.2, want.2, "{} case {case}", k.name);
        }
    }
}

#[test]
fn activation_quantizers_reproduce_ggml_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/quant/ggml-quant-vectors.safetensors"
    );
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let x: Vec<f32> = st
        .tensor("input")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let want = st.tensor("q8_0").unwrap();
    let nb = x.len() / QK;
    for k in available() {
        let (mut qs, mut d, mut s) = (vec![0i8; x.len()], vec![0f32; nb], vec![0i32; nb]);
        (k.quantize_q8)(&x, &mut qs, &mut d, &mut s);
        for (b, blk) in want.data().chunks_exact(Q8_0_BYTES).enumerate() {
            let dw = u16::from_le_bytes([blk[0], blk[1]]);
            assert_eq!(
                d[b].to_bits(),
                crate::blocks::f16_to_f32(dw).to_bits(),
                "{} block {b}",
                k.name
            );
            let q: Vec<i8> = blk[2..].iter().map(|&v| v as i8).collect();
            assert_eq!(q, qs[b * QK..(b + 1) * QK], "{} block {b}", k.name);
        }
    }
}

/// Every set's `attend` (one head over scattered cached rows) equals the scalar one.
#[test]
fn attend_matches_scalar() {
    let mut rng = Rng::new(6);
    for (d, h, positions) in [(16, 64, 1), (16, 64, 37), (96, 5280, 20), (7, 21, 9)] {
        let rows = positions + 5;
        let keys = values(&mut rng, rows * h);
        let vals = values(&mut rng, rows * h);
        let q = values(&mut rng, d);
        // Rows from the last backwards, at the last head's column.
        let offs: Vec<usize> = (0..positions)
            .map(|i| ((rows - 1 - i) % rows) * h)
            .collect();
        let col = (h / d - 1) * d;
        let (mut s0, mut want) = (Vec::new(), vec![0f32; d]);
        scalar::attend(
            &q,
            KvRows::F32 { k: &keys, v: &vals },
            &offs,
            col,
            0.3,
            &mut s0,
            &mut want,
        );
        for k in available() {
            let (mut s, mut got) = (Vec::new(), vec![f32::NAN; d]);
            (k.attend)(
                &q,
                KvRows::F32 { k: &keys, v: &vals },
                &offs,
                col,
                0.3,
                &mut s,
                &mut got,
            );
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{} d={d}: {g} vs {w}",
                    k.name
                );
            }
        }
    }
}

/// How many of `l` positions each of `nq` queries sees: nested prefixes, but the last half of
/// the queries see every position (so blocks past the first have groups of four too).
fn nested_lens(l: usize, nq: usize) -> Vec<usize> {
    (0..nq)
        .map(|t| {
            if t >= nq / 2 {
                l
            } else {
                (l - (nq - 1 - t) * l / (nq + 1)).max(1)
            }
        })
        .collect()
}

/// Every set's multi-query attention equals the scalar single-query one per query, across
/// position blocks (64) and with queries seeing different prefixes.
#[test]
fn attend_multi_matches_scalar_per_query() {
    let mut rng = Rng::new(7);
    for (d, h, l, nq) in [
        (16, 64, 150, 8),
        (96, 192, 70, 3),
        (96, 96, 130, 9),
        (16, 32, 1, 1),
        (7, 14, 20, 4),
        (8, 8, 65, 5),
    ] {
        let keys = values(&mut rng, (l + 3) * h);
        let vals = values(&mut rng, (l + 3) * h);
        let offs: Vec<usize> = (0..l).map(|i| (i + 2) * h).collect();
        let lens = nested_lens(l, nq);
        let ldo = d + 5;
        let q = values(&mut rng, nq * d);
        let col = h - d;
        let mut want = vec![0f32; nq * ldo];
        let mut s0 = Vec::new();
        for (t, &len) in lens.iter().enumerate() {
            let o = &mut want[t * ldo..t * ldo + d];
            scalar::attend(
                &q[t * d..(t + 1) * d],
                KvRows::F32 { k: &keys, v: &vals },
                &offs[..len],
                col,
                0.25,
                &mut s0,
                o,
            );
        }
        for k in available() {
            let mut got = vec![0f32; nq * ldo];
            (k.attend_multi)(
                &q,
                d,
                KvRows::F32 { k: &keys, v: &vals },
                &offs,
                &lens,
                col,
                0.25,
                &mut s0,
                &mut got,
                ldo,
            );
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{} d={d} l={l} nq={nq} out[{i}]: {g} vs {w}",
                    k.name
                );
            }
            // And bit for bit the same set's single-query call (a batch's verification must
            // pick exactly the tokens plain decoding picks).
            for (t, &len) in lens.iter().enumerate() {
                let mut one = vec![0f32; d];
                let qt = &q[t * d..(t + 1) * d];
                (k.attend)(
                    qt,
                    KvRows::F32 { k: &keys, v: &vals },
                    &offs[..len],
                    col,
                    0.25,
                    &mut s0,
                    &mut one,
                );
                assert_eq!(
                    one,
                    got[t * ldo..t * ldo + d],
                    "{} d={d} l={l} query {t}",
                    k.name
                );
            }
        }
    }
}

/// A cache's rows stored as f16 or Q8_0 (`store_f16`, `store_q8_0`).
enum Narrow {
    F16(Vec<u16>, Vec<u16>),
    Q8(Vec<i8>, Vec<u16>, Vec<i8>, Vec<u16>),
}

impl Narrow {
    /// `keys` and `vals` stored as `ty` (F16 or Q8_0).
    fn new(ty: KvType, keys: &[f32], vals: &[f32]) -> Narrow {
        match ty {
            KvType::F16 => {
                let (mut k, mut v) = (vec![0; keys.len()], vec![0; vals.len()]);
                store_f16(keys, &mut k);
                store_f16(vals, &mut v);
                Narrow::F16(k, v)
            }
            KvType::Q8_0 => {
                let (mut k, mut kd) = (vec![0; keys.len()], vec![0; keys.len() / QK]);
                let (mut v, mut vd) = (vec![0; vals.len()], vec![0; vals.len() / QK]);
                store_q8_0(keys, &mut k, &mut kd);
                store_q8_0(vals, &mut v, &mut vd);
                Narrow::Q8(k, kd, v, vd)
            }
            KvType::F32 => unreachable!("f32 rows are not narrowed"),
        }
    }

    fn rows(&self) -> KvRows<'_> {
        match self {
            Narrow::F16(k, v) => KvRows::F16 { k, v },
            Narrow::Q8(k, kd, v, vd) => KvRows::Q8_0 { k, kd, v, vd },
        }
    }

    /// The f32 keys and values these rows widen to (exactly).
    fn widened(&self) -> (Vec<f32>, Vec<f32>) {
        let kv = self.rows();
        let mut k = vec![0f32; kv.len()];
        let mut v = vec![0f32; kv.len()];
        kv.widen(false, 0, &mut k);
        kv.widen(true, 0, &mut v);
        (k, v)
    }
}

/// The narrow types rows of `h` values can be stored as.
fn narrow_types(h: usize) -> impl Iterator<Item = KvType> {
    [KvType::F16, KvType::Q8_0]
        .into_iter()
        .filter(move |t| t.fits(h))
}

/// An attention scale that keeps every `scale · q·k` within ±0.1 per product, so scores stay
/// in a softmax's usual range and differences of summation order stay far below the 1e-5
/// compared (the f32 test above covers badly conditioned scores).
fn tame_scale(q: &[f32], keys: &[f32]) -> f32 {
    let max = |x: &[f32]| x.iter().fold(0f32, |m, v| m.max(v.abs()));
    0.1 / (max(q) * max(keys)).max(1e-6)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Over f16 and Q8_0 rows, every set's `attend` equals, bit for bit, its result over the f32
/// rows those values widen to, and the scalar one over the same rows within 1e-5: head sizes of
/// the SIMD path (multiples of 8, heads at columns that are not multiples of 32 too) and of the
/// fallback (f16 only: Q8_0 needs rows of whole blocks), and Q8_0 rows that start off an
/// 8-value boundary (the fallback: close to scalar only).
#[test]
fn attend_f16_q8_0_equal_widened_f32() {
    let mut rng = Rng::new(11);
    for (d, h) in [
        (64, 128),
        (96, 480),
        (96, 5280),
        (128, 256),
        (40, 160),
        (24, 96),
        (8, 32),
        (7, 21),
        (20, 60),
    ] {
        for positions in [1, 37, 130] {
            if h == 5280 && positions != 37 {
                continue;
            }
            let rows = positions + 3;
            let keys = values(&mut rng, rows * h);
            let vals = values(&mut rng, rows * h);
            let q = values(&mut rng, d);
            // Rows scattered: every third from the last backwards.
            let offs: Vec<usize> = (0..positions)
                .map(|i| ((rows - 1) * (i + 1) * 3 % rows) * h)
                .collect();
            for ty in narrow_types(h) {
                let narrow = Narrow::new(ty, &keys, &vals);
                let kv = narrow.rows();
                let (kw, vw) = narrow.widened();
                let scale = tame_scale(&q, &kw);
                let wide = KvRows::F32 { k: &kw, v: &vw };
                // The last head, and one 4 values in (off the 8-value boundaries).
                for col in [(h / d - 1) * d, 4] {
                    if col + d > h {
                        continue;
                    }
                    let (mut s0, mut want) = (Vec::new(), vec![0f32; d]);
                    scalar::attend(&q, kv, &offs, col, scale, &mut s0, &mut want);
                    let aligned = ty != KvType::Q8_0 || col % 8 == 0;
                    for k in available() {
                        let (mut s, mut got) = (Vec::new(), vec![f32::NAN; d]);
                        (k.attend)(&q, kv, &offs, col, scale, &mut s, &mut got);
                        let mut from_wide = vec![f32::NAN; d];
                        (k.attend)(&q, wide, &offs, col, scale, &mut s, &mut from_wide);
                        let what = format!("{} {ty} d={d} h={h} col={col} n={positions}", k.name);
                        if aligned || k.name == "scalar" {
                            assert_eq!(bits(&got), bits(&from_wide), "{what}: widened f32");
                        }
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                                "{what}: {g} vs scalar {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Over f16 and Q8_0 rows, every set's multi-query attention equals, bit for bit, its
/// single-query call per query and its result over the widened f32 rows, and the scalar one
/// within 1e-5 (1, 37 and 130 positions: across the 64-position blocks).
#[test]
fn attend_multi_f16_q8_0_equal_single_query_and_widened_f32() {
    let mut rng = Rng::new(12);
    for (d, h) in [(64, 128), (96, 192), (128, 128), (40, 160), (7, 14)] {
        for (l, nq) in [(1, 1), (1, 3), (37, 5), (130, 9)] {
            let keys = values(&mut rng, (l + 3) * h);
            let vals = values(&mut rng, (l + 3) * h);
            let offs: Vec<usize> = (0..l).map(|i| (l + 2 - i) * h).collect();
            let lens = nested_lens(l, nq);
            let ldo = d + 3;
            let q = values(&mut rng, nq * d);
            let col = h - d;
            for ty in narrow_types(h) {
                let narrow = Narrow::new(ty, &keys, &vals);
                let kv = narrow.rows();
                let (kw, vw) = narrow.widened();
                let scale = tame_scale(&q, &kw);
                let wide = KvRows::F32 { k: &kw, v: &vw };
                let mut s0 = Vec::new();
                let mut want = vec![0f32; nq * ldo];
                for (t, &len) in lens.iter().enumerate() {
                    let o = &mut want[t * ldo..t * ldo + d];
                    let qt = &q[t * d..(t + 1) * d];
                    scalar::attend(qt, kv, &offs[..len], col, scale, &mut s0, o);
                }
                for k in available() {
                    let what = format!("{} {ty} d={d} l={l} nq={nq}", k.name);
                    let mut got = vec![0f32; nq * ldo];
                    let mut from_wide = vec![0f32; nq * ldo];
                    let args = (&offs, &lens, col, scale);
                    (k.attend_multi)(
                        &q, d, kv, args.0, args.1, args.2, args.3, &mut s0, &mut got, ldo,
                    );
                    (k.attend_multi)(
                        &q,
                        d,
                        wide,
                        args.0,
                        args.1,
                        args.2,
                        args.3,
                        &mut s0,
                        &mut from_wide,
                        ldo,
                    );
                    assert_eq!(bits(&got), bits(&from_wide), "{what}: widened f32");
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{what} out[{i}]: {g} vs scalar {w}"
                        );
                    }
                    for (t, &len) in lens.iter().enumerate() {
                        let mut one = vec![0f32; d];
                        let qt = &q[t * d..(t + 1) * d];
                        (k.attend)(qt, kv, &offs[..len], col, scale, &mut s0, &mut one);
                        assert_eq!(
                            bits(&one),
                            bits(&got[t * ldo..t * ldo + d]),
                            "{what} query {t}: single-query call"
                        );
                    }
                }
            }
        }
    }
}

/// A row past the cache (or, for Q8_0, past its scales) panics in every set, on the SIMD path
/// and the fallback, single- and multi-query, whatever the type.
#[test]
fn attend_rows_outside_the_cache_panic() {
    let mut rng = Rng::new(13);
    let (h, rows) = (64, 4);
    let keys = values(&mut rng, rows * h);
    let vals = values(&mut rng, rows * h);
    let q = values(&mut rng, 2 * h);
    let f16 = Narrow::new(KvType::F16, &keys, &vals);
    let q8 = Narrow::new(KvType::Q8_0, &keys, &vals);
    // Q8_0 whose scales stop one block short of the quants.
    let Narrow::Q8(qk, qkd, qv, qvd) = &q8 else {
        unreachable!()
    };
    let short = KvRows::Q8_0 {
        k: qk,
        kd: &qkd[..qkd.len() - 1],
        v: qv,
        vd: qvd,
    };
    let caches = [
        ("f32", KvRows::F32 { k: &keys, v: &vals }, rows * h),
        ("f16", f16.rows(), rows * h),
        ("q8_0", q8.rows(), rows * h),
        ("q8_0 short scales", short, rows * h - QK),
    ];
    for (name, kv, end) in caches {
        for k in available() {
            // d = 16: the SIMD path; 7: the fallback. The last row's last head, one past the end.
            for (d, col) in [(16, h - 16), (7, h - 7)] {
                let offs = [0, end - h, end - h + 16];
                let what = format!("{} {name} d={d}", k.name);
                let one = std::panic::catch_unwind(|| {
                    let (mut s, mut out) = (Vec::new(), vec![0f32; d]);
                    (k.attend)(&q[..d], kv, &offs, col, 0.5, &mut s, &mut out);
                });
                assert!(one.is_err(), "{what}: attend read past the cache");
                let multi = std::panic::catch_unwind(|| {
                    let (mut s, mut out) = (Vec::new(), vec![0f32; 2 * d]);
                    (k.attend_multi)(
                        &q[..2 * d],
                        d,
                        kv,
                        &offs,
                        &[3, 2],
                        col,
                        0.5,
                        &mut s,
                        &mut out,
                        d,
                    );
                });
                assert!(multi.is_err(), "{what}: attend_multi read past the cache");
                // In range: no panic.
                let (mut s, mut out) = (Vec::new(), vec![0f32; d]);
                (k.attend)(&q[..d], kv, &offs[..2], col, 0.5, &mut s, &mut out);
            }
        }
    }
}

/// The gated MLP's `silu(g) · u` of every set agrees with the scalar one to a few ulp, also
/// far out in both tails.
#[test]
fn silu_mul_matches_scalar() {
    let mut rng = Rng::new(9);
    for n in (0..40).chain([1000]) {
        let mut g: Vec<f32> = values(&mut rng, n).iter().map(|x| 20.0 * x).collect();
        if n > 3 {
            g[0] = -100.0;
            g[1] = 100.0;
            g[2] = 0.0;
        }
        let u = values(&mut rng, n);
        let mut want = g.clone();
        scalar::silu_mul(&mut want, &u);
        for k in available() {
            let mut got = g.clone();
            (k.silu_mul)(&mut got, &u);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs() + 1e-30,
                    "{} n={n} [{i}] g={}: {a} vs {b}",
                    k.name,
                    g[i]
                );
            }
        }
    }
}

#[test]
fn dot_and_axpy_match_scalar() {
    let mut rng = Rng::new(2);
    for n in (0..70).chain([255, 256, 1000, 5280]) {
        let a = values(&mut rng, n);
        let b = values(&mut rng, n);
        let want = scalar::dot_f32(&a, &b);
        let mag: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum();
        let mut y0 = values(&mut rng, n);
        let mut y1 = y0.clone();
        scalar::axpy_f32(0.37, &a, &mut y0);
        for k in available() {
            let got = (k.dot_f32)(&a, &b);
            assert!(
                (got - want).abs() <= 1e-5 * mag + 1e-30,
                "{} n={n}: {got} vs {want}",
                k.name
            );
            let mut y = y1.clone();
            (k.axpy_f32)(0.37, &a, &mut y);
            for (u, v) in y.iter().zip(&y0) {
                assert!((u - v).abs() <= 1e-6 * u.abs().max(1.0), "{} n={n}", k.name);
            }
        }
        y1.clear();
    }
}

/// Random bytes for types without a quantizer, with sane scales.
fn random_k_blocks(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let nb = rows * cols / 256;
    let mut v: Vec<u8> = (0..nb * ty.type_size()).map(|_| rng.next() as u8).collect();
    for b in v.chunks_exact_mut(ty.type_size()) {
        let d = crate::blocks::f32_to_f16(rng.f32().abs() * 0.01 + 0.001).to_le_bytes();
        match ty {
            GgmlType::Q4K => {
                b[0..2].copy_from_slice(&d);
                b[2..4].copy_from_slice(&d);
            }
            _ => b[208..210].copy_from_slice(&d),
        }
    }
    v
}

fn matrix_bytes(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
        return random_k_blocks(rng, ty, rows, cols);
    }
    let x = values(rng, rows * cols);
    let mut out = vec![0u8; rows * cols / ty.block_size() * ty.type_size()];
    quantize_row(ty, &x, &mut out).unwrap();
    out
}

/// Σ |w · x| over the exact (f64) products of the dequantized operands: the scale that float
/// rounding errors are relative to.
fn magnitude(w: &Matrix<'_>, r: usize, x: &[f32]) -> f64 {
    let mut row = vec![0f32; w.cols];
    dequantize_row(w.ty, w.row(r).unwrap(), &mut row).unwrap();
    row.iter()
        .zip(x)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum()
}

fn check_against_scalar(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    n: usize,
    range: std::ops::Range<usize>,
    rng: &mut Rng,
    packed: bool,
) {
    let data = matrix_bytes(rng, ty, rows, cols);
    let w = Matrix::new(ty, rows, cols, &data).unwrap();
    let p = if packed { repack_always(&w) } else { None };
    let weights = match &p {
        Some(p) => Weights::Packed(p),
        None => Weights::Plain(w),
    };
    let x = values(rng, n * cols);
    let mut act = Activations::new();
    act.prepare(&x, n, cols, ty);
    let m = range.len();
    let mut want = vec![f32::NAN; n * m];
    matmul_with(
        &scalar::KERNELS,
        Weights::Plain(w),
        &act,
        range.clone(),
        &mut want,
    );
    // The activations as the kernels see them, to scale the tolerance.
    let mut xa = x.clone();
    if crate::activation_type(ty) == GgmlType::Q8_0 {
        let mut q = vec![0u8; x.len() / QK * Q8_0_BYTES];
        quantize_row(GgmlType::Q8_0, &x, &mut q).unwrap();
        dequantize_row(GgmlType::Q8_0, &q, &mut xa).unwrap();
    }
    let mags: Vec<f64> = (0..n)
        .flat_map(|t| range.clone().map(move |r| (t, r)))
        .map(|(t, r)| magnitude(&w, r, &xa[t * cols..(t + 1) * cols]))
        .collect();
    for k in available() {
        let mut got = vec![f32::NAN; n * m];
        matmul_with(k, weights, &act, range.clone(), &mut got);
        for i in 0..n * m {
            let tol = 1e-5 * mags[i] + 1e-30;
            assert!(
                ((got[i] - want[i]) as f64).abs() <= tol,
                "{} {ty} packed={packed} {rows}x{cols} n={n} rows {range:?} out[{i}]: {} vs scalar {} (tol {tol:e})",
                k.name,
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn matmul_matches_scalar_in_every_set() {
    let mut rng = Rng::new(3);
    use GgmlType::*;
    for ty in [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4K, Q6K] {
        let bs = if matches!(ty, Q4K | Q6K) { 256 } else { 32 };
        for case in 0..cases(12) {
            let cols = if ty.is_quantized() {
                bs * (1 + rng.below(if bs == 256 { 3 } else { 12 }))
            } else {
                1 + rng.below(300)
            };
            let rows = 1 + rng.below(40);
            let n = 1 + case % 9;
            let a = rng.below(rows);
            let b = a + rng.below(rows - a + 1);
            check_against_scalar(ty, rows, cols, n, a..b, &mut rng, false);
            check_against_scalar(ty, rows, cols, n, 0..rows, &mut rng, false);
        }
    }
}

#[test]
fn packed_q4_0_and_q8_0_match_scalar_in_every_set() {
    let mut rng = Rng::new(4);
    for case in 0..cases(40) {
        let cols = 32 * (1 + rng.below(20));
        let rows = 1 + rng.below(70);
        let n = 1 + case % 9;
        let a = rng.below(rows);
        let b = a + rng.below(rows - a + 1);
        check_against_scalar(GgmlType::Q4_0, rows, cols, n, a..b, &mut rng, true);
        check_against_scalar(GgmlType::Q4_0, rows, cols, n, 0..rows, &mut rng, true);
        check_against_scalar(GgmlType::Q4_0, 64, cols, n, 16..48, &mut rng, true);
        check_against_scalar(GgmlType::Q8_0, rows, cols, n, a..b, &mut rng, true);
        check_against_scalar(GgmlType::Q8_0, 48, cols, n, 0..48, &mut rng, true);
    }
    // Decoding (1–2 tokens) walks three runs of groups side by side, then the one or two groups
    // left over: 6, 7 and 8 whole groups, with tail rows, from the start and from an offset.
    for (rows, n, range) in [
        (96, 1, 0..96),
        (117, 2, 0..117),
        (133, 1, 5..133),
        (140, 2, 16..128),
    ] {
        check_against_scalar(GgmlType::Q4_0, rows, 96, n, range.clone(), &mut rng, true);
        check_against_scalar(GgmlType::Q8_0, rows, 64, n, range, &mut rng, true);
    }
}

/// A token's outputs are the same bits however many tokens a product holds and whichever set
/// computed them among those with the same per-block float steps (AMX tiles and the VNNI
/// kernels; `smmla` and `sdot`): what makes a prompt's logits equal token-by-token decoding's.
#[test]
fn packed_products_over_many_tokens_equal_single_tokens_bit_for_bit() {
    let mut rng = Rng::new(6);
    let sets = available();
    let same_steps: Vec<&Kernels> = sets
        .iter()
        .copied()
        .filter(|k| matches!(k.name, "amx" | "avx512vnni" | "neon-i8mm" | "neon-dotprod"))
        .collect();
    for (case, n) in [1usize, 3, 4, 5, 9, 12, 15, 16, 17, 31, 33, 40]
        .into_iter()
        .enumerate()
    {
        if cfg!(miri) && case > 2 {
            break;
        }
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            let (rows, cols) = (48, 32 * (1 + case % 5 + 2 * (case % 2)));
            let data = matrix_bytes(&mut rng, ty, rows, cols);
            let w = Matrix::new(ty, rows, cols, &data).unwrap();
            let p = repack_always(&w).unwrap();
            let x = values(&mut rng, n * cols);
            let mut act = Activations::new();
            act.prepare(&x, n, cols, ty);
            let mut first: Option<(&str, Vec<u32>)> = None;
            for k in &sets {
                let mut all = vec![f32::NAN; n * rows];
                matmul_with(k, Weights::Packed(&p), &act, 0..rows, &mut all);
                for t in 0..n {
                    let mut one_act = Activations::new();
                    one_act.prepare(&x[t * cols..(t + 1) * cols], 1, cols, ty);
                    let mut one = vec![f32::NAN; rows];
                    matmul_with(k, Weights::Packed(&p), &one_act, 0..rows, &mut one);
                    assert_eq!(
                        bits(&all[t * rows..(t + 1) * rows]),
                        bits(&one),
                        "{} {ty} {rows}x{cols}: token {t} of {n} differs from the token alone",
                        k.name
                    );
                }
                if same_steps.iter().any(|v| v.name == k.name) {
                    match &first {
                        None => first = Some((k.name, bits(&all))),
                        Some((name, b)) => assert_eq!(
                            &bits(&all),
                            b,
                            "{} and {name} differ on {ty} {rows}x{cols}, {n} tokens",
                            k.name
                        ),
                    }
                }
            }
        }
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "hours under Miri; the tiling code runs in the smaller cases"
)]
fn large_token_counts_tile_correctly() {
    let mut rng = Rng::new(5);
    // Enough tokens and rows that matmul splits both into tiles.
    check_against_scalar(GgmlType::Q4_0, 48, 2048, 70, 0..48, &mut rng, true);
    check_against_scalar(GgmlType::Q8_0, 100, 4096, 37, 3..97, &mut rng, false);
    check_against_scalar(GgmlType::Q8_0, 100, 4096, 37, 3..97, &mut rng, true);
    check_against_scalar(GgmlType::F16, 40, 4096, 11, 0..40, &mut rng, false);
}

/// ggml's `test-quantize-fns`: quantization round-trip error `sqrt(Σ d²) / n` under 0.002 and
/// `|dot(quantized) − dot(f32)| / n` under 0.02, on its synthetic data `0.1 + 2·cos(i + offset)`.
#[test]
fn ggml_error_bounds_hold() {
    let n = 32 * 128;
    let gen = |off: f32| {
        (0..n)
            .map(|i| 0.1 + 2.0 * (i as f32 + off).cos())
            .collect::<Vec<f32>>()
    };
    let x = gen(0.0);
    let y = gen(1.0);
    let exact: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::BF16,
    ] {
        let mut q = vec![0u8; n / ty.block_size() * ty.type_size()];
        quantize_row(ty, &x, &mut q).unwrap();
        let mut back = vec![0f32; n];
        dequantize_row(ty, &q, &mut back).unwrap();
        // ggml's `array_rmse` is sqrt(Σ d²) / n.
        let rmse = x
            .iter()
            .zip(&back)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            / n as f64;
        if ty != GgmlType::BF16 {
            assert!(rmse < 0.002, "{ty}: rmse {rmse}");
        }
        let w = Matrix::new(ty, 1, n, &q).unwrap();
        let mut act = Activations::new();
        act.prepare(&y, 1, n, ty);
        for k in available() {
            let mut out = [0f32];
            matmul_with(k, Weights::Plain(w), &act, 0..1, &mut out);
            let err = (out[0] as f64 - exact).abs() / n as f64;
            assert!(err < 0.02, "{} {ty}: dot error {err}", k.name);
        }
    }
}
