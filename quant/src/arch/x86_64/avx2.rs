//! AVX2 + FMA + F16C kernels (Haswell and later, Zen 1 and later).

super::kernel_set!(
    "avx2",
    "avx2,fma,f16c",
    false,
    true,
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
);
