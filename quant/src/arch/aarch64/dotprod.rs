//! NEON + dotprod kernels (Cortex-A55/A76 and later, Apple M1 and later): `sdot` for the int8
//! products, and the interleaved Q4_0/Q8_0 layouts with `sdot` by element.

kernel_set! {
    name: "neon-dotprod",
    features: "neon,dotprod",
    int8: true,
    silu_mul: use(crate::arch::scalar::silu_mul),
    attend_multi: each,
    mm_q4_0x16: wrap(super::mm_q4_0x16),
    mm_q8_0x16: wrap(super::mm_q8_0x16),
    packed_pays: true,
    token_tile: 4,
    detect: std::arch::is_aarch64_feature_detected!("dotprod"),
}
