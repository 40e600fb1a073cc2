/* Loads the fixture model and decodes greedily with a zero initial state and 8 iterations: the
 * tokens must be the official implementation's (case decode.full.p0.r8), through
 * raven_session_generate and through the prefill/sample/step calls alike. Also: model queries,
 * tokenize/detokenize with the two-call size convention, streamed text, logs, no-mmap loading,
 * an exit criterion and a latency budget.
 *
 * usage: generate MODEL.gguf PROMPT_IDS EXPECTED_IDS PROMPT_TEXT */
#include "common.h"

typedef struct {
    int32_t tokens[256];
    int32_t n;
    char text[4096];
    size_t text_len;
    int bad_stats;
} collected;

static bool on_token(int32_t token, const char *piece, size_t len, const raven_token_stats *st,
                     void *user_data) {
    collected *c = user_data;
    if (token >= 0) {
        if (c->n < 256) c->tokens[c->n++] = token;
        if (st == NULL || st->token != token || st->steps != 8 || st->exited_early) c->bad_stats++;
    }
    if (piece[len] != '\0') c->bad_stats++;
    if (c->text_len + len < sizeof c->text) {
        memcpy(c->text + c->text_len, piece, len);
        c->text_len += len;
        c->text[c->text_len] = '\0';
    }
    return true;
}

static int progress_calls = 0;
static float last_progress = -1.0f;
static bool on_progress(float p, void *user_data) {
    (void)user_data;
    if (p < last_progress) progress_calls = -1000; /* must not go backwards */
    last_progress = p;
    progress_calls++;
    return true;
}

static int log_lines = 0;
static void on_log(raven_log_level level, const char *text, void *user_data) {
    (void)level;
    (void)user_data;
    if (text && text[0]) log_lines++;
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

static void generate_matches(raven_model *m, const int32_t *prompt, int32_t n_prompt,
                             const int32_t *want, int32_t n_want, const char *what) {
    raven_session_params p = fixture_params(2);
    raven_session *s = NULL;
    REQUIRE_OK(raven_session_new(m, &p, &s));
    collected c;
    memset(&c, 0, sizeof c);
    raven_generate_stats gs;
    REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, n_want, on_token, &c, &gs));
    check_same(c.tokens, c.n, want, n_want, what);
    CHECK(c.bad_stats == 0);
    CHECK(gs.n_prompt == n_prompt);
    CHECK(gs.n_generated == n_want);
    CHECK(gs.stop_reason == RAVEN_STOP_LENGTH);
    CHECK(gs.total_steps == 8 * (int64_t)n_want);
    CHECK(gs.n_exited_early == 0 && gs.n_budget_capped == 0);
    CHECK(raven_session_n_tokens(s) == n_prompt + n_want);
    raven_session_free(s);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL PROMPT_IDS EXPECTED_IDS PROMPT_TEXT\n", argv[0]);
        return 2;
    }
    int32_t *prompt, *want;
    int32_t n_prompt = parse_ids(argv[2], &prompt);
    int32_t n_want = parse_ids(argv[3], &want);
    const char *prompt_text = argv[4];

    CHECK(raven_version()[0] != '\0');
    raven_log_set(on_log, NULL);

    raven_model *m = NULL;
    raven_model_params mp = raven_model_default_params();
    CHECK(mp.use_mmap);
    REQUIRE_OK(raven_model_load(argv[1], &mp, on_progress, NULL, &m));
    CHECK(m != NULL);
    CHECK(progress_calls >= 2 && last_progress == 1.0f);
    CHECK(log_lines >= 1);

    /* Queries. */
    CHECK(raven_model_n_vocab(m) == 1024);
    CHECK(raven_model_n_embd(m) == 64);
    CHECK(raven_model_n_ctx_train(m) == 256);
    CHECK(raven_model_n_core_layers(m) == 4);
    CHECK(raven_model_mean_recurrence(m) == 32);
    CHECK(raven_model_token_bos(m) == 1014);
    CHECK(raven_model_token_is_stop(m, 1015));
    CHECK(!raven_model_token_is_stop(m, 557));
    int32_t need = raven_model_name(m, NULL, 0);
    CHECK(need < 0 && need > -1000);
    if (need < 0 && need > -1000) {
        char *name = malloc((size_t)-need);
        CHECK(raven_model_name(m, name, -need) == -need - 1);
        CHECK(strlen(name) == (size_t)(-need - 1));
        free(name);
    }

    /* Tokenize: size query, then fill. */
    int32_t n_tok = raven_tokenize(m, prompt_text, -1, false, NULL, 0);
    CHECK(n_tok == -n_prompt);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_prompt);
    CHECK(raven_tokenize(m, prompt_text, (int32_t)strlen(prompt_text), false, ids, n_prompt) ==
          n_prompt);
    check_same(ids, n_prompt, prompt, n_prompt, "tokenize");
    free(ids);

    /* Detokenize: size query, then fill. */
    int32_t n_text = raven_detokenize(m, prompt, n_prompt, true, NULL, 0);
    CHECK(n_text == -(int32_t)(strlen(prompt_text) + 1));
    if (n_text < 0 && n_text > -100000) {
        char *text = malloc((size_t)-n_text);
        CHECK(raven_detokenize(m, prompt, n_prompt, true, text, -n_text) == -n_text - 1);
        CHECK(strcmp(text, prompt_text) == 0);
        free(text);
    }

    /* Acceptance: greedy generation gives the official tokens. */
    generate_matches(m, prompt, n_prompt, want, n_want, "raven_session_generate");

    /* The streamed text is the detokenized tokens. */
    {
        raven_session_params p = fixture_params(1);
        raven_session *s = NULL;
        REQUIRE_OK(raven_session_new(m, &p, &s));
        collected c;
        memset(&c, 0, sizeof c);
        REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, n_want, on_token, &c, NULL));
        char full[4096];
        int32_t len = raven_detokenize(m, want, n_want, true, full, sizeof full);
        CHECK(len >= 0 && (size_t)len == c.text_len && strcmp(full, c.text) == 0);

        /* Continue from the current logits (n_prompt 0), then reset and repeat: same tokens. */
        collected more;
        memset(&more, 0, sizeof more);
        REQUIRE_OK(raven_session_generate(s, NULL, 0, 2, on_token, &more, NULL));
        CHECK(more.n == 2);
        REQUIRE_OK(raven_session_reset(s));
        CHECK(raven_session_n_tokens(s) == 0);
        memset(&c, 0, sizeof c);
        REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, n_want, on_token, &c, NULL));
        check_same(c.tokens, c.n, want, n_want, "after reset");

        /* The same by hand: prefill, then sample and step; logits agree with the samples. */
        REQUIRE_OK(raven_session_reset(s));
        REQUIRE_OK(raven_session_prefill(s, prompt, n_prompt));
        int32_t got[256];
        for (int32_t i = 0; i < n_want; i++) {
            const float *logits = NULL;
            int32_t n_vocab = 0;
            REQUIRE_OK(raven_session_logits(s, &logits, &n_vocab));
            CHECK(n_vocab == 1024);
            int32_t best = 0;
            for (int32_t v = 1; v < n_vocab; v++)
                if (logits[v] > logits[best]) best = v;
            REQUIRE_OK(raven_session_sample(s, &got[i]));
            CHECK(got[i] == best);
            raven_token_stats st;
            REQUIRE_OK(raven_session_step(s, got[i], &st));
            CHECK(st.token == got[i] && st.steps == 8 && !st.exited_early && st.ms >= 0.0);
        }
        check_same(got, n_want, want, n_want, "prefill/sample/step");
        raven_session_free(s);
    }

    /* An exit criterion, a budget, warm start, sampling with a seed: runs within bounds. */
    {
        raven_session_params p = raven_session_default_params();
        p.n_threads = 1;
        p.exit_criterion = RAVEN_EXIT_LATENT_DIFF;
        p.exit_threshold = 0.5f;
        p.max_steps = 32;
        p.min_steps = 2;
        p.check_every = 2;
        p.budget_ms = 1000.0;
        p.warm_start = true;
        p.seed = 42;
        p.sampling.temperature = 0.8f;
        p.sampling.top_k = 20;
        p.sampling.repeat_penalty = 1.1f;
        raven_session *s = NULL;
        REQUIRE_OK(raven_session_new(m, &p, &s));
        raven_generate_stats gs;
        REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, 6, NULL, NULL, &gs));
        CHECK(gs.n_generated >= 0 && gs.n_generated <= 6);
        CHECK(gs.total_steps >= 2 * (int64_t)gs.n_generated);
        CHECK(gs.total_steps <= 32 * (int64_t)gs.n_generated);
        raven_sampling_params sp = raven_sampling_default_params();
        REQUIRE_OK(raven_session_set_sampling(s, &sp));
        raven_session_free(s);
    }

    /* Loading without mmap gives the same model. */
    raven_model *m2 = NULL;
    mp.use_mmap = false;
    progress_calls = 0;
    last_progress = -1.0f;
    REQUIRE_OK(raven_model_load(argv[1], &mp, on_progress, NULL, &m2));
    CHECK(progress_calls >= 3 && last_progress == 1.0f);
    generate_matches(m2, prompt, n_prompt, want, n_want, "no-mmap model");
    raven_model_free(m2);

    raven_log_set(NULL, NULL);
    raven_model_free(m);
    free(prompt);
    free(want);
    return finish("generate");
}
