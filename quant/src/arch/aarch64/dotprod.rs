//! NEON + dotprod kernels (Cortex-A55/A76 and later, Apple M1 and later): `sdot` for the int8
//! products, and the interleaved Q4_0/Q8_0 layouts with `sdot` by element.

super::kernel_set!(
    "neon-dotprod",
    "neon,dotprod",
    true,
    mm_q4_0x16,
    mm_q8_0x16,
    true,
    std::arch::is_aarch64_feature_detected!("dotprod")
);

super::kernel_set!(@wrap "neon,dotprod", mm_q4_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_q4_0x16);
super::kernel_set!(@wrap "neon,dotprod", mm_q8_0x16(w: &[u8], groups: usize, act: Q8View<'_>, out: &mut [f32], ldo: usize) -> () = super::mm_q8_0x16);
