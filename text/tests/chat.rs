//! Chat templates: the fixture's template, Python-Jinja compatibility, and hostile templates.
//! Expected strings were produced with Python's jinja2 3.1 configured as `transformers` does
//! (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`).

use std::time::{Duration, Instant};

use raven_text::{ChatMessage, ChatTemplate, TextError};

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-huginn")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_template() -> ChatTemplate {
    let config: serde_json::Value =
        serde_json::from_str(&fixture("tokenizer_config.json")).expect("json");
    let s = |k: &str| config[k].as_str().expect(k).to_owned();
    ChatTemplate::new(&s("chat_template"), &s("bos_token"), &s("eos_token")).expect("compiles")
}

#[test]
fn chat_template_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

#[test]
fn fixture_template_renders_the_reference_chat_prompt() {
    let t = fixture_template();
    let user = [ChatMessage::new("user", "  What is 12 plus 30?\n")];
    let prompt = t.render(&user, true).expect("render");
    let reference: serde_json::Value =
        serde_json::from_str(&fixture("reference.json")).expect("json");
    assert_eq!(prompt, reference["prompts"][1].as_str().expect("prompt 1"));
    assert_eq!(
        prompt,
        "<|begin_text|><|begin_header|>user<|end_header|>\n\nWhat is 12 plus 30?<|end_turn|>\
         <|begin_header|>Huginn<|end_header|>\n\n"
    );
    assert_eq!(
        t.render(&user, false).expect("render"),
        "<|begin_text|><|begin_header|>user<|end_header|>\n\nWhat is 12 plus 30?<|end_turn|>"
    );
}

#[test]
fn fixture_template_renders_a_conversation() {
    let t = fixture_template();
    let chat = [
        ChatMessage::new("system", "You are Huginn."),
        ChatMessage::new("user", "Hi"),
        ChatMessage::new("Huginn", "Hello! "),
    ];
    assert_eq!(
        t.render(&chat, true).expect("render"),
        "<|begin_text|><|begin_header|>system<|end_header|>\n\nYou are Huginn.<|end_turn|>\
         <|begin_header|>user<|end_header|>\n\nHi<|end_turn|>\
         <|begin_header|>Huginn<|end_header|>\n\nHello!<|end_turn|>\
         <|begin_header|>Huginn<|end_header|>\n\n"
    );
}

#[test]
fn whitespace_control_and_python_methods_match_transformers() {
    let source = "{{ bos_token }}
{% for message in messages %}
    {% if message['role'] == 'system' %}
<<SYS>>{{ message['content'].strip() }}<</SYS>>
    {% elif message.role.startswith('us') %}
[INST] {{ message.content | trim }} [/INST]
    {% else %}
{{ message.content.rstrip() }}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}ASSISTANT:{% endif %}";
    let t = ChatTemplate::new(source, "<s>", "</s>").expect("compiles");
    let chat = [
        ChatMessage::new("system", "  Be brief.\n"),
        ChatMessage::new("user", " Hi there "),
        ChatMessage::new("assistant", "Hello!  \n"),
    ];
    assert_eq!(
        t.render(&chat, true).expect("render"),
        "<s>\n<<SYS>>Be brief.<</SYS>>\n[INST] Hi there [/INST]\nHello!</s>\nASSISTANT:"
    );
}

#[test]
fn python_string_and_dict_methods() {
    let source = "{% set d = {'a': 1} %}{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}\
        |{{ d.get('a') }}|{{ d.get('z', 'none') }}|{{ '  x y  z '.split()|join(',') }}\
        |{{ 'a,b,,c'.split(',')|join('/') }}|{{ 'a b c'.split(None, 1)|join('/') }}\
        |{{ 'xxhixx'.strip('x') }}|{{ 'Hello'.upper() }}{{ 'Hello'.lower() }}\
        |{{ 'aXbXc'.replace('X', '-') }}|{{ 'yes' if 'abc'.endswith(('z', 'c')) }}\
        |{{ 'hello world'.title() }}|{{ 'hello World'.capitalize() }}|{{ 'ab'.replace('', '.') }}\
        |{{ '  a  '.lstrip() }}.";
    let t = ChatTemplate::new(source, "", "").expect("compiles");
    assert_eq!(
        t.render(&[], false).expect("render"),
        "a=1;|1|none|x,y,z|a/b//c|a/b c|hi|HELLOhello|a-b-c|yes|Hello World|Hello world|.a.b.|a  ."
    );
}

#[test]
fn raise_exception_reports_the_templates_message() {
    let t = ChatTemplate::new(
        "{% if messages|length == 0 %}{{ raise_exception('no messages') }}{% endif %}",
        "",
        "",
    )
    .expect("compiles");
    let err = t.render(&[], false).expect_err("raises");
    assert!(matches!(err, TextError::TemplateRender(_)), "{err:?}");
    assert!(err.to_string().contains("no messages"), "{err}");
}

#[test]
fn syntax_errors_are_reported() {
    for bad in ["{% for %}", "{{ x ", "{% if x %}"] {
        let err = ChatTemplate::new(bad, "", "").expect_err(bad);
        assert!(matches!(err, TextError::TemplateSyntax(_)), "{err:?}");
    }
}

/// Compiles and renders `source` on a thread with a 512 KiB stack (an iOS secondary thread),
/// returning the outcome and how long it took. A stack overflow would abort the test binary.
fn render_hostile(source: &'static str) -> (Result<String, TextError>, Duration) {
    std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || {
            let start = Instant::now();
            let out = ChatTemplate::new(source, "<s>", "</s>")
                .and_then(|t| t.render(&[ChatMessage::new("user", "hi")], true));
            (out, start.elapsed())
        })
        .expect("spawn")
        .join()
        .expect("no panic")
}

#[test]
fn hostile_templates_fail_promptly() {
    let hostile = [
        // Nested loops: 10^12 iterations.
        "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}\
         x{% endfor %}{% endfor %}{% endfor %}",
        // Loops over a list grown by string repetition.
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}\
         {% endfor %}{{ ns.s|length }}",
        // Huge range and huge strings.
        "{% for i in range(1000000000000) %}x{% endfor %}",
        "{{ 'x' * 1000000000000 }}",
        "{{ ('x' * 100000) * 100000 }}",
        // Python methods that square the size of their input.
        "{% set s = 'ab' * 1000 %}{{ s.replace('', s).replace('', s) }}",
        "{% set s = 'a ' * 100000 %}{% for i in range(10000) %}{{ s.split()|length }}{% endfor %}",
        // Unbounded recursion.
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% for m in messages recursive %}{{ loop([m]) }}{% endfor %}",
        // Nesting that would overflow a parser's stack.
        "{{ ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((\
         ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((\
         ((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((1 }}",
        // No file system.
        "{% include '/etc/passwd' %}",
        "{% import '/etc/passwd' as x %}",
        "{% extends '/etc/passwd' %}",
    ];
    for source in hostile {
        let (out, took) = render_hostile(source);
        if std::env::var_os("SHOW_HOSTILE").is_some() {
            eprintln!("{took:?} {:?}", out.as_ref().map(|s| s.len()));
        }
        assert!(
            out.is_err(),
            "{source}: rendered {:?}",
            out.map(|s| s.len())
        );
        assert!(took < Duration::from_secs(5), "{source}: took {took:?}");
    }
}

#[test]
fn budget_errors_say_what_happened() {
    let (out, _) = render_hostile(
        "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}",
    );
    let msg = out.expect_err("out of fuel").to_string();
    assert!(msg.contains("budget"), "{msg}");
    let (out, _) = render_hostile("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    let msg = out.expect_err("too deep").to_string();
    assert!(msg.contains("recursion") || msg.contains("deeper"), "{msg}");
}

#[test]
fn long_real_conversations_fit_the_budget() {
    let t = fixture_template();
    let turn = "A reasonably long message about ravens, 🐦‍⬛, and thought. ".repeat(200);
    let chat: Vec<ChatMessage> = (0..200usize)
        .map(|i| {
            ChatMessage::new(
                if i.is_multiple_of(2) {
                    "user"
                } else {
                    "Huginn"
                },
                turn.as_str(),
            )
        })
        .collect();
    let out = t
        .render(&chat, true)
        .expect("a 2.4 MB conversation renders");
    assert!(out.len() > 200 * turn.trim().len());
}
