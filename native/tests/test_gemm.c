/* Every version of the standalone product, every transposition, on sizes that divide no tile (6 x 16 and
 * 8 x 32 register tiles, KC 512, MC 144, NC 4080) and on whole tiles, against a double-precision product;
 * bit-identical for 1, 2 and 3 threads and, on the packed rung, whichever way the operands are stored (packed
 * or read in place) and between the AVX2 and AVX-512 kernel sets; and the error codes. */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mlp.h"

typedef struct { int m, n, k; } shape;

static const shape SHAPES[] = {
    {1, 1, 1}, {7, 33, 257}, {33, 7, 1}, {257, 33, 7}, {6, 16, 256}, {13, 17, 300},
    {150, 40, 5}, {3, 4100, 2}, {1, 257, 33}, {31, 1, 513}, {8, 32, 256}, {16, 64, 300},
    {7, 33, 1031}, {8, 32, 1024}, {10, 128, 32}, {12, 40, 9}, {9, 48, 20},
};

/* Stored operand element: op(X)(i, j) for X stored row-major with row stride ld, transposed or not. */
static double op_at(const float *x, int ld, int transposed, int i, int j)
{
    return transposed ? x[(size_t)j * ld + i] : x[(size_t)i * ld + j];
}

/* Checks c against the double product with the bound (k + 2) eps sum |a b| of float accumulation. */
static int product_matches(const float *c, int ldc, const float *a, int lda, int ta, const float *b, int ldb,
                           int tb, shape s)
{
    for (int i = 0; i < s.m; ++i)
        for (int j = 0; j < s.n; ++j) {
            double sum = 0.0, bound = 0.0;
            for (int p = 0; p < s.k; ++p) {
                const double term = op_at(a, lda, ta, i, p) * op_at(b, ldb, tb, p, j);
                sum += term;
                bound += fabs(term);
            }
            const double err = fabs(c[(size_t)i * ldc + j] - sum);
            if (!(err <= (s.k + 2) * FLT_EPSILON * bound + 1e-30))
                return 0;
        }
    return 1;
}

/* A workspace for every shape of SHAPES, or NULL (a failed check) if it cannot be made. */
static mlp_gemm_workspace *shapes_workspace(int isa, int max_threads)
{
    mlp_gemm_workspace *ws = NULL;
    CHECK(mlp_gemm_workspace_create(&ws, 300, 4200, max_threads, isa) == MLP_OK, "isa %d workspace", isa);
    return ws;
}

/* x (rows x cols, row stride ld) stored transposed, with row stride ld_t. */
static float *transposed_copy(const float *x, int rows, int cols, int ld, int ld_t)
{
    float *t = malloc((size_t)cols * ld_t * sizeof *t);
    fill_nan(t, (size_t)cols * ld_t);
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j)
            t[(size_t)j * ld_t + i] = x[(size_t)i * ld + j];
    return t;
}

/* Each shape's operands are stored all four ways (as they are or transposed, each with a leading dimension
 * wider than the matrix, to catch stride mix-ups). The packed rung packs an operand or reads it where it lies
 * depending on how it is stored (and on k), with the same operations on each element either way, so on that rung
 * the four storages give the same bits (OpenBLAS, the BLAS build's every rung, promises no such thing). */
static void test_products(int isa, int max_threads)
{
    mlp_gemm_workspace *ws = shapes_workspace(isa, max_threads);
    if (!ws)
        return;
    unsigned long long seed = 42;
    for (size_t si = 0; si < sizeof SHAPES / sizeof SHAPES[0]; ++si) {
        const shape s = SHAPES[si];
        const int lda = s.k + 3, ldb = s.n + 5, lda_t = s.m + 1, ldb_t = s.k + 2, ldc = s.n + 2;
        const size_t c_size = (size_t)s.m * ldc;
        float *a = malloc((size_t)s.m * lda * sizeof *a), *b = malloc((size_t)s.k * ldb * sizeof *b);
        fill_uniform(a, (size_t)s.m * lda, &seed, -1.0f, 1.0f);
        fill_uniform(b, (size_t)s.k * ldb, &seed, -1.0f, 1.0f);
        float *a_t = transposed_copy(a, s.m, s.k, lda, lda_t), *b_t = transposed_copy(b, s.k, s.n, ldb, ldb_t);
        float *c = malloc(c_size * sizeof *c), *first = malloc(c_size * sizeof *first);
        float *packed_first = malloc(c_size * sizeof *packed_first);
        for (int layout = 0; layout < 4; ++layout) {
            const int ta = layout & 1, tb = layout >> 1;
            const float *a_op = ta ? a_t : a, *b_op = tb ? b_t : b;
            const int a_ld = ta ? lda_t : lda, b_ld = tb ? ldb_t : ldb;
            for (int version = MLP_KERNEL_NAIVE; version <= MLP_KERNEL_PACKED; ++version)
                for (int threads = 1; threads <= max_threads; ++threads) {
                    fill_nan(c, c_size);
                    const int status = mlp_gemm(ws, version, threads, ta, tb, s.m, s.n, s.k, a_op, a_ld, b_op, b_ld,
                                                c, ldc);
                    CHECK(status == MLP_OK, "status %d", status);
                    CHECK(product_matches(c, ldc, a_op, a_ld, ta, b_op, b_ld, tb, s),
                          "isa %d version %d threads %d trans %d%d shape %dx%dx%d", isa, version, threads, ta, tb,
                          s.m, s.n, s.k);
                    /* The padding columns of C must stay untouched (still NaN). */
                    int padding_untouched = 1;
                    for (int i = 0; i < s.m; ++i)
                        padding_untouched &= isnan(c[(size_t)i * ldc + s.n]) && isnan(c[(size_t)i * ldc + s.n + 1]);
                    CHECK(padding_untouched, "version %d wrote past n", version);
                    if (threads == 1)
                        memcpy(first, c, c_size * sizeof *c);
                    else
                        CHECK(memcmp(first, c, c_size * sizeof *c) == 0,
                              "isa %d version %d: %d threads differ from 1 thread", isa, version, threads);
                    if (version != MLP_KERNEL_PACKED || threads > 1 || mlp_has_blas())
                        continue;
                    if (layout == 0)
                        memcpy(packed_first, c, c_size * sizeof *c);
                    else
                        CHECK(memcmp(packed_first, c, c_size * sizeof *c) == 0,
                              "isa %d trans %d%d shape %dx%dx%d: bits differ from the untransposed product", isa, ta,
                              tb, s.m, s.n, s.k);
                }
        }
        free(a);
        free(b);
        free(a_t);
        free(b_t);
        free(c);
        free(first);
        free(packed_first);
    }
    mlp_gemm_workspace_destroy(ws);
}

/* The AVX2 and AVX-512 sets compute each element with the same fused multiply-adds in the same order, in tiles
 * of different shapes (6 x 16 and 8 x 32, and the short and narrow parts of each): their products agree to the
 * bit, so a part-tile kernel that computed differently from its whole tile would show here. */
static void test_instruction_sets_agree(void)
{
    mlp_gemm_workspace *avx2 = shapes_workspace(MLP_ISA_AVX2, 1), *avx512 = shapes_workspace(MLP_ISA_AVX512, 1);
    unsigned long long seed = 11;
    for (size_t si = 0; avx2 && avx512 && si < sizeof SHAPES / sizeof SHAPES[0]; ++si) {
        const shape s = SHAPES[si];
        for (int layout = 0; layout < 4; ++layout) {
            const int ta = layout & 1, tb = layout >> 1;
            const int lda = ta ? s.m : s.k, ldb = tb ? s.k : s.n;
            const size_t a_size = (size_t)s.m * s.k, b_size = (size_t)s.k * s.n, c_size = (size_t)s.m * s.n;
            float *a = malloc(a_size * sizeof *a), *b = malloc(b_size * sizeof *b);
            float *c2 = malloc(c_size * sizeof *c2), *c512 = malloc(c_size * sizeof *c512);
            fill_uniform(a, a_size, &seed, -1.0f, 1.0f);
            fill_uniform(b, b_size, &seed, -1.0f, 1.0f);
            CHECK(mlp_gemm(avx2, MLP_KERNEL_PACKED, 1, ta, tb, s.m, s.n, s.k, a, lda, b, ldb, c2, s.n) == MLP_OK,
                  "avx2 product");
            CHECK(mlp_gemm(avx512, MLP_KERNEL_PACKED, 1, ta, tb, s.m, s.n, s.k, a, lda, b, ldb, c512, s.n) == MLP_OK,
                  "avx512 product");
            CHECK(memcmp(c2, c512, c_size * sizeof *c2) == 0, "trans %d%d shape %dx%dx%d: avx2 and avx512 differ",
                  ta, tb, s.m, s.n, s.k);
            free(a);
            free(b);
            free(c2);
            free(c512);
        }
    }
    mlp_gemm_workspace_destroy(avx2);
    mlp_gemm_workspace_destroy(avx512);
}

static void test_errors(void)
{
    mlp_gemm_workspace *ws = NULL;
    CHECK(mlp_gemm_workspace_create(NULL, 4, 4, 1, MLP_ISA_AUTO) == MLP_ERR_NULL, "null out");
    CHECK(mlp_gemm_workspace_create(&ws, 0, 4, 1, MLP_ISA_AUTO) == MLP_ERR_SIZE && !ws, "max_m 0");
    CHECK(mlp_gemm_workspace_create(&ws, 4, 4, 0, MLP_ISA_AUTO) == MLP_ERR_THREADS, "threads 0");
    CHECK(mlp_gemm_workspace_create(&ws, 4, 4, MLP_THREADS_LIMIT + 1, MLP_ISA_AUTO) == MLP_ERR_THREADS, "threads");
    CHECK(mlp_gemm_workspace_create(&ws, 4, 4, 1, 99) == MLP_ERR_ISA, "isa 99");
    CHECK(mlp_gemm_workspace_create(&ws, 4, 4, 2, MLP_ISA_AUTO) == MLP_OK, "create");
    float a[16] = {0}, b[16] = {0}, c[16] = {0};
    CHECK(mlp_gemm(NULL, 3, 1, 0, 0, 4, 4, 4, a, 4, b, 4, c, 4) == MLP_ERR_NULL, "null workspace");
    CHECK(mlp_gemm(ws, 3, 1, 0, 0, 4, 4, 4, NULL, 4, b, 4, c, 4) == MLP_ERR_NULL, "null a");
    CHECK(mlp_gemm(ws, 3, 1, 0, 0, 4, 4, 4, a, 4, b, 4, NULL, 4) == MLP_ERR_NULL, "null c");
    CHECK(mlp_gemm(ws, 0, 1, 0, 0, 4, 4, 4, a, 4, b, 4, c, 4) == MLP_ERR_KERNEL, "version 0");
    CHECK(mlp_gemm(ws, 4, 1, 0, 0, 4, 4, 4, a, 4, b, 4, c, 4) == MLP_ERR_KERNEL, "version 4");
    CHECK(mlp_gemm(ws, 3, 0, 0, 0, 4, 4, 4, a, 4, b, 4, c, 4) == MLP_ERR_THREADS, "threads 0");
    CHECK(mlp_gemm(ws, 3, 3, 0, 0, 4, 4, 4, a, 4, b, 4, c, 4) == MLP_ERR_THREADS, "threads > max");
    CHECK(mlp_gemm(ws, 3, 1, 2, 0, 4, 4, 4, a, 4, b, 4, c, 4) == MLP_ERR_ARG, "transpose 2");
    CHECK(mlp_gemm(ws, 3, 1, 0, 0, 0, 4, 4, a, 4, b, 4, c, 4) == MLP_ERR_SIZE, "m 0");
    CHECK(mlp_gemm(ws, 3, 1, 0, 0, 5, 4, 1, a, 4, b, 4, c, 4) == MLP_ERR_SIZE, "m > max_m");
    CHECK(mlp_gemm(ws, 3, 1, 0, 0, 4, 4, 4, a, 3, b, 4, c, 4) == MLP_ERR_SIZE, "lda < k");
    CHECK(mlp_gemm(ws, 3, 1, 1, 0, 4, 4, 2, a, 3, b, 4, c, 4) == MLP_ERR_SIZE, "lda < m (transposed)");
    CHECK(mlp_gemm(ws, 3, 1, 0, 1, 4, 4, 4, a, 4, b, 3, c, 4) == MLP_ERR_SIZE, "ldb < k (transposed)");
    CHECK(mlp_gemm(ws, 3, 1, 0, 0, 4, 4, 4, a, 4, b, 4, c, 3) == MLP_ERR_SIZE, "ldc < n");
    CHECK(strcmp(mlp_error_message(12345), "unknown status code") == 0, "message");
    mlp_gemm_workspace_destroy(ws);
    mlp_gemm_workspace_destroy(NULL);
}

int main(void)
{
    const int max_threads = mlp_has_openmp() ? 3 : 1;
    test_errors();
    for (int isa = MLP_ISA_PORTABLE; isa <= MLP_ISA_AVX512; ++isa) {
        if (mlp_isa_supported(isa))
            test_products(isa, max_threads);
        else
            printf("test_gemm: this CPU cannot run isa %d; skipped\n", isa);
    }
    if (!mlp_has_blas() && mlp_isa_supported(MLP_ISA_AVX2) && mlp_isa_supported(MLP_ISA_AVX512))
        test_instruction_sets_agree();
    else if (!mlp_has_blas())
        printf("test_gemm: this CPU cannot run both the avx2 and avx512 kernels; their agreement not checked\n");
    return check_report(mlp_has_openmp() ? "test_gemm (omp)"
                        : mlp_has_blas() ? "test_gemm (blas)" : "test_gemm (serial)");
}
