/* Helpers shared by the C tests of include/raven.h (compiled and run by tests/capi.rs). */
#ifndef RAVEN_TEST_COMMON_H
#define RAVEN_TEST_COMMON_H

#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "raven.h"

static int g_failures = 0;

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, \
                    #cond, raven_last_error());                                              \
            g_failures++;                                                                    \
        }                                                                                    \
    } while (0)

/* Expects `call` to return `want`, and a non-empty error message when `want` is an error. */
#define CHECK_STATUS(call, want)                                                             \
    do {                                                                                     \
        raven_status got_ = (call);                                                          \
        if (got_ != (want)) {                                                                \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: %s)\n",         \
                    __FILE__, __LINE__, #call, raven_status_string(got_),                    \
                    raven_status_string(want), raven_last_error());                          \
            g_failures++;                                                                    \
        } else if ((want) != RAVEN_OK && raven_last_error()[0] == '\0') {                    \
            fprintf(stderr, "%s:%d: %s failed without a message\n", __FILE__, __LINE__,      \
                    #call);                                                                  \
            g_failures++;                                                                    \
        }                                                                                    \
    } while (0)

#define REQUIRE_OK(call)                                                                     \
    do {                                                                                     \
        raven_status got_ = (call);                                                          \
        if (got_ != RAVEN_OK) {                                                              \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call,        \
                    raven_status_string(got_), raven_last_error());                          \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

/* Parses "1,2,3" into a malloc'ed array; returns its length. */
static inline int32_t parse_ids(const char *s, int32_t **out) {
    int32_t n = 0, cap = 16;
    int32_t *v = malloc(sizeof(int32_t) * (size_t)cap);
    while (*s) {
        char *end;
        long x = strtol(s, &end, 10);
        if (end == s) break;
        if (n == cap) {
            cap *= 2;
            v = realloc(v, sizeof(int32_t) * (size_t)cap);
        }
        v[n++] = (int32_t)x;
        s = *end == ',' ? end + 1 : end;
    }
    *out = v;
    return n;
}

static inline double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Session parameters of the fixture's greedy decoding case: zero initial state, 8 iterations
 * for prompt and tokens, full cache. */
static inline raven_session_params fixture_params(int32_t n_threads) {
    raven_session_params p = raven_session_default_params();
    p.n_threads = n_threads;
    p.init_scale = 0.0f;
    p.max_steps = 8;
    p.cache_type = RAVEN_CACHE_FULL;
    p.sampling.temperature = 0.0f;
    return p;
}

static inline int finish(const char *name) {
    if (g_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, g_failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

#endif
