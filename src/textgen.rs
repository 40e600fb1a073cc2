//! Text in, text out: chat templates and generation that streams complete UTF-8 and honours
//! stop strings, on top of [`Session::next_token`]. The server and the Python bindings are
//! adapters of [`generate_text`]; the command line and the C ABI stream tokens themselves.

use std::time::Instant;

use raven_text::{ChatMessage, ChatTemplate, StreamDecoder};

use crate::error::{RavenError, Result};
use crate::model::Model;
use crate::params::Param;
use crate::session::{Next, Session, TokenStats};

impl Model {
    /// Renders `messages` with the model's chat template (`tokenizer.chat_template`), ending
    /// with the prompt of the assistant's turn; without a template, `role: content` lines and
    /// `assistant: `.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let tok = self.tokenizer()?;
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        match &self.vocab.chat_template {
            Some(src) => {
                let t = ChatTemplate::new(
                    src,
                    &name(self.vocab.bos),
                    &name(self.vocab.eos.first().copied()),
                )
                .map_err(|e| RavenError::Model {
                    path: self.name().to_string(),
                    msg: format!("its chat template does not compile: {e}"),
                })?;
                Ok(t.render(messages, true)?)
            }
            None => {
                let mut s = String::new();
                for m in messages {
                    s += &format!("{}: {}\n", m.role, m.content);
                }
                s += "assistant: ";
                Ok(s)
            }
        }
    }
}

/// Options of [`generate_text`].
#[derive(Clone, Debug, Default)]
pub struct TextOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Strings that end the generation; the text stops before the first one found.
    pub stop: Vec<String>,
}

/// Why [`generate_text`] stopped (OpenAI's `finish_reason`: `stop` for the first two,
/// `length` for the next two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model sampled a stop token.
    StopToken,
    /// The text reached one of the stop strings.
    StopString,
    /// `max_tokens` were generated.
    Length,
    /// The context is full.
    ContextFull,
    /// The consumer of the pieces asked to stop.
    Consumer,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn openai(self) -> &'static str {
        match self {
            Finish::StopToken | Finish::StopString | Finish::Consumer => "stop",
            Finish::Length | Finish::ContextFull => "length",
        }
    }
}

/// What [`generate_text`] produced.
#[derive(Clone, Debug)]
pub struct TextOutput {
    /// The text, without the stop string that ended it.
    pub text: String,
    /// A thinking model's reasoning (the text between `<think>` and `</think>`); empty for
    /// other models.
    pub reasoning: String,
    /// Tokens fed after the prompt (a stop token is not among them).
    pub tokens: Vec<u32>,
    /// Statistics of each of them.
    pub stats: Vec<TokenStats>,
    /// Why generation stopped.
    pub finish: Finish,
    /// Prompt tokens fed.
    pub n_prompt: usize,
    /// Milliseconds feeding the prompt.
    pub prompt_ms: f64,
    /// Milliseconds generating.
    pub generate_ms: f64,
}

impl TextOutput {
    /// Mean core iterations per generated token (0 when none).
    pub fn mean_steps(&self) -> f64 {
        let n = self.stats.len();
        if n == 0 {
            return 0.0;
        }
        self.stats.iter().map(|s| s.steps).sum::<usize>() as f64 / n as f64
    }
    /// Tokens whose exit criterion stopped them early.
    pub fn exited_early(&self) -> usize {
        self.stats.iter().filter(|s| s.exited_early).count()
    }
    /// Tokens the latency budget capped.
    pub fn budget_capped(&self) -> usize {
        self.stats.iter().filter(|s| s.budget_capped).count()
    }
}

/// Text is shown only once no stop string can begin in it: the length of the longest suffix of
/// `text` that is a proper prefix of a stop string.
fn held_suffix(text: &str, stops: &[String]) -> usize {
    let mut held = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > held && text.ends_with(&s[..i]) {
                held = i;
            }
        }
    }
    held
}

/// One piece of generated text for [`generate_text`]'s consumer.
#[derive(Clone, Copy, Debug)]
pub struct Piece<'a> {
    /// Text that became safe to show (complete UTF-8, never a part of a stop string; it may be
    /// empty).
    pub text: &'a str,
    /// The token fed and its statistics; None for the final flush of held-back text.
    pub token: Option<(u32, &'a TokenStats)>,
    /// The text is the model's reasoning (between `<think>` and `</think>` of a thinking model,
    /// e.g. Ouro-Thinking), not its answer.
    pub reasoning: bool,
}

/// The special tokens that open and close a thinking model's reasoning, when the tokenizer
/// has both (`<think>`, `</think>`).
pub fn think_tags(tok: &raven_text::Tokenizer) -> Option<(u32, u32)> {
    let id = |s: &str| tok.token_to_id(s).filter(|&i| tok.is_special(i));
    Some((id("<think>")?, id("</think>")?))
}

/// Feeds `prompt` (appended to the session's context; empty to continue from its logits) and
/// generates up to `o.max_tokens` tokens, ending at a stop token, a stop string, or a full
/// context. `on_piece` is called for each generated token with the text that became safe to
/// show and once at the end with what was held back (`token` None); it returns false to stop.
/// The answer pieces concatenate to [`TextOutput::text`]. A thinking model's reasoning (from
/// `<think>`, or from a prompt whose template opened it, to `</think>`) goes to
/// [`TextOutput::reasoning`] in pieces flagged `reasoning`; stop strings apply to the answer.
pub fn generate_text(
    session: &mut Session,
    prompt: &[u32],
    o: &TextOptions,
    mut on_piece: impl FnMut(Piece<'_>) -> bool,
) -> Result<TextOutput> {
    let t0 = Instant::now();
    if !prompt.is_empty() {
        session.feed_prompt(prompt)?;
    } else if session.logits().is_empty() {
        return Err(RavenError::param(
            Param::Prompt,
            "is empty and the session has nothing to continue from",
        ));
    }
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let model = session.model().clone();
    let tok = model.tokenizer()?;
    let stop_ids = session.stop_tokens();
    let stops: Vec<String> = o.stop.iter().filter(|s| !s.is_empty()).cloned().collect();
    let mut dec = StreamDecoder::new(tok);
    let mut text = String::new();
    let mut shown = 0usize;
    let mut tokens = Vec::new();
    let mut stats = Vec::new();
    let mut finish = Finish::Length;
    let tags = think_tags(tok);
    let mut reasoning = String::new();
    let mut rdec = StreamDecoder::new(tok);
    // A template may open the reasoning in the prompt (the generation starts inside it).
    let mut thinking = tags.is_some_and(|(open, close)| {
        let h = session.history();
        h.iter().rposition(|&t| t == open) > h.iter().rposition(|&t| t == close)
    });
    while tokens.len() < o.max_tokens {
        let (t, st) = match session.next_token(&stop_ids)? {
            Next::Token(t, st) => (t, st),
            Next::Stop(_) => {
                finish = Finish::StopToken;
                break;
            }
            Next::ContextFull => {
                finish = Finish::ContextFull;
                break;
            }
        };
        tokens.push(t);
        if let Some((open, close)) = tags {
            if t == open || t == close || thinking {
                let mut piece = if t == open || t == close {
                    rdec.flush().unwrap_or_default()
                } else {
                    rdec.push(t)?.unwrap_or_default()
                };
                if t == close {
                    thinking = false;
                } else if t == open {
                    thinking = true;
                    piece.clear();
                }
                reasoning += &piece;
                stats.push(st);
                let go = on_piece(Piece {
                    text: &piece,
                    token: Some((t, stats.last().expect("pushed"))),
                    reasoning: true,
                });
                if !go {
                    finish = Finish::Consumer;
                    break;
                }
                continue;
            }
        }
        text += &dec.push(t)?.unwrap_or_default();
        // A stop string may only start where the text not yet shown (or held back) begins.
        let mut from = shown.saturating_sub(stops.iter().map(|s| s.len()).max().unwrap_or(0));
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = stops
            .iter()
            .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        let go = if let Some(end) = hit {
            text.truncate(end);
            finish = Finish::StopString;
            let piece = text[shown.min(end)..].to_string();
            shown = text.len();
            stats.push(st);
            on_piece(Piece {
                text: &piece,
                token: Some((t, stats.last().expect("pushed"))),
                reasoning: false,
            });
            break;
        } else {
            let safe = text.len() - held_suffix(&text, &stops);
            let piece = text[shown..safe].to_string();
            shown = safe;
            stats.push(st);
            on_piece(Piece {
                text: &piece,
                token: Some((t, stats.last().expect("pushed"))),
                reasoning: false,
            })
        };
        if !go {
            finish = Finish::Consumer;
            break;
        }
    }
    if finish != Finish::StopString {
        if let Some(rest) = dec.flush() {
            text += &rest;
        }
        if shown < text.len() {
            on_piece(Piece {
                text: &text[shown..],
                token: None,
                reasoning: false,
            });
        }
    }
    if let Some(rest) = rdec.flush().filter(|r| !r.is_empty()) {
        on_piece(Piece {
            text: &rest,
            token: None,
            reasoning: true,
        });
        reasoning += &rest;
    }
    Ok(TextOutput {
        text,
        reasoning,
        tokens,
        stats,
        finish,
        n_prompt: prompt.len(),
        prompt_ms,
        generate_ms: t1.elapsed().as_secs_f64() * 1e3,
    })
}

#[cfg(test)]
mod tests {
    use super::held_suffix;

    #[test]
    fn holds_back_what_could_start_a_stop_string() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(held_suffix("the end", &s(&["\n\n"])), 0);
        assert_eq!(held_suffix("the end\n", &s(&["\n\n"])), 1);
        assert_eq!(held_suffix("ab", &s(&["bcd", "abx"])), 2);
        assert_eq!(held_suffix("xé", &s(&["éa"])), "é".len());
        assert_eq!(held_suffix("anything", &s(&[])), 0);
    }
}
