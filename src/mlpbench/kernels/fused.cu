// Rung 4, cuda-fused: the whole training step of a small network in one launch.
//
// A persistent kernel: one block per SM (at most as many blocks as SMs, so every block is resident at once)
// walks through a list of phases prepared on the host; a grid-wide barrier separates phases. Within a phase
// the work is cut into items (output tiles of a matrix product, rows of the output layer, chunks of the SGD
// step) that the blocks share out in a fixed order (item_of_round). Every sum runs in a fixed order (split-k
// partial sums are added in slice order, a bias gradient over the batch in sample order): no atomics take part
// in any result, so a step repeats bit for bit.
//
// Training step of L layers (l = 0 .. L-1), one launch:
//   FORWARD(0) .. FORWARD(L-2)     A_l = f(A_{l-1} W_l^T + b_l)
//   FORWARD_HEAD(L-1)              output layer, one block per sample: logits, P, the sample's loss, dZ_{L-1}
//                                  and, with FLAG_HEAD_INPUT, the sample's row of dZ_{L-2}; with
//                                  FLAG_HEAD_HIDDEN the block first computes the sample's row of A_{L-2}
//                                  itself (FORWARD(L-2) is then not in the list)
//                                  (or FORWARD(L-1) + HEAD when the output layer is wider than HEAD_MAX)
//   BACKWARD(L-2) .. BACKWARD(0)   dZ_{l-1} = (dZ_l W_l) * f'(A_{l-1});  dW_l = dZ_l^T A_{l-1};  db_l
//                                  (db_l by the weight-gradient tiles of the first column: they hold dZ_l);
//                                  BACKWARD(L-2) with FLAG_ABOVE also dW_{L-1}, db_{L-1}
// A network whose output layer is wider than HEAD_MAX (or that has one layer) runs BACKWARD(L-1) of its own
// instead: dZ_{L-2} by tiles, one phase and barrier more.
// With FLAG_SGD a backward phase also writes the updated W_l and b_l. The other blocks of that same phase
// still read W_l, so the update goes to a second copy: W[parity ^ 1] = W[parity] - lr (dW + wd W[parity]),
// and the host flips the parity after the launch. No extra pass over the weights is needed.
// The separate stages are the same kernel on shorter phase lists: forward (FORWARD..HEAD), backprop
// (OUTPUT_DELTA, BACKWARD..; OUTPUT_DELTA with FLAG_HEAD_INPUT computes the rows of dZ_{L-2} as the head does,
// so the stages and the step agree bit for bit), update (UPDATE).
//
// Products share one tile routine: C(m, n) = sum_k a(m, k) b(n, k) with a(m, k) = a.data[m * a.row + k * a.col]
// (likewise b), so one code path serves the forward (nt), input-gradient (nn) and weight-gradient (tn)
// layouts. A tile of (micro * gm) x (micro * gn) outputs is staged in shared memory one k-chunk at a time;
// 256 threads = gm x gn x ksplit, each computing micro x micro outputs over every ksplit-th k. The host picks
// the shape per product (mlpbench.backends.cuda).
//
// Latency, not arithmetic, bounds these small products, so each phase waits on as few round trips to L2 as
// possible: a tile's whole k-chunk is staged with asynchronous copies (cp.async, every copy in flight at once,
// one wait), and the one global value each output's epilogue needs (bias, activation, old weight) is loaded
// into a register before that wait, not after the products.
//
// Data written earlier in the same launch by other blocks is read after the grid barrier's acquire (which,
// with the block barrier behind it, orders every later read of the block's threads, cp.async included), with
// __ldcg or cp.async.
// Constants (-D): KCHUNK (k values staged at once), HEAD_MAX (widest output layer FORWARD_HEAD serves),
// HIDDEN_K (k values of FLAG_HEAD_HIDDEN's row a thread sums),
// UPDATE_CHUNK (elements of one SGD item), SPIN_LIMIT (barrier polls before the kernel gives up and traps),
// MAX_LAYERS (entries of the layer table, fused_layers.cuh).
// A non-null `profile` receives %globaltimer (ns) from block 0 at the start and after each phase's barrier
// (1 + n_steps * n_phases values).
// Compiled with no_extern_c; the kernel is extern "C".
#include "common.cuh"
#include "fused_layers.cuh"

#define THREADS 256
#define WARPS (THREADS / 32)
#define MAX_TILE_ROWS 32  // micro (<= 2) x gm (<= 16)
#define MAX_PHASES (2 * MAX_LAYERS + 2)

#define PHASE_FORWARD 0
#define PHASE_FORWARD_HEAD 1
#define PHASE_HEAD 2
#define PHASE_OUTPUT_DELTA 3
#define PHASE_BACKWARD 4
#define PHASE_UPDATE 5

#define FLAG_DELTA 1       // the output layer also writes dZ = (P - T) / batch
#define FLAG_SGD 2         // backward phases also write the updated weights and biases
#define FLAG_HEAD_INPUT 4  // FORWARD_HEAD, OUTPUT_DELTA: a sample's block also writes its row of dZ_{L-2}
#define FLAG_ABOVE 8       // BACKWARD(l): also the weight gradient of layer l + 1 (tile `above`)
#define FLAG_HEAD_HIDDEN 16  // FORWARD_HEAD: a sample's block first computes its row of A_{L-2}

// FORWARD_HEAD's shared memory: the logits' partial sums and the row of dZ, then FLAG_HEAD_HIDDEN's range sums
// and row (at most THREADS outputs).
#define HEAD_SUMS (WARPS * HEAD_MAX + HEAD_MAX)
static_assert(HEAD_SUMS + 2 * THREADS <= 2 * KCHUNK * (MAX_TILE_ROWS + 1) + 4 * THREADS,
              "FORWARD_HEAD's shared memory must fit the dynamic shared memory (FUSED_SHARED_BYTES)");
static_assert(HIDDEN_K % 4 == 0, "FLAG_HEAD_HIDDEN loads its k range in float4s");

struct Tile {
    int micro;  // each thread computes micro x micro outputs (1 or 2)
    int gm;     // thread rows (power of two)
    int gn;     // thread columns (power of two)
    int ksplit; // k slices per output; gm * gn * ksplit == THREADS
};

struct Phase {
    int kind;
    int layer;
    int flags;
    int padding;
    Tile main;     // FORWARD: the forward product; BACKWARD: the input-gradient product
    Tile weights;  // BACKWARD: the weight-gradient product
    Tile above;    // BACKWARD with FLAG_ABOVE: the weight-gradient product of layer + 1
};

// Sizes the host's numpy dtypes are built to (tests check the Python side).
static_assert(sizeof(Phase) == 64, "struct Phase changed: update _PHASE_DTYPE in backends/cuda_fused.py");

struct Operand {
    const float* data;
    int row;  // stride between consecutive m (or n)
    int col;  // stride between consecutive k
};

struct Step {
    const float* X;
    const float* T;
    float* loss_rows;
    int batch;
    int activation;
    int loss_kind;
    int parity;
    float lr;
    float weight_decay;
};

__device__ __forceinline__ int log2_of(int power_of_two) { return __ffs(power_of_two) - 1; }

__device__ __forceinline__ int tiles_of(const Tile& tile, int M, int N) {
    const int tm = tile.micro * tile.gm, tn = tile.micro * tile.gn;
    return ((M + tm - 1) / tm) * ((N + tn - 1) / tn);
}

// Grid-wide barrier. Counting as cooperative_groups::grid_group::sync does: block 0 adds 2^31 - (blocks - 1),
// every other block adds 1, so the top bit of the counter flips exactly when the last block arrives and the
// counter needs no reset between barriers or launches. Each block knows which way the bit must flip (it
// read the bit when the launch began and counts its barriers), so arriving is a single fire-and-forget
// atomic with release semantics (this block's writes, ordered before it by __syncthreads, become visible
// first), and waiting is polling with acquire loads (later reads see every block's writes).
__device__ __forceinline__ unsigned int load_acquire(const unsigned int* address) {
    unsigned int value;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(value) : "l"(address) : "memory");
    return value;
}

__device__ __forceinline__ void add_release(unsigned int* address, unsigned int value) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(address), "r"(value) : "memory");
}

__device__ __forceinline__ void grid_barrier(unsigned int* counter, unsigned int& top_bit) {
    __syncthreads();
    if (threadIdx.x == 0) {
        top_bit ^= 0x80000000u;  // where the bit stands once everyone arrived
        add_release(counter, blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u);
        unsigned int polls = 0;
        while ((load_acquire(counter) & 0x80000000u) != top_bit) {
            if (++polls == SPIN_LIMIT) __trap();  // a block never arrived: fail loudly, never hang the GPU
        }
    }
    __syncthreads();
}

// Queue copies of rows r0 .. r0 + rows - 1, k = k0 .. k0 + kc - 1 of an operand into stage[k * (rows + 1) + r];
// rows past the matrix's end are stored as 0. Warps and lanes run along whichever index is contiguous in
// memory. Complete with copy_async_wait() and a block barrier.
__device__ __forceinline__ void stage_operand(float* stage, const Operand& op, int r0, int rows, int R, int k0,
                                              int kc) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int pitch = rows + 1;  // odd for even rows: the column writes below avoid bank conflicts
    if (op.col == 1) {           // k contiguous: a warp per row, lanes along k
        for (int r = warp; r < rows; r += WARPS) {
            const bool inside = r0 + r < R;
            const float* src = op.data + (long)(r0 + r) * op.row + k0;
            for (int k = lane; k < kc; k += 32) {
                if (inside)
                    copy_async(stage + k * pitch + r, src + k);
                else
                    stage[k * pitch + r] = 0.0f;
            }
        }
    } else {  // rows contiguous (op.row == 1): lanes along rows (a power of two <= 32), then along k
        const int shift = log2_of(rows);
        const int r = lane & (rows - 1);
        const int k_lanes = 32 >> shift, k_step = WARPS * k_lanes;
        const bool inside = r0 + r < R;
        const float* src = op.data + r0 + r + (long)k0 * op.col;
        for (int k = warp * k_lanes + (lane >> shift); k < kc; k += k_step) {
            if (inside)
                copy_async(stage + k * pitch + r, src + (long)k * op.col);
            else
                stage[k * pitch + r] = 0.0f;
        }
    }
}

// One output tile of C = a b^T. The epilogue supplies prefetch(m, n) (the global value its store needs, loaded
// while the operands are on their way) and store(m, n, value, prefetched) for each output inside the matrix.
// With Epilogue::ROW_SUMS the tiles of the first column also sum each row of a over k in order and hand it
// to row_store(m, sum, row_prefetch(m)) (the bias gradient, from the dZ rows the tile stages anyway).
template <int MICRO, typename Epilogue>
__device__ __forceinline__ void product_tile(int tile_index, const Tile& tile, int M, int N, int K,
                                             const Operand& a, const Operand& b, float* smem,
                                             const Epilogue& epilogue) {
    const int gm = tile.gm, gn = tile.gn, ksplit = tile.ksplit;
    const int tm = MICRO * gm, tn = MICRO * gn;
    const int tiles_n = (N + tn - 1) / tn;
    const int m0 = (tile_index / tiles_n) * tm, n0 = (tile_index % tiles_n) * tn;
    const int groups = gm * gn;
    const int slice = threadIdx.x / groups, group = threadIdx.x % groups;
    const int gi = group >> log2_of(gn), gj = group & (gn - 1);
    float* a_stage = smem;
    float* b_stage = smem + KCHUNK * (MAX_TILE_ROWS + 1);
    float* partial = smem + 2 * KCHUNK * (MAX_TILE_ROWS + 1);

    float acc[MICRO][MICRO], pre[MICRO][MICRO];
#pragma unroll
    for (int i = 0; i < MICRO; ++i)
#pragma unroll
        for (int j = 0; j < MICRO; ++j) {
            acc[i][j] = 0.0f;
            const int m = m0 + gi + gm * i, n = n0 + gj + gn * j;
            pre[i][j] = (slice == 0 && m < M && n < N) ? epilogue.prefetch(m, n) : 0.0f;
        }
    const int row = threadIdx.x;  // the row this thread sums when the tile sums rows
    const bool sums_row = Epilogue::ROW_SUMS && n0 == 0 && row < tm && m0 + row < M;
    float row_sum = 0.0f;
    const float row_pre = sums_row ? epilogue.row_prefetch(m0 + row) : 0.0f;

    for (int k0 = 0; k0 < K; k0 += KCHUNK) {
        const int kc = min(KCHUNK, K - k0);
        __syncthreads();  // the previous item (or chunk) is done with shared memory
        stage_operand(a_stage, a, m0, tm, M, k0, kc);
        stage_operand(b_stage, b, n0, tn, N, k0, kc);
        copy_async_wait();
        __syncthreads();
        if (sums_row)
            for (int k = 0; k < kc; ++k) row_sum += a_stage[k * (tm + 1) + row];
#pragma unroll 4
        for (int k = slice; k < kc; k += ksplit) {
            float av[MICRO], bv[MICRO];
#pragma unroll
            for (int i = 0; i < MICRO; ++i) av[i] = a_stage[k * (tm + 1) + gi + gm * i];
#pragma unroll
            for (int j = 0; j < MICRO; ++j) bv[j] = b_stage[k * (tn + 1) + gj + gn * j];
#pragma unroll
            for (int i = 0; i < MICRO; ++i)
#pragma unroll
                for (int j = 0; j < MICRO; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
    }
    if (sums_row) epilogue.row_store(m0 + row, row_sum, row_pre);
    if (ksplit > 1) {  // add the k slices in slice order
#pragma unroll
        for (int i = 0; i < MICRO; ++i)
#pragma unroll
            for (int j = 0; j < MICRO; ++j) partial[(slice * groups + group) * MICRO * MICRO + i * MICRO + j] = acc[i][j];
        __syncthreads();
        if (slice == 0) {
            for (int s = 1; s < ksplit; ++s)
#pragma unroll
                for (int i = 0; i < MICRO; ++i)
#pragma unroll
                    for (int j = 0; j < MICRO; ++j)
                        acc[i][j] += partial[(s * groups + group) * MICRO * MICRO + i * MICRO + j];
        }
    }
    if (slice == 0) {
#pragma unroll
        for (int i = 0; i < MICRO; ++i)
#pragma unroll
            for (int j = 0; j < MICRO; ++j) {
                const int m = m0 + gi + gm * i, n = n0 + gj + gn * j;
                if (m < M && n < N) epilogue.store(m, n, acc[i][j], pre[i][j]);
            }
    }
}

template <typename Epilogue>
__device__ __forceinline__ void product(int tile_index, const Tile& tile, int M, int N, int K, const Operand& a,
                                        const Operand& b, float* smem, const Epilogue& epilogue) {
    if (tile.micro == 2)
        product_tile<2>(tile_index, tile, M, N, K, a, b, smem, epilogue);
    else
        product_tile<1>(tile_index, tile, M, N, K, a, b, smem, epilogue);
}

// The three epilogues. Rows of an output without a row sum: ROW_SUMS false, row_* never called.
struct NoRowSums {
    static constexpr bool ROW_SUMS = false;
    __device__ float row_prefetch(int) const { return 0.0f; }
    __device__ void row_store(int, float, float) const {}
};

// Forward: A_l = f(z + b_l).
struct ForwardEpilogue : NoRowSums {
    float* out;
    const float* bias;
    int n_out;
    int activation;
    __device__ float prefetch(int, int n) const { return __ldcg(bias + n); }
    __device__ void store(int m, int n, float v, float b) const {
        out[(long)m * n_out + n] = activate(activation, v + b);
    }
};

// Input gradient: dZ_{l-1} = (dZ_l W_l) * f'(A_{l-1}).
struct InputGradientEpilogue : NoRowSums {
    float* dZ_prev;
    const float* A_prev;
    int n_in;
    int activation;
    __device__ float prefetch(int m, int n) const { return __ldcg(A_prev + (long)m * n_in + n); }
    __device__ void store(int m, int n, float v, float a) const {
        dZ_prev[(long)m * n_in + n] = v * activation_derivative(activation, a);
    }
};

// Weight gradient dW_l = dZ_l^T A_{l-1} and bias gradient db_l; with sgd also the updated copies
// W[parity ^ 1] = W - lr (dW + wd W) and b[parity ^ 1] = b - lr db.
struct WeightGradientEpilogue {
    static constexpr bool ROW_SUMS = true;
    float* dW;
    const float* W;
    float* W_next;
    float* db;
    const float* b;
    float* b_next;
    int n_in;
    bool sgd;
    float lr;
    float decay;
    __device__ float prefetch(int m, int n) const { return sgd ? __ldcg(W + (long)m * n_in + n) : 0.0f; }
    __device__ void store(int m, int n, float v, float w) const {
        const long at = (long)m * n_in + n;
        dW[at] = v;
        if (sgd) W_next[at] = w - lr * (v + decay * w);
    }
    __device__ float row_prefetch(int m) const { return sgd ? __ldcg(b + m) : 0.0f; }
    __device__ void row_store(int m, float sum, float old) const {
        db[m] = sum;
        if (sgd) b_next[m] = old - lr * sum;
    }
};

// The item this block takes in round `round` of a phase whose items are shared out over the grid: in even
// rounds block b takes item round * blocks + b, in odd rounds the order runs backwards. When a phase has more
// items than blocks, the second round then lands on the blocks whose first item came last in the list (a
// backward phase lists its dear input-gradient tiles before its cheap weight-gradient ones), not on those
// that already hold the dearest. The planner's cost model (_phase_cycles) assumes this order.
__device__ __forceinline__ int item_of_round(int round) {
    const int position = (round & 1) ? (int)gridDim.x - 1 - (int)blockIdx.x : (int)blockIdx.x;
    return round * (int)gridDim.x + position;
}

__device__ __forceinline__ const float* layer_input(const Layer* layers, int l, const Step& s) {
    return l == 0 ? s.X : layers[l - 1].A;
}

// What a thread needs of sample r for its columns k = t and t + THREADS (widths are at most KCHUNK, two
// columns a thread) of the row of dZ_{L-2}: the output layer's weights into them and the sample's activations.
// The head loads them anyway for the logits and keeps them; OUTPUT_DELTA loads them itself.
struct HeadColumns {
    float w[2][HEAD_MAX];
    float a[2];
};
static_assert(KCHUNK <= 2 * THREADS, "a head thread keeps two columns: widths up to KCHUNK need KCHUNK <= 2 THREADS");

__device__ __forceinline__ void load_head_weights(const Layer& out_layer, const Step& s, HeadColumns& c) {
    const int n_in = out_layer.n_in, n_out = out_layer.n_out;
    const float* W = out_layer.W[s.parity];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int k = threadIdx.x + i * THREADS;
#pragma unroll
        for (int j = 0; j < HEAD_MAX; ++j) c.w[i][j] = (k < n_in && j < n_out) ? __ldcg(W + (long)j * n_in + k) : 0.0f;
    }
}

__device__ __forceinline__ void load_head_columns(const Layer& out_layer, const Layer& below, int r, const Step& s,
                                                  HeadColumns& c) {
    const int n_in = out_layer.n_in;
    load_head_weights(out_layer, s, c);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int k = threadIdx.x + i * THREADS;
        c.a[i] = k < n_in ? __ldcg(below.A + (long)r * n_in + k) : 0.0f;
    }
}

// Row r of dZ_{L-2} = (dZ_{L-1} W_{L-1}) * f'(A_{L-2}) on the block that holds row r of dZ_{L-1} (`dz`, in shared
// memory: the output layer is at most HEAD_MAX wide), from the thread's columns `c`; each sum runs over the
// outputs in order. FORWARD_HEAD and OUTPUT_DELTA both call it, so the step and the stages agree.
__device__ __forceinline__ void head_input_gradient_row(const Layer& out_layer, const Layer& below, int r,
                                                        const Step& s, const float* dz, const HeadColumns& c) {
    const int n_in = out_layer.n_in, n_out = out_layer.n_out;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int k = threadIdx.x + i * THREADS;
        if (k >= n_in) break;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < HEAD_MAX; ++j)
            if (j < n_out) sum = fmaf(dz[j], c.w[i][j], sum);
        below.dZ[(long)r * n_in + k] = sum * activation_derivative(s.activation, c.a[i]);
    }
}

// Output layer for one sample when it is at most HEAD_MAX wide, on one block: thread t sums inputs t,
// t + THREADS, .. for every output at once (all its loads independent: one round trip to L2), a shuffle tree
// and a pass through shared memory finish each logit in warp 0 (warp after warp, in order), whose lane j keeps logit j;
// softmax or sigmoid, the loss and dZ then run on those registers (the bias and the target were loaded with
// the inputs). With `below` (FLAG_HEAD_INPUT) the block then writes the sample's row of the layer below's dZ.
// `sums` holds WARPS x HEAD_MAX floats and the row of dZ after them.
// FLAG_HEAD_HIDDEN: row r of A_{L-2} = f(A_{L-3} W_{L-2}^T + b_{L-2}) (A_{L-3} is X when L = 2) on the block of
// sample r. Thread t takes output n = t mod P (P the power of two at or above n_out) and the t / P-th of
// THREADS / P contiguous k ranges of at most HIDDEN_K values, whose weights and inputs it loads into registers
// (16-byte loads where rows and pointers allow) before the head's own loads, so that both wait on L2 together;
// the ranges' sums are added in order. The row goes to global memory (the backward phases read it) and to
// shared memory for the head. The planner allows it where n_out <= THREADS and the ranges fit HIDDEN_K.
struct HiddenRow {
    const Layer* layer;  // layer L-2
    const float* input;  // its input, A_{L-3} or X
    float* shared;       // THREADS floats for the ranges' sums, then the row
};

struct HiddenLoads {
    float w[HIDDEN_K];
    float x[HIDDEN_K];
    float bias;
};

// This thread's part of the row: output n, k range `range` of `ranges`, the outputs rounded up to a power of
// two (`outputs`) so that the block's threads split into whole ranges.
struct HiddenLane {
    int outputs, ranges, n, range;
};

__device__ __forceinline__ HiddenLane hidden_lane(int n_out) {
    const int outputs = 1 << (32 - __clz(n_out - 1));
    return {outputs, THREADS / outputs, (int)threadIdx.x & (outputs - 1), (int)threadIdx.x / outputs};
}

__device__ __forceinline__ void load_hidden_row(const HiddenRow& h, int r, const Step& s, HiddenLoads& v) {
    const Layer& layer = *h.layer;
    const int n_in = layer.n_in, n_out = layer.n_out;
    const auto [outputs, ranges, n, range] = hidden_lane(n_out);
    const int span = (n_in + ranges - 1) / ranges, k0 = range * span;
    const bool active = n < n_out && k0 < n_in;
    const float* w = layer.W[s.parity] + (long)n * n_in + k0;
    const float* x = h.input + (long)r * n_in + k0;
    v.bias = (range == 0 && n < n_out) ? __ldcg(layer.b[s.parity] + n) : 0.0f;
    const bool vectors = n_in % 4 == 0 && span % 4 == 0 &&
                         ((reinterpret_cast<size_t>(layer.W[s.parity]) | reinterpret_cast<size_t>(h.input)) & 15) == 0;
    if (vectors) {  // block-uniform
#pragma unroll
        for (int j = 0; j < HIDDEN_K; j += 4) {
            const bool inside = active && j < span && k0 + j < n_in;
            const float4 wj = inside ? __ldcg(reinterpret_cast<const float4*>(w + j)) : make_float4(0, 0, 0, 0);
            const float4 xj = inside ? __ldcg(reinterpret_cast<const float4*>(x + j)) : make_float4(0, 0, 0, 0);
            v.w[j] = wj.x, v.w[j + 1] = wj.y, v.w[j + 2] = wj.z, v.w[j + 3] = wj.w;
            v.x[j] = xj.x, v.x[j + 1] = xj.y, v.x[j + 2] = xj.z, v.x[j + 3] = xj.w;
        }
    } else {
#pragma unroll
        for (int j = 0; j < HIDDEN_K; ++j) {
            const bool inside = active && j < span && k0 + j < n_in;
            v.w[j] = inside ? __ldcg(w + j) : 0.0f;
            v.x[j] = inside ? __ldcg(x + j) : 0.0f;
        }
    }
}

__device__ __forceinline__ const float* finish_hidden_row(const HiddenRow& h, int r, const Step& s,
                                                          const HiddenLoads& v) {
    const Layer& layer = *h.layer;
    const int n_out = layer.n_out;
    const auto [outputs, ranges, n, range] = hidden_lane(n_out);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < HIDDEN_K; ++j) sum = fmaf(v.x[j], v.w[j], sum);  // zeros past the range add nothing
    float* partial = h.shared;
    float* row = partial + THREADS;
    __syncthreads();  // the previous sample's row and sums have been read
    partial[threadIdx.x] = sum;
    __syncthreads();
    if (range == 0 && n < n_out) {
        float z = partial[n];
        for (int j = 1; j < ranges; ++j) z += partial[j * outputs + n];
        const float a = activate(s.activation, z + v.bias);
        row[n] = a;
        layer.A[(long)r * n_out + n] = a;
    }
    __syncthreads();
    return row;
}

__device__ __forceinline__ void forward_head_row(const Layer& layer, const Layer* below, const float* input, int r,
                                                 const Step& s, bool delta, float* sums, const HiddenRow& hidden,
                                                 bool with_hidden) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_in = layer.n_in, n_out = layer.n_out;
    HiddenLoads loads;
    if (with_hidden) load_hidden_row(hidden, r, s, loads);
    const bool valid = warp == 0 && lane < n_out;
    const long at = (long)r * n_out + lane;
    const float bias = valid ? __ldcg(layer.b[s.parity] + lane) : 0.0f;
    const float target = (valid && s.T) ? __ldcg(s.T + at) : 0.0f;
    HeadColumns c;  // kept for the row of the layer below
    // The output layer's weights are loaded before the hidden row is computed, so the two wait on L2 together.
    load_head_weights(layer, s, c);
    const float* row = with_hidden ? finish_hidden_row(hidden, r, s, loads) : nullptr;
    const float* x = input + (long)r * n_in;
    float part[HEAD_MAX];
#pragma unroll
    for (int j = 0; j < HEAD_MAX; ++j) part[j] = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int k = threadIdx.x + i * THREADS;
        const float xk = k < n_in ? (row != nullptr ? row[k] : __ldcg(x + k)) : 0.0f;
        c.a[i] = xk;
#pragma unroll
        for (int j = 0; j < HEAD_MAX; ++j)
            if (k < n_in && j < n_out) part[j] = fmaf(xk, c.w[i][j], part[j]);
    }
    __syncthreads();  // the previous row's logits have been read
#pragma unroll
    for (int j = 0; j < HEAD_MAX; ++j)
        if (j < n_out) {
            const float sum = warp_sum(part[j]);
            if (lane == 0) sums[warp * HEAD_MAX + j] = sum;
        }
    __syncthreads();
    float* dz = sums + WARPS * HEAD_MAX;
    if (warp == 0) {
        float z = 0.0f;
        if (valid) {
            for (int w = 0; w < WARPS; ++w) z += sums[w * HEAD_MAX + lane];
            z += bias;
        }
        float loss;
        const float p = output_probability<32>(s.loss_kind, z, target, valid, loss);
        if (valid) {
            layer.A[at] = p;
            if (delta) {
                const float d = (p - target) / (float)s.batch;
                layer.dZ[at] = d;
                dz[lane] = d;
            }
        }
        if (s.T) {
            loss = warp_sum(loss);
            if (lane == 0) s.loss_rows[r] = loss;
        }
    }
    if (below != nullptr) {
        __syncthreads();  // the row of dZ is in shared memory
        head_input_gradient_row(layer, *below, r, s, dz, c);
    }
}

__device__ void forward_phase(const Layer* layers, int n_layers, const Phase& phase, const Step& s,
                              float* smem) {
    const Layer& layer = layers[phase.layer];
    const int n_in = layer.n_in, n_out = layer.n_out;
    const bool hidden = phase.layer < n_layers - 1;  // the output layer keeps its logits for HEAD
    const Operand a = {layer_input(layers, phase.layer, s), n_in, 1};
    const Operand w = {layer.W[s.parity], n_in, 1};
    ForwardEpilogue epilogue;
    epilogue.out = layer.A;
    epilogue.bias = layer.b[s.parity];
    epilogue.n_out = n_out;
    epilogue.activation = hidden ? s.activation : ACT_IDENTITY;
    const int tiles = tiles_of(phase.main, s.batch, n_out);
    for (int round = 0; round * (int)gridDim.x < tiles; ++round) {
        const int t = item_of_round(round);
        if (t >= tiles) break;  // only in the last round; block-uniform, as product's barriers need
        product(t, phase.main, s.batch, n_out, n_in, a, w, smem, epilogue);
    }
}

// Tile `item` of layer l's weight gradient dW_l = dZ_l^T A_{l-1} with the bias sums (and, with FLAG_SGD, the
// updated copies).
__device__ __forceinline__ void weight_gradient_tile(const Layer* layers, int l, int item, const Tile& tile,
                                                     const Phase& phase, const Step& s, float* smem) {
    const Layer& layer = layers[l];
    const float* W = layer.W[s.parity];
    WeightGradientEpilogue epilogue;
    epilogue.dW = layer.dW;
    epilogue.W = W;
    epilogue.W_next = layer.W[s.parity ^ 1];
    epilogue.db = layer.db;
    epilogue.b = layer.b[s.parity];
    epilogue.b_next = layer.b[s.parity ^ 1];
    epilogue.n_in = layer.n_in;
    epilogue.sgd = phase.flags & FLAG_SGD;
    epilogue.lr = s.lr;
    epilogue.decay = s.weight_decay;
    product(item, tile, layer.n_out, layer.n_in, s.batch, Operand{layer.dZ, 1, layer.n_out},
            Operand{layer_input(layers, l, s), 1, layer.n_in}, smem, epilogue);
}

// Items: the input-gradient tiles (none for layer 0), then the weight-gradient tiles (with the bias sums), then
// with FLAG_ABOVE the weight-gradient tiles of layer l + 1 (whose input gradient the head computed).
__device__ void backward_phase(const Layer* layers, const Phase& phase, const Step& s, float* smem) {
    const int l = phase.layer;
    const Layer& layer = layers[l];
    const int n_in = layer.n_in, n_out = layer.n_out, batch = s.batch;
    const float* W = layer.W[s.parity];
    const int input_tiles = l > 0 ? tiles_of(phase.main, batch, n_in) : 0;
    const int weight_tiles = tiles_of(phase.weights, n_out, n_in);
    const int above_tiles =
        (phase.flags & FLAG_ABOVE) ? tiles_of(phase.above, layers[l + 1].n_out, layers[l + 1].n_in) : 0;
    const int items = input_tiles + weight_tiles + above_tiles;
    for (int round = 0; round * (int)gridDim.x < items; ++round) {
        const int item = item_of_round(round);
        if (item >= items) break;  // only in the last round; block-uniform, as product's barriers need
        if (item < input_tiles) {
            InputGradientEpilogue epilogue;
            epilogue.dZ_prev = layers[l - 1].dZ;
            epilogue.A_prev = layers[l - 1].A;
            epilogue.n_in = n_in;
            epilogue.activation = s.activation;
            product(item, phase.main, batch, n_in, n_out, Operand{layer.dZ, n_out, 1}, Operand{W, 1, n_in}, smem,
                    epilogue);
        } else if (item < input_tiles + weight_tiles) {
            weight_gradient_tile(layers, l, item - input_tiles, phase.weights, phase, s, smem);
        } else {
            weight_gradient_tile(layers, l + 1, item - input_tiles - weight_tiles, phase.above, phase, s, smem);
        }
    }
}

// W[parity ^ 1] = W[parity] - lr (dW + wd W[parity]), b likewise without decay, for every layer.
// Items are UPDATE_CHUNK consecutive elements of one layer's W followed by its b, layer after layer.
__device__ __forceinline__ long update_elements(const Layer& layer) {
    return (long)layer.n_out * layer.n_in + layer.n_out;
}

__device__ void update_phase(const Layer* layers, int n_layers, const Step& s) {
    for (int item = blockIdx.x;; item += gridDim.x) {
        int l = 0, first_item = 0;
        for (; l < n_layers; ++l) {
            const int items = (int)((update_elements(layers[l]) + UPDATE_CHUNK - 1) / UPDATE_CHUNK);
            if (item < first_item + items) break;
            first_item += items;
        }
        if (l == n_layers) return;
        const Layer& layer = layers[l];
        const long weights = (long)layer.n_out * layer.n_in, total = update_elements(layer);
        const long begin = (long)(item - first_item) * UPDATE_CHUNK;
        const long end = begin + UPDATE_CHUNK < total ? begin + UPDATE_CHUNK : total;
        for (long e = begin + threadIdx.x; e < end; e += THREADS) {
            if (e < weights) {
                const float w = layer.W[s.parity][e];
                layer.W[s.parity ^ 1][e] = w - s.lr * (__ldcg(layer.dW + e) + s.weight_decay * w);
            } else {
                const long j = e - weights;
                layer.b[s.parity ^ 1][j] = layer.b[s.parity][j] - s.lr * __ldcg(layer.db + j);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
    fused_step(const Layer* layers_in, const Phase* phases_in, int n_phases, int n_layers, const float* X,
               const float* T, float* loss_rows, int batch, int n_steps, int activation, int loss_kind, int parity,
               float lr, float weight_decay, unsigned int* barrier, unsigned long long* profile) {
    extern __shared__ __align__(16) float smem[];
    // Descriptors are read at every phase by every thread: one copy in shared memory saves two dependent
    // trips to L2 per phase.
    __shared__ Layer layer_table[MAX_LAYERS];
    __shared__ Phase phase_table[MAX_PHASES];
    for (int i = threadIdx.x; i < n_layers * (int)(sizeof(Layer) / 4); i += THREADS)
        reinterpret_cast<int*>(layer_table)[i] = __ldg(reinterpret_cast<const int*>(layers_in) + i);
    for (int i = threadIdx.x; i < n_phases * (int)(sizeof(Phase) / 4); i += THREADS)
        reinterpret_cast<int*>(phase_table)[i] = __ldg(reinterpret_cast<const int*>(phases_in) + i);
    __syncthreads();
    const Layer* layers = layer_table;
    Step s = {X, T, loss_rows, batch, activation, loss_kind, parity, lr, weight_decay};
    const long x_stride = (long)batch * layers[0].n_in, t_stride = (long)batch * layers[n_layers - 1].n_out;
    // The counter's top bit as the launch begins (no block can pass the first barrier before all read it).
    unsigned int top_bit = threadIdx.x == 0 ? load_acquire(barrier) & 0x80000000u : 0u;
    const bool profiling = profile != nullptr && blockIdx.x == 0 && threadIdx.x == 0;
    if (profiling) profile[0] = global_time();
    for (int step = 0; step < n_steps; ++step) {
        // Step `step` trains on the batch-row block `step` of X and T, from the weights the previous step wrote.
        s.X = X + step * x_stride;
        s.T = T ? T + step * t_stride : nullptr;
        s.parity = parity ^ (step & 1);
        for (int p = 0; p < n_phases; ++p) {
            const Phase& phase = phase_table[p];
            const Layer& out_layer = layers[n_layers - 1];
            switch (phase.kind) {
                case PHASE_FORWARD:
                    forward_phase(layers, n_layers, phase, s, smem);
                    break;
                case PHASE_FORWARD_HEAD: {
                    const Layer* below = (phase.flags & FLAG_HEAD_INPUT) ? &layers[n_layers - 2] : nullptr;
                    const bool with_hidden = phase.flags & FLAG_HEAD_HIDDEN;  // only with a layer below
                    HiddenRow hidden = {nullptr, nullptr, smem + HEAD_SUMS};
                    if (with_hidden) {
                        hidden.layer = &layers[n_layers - 2];
                        hidden.input = layer_input(layers, n_layers - 2, s);
                    }
                    for (int r = blockIdx.x; r < batch; r += gridDim.x)
                        forward_head_row(out_layer, below, layer_input(layers, n_layers - 1, s), r, s,
                                         phase.flags & FLAG_DELTA, smem, hidden, with_hidden);
                    break;
                }
                case PHASE_HEAD:
                    for (int r = blockIdx.x * WARPS + threadIdx.x / 32; r < batch; r += gridDim.x * WARPS) {
                        const long at = (long)r * out_layer.n_out;
                        output_row(out_layer.A + at, nullptr, s.T ? s.T + at : nullptr,
                                   (phase.flags & FLAG_DELTA) ? out_layer.dZ + at : nullptr, loss_rows + r,
                                   out_layer.n_out, loss_kind, (float)batch);
                    }
                    break;
                case PHASE_OUTPUT_DELTA: {
                    if (phase.flags & FLAG_HEAD_INPUT) {  // a block per sample, as FORWARD_HEAD computes it
                        for (int r = blockIdx.x; r < batch; r += gridDim.x) {
                            HeadColumns c;
                            load_head_columns(out_layer, layers[n_layers - 2], r, s, c);
                            __syncthreads();  // the previous sample's row of dZ has been read
                            if (threadIdx.x < out_layer.n_out) {
                                const long at = (long)r * out_layer.n_out + threadIdx.x;
                                const float d = (__ldcg(out_layer.A + at) - s.T[at]) / (float)batch;
                                out_layer.dZ[at] = d;
                                smem[threadIdx.x] = d;
                            }
                            __syncthreads();
                            head_input_gradient_row(out_layer, layers[n_layers - 2], r, s, smem, c);
                        }
                        break;
                    }
                    const long total = (long)batch * out_layer.n_out;
                    for (long e = blockIdx.x * (long)THREADS + threadIdx.x; e < total; e += (long)gridDim.x * THREADS)
                        out_layer.dZ[e] = (__ldcg(out_layer.A + e) - s.T[e]) / (float)batch;
                    break;
                }
                case PHASE_BACKWARD:
                    backward_phase(layers, phase, s, smem);
                    break;
                case PHASE_UPDATE:
                    update_phase(layers, n_layers, s);
                    break;
            }
            if (p + 1 < n_phases || step + 1 < n_steps) grid_barrier(barrier, top_bit);
            if (profiling) profile[1 + step * n_phases + p] = global_time();
        }
    }
}
