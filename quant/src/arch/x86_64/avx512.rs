//! AVX-512 VNNI kernels (Ice Lake, Zen 4 and later): the AVX2 algorithms with `vpdpbusd` on
//! 256-bit vectors (Zen 4 splits 512-bit operations in two, so wider vectors buy nothing).

super::kernel_set!(
    "avx512vnni",
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    true,
    true,
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
);
