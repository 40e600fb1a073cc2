/* Cancels a long generation from another thread: the call returns RAVEN_ERR_CANCELLED within
 * LIMIT_MS of the request, the session stays usable, and a second thread calling into the busy
 * session gets RAVEN_ERR_BUSY. Also cancels a long prefill.
 *
 * usage: cancel MODEL.gguf PROMPT_IDS LIMIT_MS */
#include "common.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct {
    raven_session *session;
    atomic_int tokens_seen;
    double cancelled_at;
    int busy_ok;
    int wait_for_tokens;
} shared;

static bool on_token(int32_t token, const char *piece, size_t len, const raven_token_stats *st,
                     void *user_data) {
    (void)piece;
    (void)len;
    (void)st;
    shared *sh = user_data;
    if (token >= 0) atomic_fetch_add(&sh->tokens_seen, 1);
    return true;
}

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static void *canceller(void *arg) {
    shared *sh = arg;
    if (sh->wait_for_tokens) {
        /* Wait until generation is under way (two tokens out), so the cancel lands mid-call. */
        while (atomic_load(&sh->tokens_seen) < 2) sleep_ms(1);
        /* The session is busy with the generation: other calls are refused, not raced. */
        int32_t one = 1;
        sh->busy_ok = raven_session_prefill(sh->session, &one, 1) == RAVEN_ERR_BUSY &&
                      raven_session_n_tokens(sh->session) == -1;
    } else {
        sleep_ms(100);
    }
    sh->cancelled_at = now_ms();
    raven_session_cancel(sh->session);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL PROMPT_IDS LIMIT_MS\n", argv[0]);
        return 2;
    }
    int32_t *prompt;
    int32_t n_prompt = parse_ids(argv[2], &prompt);
    double limit_ms = atof(argv[3]);
    raven_model *m = NULL;
    REQUIRE_OK(raven_model_load(argv[1], NULL, NULL, NULL, &m));

    /* Many iterations per token (KV sharing keeps the cache small), many tokens. */
    raven_session_params p = raven_session_default_params();
    p.n_threads = 1;
    p.cache_type = RAVEN_CACHE_COMPRESS;
    p.max_steps = 200;
    p.prefill_steps = 4;
    raven_session *s = NULL;
    REQUIRE_OK(raven_session_new(m, &p, &s));

    shared sh;
    memset(&sh, 0, sizeof sh);
    sh.session = s;
    sh.wait_for_tokens = 1;
    atomic_init(&sh.tokens_seen, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, canceller, &sh) == 0);
    raven_generate_stats gs;
    raven_status st = raven_session_generate(s, prompt, n_prompt, 10000, on_token, &sh, &gs);
    double returned_at = now_ms();
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_STATUS(st, RAVEN_ERR_CANCELLED);
    CHECK(strstr(raven_last_error(), "cancel") != NULL);
    CHECK(sh.busy_ok);
    CHECK(gs.n_generated >= 2 && gs.n_generated < 10000);
    double latency = returned_at - sh.cancelled_at;
    printf("cancel: returned %.2f ms after the request, after %d tokens\n", latency,
           gs.n_generated);
    CHECK(latency >= 0.0 && latency < limit_ms);

    /* A cancel sent while idle is forgotten: the next call runs. */
    raven_session_cancel(s);
    raven_token_stats ts;
    CHECK_STATUS(raven_session_step(s, prompt[0], &ts), RAVEN_OK);
    CHECK(ts.steps == 200);
    REQUIRE_OK(raven_session_reset(s));
    raven_session_free(s);

    /* A long prefill is cancelled too, and leaves the context empty. */
    p.prefill_steps = 1000000;
    REQUIRE_OK(raven_session_new(m, &p, &s));
    memset(&sh, 0, sizeof sh);
    sh.session = s;
    CHECK(pthread_create(&t, NULL, canceller, &sh) == 0);
    st = raven_session_prefill(s, prompt, n_prompt);
    returned_at = now_ms();
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_STATUS(st, RAVEN_ERR_CANCELLED);
    CHECK(returned_at - sh.cancelled_at < limit_ms);
    CHECK(raven_session_n_tokens(s) == 0);
    raven_session_free(s);

    raven_model_free(m);
    free(prompt);
    return finish("cancel");
}
