/* Misuse of the C interface returns error codes with messages and never crashes: NULL handles
 * and out-pointers, invalid parameters, unknown option values, missing and malformed files,
 * small buffers, out-of-range tokens, a full context, re-entering a session from its callback.
 *
 * usage: misuse MODEL.gguf MISSING_PATH GARBAGE_PATH */
#include "common.h"

static bool abort_load(float p, void *user_data) {
    (void)p;
    (*(int *)user_data)++;
    return false;
}

static raven_session *g_session;
static raven_status g_reentry = RAVEN_OK;
static bool reenter(int32_t token, const char *piece, size_t len, const raven_token_stats *st,
                    void *user_data) {
    (void)piece;
    (void)len;
    (void)st;
    (void)user_data;
    g_reentry = raven_session_step(g_session, token, NULL);
    return false;
}

static void session_params_rejected(const raven_model *m, raven_session_params p,
                                    const char *what) {
    raven_session *s = (raven_session *)1;
    raven_status st = raven_session_new(m, &p, &s);
    if (st != RAVEN_ERR_INVALID_ARGUMENT || s != NULL || raven_last_error()[0] == '\0') {
        fprintf(stderr, "%s: raven_session_new returned %s (%s)\n", what,
                raven_status_string(st), raven_last_error());
        g_failures++;
        if (st == RAVEN_OK) raven_session_free(s);
    }
    /* The message names the struct field, never a command-line flag. */
    if (strstr(raven_last_error(), "--") != NULL) {
        fprintf(stderr, "%s: the message names a flag: %s\n", what, raven_last_error());
        g_failures++;
    }
}

/* As session_params_rejected, and the message names `field`. */
static void field_rejected(const raven_model *m, raven_session_params p, const char *field) {
    session_params_rejected(m, p, field);
    if (strstr(raven_last_error(), field) == NULL) {
        fprintf(stderr, "%s: the message does not name it: %s\n", field, raven_last_error());
        g_failures++;
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL MISSING_PATH GARBAGE_PATH\n", argv[0]);
        return 2;
    }
    /* Freeing and cancelling NULL are no-ops. */
    raven_model_free(NULL);
    raven_session_free(NULL);
    raven_session_cancel(NULL);
    raven_log_set(NULL, NULL);

    /* Status names. */
    CHECK(strcmp(raven_status_string(RAVEN_OK), "RAVEN_OK") == 0);
    CHECK(strcmp(raven_status_string(RAVEN_ERR_CANCELLED), "RAVEN_ERR_CANCELLED") == 0);
    CHECK(strcmp(raven_status_string(12345), "unknown status") == 0);

    /* Loading. */
    raven_model *m = (raven_model *)1;
    CHECK_STATUS(raven_model_load(NULL, NULL, NULL, NULL, &m), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK(m == NULL);
    CHECK_STATUS(raven_model_load(argv[1], NULL, NULL, NULL, NULL), RAVEN_ERR_INVALID_ARGUMENT);
    m = (raven_model *)1;
    CHECK_STATUS(raven_model_load(argv[2], NULL, NULL, NULL, &m), RAVEN_ERR_IO);
    CHECK(m == NULL);
    CHECK(strstr(raven_last_error(), argv[2]) != NULL);
    CHECK_STATUS(raven_model_load(argv[3], NULL, NULL, NULL, &m), RAVEN_ERR_FORMAT);
    CHECK(m == NULL);
    CHECK(strstr(raven_last_error(), "GGUF") != NULL);
    raven_model_params mp = raven_model_default_params();
    mp.use_mmap = false;
    CHECK_STATUS(raven_model_load(argv[3], &mp, NULL, NULL, &m), RAVEN_ERR_FORMAT);
    int calls = 0;
    CHECK_STATUS(raven_model_load(argv[1], NULL, abort_load, &calls, &m), RAVEN_ERR_CANCELLED);
    CHECK(m == NULL && calls == 1);
    REQUIRE_OK(raven_model_load(argv[1], NULL, NULL, NULL, &m));

    /* Model queries on NULL. */
    CHECK(raven_model_n_vocab(NULL) == -1);
    CHECK(raven_model_n_embd(NULL) == -1);
    CHECK(raven_model_n_ctx_train(NULL) == -1);
    CHECK(raven_model_mean_recurrence(NULL) == -1);
    CHECK(!raven_model_token_is_stop(NULL, 0));
    CHECK(raven_model_name(NULL, NULL, 0) == RAVEN_SIZE_ERROR);
    char small[2] = {'x', 'x'};
    int32_t need = raven_model_name(m, small, sizeof small);
    CHECK(need < -2 && small[0] == 'x'); /* too small: nothing written, minus the size */

    /* Tokenize / detokenize. */
    int32_t ids[4];
    CHECK(raven_tokenize(NULL, "a", -1, false, ids, 4) == RAVEN_SIZE_ERROR);
    CHECK(raven_tokenize(m, NULL, -1, false, ids, 4) == RAVEN_SIZE_ERROR);
    CHECK(raven_tokenize(m, "a b c d e f g h", -1, false, ids, 4) < -4);
    CHECK(raven_tokenize(m, "a b", -1, false, NULL, 4) == RAVEN_SIZE_ERROR);
    CHECK(raven_tokenize(m, "\xff\xfe", 2, false, ids, 4) == RAVEN_SIZE_ERROR);
    CHECK(strstr(raven_last_error(), "UTF-8") != NULL);
    CHECK(raven_tokenize(m, "", 0, false, NULL, 0) == 0);
    int32_t bad_ids[2] = {5, -3};
    char buf[64];
    CHECK(raven_detokenize(m, bad_ids, 2, true, buf, sizeof buf) == RAVEN_SIZE_ERROR);
    bad_ids[1] = 5000;
    CHECK(raven_detokenize(m, bad_ids, 2, true, buf, sizeof buf) == RAVEN_SIZE_ERROR);
    CHECK(strstr(raven_last_error(), "5000") != NULL);
    CHECK(raven_detokenize(m, NULL, 3, true, buf, sizeof buf) == RAVEN_SIZE_ERROR);
    CHECK(raven_detokenize(m, bad_ids, -1, true, buf, sizeof buf) == RAVEN_SIZE_ERROR);
    int32_t ok_ids[3] = {262, 263, 264};
    int32_t n_text = raven_detokenize(m, ok_ids, 3, true, buf, 1);
    CHECK(n_text < -1);
    CHECK(raven_detokenize(m, ok_ids, 3, true, buf, -n_text) == -n_text - 1);
    CHECK(raven_detokenize(m, NULL, 0, true, buf, sizeof buf) == 0 && buf[0] == '\0');

    /* Sessions: NULL model, NULL out-pointer, invalid parameters. */
    raven_session *s = (raven_session *)1;
    CHECK_STATUS(raven_session_new(NULL, NULL, &s), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL);
    CHECK_STATUS(raven_session_new(m, NULL, NULL), RAVEN_ERR_INVALID_ARGUMENT);
    raven_session_params p = fixture_params(1);
    raven_session_params q;
    q = p; q.exit_criterion = RAVEN_EXIT_KL; q.exit_threshold = -1.0f;
    session_params_rejected(m, q, "negative threshold");
    q = p; q.exit_threshold = 0.0f / 0.0f;
    session_params_rejected(m, q, "NaN threshold");
    q = p; q.exit_criterion = 42;
    session_params_rejected(m, q, "unknown criterion");
    q = p; q.exit_criterion = RAVEN_EXIT_ARGMAX_STABILITY; q.exit_threshold = 2.5f;
    session_params_rejected(m, q, "fractional argmax-stability");
    q = p; q.cache_type = 7;
    session_params_rejected(m, q, "unknown cache type");
    q = p; q.cache_type = RAVEN_CACHE_LATEST; q.cache_k = 3;
    session_params_rejected(m, q, "latest with the wrong modulus");
    q = p; q.budget_ms = -5.0;
    session_params_rejected(m, q, "negative budget");
    q = p; q.max_steps = -1;
    session_params_rejected(m, q, "negative max_steps");
    q = p; q.min_steps = 100;
    session_params_rejected(m, q, "min_steps > max_steps");
    q = p; q.check_every = 0;
    session_params_rejected(m, q, "check_every 0");
    q = p; q.n_ctx = 100000;
    session_params_rejected(m, q, "context larger than trained");
    q = p; q.n_threads = -2;
    session_params_rejected(m, q, "negative threads");
    q = p; q.init_scale = -1.0f;
    session_params_rejected(m, q, "negative init_scale");
    q = p; q.sampling.top_p = 2.0f;
    session_params_rejected(m, q, "top_p > 1");
    q = p; q.sampling.temperature = -1.0f;
    session_params_rejected(m, q, "negative temperature");
    q = p; q.sampling.top_k = -1;
    session_params_rejected(m, q, "negative top_k");
    /* Each invalid field is named as in raven_session_params. */
    q = p; q.min_steps = 0;
    field_rejected(m, q, "min_steps");
    q = p; q.sampling.temperature = -1.0f;
    field_rejected(m, q, "sampling.temperature");
    q = p; q.sampling.top_p = 0.0f;
    field_rejected(m, q, "sampling.top_p");
    q = p; q.sampling.min_p = 1.5f;
    field_rejected(m, q, "sampling.min_p");
    q = p; q.sampling.repeat_penalty = 0.0f;
    field_rejected(m, q, "sampling.repeat_penalty");
    q = p; q.init_scale = -1.0f;
    field_rejected(m, q, "init_scale");
    q = p; q.check_every = 0;
    field_rejected(m, q, "check_every");
    q = p; q.min_steps = 9;
    field_rejected(m, q, "min_steps");
    q = p; q.n_ctx = 100000;
    field_rejected(m, q, "n_ctx");
    q = p; q.exit_criterion = RAVEN_EXIT_KL; q.exit_threshold = -1.0f;
    field_rejected(m, q, "exit_threshold");
    q = p; q.cache_type = RAVEN_CACHE_LATEST; q.cache_k = 3;
    field_rejected(m, q, "cache_type");
    q = p; q.kv_type = 9;
    field_rejected(m, q, "kv_type");
    q = p; q.kv_cap_bytes = 1000;
    CHECK_STATUS(raven_session_new(m, &q, &s), RAVEN_ERR_OUT_OF_MEMORY);
    CHECK(strstr(raven_last_error(), "KV cache") != NULL);
    q = p; q.cache_type = RAVEN_CACHE_FULL; q.max_steps = 2000000000; q.n_ctx = 256;
    CHECK_STATUS(raven_session_new(m, &q, &s), RAVEN_ERR_OUT_OF_MEMORY);

    /* Calls on NULL sessions. */
    int32_t tok = 0;
    raven_token_stats ts;
    const float *logits = NULL;
    int32_t n_vocab = 0;
    CHECK_STATUS(raven_session_reset(NULL), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_prefill(NULL, ok_ids, 3), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_step(NULL, 1, &ts), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_sample(NULL, &tok), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_logits(NULL, &logits, &n_vocab), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_generate(NULL, ok_ids, 3, 4, NULL, NULL, NULL),
                 RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_set_sampling(NULL, NULL), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK(raven_session_n_tokens(NULL) == -1);
    CHECK(raven_session_n_ctx(NULL) == -1);

    /* A real session, misused. */
    REQUIRE_OK(raven_session_new(m, &p, &s));
    CHECK_STATUS(raven_session_sample(s, &tok), RAVEN_ERR_INVALID_ARGUMENT); /* no logits */
    CHECK_STATUS(raven_session_logits(s, &logits, &n_vocab), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_generate(s, NULL, 0, 4, NULL, NULL, NULL),
                 RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_prefill(s, NULL, 3), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_prefill(s, ok_ids, 0), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_prefill(s, ok_ids, -1), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_prefill(s, bad_ids, 2), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_step(s, -1, NULL), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_step(s, 1024, NULL), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_generate(s, ok_ids, 3, -1, NULL, NULL, NULL),
                 RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_set_sampling(s, NULL), RAVEN_ERR_INVALID_ARGUMENT);
    raven_sampling_params sp = raven_sampling_default_params();
    sp.min_p = 1.5f;
    CHECK_STATUS(raven_session_set_sampling(s, &sp), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK(raven_session_n_tokens(s) == 0);
    REQUIRE_OK(raven_session_prefill(s, ok_ids, 3));
    CHECK_STATUS(raven_session_sample(s, NULL), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_logits(s, NULL, &n_vocab), RAVEN_ERR_INVALID_ARGUMENT);

    /* Re-entering the session from its own callback is refused, not raced. */
    g_session = s;
    raven_generate_stats gs;
    CHECK_STATUS(raven_session_generate(s, NULL, 0, 4, reenter, NULL, &gs), RAVEN_OK);
    CHECK(g_reentry == RAVEN_ERR_BUSY);
    CHECK(gs.n_generated == 1 && gs.stop_reason == RAVEN_STOP_CALLBACK);

    /* A prompt larger than the context, then filling the context by generation (a small
     * context keeps this cheap under valgrind). */
    CHECK(raven_session_n_ctx(s) == 256);
    raven_session_free(s);
    q = p;
    q.n_ctx = 16;
    REQUIRE_OK(raven_session_new(m, &q, &s));
    int32_t n_ctx = raven_session_n_ctx(s);
    CHECK(n_ctx == 16);
    int32_t many[17];
    for (int32_t i = 0; i <= n_ctx; i++) many[i] = 262 + i;
    CHECK_STATUS(raven_session_prefill(s, many, n_ctx + 1), RAVEN_ERR_CONTEXT_OVERFLOW);
    CHECK(raven_session_n_tokens(s) == 0);
    REQUIRE_OK(raven_session_prefill(s, many, n_ctx - 3));
    CHECK_STATUS(raven_session_generate(s, NULL, 0, 100, NULL, NULL, &gs), RAVEN_OK);
    CHECK(gs.stop_reason == RAVEN_STOP_CONTEXT || gs.stop_reason == RAVEN_STOP_TOKEN);
    CHECK(raven_session_n_tokens(s) <= n_ctx);
    if (gs.stop_reason == RAVEN_STOP_CONTEXT) {
        CHECK(raven_session_n_tokens(s) == n_ctx && gs.n_generated == 3);
        CHECK_STATUS(raven_session_step(s, 262, NULL), RAVEN_ERR_CONTEXT_OVERFLOW);
    }
    raven_session_free(s);

    /* Sessions outlive the model handle. */
    REQUIRE_OK(raven_session_new(m, &p, &s));
    raven_model_free(m);
    CHECK_STATUS(raven_session_prefill(s, ok_ids, 3), RAVEN_OK);
    CHECK_STATUS(raven_session_sample(s, &tok), RAVEN_OK);
    raven_session_free(s);
    return finish("misuse");
}
