// Helpers shared by every kernel source: activations, losses, warp reductions.
//
// Codes below equal the C library's (native/include/mlp.h) and mlpbench/backends/cuda.py's (ACTIVATION_CODES,
// LOSS_CODES); tests/test_gpu_planning.py checks all three agree. A hidden layer's
// activation is a run-time argument, so one compiled module serves every network.
#pragma once

#define ACT_IDENTITY (-1)
#define ACT_SIGMOID 0
#define ACT_TANH 1
#define ACT_RELU 2

#define LOSS_SOFTMAX_CE 0
#define LOSS_SIGMOID_BCE 1

#define FULL_WARP_MASK 0xffffffffu
#define LOWEST_FLOAT (-3.402823466e38f)

// exp of a non-positive argument only: no overflow, no inf/inf (the original study's NaN).
__device__ __forceinline__ float stable_sigmoid(float z) {
    const float e = expf(-fabsf(z));
    return z >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

__device__ __forceinline__ float activate(int activation, float z) {
    switch (activation) {
        case ACT_SIGMOID: return stable_sigmoid(z);
        case ACT_TANH: return tanhf(z);
        case ACT_RELU: return z < 0.0f ? 0.0f : z;  // not fmaxf, which turns NaN into 0
        default: return z;
    }
}

// Derivative written in terms of the activation's output a (all the forward pass keeps).
__device__ __forceinline__ float activation_derivative(int activation, float a) {
    switch (activation) {
        case ACT_SIGMOID: return a * (1.0f - a);
        case ACT_TANH: return 1.0f - a * a;
        case ACT_RELU: return a > 0.0f ? 1.0f : 0.0f;
        default: return 1.0f;
    }
}

// log(1 + e^z) without overflow; NaN stays NaN through the log1pf term.
__device__ __forceinline__ float softplus(float z) {
    return fmaxf(z, 0.0f) + log1pf(expf(-fabsf(z)));
}

// The GPU's nanosecond clock (%globaltimer), for phase and step clocks.
__device__ __forceinline__ unsigned long long global_time() {
    unsigned long long ns;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(ns));
    return ns;
}

// Templates keep C++ linkage in the sources PyCUDA wraps in extern "C".
extern "C++" {

// Butterfly reductions over groups of LANES consecutive lanes (32: the warp; 16: each half-warp): every lane
// ends with the same bits (each level adds a + b on one lane and b + a on its partner), and the order is
// fixed, so results repeat exactly from run to run.
template <int LANES>
__device__ __forceinline__ float lanes_sum(float value) {
#pragma unroll
    for (int offset = LANES / 2; offset > 0; offset >>= 1) value += __shfl_xor_sync(FULL_WARP_MASK, value, offset);
    return value;
}

// fmaxf returns the other operand when one is NaN, so a NaN logit does not become the row's maximum; it still
// reaches every probability of its row through exp(z - max) and the row's sum, as in the float64 reference.
template <int LANES>
__device__ __forceinline__ float lanes_max(float value) {
#pragma unroll
    for (int offset = LANES / 2; offset > 0; offset >>= 1)
        value = fmaxf(value, __shfl_xor_sync(FULL_WARP_MASK, value, offset));
    return value;
}

__device__ __forceinline__ float warp_sum(float value) { return lanes_sum<32>(value); }
__device__ __forceinline__ float warp_max(float value) { return lanes_max<32>(value); }

// The output layer's probability of the logit z a lane holds, its row spread over LANES lanes (those with
// `valid` false hold none), and into `loss` the lane's term of the row's loss for `target`: softmax as
// output_row computes it (exp of the max-shifted logits, P = e / sum), or the sigmoid.
template <int LANES>
__device__ __forceinline__ float output_probability(int loss_kind, float z, float target, bool valid, float& loss) {
    loss = 0.0f;
    if (loss_kind == LOSS_SOFTMAX_CE) {
        const float shifted = z - lanes_max<LANES>(valid ? z : LOWEST_FLOAT);
        const float e = valid ? expf(shifted) : 0.0f;
        const float sum = lanes_sum<LANES>(e);
        if (valid) loss = -target * (shifted - logf(sum));
        return e / sum;
    }
    if (valid) loss = softplus(z) - target * z;
    return stable_sigmoid(z);
}

}  // extern "C++"

// The output layer for one sample, one warp per row: probabilities P (in place over the logits Z), the
// sample's loss, and optionally the output gradient dZ = (P - T) / batch.
// Z holds logits without bias when bias != nullptr. T == nullptr: inference, no loss and no gradient.
__device__ __forceinline__ void output_row(float* Z, const float* bias, const float* T, float* dZ,
                                           float* loss_row, int cols, int loss_kind, float batch) {
    const int lane = threadIdx.x & 31;
    float loss = 0.0f;
    if (loss_kind == LOSS_SOFTMAX_CE) {
        float row_max = LOWEST_FLOAT;
        for (int j = lane; j < cols; j += 32) {
            const float z = Z[j] + (bias ? bias[j] : 0.0f);
            Z[j] = z;
            row_max = fmaxf(row_max, z);
        }
        row_max = warp_max(row_max);
        float sum = 0.0f;
        for (int j = lane; j < cols; j += 32) sum += expf(Z[j] - row_max);
        sum = warp_sum(sum);
        const float log_sum = logf(sum);
        for (int j = lane; j < cols; j += 32) {
            const float shifted = Z[j] - row_max;
            const float p = expf(shifted) / sum;
            Z[j] = p;
            if (T) {
                loss -= T[j] * (shifted - log_sum);
                if (dZ) dZ[j] = (p - T[j]) / batch;
            }
        }
    } else {
        for (int j = lane; j < cols; j += 32) {
            const float z = Z[j] + (bias ? bias[j] : 0.0f);
            const float p = stable_sigmoid(z);
            Z[j] = p;
            if (T) {
                loss += softplus(z) - T[j] * z;
                if (dZ) dZ[j] = (p - T[j]) / batch;
            }
        }
    }
    if (T) {
        loss = warp_sum(loss);
        if (lane == 0) *loss_row = loss;
    }
}

// 4-byte asynchronous copy global -> shared (cp.async.ca: 16-byte copies would need 16-byte aligned rows).
__device__ __forceinline__ void copy_async(float* dst, const float* src) {
    const unsigned int to = static_cast<unsigned int>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(to), "l"(src) : "memory");
}

__device__ __forceinline__ void copy_async_wait() { asm volatile("cp.async.wait_all;" ::: "memory"); }
