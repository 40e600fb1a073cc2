//! Hugging Face checkpoints in and out of Raven: [`checkpoint::Checkpoint`] reads and checks a
//! checkpoint of any supported family, [`convert::convert`] turns it into one GGUF file with the
//! tokenizer and chat template inside, and [`synth`] writes random checkpoints of the real
//! models' exact names, shapes, dtypes and sharding (tests and benchmarks at full size).
#![deny(missing_docs)]

pub mod checkpoint;
pub mod convert;
pub mod synth;
