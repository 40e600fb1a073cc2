//! Loading and querying a model.

use super::*;

/// Default model parameters (memory-mapped).
#[no_mangle]
pub extern "C" fn raven_model_default_params() -> raven_model_params {
    const D: raven_model_params = raven_model_params { use_mmap: true };
    guard("raven_model_default_params", |_| D, || Ok(D))
}

/// Loads a GGUF model (made by `raven convert`). `params` may be NULL (defaults).
/// `progress` (may be NULL) is called with values from 0 to 1 and may return false to abort
/// (`RAVEN_ERR_CANCELLED`). On success `*out_model` is a new model to free with
/// `raven_model_free`; on failure it is set to NULL.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `params` is NULL or valid; `out_model` is NULL
/// or writable; `progress` must be callable with `user_data` during the call.
#[no_mangle]
pub unsafe extern "C" fn raven_model_load(
    path: *const c_char,
    params: *const raven_model_params,
    progress: raven_progress_callback,
    user_data: *mut c_void,
    out_model: *mut *mut raven_model,
) -> raven_status {
    status("raven_model_load", || {
        if out_model.is_null() {
            return Err(invalid("out_model is NULL"));
        }
        // SAFETY: non-NULL and writable by the contract.
        unsafe { out_model.write(std::ptr::null_mut()) };
        if path.is_null() {
            return Err(invalid("path is NULL"));
        }
        // SAFETY: non-NULL and NUL-terminated by the contract.
        let path = path_from_c(unsafe { CStr::from_ptr(path) })?;
        // SAFETY: NULL or valid by the contract.
        let p = unsafe { params.as_ref() }
            .copied()
            .unwrap_or(raven_model_params { use_mmap: true });
        let report = |x: f32| -> R<()> {
            match progress {
                // SAFETY: callable with `user_data` during this call by the contract.
                Some(cb) if !unsafe { cb(x, user_data) } => Err(Error {
                    status: RAVEN_ERR_CANCELLED,
                    msg: "loading was cancelled by the progress callback".into(),
                }),
                _ => Ok(()),
            }
        };
        let t0 = Instant::now();
        report(0.0)?;
        let model = if p.use_mmap {
            Model::load(&path)?
        } else {
            let bytes = read_with_progress(&path, |x| report(0.9 * x))?;
            let g = raven_gguf::Gguf::from_bytes(bytes).map_err(|e| Error {
                status: RAVEN_ERR_FORMAT,
                msg: format!("{}: {e}", path.display()),
            })?;
            Model::from_gguf(g, &path.display().to_string())?
        };
        report(1.0)?;
        let c = &model.config;
        log(
            RAVEN_LOG_INFO,
            &format!(
                "loaded {} ({}): {} MB of weights, h={} V={} layers {}+{}+{}, context {}, in {:.0} ms",
                path.display(),
                model.name(),
                model.weight_bytes() / 1_000_000,
                c.n_embd,
                c.n_vocab,
                c.n_prelude,
                c.n_core,
                c.n_coda,
                c.context,
                t0.elapsed().as_secs_f64() * 1e3
            ),
        );
        let h = Box::new(raven_model {
            model: Arc::new(model),
        });
        // SAFETY: checked non-NULL above.
        unsafe { out_model.write(Box::into_raw(h)) };
        Ok(())
    })
}

fn path_from_c(p: &CStr) -> R<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(p.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        p.to_str()
            .map(PathBuf::from)
            .map_err(|_| invalid("path is not valid UTF-8"))
    }
}

fn read_with_progress(path: &std::path::Path, mut report: impl FnMut(f32) -> R<()>) -> R<Vec<u8>> {
    let io = |e| {
        Error::from(RavenError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len as usize).map_err(|_| Error {
        status: RAVEN_ERR_OUT_OF_MEMORY,
        msg: format!(
            "{}: cannot allocate {len} bytes to read it (load it memory-mapped instead)",
            path.display()
        ),
    })?;
    let mut chunk = vec![0u8; 1 << 22];
    loop {
        let n = f.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        report(if len == 0 {
            1.0
        } else {
            (bytes.len() as f64 / len as f64).min(1.0) as f32
        })?;
    }
    Ok(bytes)
}

/// Frees a model. NULL is a no-op. Sessions made from it stay usable (they keep it alive).
///
/// # Safety
/// `model` is NULL or a model from `raven_model_load` not yet freed; no other thread uses
/// this handle during or after the call.
#[no_mangle]
pub unsafe extern "C" fn raven_model_free(model: *mut raven_model) {
    guard(
        "raven_model_free",
        |_| (),
        || {
            if !model.is_null() {
                // SAFETY: made by `Box::into_raw` in `raven_model_load`, freed once.
                drop(unsafe { Box::from_raw(model) });
            }
            Ok(())
        },
    )
}

/// Runs a query on a model handle: its value, or `fail` when the handle is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
unsafe fn query<T>(
    name: &str,
    model: *const raven_model,
    fail: T,
    f: impl FnOnce(&Model) -> T,
) -> T {
    guard(
        name,
        |_| fail,
        || {
            // SAFETY: NULL or live by the caller's contract.
            let m = unsafe { handle(model, "model") }?;
            Ok(f(&m.model))
        },
    )
}

/// Token ids of the vocabulary (valid ids are 0 .. n-1), or -1 when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_n_vocab(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_n_vocab", model, -1, |m| {
            m.config.n_vocab as i32
        })
    }
}

/// The context length the model was trained with, or -1 when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_n_ctx_train(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_n_ctx_train", model, -1, |m| {
            m.config.context as i32
        })
    }
}

/// The embedding width, or -1 when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_n_embd(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { query("raven_model_n_embd", model, -1, |m| m.config.n_embd as i32) }
}

/// The core (recurrent) layer count, or -1 when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_n_core_layers(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_n_core_layers", model, -1, |m| {
            m.config.n_core as i32
        })
    }
}

/// The default number of core iterations (the model's mean recurrence), or -1 when `model` is
/// NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_mean_recurrence(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_mean_recurrence", model, -1, |m| {
            m.config.mean_recurrence as i32
        })
    }
}

/// The beginning-of-text token, or -1 when the model has none or `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_token_bos(model: *const raven_model) -> i32 {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_token_bos", model, -1, |m| {
            m.vocab.bos.map_or(-1, |t| t as i32)
        })
    }
}

/// True when `token` ends a generation (end of text, end of turn); false for other tokens or
/// a NULL `model`.
///
/// # Safety
/// `model` is NULL or a live model.
#[no_mangle]
pub unsafe extern "C" fn raven_model_token_is_stop(model: *const raven_model, token: i32) -> bool {
    // SAFETY: forwarded contract.
    unsafe {
        query("raven_model_token_is_stop", model, false, |m| {
            u32::try_from(token).is_ok_and(|t| m.stop_tokens().contains(&t))
        })
    }
}

/// Writes the model's name (`general.name`) and a NUL into `buf`. Returns its length in bytes;
/// when `buf_len` is less than length + 1, writes nothing and returns minus that size;
/// `RAVEN_SIZE_ERROR` when `model` is NULL.
///
/// # Safety
/// `model` is NULL or a live model; `buf` is NULL or has `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn raven_model_name(
    model: *const raven_model,
    buf: *mut c_char,
    buf_len: i32,
) -> i32 {
    sized("raven_model_name", || {
        // SAFETY: NULL or live by the contract.
        let m = unsafe { handle(model, "model") }?;
        // SAFETY: `buf` has `buf_len` writable bytes by the contract.
        unsafe { text_out(m.model.name(), buf, buf_len, "raven_model_name") }
    })
}
