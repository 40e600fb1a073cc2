/* The other families through the C ABI: Ouro and a retrofitted Llama decode greedily to their
 * official implementations' tokens (full cache, zero state); Ouro's gate exit
 * (RAVEN_EXIT_GATE) stops tokens before the fourth step and says so in the token stats; a model
 * without a gate refuses RAVEN_EXIT_GATE with a message naming the field.
 *
 * usage: families OURO.gguf OURO_PROMPT OURO_EXPECTED LLAMA.gguf LLAMA_PROMPT LLAMA_EXPECTED */
#include "common.h"

typedef struct {
    int32_t tokens[64];
    int32_t n;
    int32_t steps[64];
    int32_t early;
} collected;

static bool on_token(int32_t token, const char *piece, size_t len, const raven_token_stats *st,
                     void *user_data) {
    (void)piece;
    (void)len;
    collected *c = user_data;
    if (token >= 0 && c->n < 64 && st) {
        c->steps[c->n] = st->steps;
        c->early += st->exited_early;
        c->tokens[c->n++] = token;
    }
    return true;
}

static collected generate(raven_model *m, raven_session_params p, const int32_t *prompt,
                          int32_t n_prompt, int32_t n_new) {
    raven_session *s = NULL;
    collected c;
    memset(&c, 0, sizeof c);
    REQUIRE_OK(raven_session_new(m, &p, &s));
    raven_generate_stats gs;
    REQUIRE_OK(raven_session_generate(s, prompt, n_prompt, n_new, on_token, &c, &gs));
    CHECK(gs.n_generated == n_new);
    raven_session_free(s);
    return c;
}

static void same(const collected *c, const int32_t *want, int32_t n_want, const char *what) {
    int ok = c->n == n_want;
    for (int32_t i = 0; ok && i < n_want; i++) ok = c->tokens[i] == want[i];
    if (!ok) {
        fprintf(stderr, "%s: got", what);
        for (int32_t i = 0; i < c->n; i++) fprintf(stderr, " %d", c->tokens[i]);
        fprintf(stderr, "\n");
        g_failures++;
    }
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s OURO PROMPT EXPECTED LLAMA PROMPT EXPECTED\n", argv[0]);
        return 2;
    }
    int32_t *op, *ow, *lp, *lw;
    int32_t n_op = parse_ids(argv[2], &op), n_ow = parse_ids(argv[3], &ow);
    int32_t n_lp = parse_ids(argv[5], &lp), n_lw = parse_ids(argv[6], &lw);
    raven_model *ouro = NULL, *llama = NULL;
    REQUIRE_OK(raven_model_load(argv[1], NULL, NULL, NULL, &ouro));
    REQUIRE_OK(raven_model_load(argv[4], NULL, NULL, NULL, &llama));

    /* Ouro: T = 4 loop steps (its trained count: max_steps 0 = the model's). */
    raven_session_params p = fixture_params(2);
    p.max_steps = 0;
    collected c = generate(ouro, p, op, n_op, n_ow);
    same(&c, ow, n_ow, "ouro greedy");
    for (int32_t i = 0; i < c.n; i++) CHECK(c.steps[i] == 4);

    /* The gate: q = 0.6 stops most tokens early; the default q (the checkpoint's 1.0) never. */
    p.exit_criterion = RAVEN_EXIT_GATE;
    p.exit_threshold = 0.6f;
    c = generate(ouro, p, op, n_op, 8);
    CHECK(c.early > 0);
    for (int32_t i = 0; i < c.n; i++) CHECK(c.steps[i] >= 1 && c.steps[i] <= 4);
    p.exit_threshold = 0.0f;
    c = generate(ouro, p, op, n_op, 4);
    CHECK(c.early == 0);
    p.exit_criterion = RAVEN_EXIT_GATE_FULL;
    p.exit_threshold = 0.6f;
    c = generate(ouro, p, op, n_op, 4);
    CHECK(c.n == 4);

    /* Retrofitted Llama: GQA, llama3 RoPE, 8 iterations. */
    p = fixture_params(2);
    c = generate(llama, p, lp, n_lp, n_lw);
    same(&c, lw, n_lw, "recurrent-llama greedy");

    /* No gate: refused, naming the field. */
    p.exit_criterion = RAVEN_EXIT_GATE;
    raven_session *s = NULL;
    CHECK_STATUS(raven_session_new(llama, &p, &s), RAVEN_ERR_INVALID_ARGUMENT);
    CHECK(s == NULL);
    CHECK(strstr(raven_last_error(), "exit_criterion") != NULL);
    CHECK(strstr(raven_last_error(), "--exit") == NULL);

    raven_model_free(ouro);
    raven_model_free(llama);
    free(op);
    free(ow);
    free(lp);
    free(lw);
    return finish("families");
}
