//! The bundled demo model, used when no `-m` is given.

use anyhow::{bail, Result};
use raven::Model;

pub fn load() -> Result<Model> {
    bail!("no -m MODEL given and this build has no bundled demo model")
}
