/* Helpers shared by the C tests of tests/abi: a check macro that reports and counts
 * failures instead of aborting, and deterministic synthetic K/V data. */
#ifndef NQ_TEST_UTIL_H
#define NQ_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "nexusquant.h"

static int nq_test_failures = 0;

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);     \
            ++nq_test_failures;                                                          \
        }                                                                                \
    } while (0)

/* Checks a status and prints the library's message when it is not the expected one. */
#define CHECK_STATUS(expr, want)                                                         \
    do {                                                                                 \
        nq_status st_ = (expr);                                                          \
        if (st_ != (want)) {                                                             \
            fprintf(stderr, "%s:%d: %s returned %s (%s), expected %s\n", __FILE__,       \
                    __LINE__, #expr, nq_status_string(st_), nq_last_error(),             \
                    nq_status_string(want));                                             \
            ++nq_test_failures;                                                          \
        }                                                                                \
    } while (0)

#define CHECK_OK(expr) CHECK_STATUS(expr, NQ_OK)

/* A 64-bit LCG mapped to floats in [-2, 2), so every run sees the same data. */
static float nq_test_rand(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*state >> 40) / (double)(1ull << 24) * 4.0 - 2.0);
}

static void nq_test_fill(float *dst, size_t n, uint64_t seed) {
    size_t i;
    uint64_t s = seed;
    for (i = 0; i < n; ++i) dst[i] = nq_test_rand(&s);
}

static int nq_test_report(const char *name) {
    if (nq_test_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, nq_test_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#endif /* NQ_TEST_UTIL_H */
