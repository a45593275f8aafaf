/* Declarations shared by the library's translation units (not part of the public API). */
#ifndef MLP_INTERNAL_H
#define MLP_INTERNAL_H

#include <stddef.h>

#include "mlp.h"

#ifdef _OPENMP
#include <omp.h>
#else
/* Serial build: the pragmas are ignored, so every "team" is the calling thread alone. */
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif

/* Register tiles of the micro-kernels (rows x columns of C): MR x NR for the portable and AVX2 sets (12
 * ymm accumulators), MR_AVX512 x NR_AVX512 for the AVX-512 set (16 zmm accumulators: 12 x 32 and 6 x 64 ran
 * no faster on the GPU host's 16 cores and slowed batches of 32 rows, results/h200-gemm-tile); each set packs
 * its operands for its own tile (cpu_kernels.mr, .nr), and buffers are sized for the largest.
 * Cache blocks of the packed product: a KC x nr sliver of B (32-64 KiB: in L1, or streamed from L2 beside
 * the accumulators' FMAs), an MC x KC block of A (288 KiB) in L2, a KC x NC panel of B in L3; each thread
 * updates its block of C once per KC of k, so KC 512 halves those passes against 256 (on the GPU host's 16
 * cores 4-6 % faster at 4096^3 and no slower in any step measured: results/h200-gemm-blocking). MC is a
 * multiple of every mr. */
enum { MR = 6, NR = 16, MR_AVX512 = 8, NR_AVX512 = 32, MR_MAX = 8, NR_MAX = 32 };
/* The dot-product forward of a few rows (gemm.c; its bounds in mlp.h): sums in DOT_LANES lanes. */
enum { DOT_ROWS = MLP_DOT_ROWS, DOT_LANES = 16 };
enum { KC = 512, MC = 144, NC = 4080 };

/* Buffers are aligned to cache lines (and to a full AVX-512 vector). */
enum { ALIGN_BYTES = 64, ALIGN_FLOATS = ALIGN_BYTES / (int)sizeof(float) };

/* Polynomials of the vectorised activations, one copy for the AVX2 and AVX-512 sets (they must agree to
 * the bit up to their lane count). Highest degree first, for Horner's rule. */
/* exp(r) ~ 1 + r + r^2 P(r) on the reduced argument |r| <= ln2 / 2 (Cephes expf). */
#define EXP_POLY {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, \
                  5.0000001201e-1f}
/* tanh(z) ~ z + z^3 P(z^2) for |z| < TANH_POLY_LIMIT (Cephes tanhf). */
#define TANH_POLY {-5.70498872745e-3f, 2.06390887954e-2f, -5.37397155531e-2f, 1.33314422036e-1f, \
                   -3.33332819422e-1f}
#define TANH_POLY_LIMIT 0.625f

/* The per-thread timeline of a stage call (timeline.c); NULL when off. */
typedef struct timeline timeline;

/* Activation codes: the public ones plus "none" (the output layer's logits get the bias only). */
enum { ACT_NONE = 3 };

typedef enum {
    EPI_STORE,                /* C = A B */
    EPI_BIAS_ACTIVATION,      /* C = act(A B + bias): a forward layer */
    EPI_ACTIVATION_DERIVATIVE /* C = (A B) * act'(aux): dZ of the layer below, act' from its output aux */
} epilogue_kind;

typedef struct {
    epilogue_kind kind;
    int activation;
    const float *bias;        /* n values, readable (zero-padded) up to a multiple of NR_MAX */
    const float *aux;         /* same shape as C */
    ptrdiff_t ld_aux;
} epilogue;

/* One mr x nr tile of C as the micro-kernel writes it. */
typedef struct {
    float *c;
    ptrdiff_t ldc;
    int accumulate;           /* add to C's value (a later block of the k dimension) */
    int finish;               /* last block of k: apply the epilogue */
    epilogue_kind kind;
    int activation;
    const float *bias;        /* nr values: this tile's columns */
    const float *aux;         /* mr x nr tile, row stride ld_aux */
    ptrdiff_t ld_aux;
} tile_output;

/* A micro-kernel: k steps of an outer-product update of its part of a tile, then the tile's epilogue. Step q
 * reads A's values at a + q * a_step and B's at b + q * b_step: packed slivers (a_step = mr, b_step = nr), or an
 * operand read where it lies when its values for one q are contiguous (the steps its strides). */
typedef void (*microkernel_fn)(ptrdiff_t k, const float *a, ptrdiff_t a_step, const float *b, ptrdiff_t b_step,
                               const tile_output *out);

/* A kernel set's four micro-kernels, each its own inline tile_product(k, a, a_step, b, b_step, out, rows, cols)
 * with the part of the tile as constants: `mr` or mr / 2 rows, `cols` or cols / 2 columns (in the set's own
 * unit: floats or vectors), and the table of them in the order cpu_kernels.microkernel holds them. */
#define DEFINE_MICROKERNEL(name, rows, cols)                                                                   \
    static void name(ptrdiff_t k, const float *a, ptrdiff_t a_step, const float *b, ptrdiff_t b_step,          \
                     const tile_output *out)                                                                   \
    {                                                                                                          \
        tile_product(k, a, a_step, b, b_step, out, rows, cols);                                                \
    }
#define DEFINE_MICROKERNELS(set, mr, cols)                                                                     \
    DEFINE_MICROKERNEL(microkernel_##set, (mr), (cols))                                                        \
    DEFINE_MICROKERNEL(microkernel_narrow_##set, (mr), (cols) / 2)                                             \
    DEFINE_MICROKERNEL(microkernel_short_##set, (mr) / 2, (cols))                                              \
    DEFINE_MICROKERNEL(microkernel_short_narrow_##set, (mr) / 2, (cols) / 2)
#define MICROKERNEL_TABLE(set)                                                                                 \
    {{microkernel_##set, microkernel_narrow_##set}, {microkernel_short_##set, microkernel_short_narrow_##set}}

/* A kernel set's dot_rows (cpu_kernels) from its inline dot_block(rows, cols, k, a, lda, b, ldb, c, ldc) of
 * `rows` rows against `cols` columns, both constants at each call: `width` columns at a time, then one, with the
 * row count turned into a constant. */
#define DEFINE_DOT_ROWS(set, width)                                                                                    \
    static inline __attribute__((always_inline)) void dot_columns_##set(const int rows, int cols, ptrdiff_t k,         \
                                                                        const float *a, ptrdiff_t lda,                 \
                                                                        const float *b, ptrdiff_t ldb, float *c,       \
                                                                        ptrdiff_t ldc)                                 \
    {                                                                                                                  \
        int j = 0;                                                                                                     \
        for (; j + (width) <= cols; j += (width))                                                                      \
            dot_block(rows, (width), k, a, lda, b + j * ldb, ldb, c + j, ldc);                                         \
        for (; j < cols; ++j)                                                                                          \
            dot_block(rows, 1, k, a, lda, b + j * ldb, ldb, c + j, ldc);                                               \
    }                                                                                                                  \
    static void dot_rows_##set(int rows, int cols, ptrdiff_t k, const float *a, ptrdiff_t lda, const float *b,         \
                               ptrdiff_t ldb, float *c, ptrdiff_t ldc)                                                 \
    {                                                                                                                  \
        switch (rows) {                                                                                                \
        case 1: dot_columns_##set(1, cols, k, a, lda, b, ldb, c, ldc); break;                                          \
        case 2: dot_columns_##set(2, cols, k, a, lda, b, ldb, c, ldc); break;                                          \
        case 3: dot_columns_##set(3, cols, k, a, lda, b, ldb, c, ldc); break;                                          \
        default: dot_columns_##set(DOT_ROWS, cols, k, a, lda, b, ldb, c, ldc); break;                                  \
        }                                                                                                              \
    }

/* A kernel set's outer_rows (cpu_kernels): a plain loop, which each set's file compiles to its own vectors. The
 * micro-kernel's sum starts from +0: adding 0 keeps its bits for a product of -0 (stored as +0 there too). */
#define DEFINE_OUTER_ROWS(set)                                                                                         \
    static void outer_rows_##set(int rows, int cols, const float *a, ptrdiff_t a_step, const float *restrict b,        \
                                 float *restrict c, ptrdiff_t ldc)                                                     \
    {                                                                                                                  \
        for (int r = 0; r < rows; ++r) {                                                                               \
            const float ar = a[r * a_step];                                                                            \
            float *restrict row = c + r * ldc;                                                                         \
            for (int j = 0; j < cols; ++j)                                                                             \
                row[j] = ar * b[j] + 0.0f;                                                                             \
        }                                                                                                              \
    }

/* The routines that exist once per instruction set. Values differ between sets only by rounding. */
typedef struct {
    int isa;
    int mr, nr;               /* the micro-kernel's tile; packed slivers are mr rows / nr columns wide */
    /* [short][narrow]: the kernel of the whole mr x nr tile ([0][0]) and those of its first mr / 2 rows
     * (short) and first nr / 2 columns (narrow), which give each element they compute the same operations as
     * the whole tile's: less work for tiles of at most half the rows or columns, the same bits. */
    microkernel_fn microkernel[2][2];
    /* z[i][j] = act(z[i][j] + bias[j]) over a rows x cols block. */
    void (*bias_activation)(float *z, ptrdiff_t ldz, int rows, int cols, const float *bias, int activation);
    /* d[i][j] *= act'(a[i][j]) over a rows x cols block, act' written in terms of the output a. */
    void (*activation_derivative)(float *d, ptrdiff_t ldd, int rows, int cols, const float *a,
                                  ptrdiff_t lda, int activation);
    /* Packs an A sliver of a row-major A: sliver[q * mr + r] = src[r * ld + q] for r < rows, zero above. */
    void (*pack_a_rows)(const float *src, ptrdiff_t ld, int rows, int kc, float *sliver);
    /* Packs a B sliver of op(B) = W^T: sliver[q * nr + c] = src[c * ld + q] for c < cols, zero above. */
    void (*pack_b_transposed)(const float *src, ptrdiff_t ld, int cols, int kc, float *sliver);
    /* c[r * ldc + j] = sum over q < k of a[r * lda + q] b[j * ldb + q] for r < rows (at most DOT_ROWS) and
     * j < cols: both operands read along k where they lie. Each sum is taken in DOT_LANES lanes, lane l adding
     * the terms q = l (mod DOT_LANES) in order (fused multiply-adds in the AVX2 and AVX-512 sets), then lanes
     * l and l + 8 added, l and l + 4, l and l + 2, and 0 and 1: the same bits in both of those sets. */
    void (*dot_rows)(int rows, int cols, ptrdiff_t k, const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                     float *c, ptrdiff_t ldc);
    /* c[r * ldc + j] = a[r * a_step] b[j] for r < rows and j < cols: a product of depth 1, each element the
     * micro-kernel's one multiply-add from zero, so the same bits as the micro-kernel's in every set. */
    void (*outer_rows)(int rows, int cols, const float *a, ptrdiff_t a_step, const float *b, float *c,
                       ptrdiff_t ldc);
} cpu_kernels;

extern const cpu_kernels portable_kernels;
extern const cpu_kernels avx2_kernels;
extern const cpu_kernels avx512_kernels;

/* NULL if the isa is unknown or this CPU cannot run it; MLP_ISA_AUTO picks the best. */
const cpu_kernels *kernels_for_isa(int isa);

/* A product C = op(A) op(B) + epilogue, with op(A)(i, p) = a[i * a_rs + p * a_cs] and
 * op(B)(p, j) = b[p * b_rs + j * b_cs]: any transposition is just a choice of strides. */
typedef struct {
    int m, n, k;
    const float *a;
    ptrdiff_t a_rs, a_cs;
    const float *b;
    ptrdiff_t b_rs, b_cs;
    float *c;
    ptrdiff_t ldc;
    epilogue ep;
    /* Packed rung: op(B) already packed for the whole team (gemm_pack_b_shared), or NULL: each thread packs
     * the slivers it needs. */
    const float *b_shared;
    /* Packed rung: op(A) already packed (gemm_pack_a_shared: each k block's row slivers side by side, k
     * blocks one after the other), or NULL: each thread packs the slivers it needs. */
    const float *a_shared;
    /* Packed rung: 1 splits C by rows only, each thread a contiguous range of row slivers (split_range of
     * them over the team), whatever the product's shape; 0: the grid or tile list that suits the shape. */
    int rows_split;
} gemm_problem;

/* Packed operands, one slot per thread: an MC x KC block of A (a_floats) and a KC x NC panel of B
 * (b_floats), both cut down to the largest product the owner will run. */
typedef struct {
    float *a_packed;
    float *b_packed;
    ptrdiff_t a_floats, b_floats;
    int max_m, max_n;
} pack_buffers;

int pack_buffers_alloc(pack_buffers *buffers, int max_m, int max_n, int max_threads);
void pack_buffers_free(pack_buffers *buffers);

/* Runs one product with the given ladder version. Called by every thread of the current team (or outside
 * a parallel region). No barrier inside or at the end: each thread writes only its own block of C with its
 * own packing buffers, so the caller synchronises only before C is read. Returns this thread's
 * multiply-adds (tile padding included); with a timeline, adds its packing time to it. */
typedef struct {
    int i0, i1, j0, j1;       /* rows [i0, i1) x columns [j0, j1) of C */
} gemm_rect;

/* The part of C one thread computes: up to three rectangles (a range of a column-ordered tile list is the
 * tail of one column, whole columns and the head of another). */
typedef struct {
    int count;
    gemm_rect part[3];
} gemm_share;

long long gemm_team(int kernel, const gemm_problem *problem, const pack_buffers *buffers,
                    const cpu_kernels *kernels, timeline *tl);

/* The part of C that gemm_team gives the calling thread of a `team` on the packed rung, known before the
 * product runs, so a step can fuse per-block work after it. */
gemm_share gemm_packed_share(const gemm_problem *problem, const cpu_kernels *kernels, int team, int tid);

/* Packs all of op(B) of a product in the layout gemm_team reads through b_shared (each k block's column
 * slivers side by side, k blocks one after the other), the team's threads each a share of whole slivers (a
 * column sliver in one k block); returns the floats this thread packed. Needs k * round_up(n, nr) floats. */
long long gemm_pack_b_shared(const gemm_problem *problem, const cpu_kernels *kernels, float *dst, int team, int tid);

/* Packs rows [q_lo, q_hi) of op(A)'s k range, every row sliver of them, where gemm_team reads them through
 * a_shared: so threads that own ranges of k can pack op(A) together. Needs k * round_up(m, mr) floats; returns
 * the floats written (padding included). */
long long gemm_pack_a_shared(const gemm_problem *problem, const cpu_kernels *kernels, float *dst, int q_lo,
                             int q_hi);

/* 1 if a team should pack op(B) once for all (gemm_pack_b_shared) rather than each thread its slivers: where
 * on their own the threads would pack every column sliver twice or more on average, and there are at least as
 * many slivers as threads. The same answer on every thread. */
int gemm_shares_b(const gemm_problem *problem, const cpu_kernels *kernels, int team);

/* 1 if on the packed rung every thread's block spans all of C's columns (n fits one column sliver). */
int gemm_packed_whole_rows(const gemm_problem *problem, const cpu_kernels *kernels);

/* The BLAS build (libmlp_blas, -DMLP_BLAS) does every product with OpenBLAS's cblas_sgemm on OpenBLAS's own
 * thread pool, set to the call's thread count before each stage; everything else runs on the calling thread
 * (the build has no OpenMP), so the two never compete for cores. */
#ifdef MLP_BLAS
#include <cblas.h>
static inline void blas_use_threads(int threads) { scipy_openblas_set_num_threads(threads); }
#else
static inline void blas_use_threads(int threads) { (void)threads; }
#endif

/* The timeline (timeline.c). */

/* Monotonic clock in nanoseconds. */
long long now_ns(void);
/* A stage call begins / ends (calling thread, outside the team). */
void timeline_begin(timeline *tl, int team);
void timeline_end(timeline *tl);
void timeline_fork(timeline *tl);
/* Records [start, now) for the calling thread; returns now. */
long long timeline_record(timeline *tl, int kind, int layer, long long start, long long pack_ns, long long work);
/* Time spent packing by each thread since the last call of timeline_take_pack (gemm_packed adds to it). */
void timeline_add_pack(timeline *tl, long long ns);
long long timeline_take_pack(timeline *tl);
timeline *timeline_create(int threads, int events_per_thread);
void timeline_destroy(timeline *tl);
int timeline_copy(const timeline *tl, mlp_event *events, int capacity, int *count, int *dropped);

/* [lo, hi): part `index` of `count` items split into `parts` nearly equal contiguous ranges. */
static inline void split_range(ptrdiff_t count, int parts, int index, ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t base = count / parts, extra = count % parts;
    *lo = index * base + (index < extra ? index : extra);
    *hi = *lo + base + (index < extra ? 1 : 0);
}

static inline ptrdiff_t round_up(ptrdiff_t value, ptrdiff_t multiple)
{
    return (value + multiple - 1) / multiple * multiple;
}

/* 64-byte aligned, zero-filled; size in floats. NULL on overflow or failure. */
float *alloc_floats(size_t count);
/* The same, not written: the caller zeroes it where its pages should be placed (first touch). */
float *alloc_floats_untouched(size_t count);
/* Zeroes part `tid` of `team` contiguous parts of a buffer (NULL: nothing). */
void zero_share(float *buffer, size_t count, int team, int tid);

#endif /* MLP_INTERNAL_H */
