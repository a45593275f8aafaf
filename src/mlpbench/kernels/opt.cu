// Rung 3, cuda-opt: warp-tiled SGEMM with 2D register blocking, 128-bit loads, pipelined operand staging and
// fused epilogues (after siboehm's SGEMM_CUDA kernels 5-10 and CUTLASS's SIMT sgemm).
//
// A block computes a BM x BN tile of C, stepping through k by BK, with one warp per WM x WN sub-tile
// ((BM / WM) x (BN / WN) warps); its 32 lanes form an 8 x 4 grid and each lane keeps (WM / 8) x (WN / 4)
// outputs in registers, so every operand value read from shared memory feeds WM / 8 or WN / 4 multiply-adds.
//
// Two ways of staging the operands (-D STAGES), both timed by the autotuner (backends/cuda.py):
// * STAGES = 0: the next k-slice travels global -> registers while the block multiplies the current one, and
//   is stored into a second shared-memory stage, transposed to [k][row] so every read is a float4 (static
//   shared memory, two stages; every configuration small products use).
// * STAGES >= 2: cp.async copies global -> shared memory directly, STAGES - 1 k-slices ahead: no registers
//   held for the copies (room for 8 x 16 outputs per lane) and several loads in flight per block (dynamic
//   shared memory). k-contiguous operands stay [row][k] (16-byte copies need contiguous k) and are read four
//   k at a time per row; with A's rows 8 apart per lane and rows padded to BK + 4 floats, the eight rows a
//   warp reads at once fall in distinct banks. Columns stay in fours for the float4 epilogue, so a k-major B
//   is read with 2-way bank conflicts, which shared memory absorbs at one float4 read per 16 or more
//   multiply-adds.
//   m/n-contiguous operands are [k][row] as above.
// * STAGES >= 2 with FRAGMENT_DB = 1: the same ring, but every operand is staged [k][row]: a k-contiguous one
//   through 4-byte copies that transpose on the way (a warp copies 8 consecutive k of 4 rows: whole 32-byte
//   sectors from global memory, 32 distinct banks in shared memory). Each lane then reads its A and B values
//   of one k as float4s (two per operand for 8 x 8 outputs: conflict-free in every layout), and reads k + 1's
//   while it multiplies k's (two fragment buffers in registers), with one barrier per k-step; meant for
//   8 x 8 outputs per lane within 128 registers, two blocks of 256 threads per SM.
// * FRAGMENT_DB with SMEM_TRANSPOSE = 1: a k-contiguous operand instead travels by 16-byte copies into a
//   [row][k] ring stage (unpadded: a warp's copies and reads cover 512 contiguous bytes) and, one step ahead of
//   its use, each thread reads float4s along k there and writes them as scalars into one of two [k][row]
//   buffers that the fragments are read from (rows XOR-swizzled by k & 8 in groups of four, so that the
//   scalar writes of a warp fall in 32 distinct banks and the float4 fragment reads stay conflict-free). Per
//   k-step and operand a thread spends 2 float4 reads and 8 scalar writes of shared memory on it, against
//   4 copy instructions per 16 bytes (each touching 16 cache lines) on the FRAGMENT_DB path alone; the copies
//   of a step must then land two steps ahead, so STAGES >= 3 ring stages. Nothing changes for an m/n-
//   contiguous operand.
//
// Operands as in naive.cu (nt: A (M,K), B (N,K); nn: A (M,K), B (K,N); tn: A (K,M), B (K,N)), "k-major" when
// k-contiguous. VEC = true uses float4 loads, copies and stores; the caller picks it only when every row
// length involved is a multiple of 4 and every pointer is 16-byte aligned, and falls back to the scalar
// kernels otherwise (same tiling, one float per load), which only register-staged configurations have.
//
// Split k: a launch with gridDim.z = S > 1 cuts k into S consecutive ranges (multiples of BK); slice z stores
// its partial product to C + z * M * N and opt_splitk_sum adds the slices in order and applies the epilogue.
// The host uses it when a product has too few output tiles to fill the GPU (a 1024 x 1024 output is 64 tiles).
//
// Epilogues (run-time mode, uniform per launch):
//   EPI_STORE     C = A B
//   EPI_BIAS_ACT  C = f(A B + bias[n])                 forward; f = ACT_IDENTITY for the output logits
//   EPI_ACT_GRAD  C = (A B) * f'(aux[m, n])             input gradient times the activation derivative
//   EPI_SGD       C = A B; aux -= lr * (C + wd * aux)   weight gradient with the SGD step fused (aux = W)
//
// Constants (-D): BM, BN, BK, WM, WN, MIN_BLOCKS (blocks per SM the register budget must allow); optional
// STAGES (default 0), FRAGMENT_DB (default 0; 1 needs STAGES >= 2), SMEM_TRANSPOSE (default 0; 1 needs
// FRAGMENT_DB, STAGES >= 3 and BK of 8 or 16) and FLOAT4_ONLY (default 0; 1 leaves out the scalar kernels, as
// STAGES >= 2 must).
// Templates, so compiled with no_extern_c; the extern "C" kernels are at the end.
#include "common.cuh"

#ifndef STAGES
#define STAGES 0
#endif
#ifndef FLOAT4_ONLY  // 1: no scalar kernels (configurations only float4 shapes use)
#define FLOAT4_ONLY 0
#endif
#ifndef FRAGMENT_DB  // 1: every operand staged [k][row], fragments double-buffered in registers
#define FRAGMENT_DB 0
#endif
#ifndef SMEM_TRANSPOSE  // 1: k-contiguous operands copied 16 bytes at a time, transposed in shared memory
#define SMEM_TRANSPOSE 0
#endif

#define THREADS (32 * (BM / WM) * (BN / WN))
#define PAD 4  // keeps rows 16-byte aligned and spreads transposed stores and k-major reads over more banks
#define WARPS_N (BN / WN)
#define WM_ITER (WM / 32)
#define WN_ITER (WN / 16)
#define TM (WM / 8)  // outputs per lane along m
#define TN (WN / 4)  // outputs per lane along n
#define LOADS_A (BM * BK / (4 * THREADS))
#define LOADS_B (BN * BK / (4 * THREADS))

#define EPI_STORE 0
#define EPI_BIAS_ACT 1
#define EPI_ACT_GRAD 2
#define EPI_SGD 3

static_assert(BM % WM == 0 && BN % WN == 0, "warps must tile the block");
static_assert(WM % 32 == 0 && WN % 16 == 0, "a warp covers 32 x 16 outputs per iteration");
static_assert(BK % 4 == 0, "k is staged and read four values at a time");
static_assert(LOADS_A >= 1 && LOADS_B >= 1 && BM * BK % (4 * THREADS) == 0 && BN * BK % (4 * THREADS) == 0,
              "every thread loads whole float4s of both operand tiles");
static_assert(THREADS <= 1024, "at most 1024 threads per block");
static_assert(STAGES == 0 || STAGES >= 2, "STAGES: 0 (register staging) or a ring of at least two stages");
static_assert(STAGES == 0 || FLOAT4_ONLY, "16-byte copies need rows in multiples of 4: no scalar kernels");
static_assert(!FRAGMENT_DB || (STAGES >= 2 && BK % 8 == 0), "FRAGMENT_DB: a cp.async ring; k copied 8 at a time");
static_assert(!SMEM_TRANSPOSE || (FRAGMENT_DB && STAGES >= 3 && (BK == 8 || BK == 16)),
              "SMEM_TRANSPOSE: copies land two steps ahead; the swizzle spreads BK of 8 or 16 over the banks");

__device__ __forceinline__ float epilogue(int mode, float acc, const float* bias, float* aux, int activation,
                                          float lr, float weight_decay) {
    switch (mode) {
        case EPI_BIAS_ACT: return activate(activation, acc + *bias);
        case EPI_ACT_GRAD: return acc * activation_derivative(activation, *aux);
        case EPI_SGD: *aux -= lr * (acc + weight_decay * *aux); return acc;
        default: return acc;
    }
}

// Four accumulators of row m, columns n..n+3, through the epilogue into C (the caller skips rows >= M).
template <bool VEC>
__device__ __forceinline__ void store_quad(float* C, int N, int m, int n, float v0, float v1, float v2, float v3,
                                           int mode, const float* bias, float* aux, int activation, float lr,
                                           float weight_decay) {
    const long at = (long)m * N + n;
    if (VEC) {
        if (n >= N) return;  // N % 4 == 0: the four columns are all in or all out
        float4 out = make_float4(v0, v1, v2, v3);
        if (mode == EPI_BIAS_ACT) {
            const float4 bv = *reinterpret_cast<const float4*>(bias + n);
            out = make_float4(activate(activation, out.x + bv.x), activate(activation, out.y + bv.y),
                              activate(activation, out.z + bv.z), activate(activation, out.w + bv.w));
        } else if (mode == EPI_ACT_GRAD) {
            const float4 av = *reinterpret_cast<const float4*>(aux + at);
            out.x *= activation_derivative(activation, av.x);
            out.y *= activation_derivative(activation, av.y);
            out.z *= activation_derivative(activation, av.z);
            out.w *= activation_derivative(activation, av.w);
        } else if (mode == EPI_SGD) {
            float4 w = *reinterpret_cast<const float4*>(aux + at);
            w.x -= lr * (out.x + weight_decay * w.x);
            w.y -= lr * (out.y + weight_decay * w.y);
            w.z -= lr * (out.z + weight_decay * w.z);
            w.w -= lr * (out.w + weight_decay * w.w);
            *reinterpret_cast<float4*>(aux + at) = w;
        }
        *reinterpret_cast<float4*>(C + at) = out;
    } else {
        const float v[4] = {v0, v1, v2, v3};
#pragma unroll
        for (int jj = 0; jj < 4; ++jj)
            if (n + jj < N)
                C[at + jj] = epilogue(mode, v[jj], bias + n + jj, aux + at + jj, activation, lr, weight_decay);
    }
}

// This block's output tile (rows m0.., columns n0..) and its slice [k_begin, k_end) of k: split k cuts K into
// gridDim.z equal spans of whole k-steps, as the host's candidates assume (it keeps every slice non-empty).
struct BlockSlice {
    int m0, n0, k_begin, k_end;
};
__device__ __forceinline__ BlockSlice block_slice(int K) {
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int k_span = (K + gridDim.z * BK - 1) / (gridDim.z * BK) * BK;
    const int k_begin = blockIdx.z * k_span;
    return {m0, n0, k_begin, min(K, k_begin + k_span)};
}

#if STAGES == 0
// ---- register-staged double buffering ---------------------------------------------------------------------

// Load this thread's share of a ROWS x BK operand tile (rows r0.., k from k0) into registers.
// K_MAJOR: element (r, k) at src[r * ld + k], each load takes 4 consecutive k of one row.
// Otherwise: element (r, k) at src[k * ld + r], each load takes 4 consecutive rows at one k.
// Out-of-range elements read as 0 so edge tiles need no special compute path.
template <bool K_MAJOR, bool VEC, int ROWS>
__device__ __forceinline__ void load_tile(float4 (&regs)[ROWS * BK / (4 * THREADS)], const float* src, int ld,
                                          int r0, int k0, int rows, int depth) {
#pragma unroll
    for (int i = 0; i < ROWS * BK / (4 * THREADS); ++i) {
        const int index = threadIdx.x + i * THREADS;
        const int r = r0 + (K_MAJOR ? index / (BK / 4) : (index % (ROWS / 4)) * 4);
        const int k = k0 + (K_MAJOR ? (index % (BK / 4)) * 4 : index / (ROWS / 4));
        if (K_MAJOR) {
            const float* p = src + (long)r * ld + k;
            if (VEC) {
                regs[i] = (r < rows && k < depth) ? *reinterpret_cast<const float4*>(p) : make_float4(0, 0, 0, 0);
            } else {
                const bool row_ok = r < rows;
                regs[i].x = (row_ok && k < depth) ? p[0] : 0.0f;
                regs[i].y = (row_ok && k + 1 < depth) ? p[1] : 0.0f;
                regs[i].z = (row_ok && k + 2 < depth) ? p[2] : 0.0f;
                regs[i].w = (row_ok && k + 3 < depth) ? p[3] : 0.0f;
            }
        } else {
            const float* p = src + (long)k * ld + r;
            if (VEC) {
                regs[i] = (r < rows && k < depth) ? *reinterpret_cast<const float4*>(p) : make_float4(0, 0, 0, 0);
            } else {
                const bool k_ok = k < depth;
                regs[i].x = (k_ok && r < rows) ? p[0] : 0.0f;
                regs[i].y = (k_ok && r + 1 < rows) ? p[1] : 0.0f;
                regs[i].z = (k_ok && r + 2 < rows) ? p[2] : 0.0f;
                regs[i].w = (k_ok && r + 3 < rows) ? p[3] : 0.0f;
            }
        }
    }
}

// Store the registers of load_tile into a shared-memory stage laid out [k][row].
template <bool K_MAJOR, int ROWS>
__device__ __forceinline__ void store_tile(float (*stage)[ROWS + PAD], const float4 (&regs)[ROWS * BK / (4 * THREADS)]) {
#pragma unroll
    for (int i = 0; i < ROWS * BK / (4 * THREADS); ++i) {
        const int index = threadIdx.x + i * THREADS;
        if (K_MAJOR) {
            const int r = index / (BK / 4), k = (index % (BK / 4)) * 4;
            stage[k][r] = regs[i].x;
            stage[k + 1][r] = regs[i].y;
            stage[k + 2][r] = regs[i].z;
            stage[k + 3][r] = regs[i].w;
        } else {
            const int r = (index % (ROWS / 4)) * 4, k = index / (ROWS / 4);
            *reinterpret_cast<float4*>(&stage[k][r]) = regs[i];
        }
    }
}

template <bool A_K_MAJOR, bool B_K_MAJOR, bool VEC>
__device__ __forceinline__ void opt_matmul(float* C, const float* A, const float* B, int M, int N, int K,
                                          int mode, const float* bias, float* aux, int activation, float lr,
                                          float weight_decay) {
    __shared__ __align__(16) float A_stage[2][BK][BM + PAD];
    __shared__ __align__(16) float B_stage[2][BK][BN + PAD];
    const int lda = A_K_MAJOR ? K : M, ldb = B_K_MAJOR ? K : N;
    const BlockSlice slice = block_slice(K);
    const int m0 = slice.m0, n0 = slice.n0, k_begin = slice.k_begin, k_end = slice.k_end;
    C += (long)blockIdx.z * M * N;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_m = (warp / WARPS_N) * WM, warp_n = (warp % WARPS_N) * WN;
    const int lane_m = (lane / 4) * 4, lane_n = (lane % 4) * 4;

    float acc[WM_ITER * 4][WN_ITER * 4];
#pragma unroll
    for (int i = 0; i < WM_ITER * 4; ++i)
#pragma unroll
        for (int j = 0; j < WN_ITER * 4; ++j) acc[i][j] = 0.0f;

    float4 a_next[LOADS_A], b_next[LOADS_B];
    load_tile<A_K_MAJOR, VEC, BM>(a_next, A, lda, m0, k_begin, M, k_end);
    load_tile<B_K_MAJOR, VEC, BN>(b_next, B, ldb, n0, k_begin, N, k_end);
    store_tile<A_K_MAJOR, BM>(A_stage[0], a_next);
    store_tile<B_K_MAJOR, BN>(B_stage[0], b_next);
    __syncthreads();

    const int k_steps = (k_end - k_begin + BK - 1) / BK;
    for (int step = 0; step < k_steps; ++step) {
        const int stage = step & 1;
        const bool more = step + 1 < k_steps;
        if (more) {  // in flight while this stage is multiplied
            load_tile<A_K_MAJOR, VEC, BM>(a_next, A, lda, m0, k_begin + (step + 1) * BK, M, k_end);
            load_tile<B_K_MAJOR, VEC, BN>(b_next, B, ldb, n0, k_begin + (step + 1) * BK, N, k_end);
        }
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[WM_ITER * 4], b[WN_ITER * 4];
#pragma unroll
            for (int i = 0; i < WM_ITER; ++i) {
                const float4 v = *reinterpret_cast<const float4*>(&A_stage[stage][k][warp_m + i * 32 + lane_m]);
                a[i * 4] = v.x; a[i * 4 + 1] = v.y; a[i * 4 + 2] = v.z; a[i * 4 + 3] = v.w;
            }
#pragma unroll
            for (int j = 0; j < WN_ITER; ++j) {
                const float4 v = *reinterpret_cast<const float4*>(&B_stage[stage][k][warp_n + j * 16 + lane_n]);
                b[j * 4] = v.x; b[j * 4 + 1] = v.y; b[j * 4 + 2] = v.z; b[j * 4 + 3] = v.w;
            }
#pragma unroll
            for (int i = 0; i < WM_ITER * 4; ++i)
#pragma unroll
                for (int j = 0; j < WN_ITER * 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) {  // the other stage was last read before the previous barrier
            store_tile<A_K_MAJOR, BM>(A_stage[stage ^ 1], a_next);
            store_tile<B_K_MAJOR, BN>(B_stage[stage ^ 1], b_next);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < WM_ITER * 4; ++i) {
        const int m = m0 + warp_m + (i / 4) * 32 + lane_m + i % 4;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < WN_ITER; ++j)
            store_quad<VEC>(C, N, m, n0 + warp_n + j * 16 + lane_n, acc[i][j * 4], acc[i][j * 4 + 1],
                            acc[i][j * 4 + 2], acc[i][j * 4 + 3], mode, bias, aux, activation, lr, weight_decay);
    }
}

#else
// ---- cp.async ring of STAGES shared-memory stages ----------------------------------------------------------

// Floats of one operand's stage: [BK][rows + PAD] with FRAGMENT_DB; otherwise [rows][BK + PAD] when k-major,
// [BK][rows + PAD] if not, the larger of the two, so one dynamic shared-memory size serves every layout
// (backends/cuda.py: opt_shared_bytes). SMEM_TRANSPOSE adds two [BK][rows + PAD] buffers per operand after the
// rings (a k-major ring stage, [rows][BK], fits in BK * (rows + PAD) floats).
__host__ __device__ constexpr int stage_floats(int rows) {
    return !FRAGMENT_DB && rows * (BK + PAD) > BK * (rows + PAD) ? rows * (BK + PAD) : BK * (rows + PAD);
}
#define SHARED_BYTES ((STAGES + 2 * SMEM_TRANSPOSE) * (stage_floats(BM) + stage_floats(BN)) * 4)

// 16 bytes straight into shared memory; an invalid source copies nothing and zero-fills (src-size 0), and points
// at the tile's first element so no address outside the operand is formed.
__device__ __forceinline__ void copy16(float* dst, const float* src, bool valid) {
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void copies_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int PENDING>
__device__ __forceinline__ void copies_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory"); }

// Every thread checks that the launch has the dynamic shared memory the ring needs (thread 0 traps otherwise):
// the host sizes it with the same formula, and a mismatch must not go unseen.
__device__ __forceinline__ void check_shared_size() {
    if (threadIdx.x == 0) {
        unsigned launched;
        asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(launched));
        if (launched < SHARED_BYTES) __trap();
    }
}

#if !FRAGMENT_DB

// Start copying this thread's share of a ROWS x BK operand tile into a stage. `tile` points at the tile's first
// element (row r0, k0), rows_left = rows - r0, depth_left = depth - k0. Offsets within the tile are 32-bit
// (the host keeps every dimension below 2^23), which saves the registers of a 64-bit pointer per copy.
template <bool K_MAJOR, int ROWS>
__device__ __forceinline__ void fetch_tile(float* stage, const float* tile, int ld, int rows_left, int depth_left) {
#pragma unroll
    for (int i = 0; i < ROWS * BK / (4 * THREADS); ++i) {
        const int index = threadIdx.x + i * THREADS;
        // consecutive threads take consecutive addresses in global memory
        const int r = K_MAJOR ? index / (BK / 4) : (index % (ROWS / 4)) * 4;
        const int k = K_MAJOR ? (index % (BK / 4)) * 4 : index / (ROWS / 4);
        const bool valid = r < rows_left && k < depth_left;  // float4 shapes: all four in or all four out
        copy16(stage + (K_MAJOR ? r * (BK + PAD) + k : k * (ROWS + PAD) + r),
               tile + (valid ? (K_MAJOR ? r * ld + k : k * ld + r) : 0), valid);
    }
}

// Operand values of k-steps kq..kq+3 for this lane, v[kk][t] for t in t0..t0+COUNT-1 of its T rows of A (or
// columns of B). A k-major stage gives one float4 per row (rows 8 apart when INTERLEAVED, else in groups of 4,
// GROUP_STRIDE apart); otherwise each float4 holds 4 consecutive rows at one k (COUNT, t0 multiples of 4).
template <bool K_MAJOR, bool INTERLEAVED, int ROWS, int T, int GROUP_STRIDE, int COUNT>
__device__ __forceinline__ void read_fragment(float (&v)[4][T], const float* stage, int base, int kq, int t0) {
    if (K_MAJOR) {
#pragma unroll
        for (int t = t0; t < t0 + COUNT; ++t) {
            const int row = base + (INTERLEAVED ? t * 8 : (t / 4) * GROUP_STRIDE + t % 4);
            const float4 q = *reinterpret_cast<const float4*>(stage + row * (BK + PAD) + kq);
            v[0][t] = q.x; v[1][t] = q.y; v[2][t] = q.z; v[3][t] = q.w;
        }
    } else {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int t = t0; t < t0 + COUNT; t += 4) {
                const float4 q = *reinterpret_cast<const float4*>(stage + (kq + kk) * (ROWS + PAD) + base +
                                                                  (t / 4) * GROUP_STRIDE);
                v[kk][t] = q.x; v[kk][t + 1] = q.y; v[kk][t + 2] = q.z; v[kk][t + 3] = q.w;
            }
    }
}

template <bool A_K_MAJOR, bool B_K_MAJOR, bool VEC>
__device__ __forceinline__ void opt_matmul(float* C, const float* A, const float* B, int M, int N, int K,
                                          int mode, const float* bias, float* aux, int activation, float lr,
                                          float weight_decay) {
    static_assert(VEC, "16-byte copies: float4 shapes only");
    extern __shared__ __align__(16) float shared[];
    check_shared_size();
    float* const A_stages = shared;
    float* const B_stages = shared + STAGES * stage_floats(BM);
    const int lda = A_K_MAJOR ? K : M, ldb = B_K_MAJOR ? K : N;
    const BlockSlice slice = block_slice(K);
    const int m0 = slice.m0, n0 = slice.n0, k_begin = slice.k_begin, k_end = slice.k_end;
    C += (long)blockIdx.z * M * N;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int warp_m = (warp / WARPS_N) * WM, warp_n = (warp % WARPS_N) * WN;
    // Rows of a k-major A 8 apart (lane / 4 + 8 t): a warp's eight distinct rows per read are consecutive, so
    // their float4s cover all 32 banks once. Otherwise (and always for columns, which the float4 epilogue
    // needs in fours) groups of four consecutive rows, 32 (rows) or 16 (columns) apart.
    const int a_base = warp_m + (A_K_MAJOR ? lane / 4 : (lane / 4) * 4);
    const int b_base = warp_n + (lane % 4) * 4;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    // Each operand's tile at k_begin, and how far one k-step moves it.
    const float* const A_tile = A + (A_K_MAJOR ? (long)m0 * lda + k_begin : (long)k_begin * lda + m0);
    const float* const B_tile = B + (B_K_MAJOR ? (long)n0 * ldb + k_begin : (long)k_begin * ldb + n0);
    const long a_step = A_K_MAJOR ? BK : (long)BK * lda, b_step = B_K_MAJOR ? BK : (long)BK * ldb;

    const int k_steps = (k_end - k_begin + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < k_steps) {
            fetch_tile<A_K_MAJOR, BM>(A_stages + s * stage_floats(BM), A_tile + s * a_step, lda, M - m0,
                                           k_end - k_begin - s * BK);
            fetch_tile<B_K_MAJOR, BN>(B_stages + s * stage_floats(BN), B_tile + s * b_step, ldb, N - n0,
                                           k_end - k_begin - s * BK);
        }
        copies_commit();  // empty groups too: the wait below counts groups
    }
    int read = 0, write = STAGES - 1;  // stage indices of step and of step + STAGES - 1
    for (int step = 0; step < k_steps; ++step) {
        copies_wait<STAGES - 2>();  // this thread's copies of `step` have landed ...
        __syncthreads();            // ... and everyone's; and every warp is done with the stage refilled next
        const int ahead = step + STAGES - 1;
        if (ahead < k_steps) {
            fetch_tile<A_K_MAJOR, BM>(A_stages + write * stage_floats(BM), A_tile + ahead * a_step, lda, M - m0,
                                           k_end - k_begin - ahead * BK);
            fetch_tile<B_K_MAJOR, BN>(B_stages + write * stage_floats(BN), B_tile + ahead * b_step, ldb, N - n0,
                                           k_end - k_begin - ahead * BK);
        }
        copies_commit();
        const float* As = A_stages + read * stage_floats(BM);
        const float* Bs = B_stages + read * stage_floats(BN);
#pragma unroll
        for (int kq = 0; kq < BK; kq += 4) {
            // The smaller operand's values in full, the other's four rows (or columns) at a time: what is
            // live stays within the register budget next to the TM x TN accumulators.
            float a[4][TM], b[4][TN];
            if (TM <= TN) {
                read_fragment<A_K_MAJOR, true, BM, TM, 32, TM>(a, As, a_base, kq, 0);
#pragma unroll
                for (int j0 = 0; j0 < TN; j0 += 4) {
                    read_fragment<B_K_MAJOR, false, BN, TN, 16, 4>(b, Bs, b_base, kq, j0);
#pragma unroll
                    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                        for (int i = 0; i < TM; ++i)
#pragma unroll
                            for (int j = j0; j < j0 + 4; ++j) acc[i][j] = fmaf(a[kk][i], b[kk][j], acc[i][j]);
                }
            } else {
                read_fragment<B_K_MAJOR, false, BN, TN, 16, TN>(b, Bs, b_base, kq, 0);
#pragma unroll
                for (int i0 = 0; i0 < TM; i0 += 4) {
                    read_fragment<A_K_MAJOR, true, BM, TM, 32, 4>(a, As, a_base, kq, i0);
#pragma unroll
                    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
                        for (int i = i0; i < i0 + 4; ++i)
#pragma unroll
                            for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[kk][i], b[kk][j], acc[i][j]);
                }
            }
        }
        read = read + 1 == STAGES ? 0 : read + 1;
        write = write + 1 == STAGES ? 0 : write + 1;
    }
    copies_wait<0>();  // only empty groups remain; nothing may be in flight when the block exits

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + a_base + (A_K_MAJOR ? i * 8 : (i / 4) * 32 + i % 4);
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < TN / 4; ++j)
            store_quad<VEC>(C, N, m, n0 + b_base + j * 16, acc[i][j * 4], acc[i][j * 4 + 1], acc[i][j * 4 + 2],
                            acc[i][j * 4 + 3], mode, bias, aux, activation, lr, weight_decay);
    }
}
#else
// ---- FRAGMENT_DB: every operand [k][row], fragments double-buffered in registers ---------------------------

__device__ __forceinline__ void copy4(float* dst, const float* src, bool valid) {
    const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(to), "l"(src), "r"(valid ? 4 : 0)
                 : "memory");
}

// Start copying this thread's share of a ROWS x BK operand tile into a [BK][ROWS + PAD] stage; `tile` points at
// the tile's first element, rows_left and depth_left as in the ring above (32-bit offsets likewise).
// K_MAJOR: one float per copy; each copy instruction of a warp takes 8 consecutive k of 4 consecutive rows
// (lane l: row l / 8, k l % 8), so it reads 4 sectors of global memory, one per row, as cuBLAS's k-major SIMT
// kernels do (results/gpu-dev/21-opt-ncu: 4 L1 wavefronts per copy against 16 when a warp's copy took two k
// of 16 rows); stored at k * (ROWS + 4) + row, with ROWS a multiple of 32, bank 4 k + row: 32 distinct.
// Otherwise: 16-byte copies of four consecutive rows at one k, as in the ring above.
// With SMEM_TRANSPOSE, K_MAJOR: 16-byte copies of four consecutive k of one row into [ROWS][BK] (unpadded),
// consecutive threads on consecutive addresses; transpose_stage turns the stage into fragment order.
template <bool K_MAJOR, int ROWS>
__device__ __forceinline__ void fetch_transposed(float* stage, const float* tile, int ld, int rows_left,
                                                 int depth_left) {
    static_assert(ROWS % 32 == 0, "rows (ROWS + 4) floats apart: 4 banks apart");
    if (K_MAJOR && SMEM_TRANSPOSE) {
#pragma unroll
        for (int i = 0; i < ROWS * BK / (4 * THREADS); ++i) {
            const int index = threadIdx.x + i * THREADS;
            const int r = index / (BK / 4), k = (index % (BK / 4)) * 4;
            const bool valid = r < rows_left && k < depth_left;  // float4 shapes: all four in or all four out
            copy16(stage + r * BK + k, tile + (valid ? r * ld + k : 0), valid);
        }
    } else if (K_MAJOR) {
        // A block's copy instruction covers PASS_ROWS rows, 8 consecutive k each; the next ones move down the
        // rows, then 8 k on.
        constexpr int PASS_ROWS = THREADS / 8;
        static_assert(ROWS % PASS_ROWS == 0, "whole passes of rows");
        const int r = threadIdx.x / 8, k = threadIdx.x % 8;
#pragma unroll
        for (int i = 0; i < ROWS * BK / THREADS; ++i) {
            const int row = r + (i % (ROWS / PASS_ROWS)) * PASS_ROWS, at = k + (i / (ROWS / PASS_ROWS)) * 8;
            const bool valid = row < rows_left && at < depth_left;
            copy4(stage + at * (ROWS + PAD) + row, tile + (valid ? row * ld + at : 0), valid);
        }
    } else {
        // k advances by K_APART between a thread's copies: one pointer, moved K_APART rows of the operand
        constexpr int K_APART = THREADS / (ROWS / 4);
        const int r = (threadIdx.x % (ROWS / 4)) * 4, k = threadIdx.x / (ROWS / 4);
        const float* from = tile + k * ld + r;
#pragma unroll
        for (int i = 0; i < ROWS * BK / (4 * THREADS); ++i, from += K_APART * ld) {
            const bool valid = r < rows_left && k + i * K_APART < depth_left;  // float4 shapes: 4 in or 4 out
            copy16(stage + (k + i * K_APART) * (ROWS + PAD) + r, valid ? from : tile, valid);
        }
    }
}

// Where row r of k sits in a [BK][ROWS + PAD] buffer written by transpose_stage: r ^ (k & 8). Rows move in
// groups of four (whole float4s) and stay within their group of 16, so the reads below keep their banks.
__device__ __forceinline__ int swizzled(int r, int k) { return r ^ (k & 8); }

// One k-major [ROWS][BK] ring stage (every copy landed) into a [BK][ROWS + PAD] buffer, rows swizzled. A warp
// reads 512 contiguous bytes (8 rows of 16 k or 16 rows of 8 k) and writes, per k, rows 8 or 16 at a time:
// bank (4 k + (r ^ (k & 8))) % 32, with the warp's rows r 8 (or 16) consecutive from a multiple of 8 (16) and
// its four (two) k / 4: all 32 distinct.
template <int ROWS>
__device__ __forceinline__ void transpose_stage(float* to, const float* from) {
#pragma unroll
    for (int i = 0; i < ROWS * BK / (4 * THREADS); ++i) {
        const int index = threadIdx.x + i * THREADS;
        const int r = index / (BK / 4), k = (index % (BK / 4)) * 4;
        const float4 q = *reinterpret_cast<const float4*>(from + r * BK + k);
        float* const at = to + k * (ROWS + PAD) + swizzled(r, k);  // k .. k + 3 share k & 8
        at[0] = q.x;
        at[ROWS + PAD] = q.y;
        at[2 * (ROWS + PAD)] = q.z;
        at[3 * (ROWS + PAD)] = q.w;
    }
}

// This lane's operand values at one k: TM rows of A in groups of 4, 32 apart; TN columns of B in groups of 4,
// 16 apart. A warp's float4s of one group cover 32 (A) or 16 (B) consecutive floats: no bank conflicts.
// A_SWZ / B_SWZ: the operand's buffer was written by transpose_stage.
template <bool A_SWZ, bool B_SWZ>
__device__ __forceinline__ void read_fragments(float (&a)[TM], float (&b)[TN], const float* As, const float* Bs,
                                               int a_base, int b_base, int k) {
#pragma unroll
    for (int i = 0; i < TM; i += 4) {
        const int row = (A_SWZ ? swizzled(a_base, k) : a_base) + (i / 4) * 32;
        const float4 q = *reinterpret_cast<const float4*>(As + k * (BM + PAD) + row);
        a[i] = q.x; a[i + 1] = q.y; a[i + 2] = q.z; a[i + 3] = q.w;
    }
#pragma unroll
    for (int j = 0; j < TN; j += 4) {
        const int col = (B_SWZ ? swizzled(b_base, k) : b_base) + (j / 4) * 16;
        const float4 q = *reinterpret_cast<const float4*>(Bs + k * (BN + PAD) + col);
        b[j] = q.x; b[j + 1] = q.y; b[j + 2] = q.z; b[j + 3] = q.w;
    }
}

template <bool A_K_MAJOR, bool B_K_MAJOR, bool VEC>
__device__ __forceinline__ void opt_matmul(float* C, const float* A, const float* B, int M, int N, int K,
                                          int mode, const float* bias, float* aux, int activation, float lr,
                                          float weight_decay) {
    static_assert(VEC, "16-byte copies: float4 shapes only");
    extern __shared__ __align__(16) float shared[];
    check_shared_size();
    float* const A_stages = shared;
    float* const B_stages = shared + STAGES * stage_floats(BM);
    // SMEM_TRANSPOSE: each k-major operand's fragments come from two [BK][rows + PAD] buffers (flip: the one
    // read now), filled from its ring one step ahead; an m/n-major operand's straight from its ring.
    constexpr bool A_T = SMEM_TRANSPOSE && A_K_MAJOR, B_T = SMEM_TRANSPOSE && B_K_MAJOR;
    float* const A_frag = B_stages + STAGES * stage_floats(BN);
    float* const B_frag = A_frag + 2 * stage_floats(BM);
    const int lda = A_K_MAJOR ? K : M, ldb = B_K_MAJOR ? K : N;
    const BlockSlice slice = block_slice(K);
    const int m0 = slice.m0, n0 = slice.n0, k_begin = slice.k_begin, k_end = slice.k_end;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // The lane's first row and column within the tile: lanes form an 8 x 4 grid of 4 x 4 sub-tiles.
    const int a_base = (warp / WARPS_N) * WM + (lane / 4) * 4;
    const int b_base = (warp % WARPS_N) * WN + (lane % 4) * 4;

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    // Each operand's tile at k_begin, and how far one k-step moves it (below 2^27 floats: dimensions < 2^23).
    const float* a_next = A + (A_K_MAJOR ? (long)m0 * lda + k_begin : (long)k_begin * lda + m0);
    const float* b_next = B + (B_K_MAJOR ? (long)n0 * ldb + k_begin : (long)k_begin * ldb + n0);
    const int a_step = A_K_MAJOR ? BK : BK * lda, b_step = B_K_MAJOR ? BK : BK * ldb;
    const int a_rows = M - m0, b_rows = N - n0;
    int depth_left = k_end - k_begin;  // of the tiles a_next and b_next point at

    int steps_left = (depth_left + BK - 1) / BK;  // counting the step being multiplied
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (depth_left > 0) {
            fetch_transposed<A_K_MAJOR, BM>(A_stages + s * stage_floats(BM), a_next, lda, a_rows, depth_left);
            fetch_transposed<B_K_MAJOR, BN>(B_stages + s * stage_floats(BN), b_next, ldb, b_rows, depth_left);
        }
        copies_commit();  // empty groups too: the waits count groups
        a_next += a_step;
        b_next += b_step;
        depth_left -= BK;
    }
    // Landed before the barrier that starts a step: its own copies, and with SMEM_TRANSPOSE the next step's
    // too (transposed during this step).
    constexpr int PENDING = STAGES - 2 - SMEM_TRANSPOSE;
    copies_wait<PENDING>();  // step 0 (and 1) has landed, for everyone after the barrier
    __syncthreads();
    if (A_T) transpose_stage<BM>(A_frag, A_stages);
    if (B_T) transpose_stage<BN>(B_frag, B_stages);
    if (A_T || B_T) __syncthreads();

    int read = 0, flip = 0;  // the ring stage and the transposed buffer multiplied now
    // The stage a step's fragments come from.
    auto a_source = [&]() {
        return A_T ? A_frag + flip * stage_floats(BM) : A_stages + read * stage_floats(BM);
    };
    auto b_source = [&]() {
        return B_T ? B_frag + flip * stage_floats(BN) : B_stages + read * stage_floats(BN);
    };
    float a[2][TM], b[2][TN];  // k's values multiplied while k + 1's are read
    read_fragments<A_T, B_T>(a[0], b[0], a_source(), b_source(), a_base, b_base, 0);
    for (; steps_left > 0; --steps_left) {
        // STAGES - 1 steps ahead, into the stage read in the previous step (multiplied, or transposed two steps
        // ago), whose last values every warp took before the barrier that ended it.
        const int write = read == 0 ? STAGES - 1 : read - 1;
        if (depth_left > 0) {
            fetch_transposed<A_K_MAJOR, BM>(A_stages + write * stage_floats(BM), a_next, lda, a_rows, depth_left);
            fetch_transposed<B_K_MAJOR, BN>(B_stages + write * stage_floats(BN), b_next, ldb, b_rows, depth_left);
        }
        copies_commit();
        a_next += a_step;
        b_next += b_step;
        depth_left -= BK;
        if ((A_T || B_T) && steps_left > 1) {
            // The next step's ring stage (landed before the last barrier) into the other buffer, last read in
            // the previous step; the barrier ending this step publishes it.
            const int next = read + 1 == STAGES ? 0 : read + 1;
            if (A_T)
                transpose_stage<BM>(A_frag + (flip ^ 1) * stage_floats(BM), A_stages + next * stage_floats(BM));
            if (B_T)
                transpose_stage<BN>(B_frag + (flip ^ 1) * stage_floats(BN), B_stages + next * stage_floats(BN));
        }
        const float* const As = a_source();
        const float* const Bs = b_source();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            const int now = k & 1;
            if (k + 1 < BK) {
                read_fragments<A_T, B_T>(a[now ^ 1], b[now ^ 1], As, Bs, a_base, b_base, k + 1);
            } else if (steps_left > 1) {  // uniform over the block
                copies_wait<PENDING>();  // this thread's copies of step + 1 (and + 2) have landed ...
                __syncthreads();         // ... and everyone's; no warp reads this step's stage any more
                read = read + 1 == STAGES ? 0 : read + 1;
                flip ^= 1;
                read_fragments<A_T, B_T>(a[now ^ 1], b[now ^ 1], a_source(), b_source(), a_base, b_base, 0);
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[now][i], b[now][j], acc[i][j]);
        }
    }
    copies_wait<0>();  // only empty groups remain; nothing may be in flight when the block exits

    C += (long)blockIdx.z * M * N;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + a_base + (i / 4) * 32 + i % 4;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < TN / 4; ++j)
            store_quad<VEC>(C, N, m, n0 + b_base + j * 16, acc[i][j * 4], acc[i][j * 4 + 1], acc[i][j * 4 + 2],
                            acc[i][j * 4 + 3], mode, bias, aux, activation, lr, weight_decay);
    }
}
#endif  // FRAGMENT_DB
#endif

#define OPT_KERNEL(name, a_k_major, b_k_major, vec)                                                          \
    __global__ void __launch_bounds__(THREADS, MIN_BLOCKS)                                                   \
        name(float* C, const float* A, const float* B, int M, int N, int K, int mode, const float* bias,       \
             float* aux, int activation, float lr, float weight_decay) {                                      \
        opt_matmul<a_k_major, b_k_major, vec>(C, A, B, M, N, K, mode, bias, aux, activation, lr, weight_decay); \
    }

extern "C" {
// C = epilogue(sum over s of partial[s]), slices added in order.
__global__ void opt_splitk_sum(float* C, const float* partial, int splits, int M, int N, int mode,
                               const float* bias, float* aux, int activation, float lr, float weight_decay) {
    const long total = (long)M * N;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        float sum = 0.0f;
        for (int s = 0; s < splits; ++s) sum += partial[s * total + i];
        C[i] = epilogue(mode, sum, bias + i % N, aux + i, activation, lr, weight_decay);
    }
}

OPT_KERNEL(opt_nt, true, true, true)
OPT_KERNEL(opt_nn, true, false, true)
OPT_KERNEL(opt_tn, false, false, true)
#if !FLOAT4_ONLY
OPT_KERNEL(opt_nt_scalar, true, true, false)
OPT_KERNEL(opt_nn_scalar, true, false, false)
OPT_KERNEL(opt_tn_scalar, false, false, false)
#endif
}
