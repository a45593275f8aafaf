// Rung 1, cuda-naive: one thread per output element, operands read straight from global memory.
//
// The three products of a training step, all row-major:
//   naive_nt  C[m, n] = sum_k A[m, k] * B[n, k]   forward           Z  = A_prev W^T
//   naive_nn  C[m, n] = sum_k A[m, k] * B[k, n]   input gradient    dA = dZ W
//   naive_tn  C[m, n] = sum_k A[k, m] * B[k, n]   weight gradient   dW = dZ^T A_prev
// Threads along x take consecutive columns n, so the writes of C (and the B reads of nn/tn) coalesce;
// nothing else is done to help memory. Compiled with extern "C" names.

__global__ void naive_nt(float* C, const float* A, const float* B, int M, int N, int K) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[(long)m * K + k] * B[(long)n * K + k];
    C[(long)m * N + n] = acc;
}

__global__ void naive_nn(float* C, const float* A, const float* B, int M, int N, int K) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[(long)m * K + k] * B[(long)k * N + n];
    C[(long)m * N + n] = acc;
}

__global__ void naive_tn(float* C, const float* A, const float* B, int M, int N, int K) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int m = blockIdx.y * blockDim.y + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc += A[(long)k * M + m] * B[(long)k * N + n];
    C[(long)m * N + n] = acc;
}
