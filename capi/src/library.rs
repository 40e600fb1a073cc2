//! Library-wide calls: version, status names, the last error, the log callback.

use super::*;

/// The library version, e.g. "0.1.0" (a static string).
#[no_mangle]
pub extern "C" fn raven_version() -> *const c_char {
    guard(
        "raven_version",
        |_| c"".as_ptr(),
        || Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()),
    )
}

/// A static name for a status code, e.g. "RAVEN_ERR_CANCELLED"; "unknown status" for a value
/// outside the list.
#[no_mangle]
pub extern "C" fn raven_status_string(status: raven_status) -> *const c_char {
    guard(
        "raven_status_string",
        |_| c"".as_ptr(),
        || Ok(status_name(status).as_ptr().cast()),
    )
}

fn status_name(status: raven_status) -> &'static str {
    match status {
        RAVEN_OK => "RAVEN_OK\0",
        RAVEN_ERR_INVALID_ARGUMENT => "RAVEN_ERR_INVALID_ARGUMENT\0",
        RAVEN_ERR_IO => "RAVEN_ERR_IO\0",
        RAVEN_ERR_FORMAT => "RAVEN_ERR_FORMAT\0",
        RAVEN_ERR_CONTEXT_OVERFLOW => "RAVEN_ERR_CONTEXT_OVERFLOW\0",
        RAVEN_ERR_CANCELLED => "RAVEN_ERR_CANCELLED\0",
        RAVEN_ERR_OUT_OF_MEMORY => "RAVEN_ERR_OUT_OF_MEMORY\0",
        RAVEN_ERR_BUSY => "RAVEN_ERR_BUSY\0",
        RAVEN_ERR_INTERNAL => "RAVEN_ERR_INTERNAL\0",
        _ => "unknown status\0",
    }
}

/// The message of the last call that failed on this thread ("" if none): the function, then
/// what went wrong and what to do. Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn raven_last_error() -> *const c_char {
    guard(
        "raven_last_error",
        |_| c"".as_ptr(),
        || {
            Ok(LAST_ERROR
                .try_with(|e| e.borrow().as_ptr())
                .unwrap_or(c"".as_ptr()))
        },
    )
}

/// Sends the library's log messages to `callback` (NULL: discard them, the default). The
/// callback may be called from any thread that calls into the library, and must not call
/// `raven_log_set`.
///
/// # Safety
/// `callback` must stay callable with `user_data` until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn raven_log_set(callback: raven_log_callback, user_data: *mut c_void) {
    guard(
        "raven_log_set",
        |_| (),
        || {
            let new = callback.map(|cb| Logger {
                cb,
                user_data: user_data as usize,
            });
            match LOGGER.lock() {
                Ok(mut l) => *l = new,
                Err(p) => *p.into_inner() = new,
            }
            Ok(())
        },
    )
}
