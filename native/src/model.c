/* The network: creation, the three stages (forward, backprop, update) and the read-back buffers.
 *
 * Each stage call opens ONE parallel region of `threads` threads (none for one thread) and runs every layer
 * inside it, with a barrier only where a thread reads what others wrote (between layers): on small networks
 * a fork/join per operation would cost more than the arithmetic. Work is always split over output elements
 * (blocks of a product, rows of the output layer, columns of a bias gradient, elements of a parameter), and
 * every sum is computed whole by one thread in a fixed order, so results do not depend on the thread count.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Far above any width or batch of the study; keeps every index product well inside ptrdiff_t. */
enum { SIZE_LIMIT = 1 << 24 };

/* The shared packed weights are kept only up to this size in all (the large network's would take 256 MiB)
 * and used only for batches of at most MC rows: there each thread needs a few tiles per column sliver, so
 * packing its own slivers of W costs as much as it computes with them. */
enum { SHARED_PACK_BYTES = 32 << 20 };

/* Plan 16's packed copies of W^T, every hidden layer above the first together, are allocated at creation up to
 * this size (32 MiB: moons-5h300 needs 1.4 MiB); above it plan 16 runs as plan 11. */
enum { OWNED_COPY_BYTES = 32 << 20 };

typedef enum { STAGE_NONE, STAGE_FORWARD, STAGE_BACKPROP, STAGE_UPDATE } stage_kind;

/* The plan of the fused step: the number of the change of native/SCALING.md it stands for. Plan 8 is
 * changes 1-8 (shared packing of the weights); plan 11 computes the hidden layers transposed, each thread the
 * same rows (outputs) of every product of a layer, for batches of at most MC rows; plan 16 is plan 11 with each
 * hidden layer's W^T packed by the owners of W's rows in the forward pass, so the input gradient reads that copy
 * and W's own lines never leave their owner. Plan 12, the default, is a rule choosing per step from what the
 * 16-core host measured (changes 12 and 16, step_plan_rule). Plans 9, 10, 13, 17, 22, 23, 24 and 25 were
 * measured, earned nothing and are gone. MLP_STEP_PLAN in the environment at creation picks one; unset, empty
 * or not a kept plan: the default. Results never depend on it. */
enum { PLAN_SHARED_PACKING = 8, PLAN_OWNED_ROWS = 11, PLAN_RULE = 12, PLAN_OWNED_COPY = 16,
       PLAN_DEFAULT = PLAN_RULE };

/* Plans 11 and 16: the hidden layers transposed, each thread its own rows. */
static int owns_rows(int plan) { return plan == PLAN_OWNED_ROWS || plan == PLAN_OWNED_COPY; }

/* The owned rows (plan 16) by the rule from this many threads on: on the host plan 11 was faster than plan 8
 * on moons-5h300:32 in every round at 8 and 16 threads, not beyond the rounds' spread at 4, slower at 1 and 2,
 * and plan 16 faster than plan 11 in every round at 8 and 16. */
enum { OWNED_ROWS_MIN_THREADS = 8 };

typedef struct {
    int n_in, n_out;
    float *weights;       /* (n_out, n_in) */
    float *bias;          /* n_out, zero-padded to a multiple of NR_MAX for the micro-kernel epilogue */
    float *grad_weights;  /* (n_out, n_in), inside the model's gradient block */
    float *grad_bias;     /* n_out, right after grad_weights in the block */
    float *output;        /* (max_batch, n_out): activation, or output probabilities for the last layer */
    float *output_t;      /* plan 11, hidden layers: the activation transposed, (n_out, batch); else NULL */
    float *weights_t;     /* plan 16, hidden layers but the first: W^T packed as the input gradient reads it
                           * (gemm_pack_a_shared), n_out x round_up(n_in, mr) floats; else NULL */
} layer;

struct mlp_model {
    int n_layers;
    layer *layers;
    int activation, loss, max_batch, max_threads, kernel;
    const cpu_kernels *kernels;
    float *gradients;     /* every layer's [dW, db] in layer order, one block (one all-reduce, no copy) */
    long long gradient_count;
    float *logits;        /* (max_batch, n_outputs) */
    float *delta[2];      /* dZ of the current layer and of the one below, (max_batch, widest layer) */
    double *row_loss;     /* per-sample loss, summed in order after the parallel region */
    pack_buffers packs;
    int forward_batch;    /* batch size whose activations backprop may use; 0: none */
    int grads_ready;
    int next_backprop_layer; /* the layer mlp_backprop_layer accepts next (n_layers..1); 0: none */
    stage_kind last_stage;
    /* The weights of layers 2..L packed once per step for the whole team (NULL: not allocated, above
     * SHARED_PACK_BYTES): [0], [1] for the forward products, [2], [3] for the input gradients, alternating
     * by layer, each written in the stretch before the one that reads it. */
    float *wpack[4];
    timeline *tl;         /* per-thread timeline of the last stage call; NULL when off */
    int plan;             /* MLP_STEP_PLAN or PLAN_DEFAULT; step_plan says what a step runs */
};

const char *mlp_error_message(int status)
{
    switch (status) {
    case MLP_OK: return "ok";
    case MLP_ERR_NULL: return "a required pointer is NULL";
    case MLP_ERR_SIZE: return "a size, leading dimension or layer index is out of range";
    case MLP_ERR_THREADS: return "thread count must be between 1 and the max_threads given at creation";
    case MLP_ERR_KERNEL: return "unknown matrix-product version (1 naive, 2 blocked, 3 packed)";
    case MLP_ERR_ISA: return "instruction set unknown or not supported by this CPU";
    case MLP_ERR_ARG: return "unknown activation, loss or transposition, or a non-finite step size";
    case MLP_ERR_MEMORY: return "out of memory";
    case MLP_ERR_STATE: return "stage called out of order: forward, then backprop on the same batch, then update";
    default: return "unknown status code";
    }
}

#ifndef MLP_HEADER_HASH
#define MLP_HEADER_HASH "unknown" /* built without the Makefile */
#endif

const char *mlp_header_hash(void)
{
    return MLP_HEADER_HASH;
}

int mlp_has_openmp(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int mlp_has_blas(void)
{
#ifdef MLP_BLAS
    return 1;
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------ creation */

static int max_int(int a, int b) { return a > b ? a : b; }

/* The packed rung's step fuses work into the products' own partitions (the output rows into the last
 * layer's rows, each thread's update into its block of the weight gradient), saving barriers and keeping
 * that work on the thread whose cache holds the data. The other rungs keep the plain structure (their
 * partitions are not rectangles), and so does the BLAS build (OpenBLAS owns the products' partition). */
static int fused_step(const mlp_model *model)
{
    return model->kernel == MLP_KERNEL_PACKED && !mlp_has_blas();
}

/* Floats of plan 16's copy of a layer's W^T: its n_out k steps of round_up(n_in, mr), the packed A of the
 * layer's input gradient. */
static size_t owned_copy_floats(const layer *ly, const cpu_kernels *kernels)
{
    return (size_t)ly->n_out * (size_t)round_up(ly->n_in, kernels->mr);
}

static int plan_from_environment(void)
{
    const char *text = getenv("MLP_STEP_PLAN");
    if (!text || !*text)
        return PLAN_DEFAULT;
    char *end = NULL;
    const long plan = strtol(text, &end, 10);
    const int kept = plan == PLAN_SHARED_PACKING || plan == PLAN_OWNED_ROWS || plan == PLAN_RULE ||
                     plan == PLAN_OWNED_COPY;
    return *end == '\0' && kept ? (int)plan : PLAN_DEFAULT;
}

int mlp_model_plan(const mlp_model *model) { return model ? model->plan : 0; }

void mlp_model_destroy(mlp_model *model)
{
    if (!model)
        return;
    if (model->layers) {
        for (int l = 0; l < model->n_layers; ++l) {
            layer *ly = &model->layers[l];
            free(ly->weights);
            free(ly->bias);
            free(ly->output);
            free(ly->output_t);
            free(ly->weights_t);
        }
        free(model->layers);
    }
    free(model->gradients);
    free(model->logits);
    free(model->delta[0]);
    free(model->delta[1]);
    free(model->row_loss);
    pack_buffers_free(&model->packs);
    for (int i = 0; i < 4; ++i)
        free(model->wpack[i]);
    timeline_destroy(model->tl);
    free(model);
}

static int check_create_args(int n_layers, const int *sizes, int activation, int loss, int max_batch,
                             int max_threads, int kernel)
{
    if (!sizes)
        return MLP_ERR_NULL;
    if (n_layers < 1 || n_layers > SIZE_LIMIT || max_batch < 1 || max_batch > SIZE_LIMIT)
        return MLP_ERR_SIZE;
    for (int l = 0; l <= n_layers; ++l)
        if (sizes[l] < 1 || sizes[l] > SIZE_LIMIT)
            return MLP_ERR_SIZE;
    if (activation < MLP_SIGMOID || activation > MLP_RELU || loss < MLP_SOFTMAX_CE || loss > MLP_SIGMOID_BCE)
        return MLP_ERR_ARG;
    if (loss == MLP_SOFTMAX_CE && sizes[n_layers] < 2)
        return MLP_ERR_ARG;
    if (max_threads < 1 || max_threads > MLP_THREADS_LIMIT)
        return MLP_ERR_THREADS;
    if (kernel < MLP_KERNEL_NAIVE || kernel > MLP_KERNEL_PACKED)
        return MLP_ERR_KERNEL;
    return MLP_OK;
}

/* Zeroes the large buffers in a team of max_threads, each thread the contiguous share the update and the
 * row splits give it, so on a machine with several memory nodes their pages start near the threads that
 * use them (the first write places a page). */
static void first_touch(mlp_model *model, size_t delta_floats)
{
    const size_t batch = (size_t)model->max_batch;
#pragma omp parallel num_threads(model->max_threads)
    {
        const int team = omp_get_num_threads(), tid = omp_get_thread_num();
        for (int l = 0; l < model->n_layers; ++l) {
            const layer *ly = &model->layers[l];
            zero_share(ly->weights, (size_t)ly->n_in * (size_t)ly->n_out, team, tid);
            zero_share(ly->output, batch * (size_t)ly->n_out, team, tid);
        }
        zero_share(model->gradients, (size_t)model->gradient_count, team, tid);
        zero_share(model->logits, batch * (size_t)model->layers[model->n_layers - 1].n_out, team, tid);
        zero_share(model->delta[0], delta_floats, team, tid);
        zero_share(model->delta[1], delta_floats, team, tid);
    }
}

int mlp_model_create(mlp_model **out, int n_layers, const int *sizes, int activation, int loss,
                     int max_batch, int max_threads, int kernel, int isa)
{
    if (!out)
        return MLP_ERR_NULL;
    *out = NULL;
    int status = check_create_args(n_layers, sizes, activation, loss, max_batch, max_threads, kernel);
    if (status != MLP_OK)
        return status;
    const cpu_kernels *kernels = kernels_for_isa(isa);
    if (!kernels)
        return MLP_ERR_ISA;

    mlp_model *model = calloc(1, sizeof *model);
    if (!model)
        return MLP_ERR_MEMORY;
    model->n_layers = n_layers;
    model->activation = activation;
    model->loss = loss;
    model->max_batch = max_batch;
    model->max_threads = max_threads;
    model->kernel = kernel;
    model->kernels = kernels;
    model->plan = plan_from_environment();
    model->layers = calloc((size_t)n_layers, sizeof *model->layers);
    if (!model->layers) {
        mlp_model_destroy(model);
        return MLP_ERR_MEMORY;
    }

    /* Each term is below 2^49 (sizes <= 2^24); stopping past 2^60 floats keeps the sum from overflowing, and
     * the allocation of such a count fails. */
    long long gradient_count = 0;
    for (int l = 0; l < n_layers && gradient_count < (1LL << 60); ++l)
        gradient_count += ((long long)sizes[l] + 1) * sizes[l + 1];
    model->gradients = alloc_floats_untouched((size_t)gradient_count);
    model->gradient_count = gradient_count;
    int widest_output = 1, widest = sizes[0];
    int ok = model->gradients != NULL;
    float *gradient = model->gradients;
    for (int l = 0; l < n_layers; ++l) {
        layer *ly = &model->layers[l];
        ly->n_in = sizes[l];
        ly->n_out = sizes[l + 1];
        const size_t n_weights = (size_t)ly->n_in * (size_t)ly->n_out;
        ly->weights = alloc_floats_untouched(n_weights);
        ly->bias = alloc_floats((size_t)round_up(ly->n_out, NR_MAX));
        if (gradient) {
            ly->grad_weights = gradient;
            ly->grad_bias = gradient + n_weights;
            gradient += n_weights + (size_t)ly->n_out;
        }
        ly->output = alloc_floats_untouched((size_t)max_batch * (size_t)ly->n_out);
        ok = ok && ly->weights && ly->bias && ly->output;
        widest_output = max_int(widest_output, ly->n_out);
        widest = max_int(widest, ly->n_out);
    }
    const size_t delta_floats = (size_t)max_batch * (size_t)widest_output;
    model->logits = alloc_floats_untouched((size_t)max_batch * (size_t)sizes[n_layers]);
    model->delta[0] = alloc_floats_untouched(delta_floats);
    model->delta[1] = alloc_floats_untouched(delta_floats);
    model->row_loss = calloc((size_t)max_batch, sizeof *model->row_loss);
    ok = ok && model->logits && model->delta[0] && model->delta[1] && model->row_loss;
    if (ok)
        first_touch(model, delta_floats);
    /* Plan 11's transposed activations (its batches are at most MC rows). */
    for (int l = 0; ok && l + 1 < n_layers; ++l) {
        layer *ly = &model->layers[l];
        ly->output_t = alloc_floats((size_t)ly->n_out * (size_t)(max_batch < MC ? max_batch : MC));
        ok = ly->output_t != NULL;
    }
    /* Plan 16's copies of W^T: the hidden layers whose input gradient is transposed (all but the first), where
     * the fused step runs. Every float of them is packed in a step's forward pass before its backprop reads it,
     * so they are left unwritten here: the owners' first copies place their pages. */
    size_t copy_floats = 0;
    for (int l = 1; l + 1 < n_layers; ++l)
        copy_floats += owned_copy_floats(&model->layers[l], kernels);
    const int copies = fused_step(model) && copy_floats * sizeof(float) <= OWNED_COPY_BYTES;
    for (int l = 1; ok && copies && l + 1 < n_layers; ++l) {
        layer *ly = &model->layers[l];
        ly->weights_t = alloc_floats_untouched(owned_copy_floats(ly, kernels));
        ok = ly->weights_t != NULL;
    }
    /* Shared packed weights: the widest layer above the first, in either layout (whole NR_MAX slivers). */
    size_t forward_pack = 0, input_pack = 0;
    for (int l = 1; l < n_layers; ++l) {
        const size_t n_in = (size_t)sizes[l], n_out = (size_t)sizes[l + 1];
        forward_pack = forward_pack > n_in * (size_t)round_up((ptrdiff_t)n_out, NR_MAX)
                           ? forward_pack : n_in * (size_t)round_up((ptrdiff_t)n_out, NR_MAX);
        input_pack = input_pack > n_out * (size_t)round_up((ptrdiff_t)n_in, NR_MAX)
                         ? input_pack : n_out * (size_t)round_up((ptrdiff_t)n_in, NR_MAX);
    }
    if (ok && forward_pack && 2 * (forward_pack + input_pack) * sizeof(float) <= SHARED_PACK_BYTES) {
        model->wpack[0] = alloc_floats(forward_pack);
        model->wpack[1] = alloc_floats(forward_pack);
        model->wpack[2] = alloc_floats(input_pack);
        model->wpack[3] = alloc_floats(input_pack);
        ok = model->wpack[0] && model->wpack[1] && model->wpack[2] && model->wpack[3];
    }
    /* Products: forward (batch x n_out), weight gradient (n_out x n_in), input gradient (batch x n_in). */
    /* Plan 11's forward products are (n_out, batch): their B panel is as wide as the batch. */
    const int widest_n = max_int(widest, max_batch < MC ? max_batch : MC);
    if (!ok || pack_buffers_alloc(&model->packs, max_int(max_batch, widest_output), widest_n, max_threads) != MLP_OK) {
        mlp_model_destroy(model);
        return MLP_ERR_MEMORY;
    }
    *out = model;
    return MLP_OK;
}

float *mlp_model_gradient_block(mlp_model *model, long long *count)
{
    if (count)
        *count = model ? model->gradient_count : 0;
    return model ? model->gradients : NULL;
}

int mlp_model_isa(const mlp_model *model)
{
    return model ? model->kernels->isa : MLP_ISA_AUTO;
}

int mlp_model_set_layer(mlp_model *model, int layer_index, const float *weights, const float *bias)
{
    if (!model || !weights || !bias)
        return MLP_ERR_NULL;
    if (layer_index < 1 || layer_index > model->n_layers)
        return MLP_ERR_SIZE;
    layer *ly = &model->layers[layer_index - 1];
    memcpy(ly->weights, weights, (size_t)ly->n_in * (size_t)ly->n_out * sizeof(float));
    memcpy(ly->bias, bias, (size_t)ly->n_out * sizeof(float));
    /* New parameters: activations and gradients no longer belong to them. */
    model->forward_batch = 0;
    model->grads_ready = 0;
    model->next_backprop_layer = 0;
    model->last_stage = STAGE_NONE;
    return MLP_OK;
}

float *mlp_model_buffer(mlp_model *model, int kind, int layer_index)
{
    if (!model)
        return NULL;
    if (kind == MLP_BUF_LOGITS)
        return model->logits;
    if (layer_index < 1 || layer_index > model->n_layers)
        return NULL;
    layer *ly = &model->layers[layer_index - 1];
    switch (kind) {
    case MLP_BUF_WEIGHTS: return ly->weights;
    case MLP_BUF_BIAS: return ly->bias;
    case MLP_BUF_GRAD_WEIGHTS: return ly->grad_weights;
    case MLP_BUF_GRAD_BIAS: return ly->grad_bias;
    case MLP_BUF_ACTIVATION: return ly->output;
    default: return NULL;
    }
}

static void fill_nan(float *buffer, size_t count)
{
    for (size_t i = 0; i < count; ++i)
        buffer[i] = NAN;
}

int mlp_poison(mlp_model *model)
{
    if (!model)
        return MLP_ERR_NULL;
    const size_t batch = (size_t)model->max_batch;
    const int keep_activations = model->last_stage == STAGE_FORWARD;
    const int keep_gradients = model->last_stage == STAGE_BACKPROP;
    size_t widest_output = 1;
    for (int l = 0; l < model->n_layers; ++l) {
        layer *ly = &model->layers[l];
        if (!keep_activations)
            fill_nan(ly->output, batch * (size_t)ly->n_out);
        if ((size_t)ly->n_out > widest_output)
            widest_output = (size_t)ly->n_out;
    }
    if (!keep_activations) {
        fill_nan(model->logits, batch * (size_t)model->layers[model->n_layers - 1].n_out);
        model->forward_batch = 0;
    }
    if (!keep_gradients) {
        fill_nan(model->gradients, (size_t)model->gradient_count);
        model->grads_ready = 0;
    }
    fill_nan(model->delta[0], batch * widest_output);
    fill_nan(model->delta[1], batch * widest_output);
    /* A layer-wise backprop in progress lost its deltas: it starts again from the output layer. */
    model->next_backprop_layer = model->forward_batch ? model->n_layers : 0;
    return MLP_OK;
}

/* ------------------------------------------------------------------ stages, run by every thread of a team */

/* What a stage call works on. */
typedef struct {
    mlp_model *model;
    int batch;
    const float *x, *targets;
    float lr, weight_decay;
    int layer;            /* mlp_backprop_layer's layer (1..n_layers) */
    int shared_pack;      /* the step packs layers 2..L's weights once for the team (model->wpack) */
    int owned;            /* plan 11: the hidden layers transposed, each thread its own rows (owned_rows) */
    int owned_copy;       /* plan 16: besides, the owners pack W^T for the input gradients (layer.weights_t) */
} stage_args;

/* A barrier, timed when the timeline is on. `layer`: the layer (1-based) whose work it closes, 0 for none. */
static void team_barrier(const mlp_model *model, int closes)
{
    if (!model->tl) {
#pragma omp barrier
        return;
    }
    const long long t0 = now_ns();
#pragma omp barrier
    timeline_record(model->tl, MLP_EV_BARRIER, closes, t0, 0, 0);
}

/* Change 12's rule: the owned rows where the host measured them faster than plan 8, plan 8 elsewhere. Plan
 * 11's gain was in the hidden-to-hidden layers (no shared packing of their weights, each thread updating its own
 * rows of W), which a network needs at least three layers to have (digits, 64-128-10, has none: plan 11 was
 * slower or equal there at every thread count), and on many threads (moons-5h300:32: faster in all five rounds
 * at 8 and 16 threads, 0.78x the step; 1 and 2 threads: 1.07x and 1.18x slower). Since change 16 the owned rows
 * run as plan 16 (faster than plan 11 in all ten rounds of two host runs at 8 and 16 threads, 0.79-0.98x the
 * step), which step_plan turns into plan 11 where there is no copy to write. */
static int step_plan_rule(const mlp_model *model, int threads, int batch)
{
    return model->n_layers >= 3 && batch <= MC && threads >= OWNED_ROWS_MIN_THREADS ? PLAN_OWNED_COPY
                                                                                   : PLAN_SHARED_PACKING;
}

/* The plan a train_step of `threads` threads on `batch` rows runs: 16, 11 (the hidden layers transposed) or 8.
 * Plans 11 and 16 need the fused step, a batch of more than MLP_DOT_ROWS and at most MC rows, and a hidden
 * layer; elsewhere they run as plan 8 (on a batch of a few rows the forward layers are dot products, which
 * their transposed forward would not match bit for bit; results/h200-plans-few-rows: plan 16 no faster there at
 * 16 threads, 5-6 % at 8). Plan 16 runs as plan 11 where it has no copy to write: no hidden layer above the
 * first, or its copies were above OWNED_COPY_BYTES. */
static int step_plan(const mlp_model *model, int threads, int batch)
{
    const int plan = model->plan == PLAN_RULE ? step_plan_rule(model, threads, batch) : model->plan;
    if (!owns_rows(plan) || !fused_step(model) || batch <= MLP_DOT_ROWS || batch > MC || model->n_layers < 2)
        return PLAN_SHARED_PACKING;
    /* Layer 2 has a copy exactly when the model has any (a hidden layer above the first, within the bound). */
    return plan == PLAN_OWNED_COPY && model->layers[1].weights_t ? PLAN_OWNED_COPY : PLAN_OWNED_ROWS;
}

int mlp_step_plan(const mlp_model *model, int threads, int batch)
{
    if (!model || threads < 1 || threads > model->max_threads || batch < 1 || batch > model->max_batch)
        return 0;
    return step_plan(model, threads, batch);
}

/* Layer l's (0-based) forward product Z = A_prev W^T + b, activation fused. */
static gemm_problem forward_problem(const mlp_model *model, int l, int batch, const float *input)
{
    const layer *ly = &model->layers[l];
    const int last = l == model->n_layers - 1;
    return (gemm_problem){
        .m = batch, .n = ly->n_out, .k = ly->n_in,
        .a = input, .a_rs = ly->n_in, .a_cs = 1,
        .b = ly->weights, .b_rs = 1, .b_cs = ly->n_in, /* W^T */
        .c = last ? model->logits : ly->output, .ldc = ly->n_out,
        .ep = {.kind = EPI_BIAS_ACTIVATION, .activation = last ? ACT_NONE : model->activation, .bias = ly->bias},
    };
}

/* Layer l's (0-based, l >= 1) input gradient: dZ of the layer below = (dZ W) * act'(its output). */
static gemm_problem input_grad_problem(const mlp_model *model, int l, int batch, const float *dz, float *dz_below)
{
    const layer *ly = &model->layers[l];
    const float *input = model->layers[l - 1].output;
    return (gemm_problem){
        .m = batch, .n = ly->n_in, .k = ly->n_out,
        .a = dz, .a_rs = ly->n_out, .a_cs = 1,
        .b = ly->weights, .b_rs = ly->n_in, .b_cs = 1,
        .c = dz_below, .ldc = ly->n_in,
        .ep = {.kind = EPI_ACTIVATION_DERIVATIVE, .activation = model->activation, .aux = input,
               .ld_aux = ly->n_in},
    };
}

/* This thread's share of packing a product's weights for the whole team (timed as MLP_EV_PACK_WEIGHTS). */
static void pack_weights_share(const mlp_model *model, const gemm_problem *problem, float *dst, int layer_number)
{
    const long long t0 = model->tl ? now_ns() : 0;
    const long long packed = gemm_pack_b_shared(problem, model->kernels, dst, omp_get_num_threads(),
                                                omp_get_thread_num());
    if (model->tl)
        timeline_record(model->tl, MLP_EV_PACK_WEIGHTS, layer_number, t0, 0, packed);
}

/* Whether the team packs this product's weights once for all (the same answer on every thread). */
static int shares_weights(const mlp_model *model, const gemm_problem *problem)
{
    return gemm_shares_b(problem, model->kernels, omp_get_num_threads());
}

/* ---- plan 11: the hidden layers transposed, each thread its own rows
 *
 * A hidden layer's products are computed as their transposes, (n_out, batch), so their rows are the layer's
 * outputs. Every thread takes the same range of mr-row slivers of a layer in each product whose rows are that
 * layer's outputs: its forward product (rows of W), its weight gradient (rows of dW) and the input gradient of
 * the layer above (rows of dZ), and so also the bias gradient, the activation derivative and the update of
 * those rows. Each thread thus reads and writes the same rows of W, dW, b, the activation and dZ in every
 * step, and they stay in its cache; the activations are stored transposed (layer.output_t), which for a batch
 * of nr columns is already the packed B operand of the next product. What crosses between cores: every
 * thread reads the whole activation of the layer below (forward, weight gradient) and the whole dZ of the
 * layer above and its columns of that layer's W (input gradient). Each element is the same sum in the same
 * order as in plan 8 (a product and its transpose differ only in which operand is packed as which), so the
 * results are the same bits. */

/* Rows [lo, hi) of an n-row hidden layer that this thread owns: its contiguous range of mr-row slivers, the
 * range gemm_team gives it in a product of m = n with rows_split. */
static void owned_rows(const mlp_model *model, int n, ptrdiff_t *lo, ptrdiff_t *hi)
{
    const int mr = model->kernels->mr;
    split_range((n + mr - 1) / mr, omp_get_num_threads(), omp_get_thread_num(), lo, hi);
    /* Both clipped to n: a thread past the last sliver gets the empty range [n, n). */
    *lo = *lo * mr < n ? *lo * mr : n;
    *hi = *hi * mr < n ? *hi * mr : n;
}

/* Hidden layer l's (0-based) forward product, transposed: Z^T = W A_prev^T into output_t, no epilogue (the
 * bias is per row here: owned_bias_activation). A_prev^T: the input x transposed, or the layer below's
 * output_t, which is the packed operand itself when the batch is one sliver wide. */
static gemm_problem owned_forward_problem(const mlp_model *model, int l, int batch, const float *x)
{
    const layer *ly = &model->layers[l];
    gemm_problem p = {
        .m = ly->n_out, .n = batch, .k = ly->n_in,
        .a = ly->weights, .a_rs = ly->n_in, .a_cs = 1,
        .b = l == 0 ? x : model->layers[l - 1].output_t, .b_rs = l == 0 ? 1 : batch, .b_cs = l == 0 ? ly->n_in : 1,
        .c = ly->output_t, .ldc = batch,
        .ep = {.kind = EPI_STORE},
        .rows_split = 1,
    };
    if (l > 0 && batch == model->kernels->nr)
        p.b_shared = p.b;
    return p;
}

/* act(z + b) over this thread's rows of a transposed forward product: the micro-kernel's epilogue, per row. */
static void owned_bias_activation(const mlp_model *model, const layer *ly, int batch)
{
    _Alignas(ALIGN_BYTES) float bias[(MC + NR_MAX - 1) / NR_MAX * NR_MAX];
    ptrdiff_t lo, hi;
    owned_rows(model, ly->n_out, &lo, &hi);
    memset(bias, 0, sizeof bias);
    for (ptrdiff_t j = lo; j < hi; ++j) {
        for (int b = 0; b < batch; ++b)
            bias[b] = ly->bias[j];
        model->kernels->bias_activation(ly->output_t + j * batch, batch, 1, batch, bias, model->activation);
    }
}

/* Layer l's (0-based, l >= 1) input gradient when the layer below is transposed: dZ_below^T = W^T dZ^T, this
 * thread's rows (the layer below's rows it owns), the derivative from the transposed activation. dZ^T: this
 * layer's as stored (`dz_transposed`: a hidden layer), or the output layer's dZ read transposed. */
static gemm_problem owned_input_grad_problem(const mlp_model *model, int l, int batch, const float *dz,
                                             float *dz_below, int dz_transposed)
{
    const layer *ly = &model->layers[l];
    return (gemm_problem){
        .m = ly->n_in, .n = batch, .k = ly->n_out,
        .a = ly->weights, .a_rs = 1, .a_cs = ly->n_in,
        .b = dz, .b_rs = dz_transposed ? batch : 1, .b_cs = dz_transposed ? 1 : ly->n_out,
        .c = dz_below, .ldc = batch,
        .ep = {.kind = EPI_ACTIVATION_DERIVATIVE, .activation = model->activation,
               .aux = model->layers[l - 1].output_t, .ld_aux = batch},
        .rows_split = 1,
    };
}

/* Plan 16: this thread's rows of hidden layer l's W (0-based, l >= 1), which its forward product has just
 * read, packed into weights_t where the layer's input gradient reads W^T (W's rows are that product's k): the
 * input gradient then reads this copy, not W, and W's lines stay in their owner's cache. */
static void pack_owned_copy(const mlp_model *model, int l, int batch)
{
    const layer *ly = &model->layers[l];
    const long long t0 = model->tl ? now_ns() : 0;
    const gemm_problem input_grad = owned_input_grad_problem(model, l, batch, NULL, NULL, 1);
    ptrdiff_t lo, hi;
    owned_rows(model, ly->n_out, &lo, &hi);
    const long long packed = gemm_pack_a_shared(&input_grad, model->kernels, ly->weights_t, (int)lo, (int)hi);
    if (model->tl)
        timeline_record(model->tl, MLP_EV_PACK_WEIGHTS, l + 1, t0, 0, packed);
}

/* The forward products of every layer, a barrier after each but, with `rows_fused`, the last: the
 * caller then works on the rows this thread computed (returned), every one of them complete. With
 * `shared_pack`, the team packs the next layer's weights once, in the stretch before it (nothing there
 * writes them), instead of each thread packing the slivers it needs. */
static gemm_share forward_layers(const stage_args *s, int rows_fused)
{
    mlp_model *model = s->model;
    const int batch = s->batch, shared_pack = s->shared_pack, owned = s->owned;
    const float *x = s->x;
    gemm_share share = {0};
    const float *input = x;
    for (int l = 0; l < model->n_layers; ++l) {
        const layer *ly = &model->layers[l];
        const int last = l == model->n_layers - 1;
        gemm_problem z = owned && !last ? owned_forward_problem(model, l, batch, x)
                                        : forward_problem(model, l, batch, input);
        if (owned && last && l > 0) {
            /* The output layer as in plan 8, its A the transposed activation below. */
            z.a = model->layers[l - 1].output_t;
            z.a_rs = 1;
            z.a_cs = batch;
        }
        if (shared_pack && l > 0 && shares_weights(model, &z))
            z.b_shared = model->wpack[l % 2];
        const long long t0 = model->tl ? now_ns() : 0;
        const long long work = gemm_team(model->kernel, &z, &model->packs, model->kernels, model->tl);
        if (owned && !last)
            owned_bias_activation(model, ly, batch);
        if (model->tl)
            timeline_record(model->tl, MLP_EV_FORWARD, l + 1, t0, timeline_take_pack(model->tl), work);
        if (s->owned_copy && l > 0 && !last)
            pack_owned_copy(model, l, batch);
        if (shared_pack && !last) {
            const gemm_problem next = forward_problem(model, l + 1, batch, ly->output);
            if (shares_weights(model, &next))
                pack_weights_share(model, &next, model->wpack[(l + 1) % 2], l + 2);
        }
        if (last && rows_fused)
            share = gemm_packed_share(&z, model->kernels, omp_get_num_threads(), omp_get_thread_num());
        else
            team_barrier(model, l + 1);
        input = ly->output;
    }
    return share;
}

/* One row of the output gradient (P - T) / batch: the mean loss's derivative for both losses. */
static void output_gradient(int batch, const float *p, const float *t, float *dz, int n)
{
    const float scale = (float)batch;
    for (int j = 0; j < n; ++j)
        dz[j] = (p[j] - t[j]) / scale;
}

static float sigmoid_from_double(double z)
{
    const double e = exp(-fabs(z));
    return (float)(z >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e));
}

/* t * x where a zero weight contributes nothing even when x is infinite (0 * inf would be NaN): the limit
 * of the loss. A NaN x stays NaN. */
static double weighted(double t, double x)
{
    return t == 0.0 && !isnan(x) ? 0.0 : t * x;
}

/* Softmax of one row of logits, and its cross-entropy with t (if given): sum_j t_j (lse - z_j) with
 * lse = log sum_j exp z_j, from the logits (never from the rounded probabilities). Limits: -inf logits get
 * probability 0; a single +inf logit takes probability 1 and a zero gap to lse; two or more +inf logits,
 * or any NaN, make the row NaN. */
static double softmax_row(const float *z, float *p, const float *t, int n)
{
    float z_max = z[0];
    int n_max = 1, has_nan = isnan(z[0]);
    for (int j = 1; j < n; ++j) {
        has_nan |= isnan(z[j]);
        if (z[j] > z_max) {
            z_max = z[j];
            n_max = 1;
        } else if (z[j] == z_max) {
            ++n_max;
        }
    }
    if (has_nan || (isinf(z_max) && (z_max < 0.0f || n_max > 1))) {
        for (int j = 0; j < n; ++j)
            p[j] = NAN;
        return NAN;
    }
    double loss = 0.0;
    if (isinf(z_max)) {
        for (int j = 0; j < n; ++j) {
            p[j] = z[j] == z_max ? 1.0f : 0.0f;
            if (t)
                loss += weighted(t[j], z[j] == z_max ? 0.0 : INFINITY);
        }
        return loss;
    }
    double sum = 0.0;
    for (int j = 0; j < n; ++j) {
        p[j] = expf(z[j] - z_max);
        sum += p[j];
    }
    for (int j = 0; j < n; ++j)
        p[j] = (float)(p[j] / sum);
    if (t) {
        const double log_sum_exp = z_max + log(sum);
        for (int j = 0; j < n; ++j)
            loss += weighted(t[j], log_sum_exp - z[j]);
    }
    return loss;
}

/* Sigmoid of one row of logits, and its binary cross-entropy with t (if given):
 * softplus(z) - t z = (1 - t) z + softplus(-z) for z >= 0, -t z + softplus(z) below, which stays finite
 * and takes its limits (0 or inf) at infinite z. */
static double sigmoid_row(const float *z, float *p, const float *t, int n)
{
    double loss = 0.0;
    for (int j = 0; j < n; ++j) {
        p[j] = sigmoid_from_double(z[j]);
        if (t) {
            const double zj = z[j], tj = t[j];
            loss += (zj >= 0.0 ? weighted(1.0 - tj, zj) : weighted(-tj, zj)) + log1p(exp(-fabs(zj)));
        }
    }
    return loss;
}

/* Output probabilities and per-sample losses of rows [lo, hi). With `gradient`, also the output gradient
 * dZ = (P - T) / batch of those rows. */
static void output_rows(const stage_args *s, ptrdiff_t lo, ptrdiff_t hi, int gradient)
{
    mlp_model *model = s->model;
    const int n = model->layers[model->n_layers - 1].n_out;
    float *probs = model->layers[model->n_layers - 1].output;
    for (ptrdiff_t i = lo; i < hi; ++i) {
        const float *z = model->logits + i * n;
        float *p = probs + i * n;
        const float *t = s->targets ? s->targets + i * n : NULL;
        model->row_loss[i] = model->loss == MLP_SOFTMAX_CE ? softmax_row(z, p, t, n) : sigmoid_row(z, p, t, n);
        if (gradient)
            output_gradient(s->batch, p, t, model->delta[0] + i * n, n);
    }
}

/* `gradient`: also the output gradient, and a barrier after it (backprop follows in the same region). */
static void forward_team(const stage_args *s, int gradient)
{
    mlp_model *model = s->model;
    const layer *out = &model->layers[model->n_layers - 1];
    /* When the output layer fits one column sliver, each thread's block of logits is whole rows: it goes on
     * to their softmax and loss without waiting for the others. */
    const gemm_problem logits = {.m = s->batch, .n = out->n_out, .k = out->n_in};
    const int rows_fused = fused_step(model) && gemm_packed_whole_rows(&logits, model->kernels);
    const gemm_share share = forward_layers(s, rows_fused);
    /* A thread's logits are one rectangle here: the last layer has one column sliver. */
    ptrdiff_t lo = share.count ? share.part[0].i0 : 0, hi = share.count ? share.part[0].i1 : 0;
    if (!rows_fused)
        split_range(s->batch, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
    const long long t0 = model->tl ? now_ns() : 0;
    output_rows(s, lo, hi, gradient);
    if (model->tl)
        timeline_record(model->tl, MLP_EV_OUTPUT_ROWS, model->n_layers, t0, 0, hi - lo);
    if (s->shared_pack && model->n_layers > 1) {
        /* The output layer's input gradient comes next in backprop: its weights, packed now. */
        const int l = model->n_layers - 1;
        const gemm_problem next = input_grad_problem(model, l, s->batch, model->delta[0], model->delta[1]);
        if (shares_weights(model, &next))
            pack_weights_share(model, &next, model->wpack[2 + l % 2], l + 1);
    }
    if (gradient)
        team_barrier(model, model->n_layers);
}

/* db[j] = sum over the batch of dZ[i][j], columns split over the team; rows added in order. The sums build
 * up in a local block and are stored once: two threads' columns can share a cache line of db, and storing
 * on every row would pass that line between them batch times. */
static void bias_gradient(const float *dz, int batch, int n, float *grad_bias, ptrdiff_t *lo_out, ptrdiff_t *hi_out)
{
    enum { BLOCK = 64 };
    ptrdiff_t lo, hi;
    split_range(n, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
    *lo_out = lo;
    *hi_out = hi;
    for (ptrdiff_t j0 = lo; j0 < hi; j0 += BLOCK) {
        const ptrdiff_t width = hi - j0 < BLOCK ? hi - j0 : BLOCK;
        float sum[BLOCK];
        for (ptrdiff_t j = 0; j < width; ++j)
            sum[j] = 0.0f;
        for (ptrdiff_t i = 0; i < batch; ++i) {
            const float *row = dz + i * n + j0;
            for (ptrdiff_t j = 0; j < width; ++j)
                sum[j] += row[j];
        }
        memcpy(grad_bias + j0, sum, (size_t)width * sizeof(float));
    }
}

/* dZ of the output layer, (P - T) / batch, rows split over the team. */
static void output_layer_gradient(const stage_args *s)
{
    mlp_model *model = s->model;
    const layer *out = &model->layers[model->n_layers - 1];
    ptrdiff_t lo, hi;
    split_range(s->batch, omp_get_num_threads(), omp_get_thread_num(), &lo, &hi);
    const long long t0 = model->tl ? now_ns() : 0;
    for (ptrdiff_t i = lo; i < hi; ++i)
        output_gradient(s->batch, out->output + i * out->n_out, s->targets + i * out->n_out,
                        model->delta[0] + i * out->n_out, out->n_out);
    if (model->tl)
        timeline_record(model->tl, MLP_EV_OUTPUT_GRAD, model->n_layers, t0, 0, (hi - lo) * out->n_out);
}

/* W -= lr * (dW + weight_decay * W) over the parts of a thread's share of a layer's weights. */
static long long update_block(const layer *ly, gemm_share share, float lr, float weight_decay)
{
    long long elements = 0;
    for (int part = 0; part < share.count; ++part) {
        const gemm_rect b = share.part[part];
        for (ptrdiff_t i = b.i0; i < b.i1; ++i) {
            float *restrict w = ly->weights + i * ly->n_in;
            const float *restrict g = ly->grad_weights + i * ly->n_in;
            for (ptrdiff_t j = b.j0; j < b.j1; ++j)
                w[j] -= lr * (g[j] + weight_decay * w[j]);
        }
        elements += (long long)(b.i1 - b.i0) * (b.j1 - b.j0);
    }
    return elements;
}

/* The fused step's update of the block of W whose dW this thread computed (still in its cache). */
static long long update_computed_block(const stage_args *s, const layer *ly, const gemm_problem *grad_weights)
{
    return update_block(ly, gemm_packed_share(grad_weights, s->model->kernels, omp_get_num_threads(),
                                              omp_get_thread_num()),
                        s->lr, s->weight_decay);
}

/* Whether layer l (0-based) is one of plan 11's transposed hidden layers in this step. */
static int owned_layer(const stage_args *s, int l) { return s->owned && l < s->model->n_layers - 1; }

/* Layer l's (0-based) dW and db, and dZ of the layer below, from this layer's dZ in delta[current]; ends
 * with a barrier unless l == 0 and `last_barrier` is 0. The output layer's dZ is in delta[0], and each
 * layer below alternates (plan 11: transposed, (n_out, batch), below the output layer). With `fused`, the
 * step's update of b comes with it (nothing reads b again in this step), and for the first layer, whose W
 * nothing reads after its weight gradient, the update of the block of W whose dW this thread computed (still
 * in its cache): no barrier is needed before it. A team of one thread also updates every other layer's W as
 * soon as its input gradient, the last product that reads it, is done (update_layers says why not a team). */
static void backprop_one_layer(const stage_args *s, int l, int last_barrier, int fused)
{
    mlp_model *model = s->model;
    const int batch = s->batch, current = (model->n_layers - 1 - l) % 2;
    const int owned = owned_layer(s, l), input_owned = l > 0 && owned_layer(s, l - 1);
    const layer *ly = &model->layers[l];
    const float *input = l > 0 ? model->layers[l - 1].output : s->x;
    const float *dz = model->delta[current];
    gemm_problem grad_weights = {
        .m = ly->n_out, .n = ly->n_in, .k = batch,
        .a = dz, .a_rs = 1, .a_cs = ly->n_out, /* dZ^T */
        .b = input, .b_rs = ly->n_in, .b_cs = 1,
        .c = ly->grad_weights, .ldc = ly->n_in,
        .ep = {.kind = EPI_STORE},
    };
    if (owned) {
        /* dZ^T is stored as it is (n_out, batch); this thread's rows of dW, the rows it owns. */
        grad_weights.a_rs = batch;
        grad_weights.a_cs = 1;
        grad_weights.rows_split = 1;
    }
    if (input_owned) {
        /* A_prev from its transpose (n_in, batch). */
        grad_weights.b = model->layers[l - 1].output_t;
        grad_weights.b_rs = 1;
        grad_weights.b_cs = batch;
    }
    /* The weight gradient, the bias gradient and the layer below's dZ all only read this layer's dZ:
     * threads go from one to the next without waiting, and meet once per layer. */
    timeline *tl = model->tl;
    long long t0 = tl ? now_ns() : 0;
    const long long work = gemm_team(model->kernel, &grad_weights, &model->packs, model->kernels, tl);
    if (tl)
        t0 = timeline_record(tl, MLP_EV_WEIGHT_GRAD, l + 1, t0, timeline_take_pack(tl), work);
    ptrdiff_t bias_lo, bias_hi;
    if (owned) {
        /* db of this thread's rows: each a contiguous row of dZ^T, added in batch order as in bias_gradient. */
        owned_rows(model, ly->n_out, &bias_lo, &bias_hi);
        for (ptrdiff_t j = bias_lo; j < bias_hi; ++j) {
            float sum = 0.0f;
            for (int i = 0; i < batch; ++i)
                sum += dz[j * batch + i];
            ly->grad_bias[j] = sum;
        }
    } else {
        bias_gradient(dz, batch, ly->n_out, ly->grad_bias, &bias_lo, &bias_hi);
    }
    if (tl)
        t0 = timeline_record(tl, MLP_EV_BIAS_GRAD, l + 1, t0, 0, (bias_hi - bias_lo) * batch);
    if (fused) {
        for (ptrdiff_t j = bias_lo; j < bias_hi; ++j)
            ly->bias[j] -= s->lr * ly->grad_bias[j];
        long long updated = bias_hi - bias_lo;
        if (l == 0)
            updated += update_computed_block(s, ly, &grad_weights);
        if (tl)
            t0 = timeline_record(tl, MLP_EV_UPDATE, l + 1, t0, 0, updated);
    }
    if (l > 0) {
        /* dZ of the layer below = (dZ W) * act'(its output), the derivative fused into the product. */
        gemm_problem grad_input = input_grad_problem(model, l, batch, dz, model->delta[1 - current]);
        if (input_owned) {
            grad_input = owned_input_grad_problem(model, l, batch, dz, model->delta[1 - current], owned);
            if (owned && batch == model->kernels->nr)
                grad_input.b_shared = dz;
            if (owned && s->owned_copy)
                grad_input.a_shared = ly->weights_t; /* packed by W's owners in the forward pass */
        }
        if (s->shared_pack && shares_weights(model, &grad_input))
            grad_input.b_shared = model->wpack[2 + l % 2];
        const long long input_work = gemm_team(model->kernel, &grad_input, &model->packs, model->kernels, tl);
        if (tl)
            timeline_record(tl, MLP_EV_INPUT_GRAD, l + 1, t0, timeline_take_pack(tl), input_work);
        if (s->shared_pack && l > 1) {
            /* The next layer down's input gradient: its weights, packed in this stretch. */
            const gemm_problem next = input_grad_problem(model, l - 1, batch, model->delta[1 - current],
                                                         model->delta[current]);
            if (shares_weights(model, &next))
                pack_weights_share(model, &next, model->wpack[2 + (l - 1) % 2], l);
        }
    }
    if (l > 0 || last_barrier)
        team_barrier(model, l + 1);
    if (fused && l > 0 && omp_get_num_threads() == 1) {
        const long long t1 = tl ? now_ns() : 0;
        const long long updated = update_computed_block(s, ly, &grad_weights);
        if (tl)
            timeline_record(tl, MLP_EV_UPDATE, l + 1, t1, 0, updated);
    }
}

/* `gradient_ready`: the forward pass already wrote dZ of the output layer. `last_barrier`: a barrier after
 * the first layer too (a separate update follows in the region). `fused`: the update comes with it. */
static void backprop_team(const stage_args *s, int gradient_ready, int last_barrier, int fused)
{
    mlp_model *model = s->model;
    if (!gradient_ready) {
        output_layer_gradient(s);
        team_barrier(model, model->n_layers);
    }
    for (int l = model->n_layers - 1; l >= 0; --l)
        backprop_one_layer(s, l, last_barrier, fused);
}

/* mlp_backprop_layer's work: the same operations as backprop_team's for this one layer. */
static void backprop_layer_team(const stage_args *s)
{
    if (s->layer == s->model->n_layers) {
        output_layer_gradient(s);
        team_barrier(s->model, s->model->n_layers);
    }
    backprop_one_layer(s, s->layer - 1, 0, 0);
}

/* The update of every layer's W and b, each thread a contiguous share; after a fused backprop, only the W
 * that backprop did not update (every b did; a team of one thread updated every W). A team updates them here,
 * after the last barrier, rather than each layer's in the stretch after its input gradient: in those stretches
 * the shares' imbalance waits at every barrier (results/dev-update-in-backprop: moons-5h300 at batch 1 on two
 * threads 80-82 -> 97-99 us, where one thread went 127 -> 112). */
static void update_layers(const stage_args *s, int fused)
{
    mlp_model *model = s->model;
    const float lr = s->lr, weight_decay = s->weight_decay;
    const int team = omp_get_num_threads(), tid = omp_get_thread_num(), bias = !fused;
    ptrdiff_t lo, hi;
    for (int l = 0; l < model->n_layers; ++l) {
        if (fused && (l == 0 || team == 1))
            continue;
        layer *ly = &model->layers[l];
        const long long t0 = model->tl ? now_ns() : 0;
        long long elements = 0;
        if (fused && owned_layer(s, l)) {
            /* Plan 11: the rows of W this thread owns, whose dW it computed (contiguous in memory). */
            owned_rows(model, ly->n_out, &lo, &hi);
            lo *= ly->n_in;
            hi *= ly->n_in;
        } else {
            split_range((ptrdiff_t)ly->n_out * ly->n_in, team, tid, &lo, &hi);
        }
        elements += hi - lo;
        for (ptrdiff_t e = lo; e < hi; ++e)
            ly->weights[e] -= lr * (ly->grad_weights[e] + weight_decay * ly->weights[e]);
        split_range(ly->n_out, team, tid, &lo, &hi);
        if (!bias)
            hi = lo;
        for (ptrdiff_t e = lo; e < hi; ++e)
            ly->bias[e] -= lr * ly->grad_bias[e];
        if (model->tl)
            timeline_record(model->tl, MLP_EV_UPDATE, l + 1, t0, 0, elements + hi - lo);
    }
}

/* Plan 11, after backprop: each hidden activation also as the API has it, (batch, n_out), from its transpose,
 * each thread its own rows (its columns here), so the step leaves the same buffers as the three stages. */
static void owned_activation_rows(const stage_args *s)
{
    mlp_model *model = s->model;
    const int batch = s->batch;
    for (int l = 0; owned_layer(s, l); ++l) {
        const layer *ly = &model->layers[l];
        const long long t0 = model->tl ? now_ns() : 0;
        ptrdiff_t lo, hi;
        owned_rows(model, ly->n_out, &lo, &hi);
        for (int i = 0; i < batch; ++i)
            for (ptrdiff_t j = lo; j < hi; ++j)
                ly->output[i * ly->n_out + j] = ly->output_t[j * batch + i];
        if (model->tl)
            timeline_record(model->tl, MLP_EV_ACTIVATION_ROWS, l + 1, t0, 0, (hi - lo) * batch);
    }
}

static void update_team(const stage_args *s) { update_layers(s, 0); }

static void forward_stage(const stage_args *s) { forward_team(s, 0); }
static void backprop_stage(const stage_args *s) { backprop_team(s, 0, 0, 0); }

/* The whole step in one region; the output gradient comes with the forward pass's last rows, and on the
 * packed rung the update with each layer's weight gradient. */
static void train_step_stage(const stage_args *s)
{
    const int fused = fused_step(s->model);
    forward_team(s, 1);
    backprop_team(s, 1, !fused, fused);
    /* Fused: every dW was complete at the last barrier, and every W has no reader left; the W updated in
     * backprop and every b are done. */
    update_layers(s, fused);
    if (s->owned)
        owned_activation_rows(s);
}

/* One parallel region of `threads` threads running `stage`; a single thread needs no team at all (its
 * barriers are then no-ops). */
static void run_team(int threads, void (*stage)(const stage_args *), const stage_args *args)
{
    timeline *tl = args->model->tl;
    blas_use_threads(threads);
    timeline_begin(tl, threads);
    if (threads == 1) {
        stage(args);
        return;
    }
#pragma omp parallel num_threads(threads)
    {
        if (tl)
            timeline_fork(tl);
        stage(args);
    }
    timeline_end(tl);
}

/* ------------------------------------------------------------------ entry points */

static int check_stage(const mlp_model *model, int threads, int batch, const float *x)
{
    if (!model || !x)
        return MLP_ERR_NULL;
    if (threads < 1 || threads > model->max_threads)
        return MLP_ERR_THREADS;
    if (batch < 1 || batch > model->max_batch)
        return MLP_ERR_SIZE;
    return MLP_OK;
}

static double mean_loss(const mlp_model *model, int batch)
{
    double sum = 0.0;
    for (int i = 0; i < batch; ++i)
        sum += model->row_loss[i];
    return sum / batch;
}

int mlp_forward(mlp_model *model, int threads, int batch, const float *x, const float *targets, double *loss)
{
    const int status = check_stage(model, threads, batch, x);
    if (status != MLP_OK)
        return status;
    const stage_args args = {.model = model, .batch = batch, .x = x, .targets = targets};
    run_team(threads, forward_stage, &args);
    model->forward_batch = batch;
    model->next_backprop_layer = model->n_layers;
    model->last_stage = STAGE_FORWARD;
    if (loss)
        *loss = targets ? mean_loss(model, batch) : NAN;
    return MLP_OK;
}

int mlp_backprop(mlp_model *model, int threads, int batch, const float *x, const float *targets)
{
    const int status = check_stage(model, threads, batch, x);
    if (status != MLP_OK)
        return status;
    if (!targets)
        return MLP_ERR_NULL;
    if (model->forward_batch != batch)
        return MLP_ERR_STATE;
    const stage_args args = {.model = model, .batch = batch, .x = x, .targets = targets};
    run_team(threads, backprop_stage, &args);
    model->grads_ready = 1;
    model->next_backprop_layer = model->n_layers; /* a layer-wise pass may follow on the same forward */
    model->last_stage = STAGE_BACKPROP;
    return MLP_OK;
}

int mlp_backprop_layer(mlp_model *model, int threads, int batch, const float *x, const float *targets,
                       int layer_index)
{
    const int status = check_stage(model, threads, batch, x);
    if (status != MLP_OK)
        return status;
    if (!targets)
        return MLP_ERR_NULL;
    if (layer_index < 1 || layer_index > model->n_layers)
        return MLP_ERR_SIZE;
    if (model->forward_batch != batch || layer_index != model->next_backprop_layer)
        return MLP_ERR_STATE;
    const stage_args args = {.model = model, .batch = batch, .x = x, .targets = targets, .layer = layer_index};
    run_team(threads, backprop_layer_team, &args);
    model->next_backprop_layer = layer_index > 1 ? layer_index - 1 : model->n_layers;
    if (layer_index == 1) {
        model->grads_ready = 1;
        model->last_stage = STAGE_BACKPROP;
    } else {
        model->grads_ready = 0; /* the layers below are not done yet */
    }
    return MLP_OK;
}

static int check_step_size(float lr, float weight_decay)
{
    return isfinite(lr) && isfinite(weight_decay) ? MLP_OK : MLP_ERR_ARG;
}

int mlp_update(mlp_model *model, int threads, float lr, float weight_decay)
{
    if (!model)
        return MLP_ERR_NULL;
    if (threads < 1 || threads > model->max_threads)
        return MLP_ERR_THREADS;
    if (check_step_size(lr, weight_decay) != MLP_OK)
        return MLP_ERR_ARG;
    if (!model->grads_ready)
        return MLP_ERR_STATE;
    const stage_args args = {.model = model, .lr = lr, .weight_decay = weight_decay};
    run_team(threads, update_team, &args);
    model->forward_batch = 0; /* the activations belong to the old parameters */
    model->next_backprop_layer = 0;
    model->last_stage = STAGE_UPDATE;
    return MLP_OK;
}

int mlp_train_step(mlp_model *model, int threads, int batch, const float *x, const float *targets,
                   float lr, float weight_decay, double *loss)
{
    const int status = check_stage(model, threads, batch, x);
    if (status != MLP_OK)
        return status;
    if (!targets)
        return MLP_ERR_NULL;
    if (check_step_size(lr, weight_decay) != MLP_OK)
        return MLP_ERR_ARG;
    /* Plan 11 or 16 where the model's plan picks it for this step; else plan 8's shared packing of the
     * weights. */
    const int plan = step_plan(model, threads, batch), owned = owns_rows(plan);
    const stage_args args = {.model = model, .batch = batch, .x = x, .targets = targets, .lr = lr,
                             .weight_decay = weight_decay, .owned = owned, .owned_copy = plan == PLAN_OWNED_COPY,
                             .shared_pack = !owned && fused_step(model) && batch <= MC && model->wpack[0] != NULL};
    run_team(threads, train_step_stage, &args);
    model->forward_batch = 0;
    model->next_backprop_layer = 0;
    model->grads_ready = 1;
    model->last_stage = STAGE_UPDATE;
    if (loss)
        *loss = mean_loss(model, batch);
    return MLP_OK;
}

/* ------------------------------------------------------------------ timeline */

int mlp_timeline_enable(mlp_model *model, int events_per_thread)
{
    if (!model)
        return MLP_ERR_NULL;
    if (events_per_thread < 0 || events_per_thread > SIZE_LIMIT)
        return MLP_ERR_SIZE;
    timeline_destroy(model->tl);
    model->tl = NULL;
    if (events_per_thread == 0)
        return MLP_OK;
    model->tl = timeline_create(model->max_threads, events_per_thread);
    return model->tl ? MLP_OK : MLP_ERR_MEMORY;
}

int mlp_timeline_read(const mlp_model *model, mlp_event *events, int capacity, int *count, int *dropped)
{
    if (!model || !count || (!events && capacity > 0))
        return MLP_ERR_NULL;
    if (capacity < 0)
        return MLP_ERR_SIZE;
    if (!model->tl)
        return MLP_ERR_STATE;
    return timeline_copy(model->tl, events, capacity, count, dropped);
}
