//! The quantizers and dequantizers reproduce ggml's own output byte for byte
//! (`tests/fixtures/quant/ggml-quant-vectors.safetensors`, made with ggml).

use raven_quant::blocks::BlockQ4_0;
use raven_quant::{dequantize_row, quantize_row, GgmlType};
use safetensors::SafeTensors;

fn fixture() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/quant/ggml-quant-vectors.safetensors"
    );
    std::fs::read(path).expect("read the ggml quant vectors")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// (tensor name, type) of every block type the fixture holds.
const QUANTIZED: [(&str, GgmlType); 5] = [
    ("q4_0", GgmlType::Q4_0),
    ("q4_1", GgmlType::Q4_1),
    ("q5_0", GgmlType::Q5_0),
    ("q5_1", GgmlType::Q5_1),
    ("q8_0", GgmlType::Q8_0),
];

#[test]
fn quantizers_match_ggml_byte_for_byte() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let input = st.tensor("input").unwrap();
    let cols = input.shape()[1];
    let input = f32s(input.data());
    for (name, ty) in QUANTIZED {
        let want = st.tensor(name).unwrap();
        let row_bytes = want.shape()[1];
        let mut got = vec![0u8; row_bytes];
        for (r, (x, want)) in input
            .chunks_exact(cols)
            .zip(want.data().chunks_exact(row_bytes))
            .enumerate()
        {
            quantize_row(ty, x, &mut got).unwrap();
            assert_eq!(got, want, "{name} row {r}");
        }
    }
}

#[test]
fn dequantizers_match_ggml_exactly() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, GgmlType)> =
        QUANTIZED.iter().map(|(n, t)| (n.to_string(), *t)).collect();
    names.push(("q4_k.random_blocks".into(), GgmlType::Q4K));
    names.push(("q6_k.random_blocks".into(), GgmlType::Q6K));
    for (name, ty) in names {
        let q = st.tensor(&name).unwrap();
        let want = st.tensor(&format!("{name}.dequant")).unwrap();
        let cols = want.shape()[1];
        let want = f32s(want.data());
        let row_bytes = q.shape()[1];
        let mut got = vec![0f32; cols];
        let mut bad = 0;
        for (r, (q, want)) in q
            .data()
            .chunks_exact(row_bytes)
            .zip(want.chunks_exact(cols))
            .enumerate()
        {
            dequantize_row(ty, q, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                if g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan()) {
                    if bad < 10 {
                        eprintln!("{name} row {r} [{i}]: got {g:e}, ggml {w:e}");
                    }
                    bad += 1;
                }
            }
        }
        assert_eq!(bad, 0, "{name}: {bad} values differ");
    }
}

#[test]
fn float_types_round_trip_as_ggml() {
    let xs = [
        0.0f32,
        -0.0,
        1.0,
        65504.0,
        65520.0,
        1e-8,
        6e-8,
        -3.3333,
        f32::INFINITY,
        1.0 + 1.0 / 2048.0,
    ];
    for x in xs {
        let mut b = [0u8; 2];
        quantize_row(GgmlType::F16, &[x], &mut b).unwrap();
        assert_eq!(u16::from_le_bytes(b), half::f16::from_f32(x).to_bits());
        let mut y = [0f32];
        dequantize_row(GgmlType::F16, &b, &mut y).unwrap();
        assert_eq!(y[0].to_bits(), half::f16::from_f32(x).to_f32().to_bits());
        quantize_row(GgmlType::BF16, &[x], &mut b).unwrap();
        assert_eq!(
            u16::from_le_bytes(b),
            half::bf16::from_f32(x).to_bits(),
            "{x}"
        );
    }
}

#[test]
fn bad_lengths_are_errors_not_panics() {
    let block = std::mem::size_of::<BlockQ4_0>();
    let mut out = vec![0u8; block];
    assert!(quantize_row(GgmlType::Q4_0, &[0.0; 31], &mut out).is_err());
    assert!(quantize_row(GgmlType::Q4_0, &[0.0; 64], &mut out).is_err());
    assert!(quantize_row(GgmlType::Q4K, &[0.0; 256], &mut out).is_err());
    let mut y = vec![0f32; 32];
    assert!(dequantize_row(GgmlType::Q4_0, &out[..block - 1], &mut y).is_err());
    assert!(dequantize_row(GgmlType::Q2K, &out, &mut y).is_err());
}
