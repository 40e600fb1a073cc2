//! Tokenizing and detokenizing.

use super::*;

/// Turns UTF-8 `text` into token ids. `text_len` is its length in bytes, or negative when
/// `text` is NUL-terminated. `add_special` lets the tokenizer add its tokens (e.g. a BOS);
/// special tokens written in the text are recognised either way. Writes at most `n_max` ids
/// into `tokens` and returns how many there are; when `n_max` is too small, writes nothing
/// and returns minus the count needed (call again with a buffer that large). On other errors
/// returns `RAVEN_SIZE_ERROR`.
///
/// # Safety
/// `model` is NULL or a live model; `text` is NULL or as described; `tokens` is NULL or has
/// `n_max` writable ids.
#[no_mangle]
pub unsafe extern "C" fn raven_tokenize(
    model: *const raven_model,
    text: *const c_char,
    text_len: i32,
    add_special: bool,
    tokens: *mut i32,
    n_max: i32,
) -> i32 {
    sized("raven_tokenize", || {
        // SAFETY: NULL or live by the contract.
        let m = unsafe { handle(model, "model") }?;
        // SAFETY: the text contract.
        let text = unsafe { text_in(text, text_len, "text") }?;
        let ids = m.model.tokenizer()?.encode(text, add_special)?;
        let n = i32::try_from(ids.len()).map_err(|_| invalid("text: too many tokens"))?;
        if n_max < n || (tokens.is_null() && n > 0) {
            if tokens.is_null() && n_max > 0 {
                return Err(invalid(format!("tokens is NULL but n_max is {n_max}")));
            }
            return Ok(-n);
        }
        for (i, &t) in ids.iter().enumerate() {
            // SAFETY: `tokens` has at least `n_max` ≥ n writable ids.
            unsafe { tokens.add(i).write(t as i32) };
        }
        Ok(n)
    })
}

/// Turns token ids into UTF-8 text (special tokens left out when `skip_special`), written
/// with a NUL into `buf`. Returns the text's length in bytes; when `buf_len` is less than
/// length + 1, writes nothing and returns minus that size. An unknown id or other error
/// returns `RAVEN_SIZE_ERROR`.
///
/// # Safety
/// `model` is NULL or a live model; `tokens` is NULL or has `n_tokens` ids; `buf` is NULL or
/// has `buf_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn raven_detokenize(
    model: *const raven_model,
    tokens: *const i32,
    n_tokens: i32,
    skip_special: bool,
    buf: *mut c_char,
    buf_len: i32,
) -> i32 {
    sized("raven_detokenize", || {
        // SAFETY: NULL or live by the contract.
        let m = unsafe { handle(model, "model") }?;
        // SAFETY: `n_tokens` readable ids by the contract.
        let ids = tokens_in(unsafe { slice(tokens, n_tokens, "tokens") }?, "tokens")?;
        let s = m.model.tokenizer()?.decode(&ids, skip_special)?;
        // SAFETY: `buf` has `buf_len` writable bytes by the contract.
        unsafe { text_out(&s, buf, buf_len, "raven_detokenize") }
    })
}
