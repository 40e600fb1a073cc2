//! Raven.
#![deny(missing_docs)]
