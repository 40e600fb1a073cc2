//! [`Tokenizer`]: a Hugging Face `tokenizer.json` loaded with the pure-Rust `tokenizers` crate,
//! plus the per-id tables the streaming decoder needs.

use std::str::FromStr;

use tokenizers::DecoderWrapper;

use crate::TextError;

/// Most ids without a token that a vocabulary may have. A file whose largest id is far beyond
/// its number of tokens is rejected rather than allocated.
const MAX_HOLES: usize = 1 << 16;

/// What an id names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdKind {
    /// No token has this id (a hole in the vocabulary).
    Missing,
    /// An ordinary vocabulary token, or an added token that is not special.
    Normal,
    /// A special added token (`"special": true`): dropped by `skip_special_tokens`.
    Special,
}

/// The bytes each id decodes to, for tokenizers whose decoder is byte-level (GPT-2 style).
///
/// With such a decoder, decoding a sequence is the concatenation of the bytes of its tokens
/// followed by one lossy UTF-8 conversion, so each token's bytes can be computed once.
pub(crate) struct BytePieces {
    bytes: Vec<u8>,
    /// `ends[id]` is one past the last byte of piece `id`; piece `id` starts at `ends[id - 1]`.
    ends: Vec<u32>,
}

impl BytePieces {
    /// The bytes of `id`; empty for ids outside the table.
    pub(crate) fn piece(&self, id: u32) -> &[u8] {
        let i = id as usize;
        let Some(&end) = self.ends.get(i) else {
            return &[];
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start as usize..end as usize]
    }
}

/// A tokenizer read from a Hugging Face `tokenizer.json`.
///
/// Special tokens written literally in the text (`"<|begin_text|>"`) are recognised by
/// [`encode`](Self::encode). Truncation and padding settings of the file are switched off: an
/// inference engine wants every token of the prompt.
///
/// `Tokenizer` is `Send + Sync`: one instance can serve many threads.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Per id, `0..kinds.len()`; `kinds.len()` is the vocabulary size.
    pub(crate) kinds: Vec<IdKind>,
    special_ids: Vec<u32>,
    /// `Some` when the decoder is byte-level, enabling the O(1) streaming path.
    pub(crate) byte_pieces: Option<BytePieces>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.kinds.len())
            .field("special_token_ids", &self.special_ids)
            .field("byte_level", &self.byte_pieces.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads a tokenizer from the whole text of a Hugging Face `tokenizer.json` (stored in GGUF
    /// as `tokenizer.huggingface.json`).
    pub fn from_json(json: &str) -> Result<Tokenizer, TextError> {
        // The `tokenizers` crate panics on some malformed files (a merge longer than every
        // token); a file from a model download is untrusted input.
        let loaded = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_str(json)).map_err(
            |panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("the tokenizers library panicked");
                TextError::Load(format!("malformed file ({why})"))
            },
        )?;
        let mut inner = loaded.map_err(|e| TextError::Load(e.to_string()))?;
        check_added_token_ids(json, &inner)?;
        inner
            .with_truncation(None)
            .map_err(|e| TextError::Load(e.to_string()))?;
        inner.with_padding(None);

        let vocab = inner.get_vocab(true);
        let n_ids = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if n_ids > vocab.len() + MAX_HOLES {
            return Err(TextError::Malformed(format!(
                "token ids go up to {} but there are only {} tokens",
                n_ids - 1,
                vocab.len()
            )));
        }
        drop(vocab);
        let special_contents: std::collections::HashSet<String> = inner
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special)
            .map(|t| t.content)
            .collect();
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));

        let mut kinds = Vec::with_capacity(n_ids);
        let mut special_ids = Vec::new();
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(if byte_level { n_ids } else { 0 });
        for id in 0..n_ids as u32 {
            let token = inner.id_to_token(id);
            let kind = match &token {
                None => IdKind::Missing,
                Some(t) if special_contents.contains(t) => IdKind::Special,
                Some(_) => IdKind::Normal,
            };
            if kind == IdKind::Special {
                special_ids.push(id);
            }
            kinds.push(kind);
            if byte_level {
                if let Some(t) = &token {
                    push_byte_level_piece(&mut bytes, t);
                }
                let end = u32::try_from(bytes.len()).map_err(|_| {
                    TextError::Malformed("the token strings add up to more than 4 GiB".into())
                })?;
                ends.push(end);
            }
        }
        let byte_pieces = byte_level.then_some(BytePieces { bytes, ends });
        Ok(Tokenizer {
            inner,
            kinds,
            special_ids,
            byte_pieces,
        })
    }

    /// Turns `text` into token ids. Special tokens written in the text are recognised as such.
    /// `add_special_tokens` lets the post-processor add its tokens (e.g. a BOS), if it has any.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TextError> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| TextError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Turns token ids back into text; special tokens are left out when `skip_special_tokens`.
    /// Bytes that do not form valid UTF-8 become U+FFFD. An id with no token is an error.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TextError> {
        for &id in ids {
            self.kind(id)?;
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TextError::Decode(e.to_string()))
    }

    /// Number of token ids: one more than the largest id of the vocabulary or the added tokens.
    pub fn vocab_size(&self) -> usize {
        self.kinds.len()
    }

    /// The id of a token string (as written in the vocabulary, e.g. `"Ġthe"`), or of an added
    /// token's content.
    pub fn token_to_id(&self, tok: &str) -> Option<u32> {
        self.inner.token_to_id(tok)
    }

    /// The token string of an id (as written in the vocabulary, e.g. `"Ġthe"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids of the added tokens marked `"special": true`, ascending.
    pub fn special_token_ids(&self) -> Vec<u32> {
        self.special_ids.clone()
    }

    /// Whether `id` names a token (normal or special) that [`Tokenizer::decode`] accepts.
    pub fn has_id(&self, id: u32) -> bool {
        self.kind(id).is_ok()
    }

    /// Whether `id` is a special token (dropped by `skip_special_tokens`).
    pub fn is_special(&self, id: u32) -> bool {
        self.kinds.get(id as usize) == Some(&IdKind::Special)
    }

    /// What `id` names, or [`TextError::UnknownTokenId`].
    pub(crate) fn kind(&self, id: u32) -> Result<IdKind, TextError> {
        match self.kinds.get(id as usize) {
            Some(&k) if k != IdKind::Missing => Ok(k),
            _ => Err(TextError::UnknownTokenId {
                id,
                vocab_size: self.kinds.len(),
            }),
        }
    }

    /// The underlying `tokenizers` tokenizer.
    pub(crate) fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The ids `tokenizer.json` declares for its added tokens. The `tokenizers` crate ignores them
/// and numbers added tokens itself, after the model's vocabulary.
#[derive(serde::Deserialize)]
struct DeclaredIds {
    #[serde(default)]
    added_tokens: Vec<DeclaredId>,
}

#[derive(serde::Deserialize)]
struct DeclaredId {
    id: u32,
    content: String,
}

/// Fails if an added token does not get the id the file declares: the model's embedding rows
/// follow the declared ids, so a mismatch would feed the model the wrong special tokens.
fn check_added_token_ids(json: &str, inner: &tokenizers::Tokenizer) -> Result<(), TextError> {
    let declared: DeclaredIds = serde_json::from_str(json)?;
    for t in declared.added_tokens {
        let actual = inner.token_to_id(&t.content);
        if actual != Some(t.id) {
            return Err(TextError::Malformed(format!(
                "added token {:?} is declared with id {} but gets id {} (the added tokens must \
                 follow the vocabulary's ids without gaps)",
                t.content,
                t.id,
                actual.map_or("none".to_owned(), |id| id.to_string()),
            )));
        }
    }
    Ok(())
}

/// Appends the bytes that the byte-level decoder gives for `token`: each char mapped back to its
/// byte, or, if any char is outside the byte alphabet (an added token such as `"<|x|> "`), the
/// token's own UTF-8 bytes.
fn push_byte_level_piece(out: &mut Vec<u8>, token: &str) {
    let start = out.len();
    for c in token.chars() {
        match byte_of_char(c) {
            Some(b) => out.push(b),
            None => {
                out.truncate(start);
                out.extend_from_slice(token.as_bytes());
                return;
            }
        }
    }
}

/// Whether byte `b` stands for itself in the byte-level alphabet: the printable bytes of
/// Latin-1 (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`).
const fn is_printable_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff)
}

/// The 68 bytes that are not printable, in ascending order: the byte-level alphabet writes the
/// n-th of them as the char U+0100 + n.
const SHIFTED_BYTES: [u8; 68] = {
    let mut table = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        if !is_printable_byte(b as u8) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    table
};

/// The byte that `c` stands for in the GPT-2 byte-level alphabet, if any.
fn byte_of_char(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 256 && is_printable_byte(u as u8) {
        Some(u as u8)
    } else if (256..256 + SHIFTED_BYTES.len() as u32).contains(&u) {
        Some(SHIFTED_BYTES[(u - 256) as usize])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let mut seen = [false; 256];
        for u in 0..512u32 {
            if let Some(b) = char::from_u32(u).and_then(byte_of_char) {
                assert!(!seen[b as usize], "byte {b} reached twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(byte_of_char('Ġ'), Some(b' '));
        assert_eq!(byte_of_char('Ċ'), Some(b'\n'));
        assert_eq!(byte_of_char('a'), Some(b'a'));
        assert_eq!(byte_of_char(' '), None);
    }
}
