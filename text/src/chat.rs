//! [`ChatTemplate`]: a Hugging Face chat template (Jinja) rendered in a bounded sandbox.
//!
//! Chat templates come with model files, so they are untrusted code (CVE-2024-34359 was a
//! template that reached Python's file and process functions through Jinja). MiniJinja has no
//! access to files, processes or host objects; on top of that this module registers no template
//! loader (so `{% include %}`, `{% import %}` and `{% extends %}` cannot reach anything), and
//! bounds every render by a fuel budget (instructions and bytes allocated) and a recursion
//! limit, so a hostile template errors out promptly instead of hanging or exhausting memory.

use std::collections::BTreeMap;

use minijinja::value::{from_args, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State};

use crate::TextError;

/// Fuel for one render: about one unit per VM instruction and per 64 bytes allocated, so this
/// bounds a render to roughly a million instructions and 64 MiB. A real chat template uses a
/// few hundred units per message.
const FUEL: u64 = 1_000_000;

/// Recursion limit of the template VM (macro calls cost more than one level). Low enough that a
/// recursive macro stops well inside a 512 KiB thread stack (iOS secondary threads), high
/// enough for any real chat template.
const RECURSION_LIMIT: usize = 100;

/// The template's name in error messages.
const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who speaks: `"system"`, `"user"`, `"assistant"` (Huginn's template calls it `"Huginn"`).
    pub role: String,
    /// What they say.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template from `tokenizer_config.json`'s `chat_template` (Jinja), compiled once and
/// rendered in a sandbox.
///
/// Rendering follows `transformers`' `apply_chat_template`: `trim_blocks` and `lstrip_blocks`
/// on, the variables `messages`, `add_generation_prompt`, `bos_token` and `eos_token`, a
/// `raise_exception(message)` function, and the Python string and dict methods templates
/// commonly call (`strip`, `startswith`, `split`, `items`, `get`, ...).
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token` and `eos_token` are the strings the template sees as
    /// `bos_token` and `eos_token` (from `tokenizer_config.json`).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TextError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TextError::TemplateSyntax(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.add_function("raise_exception", raise_exception);
        env.set_unknown_method_callback(python_method);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| TextError::TemplateSyntax(describe(&e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders the conversation. With `add_generation_prompt` the template appends the header
    /// that makes the model answer as the assistant.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TextError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from(BTreeMap::from([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ]))
            })
            .collect();
        let ctx = Value::from(BTreeMap::from([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ]));
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TextError::TemplateRender(describe(&e)))?;
        template
            .render(ctx)
            .map_err(|e| TextError::TemplateRender(describe(&e)))
    }
}

/// An error message that says what the user can do about a budget error.
fn describe(e: &Error) -> String {
    match e.kind() {
        ErrorKind::OutOfFuel => format!(
            "{e}: the template exceeded its budget of {FUEL} steps (a loop too long or an output \
             too large); the template is broken or hostile"
        ),
        ErrorKind::InvalidOperation if e.to_string().contains("recursion") => format!(
            "{e}: the template nests deeper than {RECURSION_LIMIT} levels; the template is broken \
             or hostile"
        ),
        ErrorKind::SyntaxError if e.to_string().contains("recursion") => {
            format!("{e}: the template nests too deeply; the template is broken or hostile")
        }
        _ => e.to_string(),
    }
}

/// `raise_exception(message)`, which `transformers` provides to templates.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python methods of `str` and `dict` that chat templates written for Python's Jinja call.
fn python_method(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::String => {
            let s = value.as_str().unwrap_or_default();
            string_method(state, s, method, args)
        }
        ValueKind::Map => map_method(state, value, method, args),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn string_method(state: &mut State, s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    Ok(match method {
        "strip" | "lstrip" | "rstrip" => {
            let (chars,): (Option<&str>,) = from_args(args)?;
            let strip = |c: char| match chars {
                Some(set) => set.contains(c),
                None => c.is_whitespace(),
            };
            Value::from(match method {
                "strip" => s.trim_matches(strip),
                "lstrip" => s.trim_start_matches(strip),
                _ => s.trim_end_matches(strip),
            })
        }
        "startswith" | "endswith" => {
            let (affix,): (Value,) = from_args(args)?;
            let test = |a: &str| {
                if method == "startswith" {
                    s.starts_with(a)
                } else {
                    s.ends_with(a)
                }
            };
            match affix.as_str() {
                Some(a) => Value::from(test(a)),
                None => {
                    let mut any = false;
                    for a in affix.try_iter()? {
                        any |= test(a.as_str().ok_or_else(|| {
                            Error::new(
                                ErrorKind::InvalidOperation,
                                format!("{method} takes a string or a tuple of strings"),
                            )
                        })?);
                    }
                    Value::from(any)
                }
            }
        }
        "upper" | "lower" => {
            let () = from_args(args)?;
            state.consume_fuel(s.len() as u64 / 16)?;
            Value::from(if method == "upper" {
                s.to_uppercase()
            } else {
                s.to_lowercase()
            })
        }
        "title" | "capitalize" => {
            let () = from_args(args)?;
            state.apply_filter(method, &[Value::from(s)])?
        }
        "split" => {
            let (sep, maxsplit): (Option<&str>, Option<i64>) = from_args(args)?;
            let limit = match maxsplit {
                Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX).saturating_add(1),
                _ => usize::MAX,
            };
            let parts: Vec<Value> = match sep {
                Some("") => {
                    return Err(Error::new(ErrorKind::InvalidOperation, "empty separator"));
                }
                Some(sep) => s.splitn(limit, sep).map(Value::from).collect(),
                None => split_whitespace(s, limit).map(Value::from).collect(),
            };
            state.consume_fuel(parts.len() as u64)?;
            Value::from(parts)
        }
        "replace" => {
            let (old, new, count): (&str, &str, Option<i64>) = from_args(args)?;
            let limit = match count {
                Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX),
                _ => usize::MAX,
            };
            // Charge for the result before building it: `s.replace("", s)` squares the size.
            let hits = if old.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(old).count()
            }
            .min(limit);
            let size =
                (s.len() as u64).saturating_add((hits as u64).saturating_mul(new.len() as u64));
            state.consume_fuel(size / 64)?;
            Value::from(s.replacen(old, new, limit))
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}

/// Python's `str.split()` without a separator: runs of whitespace separate, at most `limit`
/// parts, the last one holding the rest (its leading whitespace removed, its trailing kept).
fn split_whitespace(s: &str, limit: usize) -> impl Iterator<Item = &str> {
    let mut rest = s.trim_start();
    let mut n = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        n += 1;
        if n == limit {
            return Some(std::mem::take(&mut rest));
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let part = &rest[..end];
        rest = rest[end..].trim_start();
        Some(part)
    })
}

fn map_method(
    state: &mut State,
    map: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    Ok(match method {
        "items" => {
            let () = from_args(args)?;
            state.apply_filter("items", std::slice::from_ref(map))?
        }
        "keys" => {
            let () = from_args(args)?;
            Value::from(map.try_iter()?.collect::<Vec<_>>())
        }
        "values" => {
            let () = from_args(args)?;
            let values: Result<Vec<_>, _> = map.try_iter()?.map(|k| map.get_item(&k)).collect();
            Value::from(values?)
        }
        "get" => {
            let (key, default): (Value, Option<Value>) = from_args(args)?;
            match map.get_item(&key) {
                Ok(v) if !v.is_undefined() => v,
                _ => default.unwrap_or(Value::from(())),
            }
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    })
}
