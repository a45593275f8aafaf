// The layer table both cuda-fused kernels (fused.cu, fused_cluster.cu) read: one entry per layer.
// MAX_LAYERS (-D, mlpbench.backends.cuda.FUSED_MAX_LAYERS) entries at most: the table is copied to shared memory.
#pragma once

// Mirrored by numpy dtypes in mlpbench/backends/cuda_fused.py: keep the field order and sizes in step.
struct Layer {
    float* W[2];  // weights (n_out, n_in), current copy W[parity]
    float* b[2];
    float* dW;
    float* db;
    float* A;   // this layer's output (batch, n_out); the probabilities P for the output layer
    float* dZ;  // gradient of the loss with respect to this layer's pre-activation (batch, n_out)
    int n_in;
    int n_out;
};

static_assert(sizeof(Layer) == 72, "struct Layer changed: update _LAYER_DTYPE in backends/cuda_fused.py");
