//! AVX2 + FMA + F16C kernels (Haswell and later, Zen 1 and later).

kernel_set! {
    name: "avx2",
    features: "avx2,fma,f16c",
    int8: false,
    silu_mul: wrap(super::silu_mul),
    attend_multi: wrap(super::attend_multi),
    mm_q4_0x16: wrap(super::mm_q4_0x16::<false>),
    mm_q8_0x16: wrap(super::mm_q8_0x16::<false>),
    packed_pays: true,
    token_tile: 4,
    detect: std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c"),
}
