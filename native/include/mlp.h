/* mlp.h: a fully connected network trained with mini-batch SGD, in float32, serial or OpenMP.
 *
 * The same sources build three libraries: libmlp_omp.so (OpenMP), libmlp_serial.so (no OpenMP runtime;
 * thread counts are accepted and the work runs on the calling thread) and libmlp_blas.so (as serial, but
 * every matrix product is OpenBLAS's cblas_sgemm on the given number of OpenBLAS threads).
 *
 * Conventions (shared with the Python package):
 *   - every matrix is a flat, contiguous, row-major float32 buffer;
 *   - layer l (1..n_layers) has weights W of shape (sizes[l], sizes[l-1]) and bias b of shape (sizes[l]);
 *     Z = A_prev W^T + b; hidden layers apply the activation, the output layer softmax (MLP_SOFTMAX_CE) or
 *     a sigmoid (MLP_SIGMOID_BCE);
 *   - the loss is the batch mean, so the output gradient is (P - T) / batch;
 *   - the update is W -= lr * (dW + weight_decay * W), b -= lr * db.
 *
 * Every function returning int returns MLP_OK (0) or an error code; mlp_error_message() explains a code.
 * Nothing is allocated after creation (but the optional timeline, when switched on): the model owns
 * parameters, gradients, activations, logits and all workspace, sized for the max_batch and max_threads
 * given to mlp_model_create.
 *
 * Determinism: OpenMP work is split over output elements only, never inside a sum, so results are
 * bit-identical for any thread count (libmlp_blas: whatever OpenBLAS guarantees).
 *
 * Only the region between the CDEF markers is read by the Python loader (cffi): keep it free of
 * preprocessor lines.
 */
#ifndef MLP_H
#define MLP_H

#ifdef __cplusplus
extern "C" {
#endif

/* BEGIN CDEF */

enum mlp_status {
    MLP_OK = 0,
    MLP_ERR_NULL = 1,        /* a required pointer is NULL */
    MLP_ERR_SIZE = 2,        /* a size, leading dimension or layer index is out of range */
    MLP_ERR_THREADS = 3,     /* thread count < 1 or above the max_threads given at creation */
    MLP_ERR_KERNEL = 4,      /* unknown matrix-product version */
    MLP_ERR_ISA = 5,         /* instruction set unknown or not supported by this CPU */
    MLP_ERR_ARG = 6,         /* unknown activation, loss or transposition, or a non-finite step size */
    MLP_ERR_MEMORY = 7,      /* allocation failed at creation */
    MLP_ERR_STATE = 8        /* stage called out of order (backprop before forward, update before backprop) */
};

/* Upper bound on any thread count (a guard against runaway values, far above any machine here). */
enum { MLP_THREADS_LIMIT = 1024 };

enum mlp_activation { MLP_SIGMOID = 0, MLP_TANH = 1, MLP_RELU = 2 };

enum mlp_loss { MLP_SOFTMAX_CE = 0, MLP_SIGMOID_BCE = 1 };

/* The matrix-product ladder, numbered in the order it was built. */
enum mlp_kernel {
    MLP_KERNEL_NAIVE = 1,    /* triple loop, one dot product per output element */
    MLP_KERNEL_BLOCKED = 2,  /* loops reordered for a contiguous inner loop, cache-blocked */
    MLP_KERNEL_PACKED = 3    /* packed panels + register-blocked SIMD micro-kernel, fused epilogues */
};

/* A forward layer of a batch of at most MLP_DOT_ROWS rows and at least MLP_DOT_MIN_COLS outputs is computed as
 * dot products of the batch's rows with W's rows, neither packed (the packed rung's other products pack W^T and
 * would read each packed value at most that many times); its sums run in another order than the micro-kernel's,
 * so those rows' bits differ from the same rows' in a taller batch. */
enum { MLP_DOT_ROWS = 4, MLP_DOT_MIN_COLS = 64 };

/* Micro-kernel instruction set, chosen at run time (never from the build machine). */
enum mlp_isa { MLP_ISA_AUTO = 0, MLP_ISA_PORTABLE = 1, MLP_ISA_AVX2 = 2, MLP_ISA_AVX512 = 3 };

/* What mlp_model_buffer returns. */
enum mlp_buffer {
    MLP_BUF_WEIGHTS = 0,      /* (sizes[l], sizes[l-1]) */
    MLP_BUF_BIAS = 1,         /* (sizes[l]) */
    MLP_BUF_GRAD_WEIGHTS = 2, /* (sizes[l], sizes[l-1]) */
    MLP_BUF_GRAD_BIAS = 3,    /* (sizes[l]) */
    MLP_BUF_ACTIVATION = 4,   /* (max_batch, sizes[l]): layer l's output; for the last layer, probabilities */
    MLP_BUF_LOGITS = 5        /* (max_batch, sizes[n_layers]): the output layer's pre-activation (l ignored) */
};

typedef struct mlp_model mlp_model;
typedef struct mlp_gemm_workspace mlp_gemm_workspace;

const char *mlp_error_message(int status);

/* 1 in libmlp_omp, 0 in libmlp_serial and libmlp_blas. */
int mlp_has_openmp(void);

/* The first 16 hex digits of the SHA-256 of this header as the library was built from it: the Python loader
 * refuses a library built from another header (a stale build, whose structures may not match). */
const char *mlp_header_hash(void);

/* 1 in libmlp_blas (every matrix product by OpenBLAS's cblas_sgemm on its own threads), else 0. */
int mlp_has_blas(void);

/* The instruction set MLP_ISA_AUTO resolves to on this CPU. */
int mlp_best_isa(void);

/* 1 if this CPU can run `isa`, else 0. */
int mlp_isa_supported(int isa);

/* sizes has n_layers + 1 entries (inputs first). kernel: an mlp_kernel; isa: an mlp_isa. */
int mlp_model_create(mlp_model **out, int n_layers, const int *sizes, int activation, int loss,
                     int max_batch, int max_threads, int kernel, int isa);

/* Frees everything; NULL is allowed. */
void mlp_model_destroy(mlp_model *model);

/* The instruction set the model's kernels run with (never MLP_ISA_AUTO). */
int mlp_model_isa(const mlp_model *model);

/* The plan of the packed rung's fused train_step on many threads, named by the change logged in
 * native/SCALING.md that introduced it: 12 (the default: a rule picking 16 or 8 per step, see mlp_step_plan),
 * or 8, 11 or 16 (11 with W^T packed by the owners of W's rows) for every step. The environment variable
 * MLP_STEP_PLAN, read at creation, picks one (for comparing plans in one run); unset or not a kept plan, the
 * default. Results never depend on it. 0 for a NULL model. */
int mlp_model_plan(const mlp_model *model);

/* The plan a train_step with these threads and batch runs: 16 (plan 16, or plan 12's rule on at least 8
 * threads, a batch of more than MLP_DOT_ROWS and at most 144 rows and three layers or more, on the packed rung
 * without BLAS), 11 (the hidden layers transposed, each thread its own rows: plan 11, or plan 16 where it has no
 * copy of W^T to write; the same batches) or 8 (everything else). 0 for a NULL model or arguments that
 * mlp_train_step would refuse. */
int mlp_step_plan(const mlp_model *model, int threads, int batch);

/* Copies layer l's (1..n_layers) weights and bias in. */
int mlp_model_set_layer(mlp_model *model, int layer, const float *weights, const float *bias);

/* A model-owned buffer (see enum mlp_buffer), or NULL for a bad model, kind or layer. */
float *mlp_model_buffer(mlp_model *model, int kind, int layer);

/* Every layer's gradients in one contiguous block laid out [dW_1, db_1, dW_2, db_2, ..., dW_L, db_L]
 * (row-major, layer order), so a data-parallel all-reduce averages them in one call, in place;
 * MLP_BUF_GRAD_WEIGHTS and MLP_BUF_GRAD_BIAS point into it. *count (if count is not NULL) gets its length
 * in floats. NULL (and a count of 0) for a NULL model. */
float *mlp_model_gradient_block(mlp_model *model, long long *count);

/* Fills with NaN every buffer the next stage writes, keeping what it reads: after a forward, the
 * gradients; after a backprop, the activations and logits; otherwise both. Catches unwritten elements. */
int mlp_poison(mlp_model *model);

/* x: (batch, sizes[0]); targets: (batch, sizes[n_layers]) or NULL; *loss gets the mean loss (NaN without
 * targets). loss may be NULL. */
int mlp_forward(mlp_model *model, int threads, int batch, const float *x, const float *targets,
                double *loss);

/* Gradients for the batch of the last forward (same x, targets and batch). */
int mlp_backprop(mlp_model *model, int threads, int batch, const float *x, const float *targets);

/* Backprop one layer at a time, so a layer's gradients can be all-reduced while the layers below are
 * computed: after a forward (or a completed backprop) call it for layer = n_layers, n_layers - 1, ..., 1
 * in that order, with the forward's batch. Each call writes that layer's dW and db and the dZ of the layer
 * below; the result is bit-identical to mlp_backprop. MLP_ERR_STATE when called out of order; update is
 * accepted once layer 1 is done. */
int mlp_backprop_layer(mlp_model *model, int threads, int batch, const float *x, const float *targets,
                       int layer);

int mlp_update(mlp_model *model, int threads, float lr, float weight_decay);

/* Forward, backprop and update in one parallel region. */
int mlp_train_step(mlp_model *model, int threads, int batch, const float *x, const float *targets,
                   float lr, float weight_decay, double *loss);

/* Standalone matrix product C = op(A) op(B), op(X) = X or X^T, for the ladder benchmark.
 * C is (m, n); op(A) is (m, k); op(B) is (k, n). A is stored (m, k) or, transposed, (k, m), with row
 * stride lda; likewise B and ldb; C has row stride ldc. The workspace holds the packing buffers for
 * m <= max_m, n <= max_n and threads <= max_threads. */
int mlp_gemm_workspace_create(mlp_gemm_workspace **out, int max_m, int max_n, int max_threads, int isa);
void mlp_gemm_workspace_destroy(mlp_gemm_workspace *workspace);
int mlp_gemm(mlp_gemm_workspace *workspace, int kernel, int threads, int transpose_a, int transpose_b,
             int m, int n, int k, const float *a, int lda, const float *b, int ldb, float *c, int ldc);

/* A per-thread timeline of the last stage call (forward, backprop, backprop_layer, update or train_step),
 * for finding where a step's time goes on many cores. Off by default; when off it costs one branch per
 * piece of work. Times are nanoseconds since the call began (read on the calling thread before the fork). */
enum mlp_event_kind {
    MLP_EV_FORK = 0,          /* from the call's start until this thread began work */
    MLP_EV_FORWARD = 1,       /* this thread's share of a layer's forward product (bias + activation fused) */
    MLP_EV_OUTPUT_ROWS = 2,   /* softmax / sigmoid and loss of rows (with the output gradient in a step) */
    MLP_EV_OUTPUT_GRAD = 3,   /* the output gradient of rows (backprop called on its own) */
    MLP_EV_WEIGHT_GRAD = 4,   /* share of a layer's dW = dZ^T A_prev */
    MLP_EV_BIAS_GRAD = 5,     /* share of a layer's db (columns) */
    MLP_EV_INPUT_GRAD = 6,    /* share of the layer below's dZ = (dZ W) * act' */
    MLP_EV_UPDATE = 7,        /* share of a layer's SGD update */
    MLP_EV_BARRIER = 8,       /* waiting at a barrier (layer: the layer whose work it closes) */
    MLP_EV_JOIN = 9,          /* calling thread only: from its last work until the team had joined */
    MLP_EV_PACK_WEIGHTS = 10, /* share of packing a product's weights once for the whole team (plan 16: this
                               * thread's rows of W, packed as the layer's input gradient reads W^T) */
    MLP_EV_ACTIVATION_ROWS = 11 /* plans 11 and 16: this thread's rows of a hidden activation stored batch-major */
};

typedef struct {
    long long start_ns, end_ns;
    long long pack_ns;        /* of [start, end): time spent packing operands (products of rung 3) */
    long long work;           /* multiply-adds incl. tile padding (products), elements (others), 0 */
    int kind;                 /* an mlp_event_kind */
    int layer;                /* 1..n_layers; 0 when none */
    int thread;
    int team;                 /* threads of the call */
} mlp_event;

/* events_per_thread > 0 switches the timeline on (allocating that many events per thread of max_threads;
 * later events of a call are dropped and counted), 0 switches it off and frees it. */
int mlp_timeline_enable(mlp_model *model, int events_per_thread);

/* Copies the last call's events, ordered by thread then time, into events[0..capacity); *count gets how many
 * there are (all of them, even past capacity), *dropped (if not NULL) how many did not fit per thread.
 * MLP_ERR_STATE when the timeline is off; events may be NULL with capacity 0 to ask for the count. */
int mlp_timeline_read(const mlp_model *model, mlp_event *events, int capacity, int *count, int *dropped);

/* A CUDA kernel launch from a prebuilt record, so that a launch from Python costs one foreign call of one
 * argument (a fused training step takes microseconds on the GPU: converting the driver's eleven arguments in
 * Python took as long as the driver's own work). The library does not link the CUDA driver: the record carries
 * libcuda's cuLaunchKernel and cuLaunchKernelEx, whose CUresult mlp_launch_kernel returns (1,
 * CUDA_ERROR_INVALID_VALUE, for a NULL record or a NULL launch function). */
typedef int (*mlp_cu_launch_kernel)(void *function, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                                    unsigned block_x, unsigned block_y, unsigned block_z, unsigned shared_bytes,
                                    void *stream, void **params, void **extra);
typedef int (*mlp_cu_launch_kernel_ex)(const void *config, void *function, void **params, void **extra);

typedef struct {
    mlp_cu_launch_kernel launch;       /* used when config is NULL */
    mlp_cu_launch_kernel_ex launch_ex; /* used when config is set */
    const void *config;                /* a CUlaunchConfig (thread-block clusters), or NULL */
    void *function;                    /* the CUfunction */
    unsigned grid[3], block[3];        /* ignored with config, which holds its own */
    unsigned shared_bytes;
    void *stream;                      /* the CUstream; NULL: the legacy default stream */
    void **params;                     /* the address of each of the kernel's parameters, in order */
} mlp_kernel_launch;

int mlp_launch_kernel(const mlp_kernel_launch *launch);

/* END CDEF */

#ifdef __cplusplus
}
#endif

#endif /* MLP_H */
