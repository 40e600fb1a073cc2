//! Raven runs recurrent-depth latent-reasoning language models (Huginn, Geiping et al. 2025) on
//! CPUs.
//!
//! - [`checkpoint::Checkpoint`] reads a Hugging Face Huginn checkpoint; [`convert::convert`]
//!   turns it into a GGUF file.
//! - [`model::Model`] is a loaded GGUF model: hyperparameters ([`config::Config`]) and weight
//!   views into the memory map. It is immutable and shared by sessions.
//! - [`forward`] is the fast forward pass over a [`kv::KvCache`] and a [`forward::Workspace`];
//!   [`reference`] is the slow, readable oracle of SPEC §1.
//! - [`exit`] holds the per-token exit criteria, [`run`] the drivers (`raven logits`),
//!   [`session::Session`] generation over a shared model (sampling in [`sample`]);
//!   [`textgen`] turns it into text with chat templates and stop strings.
//! - [`parallel`] is the parallel (diffusion-forcing) sampler of arXiv 2510.14961: a wavefront
//!   of positions advancing together, one batched pass per sampler step.
#![deny(missing_docs)]

pub mod capi;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod engine;
pub mod error;
pub mod exit;
pub mod forward;
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
pub mod synth;
pub mod textgen;

pub use error::{RavenError, Result};
pub use model::Model;
pub use params::Param;
pub use session::{Session, SessionParams};
