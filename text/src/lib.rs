//! Text for Raven: from a prompt to token ids, from sampled ids back to text, and from a
//! conversation to a prompt.
//!
//! - [`Tokenizer`] loads a Hugging Face `tokenizer.json` (stored in GGUF as
//!   `tokenizer.huggingface.json`) with the pure-Rust `tokenizers` crate, so it builds for iOS
//!   and Android without a C toolchain. It encodes text (special tokens written in the text are
//!   recognised) and decodes ids.
//! - [`StreamDecoder`] borrows a `Tokenizer` and turns ids arriving one at a time into text
//!   pieces that are always complete UTF-8, in O(1) amortised work per token: what a token
//!   callback (C ABI, command line) prints.
//! - [`ChatTemplate`] renders `tokenizer_config.json`'s Jinja `chat_template` over
//!   [`ChatMessage`]s in a bounded sandbox (MiniJinja: no file access, a fuel budget and a
//!   recursion limit), as `transformers`' `apply_chat_template` would.
//! - [`ggml_vocab`] extracts the llama.cpp-style [`GgmlVocab`] arrays (tokens, token types,
//!   merges) that `raven convert` writes next to the whole `tokenizer.json`.
//!
//! Every fallible function returns [`TextError`].
#![deny(missing_docs)]

mod chat;
mod error;
mod ggml;
mod stream;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::TextError;
pub use ggml::{ggml_vocab, GgmlVocab};
pub use stream::StreamDecoder;
pub use tokenizer::Tokenizer;
