//! aarch64 kernels.
pub(crate) mod dotprod;
pub(crate) mod neon;
