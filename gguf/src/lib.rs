//! GGUF reader and writer.
#![deny(missing_docs)]
