//! Raven's quantization crate: ggml's tensor element types ([`GgmlType`]), block formats
//! ([`blocks`]), quantizers ([`quantize_row`], [`dequantize_row`]) and the kernels the model's
//! matrix products run on.
//!
//! - A weight matrix is a borrowed [`Matrix`] (rows of ggml blocks straight from a memory map,
//!   any alignment), or a [`PackedMatrix`] built from one by [`repack`] (Q4_0 rows interleaved
//!   in groups of 16 for the int8 dot-product instructions; owned, same size as the original).
//! - Token vectors go into reusable [`Activations`], which hold them in the form the weight
//!   type multiplies with ([`VecDot::Activation`], [`activation_type`]): Q8_0 blocks for Q4_0
//!   and Q8_0 weights, f32 for the rest.
//! - [`matmul`] multiplies a range of weight rows by every token, reading each weight row once
//!   for all tokens; it is single-threaded. [`par_matmul`] splits the rows across the threads
//!   of the current rayon pool (what the model runs).
//!   [`dot_f32`] and [`axpy_f32`] serve attention.
//!
//! ```
//! use raven_quant::{matmul, quantize_row, repack, Activations, GgmlType, Matrix};
//! let (rows, cols) = (32, 64);
//! let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.1).sin()).collect();
//! let mut bytes = vec![0u8; rows * GgmlType::Q4_0.row_bytes(cols as u64).unwrap() as usize];
//! quantize_row(GgmlType::Q4_0, &w, &mut bytes).unwrap();
//! let m = Matrix::new(GgmlType::Q4_0, rows, cols, &bytes).unwrap();
//! let mut act = Activations::new();
//! act.prepare(&w[..2 * cols], 2, cols, m.ty); // two tokens
//! let mut out = vec![0f32; 2 * rows];
//! matmul(&m, &act, 0..rows, &mut out); // out[t * rows + r]
//! if let Some(p) = repack(&m) {
//!     let mut out2 = vec![0f32; 2 * rows];
//!     matmul(&p, &act, 0..rows, &mut out2);
//! }
//! ```
//!
//! Kernels are chosen once at run time from the CPU's features ([`isa`]): AVX-512 VNNI, AVX2
//! (+FMA, F16C), NEON with dotprod, NEON, or portable scalar code, which is the reference the
//! others are tested against. Activation quantization is bit-identical in every set (it is
//! ggml's reference `quantize_row_q8_0`); products agree with the scalar set to float rounding.
//! `RAVEN_FORCE_SCALAR=1` forces the scalar kernels; `RAVEN_ISA=avx2` (or another name [`isa`]
//! reports) picks a slower set that the CPU also runs, for benchmarks.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod blocks;
mod error;
mod quantize;
mod types;

pub use error::QuantError;
pub use quantize::{can_dequantize, can_quantize, dequantize_row, quantize_row};
pub use types::GgmlType;

mod arch;
mod kv;
mod layout;
mod matmul;
mod packed;
mod par;
mod team;

pub use kv::{store_f16, store_q8_0, KvRows, KvType};
pub use matmul::{
    activation_type, attend_head, attend_queries, axpy_f32, can_matmul, dot_f32, isa, matmul,
    silu_mul, ActivationType, Activations, Matrix, VecDot, Weights,
};
pub use packed::{repack, PackedMatrix};
pub use par::{par_matmul, SERIAL_WORK};
pub use team::{current_threads, for_each_chunk, Team};
/// Hooks for benchmarks (feature `bench-hooks`, off by default): not part of the supported API.
#[cfg(feature = "bench-hooks")]
pub use {arch::set_streams, packed::huge_page_vec};
