//! The tokenizer on arbitrary input. The first byte picks the mode:
//! - 0: the rest, as (lossy) UTF-8 text, is encoded with the fixture's tokenizer; the ids must
//!   decode, and the stream decoder must give the same text as `decode`.
//! - 1: the rest, as u32 LE ids (top bit clear: reduced into the vocabulary plus a few ids past
//!   it), is decoded and streamed, with and without special tokens; unknown ids must be errors,
//!   and for known ids the stream must match `decode`.
//! - 2: the rest is a `tokenizer.json` given to `Tokenizer::from_json`; if it loads, a fixed
//!   text is encoded and its ids decoded and streamed.
#![no_main]

use std::cell::Cell;
use std::sync::{Once, OnceLock};

use libfuzzer_sys::fuzz_target;
use raven_text::{StreamDecoder, Tokenizer};

const FIXTURE_TOKENIZER: &str = include_str!("../../tests/fixtures/tiny-huginn/tokenizer.json");

thread_local! {
    /// Inside `Tokenizer::from_json`, which catches the `tokenizers` crate's panics on
    /// malformed files by design: those must not abort the fuzzer.
    static IN_FROM_JSON: Cell<bool> = const { Cell::new(false) };
}

fn fixture() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_json(FIXTURE_TOKENIZER).expect("fixture tokenizer"))
}

/// libfuzzer-sys's panic hook aborts at once, before any `catch_unwind`; let panics through
/// while `from_json` runs (its own `catch_unwind` turns them into errors; a panic escaping it
/// still aborts in libfuzzer-sys's wrapper).
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_FROM_JSON.with(Cell::get) {
                fuzzer_hook(info);
            }
        }));
    });
}

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut dec = if skip_special {
        StreamDecoder::new(tok)
    } else {
        StreamDecoder::with_special_tokens(tok)
    };
    let mut text = String::new();
    for &id in ids {
        match dec.push(id) {
            Ok(Some(piece)) => {
                assert!(!piece.is_empty());
                text.push_str(&piece);
            }
            Ok(None) => {}
            Err(_) => assert!(tok.id_to_token(id).is_none() || id as usize >= tok.vocab_size()),
        }
    }
    text.push_str(&dec.flush().unwrap_or_default());
    text
}

fn exercise(tok: &Tokenizer, ids: &[u32], check_stream: bool) {
    let valid = ids
        .iter()
        .all(|&id| (id as usize) < tok.vocab_size() && tok.id_to_token(id).is_some());
    for skip in [true, false] {
        let decoded = tok.decode(ids, skip);
        if valid {
            let decoded = decoded.expect("known ids decode");
            let streamed = stream(tok, ids, skip);
            if check_stream {
                assert_eq!(streamed, decoded, "ids {ids:?}, skip {skip}");
            }
        } else {
            assert!(decoded.is_err(), "unknown id decoded: {ids:?}");
            let _ = stream(tok, ids, skip);
        }
    }
    for &id in ids.iter().take(64) {
        let _ = (tok.is_special(id), tok.id_to_token(id));
    }
}

fuzz_target!(|data: &[u8]| {
    install_hook();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let tok = fixture();
            let text = String::from_utf8_lossy(rest);
            for add_special in [false, true] {
                let ids = tok.encode(&text, add_special).expect("encode");
                exercise(tok, &ids, true);
            }
        }
        1 => {
            let tok = fixture();
            let n = tok.vocab_size() as u32 + 8;
            let ids: Vec<u32> = rest
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .map(|x| if x & 0x8000_0000 == 0 { x % n } else { x })
                .collect();
            exercise(tok, &ids, true);
        }
        _ => {
            let Ok(json) = std::str::from_utf8(rest) else {
                return;
            };
            IN_FROM_JSON.with(|f| f.set(true));
            let loaded = Tokenizer::from_json(json);
            IN_FROM_JSON.with(|f| f.set(false));
            let Ok(tok) = loaded else { return };
            let _ = (
                tok.vocab_size(),
                tok.special_token_ids(),
                format!("{tok:?}"),
            );
            for text in ["", "Hello world, <|end|> abc\n\t1234 ", "héllo 🦀"] {
                if let Ok(ids) = tok.encode(text, true) {
                    exercise(&tok, &ids, false);
                }
            }
            let ids: Vec<u32> = (0..tok.vocab_size().min(64) as u32 + 2).collect();
            exercise(&tok, &ids, false);
        }
    }
});
