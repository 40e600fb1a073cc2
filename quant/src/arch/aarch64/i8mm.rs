//! NEON + dotprod + i8mm kernels (Cortex-A510/A710/X2 and later, Neoverse V1/N2, Apple M2 and
//! later): the dotprod set, with products over two or more tokens done by `smmla`, which
//! multiplies two tokens by two weight rows over 8 values (32 multiply-adds, twice `sdot`'s 16).

kernel_set! {
    name: "neon-i8mm",
    features: "neon,dotprod,i8mm",
    int8: true,
    silu_mul: use(crate::arch::scalar::silu_mul),
    attend_multi: each,
    mm_q4_0x16: wrap(super::mm_mmla::<true>),
    mm_q8_0x16: wrap(super::mm_mmla::<false>),
    packed_pays: true,
    token_tile: 8,
    detect: std::arch::is_aarch64_feature_detected!("dotprod")
        && std::arch::is_aarch64_feature_detected!("i8mm"),
}
