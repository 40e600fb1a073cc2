//! The core of Raven: recurrent-depth latent-reasoning language models (Huginn-0125, Ouro, the
//! retrofitted-recurrence Llama / TinyLlama / OLMo-2 models) loaded from GGUF and run on CPUs.
//!
//! - [`model::Model`] is a loaded GGUF model: its description ([`config::Config`], one per
//!   family, GGUF names in [`schema`]) and weight views into the memory map. It is immutable and
//!   shared by sessions.
//! - [`engine::Engine`] owns a model's KV cache ([`kv::KvCache`]), workspace and threads and
//!   offers the two primitives every path runs on: a batched pass over positions and a
//!   per-token step under an exit policy ([`exit`]) and a latency budget. The forward pass
//!   itself is private; [`reference`] is the slow, readable oracle of SPEC §1.
//! - [`session::Session`] is generation policy on the engine (sampling in [`sample`], warm
//!   start, speculative decoding, the one generation loop); [`textgen`] turns it into text with
//!   chat templates and stop strings; [`run::logits`] is `raven logits`.
//! - [`parallel`] is the parallel (diffusion-forcing) sampler of arXiv 2510.14961: a wavefront
//!   of positions advancing together, one batched pass per sampler step.
//! - [`params`] names every parameter once, for the CLI, the C ABI and this API; [`error`]
//!   reports them.
#![deny(missing_docs)]

pub mod config;
pub mod engine;
pub mod error;
pub mod exit;
pub(crate) mod forward;
pub mod kv;
pub mod model;
pub mod parallel;
pub mod params;
pub mod reference;
pub mod rng;
pub mod run;
pub mod sample;
pub mod schema;
pub mod session;
pub mod textgen;

pub use engine::Engine;
pub use error::{RavenError, Result};
pub use model::Model;
pub use params::Param;
pub use session::{Session, SessionParams};
