#define _POSIX_C_SOURCE 200112L
/* The network's stages against a plain double-precision reference written here, for every product version,
 * activation and loss, on sizes that divide no tile; bit-identical results for 1, 2 and 3 threads; the
 * fused training step equal to the three stage calls; and the error codes and stage order. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mlp.h"

#define TOLERANCE 1e-5
#define MAX_LAYERS 4

typedef struct {
    int n_layers;
    int sizes[MAX_LAYERS + 1];
    int activation, loss, batch;
} config;

/* Inputs and initial parameters of one case, in float. */
typedef struct {
    const config *cfg;
    float *x, *t;
    float *w[MAX_LAYERS], *b[MAX_LAYERS];
} case_data;

/* Everything the reference computes, in double. */
typedef struct {
    double *act[MAX_LAYERS]; /* layer outputs; the last one holds the probabilities */
    double loss;
    double *dw[MAX_LAYERS], *db[MAX_LAYERS];
    double *w_new[MAX_LAYERS], *b_new[MAX_LAYERS];
} reference;

static const float LR = 0.1f, WEIGHT_DECAY = 1e-3f;

static double activate(double z, int activation)
{
    if (activation == MLP_SIGMOID)
        return 1.0 / (1.0 + exp(-z));
    if (activation == MLP_TANH)
        return tanh(z);
    return z > 0.0 ? z : 0.0;
}

static double derivative(double a, int activation)
{
    if (activation == MLP_SIGMOID)
        return a * (1.0 - a);
    if (activation == MLP_TANH)
        return 1.0 - a * a;
    return a > 0.0 ? 1.0 : 0.0;
}

static void reference_step(const case_data *d, reference *r)
{
    const config *c = d->cfg;
    const int batch = c->batch, last = c->n_layers - 1;
    const double *input = NULL;
    double *x = malloc(sizeof(double) * (size_t)batch * c->sizes[0]);
    for (int e = 0; e < batch * c->sizes[0]; ++e)
        x[e] = d->x[e];
    input = x;
    double *logits = NULL;
    for (int l = 0; l <= last; ++l) {
        const int n_in = c->sizes[l], n_out = c->sizes[l + 1];
        double *z = malloc(sizeof(double) * (size_t)batch * n_out);
        for (int i = 0; i < batch; ++i)
            for (int j = 0; j < n_out; ++j) {
                double sum = d->b[l][j];
                for (int p = 0; p < n_in; ++p)
                    sum += input[i * n_in + p] * d->w[l][j * n_in + p];
                z[i * n_out + j] = sum;
            }
        r->act[l] = malloc(sizeof(double) * (size_t)batch * n_out);
        if (l < last)
            for (int e = 0; e < batch * n_out; ++e)
                r->act[l][e] = activate(z[e], c->activation);
        input = r->act[l];
        if (l == last)
            logits = z;
        else
            free(z);
    }
    const int n = c->sizes[c->n_layers];
    r->loss = 0.0;
    for (int i = 0; i < batch; ++i) {
        const double *z = logits + i * n;
        const float *t = d->t + i * n;
        if (c->loss == MLP_SOFTMAX_CE) {
            double z_max = z[0], sum = 0.0;
            for (int j = 1; j < n; ++j)
                z_max = z[j] > z_max ? z[j] : z_max;
            for (int j = 0; j < n; ++j)
                sum += exp(z[j] - z_max);
            for (int j = 0; j < n; ++j) {
                r->act[last][i * n + j] = exp(z[j] - z_max) / sum;
                r->loss -= t[j] * (z[j] - z_max - log(sum));
            }
        } else {
            for (int j = 0; j < n; ++j) {
                r->act[last][i * n + j] = 1.0 / (1.0 + exp(-z[j]));
                r->loss += log1p(exp(-fabs(z[j]))) + fmax(z[j], 0.0) - t[j] * z[j];
            }
        }
    }
    r->loss /= batch;
    free(logits);

    double *delta = malloc(sizeof(double) * (size_t)batch * n);
    for (int e = 0; e < batch * n; ++e)
        delta[e] = (r->act[last][e] - d->t[e]) / batch;
    for (int l = last; l >= 0; --l) {
        const int n_in = c->sizes[l], n_out = c->sizes[l + 1];
        const double *a_prev = l > 0 ? r->act[l - 1] : x;
        r->dw[l] = calloc((size_t)n_out * n_in, sizeof(double));
        r->db[l] = calloc((size_t)n_out, sizeof(double));
        for (int i = 0; i < batch; ++i)
            for (int j = 0; j < n_out; ++j) {
                r->db[l][j] += delta[i * n_out + j];
                for (int p = 0; p < n_in; ++p)
                    r->dw[l][j * n_in + p] += delta[i * n_out + j] * a_prev[i * n_in + p];
            }
        if (l > 0) {
            double *below = calloc((size_t)batch * n_in, sizeof(double));
            for (int i = 0; i < batch; ++i)
                for (int p = 0; p < n_in; ++p) {
                    double sum = 0.0;
                    for (int j = 0; j < n_out; ++j)
                        sum += delta[i * n_out + j] * d->w[l][j * n_in + p];
                    below[i * n_in + p] = sum * derivative(a_prev[i * n_in + p], c->activation);
                }
            free(delta);
            delta = below;
        }
        r->w_new[l] = malloc(sizeof(double) * (size_t)n_out * n_in);
        r->b_new[l] = malloc(sizeof(double) * (size_t)n_out);
        for (int e = 0; e < n_out * n_in; ++e)
            r->w_new[l][e] = d->w[l][e] - (double)LR * (r->dw[l][e] + (double)WEIGHT_DECAY * d->w[l][e]);
        for (int j = 0; j < n_out; ++j)
            r->b_new[l][j] = d->b[l][j] - (double)LR * r->db[l][j];
    }
    free(delta);
    free(x);
}

static void reference_free(const config *c, reference *r)
{
    for (int l = 0; l < c->n_layers; ++l) {
        free(r->act[l]);
        free(r->dw[l]);
        free(r->db[l]);
        free(r->w_new[l]);
        free(r->b_new[l]);
    }
}

static void case_make(const config *c, unsigned long long seed, case_data *d)
{
    d->cfg = c;
    const int n = c->sizes[c->n_layers];
    d->x = malloc(sizeof(float) * (size_t)c->batch * c->sizes[0]);
    d->t = calloc((size_t)c->batch * n, sizeof(float));
    fill_uniform(d->x, (size_t)c->batch * c->sizes[0], &seed, -2.0f, 2.0f);
    for (int i = 0; i < c->batch; ++i) {
        if (c->loss == MLP_SOFTMAX_CE)
            d->t[i * n + (int)uniform(&seed, 0.0f, (float)n)] = 1.0f;
        else
            fill_uniform(d->t + i * n, (size_t)n, &seed, 0.0f, 1.0f);
    }
    for (int l = 0; l < c->n_layers; ++l) {
        const int n_in = c->sizes[l], n_out = c->sizes[l + 1];
        const float bound = sqrtf(6.0f / (float)(n_in + n_out));
        d->w[l] = malloc(sizeof(float) * (size_t)n_out * n_in);
        d->b[l] = malloc(sizeof(float) * (size_t)n_out);
        fill_uniform(d->w[l], (size_t)n_out * n_in, &seed, -bound, bound);
        fill_uniform(d->b[l], (size_t)n_out, &seed, -0.5f, 0.5f);
    }
}

static void case_free(case_data *d)
{
    free(d->x);
    free(d->t);
    for (int l = 0; l < d->cfg->n_layers; ++l) {
        free(d->w[l]);
        free(d->b[l]);
    }
}

static mlp_model *model_make(const case_data *d, int max_threads, int kernel, int isa)
{
    const config *c = d->cfg;
    mlp_model *model = NULL;
    const int status = mlp_model_create(&model, c->n_layers, c->sizes, c->activation, c->loss, c->batch + 3,
                                        max_threads, kernel, isa);
    CHECK(status == MLP_OK, "create: %s", mlp_error_message(status));
    for (int l = 0; model && l < c->n_layers; ++l)
        CHECK(mlp_model_set_layer(model, l + 1, d->w[l], d->b[l]) == MLP_OK, "set layer %d", l + 1);
    return model;
}

/* All of one model's results after a step, flattened, for bitwise comparison between thread counts. */
static size_t snapshot(mlp_model *model, const config *c, float *out)
{
    size_t used = 0;
    for (int l = 1; l <= c->n_layers; ++l) {
        const size_t n_w = (size_t)c->sizes[l] * c->sizes[l - 1], n_b = (size_t)c->sizes[l];
        const size_t n_a = (size_t)c->batch * c->sizes[l];
        memcpy(out + used, mlp_model_buffer(model, MLP_BUF_WEIGHTS, l), n_w * sizeof(float)), used += n_w;
        memcpy(out + used, mlp_model_buffer(model, MLP_BUF_BIAS, l), n_b * sizeof(float)), used += n_b;
        memcpy(out + used, mlp_model_buffer(model, MLP_BUF_GRAD_WEIGHTS, l), n_w * sizeof(float)), used += n_w;
        memcpy(out + used, mlp_model_buffer(model, MLP_BUF_GRAD_BIAS, l), n_b * sizeof(float)), used += n_b;
        memcpy(out + used, mlp_model_buffer(model, MLP_BUF_ACTIVATION, l), n_a * sizeof(float)), used += n_a;
    }
    return used;
}

static size_t snapshot_size(const config *c)
{
    size_t total = 0;
    for (int l = 1; l <= c->n_layers; ++l)
        total += 2 * ((size_t)c->sizes[l] * c->sizes[l - 1] + c->sizes[l]) + (size_t)c->batch * c->sizes[l];
    return total;
}

/* Poison, run each stage, compare each quantity with the reference. */
static void check_stages(const case_data *d, const reference *r, mlp_model *model, int threads,
                         const char *label)
{
    const config *c = d->cfg;
    double loss = NAN;
    CHECK(mlp_poison(model) == MLP_OK, "poison");
    CHECK(mlp_forward(model, threads, c->batch, d->x, d->t, &loss) == MLP_OK, "%s forward", label);
    CHECK(fabs(loss - r->loss) <= TOLERANCE * fabs(r->loss), "%s loss %g vs %g", label, loss, r->loss);
    for (int l = 1; l <= c->n_layers; ++l) {
        const double err = relative_error(mlp_model_buffer(model, MLP_BUF_ACTIVATION, l), r->act[l - 1],
                                          (size_t)c->batch * c->sizes[l]);
        CHECK(err <= TOLERANCE, "%s activation %d: relative error %g", label, l, err);
    }
    CHECK(mlp_poison(model) == MLP_OK, "poison");
    CHECK(mlp_backprop(model, threads, c->batch, d->x, d->t) == MLP_OK, "%s backprop", label);
    for (int l = 1; l <= c->n_layers; ++l) {
        const size_t n_w = (size_t)c->sizes[l] * c->sizes[l - 1];
        double err = relative_error(mlp_model_buffer(model, MLP_BUF_GRAD_WEIGHTS, l), r->dw[l - 1], n_w);
        CHECK(err <= TOLERANCE, "%s dW %d: relative error %g", label, l, err);
        err = relative_error(mlp_model_buffer(model, MLP_BUF_GRAD_BIAS, l), r->db[l - 1], (size_t)c->sizes[l]);
        CHECK(err <= TOLERANCE, "%s db %d: relative error %g", label, l, err);
    }
    CHECK(mlp_update(model, threads, LR, WEIGHT_DECAY) == MLP_OK, "%s update", label);
    for (int l = 1; l <= c->n_layers; ++l) {
        const size_t n_w = (size_t)c->sizes[l] * c->sizes[l - 1];
        double err = relative_error(mlp_model_buffer(model, MLP_BUF_WEIGHTS, l), r->w_new[l - 1], n_w);
        CHECK(err <= TOLERANCE, "%s W %d after update: relative error %g", label, l, err);
        err = relative_error(mlp_model_buffer(model, MLP_BUF_BIAS, l), r->b_new[l - 1], (size_t)c->sizes[l]);
        CHECK(err <= TOLERANCE, "%s b %d after update: relative error %g", label, l, err);
    }
}

static const config CONFIGS[] = {
    {3, {7, 33, 17, 3}, MLP_SIGMOID, MLP_SOFTMAX_CE, 9},
    {3, {7, 33, 17, 3}, MLP_TANH, MLP_SOFTMAX_CE, 1},
    {3, {7, 33, 17, 3}, MLP_RELU, MLP_SOFTMAX_CE, 33},
    {2, {33, 257, 1}, MLP_SIGMOID, MLP_SIGMOID_BCE, 7},
    {2, {300, 20, 5}, MLP_TANH, MLP_SIGMOID_BCE, 13},
    {1, {5, 2}, MLP_RELU, MLP_SOFTMAX_CE, 2},
    /* Batches of at most MLP_DOT_ROWS rows through layers of at least MLP_DOT_MIN_COLS outputs: the forward's
     * dot products, with k of 9 (all tail), 65 (one lane past 64) and 70. */
    {3, {9, 65, 70, 1}, MLP_RELU, MLP_SIGMOID_BCE, 4},
    {2, {70, 64, 3}, MLP_SIGMOID, MLP_SOFTMAX_CE, 1},
};

static void test_stages(int isa, int max_threads)
{
    for (size_t ci = 0; ci < sizeof CONFIGS / sizeof CONFIGS[0]; ++ci) {
        const config *c = &CONFIGS[ci];
        case_data d;
        reference r;
        case_make(c, 1000 + ci, &d);
        reference_step(&d, &r);
        const size_t n_snap = snapshot_size(c);
        float *first = malloc(n_snap * sizeof(float)), *now = malloc(n_snap * sizeof(float));
        for (int kernel = MLP_KERNEL_NAIVE; kernel <= MLP_KERNEL_PACKED; ++kernel)
            for (int threads = 1; threads <= max_threads; ++threads) {
                char label[96];
                snprintf(label, sizeof label, "config %zu isa %d kernel %d threads %d", ci, isa, kernel, threads);
                mlp_model *model = model_make(&d, max_threads, kernel, isa);
                if (!model)
                    continue;
                check_stages(&d, &r, model, threads, label);
                snapshot(model, c, threads == 1 ? first : now);
                if (threads > 1)
                    CHECK(memcmp(first, now, n_snap * sizeof(float)) == 0, "%s: differs from 1 thread", label);
                /* The fused step computes exactly what the three stage calls compute. */
                mlp_model *fused = model_make(&d, max_threads, kernel, isa);
                double loss = NAN;
                CHECK(mlp_train_step(fused, threads, c->batch, d.x, d.t, LR, WEIGHT_DECAY, &loss) == MLP_OK,
                      "%s train step", label);
                snapshot(fused, c, now);
                CHECK(memcmp(first, now, n_snap * sizeof(float)) == 0, "%s: fused step differs", label);
                mlp_model_destroy(fused);
                mlp_model_destroy(model);
            }
        free(first);
        free(now);
        reference_free(c, &r);
        case_free(&d);
    }
}

/* The gradient block holds [dW_1, db_1, ..., dW_L, db_L] with the per-layer buffers pointing into it, and
 * the layer-wise backprop writes exactly (bit for bit) what mlp_backprop writes. */
static void test_gradient_block_and_layerwise(int isa, int max_threads)
{
    for (size_t ci = 0; ci < sizeof CONFIGS / sizeof CONFIGS[0]; ++ci) {
        const config *c = &CONFIGS[ci];
        case_data d;
        case_make(c, 2000 + ci, &d);
        for (int kernel = MLP_KERNEL_NAIVE; kernel <= MLP_KERNEL_PACKED; ++kernel)
            for (int threads = 1; threads <= max_threads; threads += 2) {
                char label[96];
                snprintf(label, sizeof label, "config %zu isa %d kernel %d threads %d", ci, isa, kernel, threads);
                mlp_model *whole = model_make(&d, max_threads, kernel, isa);
                mlp_model *layered = model_make(&d, max_threads, kernel, isa);
                if (!whole || !layered) {
                    mlp_model_destroy(whole);
                    mlp_model_destroy(layered);
                    continue;
                }
                long long count = -1, count_layered = -1;
                float *block = mlp_model_gradient_block(whole, &count);
                float *block_layered = mlp_model_gradient_block(layered, &count_layered);
                long long offset = 0;
                for (int l = 1; l <= c->n_layers; ++l) {
                    const long long n_w = (long long)c->sizes[l] * c->sizes[l - 1];
                    CHECK(mlp_model_buffer(whole, MLP_BUF_GRAD_WEIGHTS, l) == block + offset, "%s dW %d", label, l);
                    CHECK(mlp_model_buffer(whole, MLP_BUF_GRAD_BIAS, l) == block + offset + n_w, "%s db %d", label, l);
                    offset += n_w + c->sizes[l];
                }
                CHECK(count == offset && count_layered == offset, "%s count %lld, expected %lld", label, count,
                      offset);
                CHECK(mlp_poison(whole) == MLP_OK && mlp_poison(layered) == MLP_OK, "poison");
                CHECK(mlp_forward(whole, threads, c->batch, d.x, d.t, NULL) == MLP_OK, "%s forward", label);
                CHECK(mlp_backprop(whole, threads, c->batch, d.x, d.t) == MLP_OK, "%s backprop", label);
                CHECK(mlp_forward(layered, threads, c->batch, d.x, d.t, NULL) == MLP_OK, "%s forward", label);
                if (c->n_layers > 1)
                    CHECK(mlp_backprop_layer(layered, threads, c->batch, d.x, d.t, c->n_layers - 1) == MLP_ERR_STATE,
                          "%s layer below first", label);
                for (int l = c->n_layers; l >= 1; --l) {
                    CHECK(mlp_update(layered, threads, LR, 0.0f) == MLP_ERR_STATE, "%s update mid-way", label);
                    CHECK(mlp_backprop_layer(layered, threads, c->batch, d.x, d.t, l) == MLP_OK, "%s layer %d",
                          label, l);
                    if (l > 1)
                        CHECK(mlp_backprop_layer(layered, threads, c->batch, d.x, d.t, l) == MLP_ERR_STATE,
                              "%s layer %d twice", label, l);
                }
                CHECK(memcmp(block, block_layered, (size_t)count * sizeof(float)) == 0,
                      "%s layer-wise gradients differ from mlp_backprop", label);
                CHECK(mlp_update(layered, threads, LR, 0.0f) == MLP_OK, "%s update", label);
                mlp_model_destroy(whole);
                mlp_model_destroy(layered);
            }
        case_free(&d);
    }
}

static void test_errors_and_order(void)
{
    const int sizes[] = {4, 3, 2};
    mlp_model *m = NULL;
    CHECK(mlp_model_create(NULL, 2, sizes, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 1, 3, 0) == MLP_ERR_NULL, "out");
    CHECK(mlp_model_create(&m, 2, NULL, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 1, 3, 0) == MLP_ERR_NULL, "sizes");
    CHECK(mlp_model_create(&m, 0, sizes, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 1, 3, 0) == MLP_ERR_SIZE, "layers");
    const int zero_width[] = {4, 0, 2};
    CHECK(mlp_model_create(&m, 2, zero_width, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 1, 3, 0) == MLP_ERR_SIZE, "width");
    CHECK(mlp_model_create(&m, 2, sizes, 7, MLP_SOFTMAX_CE, 4, 1, 3, 0) == MLP_ERR_ARG, "activation");
    CHECK(mlp_model_create(&m, 2, sizes, MLP_SIGMOID, 5, 4, 1, 3, 0) == MLP_ERR_ARG, "loss");
    const int one_output[] = {4, 1};
    CHECK(mlp_model_create(&m, 1, one_output, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 1, 3, 0) == MLP_ERR_ARG, "softmax 1");
    CHECK(mlp_model_create(&m, 2, sizes, MLP_SIGMOID, MLP_SOFTMAX_CE, 0, 1, 3, 0) == MLP_ERR_SIZE, "max_batch");
    CHECK(mlp_model_create(&m, 2, sizes, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 0, 3, 0) == MLP_ERR_THREADS, "threads");
    CHECK(mlp_model_create(&m, 2, sizes, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 1, 9, 0) == MLP_ERR_KERNEL, "kernel");
    CHECK(mlp_model_create(&m, 2, sizes, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 1, 3, 17) == MLP_ERR_ISA, "isa");
    CHECK(m == NULL, "no model after failures");
    CHECK(mlp_model_create(&m, 2, sizes, MLP_SIGMOID, MLP_SOFTMAX_CE, 4, 2, 3, 0) == MLP_OK, "create");
    if (!m)
        return;
    CHECK(mlp_model_isa(m) == mlp_best_isa(), "auto isa");
    float x[20] = {0}, t[10] = {0}, w[12] = {0}, b[3] = {0};
    for (int i = 0; i < 5; ++i)
        t[2 * i] = 1.0f;
    CHECK(mlp_model_set_layer(m, 0, w, b) == MLP_ERR_SIZE, "layer 0");
    CHECK(mlp_model_set_layer(m, 3, w, b) == MLP_ERR_SIZE, "layer 3");
    CHECK(mlp_model_set_layer(m, 1, NULL, b) == MLP_ERR_NULL, "null weights");
    CHECK(mlp_model_buffer(m, MLP_BUF_WEIGHTS, 0) == NULL && mlp_model_buffer(m, 99, 1) == NULL, "buffer");
    CHECK(mlp_model_buffer(NULL, MLP_BUF_WEIGHTS, 1) == NULL, "buffer of NULL");
    CHECK(mlp_backprop(m, 1, 4, x, t) == MLP_ERR_STATE, "backprop before forward");
    CHECK(mlp_update(m, 1, 0.1f, 0.0f) == MLP_ERR_STATE, "update before backprop");
    CHECK(mlp_forward(m, 1, 5, x, t, NULL) == MLP_ERR_SIZE, "batch > max_batch");
    CHECK(mlp_forward(m, 1, 0, x, t, NULL) == MLP_ERR_SIZE, "batch 0");
    CHECK(mlp_forward(m, 3, 4, x, t, NULL) == MLP_ERR_THREADS, "threads > max");
    CHECK(mlp_forward(m, 1, 4, NULL, t, NULL) == MLP_ERR_NULL, "null x");
    CHECK(mlp_forward(NULL, 1, 4, x, t, NULL) == MLP_ERR_NULL, "null model");
    double loss = 0.0;
    CHECK(mlp_forward(m, 2, 4, x, NULL, &loss) == MLP_OK && isnan(loss), "forward without targets");
    CHECK(mlp_backprop(m, 2, 4, x, NULL) == MLP_ERR_NULL, "backprop without targets");
    CHECK(mlp_backprop(m, 2, 3, x, t) == MLP_ERR_STATE, "backprop on another batch size");
    CHECK(mlp_forward(m, 2, 4, x, t, &loss) == MLP_OK && fabs(loss - log(2.0)) < 1e-6, "loss of zeros");
    /* Poison after forward keeps what backprop reads; after backprop, what update reads. */
    CHECK(mlp_poison(m) == MLP_OK, "poison");
    CHECK(mlp_backprop(m, 2, 4, x, t) == MLP_OK, "backprop after poison");
    CHECK(isfinite(mlp_model_buffer(m, MLP_BUF_GRAD_WEIGHTS, 1)[0]), "gradients written");
    CHECK(mlp_poison(m) == MLP_OK, "poison");
    CHECK(isnan(mlp_model_buffer(m, MLP_BUF_ACTIVATION, 1)[0]), "activations poisoned after backprop");
    CHECK(mlp_backprop(m, 2, 4, x, t) == MLP_ERR_STATE, "backprop on poisoned activations");
    CHECK(mlp_update(m, 2, NAN, 0.0f) == MLP_ERR_ARG, "NaN lr");
    CHECK(mlp_update(m, 2, 0.1f, INFINITY) == MLP_ERR_ARG, "infinite decay");
    CHECK(mlp_update(m, 0, 0.1f, 0.0f) == MLP_ERR_THREADS, "update threads 0");
    CHECK(mlp_update(m, 2, 0.1f, 0.0f) == MLP_OK, "update after poison");
    CHECK(mlp_backprop(m, 2, 4, x, t) == MLP_ERR_STATE, "backprop after update needs a new forward");
    CHECK(mlp_train_step(m, 2, 4, x, NULL, 0.1f, 0.0f, NULL) == MLP_ERR_NULL, "train step without targets");
    CHECK(mlp_train_step(m, 2, 4, x, t, 0.1f, 0.0f, &loss) == MLP_OK && isfinite(loss), "train step");
    CHECK(mlp_poison(NULL) == MLP_ERR_NULL, "poison NULL");
    CHECK(mlp_model_isa(NULL) == MLP_ISA_AUTO, "isa of NULL");
    long long count = 7;
    CHECK(mlp_model_gradient_block(NULL, &count) == NULL && count == 0, "gradient block of NULL");
    CHECK(mlp_model_gradient_block(m, NULL) == mlp_model_buffer(m, MLP_BUF_GRAD_WEIGHTS, 1), "block without count");
    CHECK(mlp_backprop_layer(NULL, 1, 4, x, t, 1) == MLP_ERR_NULL, "layer-wise NULL model");
    CHECK(mlp_backprop_layer(m, 1, 4, x, t, 2) == MLP_ERR_STATE, "layer-wise before forward");
    CHECK(mlp_forward(m, 1, 4, x, t, NULL) == MLP_OK, "forward");
    CHECK(mlp_backprop_layer(m, 1, 4, x, NULL, 2) == MLP_ERR_NULL, "layer-wise without targets");
    CHECK(mlp_backprop_layer(m, 1, 4, x, t, 0) == MLP_ERR_SIZE, "layer 0");
    CHECK(mlp_backprop_layer(m, 1, 4, x, t, 3) == MLP_ERR_SIZE, "layer past the last");
    CHECK(mlp_backprop_layer(m, 1, 3, x, t, 2) == MLP_ERR_STATE, "layer-wise on another batch size");
    CHECK(mlp_backprop_layer(m, 1, 4, x, t, 2) == MLP_OK, "output layer");
    CHECK(mlp_poison(m) == MLP_OK, "poison mid-way");
    CHECK(mlp_backprop_layer(m, 1, 4, x, t, 1) == MLP_ERR_STATE, "after poison the pass starts again");
    CHECK(mlp_backprop_layer(m, 1, 4, x, t, 2) == MLP_OK && mlp_backprop_layer(m, 1, 4, x, t, 1) == MLP_OK,
          "whole pass after poison");
    CHECK(isfinite(mlp_model_buffer(m, MLP_BUF_GRAD_BIAS, 1)[0]), "gradients written layer by layer");
    mlp_model_destroy(m);
    mlp_model_destroy(NULL);
}

int main(void)
{
    const int max_threads = mlp_has_openmp() ? 3 : 1;
    test_errors_and_order();
    for (int isa = MLP_ISA_PORTABLE; isa <= MLP_ISA_AVX512; ++isa) {
        if (!mlp_isa_supported(isa)) {
            printf("test_model: this CPU cannot run isa %d; skipped\n", isa);
            continue;
        }
        /* Every plan of the fused step (MLP_STEP_PLAN, read at creation): 8, the default, 11 and 16. */
        static const char *const plans[] = {"8", "11", "16"};
        for (size_t pi = 0; pi < sizeof plans / sizeof *plans; ++pi) {
            setenv("MLP_STEP_PLAN", plans[pi], 1);
            test_stages(isa, max_threads);
        }
        unsetenv("MLP_STEP_PLAN");
        test_gradient_block_and_layerwise(isa, max_threads);
    }
    return check_report(mlp_has_openmp() ? "test_model (omp)"
                        : mlp_has_blas() ? "test_model (blas)" : "test_model (serial)");
}
