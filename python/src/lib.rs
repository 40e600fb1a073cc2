//! Python bindings of Raven: the native module `raven._raven`, wrapped by the `raven` package
//! (python/raven/__init__.py adds numpy arrays for logits).
//!
//! - `Model(path, mmap=True)`: a loaded GGUF model, shared by any number of sessions.
//! - `Model.session(...)`: a [`raven::Session`] with Raven's controls (iterations, exit
//!   criterion, latency budget, KV-cache strategy, sampling); `generate` returns a
//!   `Generation` (text, tokens, iterations per token, finish reason), `stream` an iterator of
//!   `Piece`s.
//! - `tokenize`, `detokenize`, `render_chat`, and `_logits` (`raven logits` as bytes);
//!   `convert` (`raven convert`).
//!
//! Every call that computes releases the GIL, so Python threads generate in parallel. Errors
//! are `raven.RavenError` with the library's message; wrong Python types are `TypeError`.
#![deny(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use raven::exit::{Criterion, ExitPolicy};
use raven::kv::CacheStrategy;
use raven::model::LoadOptions;
use raven::run::{LogitsOptions, Threads};
use raven::textgen::{generate_text, TextOptions, TextOutput};
use raven_text::ChatMessage;

pyo3::create_exception!(
    _raven,
    RavenError,
    PyException,
    "An error from Raven, with the library's message."
);

fn err(e: raven::RavenError) -> PyErr {
    RavenError::new_err(e.to_string())
}

fn bad(name: &str, msg: impl Into<String>) -> PyErr {
    err(raven::RavenError::arg(name, msg))
}

/// A loaded model (GGUF): immutable and shared by its sessions.
#[pyclass(frozen, subclass, module = "raven")]
struct Model {
    inner: Arc<raven::Model>,
}

/// A prompt: a string (rendered as one user message with `chat=True`), a list of token ids,
/// or (with `chat=True`) a list of `{"role", "content"}` messages.
fn prompt_ids(m: &raven::Model, prompt: &Bound<'_, PyAny>, chat: bool) -> PyResult<Vec<u32>> {
    if let Ok(s) = prompt.extract::<String>() {
        let text = if chat {
            m.render_chat(&[ChatMessage::new("user", s)]).map_err(err)?
        } else {
            s
        };
        return m
            .tokenizer()
            .map_err(err)?
            .encode(&text, false)
            .map_err(|e| err(e.into()));
    }
    if chat {
        if let Ok(list) = prompt.cast::<PyList>() {
            if list.iter().all(|x| x.cast::<PyDict>().is_ok()) {
                let msgs = messages(list)?;
                let text = m.render_chat(&msgs).map_err(err)?;
                return m
                    .tokenizer()
                    .map_err(err)?
                    .encode(&text, false)
                    .map_err(|e| err(e.into()));
            }
        }
    }
    let ids: Vec<u32> = prompt.extract().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err(
            "prompt must be a str, a list of token ids, or (chat=True) a list of messages",
        )
    })?;
    for &t in &ids {
        m.check_token(t).map_err(err)?;
    }
    Ok(ids)
}

fn messages(list: &Bound<'_, PyList>) -> PyResult<Vec<ChatMessage>> {
    list.iter()
        .map(|x| {
            let d = x.cast::<PyDict>()?;
            let get = |k: &str| -> PyResult<String> {
                d.get_item(k)?
                    .ok_or_else(|| bad("messages", format!("a message has no \"{k}\"")))?
                    .extract()
            };
            Ok(ChatMessage::new(get("role")?, get("content")?))
        })
        .collect()
}

fn criterion(exit: Option<&str>) -> PyResult<Option<Criterion>> {
    exit.map(|e| Criterion::parse(e).map_err(err)).transpose()
}

#[pymethods]
impl Model {
    /// Loads a GGUF model; `mmap=False` reads it into memory instead of mapping it.
    #[new]
    #[pyo3(signature = (path, mmap = true))]
    fn new(py: Python<'_>, path: std::path::PathBuf, mmap: bool) -> PyResult<Self> {
        let o = LoadOptions {
            mmap,
            ..LoadOptions::default()
        };
        let m = py
            .detach(|| raven::Model::load_with(&path, o))
            .map_err(err)?;
        m.tokenizer().map_err(err)?;
        Ok(Model { inner: Arc::new(m) })
    }

    /// `general.name`.
    #[getter]
    fn name(&self) -> String {
        self.inner.name().to_string()
    }
    /// Embedding rows (the logits' width).
    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.config.n_vocab
    }
    /// Trained context length.
    #[getter]
    fn context_length(&self) -> usize {
        self.inner.config.context
    }
    /// Default core iterations per token.
    #[getter]
    fn mean_recurrence(&self) -> usize {
        self.inner.config.mean_recurrence
    }

    /// Text to token ids.
    #[pyo3(signature = (text, add_special = false))]
    fn tokenize(&self, text: &str, add_special: bool) -> PyResult<Vec<u32>> {
        self.inner
            .tokenizer()
            .map_err(err)?
            .encode(text, add_special)
            .map_err(|e| err(e.into()))
    }

    /// Token ids to text.
    #[pyo3(signature = (tokens, skip_special = true))]
    fn detokenize(&self, tokens: Vec<u32>, skip_special: bool) -> PyResult<String> {
        self.inner
            .tokenizer()
            .map_err(err)?
            .decode(&tokens, skip_special)
            .map_err(|e| err(e.into()))
    }

    /// Messages (`[{"role": …, "content": …}]`) rendered with the model's chat template, ready
    /// for the assistant's turn.
    fn render_chat(&self, messages_: &Bound<'_, PyList>) -> PyResult<String> {
        self.inner.render_chat(&messages(messages_)?).map_err(err)
    }

    /// `raven logits`: (logits as little-endian f32 bytes, steps per token, T, V). The
    /// package's `Model.logits` turns this into a numpy array.
    #[pyo3(signature = (tokens, steps = None, init_scale = 0.0, seed = 0, exit = None, max_steps = None, min_steps = 1, cache = "full", cache_type = "f32", decode_from = None, threads = 0))]
    #[allow(clippy::too_many_arguments)]
    fn _logits<'py>(
        &self,
        py: Python<'py>,
        tokens: Vec<u32>,
        steps: Option<usize>,
        init_scale: f32,
        seed: u64,
        exit: Option<&str>,
        max_steps: Option<usize>,
        min_steps: usize,
        cache: &str,
        cache_type: &str,
        decode_from: Option<usize>,
        threads: usize,
    ) -> PyResult<(Bound<'py, PyBytes>, Vec<i32>, usize, usize)> {
        let m = self.inner.clone();
        let steps = steps.unwrap_or(m.config.mean_recurrence);
        if steps == 0 {
            return Err(bad("steps", "must be at least 1"));
        }
        if tokens.len() > m.config.context {
            return Err(bad(
                "tokens",
                format!(
                    "{} tokens, more than the model's context of {}",
                    tokens.len(),
                    m.config.context
                ),
            ));
        }
        if !(init_scale.is_finite() && init_scale >= 0.0) {
            return Err(bad("init_scale", "must be a finite number ≥ 0"));
        }
        let exit = match criterion(exit)? {
            None => None,
            Some(c) => {
                let p = ExitPolicy {
                    criterion: c,
                    min_steps,
                    max_steps: max_steps.unwrap_or(steps),
                    check_every: 1,
                };
                p.validate().map_err(err)?;
                Some(p)
            }
        };
        let o = LogitsOptions {
            steps,
            init_scale,
            seed,
            exit,
            cache: CacheStrategy::parse(cache).map_err(err)?,
            cache_type: raven::kv::parse_kv_type(cache_type).map_err(err)?,
            decode_from,
        };
        let out = py
            .detach(|| {
                let t = Threads::new(threads)?;
                raven::run::logits(&m, &tokens, &o, &t)
            })
            .map_err(err)?;
        let bytes: Vec<u8> = out.logits.iter().flat_map(|x| x.to_le_bytes()).collect();
        Ok((
            PyBytes::new(py, &bytes),
            out.steps,
            tokens.len(),
            m.config.n_vocab,
        ))
    }

    /// A generation session. Unset options take the library's defaults: `steps` the model's
    /// mean recurrence, no early exit, no budget, `compress-s<core layers>` cache of f16
    /// keys and values (`cache_type` f32 or q8_0 otherwise), greedy
    /// sampling, initial-state scale 1 with `seed`.
    #[pyo3(signature = (*, steps = None, exit = None, min_steps = None, budget_ms = None, cache = None, cache_type = None, temperature = None, top_k = None, top_p = None, min_p = None, repeat_penalty = None, seed = None, init_scale = None, warm_start = false, ignore_eos = false, ctx = 0, threads = 0))]
    #[allow(clippy::too_many_arguments)]
    fn session(
        &self,
        py: Python<'_>,
        steps: Option<usize>,
        exit: Option<&str>,
        min_steps: Option<usize>,
        budget_ms: Option<f64>,
        cache: Option<&str>,
        cache_type: Option<&str>,
        temperature: Option<f32>,
        top_k: Option<usize>,
        top_p: Option<f32>,
        min_p: Option<f32>,
        repeat_penalty: Option<f32>,
        seed: Option<u64>,
        init_scale: Option<f32>,
        warm_start: bool,
        ignore_eos: bool,
        ctx: usize,
        threads: usize,
    ) -> PyResult<Session> {
        let m = self.inner.clone();
        let mut p = raven::SessionParams::for_model(&m);
        if let Some(s) = steps {
            p.exit.max_steps = s;
        }
        if let Some(c) = criterion(exit)? {
            p.exit.criterion = c;
        }
        if let Some(s) = min_steps {
            p.exit.min_steps = s;
        }
        p.budget_ms = budget_ms;
        if let Some(c) = cache {
            p.cache = CacheStrategy::parse(c).map_err(err)?;
        }
        if let Some(t) = cache_type {
            p.cache_type = raven::kv::parse_kv_type(t).map_err(err)?;
        }
        let s = &mut p.sampling;
        (s.temperature, s.top_k, s.top_p, s.min_p, s.repeat_penalty) = (
            temperature.unwrap_or(s.temperature),
            top_k.unwrap_or(s.top_k),
            top_p.unwrap_or(s.top_p),
            min_p.unwrap_or(s.min_p),
            repeat_penalty.unwrap_or(s.repeat_penalty),
        );
        p.seed = seed.unwrap_or(p.seed);
        p.init_scale = init_scale.unwrap_or(p.init_scale);
        p.warm_start = warm_start;
        p.ignore_eos = ignore_eos;
        p.ctx = ctx;
        p.threads = threads;
        let cancel = Arc::new(AtomicBool::new(false));
        let mut session = py.detach(|| raven::Session::new(m, p)).map_err(err)?;
        session.set_cancel_flag(cancel.clone());
        Ok(Session {
            model: self.inner.clone(),
            inner: Arc::new(Mutex::new(session)),
            cancel,
        })
    }
}

/// A generation session: the conversation so far and its KV cache. Calls on one session are
/// serialised; use a session per thread to generate in parallel.
#[pyclass(frozen, module = "raven")]
struct Session {
    model: Arc<raven::Model>,
    inner: Arc<Mutex<raven::Session>>,
    cancel: Arc<AtomicBool>,
}

/// The result of `Session.generate`.
#[pyclass(frozen, get_all, module = "raven")]
struct Generation {
    /// The generated text (without a stop string that ended it).
    text: String,
    /// A thinking model's reasoning (between `<think>` and `</think>`); empty otherwise.
    reasoning: String,
    /// Generated token ids.
    tokens: Vec<u32>,
    /// Core iterations of each generated token.
    steps: Vec<usize>,
    /// Mean core iterations per generated token.
    mean_steps: f64,
    /// Tokens whose exit criterion stopped them early.
    exited_early: usize,
    /// Tokens the latency budget capped.
    budget_capped: usize,
    /// "stop" (stop token or string) or "length" (max_tokens or a full context).
    finish_reason: String,
    /// Prompt tokens fed.
    prompt_tokens: usize,
    /// Milliseconds feeding the prompt and generating.
    prompt_ms: f64,
    /// Milliseconds generating.
    generate_ms: f64,
}

#[pymethods]
impl Generation {
    fn __repr__(&self) -> String {
        format!(
            "Generation(text={:?}, tokens={}, mean_steps={:.2}, finish_reason={:?})",
            self.text,
            self.tokens.len(),
            self.mean_steps,
            self.finish_reason
        )
    }
}

impl From<TextOutput> for Generation {
    fn from(o: TextOutput) -> Self {
        Generation {
            steps: o.stats.iter().map(|s| s.steps).collect(),
            mean_steps: o.mean_steps(),
            exited_early: o.exited_early(),
            budget_capped: o.budget_capped(),
            finish_reason: o.finish.openai().to_string(),
            prompt_tokens: o.n_prompt,
            prompt_ms: o.prompt_ms,
            generate_ms: o.generate_ms,
            text: o.text,
            reasoning: o.reasoning,
            tokens: o.tokens,
        }
    }
}

/// One streamed piece: the text that became complete (may be empty) and the token that
/// completed it, with its core iterations (`token` is None for text held back to the end).
#[pyclass(frozen, get_all, module = "raven")]
struct Piece {
    /// Text safe to show.
    text: String,
    /// The token fed, if any.
    token: Option<u32>,
    /// Its core iterations.
    steps: Option<usize>,
    /// Whether its exit criterion stopped it early.
    exited_early: bool,
    /// The text is a thinking model's reasoning, not its answer.
    reasoning: bool,
}

#[pymethods]
impl Piece {
    fn __repr__(&self) -> String {
        format!(
            "Piece(text={:?}, token={:?}, steps={:?})",
            self.text, self.token, self.steps
        )
    }
}

/// What the generation thread of a stream sends.
enum Event {
    Piece(Piece),
    Done(Result<TextOutput, raven::RavenError>),
}

/// The iterator `Session.stream` returns; `result` holds the `Generation` once it is exhausted.
#[pyclass(module = "raven")]
struct Stream {
    rx: Option<Mutex<Receiver<Event>>>,
    result: Option<Py<Generation>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Piece>> {
        let Some(rx) = &self.rx else {
            return Ok(None);
        };
        let ev = py.detach(|| rx.lock().unwrap_or_else(|e| e.into_inner()).recv());
        match ev {
            Ok(Event::Piece(p)) => Ok(Some(p)),
            Ok(Event::Done(r)) => {
                self.finish(py);
                let g = Generation::from(r.map_err(err)?);
                self.result = Some(Py::new(py, g)?);
                Ok(None)
            }
            Err(_) => {
                self.finish(py);
                Ok(None)
            }
        }
    }
    /// The `Generation` (statistics and whole text) once the stream is exhausted, else None.
    #[getter]
    fn result(&self, py: Python<'_>) -> Option<Py<Generation>> {
        self.result.as_ref().map(|g| g.clone_ref(py))
    }
    /// Stops the generation (also done when the stream is dropped).
    fn close(&mut self, py: Python<'_>) {
        self.finish(py);
    }
}

impl Stream {
    fn finish(&mut self, py: Python<'_>) {
        self.rx = None; // a blocked sender sees the channel close and stops
        if let Some(t) = self.thread.take() {
            py.detach(|| {
                let _ = t.join();
            });
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.rx = None;
        // The generation thread stops at its next token; it is not joined here, where the GIL
        // may be held.
    }
}

/// What a generation needs: the prompt's ids, the text options, the session and its flag.
type Job = (
    Vec<u32>,
    TextOptions,
    Arc<Mutex<raven::Session>>,
    Arc<AtomicBool>,
);

impl Session {
    fn job(
        &self,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        stop: Option<Vec<String>>,
        chat: bool,
    ) -> PyResult<Job> {
        let o = TextOptions {
            max_tokens,
            stop: stop.unwrap_or_default(),
        };
        Ok((
            prompt_ids(&self.model, prompt, chat)?,
            o,
            self.inner.clone(),
            self.cancel.clone(),
        ))
    }
}

#[pymethods]
impl Session {
    /// Feeds `prompt` (appended to the conversation) and generates up to `max_tokens` tokens,
    /// stopping at a stop token or one of the `stop` strings. `chat=True` renders a string
    /// as a user message (or a list of messages) with the model's chat template.
    #[pyo3(signature = (prompt, max_tokens = 128, stop = None, chat = false))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        stop: Option<Vec<String>>,
        chat: bool,
    ) -> PyResult<Generation> {
        let (ids, o, inner, cancel) = self.job(prompt, max_tokens, stop, chat)?;
        let out = py
            .detach(move || {
                let mut s = inner.lock().unwrap_or_else(|e| e.into_inner());
                cancel.store(false, Ordering::SeqCst);
                generate_text(&mut s, &ids, &o, |_| true)
            })
            .map_err(err)?;
        Ok(out.into())
    }

    /// Like `generate`, as an iterator of `Piece`s; the generation runs on a thread of its own
    /// while the caller consumes. Its `result` is the `Generation` once exhausted.
    #[pyo3(signature = (prompt, max_tokens = 128, stop = None, chat = false))]
    fn stream(
        &self,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        stop: Option<Vec<String>>,
        chat: bool,
    ) -> PyResult<Stream> {
        let (ids, o, inner, cancel) = self.job(prompt, max_tokens, stop, chat)?;
        let (tx, rx) = sync_channel::<Event>(64);
        let thread = std::thread::Builder::new()
            .name("raven-stream".into())
            .spawn(move || {
                let mut s = inner.lock().unwrap_or_else(|e| e.into_inner());
                cancel.store(false, Ordering::SeqCst);
                let out = generate_text(&mut s, &ids, &o, |g| {
                    let t = g.token;
                    let p = Piece {
                        text: g.text.to_string(),
                        token: t.map(|(id, _)| id),
                        steps: t.map(|(_, st)| st.steps),
                        exited_early: t.is_some_and(|(_, st)| st.exited_early),
                        reasoning: g.reasoning,
                    };
                    tx.send(Event::Piece(p)).is_ok()
                });
                let _ = tx.send(Event::Done(out));
            })
            .map_err(|e| bad("stream", format!("cannot start a thread: {e}")))?;
        Ok(Stream {
            rx: Some(Mutex::new(rx)),
            result: None,
            thread: Some(thread),
        })
    }

    /// Stops a running `generate` or `stream` from another thread at its next iteration
    /// (it raises RavenError("cancelled")).
    fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Forgets the conversation (the KV cache is kept allocated).
    fn reset(&self, py: Python<'_>) {
        let inner = self.inner.clone();
        py.detach(move || inner.lock().unwrap_or_else(|e| e.into_inner()).reset());
    }

    /// Token ids of the conversation so far.
    #[getter]
    fn history(&self, py: Python<'_>) -> Vec<u32> {
        let inner = self.inner.clone();
        py.detach(move || {
            inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .history()
                .to_vec()
        })
    }
}

/// `raven convert`: a Hugging Face checkpoint directory to a GGUF file of weight type `type`
/// (f32, f16, bf16, q8_0, q4_0), written atomically. Returns the bytes written.
#[pyfunction]
#[pyo3(signature = (hf_dir, out, r#type = "q8_0"))]
fn convert(
    py: Python<'_>,
    hf_dir: std::path::PathBuf,
    out: std::path::PathBuf,
    r#type: &str,
) -> PyResult<u64> {
    let ty = raven::convert::OutType::parse(r#type).map_err(err)?;
    py.detach(|| raven::convert::convert(&hf_dir, &out, ty, &mut raven::convert::NoProgress))
        .map(|r| r.bytes)
        .map_err(err)
}

/// The native module.
#[pymodule]
fn _raven(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(convert, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<Session>()?;
    m.add_class::<Generation>()?;
    m.add_class::<Piece>()?;
    m.add_class::<Stream>()?;
    m.add("RavenError", m.py().get_type::<RavenError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
