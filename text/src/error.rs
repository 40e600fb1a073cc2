//! The one error type of this crate.

/// Everything that can go wrong while loading a tokenizer, turning text into ids and back,
/// extracting a GGUF vocabulary, or rendering a chat template.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// `tokenizer.json` is not valid JSON.
    #[error("tokenizer.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The `tokenizers` library rejected `tokenizer.json` (unknown model, pre-tokenizer, ...).
    #[error("tokenizer.json could not be loaded: {0}")]
    Load(String),
    /// `tokenizer.json` parses but contradicts itself (an id used twice, a merge that is not a
    /// pair, ...). The string says which key and value.
    #[error("tokenizer.json is malformed: {0}")]
    Malformed(String),
    /// The tokenizer's model cannot be written as a GGUF `gpt2` (byte-level BPE) vocabulary.
    #[error(
        "tokenizer.json has a `{0}` model; only BPE can be written as a GGUF `gpt2` vocabulary \
         (the whole tokenizer.json is still stored as tokenizer.huggingface.json)"
    )]
    UnsupportedModel(String),
    /// Turning text into ids failed.
    #[error("encoding text failed: {0}")]
    Encode(String),
    /// Turning ids into text failed.
    #[error("decoding token ids failed: {0}")]
    Decode(String),
    /// A token id that names no token in this vocabulary.
    #[error("token id {id} is not in the vocabulary ({vocab_size} ids)")]
    UnknownTokenId {
        /// The offending id.
        id: u32,
        /// Number of ids of the vocabulary (the largest valid id is one less).
        vocab_size: usize,
    },
    /// The chat template does not compile (a Jinja syntax error, or a feature that is not
    /// available in the sandbox such as `{% include %}`).
    #[error("chat template does not compile: {0}")]
    TemplateSyntax(String),
    /// Rendering the chat template failed: the template raised an error, used an undefined
    /// operation, or exceeded its budget of steps, output size or recursion depth.
    #[error("chat template failed to render: {0}")]
    TemplateRender(String),
}
