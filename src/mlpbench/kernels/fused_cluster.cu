// Rung 4, cuda-fused, for networks that fit on chip: the whole training step in one thread-block cluster
// (mlpbench.backends.cuda_fused runs it for launches of several steps; for one step the grid kernel is as fast).
//
// The grid kernel (fused.cu) pays a grid-wide barrier and a round trip to L2 for every phase. When the
// network's weights and the batch's activations fit in the shared memory of one cluster (up to 8 blocks on
// 8 SMs), this kernel keeps them there. Block `rank` of the cluster owns the columns
// [n * rank / ranks, n * (rank + 1) / ranks) of every hidden layer's output: the rows of W_l and b_l that make
// them, and the columns of the next layer's W that read them. What crosses between blocks goes through
// distributed shared memory, ordered by cluster barriers:
//   forward, hidden layer l   each block computes its columns of A_l; for every hidden layer but the last it
//                             stores them into every block's copy of A_l, then a cluster barrier: every block
//                             holds all of A_l, the next layer's input.
//   output layer              each block's partial logits from its columns of the last hidden layer, stored
//                             into every block; after a cluster barrier every block adds them in rank order
//                             and computes P, the loss and dZ (output_rows) itself, the same bits everywhere.
//   backward                  the output layer's weight gradient for the block's columns and the last hidden
//                             layer's dZ of its columns need nothing from other blocks; a hidden layer's rows
//                             of dW_l and db_l neither (A_{l-1} is whole in every block). For l > 0 the block
//                             computes its partial input gradient dZ_l[:, own] W_l[own, :]; after a cluster
//                             barrier each block adds the partials of its columns of layer l - 1 from every
//                             block, in rank order.
// A step of a network with one hidden layer therefore has one cluster barrier (and one at the end of a step
// that another follows); each further hidden layer adds two. Every sum runs in a fixed order, so results
// repeat bit for bit, and the stages (MODE_FORWARD, MODE_BACKPROP, MODE_UPDATE) compute exactly what
// MODE_STEP computes.
//
// MODE_STEP runs n_steps SGD steps on consecutive batch-row blocks of X and T with the weights kept in shared
// memory, updated in place; global memory receives the last step's activations, losses and gradients and the
// final weights (into copy W[parity ^ (n_steps & 1)], the copy the host makes current after the launch). The
// stage modes read and write the same buffers as the grid kernel's stages: the backprop reads the forward's
// activations, the update writes W[parity ^ 1] from W[parity] and the gradients.
//
// The shared-memory layout (every offset and row stride, in floats) is planned on the host
// (mlpbench.backends.cuda_fused.cluster_layout) and passed as `plan`; row strides are four times an odd number
// of floats, so that rows are 16-byte aligned and 16-byte loads from eight consecutive rows hit every bank.
// Constants (-D): THREADS (threads per block), MAX_LAYERS (entries of the layer table).
// A non-null `profile` receives %globaltimer (ns) from rank 0 at the start and after each step.
// Compiled with no_extern_c; the kernel is extern "C".
#include <cooperative_groups.h>

#include "common.cuh"
#include "fused_layers.cuh"

namespace cg = cooperative_groups;

#define WARPS (THREADS / 32)

#define MODE_STEP 0
#define MODE_FORWARD 1
#define MODE_BACKPROP 2
#define MODE_UPDATE 3

// Where one layer lives in shared memory (floats). Hidden layers: w holds the block's rows of W (row stride
// w_stride), b its bias entries, a the whole activation A_l (batch rows, stride a_stride), dz the block's
// columns of dZ_l. The output layer: w the block's columns of W (every row, stride w_stride), b whole, a the
// logits and then P, dz its output gradient, parts every block's partial logits (ranks x batch x n_out).
struct Slots {
    int w, w_stride, b, a, a_stride, dz, dz_stride, parts;
};

// Mirrored by mlpbench.backends.cuda_fused (_CLUSTER_HEADER, _SLOT_FIELDS): keep the field order in step.
struct ClusterPlan {
    int x[2], x_stride;              // the batch's inputs, alternating between steps
    int t[2];                        // its targets, likewise
    int partial[2], partial_stride;  // partial input gradients, alternating between layers
    int loss;                        // per-row losses of the ranks that do not write them out
    int n_layers;
    Slots layer[MAX_LAYERS];
};

static_assert(sizeof(ClusterPlan) == 40 + 32 * MAX_LAYERS,
              "struct ClusterPlan changed: update _CLUSTER_HEADER and _SLOT_FIELDS in backends/cuda_fused.py");

__device__ __forceinline__ int slice_begin(int n, int rank, int ranks) { return (int)((long)n * rank / ranks); }

// The SGD step of one weight and one bias, the same expressions in the fused step and the update stage.
__device__ __forceinline__ float sgd_weight(float w, float g, float lr, float decay) {
    return w - lr * (g + decay * w);
}
__device__ __forceinline__ float sgd_bias(float b, float g, float lr) { return b - lr * g; }

__device__ __forceinline__ bool aligned16(const float* p) { return (reinterpret_cast<size_t>(p) & 15) == 0; }

// The block's products, C(m, n) = sum over k of a(m, k) b(n, k) for m < M, n < N, both operands in shared
// memory with a(m, k) = a[m * a_row + k * a_col] and b(n, k) = b[n * b_row + k * b_col]; epilogue(m, n, sum).
// Each sum runs in an order fixed by the call's sizes and strides alone, so every call repeats bit for bit.
// Shared-memory loads, not multiply-adds, bound these products: two paths load fewer words per multiply-add.
//
// b_row == 1 (consecutive n adjacent, as in the weight and input gradients): a thread takes four consecutive
// outputs of one row m, one load of a(m, k) and one 16-byte load of b(n .. n + 3, k) per k, four chains in k
// order (scalar loads where b's rows are not 16-byte aligned: the same arithmetic).
// Otherwise a thread takes one output; where a_col == b_col == 1 (k adjacent in both, as in the forward
// product) it loads four k at once in 16 bytes from each operand. Either way four partial sums, over k mod 4
// in k order (the last K mod 4 terms onto the first), added as (s0 + s1) + (s2 + s3).
template <class Epilogue>
__device__ __forceinline__ void block_product(int M, int N, int K, const float* a, int a_row, int a_col,
                                              const float* b, int b_row, int b_col, Epilogue epilogue) {
    if (b_row == 1) {
        const int groups = (N + 3) / 4;
        const bool vector = aligned16(b) && b_col % 4 == 0;
        for (int o = threadIdx.x; o < M * groups; o += THREADS) {
            const int m = o / groups, n0 = 4 * (o - m * groups);
            const float* pa = a + m * a_row;
            const float* pb = b + n0;
            float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (vector && n0 + 4 <= N) {
#pragma unroll 4
                for (int k = 0; k < K; ++k) {
                    const float x = pa[k * a_col];
                    const float4 y = *reinterpret_cast<const float4*>(pb + k * b_col);
                    s[0] = fmaf(x, y.x, s[0]);
                    s[1] = fmaf(x, y.y, s[1]);
                    s[2] = fmaf(x, y.z, s[2]);
                    s[3] = fmaf(x, y.w, s[3]);
                }
            } else {
                const int width = N - n0 < 4 ? N - n0 : 4;
#pragma unroll 4
                for (int k = 0; k < K; ++k) {
                    const float x = pa[k * a_col];
#pragma unroll
                    for (int j = 0; j < 4; ++j)
                        if (j < width) s[j] = fmaf(x, pb[k * b_col + j], s[j]);
                }
            }
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (n0 + j < N) epilogue(m, n0 + j, s[j]);
        }
        return;
    }
    const bool vector = a_col == 1 && b_col == 1 && aligned16(a) && aligned16(b) && a_row % 4 == 0 && b_row % 4 == 0;
    for (int o = threadIdx.x; o < M * N; o += THREADS) {
        const int m = o / N, n = o - m * N;
        const float* pa = a + m * a_row;
        const float* pb = b + n * b_row;
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int k = 0;
        if (vector) {
#pragma unroll 4
            for (; k + 4 <= K; k += 4) {
                const float4 x = *reinterpret_cast<const float4*>(pa + k);
                const float4 y = *reinterpret_cast<const float4*>(pb + k);
                s[0] = fmaf(x.x, y.x, s[0]);
                s[1] = fmaf(x.y, y.y, s[1]);
                s[2] = fmaf(x.z, y.z, s[2]);
                s[3] = fmaf(x.w, y.w, s[3]);
            }
        } else {
#pragma unroll 2
            for (; k + 4 <= K; k += 4) {
#pragma unroll
                for (int j = 0; j < 4; ++j) s[j] = fmaf(pa[(k + j) * a_col], pb[(k + j) * b_col], s[j]);
            }
        }
        for (; k < K; ++k) s[0] = fmaf(pa[k * a_col], pb[k * b_col], s[0]);
        epilogue(m, n, (s[0] + s[1]) + (s[2] + s[3]));
    }
}

// Sum of rows 0 .. rows - 1 of column j (row stride `stride`): a bias gradient over the batch, four partial
// sums as in block_product.
__device__ __forceinline__ float column_sum(const float* data, int stride, int rows, int j) {
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int r = 0;
    for (; r + 4 <= rows; r += 4) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s[i] += data[(r + i) * stride + j];
    }
    for (; r < rows; ++r) s[0] += data[r * stride + j];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

// Queue asynchronous copies of rows x cols floats from global (row stride src_stride) into shared memory (row
// stride dst_stride), a warp per row: every copy of a launch's start in flight at once. Complete with
// copy_async_wait() and a block barrier.
__device__ __forceinline__ void load_rows(float* dst, int dst_stride, const float* src, int src_stride, int rows,
                                          int cols) {
    for (int r = threadIdx.x / 32; r < rows; r += WARPS)
        for (int c = threadIdx.x % 32; c < cols; c += 32)
            copy_async(dst + r * dst_stride + c, src + (long)r * src_stride + c);
}

// output_row (common.cuh) for two rows of an output layer at most 16 wide at once, a half-warp a row: the same
// arithmetic, its sums and maxima over 16 lanes. P over the logits Z (rows x cols, bias not yet added), the
// rows' losses and, with dZ, (P - T) / batch; T == nullptr: no loss, no gradient.
__device__ void output_rows(float* Z, const float* bias, const float* T, float* dZ, float* loss_rows, int rows,
                            int cols, int loss_kind, float batch) {
    const int half = (threadIdx.x / 16) % 2, j = threadIdx.x % 16;
    for (int base = 2 * (int)(threadIdx.x / 32); base < rows; base += 2 * WARPS) {  // warp-uniform: shuffles
        const int r = base + half, at = r * cols + j;
        const bool valid = r < rows && j < cols;
        const float z = valid ? Z[at] + bias[j] : 0.0f;
        const float target = valid && T ? T[at] : 0.0f;
        float loss;
        const float p = output_probability<16>(loss_kind, z, target, valid, loss);
        if (valid) {
            Z[at] = p;
            if (T && dZ) dZ[at] = (p - target) / batch;
        }
        if (T) {
            loss = lanes_sum<16>(loss);
            if (j == 0 && r < rows) loss_rows[r] = loss;
        }
    }
}

struct Context {
    const Layer* layers;
    const ClusterPlan* plan;
    float* smem;
    int rank, ranks, batch, activation, loss_kind;
    float lr, decay;
    int buffer;  // which of the two batch buffers holds this step's rows

    __device__ int n_layers() const { return plan->n_layers; }
    // The block's share [begin, begin + width) of n columns.
    __device__ int begin(int n) const { return slice_begin(n, rank, ranks); }
    __device__ int width(int n) const { return slice_begin(n, rank + 1, ranks) - begin(n); }
    __device__ float* at(int offset) const { return smem + offset; }
    // The input of layer l in shared memory, and its row stride.
    __device__ const float* input(int l) const { return l == 0 ? at(plan->x[buffer]) : at(plan->layer[l - 1].a); }
    __device__ int input_stride(int l) const { return l == 0 ? plan->x_stride : plan->layer[l - 1].a_stride; }
};

// The block's part of layer l's W in global memory: rows [row0, row0 + rows), columns [col0, col0 + cols).
struct Part {
    int row0, rows, col0, cols;
};

__device__ __forceinline__ Part part_of(const Context& c, int l) {
    const Layer& layer = c.layers[l];
    if (l < c.n_layers() - 1) return {c.begin(layer.n_out), c.width(layer.n_out), 0, layer.n_in};
    return {0, layer.n_out, c.begin(layer.n_in), c.width(layer.n_in)};  // the output layer: by columns
}

// Queue the block's parts of every layer's W (and its entries of the hidden layers' b; the output layer's b
// whole) from copy `parity`.
__device__ void load_weights(const Context& c, int parity) {
    const int head = c.n_layers() - 1;
    for (int l = 0; l <= head; ++l) {
        const Layer& layer = c.layers[l];
        const Slots& q = c.plan->layer[l];
        const Part p = part_of(c, l);
        load_rows(c.at(q.w), q.w_stride, layer.W[parity] + (long)p.row0 * layer.n_in + p.col0, layer.n_in, p.rows,
                  p.cols);
        load_rows(c.at(q.b), p.rows, layer.b[parity] + p.row0, p.rows, 1, p.rows);
    }
}

// The block's parts of every layer's W and b into copy `parity` (the output layer's b by rank 0).
__device__ void store_weights(const Context& c, int parity) {
    const int head = c.n_layers() - 1;
    for (int l = 0; l <= head; ++l) {
        const Layer& layer = c.layers[l];
        const Slots& q = c.plan->layer[l];
        const Part p = part_of(c, l);
        float* W = layer.W[parity] + (long)p.row0 * layer.n_in + p.col0;
        for (int e = threadIdx.x; e < p.rows * p.cols; e += THREADS) {
            const int r = e / p.cols, k = e - r * p.cols;
            W[(long)r * layer.n_in + k] = c.at(q.w)[r * q.w_stride + k];
        }
        if (l < head || c.rank == 0)
            for (int j = threadIdx.x; j < p.rows; j += THREADS) layer.b[parity][p.row0 + j] = c.at(q.b)[j];
    }
}

// Forward pass of the batch already in shared memory (its targets too, if `labelled`); `delta`: also the output
// gradient; `out`: write the activations, P and the losses to global memory.
__device__ void forward(const Context& c, cg::cluster_group& cluster, bool labelled, float* loss_rows, bool delta,
                        bool out) {
    const int head = c.n_layers() - 1, B = c.batch;
    for (int l = 0; l < head; ++l) {
        const Layer& layer = c.layers[l];
        const Slots& q = c.plan->layer[l];
        const int n_out = layer.n_out, first = c.begin(n_out);
        const bool gather = l + 1 < head;  // the last hidden layer's columns stay with their owner
        const float* bias = c.at(q.b);
        float* a = c.at(q.a);
        block_product(B, c.width(n_out), layer.n_in, c.input(l), c.input_stride(l), 1, c.at(q.w), q.w_stride, 1,
                      [&](int m, int n, float z) {
                          const float v = activate(c.activation, z + bias[n]);
                          const int at = m * q.a_stride + first + n;
                          if (gather)
                              for (int p = 0; p < c.ranks; ++p) cluster.map_shared_rank(a, p)[at] = v;
                          else
                              a[at] = v;
                          if (out) layer.A[(long)m * n_out + first + n] = v;
                      });
        if (gather)
            cluster.sync();  // every block's columns of A_l are in every block
        else
            __syncthreads();
    }
    const Layer& layer = c.layers[head];
    const Slots& q = c.plan->layer[head];
    const int n_out = layer.n_out, first = c.begin(layer.n_in), rows = B * n_out;
    float* parts = c.at(q.parts);
    block_product(B, n_out, c.width(layer.n_in), c.input(head) + first, c.input_stride(head), 1, c.at(q.w),
                  q.w_stride, 1, [&](int m, int n, float v) {
                      const int at = c.rank * rows + m * n_out + n;
                      for (int p = 0; p < c.ranks; ++p) cluster.map_shared_rank(parts, p)[at] = v;
                  });
    cluster.sync();  // every block's partial logits are in every block
    float* z = c.at(q.a);
    for (int e = threadIdx.x; e < rows; e += THREADS) {
        float v = 0.0f;
        for (int p = 0; p < c.ranks; ++p) v += parts[p * rows + e];
        z[e] = v;
    }
    __syncthreads();
    const bool loss_out = out && c.rank == 0;
    output_rows(z, c.at(q.b), labelled ? c.at(c.plan->t[c.buffer]) : nullptr, delta ? c.at(q.dz) : nullptr,
                loss_out ? loss_rows : c.at(c.plan->loss), B, n_out, c.loss_kind, (float)B);
    __syncthreads();
    if (loss_out)
        for (int e = threadIdx.x; e < rows; e += THREADS) layer.A[e] = z[e];
}

// Backward pass from the output gradient in shared memory; `sgd`: update the weights in shared memory in
// place; `out`: write the gradients to global memory.
__device__ void backward(const Context& c, cg::cluster_group& cluster, bool sgd, bool out) {
    const int head = c.n_layers() - 1, B = c.batch;
    {
        const Layer& layer = c.layers[head];
        const Slots& q = c.plan->layer[head];
        const int n_out = layer.n_out, n_in = layer.n_in, first = c.begin(n_in), cols = c.width(n_in);
        const float* dz = c.at(q.dz);
        const float* input = c.input(head) + first;
        float* w = c.at(q.w);
        if (head > 0) {  // dZ of the last hidden layer's columns of this block, from its columns of W
            const Slots& below = c.plan->layer[head - 1];
            const float* a = c.at(below.a);
            float* dz_below = c.at(below.dz);
            block_product(B, cols, n_out, dz, n_out, 1, w, 1, q.w_stride, [&](int m, int n, float v) {
                dz_below[m * below.dz_stride + n] =
                    v * activation_derivative(c.activation, a[m * below.a_stride + first + n]);
            });
            __syncthreads();  // the old weights have been read
        }
        block_product(n_out, cols, B, dz, 1, n_out, input, 1, c.input_stride(head), [&](int m, int n, float g) {
            if (out) layer.dW[(long)m * n_in + first + n] = g;
            if (sgd) w[m * q.w_stride + n] = sgd_weight(w[m * q.w_stride + n], g, c.lr, c.decay);
        });
        for (int j = threadIdx.x; j < n_out; j += THREADS) {
            const float g = column_sum(dz, n_out, B, j);
            if (out && c.rank == 0) layer.db[j] = g;
            if (sgd) c.at(q.b)[j] = sgd_bias(c.at(q.b)[j], g, c.lr);
        }
    }
    for (int l = head - 1; l >= 0; --l) {
        const Layer& layer = c.layers[l];
        const Slots& q = c.plan->layer[l];
        const int n_in = layer.n_in, first = c.begin(layer.n_out), rows = c.width(layer.n_out);
        const float* dz = c.at(q.dz);
        float* w = c.at(q.w);
        float* partial = c.at(c.plan->partial[l & 1]);
        const int ps = c.plan->partial_stride;
        if (l > 0) {
            block_product(B, n_in, rows, dz, q.dz_stride, 1, w, 1, q.w_stride,
                          [&](int m, int n, float v) { partial[m * ps + n] = v; });
            __syncthreads();  // the old weights have been read
        }
        block_product(rows, n_in, B, dz, 1, q.dz_stride, c.input(l), 1, c.input_stride(l),
                      [&](int m, int n, float g) {
                          if (out) layer.dW[(long)(first + m) * n_in + n] = g;
                          if (sgd) w[m * q.w_stride + n] = sgd_weight(w[m * q.w_stride + n], g, c.lr, c.decay);
                      });
        for (int j = threadIdx.x; j < rows; j += THREADS) {
            const float g = column_sum(dz, q.dz_stride, B, j);
            if (out) layer.db[first + j] = g;
            if (sgd) c.at(q.b)[j] = sgd_bias(c.at(q.b)[j], g, c.lr);
        }
        if (l == 0) break;
        cluster.sync();  // every block's partial is complete
        const Slots& below = c.plan->layer[l - 1];
        const int below_first = c.begin(n_in), below_rows = c.width(n_in);
        const float* a = c.at(below.a);
        float* dz_below = c.at(below.dz);
        for (int e = threadIdx.x; e < B * below_rows; e += THREADS) {
            const int m = e / below_rows, n = e - m * below_rows;
            const int at = m * ps + below_first + n;
            float v = 0.0f;
            for (int p = 0; p < c.ranks; ++p) v += cluster.map_shared_rank(partial, p)[at];
            dz_below[m * below.dz_stride + n] =
                v * activation_derivative(c.activation, a[m * below.a_stride + below_first + n]);
        }
        __syncthreads();
    }
}

// The update stage: W[parity ^ 1] = W[parity] - lr (dW + wd W[parity]), b likewise, every layer's elements
// shared evenly over the blocks.
__device__ void update(const Context& c, int parity) {
    for (int l = 0; l < c.n_layers(); ++l) {
        const Layer& layer = c.layers[l];
        const int weights = layer.n_out * layer.n_in, begin = c.begin(weights), stop = begin + c.width(weights);
        for (int e = begin + threadIdx.x; e < stop; e += THREADS)
            layer.W[parity ^ 1][e] = sgd_weight(layer.W[parity][e], __ldcg(layer.dW + e), c.lr, c.decay);
        const int first = c.begin(layer.n_out), end = first + c.width(layer.n_out);
        for (int j = first + threadIdx.x; j < end; j += THREADS)
            layer.b[parity ^ 1][j] = sgd_bias(layer.b[parity][j], __ldcg(layer.db + j), c.lr);
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    fused_cluster(const Layer* layers_in, const ClusterPlan* plan_in, int mode, const float* X, const float* T,
                  float* loss_rows, int batch, int n_steps, int activation, int loss_kind, int parity, float lr,
                  float weight_decay, unsigned long long* profile) {
    extern __shared__ __align__(16) float smem[];
    __shared__ Layer layer_table[MAX_LAYERS];
    __shared__ ClusterPlan plan;
    cg::cluster_group cluster = cg::this_cluster();
    for (int i = threadIdx.x; i < (int)(sizeof(ClusterPlan) / 4); i += THREADS)
        reinterpret_cast<int*>(&plan)[i] = __ldg(reinterpret_cast<const int*>(plan_in) + i);
    __syncthreads();
    const int n_layers = plan.n_layers, head = n_layers - 1;
    for (int i = threadIdx.x; i < n_layers * (int)(sizeof(Layer) / 4); i += THREADS)
        reinterpret_cast<int*>(layer_table)[i] = __ldg(reinterpret_cast<const int*>(layers_in) + i);
    __syncthreads();
    Context c = {layer_table, &plan, smem, (int)cluster.block_rank(), (int)cluster.num_blocks(), batch,
                 activation, loss_kind, lr, weight_decay, 0};
    const int n_in = layer_table[0].n_in, n_out = layer_table[head].n_out;
    const bool clock = profile != nullptr && c.rank == 0 && threadIdx.x == 0;
    if (clock) profile[0] = global_time();
    if (mode == MODE_UPDATE) {
        update(c, parity);
        return;
    }
    load_weights(c, parity);
    if (mode == MODE_BACKPROP) {  // the forward's activations and P, whole, from global memory
        load_rows(c.at(plan.x[0]), plan.x_stride, X, n_in, batch, n_in);
        for (int l = 0; l < head; ++l)
            load_rows(c.at(plan.layer[l].a), plan.layer[l].a_stride, layer_table[l].A, layer_table[l].n_out, batch,
                      layer_table[l].n_out);
        copy_async_wait();
        float* dz = c.at(plan.layer[head].dz);
        for (int e = threadIdx.x; e < batch * n_out; e += THREADS)
            dz[e] = (__ldcg(layer_table[head].A + e) - T[e]) / (float)batch;  // as output_row's dZ
        __syncthreads();
        backward(c, cluster, false, true);
        cluster.sync();  // no block leaves while another may still read its partial input gradients
        return;
    }
    // Step s reads batch buffer s % 2; the next step's rows are queued while this step runs its backward pass.
    auto queue_batch = [&](int step) {
        load_rows(c.at(plan.x[step % 2]), plan.x_stride, X + (long)step * batch * n_in, n_in, batch, n_in);
        if (T) load_rows(c.at(plan.t[step % 2]), n_out, T + (long)step * batch * n_out, n_out, batch, n_out);
    };
    queue_batch(0);
    // No block stores into another's shared memory before that block is running: one cluster barrier first,
    // while the copies are in flight.
    cluster.sync();
    for (int step = 0; step < n_steps; ++step) {
        const bool last = step == n_steps - 1;
        c.buffer = step % 2;
        copy_async_wait();  // this step's batch, and at the first step the weights
        __syncthreads();
        forward(c, cluster, T != nullptr, loss_rows, mode == MODE_STEP, last);
        if (mode == MODE_FORWARD) break;
        // Buffer (step + 1) % 2 was last read by the step before, which ended at a cluster barrier.
        if (!last) queue_batch(step + 1);
        backward(c, cluster, true, last);
        // The next step's stores into other blocks' activations wait until every block is done with these.
        cluster.sync();
        if (clock) profile[1 + step] = global_time();
    }
    if (mode == MODE_STEP) store_weights(c, parity ^ (n_steps & 1));
}
