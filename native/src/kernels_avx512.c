/* AVX-512 kernel set. Only this file is compiled with -mavx512f -mfma; dispatch.c calls into it only after
 * __builtin_cpu_supports has confirmed both (and that the OS saves the ZMM state), so the library still
 * loads and runs on AVX2-only CPUs.
 *
 * The micro-kernel keeps an MR_AVX512 x NR_AVX512 tile of C in zmm registers (two vectors per row) and
 * takes each A element as an embedded broadcast operand of its FMAs. Activations are the AVX2 set's
 * Cephes-style functions on 16 lanes, with the same NaN and infinity handling; row tails use masked loads
 * and stores instead of padded copies.
 */
#include <immintrin.h>

#include "internal.h"
#include "lanes8.h"
#include "transpose8.h"

enum { LANES = 16, VECTORS_PER_ROW = NR_AVX512 / LANES };

/* exp(x) for x <= 0 or NaN, as the AVX2 set computes it: the clamp keeps 2^n a normal float, inputs below
 * it flush to 0, and the clamp's max takes x as its SECOND operand so that a NaN x stays NaN. */
static inline __m512 exp_nonpositive16(__m512 x)
{
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    const __m512 lowest = _mm512_set1_ps(-87.3f);
    const __mmask16 underflow = _mm512_cmp_ps_mask(x, lowest, _CMP_LT_OQ);
    x = _mm512_max_ps(lowest, x);
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    static const float poly[] = EXP_POLY;
    __m512 y = _mm512_set1_ps(poly[0]);
    for (int i = 1; i < (int)(sizeof poly / sizeof *poly); ++i)
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(poly[i]));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mov_ps((__mmask16)~underflow, _mm512_mul_ps(y, _mm512_castsi512_ps(bits)));
}

static inline __m512 sigmoid16(__m512 z)
{
    /* 1 / (1 + e) for z >= 0 and e / (1 + e) below, with e = exp(-|z|); NaN gives NaN on both sides. */
    const __m512 e = exp_nonpositive16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(z)));
    const __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ), _mm512_mul_ps(e, r), r);
}

static inline __m512 tanh16(__m512 z)
{
    const __m512 one = _mm512_set1_ps(1.0f), az = _mm512_abs_ps(z);
    /* |z| < TANH_POLY_LIMIT: odd polynomial; otherwise sign(z) (1 - e) / (1 + e), e = exp(-2|z|) (0 at infinity,
     * NaN for NaN, which the ordered compare sends to that side). */
    const __m512 z2 = _mm512_mul_ps(z, z);
    static const float poly[] = TANH_POLY;
    __m512 p = _mm512_set1_ps(poly[0]);
    for (int i = 1; i < (int)(sizeof poly / sizeof *poly); ++i)
        p = _mm512_fmadd_ps(p, z2, _mm512_set1_ps(poly[i]));
    const __m512 small = _mm512_fmadd_ps(_mm512_mul_ps(p, z2), z, z);
    const __m512 e = exp_nonpositive16(_mm512_mul_ps(_mm512_set1_ps(-2.0f), az));
    const __m512 large_abs = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
    const __m512i sign = _mm512_and_epi32(_mm512_castps_si512(z), _mm512_set1_epi32((int)0x80000000u));
    const __m512 large = _mm512_castsi512_ps(_mm512_or_epi32(_mm512_castps_si512(large_abs), sign));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(az, _mm512_set1_ps(TANH_POLY_LIMIT), _CMP_LT_OQ), large, small);
}

static inline __m512 activate16(__m512 z, int activation)
{
    switch (activation) {
    case MLP_SIGMOID: return sigmoid16(z);
    case MLP_TANH: return tanh16(z);
    case MLP_RELU: return _mm512_max_ps(_mm512_setzero_ps(), z); /* returns z when z is NaN */
    default: return z;                                            /* ACT_NONE */
    }
}

/* Same roundings as the portable set (no FMA here); ReLU's step is NaN for a NaN output. */
static inline __m512 derivative16(__m512 a, int activation)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    switch (activation) {
    case MLP_SIGMOID: return _mm512_mul_ps(a, _mm512_sub_ps(one, a));
    case MLP_TANH: return _mm512_sub_ps(one, _mm512_mul_ps(a, a));
    default: {
        const __m512 step = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_GT_OQ), one);
        return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q), step, a);
    }
    }
}

/* Lanes [0, count) of a vector, count <= 16. */
static inline __mmask16 first_lanes(int count)
{
    return (__mmask16)((1u << count) - 1u);
}

static void bias_activation_avx512(float *z, ptrdiff_t ldz, int rows, int cols, const float *bias,
                                   int activation)
{
    for (int i = 0; i < rows; ++i) {
        float *row = z + i * ldz;
        for (int j = 0; j < cols; j += LANES) {
            const __mmask16 lanes = first_lanes(cols - j < LANES ? cols - j : LANES);
            const __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(lanes, row + j),
                                           _mm512_maskz_loadu_ps(lanes, bias + j));
            _mm512_mask_storeu_ps(row + j, lanes, activate16(v, activation));
        }
    }
}

static void activation_derivative_avx512(float *d, ptrdiff_t ldd, int rows, int cols, const float *a,
                                         ptrdiff_t lda, int activation)
{
    for (int i = 0; i < rows; ++i) {
        float *row = d + i * ldd;
        const float *a_row = a + i * lda;
        for (int j = 0; j < cols; j += LANES) {
            const __mmask16 lanes = first_lanes(cols - j < LANES ? cols - j : LANES);
            const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, row + j),
                                           derivative16(_mm512_maskz_loadu_ps(lanes, a_row + j), activation));
            _mm512_mask_storeu_ps(row + j, lanes, v);
        }
    }
}

/* An A sliver of MR_AVX512 rows of a row-major A, 8 columns at a time: each group of up to 8 rows (zero past
 * `rows`) makes an 8 x 8 block, transposed in registers, whose rows give the sliver's next 8 columns their
 * values for that group. */
static void pack_a_rows_avx512(const float *src, ptrdiff_t ld, int rows, int kc, float *restrict sliver)
{
    int q = 0;
    for (; q + 8 <= kc; q += 8)
        for (int group = 0; group < MR_AVX512; group += 8) {
            const int height = MR_AVX512 - group < 8 ? MR_AVX512 - group : 8;
            __m256 r[8];
            for (int i = 0; i < 8; ++i)
                r[i] = group + i < rows ? _mm256_loadu_ps(src + (group + i) * ld + q) : _mm256_setzero_ps();
            transpose8(r);
            for (int i = 0; i < 8; ++i) {
                float *dst = sliver + (q + i) * MR_AVX512 + group;
                if (height == 8)
                    _mm256_storeu_ps(dst, r[i]);
                else
                    _mm256_maskstore_ps(dst, _mm256_cmpgt_epi32(_mm256_set1_epi32(height),
                                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                                        r[i]);
            }
        }
    for (; q < kc; ++q)
        for (int r = 0; r < MR_AVX512; ++r)
            sliver[q * MR_AVX512 + r] = r < rows ? src[r * ld + q] : 0.0f;
}

/* The forward product's B = W^T sliver, 8 x 8 blocks at a time: W's rows are read contiguously and each
 * block is transposed in registers. Columns past `cols` enter the block as zero rows (the padding). */
static void pack_b_transposed_avx512(const float *src, ptrdiff_t ld, int cols, int kc, float *restrict sliver)
{
    int q = 0;
    for (; q + 8 <= kc; q += 8)
        for (int part = 0; part < NR_AVX512; part += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i)
                r[i] = part + i < cols ? _mm256_loadu_ps(src + (part + i) * ld + q) : _mm256_setzero_ps();
            transpose8(r);
            for (int i = 0; i < 8; ++i)
                _mm256_store_ps(sliver + (q + i) * NR_AVX512 + part, r[i]);
        }
    for (; q < kc; ++q)
        for (int c = 0; c < NR_AVX512; ++c)
            sliver[q * NR_AVX512 + c] = c < cols ? src[c * ld + q] : 0.0f;
}

/* One finished row of the tile (its first `vectors` vectors): accumulate into C if asked, apply the epilogue on
 * the last k block. */
static inline void finish_row(const tile_output *out, int r, const __m512 *v, int vectors)
{
    float *dst = out->c + r * out->ldc;
    for (int h = 0; h < vectors; ++h) {
        __m512 x = v[h];
        if (out->accumulate)
            x = _mm512_add_ps(x, _mm512_loadu_ps(dst + h * LANES));
        if (out->finish) {
            if (out->kind == EPI_BIAS_ACTIVATION)
                x = activate16(_mm512_add_ps(x, _mm512_loadu_ps(out->bias + h * LANES)), out->activation);
            else if (out->kind == EPI_ACTIVATION_DERIVATIVE)
                x = _mm512_mul_ps(x, derivative16(_mm512_loadu_ps(out->aux + r * out->ld_aux + h * LANES),
                                                  out->activation));
        }
        _mm512_storeu_ps(dst + h * LANES, x);
    }
}

/* The first `rows` rows and `vectors` x 16 columns of an MR_AVX512 x NR_AVX512 tile in `rows` x `vectors` zmm
 * accumulators; per k step `vectors` loads of B and one broadcast FMA per accumulator. `rows` and `vectors` are
 * constants at each call, so the loops unroll and the accumulators live in registers. */
static inline __attribute__((always_inline)) void tile_product(ptrdiff_t k, const float *a, ptrdiff_t a_step,
                                                               const float *b, ptrdiff_t b_step,
                                                               const tile_output *out, const int rows,
                                                               const int vectors)
{
    __m512 acc[MR_AVX512][VECTORS_PER_ROW];
#pragma GCC unroll 16
    for (int r = 0; r < rows; ++r)
#pragma GCC unroll 4
        for (int h = 0; h < vectors; ++h)
            acc[r][h] = _mm512_setzero_ps();
    /* The C tile is only touched after the k loop: fetch its lines (a row may straddle three) meanwhile. */
    for (int r = 0; r < rows; ++r) {
        const char *row = (const char *)(out->c + r * out->ldc);
        for (int offset = 0; offset < vectors * LANES * (int)sizeof(float); offset += 64)
            _mm_prefetch(row + offset, _MM_HINT_T0);
        _mm_prefetch(row + vectors * LANES * sizeof(float) - 1, _MM_HINT_T0);
    }
#pragma GCC unroll 2
    for (ptrdiff_t p = 0; p < k; ++p) {
        __m512 bv[VECTORS_PER_ROW];
#pragma GCC unroll 4
        for (int h = 0; h < vectors; ++h)
            bv[h] = _mm512_loadu_ps(b + h * LANES);
#pragma GCC unroll 16
        for (int r = 0; r < rows; ++r) {
            const __m512 ar = _mm512_set1_ps(a[r]);
#pragma GCC unroll 4
            for (int h = 0; h < vectors; ++h)
                acc[r][h] = _mm512_fmadd_ps(ar, bv[h], acc[r][h]);
        }
        a += a_step;
        b += b_step;
    }
#pragma GCC unroll 16
    for (int r = 0; r < rows; ++r)
        finish_row(out, r, acc[r], vectors);
}

/* The sum of a dot product's 16 lanes: lanes l and l + 8 first, then lanes_sum8. */
static inline float lanes_sum16(__m512 v)
{
    const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return lanes_sum8(_mm256_add_ps(_mm512_castps512_ps256(v), high));
}

/* `rows` rows against `cols` columns (both constants at each call), each sum in one vector of 16 lanes; in the
 * k tail, the lanes past k keep their sums. */
static inline __attribute__((always_inline)) void dot_block(const int rows, const int cols, ptrdiff_t k,
                                                             const float *a, ptrdiff_t lda, const float *b,
                                                             ptrdiff_t ldb, float *c, ptrdiff_t ldc)
{
    __m512 acc[DOT_ROWS][4];
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j)
            acc[r][j] = _mm512_setzero_ps();
    const ptrdiff_t whole = k - k % LANES;
    for (ptrdiff_t q = 0; q < whole; q += LANES) {
        __m512 bv[4];
        for (int j = 0; j < cols; ++j)
            bv[j] = _mm512_loadu_ps(b + j * ldb + q);
        for (int r = 0; r < rows; ++r) {
            const __m512 av = _mm512_loadu_ps(a + r * lda + q);
            for (int j = 0; j < cols; ++j)
                acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
        }
    }
    if (whole < k) {
        const __mmask16 tail = first_lanes((int)(k - whole));
        for (int r = 0; r < rows; ++r) {
            const __m512 av = _mm512_maskz_loadu_ps(tail, a + r * lda + whole);
            for (int j = 0; j < cols; ++j)
                acc[r][j] = _mm512_mask3_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, b + j * ldb + whole), acc[r][j],
                                                  tail);
        }
    }
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j)
            c[r * ldc + j] = lanes_sum16(acc[r][j]);
}

/* Four columns at a time: up to 16 accumulators. */
DEFINE_DOT_ROWS(avx512, 4)

DEFINE_OUTER_ROWS(avx512)
DEFINE_MICROKERNELS(avx512, MR_AVX512, VECTORS_PER_ROW)

const cpu_kernels avx512_kernels = {
    .isa = MLP_ISA_AVX512,
    .mr = MR_AVX512,
    .nr = NR_AVX512,
    .microkernel = MICROKERNEL_TABLE(avx512),
    .bias_activation = bias_activation_avx512,
    .activation_derivative = activation_derivative_avx512,
    .pack_a_rows = pack_a_rows_avx512,
    .pack_b_transposed = pack_b_transposed_avx512,
    .dot_rows = dot_rows_avx512,
    .outer_rows = outer_rows_avx512,
};
