//! Raven runs recurrent-depth latent-reasoning language models (Huginn-0125, Ouro, the
//! retrofitted-recurrence Llama / TinyLlama / OLMo-2 models) on CPUs.
//!
//! This crate is the facade over the jobs, each its own crate:
//! - `raven-core` ([`model`], [`engine`], [`session`], [`parallel`], [`run`], …): loading a GGUF
//!   model and running it: the engine's batched pass and per-token step, sessions, sampling,
//!   exit criteria, the parallel sampler, text generation.
//! - `raven-convert` ([`checkpoint`], [`convert`], [`synth`]): Hugging Face checkpoints to
//!   GGUF, and synthetic checkpoints of the real shapes.
//! - `raven-capi` ([`capi`]): the C ABI of `include/raven.h`; this crate builds it as
//!   `libraven` (static and shared).
//! - Below them: `raven-quant` (formats and kernels), `raven-gguf`, `raven-text` (tokenizer,
//!   chat templates).
#![deny(missing_docs)]

pub use raven_capi as capi;
pub use raven_convert::{checkpoint, convert, synth};
pub use raven_core::{
    config, engine, error, exit, kv, model, parallel, params, reference, rng, run, sample, schema,
    session, textgen,
};

pub use raven_core::{Engine, Model, Param, RavenError, Result, Session, SessionParams};
