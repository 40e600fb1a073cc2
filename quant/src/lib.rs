//! Raven's quantization crate: ggml's tensor element types ([`GgmlType`]), block formats
//! ([`blocks`]), quantizers ([`quantize_row`], [`dequantize_row`]) and the kernels the model's
//! matrix products run on.
//!
//! - A weight matrix is a borrowed [`Matrix`] (rows of ggml blocks straight from a memory map),
//!   or a [`PackedMatrix`] built from one by [`repack`] (Q4_0 rows interleaved in groups of 16
//!   for the int8 dot-product instructions).
//! - Token vectors go into reusable [`Activations`], which hold them in the form the weight type
//!   multiplies with ([`VecDot::Activation`]): Q8_0 blocks for Q4_0 and Q8_0 weights, f32 for
//!   the rest.
//! - [`matmul`] multiplies a range of weight rows by every token, reading each weight row once.
//!   [`dot_f32`] and [`axpy_f32`] serve attention.
//!
//! Kernels are chosen once at run time from the CPU's features ([`isa`]): AVX-512 VNNI, AVX2
//! (+FMA, F16C), NEON with dotprod, NEON, or portable scalar code, which is the reference the
//! others are tested against. `RAVEN_FORCE_SCALAR=1` forces the scalar kernels;
//! `RAVEN_ISA=avx2` (or another name [`isa`] reports) picks a slower set that the CPU also runs.
#![deny(missing_docs)]

pub mod blocks;
mod error;
mod quantize;
mod types;

pub use error::QuantError;
pub use quantize::{can_dequantize, can_quantize, dequantize_row, quantize_row};
pub use types::GgmlType;

mod arch;
mod matmul;
mod packed;

pub use matmul::{
    activation_type, axpy_f32, can_matmul, dot_f32, isa, matmul, ActivationType, Activations,
    Matrix, VecDot, Weights,
};
pub use packed::{repack, PackedMatrix};
