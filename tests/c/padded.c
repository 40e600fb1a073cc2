/* A model whose embedding has more rows than its tokenizer has tokens (a padded vocabulary):
 * sampled generation at temperature 1 with no truncation, and greedy generation, must emit only
 * ids the tokenizer decodes, through raven_session_generate and through raven_session_sample.
 * (tools/real_size.sh also runs it on the full-size model, whose tokenizer fills the vocabulary.)
 *
 * usage: padded MODEL.gguf PROMPT_IDS N_TOKENIZER_IDS */
#include "common.h"

typedef struct {
    const raven_model *m;
    int32_t n_tok;
    int32_t n;
    int bad;
} seen;

static bool on_token(int32_t token, const char *piece, size_t len, const raven_token_stats *st,
                     void *user_data) {
    seen *s = user_data;
    (void)piece;
    (void)len;
    (void)st;
    if (token < 0) return true;
    s->n++;
    char buf[64];
    if (token >= s->n_tok) {
        fprintf(stderr, "emitted id %d, the tokenizer has %d\n", token, s->n_tok);
        s->bad++;
    } else if (raven_detokenize(s->m, &token, 1, false, buf, sizeof buf) == RAVEN_SIZE_ERROR) {
        fprintf(stderr, "id %d does not decode: %s\n", token, raven_last_error());
        s->bad++;
    }
    return true;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: padded MODEL.gguf PROMPT_IDS N_TOKENIZER_IDS\n");
        return 2;
    }
    int32_t *prompt;
    int32_t n_prompt = parse_ids(argv[2], &prompt);
    int32_t n_tok = atoi(argv[3]);
    raven_model_params mp = raven_model_default_params();
    raven_model *m = NULL;
    REQUIRE_OK(raven_model_load(argv[1], &mp, NULL, NULL, &m));
    CHECK(raven_model_n_vocab(m) >= n_tok);

    for (int greedy = 0; greedy <= 1; greedy++) {
        raven_session_params p = raven_session_default_params();
        p.n_threads = 1;
        p.max_steps = 2;
        p.seed = 7;
        p.sampling.temperature = greedy ? 0.0f : 1.0f;
        p.sampling.top_k = 0;
        p.sampling.top_p = 1.0f;
        p.sampling.min_p = 0.0f;
        raven_session *s = NULL;
        REQUIRE_OK(raven_session_new(m, &p, &s));
        seen c = {m, n_tok, 0, 0};
        raven_generate_stats gs;
        REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, 48, on_token, &c, &gs));
        CHECK(c.bad == 0);
        CHECK(c.n == gs.n_generated && c.n > 0);
        /* The step-by-step calls too. */
        REQUIRE_OK(raven_session_reset(s));
        REQUIRE_OK(raven_session_prefill(s, prompt, n_prompt));
        for (int i = 0; i < 32; i++) {
            int32_t t = -1;
            REQUIRE_OK(raven_session_sample(s, &t));
            CHECK(t >= 0 && t < n_tok);
            REQUIRE_OK(raven_session_step(s, t, NULL));
        }
        raven_session_free(s);
    }
    raven_model_free(m);
    free(prompt);
    return finish("padded");
}
