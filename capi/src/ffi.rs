//! The one wrapper every export runs in (`catch_unwind`, status, last error), logging and the
//! pointer helpers.

use super::*;

/// An error crossing the boundary: its status and message.
pub(crate) struct Error {
    pub(crate) status: raven_status,
    pub(crate) msg: String,
}

pub(crate) type R<T> = std::result::Result<T, Error>;

pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error {
        status: RAVEN_ERR_INVALID_ARGUMENT,
        msg: msg.into(),
    }
}

impl From<RavenError> for Error {
    fn from(e: RavenError) -> Error {
        let status = match &e {
            RavenError::Io { .. } => RAVEN_ERR_IO,
            RavenError::Gguf(raven_gguf::GgufError::Io { .. }) => RAVEN_ERR_IO,
            RavenError::Gguf(_)
            | RavenError::Json { .. }
            | RavenError::Checkpoint { .. }
            | RavenError::Model { .. } => RAVEN_ERR_FORMAT,
            RavenError::Text(raven_text::TextError::UnknownTokenId { .. }) => {
                RAVEN_ERR_INVALID_ARGUMENT
            }
            RavenError::Text(_) => RAVEN_ERR_FORMAT,
            RavenError::InvalidArgument { .. } | RavenError::InvalidParam { .. } => {
                RAVEN_ERR_INVALID_ARGUMENT
            }
            RavenError::ContextOverflow { .. } => RAVEN_ERR_CONTEXT_OVERFLOW,
            RavenError::CacheTooLarge { .. } => RAVEN_ERR_OUT_OF_MEMORY,
            RavenError::Cancelled => RAVEN_ERR_CANCELLED,
            RavenError::Quant(_) => RAVEN_ERR_INTERNAL,
        };
        Error {
            status,
            // A parameter is named as its field of raven_session_params (never a CLI flag).
            msg: e.message_for(raven_core::Param::c),
        }
    }
}

impl From<raven_text::TextError> for Error {
    fn from(e: raven_text::TextError) -> Error {
        RavenError::from(e).into()
    }
}

thread_local! {
    pub(crate) static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "unknown panic"
    }
}

/// Runs the body of export `name` so that nothing unwinds out of it: a panic becomes
/// `RAVEN_ERR_INTERNAL`, an error its status; both leave their message for
/// [`raven_last_error`] and the log. `fail` turns the status into the export's return value.
pub(crate) fn guard<T>(
    name: &str,
    fail: impl FnOnce(raven_status) -> T,
    body: impl FnOnce() -> R<T>,
) -> T {
    let err = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(payload) => {
            let e = Error {
                status: RAVEN_ERR_INTERNAL,
                msg: format!(
                    "internal error (a bug in Raven; please report it): {}",
                    panic_message(&*payload)
                ),
            };
            // Dropping a panic payload can itself panic; keep that inside too.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
            e
        }
    };
    // Reporting must not unwind either (a log callback cannot, being `extern "C"`).
    let _ = panic::catch_unwind(AssertUnwindSafe(|| {
        let msg = format!("{name}: {}", err.msg);
        set_last_error(&msg);
        log(RAVEN_LOG_ERROR, &msg);
    }));
    fail(err.status)
}

/// [`guard`] for exports that return a status.
pub(crate) fn status(name: &str, body: impl FnOnce() -> R<()>) -> raven_status {
    guard(name, |s| s, || body().map(|()| RAVEN_OK))
}

/// [`guard`] for the two-call size exports: the size, its negation, or `RAVEN_SIZE_ERROR`.
pub(crate) fn sized(name: &str, body: impl FnOnce() -> R<i32>) -> i32 {
    guard(name, |_| RAVEN_SIZE_ERROR, body)
}

// ---------------------------------------------------------------------------------------------
// Logging

#[derive(Clone, Copy)]
pub(crate) struct Logger {
    pub(crate) cb: unsafe extern "C" fn(raven_log_level, *const c_char, *mut c_void),
    pub(crate) user_data: usize,
}

pub(crate) static LOGGER: Mutex<Option<Logger>> = Mutex::new(None);

pub(crate) fn log(level: raven_log_level, msg: &str) {
    let logger = match LOGGER.lock() {
        Ok(l) => *l,
        Err(p) => *p.into_inner(),
    };
    if let Some(l) = logger {
        if let Ok(c) = CString::new(msg.replace('\0', " ")) {
            // SAFETY: the callback and its user data were registered together by
            // `raven_log_set`, whose contract makes them valid until replaced; `c` lives over
            // the call.
            unsafe { (l.cb)(level, c.as_ptr(), l.user_data as *mut c_void) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pointer helpers

/// # Safety
/// `p` is NULL or points to a live `T` (a handle made by this library).
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> R<&'a T> {
    // SAFETY: the caller's contract: NULL or a valid handle.
    unsafe { p.as_ref() }.ok_or_else(|| invalid(format!("{what} is NULL")))
}

/// # Safety
/// `p` is NULL or points to `n` readable `T`s when `n > 0`.
pub(crate) unsafe fn slice<'a, T>(p: *const T, n: i32, what: &str) -> R<&'a [T]> {
    if n < 0 {
        return Err(invalid(format!("{what}: count {n} is negative")));
    }
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(invalid(format!("{what} is NULL but its count is {n}")));
    }
    // SAFETY: non-NULL, and the caller's contract gives `n` readable elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n as usize) })
}

pub(crate) fn tokens_in(ids: &[i32], what: &str) -> R<Vec<u32>> {
    ids.iter()
        .map(|&t| {
            u32::try_from(t).map_err(|_| invalid(format!("{what}: token id {t} is negative")))
        })
        .collect()
}

/// # Safety
/// `text` is NULL, or NUL-terminated when `len < 0`, or has `len` readable bytes.
pub(crate) unsafe fn text_in<'a>(text: *const c_char, len: i32, what: &str) -> R<&'a str> {
    if text.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    let bytes = if len < 0 {
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        unsafe { CStr::from_ptr(text) }.to_bytes()
    } else {
        // SAFETY: non-NULL with `len` readable bytes by the caller's contract.
        unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len as usize) }
    };
    std::str::from_utf8(bytes).map_err(|e| invalid(format!("{what} is not valid UTF-8: {e}")))
}

/// Copies `s` and a NUL into `buf` when `buf_len` ≥ its length + 1 and returns the length;
/// otherwise returns minus that size.
///
/// # Safety
/// `buf` is NULL or has `buf_len` writable bytes.
pub(crate) unsafe fn text_out(s: &str, buf: *mut c_char, buf_len: i32, what: &str) -> R<i32> {
    let need = i32::try_from(s.len() + 1)
        .map_err(|_| invalid(format!("{what}: the text is larger than 2 GiB")))?;
    if buf_len < need || buf.is_null() {
        if buf.is_null() && buf_len > 0 {
            return Err(invalid(format!(
                "{what}: buffer is NULL but its length is {buf_len}"
            )));
        }
        return Ok(-need);
    }
    // SAFETY: `buf` is non-NULL with at least `need` = len + 1 writable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(need - 1)
}

/// # Safety
/// `out` is NULL or points to a writable `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, v: T, what: &str) -> R<()> {
    if out.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and writable by the caller's contract; `write` drops nothing old.
    unsafe { out.write(v) };
    Ok(())
}

pub(crate) fn lock(s: &raven_session) -> R<std::sync::MutexGuard<'_, Inner>> {
    match s.inner.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(Error {
            status: RAVEN_ERR_BUSY,
            msg: "the session is in use by another call (one thread at a time; a token \
                  callback must not call into its own session)"
                .into(),
        }),
        Err(TryLockError::Poisoned(_)) => Err(Error {
            status: RAVEN_ERR_INTERNAL,
            msg: "the session is unusable after an internal error; free it".into(),
        }),
    }
}
