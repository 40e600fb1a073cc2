//! Plain NEON kernels (every aarch64 CPU, e.g. the Cortex-A72 of a Raspberry Pi 4). Without
//! `sdot` the interleaved layouts do not pay, so their kernels are the scalar ones.

super::kernel_set!(
    "neon",
    "neon",
    false,
    crate::arch::scalar::mm_q4_0x16,
    crate::arch::scalar::mm_q8_0x16,
    false,
    true
);
