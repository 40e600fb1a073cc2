//! The streaming decoder: complete UTF-8 pieces whose concatenation is the full decode.

use raven_text::{StreamDecoder, TextError, Tokenizer};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-huginn")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_json(&fixture("tokenizer.json")).expect("fixture tokenizer loads")
}

/// The same tokenizer with a decoder that is not plain byte-level (a one-element sequence), so
/// the decoder takes its generic path.
fn tokenizer_with_generic_decoder() -> Tokenizer {
    let mut json: serde_json::Value =
        serde_json::from_str(&fixture("tokenizer.json")).expect("json");
    let byte_level = json["decoder"].take();
    json["decoder"] = serde_json::json!({"type": "Sequence", "decoders": [byte_level]});
    Tokenizer::from_json(&json.to_string()).expect("loads")
}

/// Streams `ids` one at a time; returns the pieces (flush included) after checking that none
/// is empty.
fn stream(dec: &mut StreamDecoder<'_>, ids: &[u32]) -> Vec<String> {
    let mut pieces = Vec::new();
    for &id in ids {
        if let Some(p) = dec.push(id).expect("push") {
            assert!(!p.is_empty());
            pieces.push(p);
        }
    }
    pieces.extend(dec.flush());
    pieces
}

const MULTI_BYTE: &str = "héllo → 世界 🐦‍⬛";

#[test]
fn multi_byte_characters_are_split_over_tokens_in_this_vocab() {
    // Otherwise the streaming tests below would prove nothing.
    let tok = tokenizer();
    let ids = tok.encode(MULTI_BYTE, false).expect("encode");
    let partial = ids
        .iter()
        .filter(|&&id| {
            tok.decode(&[id], false)
                .expect("decode")
                .contains('\u{FFFD}')
        })
        .count();
    assert!(
        partial >= 8,
        "only {partial} of {} tokens are partial characters",
        ids.len()
    );
}

#[test]
fn streams_whole_characters() {
    for tok in [tokenizer(), tokenizer_with_generic_decoder()] {
        let ids = tok.encode(MULTI_BYTE, false).expect("encode");
        let pieces = stream(&mut StreamDecoder::new(&tok), &ids);
        for p in &pieces {
            assert!(
                !p.contains('\u{FFFD}'),
                "piece {p:?} holds a broken character"
            );
        }
        assert!(pieces.len() > 3, "{pieces:?}");
        assert_eq!(pieces.concat(), MULTI_BYTE);
        assert_eq!(pieces.concat(), tok.decode(&ids, true).expect("decode"));
    }
}

#[test]
fn special_tokens_are_skipped_or_kept() {
    let tok = tokenizer();
    let text = "<|begin_text|><|begin_header|>user<|end_header|>\n\nSkål 🐦<|end_turn|>";
    let ids = tok.encode(text, false).expect("encode");
    let skipped = stream(&mut StreamDecoder::new(&tok), &ids).concat();
    assert_eq!(skipped, "user\n\nSkål 🐦");
    let kept = stream(&mut StreamDecoder::with_special_tokens(&tok), &ids).concat();
    assert_eq!(kept, text);
}

/// A small deterministic generator, so the test needs no crate.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % u64::from(n)) as u32
    }
}

#[test]
fn random_id_sequences_decode_exactly_like_decode() {
    // Random ids give bytes that never form valid UTF-8, incomplete tails, and special tokens
    // between the bytes of a character: the pieces must still add up to `decode`.
    let tok = tokenizer();
    let mut rng = Lcg(7);
    for round in 0..2000 {
        let len = 1 + rng.below(12) as usize;
        let ids: Vec<u32> = (0..len).map(|_| rng.below(1024)).collect();
        for skip in [true, false] {
            let mut dec = if skip {
                StreamDecoder::new(&tok)
            } else {
                StreamDecoder::with_special_tokens(&tok)
            };
            let got = stream(&mut dec, &ids).concat();
            let want = tok.decode(&ids, skip).expect("decode");
            assert_eq!(got, want, "round {round}, ids {ids:?}, skip {skip}");
        }
    }
}

#[test]
fn decoder_is_reusable_after_flush() {
    let tok = tokenizer();
    let ids = tok.encode("€", false).expect("encode");
    assert!(ids.len() > 1, "'€' should take several byte tokens");
    let mut dec = StreamDecoder::new(&tok);
    assert_eq!(dec.push(ids[0]).expect("push"), None);
    assert_eq!(dec.flush().as_deref(), Some("\u{FFFD}"));
    assert_eq!(dec.flush(), None);
    assert_eq!(stream(&mut dec, &ids).concat(), "€");
}

#[test]
fn unknown_id_is_an_error_and_changes_nothing() {
    for tok in [tokenizer(), tokenizer_with_generic_decoder()] {
        let ids = tok.encode("é!", false).expect("encode");
        let mut dec = StreamDecoder::new(&tok);
        let mut out = String::new();
        out.extend(dec.push(ids[0]).expect("push"));
        assert!(matches!(
            dec.push(5000),
            Err(TextError::UnknownTokenId { id: 5000, .. })
        ));
        for &id in &ids[1..] {
            out.extend(dec.push(id).expect("push"));
        }
        out.extend(dec.flush());
        assert_eq!(out, "é!");
    }
}

#[test]
fn long_stream_costs_constant_work_per_token() {
    // 200k tokens would take minutes if every push re-decoded the history.
    let tok = tokenizer();
    let ids = tok.encode(&MULTI_BYTE.repeat(20), false).expect("encode");
    let mut dec = StreamDecoder::new(&tok);
    let start = std::time::Instant::now();
    let mut bytes = 0;
    for _ in 0..(200_000 / ids.len() + 1) {
        for &id in &ids {
            bytes += dec.push(id).expect("push").map_or(0, |s| s.len());
        }
    }
    assert_eq!(bytes, MULTI_BYTE.len() * 20 * (200_000 / ids.len() + 1));
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}
