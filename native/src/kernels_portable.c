/* Portable kernel set: plain C, built with the library's baseline flags. It runs on any CPU and is the
 * fallback when run-time detection finds no AVX2/FMA. */
#include <math.h>

#include "internal.h"

static inline float sigmoid_scalar(float z)
{
    /* exp of a non-positive number only: no overflow for large |z|. */
    const float e = expf(-fabsf(z));
    const float r = 1.0f / (1.0f + e);
    return z >= 0.0f ? r : e * r;
}

static inline float activate_scalar(float z, int activation)
{
    switch (activation) {
    case MLP_SIGMOID: return sigmoid_scalar(z);
    case MLP_TANH: return tanhf(z);
    case MLP_RELU: return z < 0.0f ? 0.0f : z; /* keeps a NaN visible */
    default: return z;                          /* ACT_NONE */
    }
}

static inline float derivative_scalar(float a, int activation)
{
    switch (activation) {
    case MLP_SIGMOID: return a * (1.0f - a);
    case MLP_TANH: return 1.0f - a * a;
    default: return a > 0.0f ? 1.0f : a <= 0.0f ? 0.0f : a; /* MLP_RELU; a NaN stays NaN */
    }
}

static void bias_activation_portable(float *z, ptrdiff_t ldz, int rows, int cols, const float *bias,
                                     int activation)
{
    for (int i = 0; i < rows; ++i) {
        float *row = z + i * ldz;
        for (int j = 0; j < cols; ++j)
            row[j] = activate_scalar(row[j] + bias[j], activation);
    }
}

static void activation_derivative_portable(float *d, ptrdiff_t ldd, int rows, int cols, const float *a,
                                           ptrdiff_t lda, int activation)
{
    for (int i = 0; i < rows; ++i) {
        float *row = d + i * ldd;
        const float *a_row = a + i * lda;
        for (int j = 0; j < cols; ++j)
            row[j] *= derivative_scalar(a_row[j], activation);
    }
}

static void pack_a_rows_portable(const float *src, ptrdiff_t ld, int rows, int kc, float *restrict sliver)
{
    for (int r = 0; r < rows; ++r)
        for (int q = 0; q < kc; ++q)
            sliver[q * MR + r] = src[r * ld + q];
    for (int q = 0; q < kc; ++q)
        for (int r = rows; r < MR; ++r)
            sliver[q * MR + r] = 0.0f;
}

static void pack_b_transposed_portable(const float *src, ptrdiff_t ld, int cols, int kc,
                                       float *restrict sliver)
{
    for (int c = 0; c < cols; ++c)
        for (int q = 0; q < kc; ++q)
            sliver[q * NR + c] = src[c * ld + q];
    for (int q = 0; q < kc; ++q)
        for (int c = cols; c < NR; ++c)
            sliver[q * NR + c] = 0.0f;
}

/* The first `rows` rows and `cols` columns of the MR x NR tile, two rows at a time: 2 x NR accumulators fit the
 * 16 vector registers of baseline x86-64 (the whole tile would spill to memory on every step), and the compiler
 * vectorises the inner loop with whatever the baseline flags allow. Each element still sums its k terms in
 * order. `rows` and `cols` are constants at each call. */
static inline void tile_product(ptrdiff_t k, const float *a, ptrdiff_t a_step, const float *b, ptrdiff_t b_step,
                                const tile_output *out, const int rows, const int cols)
{
    for (int r0 = 0; r0 < rows; r0 += 2) {
        const int pair = r0 + 1 < rows; /* an odd row count ends with one row */
        float acc[2][NR] = {{0.0f}};
        for (ptrdiff_t p = 0; p < k; ++p) {
            const float a0 = a[p * a_step + r0], a1 = pair ? a[p * a_step + r0 + 1] : 0.0f;
            const float *b_p = b + p * b_step;
            for (int c = 0; c < cols; ++c) {
                acc[0][c] += a0 * b_p[c];
                acc[1][c] += a1 * b_p[c];
            }
        }
        for (int r = r0; r < r0 + 1 + pair; ++r) {
            float *dst = out->c + r * out->ldc;
            for (int c = 0; c < cols; ++c) {
                float v = acc[r - r0][c];
                if (out->accumulate)
                    v += dst[c];
                if (out->finish) {
                    if (out->kind == EPI_BIAS_ACTIVATION)
                        v = activate_scalar(v + out->bias[c], out->activation);
                    else if (out->kind == EPI_ACTIVATION_DERIVATIVE)
                        v *= derivative_scalar(out->aux[r * out->ld_aux + c], out->activation);
                }
                dst[c] = v;
            }
        }
    }
}

static void dot_rows_portable(int rows, int cols, ptrdiff_t k, const float *a, ptrdiff_t lda, const float *b,
                              ptrdiff_t ldb, float *c, ptrdiff_t ldc)
{
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j) {
            const float *a_row = a + r * lda, *b_col = b + j * ldb;
            float lane[DOT_LANES] = {0.0f};
            for (ptrdiff_t q = 0; q < k; ++q)
                lane[q % DOT_LANES] += a_row[q] * b_col[q];
            for (int half = DOT_LANES / 2; half >= 1; half /= 2)
                for (int l = 0; l < half; ++l)
                    lane[l] += lane[l + half];
            c[r * ldc + j] = lane[0];
        }
}

DEFINE_OUTER_ROWS(portable)
DEFINE_MICROKERNELS(portable, MR, NR)

const cpu_kernels portable_kernels = {
    .isa = MLP_ISA_PORTABLE,
    .mr = MR,
    .nr = NR,
    .microkernel = MICROKERNEL_TABLE(portable),
    .bias_activation = bias_activation_portable,
    .activation_derivative = activation_derivative_portable,
    .pack_a_rows = pack_a_rows_portable,
    .pack_b_transposed = pack_b_transposed_portable,
    .dot_rows = dot_rows_portable,
    .outer_rows = outer_rows_portable,
};
