//! AVX2 + FMA + F16C kernels (Haswell and later, Zen 1 and later).

super::kernel_set!(
    "avx2",
    "avx2,fma,f16c",
    false,
    mm_q4_0x16,
    mm_q8_0x16,
    true,
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
);

super::kernel_set!(@wrap "avx2,fma,f16c", mm_q4_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_q4_0x16::<false>);
super::kernel_set!(@wrap "avx2,fma,f16c", mm_q8_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_q8_0x16::<false>);
