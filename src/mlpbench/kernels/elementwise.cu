// Element-wise and reduction kernels shared by the layer-by-layer rungs (cuda-naive, cuda-tiled, cuda-opt):
// everything in a training step that is not a matrix product, and the transpose that cuda-opt's "transposed"
// choices run before a product. Compiled with extern "C" names.
// Constants (-D): ROWS_PER_BLOCK, the rows one block of the bias-gradient kernel reduces at once.
#include "common.cuh"

// Z[r, j] = f(Z[r, j] + bias[j]), in place; f is the hidden layers' activation.
__global__ void bias_activation(float* Z, const float* bias, int rows, int cols, int activation) {
    const long total = (long)rows * cols;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x)
        Z[i] = activate(activation, Z[i] + bias[i % cols]);
}

// The output layer, one warp per sample: P = softmax(Z + bias) or sigmoid(Z + bias) in place over Z, and
// each sample's loss (when T != nullptr). bias may be nullptr when the product already added it.
__global__ void output_head(float* Z, const float* bias, const float* T, float* loss_rows,
                            int rows, int cols, int loss_kind) {
    const int warps_per_block = blockDim.x / 32;
    for (int r = blockIdx.x * warps_per_block + threadIdx.x / 32; r < rows; r += gridDim.x * warps_per_block)
        output_row(Z + (long)r * cols, bias, T ? T + (long)r * cols : nullptr, nullptr, loss_rows + r,
                   cols, loss_kind, (float)rows);
}

// dZ = (P - T) / batch: the gradient of the mean loss for softmax + cross-entropy and sigmoid + BCE alike.
__global__ void output_delta(const float* P, const float* T, float* dZ, int rows, int cols) {
    const long total = (long)rows * cols;
    const float batch = (float)rows;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x)
        dZ[i] = (P[i] - T[i]) / batch;
}

// dA[i] *= f'(A[i]) in place: turns the input-gradient product into the previous layer's dZ.
__global__ void activation_backward(float* dA, const float* A, int n, int activation) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        dA[i] *= activation_derivative(activation, A[i]);
}

// db[j] = sum over rows of dZ[r, j], in a fixed order (no atomics): block (32, ROWS_PER_BLOCK) owns 32
// columns; thread (x, y) sums rows y, y + ROWS_PER_BLOCK, ... of column x, then row 0 of the block adds the
// ROWS_PER_BLOCK partial sums in order. With bias != nullptr the SGD step b -= lr * db is fused in.
__global__ void bias_gradient(const float* dZ, float* db, float* bias, int rows, int cols, float lr) {
    __shared__ float partial[ROWS_PER_BLOCK][33];
    const int col = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.0f;
    if (col < cols)
        for (int r = threadIdx.y; r < rows; r += ROWS_PER_BLOCK) sum += dZ[(long)r * cols + col];
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float total = 0.0f;
        for (int y = 0; y < ROWS_PER_BLOCK; ++y) total += partial[y][threadIdx.x];
        db[col] = total;
        if (bias) bias[col] -= lr * total;
    }
}

// SGD with L2 decay: W -= lr * (dW + weight_decay * W).
__global__ void sgd_update(float* W, const float* dW, int n, float lr, float weight_decay) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        W[i] -= lr * (dW[i] + weight_decay * W[i]);
}

// out (cols x rows) = in (rows x cols)^T, row-major both: cuda-opt's products whose k-contiguous operands are
// made m- or n-contiguous first, so that the tn kernel (no k-major operand) runs them. Blocks of 32 x 8
// threads move 32 x 32 tiles through shared memory (a padded row: the column reads hit 32 distinct banks), so
// both the loads and the stores of a warp are 128 contiguous bytes. Grid y strides over the row tiles (its
// limit is 65535 blocks).
__global__ void transpose(float* out, const float* in, int rows, int cols) {
    __shared__ float tile[32][33];
    const int c0 = blockIdx.x * 32;
    for (int r0 = blockIdx.y * 32; r0 < rows; r0 += gridDim.y * 32) {
        for (int i = threadIdx.y; i < 32; i += blockDim.y) {
            const int r = r0 + i, c = c0 + threadIdx.x;
            if (r < rows && c < cols) tile[i][threadIdx.x] = in[(long)r * cols + c];
        }
        __syncthreads();
        for (int i = threadIdx.y; i < 32; i += blockDim.y) {
            const int c = c0 + i, r = r0 + threadIdx.x;
            if (c < cols && r < rows) out[(long)c * rows + r] = tile[threadIdx.x][i];
        }
        __syncthreads();  // the tile is read before the next row tile overwrites it
    }
}
