/* AVX2 + FMA kernel set. Only this file is compiled with -mavx2 -mfma; dispatch.c calls into it only after
 * __builtin_cpu_supports has confirmed both, so the library still loads and runs on older CPUs.
 *
 * Activations are evaluated 8 lanes at a time with a Cephes-style exp (range reduction + degree-6
 * polynomial, about 1 ulp), so the forward epilogue costs a few instructions per element instead of a libm
 * call. The same functions serve the fused epilogue (rung 3) and the separate passes (rungs 1 and 2). */
#include <immintrin.h>

#include "internal.h"
#include "lanes8.h"
#include "transpose8.h"

/* exp(x) for x <= 0 or NaN. Inputs below -87.3 are clamped so that 2^n stays a normal float, and their
 * result is flushed to 0 (exp there is below 1.2e-38; exp(-inf) = 0 exactly). x86 max/min return their
 * SECOND operand when either is NaN, so x goes second and a NaN stays NaN; the flush uses an ordered
 * compare, false for NaN. */
static inline __m256 exp_nonpositive(__m256 x)
{
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    const __m256 lowest = _mm256_set1_ps(-87.3f);
    const __m256 underflow = _mm256_cmp_ps(x, lowest, _CMP_LT_OQ);
    x = _mm256_max_ps(lowest, x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);  /* x - n ln2, ln2 split so n * ln2_hi is exact */
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    static const float poly[] = EXP_POLY;
    __m256 y = _mm256_set1_ps(poly[0]);
    for (int i = 1; i < (int)(sizeof poly / sizeof *poly); ++i)
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(poly[i]));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(bits)));
}

static inline __m256 abs8(__m256 x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }

static inline __m256 sigmoid8(__m256 z)
{
    /* 1 / (1 + e) for z >= 0 and e / (1 + e) below, with e = exp(-|z|): never overflows. A NaN z gives a
     * NaN e, hence NaN on both sides of the blend. */
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_setzero_ps(), abs8(z)));
    const __m256 r = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    return _mm256_blendv_ps(_mm256_mul_ps(e, r), r, _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GE_OQ));
}

static inline __m256 tanh8(__m256 z)
{
    const __m256 one = _mm256_set1_ps(1.0f), az = abs8(z);
    /* |z| < TANH_POLY_LIMIT: odd polynomial (Cephes tanhf), free of the cancellation in 1 - e near zero. */
    const __m256 z2 = _mm256_mul_ps(z, z);
    static const float poly[] = TANH_POLY;
    __m256 p = _mm256_set1_ps(poly[0]);
    for (int i = 1; i < (int)(sizeof poly / sizeof *poly); ++i)
        p = _mm256_fmadd_ps(p, z2, _mm256_set1_ps(poly[i]));
    const __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z2), z, z);
    /* Otherwise sign(z) (1 - e) / (1 + e) with e = exp(-2|z|) <= 0.29 (0 for |z| = inf; NaN for NaN, and
     * the ordered compare below sends NaN to this side). */
    const __m256 e = exp_nonpositive(_mm256_mul_ps(_mm256_set1_ps(-2.0f), az));
    const __m256 large_abs = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    const __m256 large = _mm256_or_ps(large_abs, _mm256_and_ps(_mm256_set1_ps(-0.0f), z));
    return _mm256_blendv_ps(large, small, _mm256_cmp_ps(az, _mm256_set1_ps(TANH_POLY_LIMIT), _CMP_LT_OQ));
}

static inline __m256 activate8(__m256 z, int activation)
{
    switch (activation) {
    case MLP_SIGMOID: return sigmoid8(z);
    case MLP_TANH: return tanh8(z);
    case MLP_RELU: return _mm256_max_ps(_mm256_setzero_ps(), z); /* returns z when z is NaN */
    default: return z;                                            /* ACT_NONE */
    }
}

/* ReLU's derivative from its output: 1 where a > 0, 0 where a <= 0, and a itself where a is NaN, so a
 * NaN activation gives a NaN gradient instead of a silent 0. */
static inline __m256 relu_step8(__m256 a)
{
    const __m256 step = _mm256_and_ps(_mm256_set1_ps(1.0f), _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_GT_OQ));
    return _mm256_blendv_ps(step, a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}

/* Same roundings as the portable set (no FMA here), so derivatives agree bit for bit. */
static inline __m256 derivative8(__m256 a, int activation)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    switch (activation) {
    case MLP_SIGMOID: return _mm256_mul_ps(a, _mm256_sub_ps(one, a));
    case MLP_TANH: return _mm256_sub_ps(one, _mm256_mul_ps(a, a));
    default: return relu_step8(a);
    }
}

/* Row tails shorter than 8 go through a padded 8-float copy, so every element takes the same vector path. */
static void bias_activation_avx2(float *z, ptrdiff_t ldz, int rows, int cols, const float *bias,
                                 int activation)
{
    for (int i = 0; i < rows; ++i) {
        float *row = z + i * ldz;
        int j = 0;
        for (; j + 8 <= cols; j += 8)
            _mm256_storeu_ps(row + j, activate8(_mm256_add_ps(_mm256_loadu_ps(row + j),
                                                              _mm256_loadu_ps(bias + j)), activation));
        if (j < cols) {
            float zt[8] = {0}, bt[8] = {0};
            for (int t = 0; t < cols - j; ++t) {
                zt[t] = row[j + t];
                bt[t] = bias[j + t];
            }
            _mm256_storeu_ps(zt, activate8(_mm256_add_ps(_mm256_loadu_ps(zt), _mm256_loadu_ps(bt)),
                                           activation));
            for (int t = 0; t < cols - j; ++t)
                row[j + t] = zt[t];
        }
    }
}

static void activation_derivative_avx2(float *d, ptrdiff_t ldd, int rows, int cols, const float *a,
                                       ptrdiff_t lda, int activation)
{
    for (int i = 0; i < rows; ++i) {
        float *row = d + i * ldd;
        const float *a_row = a + i * lda;
        int j = 0;
        for (; j + 8 <= cols; j += 8)
            _mm256_storeu_ps(row + j, _mm256_mul_ps(_mm256_loadu_ps(row + j),
                                                    derivative8(_mm256_loadu_ps(a_row + j), activation)));
        if (j < cols) {
            float dt[8] = {0}, at[8] = {0};
            for (int t = 0; t < cols - j; ++t) {
                dt[t] = row[j + t];
                at[t] = a_row[j + t];
            }
            _mm256_storeu_ps(dt, _mm256_mul_ps(_mm256_loadu_ps(dt), derivative8(_mm256_loadu_ps(at), activation)));
            for (int t = 0; t < cols - j; ++t)
                row[j + t] = dt[t];
        }
    }
}

/* The forward product's B = W^T sliver, 8 x 8 blocks at a time: W's rows are read contiguously and each
 * block is transposed in registers, instead of one strided store per element. Columns past `cols` enter
 * the block as zero rows, which is the padding. */
static void pack_b_transposed_avx2(const float *src, ptrdiff_t ld, int cols, int kc, float *sliver)
{
    int q = 0;
    for (; q + 8 <= kc; q += 8)
        for (int half = 0; half < NR; half += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i)
                r[i] = half + i < cols ? _mm256_loadu_ps(src + (half + i) * ld + q) : _mm256_setzero_ps();
            transpose8(r);
            for (int i = 0; i < 8; ++i)
                _mm256_store_ps(sliver + (q + i) * NR + half, r[i]);
        }
    for (; q < kc; ++q)
        for (int c = 0; c < NR; ++c)
            sliver[q * NR + c] = c < cols ? src[c * ld + q] : 0.0f;
}

/* An A sliver of six rows of a row-major A, 8 columns at a time: the rows (zero past `rows`) and two zero
 * rows make an 8 x 8 block, transposed in registers; each column's six values are stored as 4 + 2 floats. */
static void pack_a_rows_avx2(const float *src, ptrdiff_t ld, int rows, int kc, float *sliver)
{
    int q = 0;
    for (; q + 8 <= kc; q += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i)
            r[i] = i < rows ? _mm256_loadu_ps(src + i * ld + q) : _mm256_setzero_ps();
        transpose8(r);
        for (int i = 0; i < 8; ++i) {
            float *dst = sliver + (q + i) * MR;
            _mm_storeu_ps(dst, _mm256_castps256_ps128(r[i]));
            _mm_storel_pi((__m64 *)(dst + 4), _mm256_extractf128_ps(r[i], 1));
        }
    }
    for (; q < kc; ++q)
        for (int r = 0; r < MR; ++r)
            sliver[q * MR + r] = r < rows ? src[r * ld + q] : 0.0f;
}

/* One vector of a tile's row (columns 8h to 8h + 7): accumulate into C if asked, apply the epilogue on the last
 * k block. */
static inline void finish_vector(const tile_output *out, int r, int h, __m256 v)
{
    float *dst = out->c + r * out->ldc + 8 * h;
    if (out->accumulate)
        v = _mm256_add_ps(v, _mm256_loadu_ps(dst));
    if (out->finish) {
        if (out->kind == EPI_BIAS_ACTIVATION)
            v = activate8(_mm256_add_ps(v, _mm256_loadu_ps(out->bias + 8 * h)), out->activation);
        else if (out->kind == EPI_ACTIVATION_DERIVATIVE)
            v = _mm256_mul_ps(v, derivative8(_mm256_loadu_ps(out->aux + r * out->ld_aux + 8 * h), out->activation));
    }
    _mm256_storeu_ps(dst, v);
}

/* The first `rows` rows and `vectors` x 8 columns of the 6 x 16 tile in `rows` x `vectors` accumulators (12 for
 * the whole tile); per k step `vectors` loads of B, `rows` broadcasts of A and one FMA per accumulator. `rows`
 * and `vectors` are constants at each call, so the loops unroll and the accumulators live in registers. */
static inline __attribute__((always_inline)) void tile_product(ptrdiff_t k, const float *a, ptrdiff_t a_step,
                                                               const float *b, ptrdiff_t b_step,
                                                               const tile_output *out, const int rows,
                                                               const int vectors)
{
    __m256 acc[MR][NR / 8];
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r)
#pragma GCC unroll 2
        for (int h = 0; h < vectors; ++h)
            acc[r][h] = _mm256_setzero_ps();
    /* The C tile is only touched after the k loop: fetch its lines (a row may straddle two) meanwhile. */
    for (int r = 0; r < rows; ++r) {
        _mm_prefetch((const char *)(out->c + r * out->ldc), _MM_HINT_T0);
        if (vectors == 2)
            _mm_prefetch((const char *)(out->c + r * out->ldc + NR - 1), _MM_HINT_T0);
    }
#pragma GCC unroll 4
    for (ptrdiff_t p = 0; p < k; ++p) {
        __m256 bv[NR / 8];
#pragma GCC unroll 2
        for (int h = 0; h < vectors; ++h)
            bv[h] = _mm256_loadu_ps(b + 8 * h);
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r) {
            const __m256 ar = _mm256_broadcast_ss(a + r);
#pragma GCC unroll 2
            for (int h = 0; h < vectors; ++h)
                acc[r][h] = _mm256_fmadd_ps(ar, bv[h], acc[r][h]);
        }
        a += a_step;
        b += b_step;
    }
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r)
#pragma GCC unroll 2
        for (int h = 0; h < vectors; ++h)
            finish_vector(out, r, h, acc[r][h]);
}

/* `rows` rows against `cols` (1 or 2) columns (both constants at each call), each sum in two vectors (lanes
 * 0-7 and 8-15); in the k tail, lanes past k load zeros and keep their sums. */
static inline __attribute__((always_inline)) void dot_block(const int rows, const int cols, ptrdiff_t k,
                                                             const float *a, ptrdiff_t lda, const float *b,
                                                             ptrdiff_t ldb, float *c, ptrdiff_t ldc)
{
    __m256 acc[DOT_ROWS][2][2];
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j)
            acc[r][j][0] = acc[r][j][1] = _mm256_setzero_ps();
    const ptrdiff_t whole = k - k % DOT_LANES;
    for (ptrdiff_t q = 0; q < whole; q += DOT_LANES)
        for (int h = 0; h < 2; ++h) {
            __m256 bv[2];
            for (int j = 0; j < cols; ++j)
                bv[j] = _mm256_loadu_ps(b + j * ldb + q + 8 * h);
            for (int r = 0; r < rows; ++r) {
                const __m256 av = _mm256_loadu_ps(a + r * lda + q + 8 * h);
                for (int j = 0; j < cols; ++j)
                    acc[r][j][h] = _mm256_fmadd_ps(av, bv[j], acc[r][j][h]);
            }
        }
    for (int h = 0; h < 2 && whole + 8 * h < k; ++h) {
        const ptrdiff_t start = whole + 8 * h, count = k - start < 8 ? k - start : 8;
        const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count),
                                                 _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int r = 0; r < rows; ++r) {
            const __m256 av = _mm256_maskload_ps(a + r * lda + start, lanes);
            for (int j = 0; j < cols; ++j) {
                const __m256 sum = _mm256_fmadd_ps(av, _mm256_maskload_ps(b + j * ldb + start, lanes), acc[r][j][h]);
                acc[r][j][h] = _mm256_blendv_ps(acc[r][j][h], sum, _mm256_castsi256_ps(lanes));
            }
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j)
            c[r * ldc + j] = lanes_sum8(_mm256_add_ps(acc[r][j][0], acc[r][j][1])); /* lanes l and l + 8 */
}

/* Two columns at a time: up to 16 accumulators. */
DEFINE_DOT_ROWS(avx2, 2)

DEFINE_OUTER_ROWS(avx2)
DEFINE_MICROKERNELS(avx2, MR, NR / 8)

const cpu_kernels avx2_kernels = {
    .isa = MLP_ISA_AVX2,
    .mr = MR,
    .nr = NR,
    .microkernel = MICROKERNEL_TABLE(avx2),
    .bias_activation = bias_activation_avx2,
    .activation_derivative = activation_derivative_avx2,
    .pack_a_rows = pack_a_rows_avx2,
    .pack_b_transposed = pack_b_transposed_avx2,
    .dot_rows = dot_rows_avx2,
    .outer_rows = outer_rows_avx2,
};
