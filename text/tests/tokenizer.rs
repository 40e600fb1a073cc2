//! The tokenizer against the tiny-huginn fixture (ids produced by Hugging Face `tokenizers`).

use raven_text::{TextError, Tokenizer};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-huginn")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_json(&fixture("tokenizer.json")).expect("fixture tokenizer loads")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&fixture("reference.json")).expect("reference.json parses")
}

fn prompts_and_ids() -> Vec<(String, Vec<u32>)> {
    let r = reference();
    let prompts = r["prompts"].as_array().expect("prompts");
    let ids = r["prompt_token_ids"].as_array().expect("prompt_token_ids");
    assert_eq!(prompts.len(), ids.len());
    prompts
        .iter()
        .zip(ids)
        .map(|(p, ids)| {
            let ids = ids
                .as_array()
                .expect("id list")
                .iter()
                .map(|i| i.as_u64().expect("id") as u32)
                .collect();
            (p.as_str().expect("prompt").to_owned(), ids)
        })
        .collect()
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
}

#[test]
fn encodes_reference_prompts_exactly() {
    let tok = tokenizer();
    let cases = prompts_and_ids();
    assert!(
        cases[1].0.contains("<|begin_text|>"),
        "prompt 1 writes special tokens literally"
    );
    for (prompt, want) in &cases {
        for add_special_tokens in [true, false] {
            let got = tok.encode(prompt, add_special_tokens).expect("encode");
            assert_eq!(&got, want, "prompt {prompt:?}");
        }
    }
}

#[test]
fn decode_round_trips() {
    let tok = tokenizer();
    let mut texts: Vec<String> = prompts_and_ids().into_iter().map(|(p, _)| p).collect();
    texts.extend(
        [
            "héllo → 世界 🐦‍⬛",
            "  leading and trailing spaces  ",
            "tabs\tand\nnewlines\r\n",
            "",
            "Ünïcödé ½ ∑ ∞ 中文 日本語 한국어 العربية",
        ]
        .map(String::from),
    );
    for text in &texts {
        let ids = tok.encode(text, true).expect("encode");
        assert_eq!(&tok.decode(&ids, false).expect("decode"), text);
    }
}

#[test]
fn skip_special_tokens_drops_them() {
    let tok = tokenizer();
    let (prompt, ids) = &prompts_and_ids()[1];
    let mut plain = prompt.clone();
    for special in [
        "<|begin_text|>",
        "<|begin_header|>",
        "<|end_header|>",
        "<|end_turn|>",
    ] {
        plain = plain.replace(special, "");
    }
    assert_eq!(tok.decode(ids, true).expect("decode"), plain);
    assert_eq!(&tok.decode(ids, false).expect("decode"), prompt);
}

#[test]
fn vocabulary_and_special_tokens_match_the_reference() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 1024);
    let r = reference();
    let specials = r["special_token_ids"]
        .as_object()
        .expect("special_token_ids");
    let mut want: Vec<u32> = specials
        .values()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect();
    want.sort_unstable();
    assert_eq!(tok.special_token_ids(), want);
    for (name, id) in specials {
        let id = id.as_u64().expect("id") as u32;
        assert_eq!(tok.token_to_id(name), Some(id), "{name}");
        assert_eq!(tok.id_to_token(id).as_deref(), Some(name.as_str()));
        assert!(tok.is_special(id));
    }
    assert!(!tok.is_special(862));
    assert_eq!(
        tok.token_to_id("Ġt"),
        tok.encode(" t", false).ok().map(|v| v[0])
    );
    assert_eq!(tok.id_to_token(1024), None);
}

#[test]
fn unknown_ids_are_errors_not_panics() {
    let tok = tokenizer();
    for id in [1024, 65535, u32::MAX] {
        match tok.decode(&[862, id], false) {
            Err(TextError::UnknownTokenId {
                id: got,
                vocab_size: 1024,
            }) => assert_eq!(got, id),
            other => panic!("id {id}: {other:?}"),
        }
    }
}

#[test]
fn malformed_json_is_an_error() {
    for bad in [
        "",
        "{",
        "{}",
        r#"{"model": {"type": "BPE"}}"#,
        r#"{"model": 3}"#,
    ] {
        assert!(Tokenizer::from_json(bad).is_err(), "{bad:?}");
    }
    let err = Tokenizer::from_json("{").expect_err("not json");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn sparse_ids_are_rejected_instead_of_allocated() {
    let mut json: serde_json::Value =
        serde_json::from_str(&fixture("tokenizer.json")).expect("json");
    json["added_tokens"] = serde_json::json!([]);
    json["model"]["vocab"]["far away"] = serde_json::json!(4_000_000_000u64);
    let err = Tokenizer::from_json(&json.to_string()).expect_err("sparse ids");
    assert!(err.to_string().contains("4000000000"), "{err}");
}
