//! `raven serve`: an OpenAI-compatible HTTP server on one Raven model.
//!
//! - [`ServeOptions`] says where to listen, how many generations run at once (`parallel`, each
//!   on its own thread pool) and how many more may wait (`queue`; beyond that requests get 503
//!   with `Retry-After`), the request limits, and the session defaults that requests override.
//! - [`serve`] runs until SIGINT or SIGTERM: it stops accepting, cancels running generations at
//!   their next iteration and returns.
//!
//! Endpoints: `POST /v1/chat/completions` and `POST /v1/completions` (streamed as server-sent
//! events with `"stream": true`), `GET /v1/models`, `GET /health`. Requests follow OpenAI's
//! schema (`messages`, `prompt`, `max_tokens`, `temperature`, `top_p`, `seed`, `stop`,
//! `stream`) plus Raven's controls as extra fields: `steps`, `exit`, `budget_ms`, `cache`, `cache_type` (and
//! `top_k`, `min_p`, `min_steps`, `init_scale`), and the sampler: `sampler` (`"plain"`, the
//! default, or `"parallel"`: the diffusion-forcing sampler of `raven run --sampler parallel`)
//! with its knobs `parallel_mode` (`"official"`, the default, or `"corrected"`), `inner_steps`
//! (4), `wavefront` (128; 0 = no cap), `headway` (1), `ema` (0.1), `noise` (0),
//! `noise_dampened` (true), `noise_sqrt` (false) and `max_sampler_steps` (4096); its freezing
//! rule is `exit` (`latent-diff[:ε]`, the default when the server's own exit is not
//! latent-diff, or `none` for the fixed rule). Responses carry `usage` and a `raven` object:
//! core iterations per token, their mean, early exits, budget caps and timings, and with the
//! parallel sampler its counters.
//!
//! The HTTP stack is axum on tokio (hyper underneath); generation runs on blocking threads,
//! each request on its own [`Session`] over the shared model. A client that disconnects
//! cancels its generation.
#![deny(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use raven::exit::{Criterion, ExitPolicy};
use raven::kv::CacheStrategy;
use raven::parallel::{Mode, ParallelParams};
use raven::run::Threads;
use raven::session::{Session, SessionParams, TokenStats};
use raven::textgen::{generate_text, generate_text_parallel, Piece, TextOptions, TextOutput};
use raven::Model;
use raven_text::ChatMessage;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free port; the bound address is printed).
    pub port: u16,
    /// The id clients name in `model` (also accepted: `general.name`).
    pub model_id: String,
    /// Generations that run at once, each on a pool of `threads` threads.
    pub parallel: usize,
    /// Threads per running generation (0: the cores divided among `parallel`).
    pub threads: usize,
    /// Requests that may wait for a slot; more get 503 with `Retry-After`.
    pub queue: usize,
    /// Largest `max_tokens` a request may ask for (also the default).
    pub max_tokens_limit: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Session defaults (from the command line); requests override fields of it.
    pub defaults: SessionParams,
}

/// Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn bad(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            404 => "not_found_error",
            413 => "invalid_request_error",
            503 => "server_overloaded",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }
    fn body(&self) -> Value {
        json!({ "error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Everything the handlers share.
struct AppState {
    model: Arc<Model>,
    o: ServeOptions,
    created: u64,
    /// One permit per running generation.
    slots: Arc<Semaphore>,
    /// Requests admitted: waiting for a slot or running.
    admitted: AtomicUsize,
    /// A thread pool per slot.
    pools: Mutex<Vec<Arc<Threads>>>,
    /// Cancellation flags of running generations, raised at shutdown.
    running: Mutex<Vec<Weak<AtomicBool>>>,
    shutting_down: AtomicBool,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the server until SIGINT or SIGTERM. `ready` is called with the bound address once it
/// accepts connections.
pub fn serve(
    model: Arc<Model>,
    o: ServeOptions,
    ready: impl FnOnce(SocketAddr) + Send + 'static,
) -> raven::Result<()> {
    if o.parallel == 0 || o.parallel > 256 {
        return Err(raven::RavenError::arg(
            "--parallel",
            format!("{} must be between 1 and 256", o.parallel),
        ));
    }
    if o.max_tokens_limit == 0 {
        return Err(raven::RavenError::arg(
            "--max-tokens-limit",
            "must be at least 1",
        ));
    }
    let per = if o.threads == 0 {
        (raven::run::default_threads() / o.parallel).max(1)
    } else {
        o.threads
    };
    let pools = (0..o.parallel)
        .map(|_| Threads::new(per).map(Arc::new))
        .collect::<raven::Result<Vec<_>>>()?;
    // Fail on bad defaults now, not on the first request.
    Session::with_threads(model.clone(), o.defaults.clone(), pools[0].clone())?;
    model.tokenizer()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| raven::RavenError::arg("serve", format!("cannot start the runtime: {e}")))?;
    let addr = format!("{}:{}", o.host, o.port);
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(o.parallel)),
        model,
        o,
        created: now(),
        admitted: AtomicUsize::new(0),
        pools: Mutex::new(pools),
        running: Mutex::new(Vec::new()),
        shutting_down: AtomicBool::new(false),
    });
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| raven::RavenError::arg("--host/--port", format!("{addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| raven::RavenError::arg("--host/--port", format!("{addr}: {e}")))?;
        let app = Router::new()
            .route("/health", get(health))
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .fallback(not_found)
            .with_state(state.clone());
        ready(bound);
        let st = state.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                st.shutting_down.store(true, Ordering::SeqCst);
                for f in st.running.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    if let Some(f) = f.upgrade() {
                        f.store(true, Ordering::SeqCst);
                    }
                }
            })
            .await
            .map_err(|e| raven::RavenError::arg("serve", e.to_string()))
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": st.o.model_id,
        "running": st.o.parallel - st.slots.available_permits(),
        "admitted": st.admitted.load(Ordering::SeqCst),
    }))
}

async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let c = &st.model.config;
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.o.model_id,
            "object": "model",
            "created": st.created,
            "owned_by": "raven",
            "raven": {
                "name": st.model.name(),
                "context_length": c.context,
                "mean_recurrence": c.mean_recurrence,
                "vocab_size": c.n_vocab,
            }
        }]
    }))
}

async fn not_found(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route {} {}", req.method(), req.uri().path()),
        param: None,
        code: None,
    }
}

/// A chat message's `content`: a string, or OpenAI's list of parts of which the text ones count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Deserialize)]
struct Msg {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// The fields of both completion requests that Raven reads; others are ignored.
#[derive(Deserialize)]
struct Req {
    model: Option<String>,
    messages: Option<Vec<Msg>>,
    prompt: Option<Value>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    temperature: Option<Value>,
    top_p: Option<Value>,
    top_k: Option<Value>,
    min_p: Option<Value>,
    seed: Option<Value>,
    stop: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<Value>,
    n: Option<Value>,
    steps: Option<Value>,
    min_steps: Option<Value>,
    exit: Option<String>,
    budget_ms: Option<Value>,
    cache: Option<String>,
    cache_type: Option<String>,
    init_scale: Option<Value>,
    sampler: Option<Value>,
    parallel_mode: Option<Value>,
    inner_steps: Option<Value>,
    wavefront: Option<Value>,
    headway: Option<Value>,
    ema: Option<Value>,
    noise: Option<Value>,
    noise_dampened: Option<Value>,
    noise_sqrt: Option<Value>,
    max_sampler_steps: Option<Value>,
}

fn string<'a>(v: &'a Option<Value>, param: &'static str) -> Result<Option<&'a str>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad(
            param,
            format!("{param} must be a string, got {other}"),
        )),
    }
}

fn boolean(v: &Option<Value>, param: &'static str) -> Result<Option<bool>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::bad(
            param,
            format!("{param} must be true or false, got {other}"),
        )),
    }
}

/// The parallel sampler's knobs when the request asks for it (`"sampler": "parallel"`), the
/// library's defaults where it gives none; None for the plain sampler, which refuses them.
fn parallel_knobs(req: &Req) -> Result<Option<ParallelParams>, ApiError> {
    let parallel = match string(&req.sampler, "sampler")? {
        None | Some("plain") => false,
        Some("parallel") => true,
        Some(s) => {
            return Err(ApiError::bad(
                "sampler",
                format!("sampler must be \"plain\" or \"parallel\", got \"{s}\""),
            ))
        }
    };
    if !parallel {
        let given = |v: &Option<Value>| !matches!(v, None | Some(Value::Null));
        let knobs = [
            ("parallel_mode", &req.parallel_mode),
            ("inner_steps", &req.inner_steps),
            ("wavefront", &req.wavefront),
            ("headway", &req.headway),
            ("ema", &req.ema),
            ("noise", &req.noise),
            ("noise_dampened", &req.noise_dampened),
            ("noise_sqrt", &req.noise_sqrt),
            ("max_sampler_steps", &req.max_sampler_steps),
        ];
        if let Some((name, _)) = knobs.iter().find(|(_, v)| given(v)) {
            return Err(ApiError::bad(
                name,
                format!("{name} is only used with \"sampler\": \"parallel\""),
            ));
        }
        return Ok(None);
    }
    let d = ParallelParams::default();
    let mode = match string(&req.parallel_mode, "parallel_mode")? {
        None => d.mode,
        Some(m) => Mode::parse(m).map_err(invalid_param)?,
    };
    // Types here; ranges and the combinations with the session's parameters are the library's
    // checks (ParallelParams::validate), its errors naming the request field (Param::api).
    let count = |v: &Option<Value>, name: &'static str, default: usize| {
        int(v, name, 0, 1 << 30).map(|x| x.map_or(default, |x| x as usize))
    };
    Ok(Some(ParallelParams {
        mode,
        inner_steps: count(&req.inner_steps, "inner_steps", d.inner_steps)?,
        wavefront: count(&req.wavefront, "wavefront", d.wavefront)?,
        headway: count(&req.headway, "headway", d.headway)?,
        ema: num(&req.ema, "ema")?.unwrap_or(d.ema),
        noise: num(&req.noise, "noise")?.unwrap_or(d.noise),
        noise_dampened: boolean(&req.noise_dampened, "noise_dampened")?.unwrap_or(d.noise_dampened),
        noise_sqrt: boolean(&req.noise_sqrt, "noise_sqrt")?.unwrap_or(d.noise_sqrt),
        max_sampler_steps: count(
            &req.max_sampler_steps,
            "max_sampler_steps",
            d.max_sampler_steps,
        )?,
    }))
}

fn num(v: &Option<Value>, param: &'static str) -> Result<Option<f64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(ApiError::bad(
            param,
            format!("{param} must be a number, got {other}"),
        )),
    }
}

fn int(
    v: &Option<Value>,
    param: &'static str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::bad(
                param,
                format!("{param} must be an integer from {min} to {max}, got {n}"),
            )),
        },
        Some(other) => Err(ApiError::bad(
            param,
            format!("{param} must be an integer, got {other}"),
        )),
    }
}

/// A validated request: the prompt's tokens, the session and text options, streaming.
struct Job {
    tokens: Vec<u32>,
    params: SessionParams,
    /// The parallel sampler's knobs; None for the plain sampler.
    parallel: Option<ParallelParams>,
    text: TextOptions,
    stream: bool,
    include_usage: bool,
    chat: bool,
}

fn parse_job(st: &AppState, body: &[u8], chat: bool) -> Result<Job, ApiError> {
    let req: Req = serde_json::from_slice(body).map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!("the request body is not valid JSON for this endpoint: {e}"),
        param: None,
        code: None,
    })?;
    match req.model.as_deref() {
        None => return Err(ApiError::bad("model", "model is required")),
        Some(m) if m == st.o.model_id || m == st.model.name() => {}
        Some(m) => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "the model `{m}` does not exist: this server serves `{}`",
                    st.o.model_id
                ),
                param: Some("model"),
                code: Some("model_not_found"),
            })
        }
    }
    if let Some(n) = int(&req.n, "n", 1, 1)? {
        debug_assert_eq!(n, 1);
    }
    let model = &st.model;
    let tok = model.tokenizer().map_err(internal)?;
    let tokens = if chat {
        let msgs = req
            .messages
            .as_ref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::bad("messages", "messages must be a non-empty list"))?;
        let mut conv = Vec::with_capacity(msgs.len());
        for m in msgs {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
            };
            conv.push(ChatMessage::new(m.role.clone(), content));
        }
        let text = model.render_chat(&conv).map_err(internal)?;
        tok.encode(&text, false)
            .map_err(|e| ApiError::bad("messages", e.to_string()))?
    } else {
        match &req.prompt {
            Some(Value::String(s)) => tok
                .encode(s, false)
                .map_err(|e| ApiError::bad("prompt", e.to_string()))?,
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => tok
                .encode(a[0].as_str().unwrap_or_default(), false)
                .map_err(|e| ApiError::bad("prompt", e.to_string()))?,
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
                let v = model.config.n_vocab as u64;
                a.iter()
                    .map(|x| match x.as_u64() {
                        Some(t) if t < v => Ok(t as u32),
                        _ => Err(ApiError::bad(
                            "prompt",
                            format!("token {x} is outside the vocabulary (0..{v})"),
                        )),
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => {
                return Err(ApiError::bad(
                    "prompt",
                    "prompt must be a string (or a list of one string, or a list of token ids)",
                ))
            }
        }
    };
    if tokens.is_empty() {
        return Err(ApiError::bad(
            if chat { "messages" } else { "prompt" },
            "the prompt is empty after tokenization",
        ));
    }
    let limit = st.o.max_tokens_limit as i64;
    let max_tokens = match int(&req.max_tokens, "max_tokens", 1, limit)? {
        Some(x) => Some(x),
        None => int(
            &req.max_completion_tokens,
            "max_completion_tokens",
            1,
            limit,
        )?,
    }
    .map_or(st.o.max_tokens_limit, |x| x as usize);

    let mut p = st.o.defaults.clone();
    if let Some(t) = num(&req.temperature, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad(
                "temperature",
                format!("temperature must be from 0 to 2, got {t}"),
            ));
        }
        p.sampling.temperature = t as f32;
    }
    if let Some(t) = num(&req.top_p, "top_p")? {
        p.sampling.top_p = t as f32;
    }
    if let Some(k) = int(&req.top_k, "top_k", 0, 1 << 22)? {
        p.sampling.top_k = k as usize;
    }
    if let Some(m) = num(&req.min_p, "min_p")? {
        p.sampling.min_p = m as f32;
    }
    if let Some(s) = int(&req.seed, "seed", i64::MIN, i64::MAX)? {
        p.seed = s as u64;
    }
    if let Some(s) = num(&req.init_scale, "init_scale")? {
        p.init_scale = s as f32;
    }
    let parallel = parallel_knobs(&req)?;
    let mut exit: ExitPolicy = p.exit;
    if let Some(e) = &req.exit {
        exit.criterion = Criterion::parse(e).map_err(invalid_param)?;
    } else if parallel.is_some() && !matches!(exit.criterion, Criterion::LatentDiff(_)) {
        // The parallel sampler freezes with latent-diff by default (as `raven run --sampler
        // parallel`); the server's own exit applies when it is latent-diff.
        exit.criterion = Criterion::parse("latent-diff").map_err(invalid_param)?;
    }
    if let Some(s) = int(&req.steps, "steps", 1, 4096)? {
        exit.max_steps = s as usize;
        if p.prefill_steps > exit.max_steps {
            p.prefill_steps = 0;
        }
    }
    if let Some(s) = int(&req.min_steps, "min_steps", 1, 4096)? {
        exit.min_steps = s as usize;
    }
    p.exit = exit;
    if let Some(b) = num(&req.budget_ms, "budget_ms")? {
        p.budget_ms = Some(b);
    }
    if let Some(c) = &req.cache {
        p.cache = CacheStrategy::parse(c).map_err(invalid_param)?;
    }
    if let Some(t) = &req.cache_type {
        p.cache_type = raven::kv::parse_kv_type(t).map_err(invalid_param)?;
    }
    // Ranges, consistency and the KV cap are the library's checks (SessionParams::validate),
    // its errors naming the request field (Param::api).
    p.validate(model).map_err(invalid_param)?;
    if let Some(pp) = &parallel {
        pp.validate(model, &p).map_err(invalid_param)?;
    }
    let ctx = p.context_for(model);
    if tokens.len() >= ctx {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "the prompt is {} tokens; the context holds {ctx}, with room for at least one more",
                tokens.len()
            ),
            param: Some(if chat { "messages" } else { "prompt" }),
            code: Some("context_length_exceeded"),
        });
    }
    let stop = match &req.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 16 && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect(),
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                "stop must be a string or a list of at most 16 strings",
            ))
        }
    };
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Job {
        tokens,
        params: p,
        parallel,
        text: TextOptions { max_tokens, stop },
        stream: req.stream.unwrap_or(false),
        include_usage,
        chat,
    })
}

/// A parameter the library refused: 400 naming its request field.
fn invalid_param(e: raven::RavenError) -> ApiError {
    match e.invalid_param() {
        Some(param) => ApiError::bad(param.api(), e.to_string()),
        None => gen_error(e),
    }
}

fn internal(e: raven::RavenError) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: e.to_string(),
        param: None,
        code: None,
    }
}

/// What the generation thread sends to the response.
enum Out {
    /// Text, the token's statistics, whether it is reasoning (a thinking model's `<think>`).
    Piece(String, Option<TokenStats>, bool),
    Done(Result<TextOutput, raven::RavenError>),
}

/// Raises a request's cancel flag when its response is dropped: when it has been sent, or
/// before that when the client went away (the generation then stops at its next iteration).
struct CancelOnDrop(Arc<AtomicBool>);
impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A request's place among the admitted ones, released when its generation task ends.
struct Admission(Arc<AppState>);
impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn read_body(st: &AppState, req: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), st.o.max_body_bytes)
        .await
        .map_err(|e| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the request body could not be read within {} bytes: {e}",
                st.o.max_body_bytes
            ),
            param: None,
            code: None,
        })
}

async fn chat_completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    complete(st, req, true).await
}

async fn completions(State(st): State<Arc<AppState>>, req: Request) -> Response {
    complete(st, req, false).await
}

async fn complete(st: Arc<AppState>, req: Request, chat: bool) -> Response {
    let body = match read_body(&st, req).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let job = match parse_job(&st, &body, chat) {
        Ok(j) => j,
        Err(e) => return e.into_response(),
    };
    if st.shutting_down.load(Ordering::SeqCst) {
        return overloaded("the server is shutting down");
    }
    // Admission: running plus waiting stays within parallel + queue.
    let cap = st.o.parallel + st.o.queue;
    if st
        .admitted
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < cap).then_some(n + 1)
        })
        .is_err()
    {
        return overloaded(&format!(
            "{} generations are running and {} waiting, the most this server takes; retry later",
            st.o.parallel, st.o.queue
        ));
    }
    let admission = Admission(st.clone());
    let cancel = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(cancel.clone());
    let (tx, rx) = mpsc::channel::<Out>(256);
    let id = format!(
        "{}-{:x}{:08x}",
        if chat { "chatcmpl" } else { "cmpl" },
        now(),
        rand_u32(&cancel)
    );
    let meta = Meta {
        id,
        created: now(),
        model: st.o.model_id.clone(),
        chat: job.chat,
        max_steps: job.params.exit.max_steps,
        parallel_mode: job.parallel.as_ref().map(|pp| pp.mode),
    };
    let (stream, include_usage) = (job.stream, job.include_usage);
    let st2 = st.clone();
    tokio::spawn(async move {
        let permit = match st2.slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let _admission = admission;
        if cancel.load(Ordering::SeqCst) {
            return; // the client left while waiting
        }
        let st3 = st2.clone();
        let res = tokio::task::spawn_blocking(move || {
            let pool = st3
                .pools
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .expect("a pool per permit");
            st3.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(&cancel));
            if st3.shutting_down.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            }
            // The parallel sampler reports a token before its position stops iterating: its
            // count comes with the last chunk, not with the token's.
            let per_token = job.parallel.is_none();
            let send = |p: Piece<'_>| {
                tx.blocking_send(Out::Piece(
                    p.text.to_string(),
                    p.token.filter(|_| per_token).map(|(_, s)| s.clone()),
                    p.reasoning,
                ))
                .is_ok()
            };
            let out = match &job.parallel {
                None => Session::with_threads(st3.model.clone(), job.params, pool.clone())
                    .and_then(|mut s| {
                        s.set_cancel_flag(cancel.clone());
                        generate_text(&mut s, &job.tokens, &job.text, send)
                    }),
                Some(pp) => generate_text_parallel(
                    &st3.model,
                    &job.params,
                    pp,
                    &job.tokens,
                    &job.text,
                    &pool,
                    Some(&cancel),
                    send,
                ),
            };
            let _ = tx.blocking_send(Out::Done(out));
            st3.pools
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(pool);
            st3.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|w| w.strong_count() > 0 && !Weak::ptr_eq(w, &Arc::downgrade(&cancel)));
        })
        .await;
        drop(permit);
        drop(res);
    });
    if stream {
        stream_response(meta, rx, guard, include_usage)
    } else {
        whole_response(meta, rx, guard).await
    }
}

fn overloaded(msg: &str) -> Response {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: msg.to_string(),
        param: None,
        code: Some("server_overloaded"),
    }
    .into_response()
}

/// A little entropy for response ids (the address of a fresh allocation and the clock).
fn rand_u32(a: &Arc<AtomicBool>) -> u32 {
    let p = Arc::as_ptr(a) as usize as u64;
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    ((p ^ (t << 16)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    max_steps: usize,
    /// The parallel sampler's mode; None for the plain sampler.
    parallel_mode: Option<Mode>,
}

fn usage(out: &TextOutput) -> Value {
    json!({
        "prompt_tokens": out.n_prompt,
        "completion_tokens": out.tokens.len(),
        "total_tokens": out.n_prompt + out.tokens.len(),
    })
}

fn raven_stats(out: &TextOutput, max_steps: usize, mode: Option<Mode>) -> Value {
    let mut v = json!({
        "iterations": out.stats.iter().map(|s| s.steps).collect::<Vec<_>>(),
        "mean_iterations": out.mean_steps(),
        "max_iterations": max_steps,
        "early_exits": out.exited_early(),
        "budget_capped": out.budget_capped(),
        "finish": format!("{:?}", out.finish),
        "prompt_ms": out.prompt_ms,
        "generate_ms": out.generate_ms,
        "sampler": if out.parallel.is_some() { "parallel" } else { "plain" },
    });
    if let Some(c) = &out.parallel {
        let mut p = json!(c);
        p["mode"] = json!(mode.unwrap_or_default().to_string());
        v["parallel"] = p;
    }
    v
}

fn gen_error(e: raven::RavenError) -> ApiError {
    match e {
        raven::RavenError::ContextOverflow { .. } => ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.to_string(),
            param: None,
            code: Some("context_length_exceeded"),
        },
        raven::RavenError::InvalidArgument { .. } | raven::RavenError::CacheTooLarge { .. } => {
            ApiError {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
                param: None,
                code: None,
            }
        }
        raven::RavenError::Cancelled => ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the generation was cancelled (the server is shutting down)".into(),
            param: None,
            code: None,
        },
        e => internal(e),
    }
}

async fn whole_response(m: Meta, mut rx: mpsc::Receiver<Out>, guard: CancelOnDrop) -> Response {
    let _guard = guard;
    let out = loop {
        match rx.recv().await {
            Some(Out::Piece(..)) => {}
            Some(Out::Done(r)) => break r,
            None => {
                break Err(raven::RavenError::Cancelled);
            }
        }
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => return gen_error(e).into_response(),
    };
    let finish = out.finish.openai();
    let choice = if m.chat {
        let mut message = json!({ "role": "assistant", "content": out.text });
        // A thinking model's reasoning, as llama.cpp's server and DeepSeek's API return it.
        if !out.reasoning.is_empty() {
            message["reasoning_content"] = json!(out.reasoning);
        }
        json!({
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        })
    } else {
        // A raw completion has no roles: reasoning and answer are one text.
        json!({ "index": 0, "text": format!("{}{}", out.reasoning, out.text), "logprobs": null, "finish_reason": finish })
    };
    Json(json!({
        "id": m.id,
        "object": if m.chat { "chat.completion" } else { "text_completion" },
        "created": m.created,
        "model": m.model,
        "choices": [choice],
        "usage": usage(&out),
        "raven": raven_stats(&out, m.max_steps, m.parallel_mode),
    }))
    .into_response()
}

fn stream_response(
    m: Meta,
    rx: mpsc::Receiver<Out>,
    guard: CancelOnDrop,
    include_usage: bool,
) -> Response {
    let obj = if m.chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = move |choice: Value| -> Value {
        json!({
            "id": m.id, "object": obj, "created": m.created, "model": m.model,
            "choices": [choice],
        })
    };
    let chat = m.chat;
    let max_steps = m.max_steps;
    let mode = m.parallel_mode;
    let piece = move |text: &str, reasoning: bool, finish: Option<&str>| -> Value {
        if chat {
            let delta = if finish.is_some() {
                json!({})
            } else if reasoning {
                json!({ "reasoning_content": text })
            } else {
                json!({ "content": text })
            };
            json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
        } else {
            json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish })
        }
    };
    // State of the event stream: the receiver, whether the role chunk went out, whether the
    // end was sent; the guard lives as long as the stream.
    struct S {
        rx: mpsc::Receiver<Out>,
        started: bool,
        done: bool,
        _guard: CancelOnDrop,
        queue: std::collections::VecDeque<Event>,
    }
    let s = S {
        rx,
        started: false,
        done: false,
        _guard: guard,
        queue: Default::default(),
    };
    let data = |v: &Value| Event::default().data(v.to_string());
    let stream = futures_util::stream::unfold(s, move |mut s: S| {
        let chunk = chunk.clone();
        async move {
            loop {
                if let Some(e) = s.queue.pop_front() {
                    return Some((Ok::<Event, Infallible>(e), s));
                }
                if s.done {
                    return None;
                }
                if chat && !s.started {
                    s.started = true;
                    let v = chunk(json!({
                        "index": 0,
                        "delta": { "role": "assistant", "content": "" },
                        "logprobs": null,
                        "finish_reason": null,
                    }));
                    s.queue.push_back(data(&v));
                    continue;
                }
                match s.rx.recv().await {
                    Some(Out::Piece(text, stats, reasoning)) => {
                        if !text.is_empty() {
                            let mut c = chunk(piece(&text, reasoning, None));
                            if let Some(st) = stats {
                                c["raven"] = json!({ "iterations": st.steps });
                            }
                            s.queue.push_back(data(&c));
                        }
                    }
                    Some(Out::Done(Ok(out))) => {
                        let mut last = chunk(piece("", false, Some(out.finish.openai())));
                        last["raven"] = raven_stats(&out, max_steps, mode);
                        s.queue.push_back(data(&last));
                        if include_usage {
                            let mut u = chunk(json!(null));
                            u["choices"] = json!([]);
                            u["usage"] = usage(&out);
                            s.queue.push_back(data(&u));
                        }
                        s.queue.push_back(Event::default().data("[DONE]"));
                        s.done = true;
                    }
                    Some(Out::Done(Err(e))) => {
                        s.queue.push_back(data(&gen_error(e).body()));
                        s.queue.push_back(Event::default().data("[DONE]"));
                        s.done = true;
                    }
                    None => {
                        s.done = true;
                    }
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
