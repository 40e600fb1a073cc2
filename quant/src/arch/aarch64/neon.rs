//! Plain NEON kernels (every aarch64 CPU, e.g. the Cortex-A72 of a Raspberry Pi 4). Without
//! `sdot` the interleaved layouts do not pay, so their kernels are the scalar ones.

kernel_set! {
    name: "neon",
    features: "neon",
    int8: false,
    silu_mul: use(crate::arch::scalar::silu_mul),
    attend_multi: each,
    mm_q4_0x16: use(crate::arch::scalar::mm_q4_0x16),
    mm_q8_0x16: use(crate::arch::scalar::mm_q8_0x16),
    packed_pays: false,
    token_tile: 4,
    detect: true,
}
