/* The exchange of the C library's step under plan 16, with no arithmetic: what a stretch between two barriers
 * costs when each of T threads reads a whole (rows x batch) activation that all T wrote a stretch before.
 *
 * Per step, for each of `layers` float buffers of rows x batch (the transposed activations of plan 16, each
 * 64-byte aligned and first touched by its writers), stretch l: every thread reads a whole buffer (mode
 * `shared`: buffer l - 1, whose rows the team wrote in the stretch before; mode `private`: a buffer of the same
 * size that only it reads and nobody writes after the start, the same loads served by its own caches), then
 * writes its own rows of buffer l (contiguous ranges of slivers, as plan 16 splits a layer on AVX-512),
 * then waits at a barrier. In mode `shared` those rows' lines were read by the whole team a step before, as an
 * activation's are in the step, so the writes wait for the other copies to be invalidated; in mode `private`
 * nobody reads the buffers, and neither the reads nor the writes touch another core's lines. Mode `streamed` is
 * `shared` with the rows written by non-temporal stores (whole lines to memory, no read for ownership; then a
 * store fence), where a row is whole lines (batch a multiple of 16) and on x86-64; plain stores elsewhere.
 *
 * Every value is an integer below 1024 and a buffer at most 16400 floats, so every sum is exact in float: each
 * read's sum is checked against the value the writers stored, and a mismatch is counted (the reads cannot be
 * skipped or served stale unseen).
 *
 * Usage: exchange_probe MODE THREADS ROWS BATCH LAYERS STEPS WARMUP   (MODE: shared, private or streamed)
 * Prints one JSON object: per step and thread, the read, the write (the stores' issue; their completion shows
 * in the stretch) and the whole stretch (from its start to the barrier's end, thread 0's clock) in
 * nanoseconds, and the mismatches. */
#define _POSIX_C_SOURCE 200112L
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* The library's own partition (split_range), sliver height (MR_AVX512) and line size (ALIGN_BYTES). */
#include "internal.h"

enum { VALUE_PERIOD = 4, VALUE_MASK = 1023 };
/* Floats represent every integer up to 2^24 exactly: the most a buffer's sum may reach. */
#define EXACT_SUM_LIMIT 16777216.0

static long long clock_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* The value of element (j, b) of buffer l in step s: depends on the step (mod VALUE_PERIOD), so a read of a
 * line left over from an earlier step shows in the sum. */
static float value_at(int s, int l, int j, int b)
{
    return (float)((s % VALUE_PERIOD * 131 + l * 17 + j * 3 + b) & VALUE_MASK);
}

/* Rows [lo, hi) of `rows` that thread t of T owns: its contiguous range of slivers, as the library's plan 16
 * gives them on AVX-512 (model.c, owned_rows). */
static void owned_rows(int rows, int threads, int t, int *lo, int *hi)
{
    ptrdiff_t first, last;
    split_range((rows + MR_AVX512 - 1) / MR_AVX512, threads, t, &first, &last);
    *lo = first * MR_AVX512 < rows ? (int)first * MR_AVX512 : rows;
    *hi = last * MR_AVX512 < rows ? (int)last * MR_AVX512 : rows;
}

/* The sum of x[0..n), in LANES independent sums (vector registers, several of them so the adds do not wait on
 * each other): the loads, not the adds, bound it. */
static float sum_floats(const float *restrict x, size_t n)
{
    enum { LANES = 64 };
    float lanes[LANES] = {0.0f};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int k = 0; k < LANES; ++k)
            lanes[k] += x[i + k];
    float sum = 0.0f;
    for (; i < n; ++i)
        sum += x[i];
    for (int k = 0; k < LANES; ++k)
        sum += lanes[k];
    return sum;
}

/* Rows [lo, hi) of buffer l in step s; with `streamed`, by non-temporal stores where rows are whole lines. */
static void write_rows(float *buffer, int s, int l, int lo, int hi, int batch, int streamed)
{
#if defined(__x86_64__)
    if (streamed && batch % ALIGN_FLOATS == 0) {
        for (int j = lo; j < hi; ++j)
            for (int b = 0; b < batch; b += 4) {
                const __m128 values = _mm_setr_ps(value_at(s, l, j, b), value_at(s, l, j, b + 1),
                                                  value_at(s, l, j, b + 2), value_at(s, l, j, b + 3));
                _mm_stream_ps(buffer + (size_t)j * batch + b, values);
            }
        _mm_sfence();
        return;
    }
#else
    (void)streamed;
#endif
    for (int j = lo; j < hi; ++j)
        for (int b = 0; b < batch; ++b)
            buffer[(size_t)j * batch + b] = value_at(s, l, j, b);
}

static float *aligned_floats(size_t n)
{
    return aligned_alloc(ALIGN_BYTES, (size_t)round_up((ptrdiff_t)(n * sizeof(float)), ALIGN_BYTES));
}

int main(int argc, char **argv)
{
    const int streamed = argc == 8 && strcmp(argv[1], "streamed") == 0;
    const int shared = streamed || (argc == 8 && strcmp(argv[1], "shared") == 0);
    if (argc != 8 || (!shared && strcmp(argv[1], "private") != 0)) {
        fprintf(stderr, "usage: %s shared|private|streamed THREADS ROWS BATCH LAYERS STEPS WARMUP\n", argv[0]);
        return 2;
    }
    const int threads = atoi(argv[2]), rows = atoi(argv[3]), batch = atoi(argv[4]), layers = atoi(argv[5]);
    const int steps = atoi(argv[6]), warmup = atoi(argv[7]);
    if (threads < 1 || rows < 1 || batch < 1 || layers < 2 || steps < 1 || warmup < 0 ||
        (double)rows * batch * VALUE_MASK >= EXACT_SUM_LIMIT) {
        fprintf(stderr, "THREADS, ROWS, BATCH, STEPS >= 1, LAYERS >= 2, WARMUP >= 0, ROWS x BATCH <= 16400\n");
        return 2;
    }
    const size_t floats = (size_t)rows * (size_t)batch;
    float **buffers = malloc((size_t)layers * sizeof *buffers);
    /* The sum of a whole buffer l in step s, per s % VALUE_PERIOD. */
    float *expected = malloc((size_t)VALUE_PERIOD * (size_t)layers * sizeof *expected);
    const size_t samples = (size_t)steps * (size_t)layers * (size_t)threads;
    long long *read_ns = malloc(samples * sizeof *read_ns), *write_ns = malloc(samples * sizeof *write_ns);
    long long *stretch_ns = malloc((size_t)steps * (size_t)layers * sizeof *stretch_ns);
    long long mismatches = 0;
    if (!buffers || !expected || !read_ns || !write_ns || !stretch_ns) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int l = 0; l < layers; ++l)
        if (!(buffers[l] = aligned_floats(floats)))
            return 1;
    for (int s = 0; s < VALUE_PERIOD; ++s)
        for (int l = 0; l < layers; ++l) {
            double sum = 0.0;
            for (int j = 0; j < rows; ++j)
                for (int b = 0; b < batch; ++b)
                    sum += value_at(s, l, j, b);
            expected[s * layers + l] = (float)sum;
        }

#pragma omp parallel num_threads(threads) reduction(+ : mismatches)
    {
        const int t = omp_get_thread_num();
        int lo, hi;
        owned_rows(rows, threads, t, &lo, &hi);
        if (omp_get_num_threads() != threads) {
#pragma omp single
            fprintf(stderr, "asked for %d threads, got %d\n", threads, omp_get_num_threads());
            exit(1);
        }
        /* First touch by the writers: each thread its rows of every buffer, and its own private copy. */
        for (int l = 0; l < layers; ++l)
            for (int j = lo; j < hi; ++j)
                for (int b = 0; b < batch; ++b)
                    buffers[l][(size_t)j * batch + b] = value_at(VALUE_PERIOD - 1, l, j, b);
        float *mine = aligned_floats(floats);
        if (!mine)
            exit(1);
        for (int j = 0; j < rows; ++j)
            for (int b = 0; b < batch; ++b)
                mine[(size_t)j * batch + b] = value_at(0, 0, j, b);
#pragma omp barrier
        for (int step = -warmup; step < steps; ++step) {
            const int s = step + warmup;
            for (int l = 0; l < layers; ++l) {
                const int below = (l + layers - 1) % layers;
                /* Buffer `below` was last written in the stretch before: this step's for l >= 1, the step
                 * before's for l = 0. */
                const int written_in = l > 0 ? s : s - 1;
                const long long t0 = clock_ns();
                const float sum = sum_floats(shared ? buffers[below] : mine, floats);
                const float want = !shared          ? expected[0]
                                   : written_in < 0 ? expected[(VALUE_PERIOD - 1) * layers + below]
                                                    : expected[written_in % VALUE_PERIOD * layers + below];
                const long long t1 = clock_ns();
                write_rows(buffers[l], s, l, lo, hi, batch, streamed);
                const long long t2 = clock_ns();
#pragma omp barrier
                if (step >= 0) {
                    mismatches += sum != want;
                    const size_t at = ((size_t)step * layers + l) * threads + t;
                    read_ns[at] = t1 - t0;
                    write_ns[at] = t2 - t1;
                    if (t == 0)
                        stretch_ns[(size_t)step * layers + l] = clock_ns() - t0;
                }
            }
        }
#pragma omp barrier
        free(mine);
    }

    printf("{\"mode\": \"%s\", \"threads\": %d, \"rows\": %d, \"batch\": %d, \"layers\": %d, \"steps\": %d, "
           "\"mismatches\": %lld", argv[1], threads, rows, batch, layers, steps, mismatches);
    const char *const names[3] = {"read_ns", "write_ns", "stretch_ns"};
    for (int k = 0; k < 3; ++k) {
        const long long *values = k == 0 ? read_ns : k == 1 ? write_ns : stretch_ns;
        const size_t count = k < 2 ? samples : (size_t)steps * (size_t)layers;
        printf(", \"%s\": [", names[k]);
        for (size_t i = 0; i < count; ++i)
            printf("%s%lld", i ? "," : "", values[i]);
        printf("]");
    }
    printf("}\n");
    for (int l = 0; l < layers; ++l)
        free(buffers[l]);
    free(buffers);
    free(expected);
    free(read_ns);
    free(write_ns);
    free(stretch_ns);
    return 0;
}
