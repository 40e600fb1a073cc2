//! `ggml_vocab`: the GGUF `gpt2` tokenizer arrays from tokenizer.json.

use raven_text::{ggml_vocab, GgmlVocab, TextError, Tokenizer};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-huginn")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn fixture_vocab_has_every_token_typed_and_merges_in_order() {
    let json = fixture("tokenizer.json");
    let v = ggml_vocab(&json).expect("vocab");
    assert_eq!(v.tokens.len(), 1024);
    assert_eq!(v.token_types.len(), 1024);

    let tok = Tokenizer::from_json(&json).expect("tokenizer");
    let special = tok.special_token_ids();
    assert_eq!(special, (1014..1024).collect::<Vec<u32>>());
    for id in 0..1024u32 {
        assert_eq!(Some(&v.tokens[id as usize]), tok.id_to_token(id).as_ref());
        let want = if special.contains(&id) {
            GgmlVocab::CONTROL
        } else {
            GgmlVocab::NORMAL
        };
        assert_eq!(v.token_types[id as usize], want, "id {id}");
    }
    assert_eq!(v.tokens[1014], "<|begin_text|>");
    assert_eq!(v.tokens[220], "Ġ");

    let root: serde_json::Value = serde_json::from_str(&json).expect("json");
    let merges = root["model"]["merges"].as_array().expect("merges");
    assert!(!v.merges.is_empty());
    assert_eq!(v.merges.len(), merges.len());
    for (got, m) in v.merges.iter().zip(merges) {
        let want = format!(
            "{} {}",
            m[0].as_str().expect("a"),
            m[1].as_str().expect("b")
        );
        assert_eq!(got, &want);
    }
    assert_eq!(v.merges[0], "Ġ t");
}

/// A small byte-level BPE tokenizer.json for edge cases.
fn small(vocab: serde_json::Value, merges: serde_json::Value, added: serde_json::Value) -> String {
    serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab,
                  "merges": merges}
    })
    .to_string()
}

fn added(id: u32, content: &str, special: bool) -> serde_json::Value {
    serde_json::json!({"id": id, "content": content, "special": special, "single_word": false,
                       "lstrip": false, "rstrip": false, "normalized": false})
}

#[test]
fn unknown_and_added_tokens_are_typed() {
    let json = small(
        serde_json::json!({"<unk>": 0, "a": 1, "b": 2, "ab": 3}),
        serde_json::json!(["a b"]),
        serde_json::json!([
            added(4, "<|im_start|>", false),
            added(5, "<tool>", false),
            added(6, "<eos>", true)
        ]),
    );
    let mut v = ggml_vocab(&json).expect("vocab");
    assert_eq!(
        v.tokens,
        ["<unk>", "a", "b", "ab", "<|im_start|>", "<tool>", "<eos>"]
    );
    assert_eq!(v.token_types, [2, 1, 1, 1, 3, 4, 3]);
    assert_eq!(v.merges, ["a b"]);
    v.pad_to(9);
    assert_eq!(v.tokens[7..], ["[PAD7]", "[PAD8]"]);
    assert_eq!(v.token_types[7..], [5, 5]);
    v.pad_to(4);
    assert_eq!(v.tokens.len(), 9);
}

#[test]
fn ids_without_a_token_become_unused_pads() {
    let json = small(
        serde_json::json!({"<unk>": 0, "a": 1, "b": 2, "ab": 4}),
        serde_json::json!([["a", "b"]]),
        serde_json::json!([]),
    );
    let v = ggml_vocab(&json).expect("vocab");
    assert_eq!(v.tokens, ["<unk>", "a", "b", "[PAD3]", "ab"]);
    assert_eq!(v.token_types, [2, 1, 1, 5, 1]);
}

#[test]
fn added_tokens_whose_declared_id_is_not_honoured_are_errors() {
    // `tokenizers` numbers added tokens after the vocabulary's count (4 here), not at their
    // declared id, so "<eos>" would collide with "ab".
    let json = small(
        serde_json::json!({"<unk>": 0, "a": 1, "b": 2, "ab": 4}),
        serde_json::json!(["a b"]),
        serde_json::json!([added(5, "<eos>", true)]),
    );
    let err = ggml_vocab(&json).expect_err("id mismatch");
    assert!(err.to_string().contains("<eos>"), "{err}");
    assert!(Tokenizer::from_json(&json).is_err());
}

#[test]
fn merges_that_gguf_cannot_hold_are_errors() {
    let json = small(
        serde_json::json!({"a": 0, "b c": 1, "ab c": 2}),
        serde_json::json!([["a", "b c"]]),
        serde_json::json!([]),
    );
    let err = ggml_vocab(&json).expect_err("space in merge");
    assert!(err.to_string().contains("merges[0]"), "{err}");
}

#[test]
fn tokenizers_panic_on_a_merge_longer_than_every_token_is_an_error() {
    // tokenizers 0.23 indexes past a buffer sized by the longest vocabulary token.
    let json = small(
        serde_json::json!({"a": 0, "bcd": 1}),
        serde_json::json!([["a", "bcd"]]),
        serde_json::json!([]),
    );
    assert!(matches!(
        Tokenizer::from_json(&json),
        Err(TextError::Load(_))
    ));
    assert!(ggml_vocab(&json).is_err());
}

#[test]
fn non_bpe_models_are_unsupported() {
    let json = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}
    })
    .to_string();
    assert!(matches!(
        ggml_vocab(&json),
        Err(TextError::UnsupportedModel(m)) if m == "WordLevel"
    ));
    assert!(matches!(ggml_vocab("[1, 2]"), Err(TextError::Malformed(_))));
    assert!(matches!(ggml_vocab("{"), Err(TextError::Json(_))));
}
