//! Text in, text out: chat templates and generation that streams complete UTF-8 and honours
//! stop strings, on top of [`Session::next_token`] ([`generate_text`]) or of the parallel
//! sampler ([`generate_text_parallel`]). The server and the Python bindings are adapters of
//! these; the command line and the C ABI stream tokens themselves.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use raven_text::{ChatMessage, ChatTemplate, StreamDecoder};

use crate::error::{RavenError, Result};
use crate::exit::Criterion;
use crate::model::Model;
use crate::parallel::{self, Counters, Observe, ParallelParams};
use crate::params::Param;
use crate::run::Threads;
use crate::session::{Next, Session, SessionParams, TokenStats};

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
    /// The parallel sampler's counters ([`generate_text_parallel`]; None for the plain
    /// sampler).
    pub parallel: Option<Counters>,
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

/// The text side of a generation, fed one token at a time: decoding to complete UTF-8, a
/// thinking model's reasoning kept apart, stop strings, and the pieces for the consumer. Both
/// samplers drive it ([`generate_text`], [`generate_text_parallel`]).
struct TextStream<'t> {
    dec: StreamDecoder<'t>,
    rdec: StreamDecoder<'t>,
    stops: Vec<String>,
    text: String,
    shown: usize,
    reasoning: String,
    tags: Option<(u32, u32)>,
    thinking: bool,
    tokens: Vec<u32>,
    stats: Vec<TokenStats>,
}

impl<'t> TextStream<'t> {
    /// `context` is what precedes the generation: a template may open the reasoning in it (the
    /// generation then starts inside it).
    fn new(tok: &'t raven_text::Tokenizer, stop: &[String], context: &[u32]) -> Self {
        let tags = think_tags(tok);
        let thinking = tags.is_some_and(|(open, close)| {
            context.iter().rposition(|&t| t == open) > context.iter().rposition(|&t| t == close)
        });
        TextStream {
            dec: StreamDecoder::new(tok),
            rdec: StreamDecoder::new(tok),
            stops: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            shown: 0,
            reasoning: String::new(),
            tags,
            thinking,
            tokens: Vec::new(),
            stats: Vec::new(),
        }
    }

    /// Takes a generated token and calls `on_piece` with the text that became safe to show.
    /// Returns why the generation ends (a stop string, or the consumer asked), or None to go on.
    fn push(
        &mut self,
        t: u32,
        st: TokenStats,
        on_piece: &mut impl FnMut(Piece<'_>) -> bool,
    ) -> Result<Option<Finish>> {
        self.tokens.push(t);
        if let Some((open, close)) = self.tags {
            if t == open || t == close || self.thinking {
                let mut piece = if t == open || t == close {
                    self.rdec.flush().unwrap_or_default()
                } else {
                    self.rdec.push(t)?.unwrap_or_default()
                };
                if t == close {
                    self.thinking = false;
                } else if t == open {
                    self.thinking = true;
                    piece.clear();
                }
                self.reasoning += &piece;
                self.stats.push(st);
                let go = on_piece(Piece {
                    text: &piece,
                    token: Some((t, self.stats.last().expect("pushed"))),
                    reasoning: true,
                });
                return Ok((!go).then_some(Finish::Consumer));
            }
        }
        self.text += &self.dec.push(t)?.unwrap_or_default();
        // A stop string may only start where the text not yet shown (or held back) begins.
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.shown.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        self.stats.push(st);
        let token = Some((t, self.stats.last().expect("pushed")));
        if let Some(end) = hit {
            self.text.truncate(end);
            let piece = &self.text[self.shown.min(end)..];
            on_piece(Piece {
                text: piece,
                token,
                reasoning: false,
            });
            self.shown = self.text.len();
            return Ok(Some(Finish::StopString));
        }
        let safe = self.text.len() - held_suffix(&self.text, &self.stops);
        let go = on_piece(Piece {
            text: &self.text[self.shown..safe],
            token,
            reasoning: false,
        });
        self.shown = safe;
        Ok((!go).then_some(Finish::Consumer))
    }

    /// Shows what was held back (unless a stop string ended the text) and returns the text,
    /// the reasoning, the tokens and their statistics.
    fn end(
        mut self,
        finish: Finish,
        on_piece: &mut impl FnMut(Piece<'_>) -> bool,
    ) -> (String, String, Vec<u32>, Vec<TokenStats>) {
        if finish != Finish::StopString {
            if let Some(rest) = self.dec.flush() {
                self.text += &rest;
            }
            if self.shown < self.text.len() {
                on_piece(Piece {
                    text: &self.text[self.shown..],
                    token: None,
                    reasoning: false,
                });
            }
        }
        if let Some(rest) = self.rdec.flush().filter(|r| !r.is_empty()) {
            on_piece(Piece {
                text: &rest,
                token: None,
                reasoning: true,
            });
            self.reasoning += &rest;
        }
        (self.text, self.reasoning, self.tokens, self.stats)
    }
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
    let mut ts = TextStream::new(tok, &o.stop, session.history());
    let mut finish = Finish::Length;
    while ts.tokens.len() < o.max_tokens {
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
        if let Some(f) = ts.push(t, st, &mut on_piece)? {
            finish = f;
            break;
        }
    }
    let (text, reasoning, tokens, stats) = ts.end(finish, &mut on_piece);
    Ok(TextOutput {
        text,
        reasoning,
        tokens,
        stats,
        finish,
        n_prompt: prompt.len(),
        prompt_ms,
        generate_ms: t1.elapsed().as_secs_f64() * 1e3,
        parallel: None,
    })
}

/// [`generate_text`] with the parallel sampler ([`crate::parallel::generate`]): `prompt` from
/// scratch (the sampler prefills it and keeps its own cache), the tokens streamed to
/// `on_piece` as their positions freeze, `params` and `pp` as the sampler takes them, `cancel`
/// raised from another thread ends the run with [`RavenError::Cancelled`]. A position keeps
/// iterating after its token is shown, so the statistics passed with the pieces have `steps`
/// 0; [`TextOutput::stats`] has each position's final count (and `exited_early` when the
/// latent-diff rule froze it before `exit.max_steps`), [`TextOutput::parallel`] the sampler's
/// counters. In the official mode the output is the official code's: it can exceed
/// `o.max_tokens` (every token frozen in the last step is kept) and keep a stop token and
/// what follows it.
#[allow(clippy::too_many_arguments)]
pub fn generate_text_parallel(
    model: &Model,
    params: &SessionParams,
    pp: &ParallelParams,
    prompt: &[u32],
    o: &TextOptions,
    threads: &Threads,
    cancel: Option<&AtomicBool>,
    mut on_piece: impl FnMut(Piece<'_>) -> bool,
) -> Result<TextOutput> {
    let tok = model.tokenizer()?;
    let stop_ids = if params.ignore_eos {
        Vec::new()
    } else {
        model.stop_tokens()
    };
    let mut ts = TextStream::new(tok, &o.stop, prompt);
    let t0 = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = t0;
    let mut ended = None;
    let mut failed = None;
    let obs = Observe {
        cancel,
        ..Default::default()
    };
    let res = parallel::generate(
        model,
        params,
        pp,
        prompt,
        o.max_tokens,
        &stop_ids,
        threads,
        &obs,
        |t| {
            let now = Instant::now();
            first.get_or_insert(now);
            let st = TokenStats {
                token: t,
                ms: (now - last).as_secs_f64() * 1e3,
                ..Default::default()
            };
            last = now;
            match ts.push(t, st, &mut on_piece) {
                Ok(None) => true,
                Ok(Some(f)) => {
                    ended = Some(f);
                    false
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        },
    );
    if let Some(e) = failed {
        return Err(e);
    }
    let out = res?;
    let finish = ended.unwrap_or(if out.stopped {
        Finish::StopToken
    } else if out.tokens.len() < o.max_tokens && out.counters.seq_len > params.context_for(model) {
        Finish::ContextFull
    } else {
        // max_tokens, or the sampler's step limit.
        Finish::Length
    });
    let (text, reasoning, tokens, mut stats) = ts.end(finish, &mut on_piece);
    let latent = matches!(params.exit.criterion, Criterion::LatentDiff(_));
    for (s, &r) in stats.iter_mut().zip(&out.recurrence) {
        s.steps = r as usize;
        s.exited_early = latent && s.steps < params.exit.max_steps;
    }
    let first = first.unwrap_or_else(Instant::now);
    Ok(TextOutput {
        text,
        reasoning,
        tokens,
        stats,
        finish,
        n_prompt: prompt.len(),
        prompt_ms: (first - t0).as_secs_f64() * 1e3,
        generate_ms: first.elapsed().as_secs_f64() * 1e3,
        parallel: Some(out.counters),
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
