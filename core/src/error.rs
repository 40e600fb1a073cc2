//! Typed errors of the `raven` library.

use std::path::PathBuf;

use crate::params::Param;

/// Everything that can go wrong while reading a checkpoint, converting, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RavenError {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file that does not parse or lacks what Raven needs.
    #[error("{path}: {msg}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A checkpoint (safetensors shards + config) that is incomplete or inconsistent.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint directory or shard.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A GGUF file that cannot be read.
    #[error(transparent)]
    Gguf(#[from] raven_gguf::GgufError),
    /// A GGUF file that is well-formed but is not a usable Huginn model.
    #[error("{path}: {msg}")]
    Model {
        /// The model file.
        path: String,
        /// What is wrong, naming the key or tensor.
        msg: String,
    },
    /// Tokenizer or chat-template failure.
    #[error(transparent)]
    Text(#[from] raven_text::TextError),
    /// Quantization failure.
    #[error(transparent)]
    Quant(#[from] raven_quant::QuantError),
    /// An invalid option or argument, naming it.
    #[error("invalid {name}: {msg}")]
    InvalidArgument {
        /// The option or parameter.
        name: String,
        /// What is wrong and what is allowed.
        msg: String,
    },
    /// An invalid parameter: its [`Param`] names it for each front end
    /// ([`RavenError::message_for`]); shown with its API name.
    #[error("invalid {}: {msg}", param.api())]
    InvalidParam {
        /// The parameter.
        param: Param,
        /// What is wrong and what is allowed.
        msg: String,
    },
    /// A prompt or generation that does not fit the context.
    #[error("context overflow: {needed} tokens needed, the context holds {context} (use a shorter prompt or a larger context)")]
    ContextOverflow {
        /// Tokens that would be in the context.
        needed: usize,
        /// The session's context length.
        context: usize,
    },
    /// The session's KV cache would exceed the memory cap.
    #[error("the KV cache would need {needed} bytes, over the cap of {cap} bytes (use the compress-s{n_core} cache, a smaller context, or raise the cap)")]
    CacheTooLarge {
        /// Bytes needed.
        needed: u64,
        /// The cap.
        cap: u64,
        /// Core layers, for the suggestion.
        n_core: usize,
    },
    /// The operation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

impl RavenError {
    /// A file that could not be read or written.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RavenError::Io {
            path: path.into(),
            source,
        }
    }
    /// An invalid parameter.
    pub fn param(param: Param, msg: impl Into<String>) -> Self {
        RavenError::InvalidParam {
            param,
            msg: msg.into(),
        }
    }

    /// The parameter an [`RavenError::InvalidParam`] concerns.
    pub fn invalid_param(&self) -> Option<Param> {
        match self {
            RavenError::InvalidParam { param, .. } => Some(*param),
            _ => None,
        }
    }

    /// The message with an invalid parameter named by `name` (e.g. [`Param::cli`] for the
    /// command line, [`Param::c`] for the C ABI); any other error as displayed.
    pub fn message_for(&self, name: impl Fn(Param) -> &'static str) -> String {
        match self {
            RavenError::InvalidParam { param, msg } => format!("invalid {}: {msg}", name(*param)),
            e => e.to_string(),
        }
    }

    /// An invalid argument that is not a session parameter (a file, a command-line option of
    /// one command), named as the caller knows it.
    pub fn arg(name: &str, msg: impl Into<String>) -> Self {
        RavenError::InvalidArgument {
            name: name.to_string(),
            msg: msg.into(),
        }
    }
}

/// Result with [`RavenError`].
pub type Result<T, E = RavenError> = std::result::Result<T, E>;
