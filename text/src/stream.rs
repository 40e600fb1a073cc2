//! [`StreamDecoder`]: token ids in, complete UTF-8 text pieces out.

use crate::tokenizer::IdKind;
use crate::{TextError, Tokenizer};

/// Turns a stream of token ids into text pieces that are always complete UTF-8.
///
/// With a byte-level BPE tokenizer a character of several bytes may be split over several
/// tokens; the decoder holds the incomplete bytes back until the character is complete. The
/// work per token is proportional to that token's bytes (O(1) amortised), never to the history.
/// Bytes that can never become valid UTF-8 are emitted as U+FFFD, exactly as
/// [`Tokenizer::decode`] does, so the concatenation of all pieces plus [`flush`](Self::flush)
/// equals `decode(all_ids, skip_special_tokens)`.
///
/// [`new`](Self::new) leaves special tokens out of the text (what a user should see); use
/// [`with_special_tokens`](Self::with_special_tokens) to keep them.
///
/// Tokenizers whose decoder is not byte-level (SentencePiece-style `Metaspace`, WordPiece, ...)
/// go through the `tokenizers` crate's own stream decoder, which re-decodes a short window of
/// recent ids per token.
pub struct StreamDecoder<'t> {
    tok: &'t Tokenizer,
    skip_special_tokens: bool,
    state: State<'t>,
}

enum State<'t> {
    /// Byte-level decoder: bytes of an incomplete character, at most 3.
    Bytes { pending: Vec<u8> },
    /// Any other decoder.
    Window {
        stream: tokenizers::tokenizer::DecodeStream<
            't,
            tokenizers::ModelWrapper,
            tokenizers::NormalizerWrapper,
            tokenizers::PreTokenizerWrapper,
            tokenizers::PostProcessorWrapper,
            tokenizers::DecoderWrapper,
        >,
        /// Ids pushed since the last emitted piece, for `flush`.
        held: Vec<u32>,
    },
}

impl<'t> StreamDecoder<'t> {
    /// A decoder that leaves special tokens (e.g. `<|end_turn|>`) out of the text.
    pub fn new(tok: &'t Tokenizer) -> Self {
        Self::with_options(tok, true)
    }

    /// A decoder that writes special tokens into the text, like `decode(ids, false)`.
    pub fn with_special_tokens(tok: &'t Tokenizer) -> Self {
        Self::with_options(tok, false)
    }

    fn with_options(tok: &'t Tokenizer, skip_special_tokens: bool) -> Self {
        let state = if tok.byte_pieces.is_some() {
            State::Bytes {
                pending: Vec::with_capacity(8),
            }
        } else {
            State::Window {
                stream: tok.inner().decode_stream(skip_special_tokens),
                held: Vec::new(),
            }
        };
        StreamDecoder {
            tok,
            skip_special_tokens,
            state,
        }
    }

    /// Feeds one token id. Returns the text that became complete, or `None` when nothing did
    /// (a partial character, or a skipped special token). An id with no token is an error and
    /// leaves the decoder as it was.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TextError> {
        let kind = self.tok.kind(id)?;
        if kind == IdKind::Special && self.skip_special_tokens {
            return Ok(None);
        }
        match &mut self.state {
            State::Bytes { pending } => {
                let piece = match &self.tok.byte_pieces {
                    Some(p) => p.piece(id),
                    None => &[],
                };
                pending.extend_from_slice(piece);
                Ok(take_complete(pending))
            }
            State::Window { stream, held } => {
                held.push(id);
                let out = stream
                    .step(id)
                    .map_err(|e| TextError::Decode(e.to_string()))?;
                if out.is_some() {
                    held.clear();
                }
                Ok(out.filter(|s| !s.is_empty()))
            }
        }
    }

    /// Returns whatever is held back (an incomplete character at the end of the stream) with
    /// invalid bytes replaced by U+FFFD, and empties the decoder's buffer.
    pub fn flush(&mut self) -> Option<String> {
        let out = match &mut self.state {
            State::Bytes { pending } => {
                let s = String::from_utf8_lossy(pending).into_owned();
                pending.clear();
                s
            }
            State::Window { stream, held } => {
                let s = self
                    .tok
                    .inner()
                    .decode(held, self.skip_special_tokens)
                    .unwrap_or_default();
                held.clear();
                *stream = self.tok.inner().decode_stream(self.skip_special_tokens);
                s
            }
        };
        (!out.is_empty()).then_some(out)
    }
}

/// Takes the longest prefix of `pending` that can be emitted: valid UTF-8, plus U+FFFD for each
/// invalid sequence that no further byte can repair. Leaves in `pending` only the bytes of an
/// incomplete character at the end (at most 3).
fn take_complete(pending: &mut Vec<u8>) -> Option<String> {
    let mut out = String::new();
    let mut held_from = pending.len();
    let mut chunks = pending.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        out.push_str(chunk.valid());
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        let is_last = chunks.peek().is_none();
        let incomplete = matches!(std::str::from_utf8(invalid), Err(e) if e.error_len().is_none());
        if is_last && incomplete {
            held_from = pending.len() - invalid.len();
        } else {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    pending.drain(..held_from);
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::take_complete;

    #[test]
    fn holds_back_only_an_incomplete_tail() {
        let mut p = "a€".as_bytes()[..3].to_vec(); // 'a' + 2 of the 3 bytes of '€'
        assert_eq!(take_complete(&mut p).as_deref(), Some("a"));
        assert_eq!(p.len(), 2);
        p.push("€".as_bytes()[2]);
        assert_eq!(take_complete(&mut p).as_deref(), Some("€"));
        assert!(p.is_empty());
    }

    #[test]
    fn invalid_bytes_become_replacement_chars_like_from_utf8_lossy() {
        for bytes in [
            &b"\xff"[..],
            b"a\x80b",
            b"\xe2\x82x",
            b"\xf0\x9f\x98",
            b"\xc3",
            b"\xed\xa0\x80",
        ] {
            let mut p = bytes.to_vec();
            let mut got = take_complete(&mut p).unwrap_or_default();
            got.push_str(&String::from_utf8_lossy(&p));
            assert_eq!(got, String::from_utf8_lossy(bytes), "{bytes:?}");
        }
    }
}
