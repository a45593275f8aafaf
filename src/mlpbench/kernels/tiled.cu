// Rung 2, cuda-tiled: shared-memory tiling. A block of TILE x TILE threads computes a TILE x TILE tile of C,
// one output per thread; each operand tile is loaded once into shared memory with the warp running along the
// operand's contiguous index (coalesced), then every thread reads TILE values of each from shared memory.
// Constants (-D): TILE. Layouts as in naive.cu; templates, so compiled with no_extern_c and the extern "C"
// wrappers at the end.

// Element (m, k) of op(A): A[m, k] when the operand is stored k-contiguous, else A[k, m].
template <bool A_K_CONTIGUOUS, bool B_K_CONTIGUOUS>
__device__ __forceinline__ void tiled_matmul(float* C, const float* A, const float* B, int M, int N, int K) {
    // One column of padding: the transposed stores below hit 32 different banks.
    __shared__ float A_tile[TILE][TILE + 1];  // [m][k]
    __shared__ float B_tile[TILE][TILE + 1];  // [k][n]
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int m0 = blockIdx.y * TILE, n0 = blockIdx.x * TILE;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        if (A_K_CONTIGUOUS) {  // A is (M, K): x runs along k
            const int m = m0 + ty, k = k0 + tx;
            A_tile[ty][tx] = (m < M && k < K) ? A[(long)m * K + k] : 0.0f;
        } else {  // A is (K, M): x runs along m
            const int m = m0 + tx, k = k0 + ty;
            A_tile[tx][ty] = (m < M && k < K) ? A[(long)k * M + m] : 0.0f;
        }
        if (B_K_CONTIGUOUS) {  // B is (N, K): x runs along k
            const int n = n0 + ty, k = k0 + tx;
            B_tile[tx][ty] = (n < N && k < K) ? B[(long)n * K + k] : 0.0f;
        } else {  // B is (K, N): x runs along n
            const int n = n0 + tx, k = k0 + ty;
            B_tile[ty][tx] = (n < N && k < K) ? B[(long)k * N + n] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < TILE; ++kk) acc += A_tile[ty][kk] * B_tile[kk][tx];
        __syncthreads();
    }
    const int m = m0 + ty, n = n0 + tx;
    if (m < M && n < N) C[(long)m * N + n] = acc;
}

extern "C" {
__global__ void __launch_bounds__(TILE * TILE) tiled_nt(float* C, const float* A, const float* B, int M, int N,
                                                        int K) {
    tiled_matmul<true, true>(C, A, B, M, N, K);
}
__global__ void __launch_bounds__(TILE * TILE) tiled_nn(float* C, const float* A, const float* B, int M, int N,
                                                        int K) {
    tiled_matmul<true, false>(C, A, B, M, N, K);
}
__global__ void __launch_bounds__(TILE * TILE) tiled_tn(float* C, const float* A, const float* B, int M, int N,
                                                        int K) {
    tiled_matmul<false, false>(C, A, B, M, N, K);
}
}
