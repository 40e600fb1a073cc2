//! `matmul` through the public API against an f64 reference on the dequantized operands:
//! every weight type, odd sizes, row ranges, 1 to 9 tokens, plain and repacked weights.

use raven_quant::blocks::{BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8_0};
use raven_quant::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn weights(rng: &mut Rng, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let bytes = rows * cols / ty.block_size() * ty.type_size();
    if can_quantize(ty) {
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.f32() * 2.0).collect();
        let mut out = vec![0u8; bytes];
        quantize_row(ty, &x, &mut out).unwrap();
        return out;
    }
    let mut v: Vec<u8> = (0..bytes).map(|_| rng.next() as u8).collect();
    let d = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for b in v.chunks_exact_mut(ty.type_size()) {
        match ty {
            GgmlType::Q4K => {
                b[0..2].copy_from_slice(&d);
                b[2..4].copy_from_slice(&d);
            }
            GgmlType::Q6K => b[208..210].copy_from_slice(&d),
            _ => unreachable!(),
        }
    }
    v
}

/// The activations as the kernels see them: Q8_0-rounded for Q4_0/Q8_0 weights.
fn seen(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    if activation_type(ty) != GgmlType::Q8_0 {
        return x.to_vec();
    }
    let mut q = vec![0u8; x.len() / blocks::QK * std::mem::size_of::<BlockQ8_0>()];
    quantize_row(GgmlType::Q8_0, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(GgmlType::Q8_0, &q, &mut y).unwrap();
    y
}

#[test]
fn matmul_matches_f64_reference() {
    let mut rng = Rng(0x5eed);
    use GgmlType::*;
    eprintln!("isa: {}", isa());
    for ty in [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4K, Q6K] {
        for case in 0..10 {
            let bs = ty.block_size().max(if ty.is_quantized() { 0 } else { 1 });
            let cols = if ty.is_quantized() {
                bs * (1 + rng.below(if bs == 256 { 3 } else { 9 }))
            } else {
                1 + rng.below(200)
            };
            let rows = 1 + rng.below(50);
            let n = 1 + case % 9;
            let start = rng.below(rows);
            let end = start + 1 + rng.below(rows - start);
            let data = weights(&mut rng, ty, rows, cols);
            let w = Matrix::new(ty, rows, cols, &data).unwrap();
            let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
            let xs = seen(ty, &x);
            let mut act = Activations::new();
            act.prepare(&x, n, cols, ty);
            assert_eq!(
                (act.n(), act.cols(), act.activation_type()),
                (n, cols, Some(activation_type(ty)))
            );
            let m = end - start;
            let mut out = vec![f32::NAN; n * m];
            matmul(&w, &act, start..end, &mut out);
            let packed = repack(&w);
            let mut out_p = vec![f32::NAN; n * m];
            if let Some(p) = &packed {
                matmul(p, &act, start..end, &mut out_p);
            }
            let mut row = vec![0f32; cols];
            for r in start..end {
                w.dequantize_row(r, &mut row).unwrap();
                for t in 0..n {
                    let xt = &xs[t * cols..(t + 1) * cols];
                    let exact: f64 = row.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mag: f64 = row
                        .iter()
                        .zip(xt)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum();
                    let got = out[t * m + r - start] as f64;
                    assert!(
                        (got - exact).abs() <= 2e-6 * mag + 1e-30,
                        "{ty} {rows}x{cols} n={n} row {r} token {t}: {got} vs {exact}"
                    );
                    if packed.is_some() {
                        let got = out_p[t * m + r - start] as f64;
                        assert!(
                            (got - exact).abs() <= 2e-6 * mag + 1e-30,
                            "packed {ty} row {r} token {t}: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn weight_types_name_their_activation_type() {
    fn act<W: VecDot>() -> (GgmlType, GgmlType) {
        (W::WEIGHT, <W::Activation as ActivationType>::TYPE)
    }
    for (w, a) in [
        act::<BlockQ4_0>(),
        act::<BlockQ8_0>(),
        act::<f32>(),
        act::<half::f16>(),
        act::<half::bf16>(),
        act::<BlockQ4K>(),
        act::<BlockQ6K>(),
    ] {
        assert_eq!(activation_type(w), a, "{w}");
        assert!(can_matmul(w));
    }
    assert_eq!(activation_type(GgmlType::Q4_0), GgmlType::Q8_0);
}

#[test]
fn matrix_new_checks_sizes() {
    let data = vec![0u8; 2 * 36];
    assert!(Matrix::new(GgmlType::Q4_0, 2, 64, &data).is_ok());
    assert!(Matrix::new(GgmlType::Q4_0, 2, 63, &data).is_err());
    assert!(Matrix::new(GgmlType::Q4_0, 3, 64, &data).is_err());
    assert!(Matrix::new(GgmlType::Q4_0, usize::MAX, 64, &data).is_err());
    let m = Matrix::new(GgmlType::Q4_0, 2, 64, &data).unwrap();
    assert_eq!(m.row(1).map(<[u8]>::len), Some(36));
    assert!(m.row(2).is_none());
    let mut out = vec![0f32; 64];
    assert!(m.dequantize_row(2, &mut out).is_err());
    assert!(repack(&Matrix::new(GgmlType::F16, 1, 32, &[0u8; 64]).unwrap()).is_none());
}

#[test]
fn dot_and_axpy() {
    let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
    let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!((dot_f32(&a, &b) - exact).abs() < 1e-3);
    let mut y = b.clone();
    axpy_f32(2.0, &a, &mut y);
    for i in 0..37 {
        assert_eq!(y[i], b[i] + 2.0 * a[i]);
    }
}
