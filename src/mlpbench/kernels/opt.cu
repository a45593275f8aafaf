// Rung 3, cuda-opt: warp-tiled SGEMM with 2D register blocking, 128-bit loads, double buffering and fused
// epilogues (siboehm's SGEMM_CUDA kernels 5-10 in one file).
//
// A block computes a BM x BN tile of C, stepping through k by BK, with one warp per WM x WN sub-tile
// ((BM / WM) x (BN / WN) warps); its 32 lanes form an 8 x 4 grid and each lane computes (WM/32 x 4) x (WN/16 x 4)
// outputs held in registers, reading its operands from shared memory four at a time. While the block
// computes on one shared-memory stage, the next k-slice is already on its way from global memory into
// registers (two stages, one barrier per k-step).
//
// Operands as in naive.cu (nt: A (M,K), B (N,K); nn: A (M,K), B (K,N); tn: A (K,M), B (K,N)). Each operand is
// either k-contiguous ("k-major": loaded four k at a time and transposed into shared memory) or
// m/n-contiguous (loaded and stored four rows at a time). VEC = true uses float4 global loads and stores; the
// caller picks it only when every row length involved is a multiple of 4 and every pointer is 16-byte
// aligned, and falls back to the scalar kernels otherwise (same tiling, one float per load).
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
// Constants (-D): BM, BN, BK, WM, WN, MIN_BLOCKS (blocks per SM the register budget must allow).
// Templates, so compiled with no_extern_c; the extern "C" kernels are at the end.
#include "common.cuh"

#define THREADS (32 * (BM / WM) * (BN / WN))
#define PAD 4  // keeps rows 16-byte aligned and spreads the transposed stores over more banks
#define WARPS_N (BN / WN)
#define WM_ITER (WM / 32)
#define WN_ITER (WN / 16)
#define LOADS_A (BM * BK / (4 * THREADS))
#define LOADS_B (BN * BK / (4 * THREADS))

#define EPI_STORE 0
#define EPI_BIAS_ACT 1
#define EPI_ACT_GRAD 2
#define EPI_SGD 3

static_assert(BM % WM == 0 && BN % WN == 0, "warps must tile the block");
static_assert(WM % 32 == 0 && WN % 16 == 0, "a warp covers 32 x 16 outputs per iteration");
static_assert(LOADS_A >= 1 && LOADS_B >= 1 && BM * BK % (4 * THREADS) == 0 && BN * BK % (4 * THREADS) == 0,
              "every thread loads whole float4s of both operand tiles");

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

__device__ __forceinline__ float epilogue(int mode, float acc, const float* bias, float* aux, int activation,
                                          float lr, float weight_decay) {
    switch (mode) {
        case EPI_BIAS_ACT: return activate(activation, acc + *bias);
        case EPI_ACT_GRAD: return acc * activation_derivative(activation, *aux);
        case EPI_SGD: *aux -= lr * (acc + weight_decay * *aux); return acc;
        default: return acc;
    }
}

template <bool A_K_MAJOR, bool B_K_MAJOR, bool VEC>
__device__ __forceinline__ void opt_matmul(float* C, const float* A, const float* B, int M, int N, int K,
                                          int mode, const float* bias, float* aux, int activation, float lr,
                                          float weight_decay) {
    __shared__ __align__(16) float A_stage[2][BK][BM + PAD];
    __shared__ __align__(16) float B_stage[2][BK][BN + PAD];
    const int lda = A_K_MAJOR ? K : M, ldb = B_K_MAJOR ? K : N;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int k_span = (K + gridDim.z * BK - 1) / (gridDim.z * BK) * BK;
    const int k_begin = blockIdx.z * k_span, k_end = min(K, k_begin + k_span);  // the host keeps it non-empty
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
        for (int j = 0; j < WN_ITER; ++j) {
            const int n = n0 + warp_n + j * 16 + lane_n;
            const long at = (long)m * N + n;
            if (VEC) {
                if (n >= N) continue;  // N % 4 == 0: the four columns are all in or all out
                float4 out = make_float4(acc[i][j * 4], acc[i][j * 4 + 1], acc[i][j * 4 + 2], acc[i][j * 4 + 3]);
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
#pragma unroll
                for (int jj = 0; jj < 4; ++jj)
                    if (n + jj < N)
                        C[at + jj] = epilogue(mode, acc[i][j * 4 + jj], bias + n + jj, aux + at + jj, activation,
                                              lr, weight_decay);
            }
        }
    }
}

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
OPT_KERNEL(opt_nt_scalar, true, true, false)
OPT_KERNEL(opt_nn_scalar, true, false, false)
OPT_KERNEL(opt_tn_scalar, false, false, false)
}
