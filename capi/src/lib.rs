//! The C ABI (`include/raven.h`, generated from this crate by cbindgen).
//!
//! Modules: `abi` (the types), `ffi` (the `guard` wrapper, logging, pointer helpers), `library`,
//! `model`, `text`, `params` (defaults, mapping to the library's parameters), `session`,
//! `generate` (the loops behind `raven_session_generate`).
//!
//! - [`raven_model`]: an immutable loaded model (`Arc<Model>`), shared by any number of sessions
//!   and threads. [`raven_model_load`] / [`raven_model_free`].
//! - [`raven_session`]: one generation context (KV cache, sampler, thread pool) used by one
//!   thread at a time, except [`raven_session_cancel`], which any thread may call.
//!   [`raven_session_new`] / [`raven_session_free`].
//! - Every call returns a [`raven_status`] (or a size, for the buffer-filling calls) and leaves a
//!   message for [`raven_last_error`] when it fails. Every export runs inside one
//!   `catch_unwind` wrapper (`guard`), so no panic crosses into the caller.
//! - "Enum" parameters are plain `int32_t` typedefs with `#define`d values, not C enums: a value
//!   outside the list is then an error the library reports, not undefined behaviour in Rust.
//!
//! Regenerate the header after changing this crate:
//! `RAVEN_UPDATE_HEADER=1 cargo test --test capi header` (the test fails while it is stale).
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Instant;

use raven_core::error::RavenError;
use raven_core::exit::{Criterion, ExitPolicy};
use raven_core::kv::CacheStrategy;
use raven_core::model::Model;
use raven_core::parallel::{self, Mode, Observe, ParallelParams};
use raven_core::run::Threads;
use raven_core::sample::SamplingParams;
use raven_core::session::{Next, Session, SessionParams, TokenStats};
use raven_quant::KvType;

// The header lists the items in this order (rustfmt.toml keeps it: reorder_modules = false).
mod abi;
mod ffi;
mod library;
mod model;
mod text;
mod params;
mod session;
mod generate;

pub use abi::*;
pub(crate) use ffi::*;
use generate::*;
pub use library::*;
pub use model::*;
pub use params::*;
pub use session::*;
pub use text::*;
