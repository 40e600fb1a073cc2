//! Plain NEON kernels (every aarch64 CPU, e.g. the Cortex-A72 of a Raspberry Pi 4). Without
//! `sdot` the interleaved Q4_0 layout does not pay, so its kernel is the scalar one.

super::kernel_set!(
    "neon",
    "neon",
    false,
    crate::arch::scalar::mm_q4_0x16,
    false,
    true
);
