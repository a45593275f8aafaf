/* The last steps of a dot product's 16-lane sum (internal.h, dot_rows), shared by the AVX2 and AVX-512 kernel
 * sets so that both add in one order: from the sums of lanes l and l + 8 (l < 8), lanes l and l + 4, then l and
 * l + 2, then 0 and 1. Include only from files compiled with AVX enabled. */
#ifndef MLP_LANES8_H
#define MLP_LANES8_H

#include <immintrin.h>

static inline float lanes_sum8(__m256 eight)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
}

#endif
