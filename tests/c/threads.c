/* One model, four sessions, four threads: each thread decodes the fixture prompt greedily and
 * must get the official tokens.
 *
 * usage: threads MODEL.gguf PROMPT_IDS EXPECTED_IDS */
#include "common.h"

#include <pthread.h>

enum { N_THREADS = 4 };

typedef struct {
    const raven_model *model;
    const int32_t *prompt;
    int32_t n_prompt;
    const int32_t *want;
    int32_t n_want;
    int32_t got[256];
    int32_t n_got;
    raven_status status;
    char error[512];
} job;

static bool on_token(int32_t token, const char *piece, size_t len, const raven_token_stats *st,
                     void *user_data) {
    (void)piece;
    (void)len;
    (void)st;
    job *j = user_data;
    if (token >= 0 && j->n_got < 256) j->got[j->n_got++] = token;
    return true;
}

static void *run(void *arg) {
    job *j = arg;
    raven_session_params p = fixture_params(1);
    raven_session *s = NULL;
    j->status = raven_session_new(j->model, &p, &s);
    if (j->status == RAVEN_OK) {
        /* Twice, with a reset between: the second run must not see the first. */
        for (int round = 0; round < 2 && j->status == RAVEN_OK; round++) {
            j->n_got = 0;
            j->status = raven_session_generate(s, j->prompt, j->n_prompt, j->n_want, on_token, j,
                                               NULL);
            if (j->status == RAVEN_OK) j->status = raven_session_reset(s);
        }
    }
    if (j->status != RAVEN_OK) snprintf(j->error, sizeof j->error, "%s", raven_last_error());
    raven_session_free(s);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL PROMPT_IDS EXPECTED_IDS\n", argv[0]);
        return 2;
    }
    int32_t *prompt, *want;
    int32_t n_prompt = parse_ids(argv[2], &prompt);
    int32_t n_want = parse_ids(argv[3], &want);
    raven_model *m = NULL;
    REQUIRE_OK(raven_model_load(argv[1], NULL, NULL, NULL, &m));

    job jobs[N_THREADS];
    pthread_t threads[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        memset(&jobs[i], 0, sizeof jobs[i]);
        jobs[i].model = m;
        jobs[i].prompt = prompt;
        jobs[i].n_prompt = n_prompt;
        jobs[i].want = want;
        jobs[i].n_want = n_want;
        CHECK(pthread_create(&threads[i], NULL, run, &jobs[i]) == 0);
    }
    for (int i = 0; i < N_THREADS; i++) CHECK(pthread_join(threads[i], NULL) == 0);
    /* The model is freed after the sessions here; freeing it first is allowed too. */
    raven_model_free(m);

    for (int i = 0; i < N_THREADS; i++) {
        job *j = &jobs[i];
        if (j->status != RAVEN_OK) {
            fprintf(stderr, "thread %d: %s: %s\n", i, raven_status_string(j->status), j->error);
            g_failures++;
            continue;
        }
        int same = j->n_got == n_want;
        for (int32_t k = 0; same && k < n_want; k++) same = j->got[k] == want[k];
        if (!same) {
            fprintf(stderr, "thread %d: different tokens:", i);
            for (int32_t k = 0; k < j->n_got; k++) fprintf(stderr, " %d", j->got[k]);
            fprintf(stderr, "\n");
            g_failures++;
        }
    }
    free(prompt);
    free(want);
    return finish("threads");
}
