//! [`ggml_vocab`]: the llama.cpp-style GGUF tokenizer arrays (`tokenizer.ggml.tokens`,
//! `tokenizer.ggml.token_type`, `tokenizer.ggml.merges`) extracted from a `tokenizer.json`.
//!
//! Raven itself reads `tokenizer.huggingface.json`; these arrays are for other GGUF readers.

use serde_json::Value;

use crate::{TextError, Tokenizer};

/// The GGUF `gpt2` tokenizer arrays, all indexed by token id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GgmlVocab {
    /// Token strings as the vocabulary writes them (byte-level alphabet, e.g. `"Ġthe"`); added
    /// tokens as their content; ids without a token as `"[PAD{id}]"`.
    pub tokens: Vec<String>,
    /// ggml token types, see the associated constants ([`GgmlVocab::NORMAL`], ...).
    pub token_types: Vec<i32>,
    /// BPE merges as `"left right"`, in `tokenizer.json` order (first = highest priority).
    pub merges: Vec<String>,
}

impl GgmlVocab {
    /// An ordinary vocabulary token.
    pub const NORMAL: i32 = 1;
    /// The model's unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A special (control) token such as `<|begin_text|>`.
    pub const CONTROL: i32 = 3;
    /// An added token that is not special: matched as written, before the BPE runs.
    pub const USER_DEFINED: i32 = 4;
    /// An id with no token (`"[PAD{id}]"`).
    pub const UNUSED: i32 = 5;
    /// A byte-fallback token `<0xAB>`.
    pub const BYTE: i32 = 6;

    /// Extends the arrays with unused `"[PAD{id}]"` tokens up to `n` ids, e.g. to the model's
    /// embedding rows when they outnumber the tokenizer's ids. Does nothing if already `n` or
    /// longer.
    pub fn pad_to(&mut self, n: usize) {
        for id in self.tokens.len()..n {
            self.tokens.push(format!("[PAD{id}]"));
            self.token_types.push(Self::UNUSED);
        }
    }
}

/// Extracts the GGUF `gpt2` tokenizer arrays from the text of a `tokenizer.json` whose model is
/// BPE (byte-level for Huginn).
///
/// Tokens and ids are those of [`Tokenizer::from_json`] on the same text, so the arrays agree
/// with Raven's own tokenizer. `tokens.len()` is [`Tokenizer::vocab_size`]. Types:
/// added tokens marked special, or written `<|...|>`, are control (3); other added tokens are
/// user-defined (4); the model's `unk_token` is unknown (2); with `byte_fallback`, `<0xAB>` tokens
/// are byte (6); ids with no token are unused (5); everything else is normal (1).
pub fn ggml_vocab(tokenizer_json: &str) -> Result<GgmlVocab, TextError> {
    let root: Value = serde_json::from_str(tokenizer_json)?;
    let model = root
        .get("model")
        .ok_or_else(|| TextError::Malformed("there is no `model` object".into()))?;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") => {}
        None if model.get("merges").is_some() => {}
        other => {
            return Err(TextError::UnsupportedModel(
                other.unwrap_or("(untyped)").to_owned(),
            ))
        }
    }

    // Token strings and ids as Raven's tokenizer sees them, so the GGUF arrays always agree
    // with `tokenizer.huggingface.json` (loading also checks the added tokens' declared ids).
    let tok = Tokenizer::from_json(tokenizer_json)?;
    let added = tok.inner().get_added_tokens_decoder();
    let unk = model.get("unk_token").and_then(Value::as_str);
    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let n = tok.vocab_size();
    let mut tokens = Vec::with_capacity(n);
    let mut token_types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let Some(token) = tok.id_to_token(id) else {
            tokens.push(format!("[PAD{id}]"));
            token_types.push(GgmlVocab::UNUSED);
            continue;
        };
        token_types.push(match added.get(&id) {
            Some(a) if a.special || looks_special(&token) => GgmlVocab::CONTROL,
            Some(_) => GgmlVocab::USER_DEFINED,
            None if Some(token.as_str()) == unk => GgmlVocab::UNKNOWN,
            None if byte_fallback && is_byte_token(&token) => GgmlVocab::BYTE,
            None => GgmlVocab::NORMAL,
        });
        tokens.push(token);
    }

    let merges = match model.get("merges") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(m)) => m
            .iter()
            .enumerate()
            .map(|(i, m)| merge_string(i, m))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(TextError::Malformed(
                "`model.merges` is not an array".into(),
            ))
        }
    };

    Ok(GgmlVocab {
        tokens,
        token_types,
        merges,
    })
}

/// A merge as `"left right"`, from either form `tokenizer.json` uses: the string `"a b"` or the
/// pair `["a", "b"]`. A pair whose parts contain a space cannot be written as one GGUF string.
fn merge_string(i: usize, m: &Value) -> Result<String, TextError> {
    match m {
        Value::String(s) if s.split(' ').count() == 2 => Ok(s.clone()),
        Value::Array(pair) => match pair.as_slice() {
            [Value::String(a), Value::String(b)] if !a.contains(' ') && !b.contains(' ') => {
                Ok(format!("{a} {b}"))
            }
            [Value::String(_), Value::String(_)] => Err(TextError::Malformed(format!(
                "model.merges[{i}] = {m} contains a space, which a GGUF `a b` merge cannot hold"
            ))),
            _ => Err(TextError::Malformed(format!(
                "model.merges[{i}] = {m} is not a pair of strings"
            ))),
        },
        _ => Err(TextError::Malformed(format!(
            "model.merges[{i}] = {m} is not \"left right\" nor a pair of strings"
        ))),
    }
}

/// Added tokens that some models forget to mark special although they are control tokens.
fn looks_special(token: &str) -> bool {
    (token.starts_with("<|") && token.ends_with("|>") && token.len() >= 4)
        || (token.starts_with("<｜") && token.ends_with("｜>"))
}

/// `<0xAB>`: a byte-fallback token.
fn is_byte_token(token: &str) -> bool {
    let b = token.as_bytes();
    b.len() == 6
        && b.starts_with(b"<0x")
        && b[5] == b'>'
        && b[3..5].iter().all(u8::is_ascii_hexdigit)
}
