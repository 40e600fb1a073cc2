//! `ChatTemplate::new` on an arbitrary template, then rendering a two-message conversation
//! with and without the generation prompt. Errors are fine; a panic, a hang (run with
//! `-timeout`) or an unbounded output (run with `-rss_limit_mb`) is a finding. Bytes after the
//! first NUL, if any, are the user message's content (so template syntax in content is tried).
#![no_main]

use libfuzzer_sys::fuzz_target;
use raven_text::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let (template, content) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"Hello, {{ who }}!"[..]),
    };
    let template = String::from_utf8_lossy(template);
    let content = String::from_utf8_lossy(content);
    let Ok(t) = ChatTemplate::new(&template, "<s>", "</s>") else {
        return;
    };
    let _ = format!("{t:?}");
    let messages = [
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", content.as_ref()),
    ];
    for add_generation_prompt in [false, true] {
        let _ = t.render(&messages, add_generation_prompt);
    }
    let _ = t.render(&messages[1..], true);
    let _ = t.render(&[], false);
});
