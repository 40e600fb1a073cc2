/* The parallel (diffusion-forcing) sampler through the C ABI (sampler = RAVEN_SAMPLER_PARALLEL):
 *
 * - its defaults from raven_session_default_params() are the command line's;
 * - in deterministic settings (init_scale 0, noise 0, temperature 0) and the paper's
 *   conservative setting (official mode, r' 4, wavefront 128, headway 1, ema 0.1, latent-diff
 *   0.03, 32 steps) raven_session_generate streams the official sampler's tokens (the case
 *   diffusion.conservative.p0 of tests/fixtures/tiny-huginn-diffusion), their text, the stop
 *   reason and the iterations of their positions; a reset gives them again;
 * - the corrected mode with a wavefront of 1 and the fixed rule gives the tokens of a plain
 *   session with the same parameters;
 * - the session keeps its tokens (n_prompt 0 continues), the callback stops it, a cancel from
 *   the callback ends it, max_sampler_steps stops it, the plain sampler's calls are refused;
 * - invalid knobs are refused naming their field of raven_session_params (never a --flag).
 *
 * usage: parallel MODEL.gguf PROMPT_IDS EXPECTED_IDS EXPECTED_TOTAL_STEPS */
#include "common.h"

typedef struct {
    int32_t tokens[256];
    int32_t n;
    char text[4096];
    size_t text_len;
    int bad_stats;
    int32_t stop_after;    /* return false once this many tokens arrived (0: never) */
    raven_session *cancel; /* cancel this session at the first token */
} collected;

static bool on_token(int32_t token, const char *piece, size_t len, const raven_token_stats *st,
                     void *user_data) {
    collected *c = user_data;
    if (token >= 0) {
        if (c->n < 256) c->tokens[c->n++] = token;
        if (st == NULL || st->token != token || st->steps != 0 || st->ms < 0.0) c->bad_stats++;
    }
    if (piece[len] != '\0') c->bad_stats++;
    if (c->text_len + len < sizeof c->text) {
        memcpy(c->text + c->text_len, piece, len);
        c->text_len += len;
        c->text[c->text_len] = '\0';
    }
    if (c->cancel) raven_session_cancel(c->cancel);
    return c->stop_after == 0 || c->n < c->stop_after;
}

static void check_same(const int32_t *got, int32_t n_got, const int32_t *want, int32_t n_want,
                       const char *what) {
    int same = n_got == n_want;
    for (int32_t i = 0; same && i < n_want; i++) same = got[i] == want[i];
    if (!same) {
        fprintf(stderr, "%s: got", what);
        for (int32_t i = 0; i < n_got; i++) fprintf(stderr, " %d", got[i]);
        fprintf(stderr, ", expected");
        for (int32_t i = 0; i < n_want; i++) fprintf(stderr, " %d", want[i]);
        fprintf(stderr, "\n");
        g_failures++;
    }
}

/* The fixture's deterministic conservative setting: the parallel sampler with its defaults,
 * the latent-diff freezing rule (threshold 0: its default 0.03) and 32 steps. */
static raven_session_params parallel_params(void) {
    raven_session_params p = raven_session_default_params();
    p.n_threads = 2;
    p.sampler = RAVEN_SAMPLER_PARALLEL;
    p.exit_criterion = RAVEN_EXIT_LATENT_DIFF;
    p.max_steps = 32;
    p.init_scale = 0.0f;
    p.noise = 0.0;
    p.sampling.temperature = 0.0f;
    return p;
}

/* raven_session_new refuses `p` with an error naming `field` and no command-line flag. */
static void refused(raven_model *m, raven_session_params p, const char *field) {
    raven_session *s = NULL;
    CHECK_STATUS(raven_session_new(m, &p, &s), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL);
    const char *e = raven_last_error();
    if (strstr(e, field) == NULL || strstr(e, "--") != NULL) {
        fprintf(stderr, "expected an error naming %s (and no flag), got: %s\n", field, e);
        g_failures++;
    }
    raven_session_free(s);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL PROMPT_IDS EXPECTED_IDS EXPECTED_TOTAL_STEPS\n", argv[0]);
        return 2;
    }
    int32_t *prompt, *want;
    int32_t n_prompt = parse_ids(argv[2], &prompt);
    int32_t n_want = parse_ids(argv[3], &want);
    int64_t want_steps = strtoll(argv[4], NULL, 10);
    /* The official output keeps every token frozen in the last step: one more than asked. */
    int32_t max_new = n_want - 1;

    raven_session_params d = raven_session_default_params();
    CHECK(d.sampler == RAVEN_SAMPLER_PLAIN);
    CHECK(d.parallel_mode == RAVEN_PARALLEL_OFFICIAL);
    CHECK(d.inner_steps == 4 && d.wavefront == 128 && d.headway == 1);
    CHECK(d.ema == 0.1 && d.noise == 0.0 && d.noise_dampened && !d.noise_sqrt);
    CHECK(d.max_sampler_steps == 4096);

    raven_model *m = NULL;
    REQUIRE_OK(raven_model_load(argv[1], NULL, NULL, NULL, &m));

    /* The official tokens, streamed, with their text and statistics. */
    raven_session_params p = parallel_params();
    raven_session *s = NULL;
    REQUIRE_OK(raven_session_new(m, &p, &s));
    CHECK(raven_session_n_ctx(s) == raven_model_n_ctx_train(m));
    collected c;
    memset(&c, 0, sizeof c);
    raven_generate_stats gs;
    REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, max_new, on_token, &c, &gs));
    check_same(c.tokens, c.n, want, n_want, "official conservative p0");
    CHECK(c.bad_stats == 0);
    CHECK(gs.n_prompt == n_prompt);
    CHECK(gs.n_generated == n_want);
    CHECK(gs.stop_reason == RAVEN_STOP_LENGTH);
    CHECK(gs.total_steps == want_steps);
    CHECK(gs.n_exited_early > 0 && gs.n_budget_capped == 0);
    CHECK(gs.prefill_ms >= 0.0 && gs.generate_ms >= 0.0);
    CHECK(raven_session_n_tokens(s) == n_prompt + n_want);
    {
        char full[4096];
        int32_t len = raven_detokenize(m, want, n_want, true, full, sizeof full);
        CHECK(len >= 0 && (size_t)len == c.text_len && memcmp(full, c.text, c.text_len) == 0);
    }

    /* Again after a reset: the same tokens; without a callback too. */
    REQUIRE_OK(raven_session_reset(s));
    CHECK(raven_session_n_tokens(s) == 0);
    CHECK_STATUS(raven_session_generate(s, NULL, 0, 4, NULL, NULL, &gs),
                 RAVEN_ERR_INVALID_ARGUMENT);
    memset(&c, 0, sizeof c);
    REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, max_new, on_token, &c, NULL));
    check_same(c.tokens, c.n, want, n_want, "after a reset");
    REQUIRE_OK(raven_session_reset(s));
    REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, max_new, NULL, NULL, &gs));
    CHECK(gs.n_generated == n_want && gs.stop_reason == RAVEN_STOP_LENGTH);

    /* n_prompt 0 continues after the session's tokens. */
    memset(&c, 0, sizeof c);
    REQUIRE_OK(raven_session_generate(s, NULL, 0, 4, on_token, &c, &gs));
    CHECK(gs.n_prompt == 0 && gs.n_generated == c.n && c.n >= 4);
    CHECK(raven_session_n_tokens(s) == n_prompt + n_want + c.n);

    /* The callback stops it. */
    REQUIRE_OK(raven_session_reset(s));
    memset(&c, 0, sizeof c);
    c.stop_after = 3;
    REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, max_new, on_token, &c, &gs));
    CHECK(c.n == 3 && gs.n_generated == 3);
    CHECK(gs.stop_reason == RAVEN_STOP_CALLBACK);
    check_same(c.tokens, c.n, want, 3, "stopped by the callback");

    /* A cancel (here from the callback) ends it with RAVEN_ERR_CANCELLED, stats filled. */
    REQUIRE_OK(raven_session_reset(s));
    memset(&c, 0, sizeof c);
    c.cancel = s;
    memset(&gs, 0, sizeof gs);
    CHECK_STATUS(raven_session_generate(s, prompt, n_prompt, max_new, on_token, &c, &gs),
                 RAVEN_ERR_CANCELLED);
    CHECK(gs.n_generated == c.n && c.n >= 1 && c.n < n_want);
    /* The session stays usable. */
    REQUIRE_OK(raven_session_reset(s));
    memset(&c, 0, sizeof c);
    REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, max_new, on_token, &c, &gs));
    check_same(c.tokens, c.n, want, n_want, "after a cancel");

    /* The plain sampler's calls are refused, naming the sampler; sampling can be replaced. */
    int32_t tok = 0;
    const float *logits = NULL;
    int32_t nv = 0;
    CHECK_STATUS(raven_session_prefill(s, prompt, n_prompt), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK(strstr(raven_last_error(), "RAVEN_SAMPLER_PARALLEL") != NULL);
    CHECK_STATUS(raven_session_step(s, prompt[0], NULL), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_sample(s, &tok), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(raven_session_logits(s, &logits, &nv), RAVEN_ERR_INVALID_ARGUMENT);
    raven_sampling_params sp = raven_sampling_default_params();
    REQUIRE_OK(raven_session_set_sampling(s, &sp));
    raven_session_free(s);

    /* Corrected mode, a wavefront of 1, the fixed rule: a plain session's tokens. */
    {
        raven_session_params q = parallel_params();
        q.parallel_mode = RAVEN_PARALLEL_CORRECTED;
        q.exit_criterion = RAVEN_EXIT_NONE;
        q.wavefront = 1;
        q.ema = 0.0;
        collected a, b;
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        REQUIRE_OK(raven_session_new(m, &q, &s));
        REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, 12, on_token, &a, &gs));
        CHECK(a.bad_stats == 0);
        /* Every position runs 32 iterations; the last may not have started when it ends. */
        CHECK(gs.n_generated == a.n);
        CHECK(gs.total_steps >= 32 * (int64_t)(a.n - 1) && gs.total_steps <= 32 * (int64_t)a.n);
        CHECK(gs.n_exited_early == 0);
        raven_session_free(s);
        /* The plain sampler, token by token (the parallel fields are not read with it). */
        q.sampler = RAVEN_SAMPLER_PLAIN;
        q.inner_steps = -7;
        REQUIRE_OK(raven_session_new(m, &q, &s));
        REQUIRE_OK(raven_session_prefill(s, prompt, n_prompt));
        for (int32_t i = 0; i < 12; i++) {
            int32_t t;
            REQUIRE_OK(raven_session_sample(s, &t));
            if (raven_model_token_is_stop(m, t)) break;
            b.tokens[b.n++] = t;
            REQUIRE_OK(raven_session_step(s, t, NULL));
        }
        raven_session_free(s);
        CHECK(a.n >= 1);
        check_same(a.tokens, a.n, b.tokens, b.n, "corrected wavefront 1 vs plain decoding");
    }

    /* max_sampler_steps stops it. */
    {
        raven_session_params q = parallel_params();
        q.parallel_mode = RAVEN_PARALLEL_CORRECTED;
        q.max_sampler_steps = 2;
        REQUIRE_OK(raven_session_new(m, &q, &s));
        REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, max_new, NULL, NULL, &gs));
        CHECK(gs.stop_reason == RAVEN_STOP_SAMPLER_STEPS);
        CHECK(gs.n_generated < max_new);
        raven_session_free(s);
    }

    /* Invalid knobs, each naming its field. */
    raven_session_params bad;
    bad = parallel_params(); bad.sampler = 7;                      refused(m, bad, "sampler");
    bad = parallel_params(); bad.parallel_mode = 3;                refused(m, bad, "parallel_mode");
    bad = parallel_params(); bad.inner_steps = 0;                  refused(m, bad, "inner_steps");
    bad = parallel_params(); bad.inner_steps = -1;                 refused(m, bad, "inner_steps");
    bad = parallel_params(); bad.wavefront = -1;                   refused(m, bad, "wavefront");
    bad = parallel_params(); bad.headway = 0;                      refused(m, bad, "headway");
    bad = parallel_params(); bad.ema = 1.5;                        refused(m, bad, "ema");
    bad = parallel_params(); bad.noise = -0.5;                     refused(m, bad, "noise");
    bad = parallel_params(); bad.max_sampler_steps = 0;            refused(m, bad, "max_sampler_steps");
    bad = parallel_params(); bad.exit_criterion = RAVEN_EXIT_KL;   refused(m, bad, "exit_criterion");
    bad = parallel_params(); bad.budget_ms = 10.0;                 refused(m, bad, "budget_ms");
    bad = parallel_params(); bad.check_every = 2;                  refused(m, bad, "check_every");
    bad = parallel_params(); bad.min_steps = 2;                    refused(m, bad, "min_steps");
    bad = parallel_params(); bad.exit_criterion = RAVEN_EXIT_NONE; bad.wavefront = 4;
    refused(m, bad, "wavefront");

    raven_model_free(m);
    free(prompt);
    free(want);
    return finish("parallel");
}
