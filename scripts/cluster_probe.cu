// Probe of a cluster-resident layer (Hopper thread-block clusters), measured before any rung is built on it.
//
// One cluster of C blocks stands for the whole network on BATCH rows of the batch (the whole batch of 32, or
// the share of one of several clusters that split it): block `rank` owns R consecutive output rows of every
// layer (R = padded 300 / C, a multiple of 4) with their weights and biases in its shared memory, and every
// block holds the layer's whole input activation (BATCH x WPAD) in shared memory. A layer is: each block
// computes its BATCH x R slice of tanh(A W^T + b), the slices are exchanged so every block holds the next
// activation, one cluster barrier. What costs what is measured by modes that do parts of it:
//   MODE_SYNC         the cluster barrier alone
//   MODE_PUSH_SCALAR  every block stores its slice into every peer's next buffer, 4 bytes a store, + barrier
//   MODE_PUSH_VEC     the same with 16-byte stores
//   MODE_PULL_VEC     every block writes its slice locally, barrier, then loads every peer's slice (16 bytes)
//   MODE_PUSH_BULK    every block has the copy engine send its slice to every peer (cp.async.bulk), each
//                     copy completing on the receiver's mbarrier; a block waits on its own mbarrier only
//   MODE_COMPUTE      the layer's product and tanh only, a block barrier between layers (no exchange)
//   MODE_LAYER_PUSH   product + tanh + 16-byte push + barrier: one forward layer of the prototype
//   MODE_LAYER_PULL   product + tanh + barrier + 16-byte pull
//   MODE_LAYER_BULK   product + tanh + bulk copies + mbarrier wait
// Activation buffers alternate between layers, so one barrier per layer suffices: a block overwrites a buffer
// only after the barrier that ends every read of it.
//
// `variant` picks the product's thread mapping: layer_slice with thread tiles (batch rows x output rows) 0 = 4 x 1,
// 1 = 8 x 2, 2 = 16 x 2, k split over the threads a small tile count leaves idle; 3 = layer_slice_lanes;
// 4 = layer_slice_rows<32> (a warp per output row), 5 = layer_slice_rows<8> (four output rows a warp),
// 6 = layer_slice_outputs (one output per thread, its whole k range; the rows a block holds fixed at compile time)
// with its k loop rolled (results/gpu-dev 30 ran it with each slice's five steps unrolled), 7 = the same with its
// k loop unrolled 20 steps at a time.
// Thread 0 of rank 0 reads %globaltimer and clock64 before the first and after the last layer; ns[0] and ns[1] get
// the differences (their ratio is the SM clock the run had).
// Layer i uses the weights of layer i % layers_held (as many layers as fit in shared memory); `out` receives the
// last activation (BATCH x 300), checked on the host against a float64 chain of the same layers.
#include <cooperative_groups.h>

namespace cg = cooperative_groups;

#ifndef BATCH
#define BATCH 32  // rows of the batch one cluster holds (4, 8, 16 or 32: several clusters may share a batch)
#endif
#define THREADS 256
#define WARPS (THREADS / 32)
#define WIDTH 300
#define STRIDE_PAD 4  // each smem row shifted by 16 bytes: 16-byte loads of 8 consecutive rows hit all banks

#define MODE_SYNC 0
#define MODE_PUSH_SCALAR 1
#define MODE_PUSH_VEC 2
#define MODE_PULL_VEC 3
#define MODE_PUSH_BULK 4
#define MODE_COMPUTE 5
#define MODE_LAYER_PUSH 6
#define MODE_LAYER_PULL 7
#define MODE_LAYER_BULK 8

__device__ __forceinline__ unsigned long long globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ unsigned shared_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// The shared::cluster address of `p`'s counterpart in block `peer` of the cluster.
__device__ __forceinline__ unsigned remote_address(const void* p, unsigned peer) {
    unsigned address;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(address) : "r"(shared_address(p)), "r"(peer));
    return address;
}

__device__ __forceinline__ void wait_parity(const unsigned long long* bar, unsigned parity) {
    unsigned done;
    do {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(shared_address(bar)), "r"(parity)
            : "memory");
    } while (!done);
}

// This block's BATCH x R slice of tanh(in W^T + b). Thread tiles of TB batch rows x TJ output rows (the TJ rows
// R / TJ apart, so neighbouring lanes read neighbouring weight rows); when there are fewer tiles than threads,
// KS threads share a tile's k range and their partial sums are added in ks order (a fixed order, as everywhere).
template <int TB, int TJ>
__device__ __forceinline__ void layer_slice(const float* in, const float* w, const float* bias, float* mine,
                                            float* partial, int R, int stride, int wpad, int rank) {
    const int tiles_j = R / TJ, tiles = (BATCH / TB) * tiles_j;
    const int ks_count = tiles >= THREADS ? 1 : THREADS / tiles;
    const int R4 = R / 4, k4_count = wpad / 4, k4_chunk = (k4_count + ks_count - 1) / ks_count;
    for (int t = threadIdx.x; t < tiles * ks_count; t += THREADS) {
        const int tile = t % tiles, ks = t / tiles;
        const int jt = tile % tiles_j, r0 = (tile / tiles_j) * TB;
        const int k4_begin = ks * k4_chunk, k4_end = min(k4_count, k4_begin + k4_chunk);
        float acc[TB][TJ] = {};
        int s = k4_begin / R4, kk = k4_begin % R4;  // slice and position in it of k4 (slice-major activations)
        for (int k4 = k4_begin; k4 < k4_end; ++k4) {
            const float* a_k = in + s * BATCH * R + kk * 4;
            if (++kk == R4) kk = 0, ++s;
            float4 wv[TJ];
#pragma unroll
            for (int q = 0; q < TJ; ++q) wv[q] = reinterpret_cast<const float4*>(w + (jt + q * tiles_j) * stride)[k4];
#pragma unroll
            for (int r = 0; r < TB; ++r) {
                const float4 a = *reinterpret_cast<const float4*>(a_k + (r0 + r) * R);
#pragma unroll
                for (int q = 0; q < TJ; ++q)
                    acc[r][q] = fmaf(a.x, wv[q].x, fmaf(a.y, wv[q].y, fmaf(a.z, wv[q].z, fmaf(a.w, wv[q].w, acc[r][q]))));
            }
        }
        if (ks_count == 1) {
#pragma unroll
            for (int q = 0; q < TJ; ++q) {
                const int j = jt + q * tiles_j;
                const bool real = rank * R + j < WIDTH;
#pragma unroll
                for (int r = 0; r < TB; ++r) mine[(r0 + r) * R + j] = real ? tanhf(acc[r][q] + bias[j]) : 0.0f;
            }
        } else {
#pragma unroll
            for (int r = 0; r < TB; ++r)
#pragma unroll
                for (int q = 0; q < TJ; ++q) partial[(ks * BATCH + r0 + r) * R + jt + q * tiles_j] = acc[r][q];
        }
    }
    if (ks_count > 1) {
        __syncthreads();
        for (int e = threadIdx.x; e < BATCH * R; e += THREADS) {
            float sum = 0.0f;
            for (int ks = 0; ks < ks_count; ++ks) sum += partial[ks * BATCH * R + e];
            mine[e] = rank * R + e % R < WIDTH ? tanhf(sum + bias[e % R]) : 0.0f;
        }
    }
}

// The same slice with the batch's 32 rows as the lanes of a warp and the k range split over the warps: a weight
// value is one broadcast load for the whole warp and an activation load is 16 bytes from each of 32 rows, so a
// warp does RJ x 128 multiply-adds per RJ + 4 shared-memory wavefronts. RJ output rows per pass are held in
// registers; the warps' partial sums (partial[warp][j][lane]) are added in warp order.
template <int RJ>
__device__ __forceinline__ void layer_slice_lanes(const float* in, const float* w, const float* bias, float* mine,
                                                  float* partial, int R, int stride, int wpad, int rank) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int R4 = R / 4, k4_count = wpad / 4, k4_chunk = (k4_count + WARPS - 1) / WARPS;
    const int k4_begin = warp * k4_chunk, k4_end = min(k4_count, k4_begin + k4_chunk);
    for (int j0 = 0; j0 < R; j0 += RJ) {
        float acc[RJ] = {};
        int s = k4_begin / R4, kk = k4_begin % R4;
        for (int k4 = k4_begin; k4 < k4_end; ++k4) {
            const float4 a = *reinterpret_cast<const float4*>(in + s * BATCH * R + lane * R + kk * 4);
            if (++kk == R4) kk = 0, ++s;
#pragma unroll
            for (int q = 0; q < RJ; ++q) {
                const float4 wv = reinterpret_cast<const float4*>(w + (j0 + q) * stride)[k4];
                acc[q] = fmaf(a.x, wv.x, fmaf(a.y, wv.y, fmaf(a.z, wv.z, fmaf(a.w, wv.w, acc[q]))));
            }
        }
#pragma unroll
        for (int q = 0; q < RJ; ++q) partial[(warp * R + j0 + q) * BATCH + lane] = acc[q];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < BATCH * R; e += THREADS) {
        const int j = e / BATCH, row = e % BATCH;
        float sum = 0.0f;
        for (int k = 0; k < WARPS; ++k) sum += partial[(k * R + j) * BATCH + row];
        mine[row * R + j] = rank * R + j < WIDTH ? tanhf(sum + bias[j]) : 0.0f;
    }
}

// The same slice with LANES lanes per output row (32: a warp per row; 8: four rows a warp): the lanes of a row
// split its k range (16 bytes at a time, lane-strided) and hold one sum per batch row, added across them by a
// fixed shuffle tree of log2(LANES) steps, the tanh by the row's first lane; no shared-memory partial sums and no
// block barrier, so for a few batch rows the product's latency is its loads and one short shuffle tree.
template <int LANES>
__device__ __forceinline__ void layer_slice_rows(const float* in, const float* w, const float* bias, float* mine,
                                                 int R, int stride, int wpad, int rank) {
    constexpr int ROWS_PER_WARP = 32 / LANES;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int part = lane % LANES, R4 = R / 4, k4_count = wpad / 4;
    for (int j0 = warp * ROWS_PER_WARP; j0 < R; j0 += WARPS * ROWS_PER_WARP) {
        const int j = j0 + lane / LANES;
        const bool here = j < R;  // every lane takes part in the shuffles; rows past R add nothing
        float acc[BATCH] = {};
        for (int k4 = part; here && k4 < k4_count; k4 += LANES) {
            const float4 wv = reinterpret_cast<const float4*>(w + j * stride)[k4];
            const float* a_k = in + (k4 / R4) * BATCH * R + (k4 % R4) * 4;
#pragma unroll
            for (int r = 0; r < BATCH; ++r) {
                const float4 a = *reinterpret_cast<const float4*>(a_k + r * R);
                acc[r] = fmaf(a.x, wv.x, fmaf(a.y, wv.y, fmaf(a.z, wv.z, fmaf(a.w, wv.w, acc[r]))));
            }
        }
#pragma unroll
        for (int offset = LANES / 2; offset > 0; offset /= 2)
#pragma unroll
            for (int r = 0; r < BATCH; ++r) acc[r] += __shfl_down_sync(0xffffffffu, acc[r], offset, LANES);
        if (here && part == 0) {
            const bool real = rank * R + j < WIDTH;
#pragma unroll
            for (int r = 0; r < BATCH; ++r) mine[r * R + j] = real ? tanhf(acc[r] + bias[j]) : 0.0f;
        }
    }
}

// One output of the slice per thread (batch row r, output row j), its whole k range: no k split, so no partial
// sums in shared memory and no block barrier. R_ (the rows a block holds) is a compile-time constant and the
// cluster's R_ C = K_ columns with it (320 at C = 16 and 8), so every k step's slice and offset is too; the loop
// over k is unrolled UNROLL steps at a time so that many steps' loads are in flight at once; the four lanes of a
// 16-byte step each add into their own sum (four independent chains), added at the end in a fixed order.
template <int R_, int K_, int UNROLL>
__device__ __forceinline__ void layer_slice_outputs(const float* in, const float* w, const float* bias, float* mine,
                                                    int stride, int rank) {
    constexpr int R4 = R_ / 4, K4 = K_ / 4;
    for (int t = threadIdx.x; t < BATCH * R_; t += THREADS) {
        const int j = t % R_, r = t / R_;
        const float4* w_row = reinterpret_cast<const float4*>(w + j * stride);
        const float* a_row = in + r * R_;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma unroll UNROLL
        for (int q = 0; q < K4; ++q) {
            const float4 a = reinterpret_cast<const float4*>(a_row + (q / R4) * BATCH * R_)[q % R4];
            const float4 wv = w_row[q];
            s0 = fmaf(a.x, wv.x, s0);
            s1 = fmaf(a.y, wv.y, s1);
            s2 = fmaf(a.z, wv.z, s2);
            s3 = fmaf(a.w, wv.w, s3);
        }
        mine[r * R_ + j] = rank * R_ + j < WIDTH ? tanhf((s0 + s1) + (s2 + s3) + bias[j]) : 0.0f;
    }
}

// Shared memory: act[2][C][BATCH][R] (slice-major: slice s holds columns s R .. s R + R - 1, so a block's output is
// one contiguous run of BATCH R floats, written straight into its own slice of the next buffer) | the mbarriers of
// the two buffers | weights[layers_held][R][stride] | bias[layers_held][R] | partial[partials][R] (k-split sums).
extern "C" __global__ void __launch_bounds__(THREADS, 1)
    cluster_probe(int mode, int variant, int reps, int R, int layers_held, const float* __restrict__ W,
                  const float* __restrict__ b, const float* __restrict__ x, float* __restrict__ out,
                  unsigned long long* __restrict__ ns) {
    extern __shared__ __align__(16) float smem[];
    cg::cluster_group cluster = cg::this_cluster();
    const int C = cluster.num_blocks();
    const int rank = cluster.block_rank();
    const int wpad = C * R, stride = wpad + STRIDE_PAD, slice_floats = BATCH * R;
    float* act = smem;
    unsigned long long* bars = reinterpret_cast<unsigned long long*>(act + 2 * BATCH * wpad);
    float* weights = reinterpret_cast<float*>(bars + 2);
    float* bias = weights + layers_held * R * stride;
    float* partial = bias + layers_held * R;

    // Load: the input activation (zero beyond WIDTH) and this block's rows of each held layer.
    for (int i = threadIdx.x; i < BATCH * wpad; i += THREADS) {
        const int s = i / slice_floats, r = (i / R) % BATCH, k = s * R + i % R;
        act[i] = k < WIDTH ? x[r * WIDTH + k] : 0.0f;
        act[BATCH * wpad + i] = 0.0f;
    }
    for (int i = threadIdx.x; i < layers_held * R * stride; i += THREADS) {
        const int l = i / (R * stride), j = (i / stride) % R, k = i % stride;
        const int row = rank * R + j;
        weights[i] = (row < WIDTH && k < WIDTH) ? W[(l * WIDTH + row) * WIDTH + k] : 0.0f;
    }
    for (int i = threadIdx.x; i < layers_held * R; i += THREADS) {
        const int l = i / R, row = rank * R + i % R;
        bias[i] = row < WIDTH ? b[l * WIDTH + row] : 0.0f;
    }
    if (threadIdx.x < 2) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(bars + threadIdx.x)) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    cluster.sync();

    const bool computes = mode == MODE_COMPUTE || mode == MODE_LAYER_PUSH || mode == MODE_LAYER_PULL ||
                          mode == MODE_LAYER_BULK;
    const bool bulk = mode == MODE_PUSH_BULK || mode == MODE_LAYER_BULK;
    unsigned long long start = 0, start_cycles = 0;
    if (rank == 0 && threadIdx.x == 0) start = globaltimer(), start_cycles = clock64();
    for (int it = 0; it < reps; ++it) {
        const float* in = act + (it & 1) * BATCH * wpad;
        float* next = act + ((it + 1) & 1) * BATCH * wpad;
        float* mine = next + rank * slice_floats;
        unsigned long long* bar = bars + ((it + 1) & 1);
        // Bulk mode: this block expects every block's slice of the next buffer (its own included) as tx bytes.
        if (bulk && threadIdx.x == 0)
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)),
                         "r"(C * slice_floats * 4) : "memory");
        if (computes) {
            const float* w_layer = weights + (it % layers_held) * R * stride;
            const float* b_layer = bias + (it % layers_held) * R;
            // A mapping needs at least its tile's batch rows (the lanes: 32); the host launches no other.
            if (variant == 6 && R == 20 && wpad == 320)
                layer_slice_outputs<20, 320, 1>(in, w_layer, b_layer, mine, stride, rank);
            else if (variant == 6 && R == 40 && wpad == 320)
                layer_slice_outputs<40, 320, 1>(in, w_layer, b_layer, mine, stride, rank);
            else if (variant == 7 && R == 20 && wpad == 320)
                layer_slice_outputs<20, 320, 20>(in, w_layer, b_layer, mine, stride, rank);
            else if (variant == 7 && R == 40 && wpad == 320)
                layer_slice_outputs<40, 320, 20>(in, w_layer, b_layer, mine, stride, rank);
            else if (variant == 4)
                layer_slice_rows<32>(in, w_layer, b_layer, mine, R, stride, wpad, rank);
            else if (variant == 5)
                layer_slice_rows<8>(in, w_layer, b_layer, mine, R, stride, wpad, rank);
            else if (variant == 0)
                layer_slice<4, 1>(in, w_layer, b_layer, mine, partial, R, stride, wpad, rank);
#if BATCH >= 8
            else if (variant == 1)
                layer_slice<8, 2>(in, w_layer, b_layer, mine, partial, R, stride, wpad, rank);
#endif
#if BATCH >= 16
            else if (variant == 2)
                layer_slice<16, 2>(in, w_layer, b_layer, mine, partial, R, stride, wpad, rank);
#endif
#if BATCH == 32
            else if (R % 20 == 0)
                layer_slice_lanes<20>(in, w_layer, b_layer, mine, partial, R, stride, wpad, rank);
            else
                layer_slice_lanes<4>(in, w_layer, b_layer, mine, partial, R, stride, wpad, rank);
#endif
        }
        if (mode == MODE_COMPUTE) {
            __syncthreads();
            continue;
        }
        if (bulk) {
            // Generic-proxy writes of the slice must be visible to the copy engine that reads it.
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
            __syncthreads();
            if (threadIdx.x < C) {
                const unsigned peer = threadIdx.x;
                const unsigned dst = remote_address(mine, peer), remote_bar = remote_address(bar, peer);
                asm volatile(
                    "cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
                        "r"(dst), "r"(shared_address(mine)), "r"(slice_floats * 4), "r"(remote_bar)
                    : "memory");
            }
            // The buffer is complete when every block's copy into it has landed: no cluster barrier. A peer
            // writes into a buffer again only two layers later, after this block has sent it the layer between.
            wait_parity(bar, (it >> 1) & 1);
            continue;
        }
        if (mode == MODE_PUSH_SCALAR) {
            __syncthreads();
            for (int i = threadIdx.x; i < C * slice_floats; i += THREADS) {
                const int peer = i / slice_floats, e = i % slice_floats;
                cluster.map_shared_rank(mine, peer)[e] = mine[e];
            }
        } else if (mode == MODE_PUSH_VEC || mode == MODE_LAYER_PUSH) {
            __syncthreads();
            const int vecs = slice_floats / 4;
            for (int i = threadIdx.x; i < C * vecs; i += THREADS) {
                const int peer = i / vecs, v = i % vecs;
                reinterpret_cast<float4*>(cluster.map_shared_rank(mine, peer))[v] = reinterpret_cast<const float4*>(mine)[v];
            }
        }
        cluster.sync();
        if (mode == MODE_PULL_VEC || mode == MODE_LAYER_PULL) {
            const int vecs = slice_floats / 4;
            for (int i = threadIdx.x; i < C * vecs; i += THREADS) {
                const int peer = i / vecs, v = i % vecs;
                float* theirs = next + peer * slice_floats;
                reinterpret_cast<float4*>(theirs)[v] = reinterpret_cast<const float4*>(cluster.map_shared_rank(theirs, peer))[v];
            }
            __syncthreads();
        }
    }
    if (rank == 0 && threadIdx.x == 0) ns[0] = globaltimer() - start, ns[1] = clock64() - start_cycles;
    // No block may leave while a peer can still read its shared memory or copy into it.
    cluster.sync();
    const float* last = act + (reps & 1) * BATCH * wpad;
    if (rank == 0)
        for (int i = threadIdx.x; i < BATCH * WIDTH; i += THREADS)
            out[i] = last[(i % WIDTH / R) * slice_floats + i / WIDTH * R + i % WIDTH % R];
}
