//! The bundled demo model (models/demo/: a tiny Huginn trained on chain-following puzzles by
//! tools/train_demo, converted to Q8_0 by `raven convert`), used when no `-m` is given.

use anyhow::{Context, Result};
use raven::Model;

/// The Q8_0 GGUF, embedded in the binary.
static DEMO: &[u8] = include_bytes!("../../models/demo/demo-q8_0.gguf");

pub fn load() -> Result<Model> {
    let g = raven_gguf::Gguf::from_bytes(DEMO.to_vec()).context("the bundled demo model")?;
    let mut m = Model::from_gguf(g, "bundled demo model").context("the bundled demo model")?;
    m.repack();
    Ok(m)
}
