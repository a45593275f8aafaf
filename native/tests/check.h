/* A minimal test harness: CHECK counts and reports failures, check_report gives the exit status. */
#ifndef MLP_TEST_CHECK_H
#define MLP_TEST_CHECK_H

#include <math.h>
#include <stddef.h>
#include <stdio.h>

static int check_count, check_failures;

#define CHECK(cond, ...)                                                                    \
    do {                                                                                    \
        ++check_count;                                                                      \
        if (!(cond)) {                                                                      \
            if (++check_failures <= 30) {                                                   \
                fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);    \
                fprintf(stderr, __VA_ARGS__);                                               \
                fputc('\n', stderr);                                                        \
            }                                                                               \
        }                                                                                   \
    } while (0)

static inline int check_report(const char *name)
{
    printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
    return check_failures ? 1 : 0;
}

/* Deterministic uniform numbers in [low, high) (64-bit LCG, top 24 bits). */
static inline float uniform(unsigned long long *state, float low, float high)
{
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return low + (high - low) * (float)(*state >> 40) / (float)(1u << 24);
}

static inline void fill_uniform(float *x, size_t n, unsigned long long *state, float low, float high)
{
    for (size_t i = 0; i < n; ++i)
        x[i] = uniform(state, low, high);
}

static inline void fill_nan(float *x, size_t n)
{
    for (size_t i = 0; i < n; ++i)
        x[i] = NAN;
}

/* ||value - reference|| / ||reference||; infinite if value has a NaN. */
static inline double relative_error(const float *value, const double *reference, size_t n)
{
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < n; ++i) {
        if (!isfinite(value[i]))
            return INFINITY;
        diff += (value[i] - reference[i]) * (value[i] - reference[i]);
        norm += reference[i] * reference[i];
    }
    return norm > 0.0 ? sqrt(diff / norm) : sqrt(diff);
}

#endif
