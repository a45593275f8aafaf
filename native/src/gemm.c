/* The matrix-product ladder, one rung per optimisation, in the order it was built:
 *
 *   1. naive:   one dot product per output element, straight from the strided operands;
 *   2. blocked: the loop order chosen so the innermost loop walks memory contiguously, and the output and
 *               k dimension cut into blocks that stay in cache; the compiler vectorises the inner loop;
 *   3. packed:  BLIS-style. op(A) is copied into mr-row slivers and op(B) into nr-column slivers (so a
 *               transposition costs nothing but a different packing stride), and a register-blocked SIMD
 *               micro-kernel computes mr x nr tiles (the tile of the instruction set's kernel set),
 *               applying bias + activation (forward) or the activation derivative (backprop) to the tile
 *               while it is still in registers.
 *
 * Rungs 1 and 2 run the epilogue as a separate pass over each finished output tile.
 *
 * Parallelism: every rung splits the OUTPUT among threads (rungs 1 and 2: contiguous ranges of tiles;
 * rung 3: a grid of blocks or, for short products, ranges of a column-ordered tile list, each thread packing
 * its own panels); each element's sum over k is computed
 * whole by one thread in an order fixed by the code (never by the partition), so the result is
 * bit-identical for any number of threads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static inline int imin(int a, int b) { return a < b ? a : b; }

float *alloc_floats_untouched(size_t count)
{
    if (count == 0 || count > (SIZE_MAX - ALIGN_BYTES) / sizeof(float))
        return NULL;
    return aligned_alloc(ALIGN_BYTES, (size_t)round_up((ptrdiff_t)(count * sizeof(float)), ALIGN_BYTES));
}

float *alloc_floats(size_t count)
{
    float *p = alloc_floats_untouched(count);
    if (p)
        memset(p, 0, count * sizeof(float));
    return p;
}

void zero_share(float *buffer, size_t count, int team, int tid)
{
    ptrdiff_t lo, hi;
    split_range((ptrdiff_t)count, team, tid, &lo, &hi);
    if (buffer && hi > lo)
        memset(buffer + lo, 0, (size_t)(hi - lo) * sizeof(float));
}

/* ------------------------------------------------------------------ rungs 1 and 2: loops over tiles */

/* Output tile of rungs 1 and 2 and the k block of rung 2: small enough to give every thread tiles on the
 * study's small networks; a 16 x 128 tile of C (8 KiB) stays in L1, a 256 x 128 block of B in L2. */
enum { LOOP_TILE_M = 16, LOOP_TILE_N = 128, LOOP_BLOCK_K = 256 };

/* The BLAS build replaces the ladder (gemm_team below): its loops are compiled only without it. */
#ifndef MLP_BLAS
static void naive_tile(const gemm_problem *p, int i0, int i1, int j0, int j1)
{
    for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j) {
            float sum = 0.0f;
            for (int q = 0; q < p->k; ++q)
                sum += p->a[i * p->a_rs + q * p->a_cs] * p->b[q * p->b_rs + j * p->b_cs];
            p->c[i * p->ldc + j] = sum;
        }
}

/* op(B) = W^T with W row-major: both operands are contiguous along k, so the inner loop is a dot product.
 * C forbids reordering a float sum, so `omp simd reduction` grants the vectoriser that licence for this
 * one loop (a fixed order, the same for every thread count). */
static void blocked_tile_dot(const gemm_problem *p, int i0, int i1, int j0, int j1)
{
    for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j)
            p->c[i * p->ldc + j] = 0.0f;
    for (int q0 = 0; q0 < p->k; q0 += LOOP_BLOCK_K) {
        const int kb = imin(LOOP_BLOCK_K, p->k - q0);
        for (int i = i0; i < i1; ++i) {
            const float *restrict a_row = p->a + i * p->a_rs + q0;
            for (int j = j0; j < j1; ++j) {
                const float *restrict b_col = p->b + j * p->b_cs + q0;
                float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
                for (int q = 0; q < kb; ++q)
                    sum += a_row[q] * b_col[q];
                p->c[i * p->ldc + j] += sum;
            }
        }
    }
}

/* Any other layout: i-k-j order, C's row += a(i,q) * B's row q. Contiguous (and vectorised, each lane its
 * own output element) when op(B)'s rows are contiguous, which covers the products A B and A^T B. */
static void blocked_tile_axpy(const gemm_problem *p, int i0, int i1, int j0, int j1)
{
    const int nj = j1 - j0;
    for (int i = i0; i < i1; ++i)
        for (int j = j0; j < j1; ++j)
            p->c[i * p->ldc + j] = 0.0f;
    for (int q0 = 0; q0 < p->k; q0 += LOOP_BLOCK_K) {
        const int q1 = imin(q0 + LOOP_BLOCK_K, p->k);
        for (int i = i0; i < i1; ++i) {
            float *restrict c_row = p->c + i * p->ldc + j0;
            for (int q = q0; q < q1; ++q) {
                const float a_iq = p->a[i * p->a_rs + q * p->a_cs];
                const float *restrict b_row = p->b + q * p->b_rs + j0 * p->b_cs;
                if (p->b_cs == 1)
                    for (int j = 0; j < nj; ++j)
                        c_row[j] += a_iq * b_row[j];
                else
                    for (int j = 0; j < nj; ++j)
                        c_row[j] += a_iq * b_row[j * p->b_cs];
            }
        }
    }
}

#endif

/* The epilogue of rungs 1 and 2: a second pass over a finished tile of C. */
static void epilogue_pass(const gemm_problem *p, const cpu_kernels *kernels, int i0, int i1, int j0, int j1)
{
    float *c = p->c + i0 * p->ldc + j0;
    if (p->ep.kind == EPI_BIAS_ACTIVATION)
        kernels->bias_activation(c, p->ldc, i1 - i0, j1 - j0, p->ep.bias + j0, p->ep.activation);
    else if (p->ep.kind == EPI_ACTIVATION_DERIVATIVE)
        kernels->activation_derivative(c, p->ldc, i1 - i0, j1 - j0, p->ep.aux + i0 * p->ep.ld_aux + j0,
                                       p->ep.ld_aux, p->ep.activation);
}

#ifndef MLP_BLAS
static long long gemm_loops(int kernel, const gemm_problem *p, const cpu_kernels *kernels)
{
    long long work = 0;
    const int tiles_m = (p->m + LOOP_TILE_M - 1) / LOOP_TILE_M;
    const int tiles_n = (p->n + LOOP_TILE_N - 1) / LOOP_TILE_N;
    const int dot_form = p->a_cs == 1 && p->b_rs == 1 && p->b_cs != 1;
    ptrdiff_t lo, hi;
    split_range((ptrdiff_t)tiles_m * tiles_n, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
    for (ptrdiff_t t = lo; t < hi; ++t) {
        const int i0 = (int)(t / tiles_n) * LOOP_TILE_M, j0 = (int)(t % tiles_n) * LOOP_TILE_N;
        const int i1 = imin(i0 + LOOP_TILE_M, p->m), j1 = imin(j0 + LOOP_TILE_N, p->n);
        if (kernel == MLP_KERNEL_NAIVE)
            naive_tile(p, i0, i1, j0, j1);
        else if (dot_form)
            blocked_tile_dot(p, i0, i1, j0, j1);
        else
            blocked_tile_axpy(p, i0, i1, j0, j1);
        epilogue_pass(p, kernels, i0, i1, j0, j1);
        work += (long long)(i1 - i0) * (j1 - j0) * p->k;
    }
    return work;
}

#endif

/* ------------------------------------------------------------------ rung 3: packed panels */

int pack_buffers_alloc(pack_buffers *buffers, int max_m, int max_n, int max_threads)
{
    /* Up to MC rows, and whole slivers of either tile height (24 is a multiple of both). */
    buffers->a_floats = imin(MC, (int)round_up(max_m, 24)) * KC;
    buffers->b_floats = (ptrdiff_t)KC * round_up(imin(NC, max_n), NR_MAX);
    buffers->a_packed = alloc_floats_untouched((size_t)(buffers->a_floats * max_threads));
    buffers->b_packed = alloc_floats_untouched((size_t)(buffers->b_floats * max_threads));
    buffers->max_m = max_m;
    buffers->max_n = max_n;
    if (!buffers->a_packed || !buffers->b_packed) {
        pack_buffers_free(buffers);
        return MLP_ERR_MEMORY;
    }
    /* Each thread's slot first touched by that thread, so its pages lie on that thread's memory node (a
     * smaller team than asked for, or the serial build's one thread, clears the rest in turn). */
#pragma omp parallel num_threads(max_threads)
    for (int t = omp_get_thread_num(); t < max_threads; t += omp_get_num_threads()) {
        memset(buffers->a_packed + t * buffers->a_floats, 0, (size_t)buffers->a_floats * sizeof(float));
        memset(buffers->b_packed + t * buffers->b_floats, 0, (size_t)buffers->b_floats * sizeof(float));
    }
    return MLP_OK;
}

void pack_buffers_free(pack_buffers *buffers)
{
    free(buffers->a_packed);
    free(buffers->b_packed);
    buffers->a_packed = buffers->b_packed = NULL;
}

#ifndef MLP_BLAS
/* The k blocks of every packed product: ceil(k / KC) of them, of balanced sizes. They depend on k alone (never
 * on the thread grid), so they fix each sum's order, and every packing of an operand, a thread's or the team's,
 * cuts k where the product does. */
static int k_block_count(int k) { return (k + KC - 1) / KC; }

static int k_block_size(int k)
{
    const int blocks = k_block_count(k);
    return (k + blocks - 1) / blocks;
}

/* n floats from src to dst, for the sliver widths of the kernel sets (6, 8, 16, 32) as copies of a size known
 * here, which the compiler turns into a few vector moves instead of a call to memcpy: packing a small
 * product's operands is a few hundred such copies. */
static inline void copy_sliver_row(float *restrict dst, const float *restrict src, int n)
{
    switch (n) {
    case 6: memcpy(dst, src, 6 * sizeof(float)); return;
    case 8: memcpy(dst, src, 8 * sizeof(float)); return;
    case 16: memcpy(dst, src, 16 * sizeof(float)); return;
    case 32: memcpy(dst, src, 32 * sizeof(float)); return;
    default: memcpy(dst, src, (size_t)n * sizeof(float)); return;
    }
}

/* Rows [i0, i0 + mr) and k range [q0, q0 + kc) of op(A) as sliver[q * mr + r]; rows past m are zero.
 * A row-major A (the forward and input-gradient products) is a transposition, left to the kernel set; an
 * A^T (the weight gradient) has contiguous columns, which are plain copies. */
static void pack_a_sliver(const gemm_problem *p, const cpu_kernels *kernels, int i0, int q0, int kc,
                          float *restrict sliver)
{
    const int mr = kernels->mr, rows = imin(mr, p->m - i0);
    const float *src = p->a + i0 * p->a_rs + q0 * p->a_cs;
    if (p->a_cs == 1) {
        kernels->pack_a_rows(src, p->a_rs, rows, kc, sliver);
        return;
    }
    if (p->a_rs == 1 && rows == mr) {
        for (int q = 0; q < kc; ++q)
            copy_sliver_row(sliver + q * mr, src + q * p->a_cs, mr);
        return;
    }
    for (int q = 0; q < kc; ++q)
        for (int r = 0; r < rows; ++r)
            sliver[q * mr + r] = src[q * p->a_cs + r * p->a_rs];
    for (int q = 0; q < kc; ++q)
        for (int r = rows; r < mr; ++r)
            sliver[q * mr + r] = 0.0f;
}

/* k range [q0, q0 + kc) and columns [j0, j0 + nr) of op(B) as sliver[q * nr + c]; columns past n are zero.
 * op(B) = W^T (the forward product) is a transposition, left to the kernel set; rows of op(B) that are
 * contiguous are plain copies. */
static void pack_b_sliver(const gemm_problem *p, const cpu_kernels *kernels, int q0, int kc, int j0,
                          float *restrict sliver)
{
    const int nr = kernels->nr, cols = imin(nr, p->n - j0);
    const float *src = p->b + q0 * p->b_rs + j0 * p->b_cs;
    if (p->b_rs == 1 && p->b_cs != 1) {
        kernels->pack_b_transposed(src, p->b_cs, cols, kc, sliver);
        return;
    }
    if (p->b_cs == 1 && cols == nr) {
        for (int q = 0; q < kc; ++q)
            copy_sliver_row(sliver + q * nr, src + q * p->b_rs, nr);
        return;
    }
    for (int q = 0; q < kc; ++q)
        for (int c = 0; c < cols; ++c)
            sliver[q * nr + c] = src[q * p->b_rs + c * p->b_cs];
    for (int q = 0; q < kc; ++q)
        for (int c = cols; c < nr; ++c)
            sliver[q * nr + c] = 0.0f;
}

/* Short products (k at most DIRECT_MAX_K: the weight gradients of a small batch, whose k is the batch) read
 * an operand where it lies instead of packing it, wherever one k step's values of a sliver are contiguous
 * there: op(A) = X^T (a_rs == 1; step a_cs) and op(B) = X (b_cs == 1; step b_rs), for slivers of whole rows
 * or columns (a partial one would read past the operand). There, packing costs as much as the multiply-adds
 * (digits' 10 x 128 weight gradient: 0.5 of 1.9 us), and up to DIRECT_MAX_K strided rows stay in L1. So does
 * B at any k where C is one row sliver (the input gradient of a batch of at most mr rows, B the weights):
 * each packed value would be read once, so the copy is all cost (moons-5h300 at batch 1: 86 of a 217 us
 * step packing). Each element gets the same operations either way: the same bits. Operands the team packed
 * are read as packed. */
enum { DIRECT_MAX_K = 64 };

/* Where the micro-kernel reads a sliver: k step q's values at at + q * step. */
typedef struct {
    const float *at;
    ptrdiff_t step;
} operand_sliver;

static int direct_a(const gemm_problem *p, const cpu_kernels *kernels, ptrdiff_t sliver)
{
    return !p->a_shared && p->a_rs == 1 && p->k <= DIRECT_MAX_K && (sliver + 1) * kernels->mr <= p->m;
}

static int direct_b(const gemm_problem *p, const cpu_kernels *kernels, ptrdiff_t sliver)
{
    return !p->b_shared && p->b_cs == 1 && (p->k <= DIRECT_MAX_K || p->m <= kernels->mr) &&
           (sliver + 1) * kernels->nr <= p->n;
}

/* A forward layer of at most DOT_ROWS rows (mlp.h: MLP_DOT_ROWS) whose operands both run along k where they
 * lie, op(A) = X and op(B) = W^T, is dot products of X's rows with W's rows: the micro-kernel would need W^T
 * packed, each packed value then read at most DOT_ROWS times (moons-5h300 at batch 1: the forward and its
 * packing 106 of a 191 us step on one thread). Each thread takes a range of DOT_COLUMN_BLOCK-wide column
 * blocks of C, every row of them, and applies the epilogue there; the sums' order (internal.h, dot_rows) is
 * fixed, so thread count never changes a result. Only forward layers (EPI_BIAS_ACTIVATION) of at least
 * MLP_DOT_MIN_COLS outputs: the other products keep the same bits however their operands are stored, narrower
 * layers (an output layer whose whole rows a thread computes when the step fuses them) stay on the
 * micro-kernel, and the choice never depends on a kernel set's tile. Plans 11 and 16, whose hidden forward is
 * the micro-kernel's transposed product, do not run on such batches (model.c, step_plan). */
enum { DOT_COLUMN_BLOCK = 16 };

static int dot_product(const gemm_problem *p)
{
    return p->m <= DOT_ROWS && p->n >= MLP_DOT_MIN_COLS && p->ep.kind == EPI_BIAS_ACTIVATION && p->a_cs == 1 &&
           p->b_rs == 1 && !p->a_shared && !p->b_shared && !p->rows_split;
}

static void dot_columns_of(const gemm_problem *p, int team, int tid, int *col_lo, int *col_hi)
{
    ptrdiff_t lo, hi;
    split_range((p->n + DOT_COLUMN_BLOCK - 1) / DOT_COLUMN_BLOCK, team, tid, &lo, &hi);
    *col_lo = (int)lo * DOT_COLUMN_BLOCK;
    *col_hi = imin((int)hi * DOT_COLUMN_BLOCK, p->n);
}

static long long gemm_dot(const gemm_problem *p, const cpu_kernels *kernels)
{
    int col_lo, col_hi;
    dot_columns_of(p, omp_get_num_threads(), omp_get_thread_num(), &col_lo, &col_hi);
    const int cols = col_hi - col_lo;
    if (cols <= 0)
        return 0;
    float *c = p->c + col_lo;
    kernels->dot_rows(p->m, cols, p->k, p->a, p->a_rs, p->b + (ptrdiff_t)col_lo * p->b_cs, p->b_cs, c, p->ldc);
    kernels->bias_activation(c, p->ldc, p->m, cols, p->ep.bias + col_lo, p->ep.activation);
    return (long long)p->m * cols * p->k;
}

/* Row sliver i of op(A) in k block pc: in place if direct, else `packed` (the team's or this thread's). */
static operand_sliver a_sliver_at(const gemm_problem *p, const cpu_kernels *kernels, ptrdiff_t i, int pc,
                                  const float *packed)
{
    if (direct_a(p, kernels, i))
        return (operand_sliver){p->a + i * kernels->mr + pc * p->a_cs, p->a_cs};
    return (operand_sliver){packed, kernels->mr};
}

static operand_sliver b_sliver_at(const gemm_problem *p, const cpu_kernels *kernels, ptrdiff_t j, int pc,
                                  const float *packed)
{
    if (direct_b(p, kernels, j))
        return (operand_sliver){p->b + pc * p->b_rs + j * kernels->nr, p->b_rs};
    return (operand_sliver){packed, kernels->nr};
}

/* Copies the rows x cols corner of a tile into an mr x nr stage (row stride nr), zeros elsewhere. */
static void stage_tile(float *stage, int mr, int nr, const float *src, ptrdiff_t ld, int rows, int cols)
{
    memset(stage, 0, (size_t)mr * nr * sizeof(float));
    for (int r = 0; r < rows; ++r)
        memcpy(stage + r * nr, src + r * ld, (size_t)cols * sizeof(float));
}

/* One mr x nr tile. A tile of at most mr / 2 rows or nr / 2 columns runs the kernel set's micro-kernel of that
 * part of a tile, which gives each element the same operations as the whole tile's. Edge tiles run the
 * micro-kernel on a staged copy, so every element of C is computed by the same instructions wherever the tile
 * boundaries fall. The stage is filled only where the kernel reads it (C when accumulating, aux for the
 * derivative), zero-padded beyond the edge. */
static void packed_tile(const gemm_problem *p, const cpu_kernels *kernels, operand_sliver a, operand_sliver b,
                        int kc, int row0, int col0, int accumulate, int finish)
{
    const int mr = kernels->mr, nr = kernels->nr;
    const int rows = imin(mr, p->m - row0), cols = imin(nr, p->n - col0);
    const int needs_aux = finish && p->ep.kind == EPI_ACTIVATION_DERIVATIVE;
    tile_output out = {
        .c = p->c + row0 * p->ldc + col0,
        .ldc = p->ldc,
        .accumulate = accumulate,
        .finish = finish,
        .kind = p->ep.kind,
        .activation = p->ep.activation,
        .bias = p->ep.bias ? p->ep.bias + col0 : NULL,
        .aux = needs_aux ? p->ep.aux + row0 * p->ep.ld_aux + col0 : NULL,
        .ld_aux = p->ep.ld_aux,
    };
    const int short_tile = rows <= mr / 2, narrow = cols <= nr / 2;
    const microkernel_fn microkernel = kernels->microkernel[short_tile][narrow];
    if (rows == (short_tile ? mr / 2 : mr) && cols == (narrow ? nr / 2 : nr)) {
        microkernel(kc, a.at, a.step, b.at, b.step, &out);
        return;
    }
    _Alignas(ALIGN_BYTES) float c_stage[MR_MAX * NR_MAX];
    _Alignas(ALIGN_BYTES) float aux_stage[MR_MAX * NR_MAX];
    if (accumulate)
        stage_tile(c_stage, mr, nr, out.c, p->ldc, rows, cols);
    if (needs_aux)
        stage_tile(aux_stage, mr, nr, out.aux, p->ep.ld_aux, rows, cols);
    float *c_tile = out.c;
    out.c = c_stage;
    out.ldc = nr;
    out.aux = needs_aux ? aux_stage : NULL;
    out.ld_aux = nr;
    microkernel(kc, a.at, a.step, b.at, b.step, &out);
    for (int r = 0; r < rows; ++r)
        memcpy(c_tile + r * p->ldc, c_stage + r * nr, (size_t)cols * sizeof(float));
}

/* The thread grid of one product: m_parts x n_parts threads, each owning a block of row slivers x column
 * slivers of C. It minimises a thread's work, estimated as its multiply-adds (16 per cycle) plus its
 * packing (about 2 elements per cycle, A and B panels of its block), per unit of k; returns that cost.
 * Speed only: results never depend on it. */
static double thread_grid(int m_slivers, int n_slivers, int mr, int nr, int team, int *m_parts, int *n_parts)
{
    double best = 0.0;
    *m_parts = *n_parts = 1;
    for (int np = 1; np <= imin(team, n_slivers); ++np) {
        const int mp = imin(team / np, m_slivers);
        const double rows = (double)((m_slivers + mp - 1) / mp * mr);
        const double cols = (double)((n_slivers + np - 1) / np * nr);
        const double cost = rows * cols / 16.0 + (rows + cols) / 2.0;
        if (np == 1 || cost < best) {
            best = cost;
            *m_parts = mp;
            *n_parts = np;
        }
    }
    return best;
}

/* How a product's tiles are split over a team: a grid of blocks, or, when C has few row slivers (a batch
 * of a few dozen rows: a grid then leaves threads idle, e.g. 10 of 16 on 32 x 300 with 8 x 32 tiles), the
 * tiles in column order (row sliver fastest) cut into contiguous ranges, so every thread gets some; each
 * range packs the B slivers of its one to few columns and the A slivers of its rows. */
typedef struct {
    int m_slivers, n_slivers;
    int list;                 /* 1: contiguous ranges of the tile list; 0: the grid */
    int m_parts, n_parts;
} tile_split;

static tile_split plan_split(const gemm_problem *p, const cpu_kernels *kernels, int team)
{
    const int mr = kernels->mr, nr = kernels->nr;
    tile_split split = {(p->m + mr - 1) / mr, (p->n + nr - 1) / nr, 0, 1, 1};
    if (p->rows_split) {
        /* Every thread a contiguous range of row slivers, all columns (the same rows in every product of
         * the same m under the same team). */
        split.m_parts = team;
        return split;
    }
    const double grid = thread_grid(split.m_slivers, split.n_slivers, mr, nr, team, &split.m_parts,
                                    &split.n_parts);
    /* The list packs every A sliver of a k block side by side: only where they fit one MC block. */
    if (team > 1 && split.m_slivers * mr <= MC) {
        const ptrdiff_t tiles = (ptrdiff_t)split.m_slivers * split.n_slivers;
        const ptrdiff_t per_thread = (tiles + team - 1) / team;
        const double rows = (double)(per_thread < split.m_slivers ? per_thread : split.m_slivers) * mr;
        const ptrdiff_t columns = per_thread == 1 ? 1 : (per_thread + split.m_slivers - 1) / split.m_slivers + 1;
        const double cols = (double)(columns < split.n_slivers ? columns : split.n_slivers) * nr;
        const double cost = (double)per_thread * mr * nr / 16.0 + (rows + cols) / 2.0;
        split.list = cost < grid;
    }
    return split;
}

/* This thread's grid block, in slivers; 0 if it has none. */
static int grid_block(const tile_split *split, int tid, ptrdiff_t *row_lo, ptrdiff_t *row_hi, ptrdiff_t *col_lo,
                      ptrdiff_t *col_hi)
{
    if (tid >= split->m_parts * split->n_parts)
        return 0;
    split_range(split->m_slivers, split->m_parts, tid / split->n_parts, row_lo, row_hi);
    split_range(split->n_slivers, split->n_parts, tid % split->n_parts, col_lo, col_hi);
    return 1;
}

static void add_part(gemm_share *share, const gemm_problem *p, const cpu_kernels *kernels, ptrdiff_t row_lo,
                     ptrdiff_t row_hi, ptrdiff_t col_lo, ptrdiff_t col_hi)
{
    if (row_lo >= row_hi || col_lo >= col_hi)
        return;
    share->part[share->count++] = (gemm_rect){
        (int)row_lo * kernels->mr, imin((int)row_hi * kernels->mr, p->m),
        (int)col_lo * kernels->nr, imin((int)col_hi * kernels->nr, p->n),
    };
}

gemm_share gemm_packed_share(const gemm_problem *p, const cpu_kernels *kernels, int team, int tid)
{
    gemm_share share = {0};
    if (dot_product(p)) {
        int col_lo, col_hi;
        dot_columns_of(p, team, tid, &col_lo, &col_hi);
        if (col_lo < col_hi)
            share.part[share.count++] = (gemm_rect){0, p->m, col_lo, col_hi};
        return share;
    }
    const tile_split split = plan_split(p, kernels, team);
    if (!split.list) {
        ptrdiff_t row_lo, row_hi, col_lo, col_hi;
        if (grid_block(&split, tid, &row_lo, &row_hi, &col_lo, &col_hi))
            add_part(&share, p, kernels, row_lo, row_hi, col_lo, col_hi);
        return share;
    }
    /* A range of the column-ordered list: the tail of one column, whole columns, the head of another. */
    const ptrdiff_t ms = split.m_slivers;
    ptrdiff_t lo, hi;
    split_range(ms * split.n_slivers, team, tid, &lo, &hi);
    if (lo == hi)
        return share;
    const ptrdiff_t first = lo / ms, last = (hi - 1) / ms;
    if (first == last) {
        add_part(&share, p, kernels, lo % ms, (hi - 1) % ms + 1, first, first + 1);
        return share;
    }
    add_part(&share, p, kernels, lo % ms, ms, first, first + 1);
    add_part(&share, p, kernels, 0, ms, first + 1, last);
    add_part(&share, p, kernels, 0, (hi - 1) % ms + 1, last, last + 1);
    return share;
}

/* A product of depth 1 with nothing after it (a weight gradient at batch 1) is an outer product: the
 * micro-kernel would spend a tile's setup, edges and stores on one multiply-add per element (moons-5h300 at
 * batch 1: the weight gradients 44 us of a 143 us step on one thread, 7 us of packing besides). Each thread
 * computes the block of C the packed product gives it (gemm_packed_share, which the fused step's update of the
 * first layer reads without a barrier), each element with the micro-kernel's operations (outer_rows). */
static int outer_product(const gemm_problem *p)
{
    return p->k == 1 && p->ep.kind == EPI_STORE && p->b_cs == 1 && !p->a_shared && !p->b_shared;
}

static long long gemm_outer(const gemm_problem *p, const cpu_kernels *kernels)
{
    const gemm_share share = gemm_packed_share(p, kernels, omp_get_num_threads(), omp_get_thread_num());
    long long elements = 0;
    for (int part = 0; part < share.count; ++part) {
        const gemm_rect r = share.part[part];
        kernels->outer_rows(r.i1 - r.i0, r.j1 - r.j0, p->a + (ptrdiff_t)r.i0 * p->a_rs, p->a_rs, p->b + r.j0,
                            p->c + (ptrdiff_t)r.i0 * p->ldc + r.j0, p->ldc);
        elements += (long long)(r.i1 - r.i0) * (r.j1 - r.j0);
    }
    return elements;
}

int gemm_packed_whole_rows(const gemm_problem *p, const cpu_kernels *kernels) { return p->n <= kernels->nr; }

int gemm_shares_b(const gemm_problem *p, const cpu_kernels *kernels, int team)
{
    if (dot_product(p))
        return 0; /* B is read where it lies */
    const tile_split split = plan_split(p, kernels, team);
    const int k_blocks = k_block_count(p->k);
    if ((ptrdiff_t)split.n_slivers * k_blocks < team)
        return 0; /* too few slivers to spread over the team: one thread would pack most of them */
    /* How many threads would pack each column sliver of B on their own. */
    ptrdiff_t packers = 0;
    if (!split.list) {
        packers = (ptrdiff_t)split.m_parts * split.n_slivers;
    } else {
        const ptrdiff_t ms = split.m_slivers;
        for (int t = 0; t < team; ++t) {
            ptrdiff_t lo, hi;
            split_range(ms * split.n_slivers, team, t, &lo, &hi);
            if (hi > lo)
                packers += (hi - 1) / ms - lo / ms + 1;
        }
    }
    return packers >= 2 * (ptrdiff_t)split.n_slivers;
}

long long gemm_pack_b_shared(const gemm_problem *p, const cpu_kernels *kernels, float *dst, int team, int tid)
{
    const int nr = kernels->nr, n_slivers = (p->n + nr - 1) / nr;
    const int k_blocks = k_block_count(p->k), kc_block = k_block_size(p->k);
    long long packed = 0;
    ptrdiff_t lo, hi;
    /* Items are whole slivers (one column sliver, one k block), column by column, so a thread packs about
     * the columns it computes with (less moves between caches). */
    split_range((ptrdiff_t)k_blocks * n_slivers, team, tid, &lo, &hi);
    for (ptrdiff_t s = lo; s < hi; ++s) {
        const int pc = (int)(s % k_blocks) * kc_block, j = (int)(s / k_blocks);
        const int kc = imin(kc_block, p->k - pc);
        pack_b_sliver(p, kernels, pc, kc, j * nr, dst + (ptrdiff_t)pc * n_slivers * nr + (ptrdiff_t)j * nr * kc);
        packed += (long long)kc * nr;
    }
    return packed;
}

long long gemm_pack_a_shared(const gemm_problem *p, const cpu_kernels *kernels, float *dst, int q_lo, int q_hi)
{
    const int mr = kernels->mr, m_slivers = (p->m + mr - 1) / mr;
    const int kc_block = k_block_size(p->k);
    long long packed = 0;
    /* Each k block's part of [q_lo, q_hi) is one contiguous run of every row sliver of that block. */
    for (int q = q_lo; q < q_hi;) {
        const int pc = q / kc_block * kc_block, kc = imin(kc_block, p->k - pc), q_end = imin(q_hi, pc + kc);
        for (int s = 0; s < m_slivers; ++s)
            pack_a_sliver(p, kernels, s * mr, q, q_end - q,
                          dst + (ptrdiff_t)pc * m_slivers * mr + (ptrdiff_t)s * mr * kc + (ptrdiff_t)(q - pc) * mr);
        packed += (long long)(q_end - q) * m_slivers * mr;
        q = q_end;
    }
    return packed;
}

/* The tile-list split: per k block, each column's B sliver once, each needed A sliver once (kept side by
 * side for the whole block). */
static long long gemm_packed_list(const gemm_problem *p, const pack_buffers *buffers, const cpu_kernels *kernels,
                                  const tile_split *split, timeline *tl)
{
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    const int mr = kernels->mr, nr = kernels->nr;
    const ptrdiff_t ms = split->m_slivers;
    ptrdiff_t lo, hi;
    split_range(ms * split->n_slivers, team, tid, &lo, &hi);
    if (lo == hi)
        return 0;
    float *a_packed = buffers->a_packed + tid * buffers->a_floats;
    float *b_packed = buffers->b_packed + tid * buffers->b_floats;
    const int kc_block = k_block_size(p->k);
    unsigned char packed[MC / MR];  /* A slivers packed in this k block (MR is the smallest mr) */
    for (int pc = 0; pc < p->k; pc += kc_block) {
        const int kc = imin(kc_block, p->k - pc);
        const int accumulate = pc > 0, finish = pc + kc == p->k;
        memset(packed, 0, sizeof packed);
        for (ptrdiff_t j = lo / ms; j <= (hi - 1) / ms; ++j) {
            const ptrdiff_t i_lo = j == lo / ms ? lo % ms : 0, i_hi = j == (hi - 1) / ms ? (hi - 1) % ms + 1 : ms;
            long long t0 = tl ? now_ns() : 0;
            const float *b_block =
                p->b_shared ? p->b_shared + (ptrdiff_t)pc * split->n_slivers * nr + j * nr * kc : b_packed;
            const operand_sliver b_sliver = b_sliver_at(p, kernels, j, pc, b_block);
            if (!p->b_shared && !direct_b(p, kernels, j))
                pack_b_sliver(p, kernels, pc, kc, (int)j * nr, b_packed);
            const float *a_block = p->a_shared ? p->a_shared + (ptrdiff_t)pc * ms * mr : a_packed;
            for (ptrdiff_t i = i_lo; i < i_hi; ++i)
                if (!p->a_shared && !direct_a(p, kernels, i) && !packed[i]) {
                    pack_a_sliver(p, kernels, (int)i * mr, pc, kc, a_packed + i * mr * kc);
                    packed[i] = 1;
                }
            if (tl)
                timeline_add_pack(tl, now_ns() - t0);
            for (ptrdiff_t i = i_lo; i < i_hi; ++i)
                packed_tile(p, kernels, a_sliver_at(p, kernels, i, pc, a_block + i * mr * kc), b_sliver, kc,
                            (int)i * mr, (int)j * nr, accumulate, finish);
        }
    }
    return (long long)(hi - lo) * mr * nr * p->k;
}

/* The five BLIS loops, run by each thread on its own block of C with its own packing buffers, so threads
 * never wait for each other inside a product. Each element's k blocks are added in the same order whoever
 * computes it, so thread count never changes a result. */
static long long gemm_packed(const gemm_problem *p, const pack_buffers *buffers, const cpu_kernels *kernels,
                             timeline *tl)
{
    if (dot_product(p))
        return gemm_dot(p, kernels);
    if (outer_product(p))
        return gemm_outer(p, kernels);
    long long tiles = 0;
    const int team = omp_get_num_threads(), tid = omp_get_thread_num();
    const int mr = kernels->mr, nr = kernels->nr;
    const tile_split split = plan_split(p, kernels, team);
    if (split.list)
        return gemm_packed_list(p, buffers, kernels, &split, tl);
    ptrdiff_t row_lo, row_hi, col_lo, col_hi;
    if (grid_block(&split, tid, &row_lo, &row_hi, &col_lo, &col_hi)) {
        float *a_packed = buffers->a_packed + tid * buffers->a_floats;
        float *b_packed = buffers->b_packed + tid * buffers->b_floats;
        /* Cache blocks of at most NC columns and MC rows, of balanced sizes (in slivers). */
        const ptrdiff_t n_blocks = (col_hi - col_lo + NC / nr - 1) / (NC / nr);
        const ptrdiff_t m_blocks = (row_hi - row_lo + MC / mr - 1) / (MC / mr);
        const ptrdiff_t nc_slivers = n_blocks ? (col_hi - col_lo + n_blocks - 1) / n_blocks : 0;
        const ptrdiff_t mc_slivers = m_blocks ? (row_hi - row_lo + m_blocks - 1) / m_blocks : 0;
        const int kc_block = k_block_size(p->k);
        for (ptrdiff_t jc = col_lo; jc < col_hi; jc += nc_slivers) {
            const ptrdiff_t jc_end = jc + nc_slivers < col_hi ? jc + nc_slivers : col_hi;
            for (int pc = 0; pc < p->k; pc += kc_block) {
                const int kc = imin(kc_block, p->k - pc);
                const int accumulate = pc > 0, finish = pc + kc == p->k;
                long long t0 = tl ? now_ns() : 0;
                /* This k block's slivers: this thread's own, or the team's shared ones from column jc on. */
                const float *b_block = p->b_shared ? p->b_shared + (ptrdiff_t)pc * split.n_slivers * nr + jc * nr * kc
                                                   : b_packed;
                if (!p->b_shared)
                    for (ptrdiff_t s = jc; s < jc_end; ++s)
                        if (!direct_b(p, kernels, s))
                            pack_b_sliver(p, kernels, pc, kc, (int)s * nr, b_packed + (s - jc) * nr * kc);
                if (tl)
                    timeline_add_pack(tl, now_ns() - t0);
                for (ptrdiff_t ic = row_lo; ic < row_hi; ic += mc_slivers) {
                    const ptrdiff_t ic_end = ic + mc_slivers < row_hi ? ic + mc_slivers : row_hi;
                    if (tl)
                        t0 = now_ns();
                    /* This block's row slivers: this thread's own, or the shared ones from row ic on. */
                    const float *a_block =
                        p->a_shared ? p->a_shared + (ptrdiff_t)pc * split.m_slivers * mr + ic * mr * kc : a_packed;
                    if (!p->a_shared)
                        for (ptrdiff_t s = ic; s < ic_end; ++s)
                            if (!direct_a(p, kernels, s))
                                pack_a_sliver(p, kernels, (int)s * mr, pc, kc, a_packed + (s - ic) * mr * kc);
                    if (tl)
                        timeline_add_pack(tl, now_ns() - t0);
                    tiles += (jc_end - jc) * (ic_end - ic);
                    for (ptrdiff_t jr = jc; jr < jc_end; ++jr)
                        for (ptrdiff_t ir = ic; ir < ic_end; ++ir)
                            packed_tile(p, kernels,
                                        a_sliver_at(p, kernels, ir, pc, a_block + (ir - ic) * mr * kc),
                                        b_sliver_at(p, kernels, jr, pc, b_block + (jr - jc) * nr * kc), kc,
                                        (int)ir * mr, (int)jr * nr, accumulate, finish);
                }
            }
        }
    }
    /* Tiles were counted once per k block: their sizes add up to k. */
    return tiles * mr * nr * p->k / k_block_count(p->k);
}

#endif

#ifdef MLP_BLAS
/* The BLAS build runs on the calling thread alone: its one thread owns all of C. */
gemm_share gemm_packed_share(const gemm_problem *p, const cpu_kernels *kernels, int team, int tid)
{
    (void)kernels;
    (void)team;
    gemm_share share = {0};
    if (tid == 0)
        share.part[share.count++] = (gemm_rect){0, p->m, 0, p->n};
    return share;
}

int gemm_packed_whole_rows(const gemm_problem *p, const cpu_kernels *kernels)
{
    (void)p;
    (void)kernels;
    return 0;
}

int gemm_shares_b(const gemm_problem *p, const cpu_kernels *kernels, int team)
{
    (void)p;
    (void)kernels;
    (void)team;
    return 0;
}

long long gemm_pack_b_shared(const gemm_problem *p, const cpu_kernels *kernels, float *dst, int team, int tid)
{
    (void)p;
    (void)kernels;
    (void)dst;
    (void)team;
    (void)tid;
    return 0;
}

long long gemm_pack_a_shared(const gemm_problem *p, const cpu_kernels *kernels, float *dst, int q_lo, int q_hi)
{
    (void)p;
    (void)kernels;
    (void)dst;
    (void)q_lo;
    (void)q_hi;
    return 0;
}

/* An operand op(X) (rows x cols, op(X)(i, j) = x[i * rs + j * cs]) as cblas sees it: X itself, row-major
 * with leading dimension rs, or the transpose of a row-major matrix with leading dimension cs. */
static void blas_operand(ptrdiff_t rs, ptrdiff_t cs, int cols, CBLAS_TRANSPOSE *trans, blasint *ld)
{
    if (cs == 1 && rs >= cols) {
        *trans = CblasNoTrans;
        *ld = (blasint)rs;
    } else {
        *trans = CblasTrans;
        *ld = (blasint)cs;
    }
}

/* The product by OpenBLAS (its threads, set by the caller), then the epilogue as one pass over C. */
static void gemm_blas(const gemm_problem *p, const cpu_kernels *kernels)
{
    CBLAS_TRANSPOSE trans_a, trans_b;
    blasint lda, ldb;
    blas_operand(p->a_rs, p->a_cs, p->k, &trans_a, &lda);
    blas_operand(p->b_rs, p->b_cs, p->n, &trans_b, &ldb);
    scipy_cblas_sgemm(CblasRowMajor, trans_a, trans_b, p->m, p->n, p->k, 1.0f, p->a, lda, p->b, ldb, 0.0f,
                      p->c, (blasint)p->ldc);
    epilogue_pass(p, kernels, 0, p->m, 0, p->n);
}
#endif

long long gemm_team(int kernel, const gemm_problem *problem, const pack_buffers *buffers,
                    const cpu_kernels *kernels, timeline *tl)
{
#ifdef MLP_BLAS
    /* Every ladder version is OpenBLAS here: this build is the optimised-library rung. */
    (void)kernel;
    (void)buffers;
    (void)tl;
    gemm_blas(problem, kernels);
    return (long long)problem->m * problem->n * problem->k;
#else
    if (kernel == MLP_KERNEL_PACKED)
        return gemm_packed(problem, buffers, kernels, tl);
    return gemm_loops(kernel, problem, kernels);
#endif
}

/* ------------------------------------------------------------------ standalone product */

struct mlp_gemm_workspace {
    pack_buffers packs;
    int max_threads;
    const cpu_kernels *kernels;
};

int mlp_gemm_workspace_create(mlp_gemm_workspace **out, int max_m, int max_n, int max_threads, int isa)
{
    if (!out)
        return MLP_ERR_NULL;
    *out = NULL;
    if (max_m < 1 || max_n < 1)
        return MLP_ERR_SIZE;
    if (max_threads < 1 || max_threads > MLP_THREADS_LIMIT)
        return MLP_ERR_THREADS;
    const cpu_kernels *kernels = kernels_for_isa(isa);
    if (!kernels)
        return MLP_ERR_ISA;
    mlp_gemm_workspace *ws = calloc(1, sizeof *ws);
    if (!ws)
        return MLP_ERR_MEMORY;
    if (pack_buffers_alloc(&ws->packs, max_m, max_n, max_threads) != MLP_OK) {
        free(ws);
        return MLP_ERR_MEMORY;
    }
    ws->max_threads = max_threads;
    ws->kernels = kernels;
    *out = ws;
    return MLP_OK;
}

void mlp_gemm_workspace_destroy(mlp_gemm_workspace *workspace)
{
    if (!workspace)
        return;
    pack_buffers_free(&workspace->packs);
    free(workspace);
}

int mlp_gemm(mlp_gemm_workspace *workspace, int kernel, int threads, int transpose_a, int transpose_b,
             int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c, int ldc)
{
    if (!workspace || !a || !b || !c)
        return MLP_ERR_NULL;
    if (kernel < MLP_KERNEL_NAIVE || kernel > MLP_KERNEL_PACKED)
        return MLP_ERR_KERNEL;
    if (threads < 1 || threads > workspace->max_threads)
        return MLP_ERR_THREADS;
    if ((transpose_a != 0 && transpose_a != 1) || (transpose_b != 0 && transpose_b != 1))
        return MLP_ERR_ARG;
    if (m < 1 || n < 1 || k < 1 || m > workspace->packs.max_m || n > workspace->packs.max_n)
        return MLP_ERR_SIZE;
    if (lda < (transpose_a ? m : k) || ldb < (transpose_b ? k : n) || ldc < n)
        return MLP_ERR_SIZE;
    const gemm_problem problem = {
        .m = m, .n = n, .k = k,
        .a = a, .a_rs = transpose_a ? 1 : lda, .a_cs = transpose_a ? lda : 1,
        .b = b, .b_rs = transpose_b ? 1 : ldb, .b_cs = transpose_b ? ldb : 1,
        .c = c, .ldc = ldc,
        .ep = {.kind = EPI_STORE},
    };
    blas_use_threads(threads);
    if (threads == 1) {
        gemm_team(kernel, &problem, &workspace->packs, workspace->kernels, NULL);
    } else {
#pragma omp parallel num_threads(threads)
        gemm_team(kernel, &problem, &workspace->packs, workspace->kernels, NULL);
    }
    return MLP_OK;
}
