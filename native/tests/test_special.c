/* Special values through every instruction set, product version and thread count: NaN in inputs, weights,
 * biases or targets comes out as NaN (activations, probabilities, loss, gradients), and +-inf gives the
 * mathematical limit where one exists (tanh(+-inf) = +-1, sigmoid(+-inf) = 1 or 0, relu, softmax and the
 * losses at infinite logits). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mlp.h"

enum { HIDDEN = 19, BATCH = 4, OUTPUTS = 3 };

typedef struct {
    int isa, kernel, threads;
} setting;

static mlp_model *make(const setting *s, int n_layers, const int *sizes, int activation, int loss,
                       const float *const *weights, const float *const *biases)
{
    mlp_model *model = NULL;
    const int status = mlp_model_create(&model, n_layers, sizes, activation, loss, BATCH, s->threads, s->kernel,
                                        s->isa);
    CHECK(status == MLP_OK, "create: %s", mlp_error_message(status));
    for (int l = 0; model && l < n_layers; ++l)
        CHECK(mlp_model_set_layer(model, l + 1, weights[l], biases[l]) == MLP_OK, "set layer %d", l + 1);
    return model;
}

static int all_nan(const float *x, size_t n)
{
    for (size_t i = 0; i < n; ++i)
        if (!isnan(x[i]))
            return 0;
    return 1;
}

static int count_nan(const float *x, size_t n)
{
    int count = 0;
    for (size_t i = 0; i < n; ++i)
        count += isnan(x[i]) != 0;
    return count;
}

/* Hidden unit j = act(x + 0) for every j (W1 all ones): rows of x are NaN, +inf, -inf and 0.5. W2 is zero,
 * so only the NaN row reaches the output (0 * NaN), and with it the loss and every gradient. */
static void check_activation_limits(const setting *s, int activation, const char *label)
{
    static const double limits[3][2] = {{1.0, 0.0}, {1.0, -1.0}, {INFINITY, 0.0}}; /* act(+inf), act(-inf) */
    const int sizes[] = {1, HIDDEN, OUTPUTS};
    float w1[HIDDEN], b1[HIDDEN] = {0}, w2[OUTPUTS * HIDDEN] = {0}, b2[OUTPUTS] = {0};
    for (int j = 0; j < HIDDEN; ++j)
        w1[j] = 1.0f;
    const float *weights[] = {w1, w2}, *biases[] = {b1, b2};
    const float x[BATCH] = {NAN, INFINITY, -INFINITY, 0.5f};
    float t[BATCH * OUTPUTS] = {0};
    for (int i = 0; i < BATCH; ++i)
        t[i * OUTPUTS] = 1.0f;
    mlp_model *model = make(s, 2, sizes, activation, MLP_SOFTMAX_CE, weights, biases);
    if (!model)
        return;
    double loss = 0.0;
    CHECK(mlp_forward(model, s->threads, BATCH, x, t, &loss) == MLP_OK, "%s forward", label);
    const float *hidden = mlp_model_buffer(model, MLP_BUF_ACTIVATION, 1);
    CHECK(all_nan(hidden, HIDDEN), "%s act(NaN) is not NaN: %g", label, hidden[0]);
    for (int j = 0; j < HIDDEN; ++j) {
        CHECK(hidden[HIDDEN + j] == limits[activation][0], "%s act(+inf) = %g", label, hidden[HIDDEN + j]);
        CHECK(hidden[2 * HIDDEN + j] == limits[activation][1], "%s act(-inf) = %g", label, hidden[2 * HIDDEN + j]);
        CHECK(isfinite(hidden[3 * HIDDEN + j]), "%s act(0.5) = %g", label, hidden[3 * HIDDEN + j]);
    }
    const float *probs = mlp_model_buffer(model, MLP_BUF_ACTIVATION, 2);
    CHECK(all_nan(probs, OUTPUTS), "%s softmax of a NaN row: %g %g %g", label, probs[0], probs[1], probs[2]);
    CHECK(isnan(loss), "%s loss %g with a NaN row", label, loss);
    CHECK(mlp_backprop(model, s->threads, BATCH, x, t) == MLP_OK, "%s backprop", label);
    for (int l = 1; l <= 2; ++l) {
        CHECK(all_nan(mlp_model_buffer(model, MLP_BUF_GRAD_WEIGHTS, l), (size_t)sizes[l] * sizes[l - 1]),
              "%s dW %d not all NaN", label, l);
        CHECK(all_nan(mlp_model_buffer(model, MLP_BUF_GRAD_BIAS, l), (size_t)sizes[l]), "%s db %d", label, l);
    }
    mlp_model_destroy(model);
}

/* A NaN planted in one parameter or target of a trained-looking network reaches the output and the loss. */
static void check_planted_nan(const setting *s, int activation, int loss_kind, const char *label)
{
    const int n_out = loss_kind == MLP_SOFTMAX_CE ? OUTPUTS : 1;
    const int sizes[] = {5, HIDDEN, n_out};
    unsigned long long seed = 7;
    float x[BATCH * 5], t[BATCH * OUTPUTS] = {0};
    float w1[HIDDEN * 5], b1[HIDDEN], w2[OUTPUTS * HIDDEN], b2[OUTPUTS];
    for (int where = 0; where < 5; ++where) {
        fill_uniform(x, BATCH * 5, &seed, -1.0f, 1.0f);
        fill_uniform(w1, HIDDEN * 5, &seed, -1.0f, 1.0f);
        fill_uniform(b1, HIDDEN, &seed, -0.5f, 0.5f);
        fill_uniform(w2, OUTPUTS * HIDDEN, &seed, -1.0f, 1.0f);
        fill_uniform(b2, OUTPUTS, &seed, -0.5f, 0.5f);
        for (int i = 0; i < BATCH; ++i)
            t[i * n_out] = 1.0f;
        /* 0: first input; 1: a hidden weight; 2: a hidden bias; 3: an output weight; 4: a target. */
        float *spot[] = {&x[0], &w1[3], &b1[HIDDEN - 1], &w2[0], &t[0]};
        *spot[where] = NAN;
        const float *weights[] = {w1, w2}, *biases[] = {b1, b2};
        mlp_model *model = make(s, 2, sizes, activation, loss_kind, weights, biases);
        if (!model)
            return;
        double loss = 0.0;
        CHECK(mlp_forward(model, s->threads, BATCH, x, t, &loss) == MLP_OK, "%s forward", label);
        CHECK(isnan(loss), "%s NaN at %d: loss %g", label, where, loss);
        const float *probs = mlp_model_buffer(model, MLP_BUF_ACTIVATION, 2);
        /* A NaN input poisons its own row; a NaN parameter every row; a NaN target only the loss. */
        const int expected = where == 0 ? n_out : where == 4 ? 0 : BATCH * n_out;
        const int found = count_nan(probs, (size_t)BATCH * n_out);
        CHECK(found == expected, "%s NaN at %d: %d NaN outputs, expected %d", label, where, found, expected);
        mlp_model_destroy(model);
    }
}

/* One layer, one input of 1: the logits are the weights. */
static double loss_of_logits(const setting *s, int loss_kind, const float *w, int n, int target, float *probs)
{
    const int sizes[] = {1, n};
    float b[OUTPUTS] = {0}, t[OUTPUTS] = {0};
    const float x[1] = {1.0f};
    const float *weights[] = {w}, *biases[] = {b};
    if (loss_kind == MLP_SOFTMAX_CE)
        t[target] = 1.0f;
    else
        t[0] = (float)target / 2.0f; /* 0, 0.5, 1 */
    mlp_model *model = make(s, 1, sizes, MLP_SIGMOID, loss_kind, weights, biases);
    if (!model)
        return -1.0;
    double loss = -1.0;
    CHECK(mlp_forward(model, s->threads, 1, x, t, &loss) == MLP_OK, "forward");
    memcpy(probs, mlp_model_buffer(model, MLP_BUF_ACTIVATION, 1), (size_t)n * sizeof(float));
    mlp_model_destroy(model);
    return loss;
}

static void check_loss_limits(const setting *s, const char *label)
{
    float p[OUTPUTS];
    const float one_inf[] = {INFINITY, 0.0f, 2.0f};
    CHECK(loss_of_logits(s, MLP_SOFTMAX_CE, one_inf, 3, 0, p) == 0.0, "%s CE, target at +inf", label);
    CHECK(p[0] == 1.0f && p[1] == 0.0f && p[2] == 0.0f, "%s softmax one +inf: %g %g %g", label, p[0], p[1], p[2]);
    CHECK(loss_of_logits(s, MLP_SOFTMAX_CE, one_inf, 3, 1, p) == INFINITY, "%s CE, target off +inf", label);
    const float two_inf[] = {INFINITY, INFINITY, 0.0f};
    CHECK(isnan(loss_of_logits(s, MLP_SOFTMAX_CE, two_inf, 3, 0, p)) && all_nan(p, 3), "%s two +inf", label);
    const float minus_inf[] = {-INFINITY, 0.0f, 0.0f};
    CHECK(loss_of_logits(s, MLP_SOFTMAX_CE, minus_inf, 3, 0, p) == INFINITY, "%s CE, target at -inf", label);
    CHECK(p[0] == 0.0f && p[1] == 0.5f && p[2] == 0.5f, "%s softmax -inf: %g %g %g", label, p[0], p[1], p[2]);
    CHECK(fabs(loss_of_logits(s, MLP_SOFTMAX_CE, minus_inf, 3, 1, p) - log(2.0)) < 1e-7, "%s CE beside -inf",
          label);
    const float plus[] = {INFINITY}, minus[] = {-INFINITY};
    CHECK(loss_of_logits(s, MLP_SIGMOID_BCE, plus, 1, 2, p) == 0.0 && p[0] == 1.0f, "%s BCE(+inf, 1)", label);
    CHECK(loss_of_logits(s, MLP_SIGMOID_BCE, plus, 1, 1, p) == INFINITY, "%s BCE(+inf, 0.5)", label);
    CHECK(loss_of_logits(s, MLP_SIGMOID_BCE, minus, 1, 0, p) == 0.0 && p[0] == 0.0f, "%s BCE(-inf, 0)", label);
    CHECK(loss_of_logits(s, MLP_SIGMOID_BCE, minus, 1, 2, p) == INFINITY, "%s BCE(-inf, 1)", label);
}

int main(void)
{
    const int max_threads = mlp_has_openmp() ? 3 : 1;
    for (int isa = MLP_ISA_PORTABLE; isa <= MLP_ISA_AVX512; ++isa) {
        if (!mlp_isa_supported(isa)) {
            printf("test_special: this CPU cannot run isa %d; skipped\n", isa);
            continue;
        }
        for (int kernel = MLP_KERNEL_NAIVE; kernel <= MLP_KERNEL_PACKED; ++kernel)
            for (int threads = 1; threads <= max_threads; threads += 2) {
                const setting s = {isa, kernel, threads};
                char label[96];
                for (int activation = MLP_SIGMOID; activation <= MLP_RELU; ++activation) {
                    snprintf(label, sizeof label, "isa %d kernel %d threads %d act %d", isa, kernel, threads,
                             activation);
                    check_activation_limits(&s, activation, label);
                    check_planted_nan(&s, activation, MLP_SOFTMAX_CE, label);
                    check_planted_nan(&s, activation, MLP_SIGMOID_BCE, label);
                }
                snprintf(label, sizeof label, "isa %d kernel %d threads %d", isa, kernel, threads);
                check_loss_limits(&s, label);
            }
    }
    return check_report(mlp_has_openmp() ? "test_special (omp)"
                        : mlp_has_blas() ? "test_special (blas)" : "test_special (serial)");
}
