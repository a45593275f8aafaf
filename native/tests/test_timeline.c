/* The many-thread partition (tile lists for short products, fused updates) and the timeline: two training
 * steps bit-identical for 1, 2, 5, 8 and 16 threads, with the timeline on or off, on every kernel set and
 * under every plan of the fused step (MLP_STEP_PLAN: 12, the default rule, 8, 11 and 16); the rule's choice per
 * step (mlp_step_plan); the timeline's multiply-adds cover each product's tiles exactly once; its error
 * codes. */
#define _POSIX_C_SOURCE 200112L
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mlp.h"

typedef struct {
    int n_layers;
    int sizes[5];
    int activation, loss, batch;
} config;

static const config CONFIGS[] = {
    {4, {2, 30, 300, 40, 1}, MLP_SIGMOID, MLP_SIGMOID_BCE, 32},  /* narrow and wide, one output */
    {2, {64, 128, 10}, MLP_TANH, MLP_SOFTMAX_CE, 7},
    {2, {5, 40, 33}, MLP_RELU, MLP_SOFTMAX_CE, 50},              /* outputs wider than one sliver */
};

/* Two steps from fixed parameters; returns the model (timeline on if asked). */
static mlp_model *stepped(const config *c, int threads, int isa, int timeline)
{
    unsigned long long seed = 7;
    mlp_model *model = NULL;
    CHECK(mlp_model_create(&model, c->n_layers, c->sizes, c->activation, c->loss, c->batch, threads,
                           MLP_KERNEL_PACKED, isa) == MLP_OK, "create");
    if (!model)
        return NULL;
    for (int l = 1; l <= c->n_layers; ++l) {
        const size_t n_w = (size_t)c->sizes[l] * c->sizes[l - 1];
        float *w = malloc(n_w * sizeof(float)), *b = malloc((size_t)c->sizes[l] * sizeof(float));
        fill_uniform(w, n_w, &seed, -0.3f, 0.3f);
        fill_uniform(b, (size_t)c->sizes[l], &seed, -0.3f, 0.3f);
        CHECK(mlp_model_set_layer(model, l, w, b) == MLP_OK, "set layer");
        free(w);
        free(b);
    }
    const int n_out = c->sizes[c->n_layers];
    float *x = malloc((size_t)c->batch * c->sizes[0] * sizeof(float));
    float *t = calloc((size_t)c->batch * n_out, sizeof(float));
    fill_uniform(x, (size_t)c->batch * c->sizes[0], &seed, -2.0f, 2.0f);
    for (int i = 0; i < c->batch; ++i)
        t[i * n_out + i % n_out] = 1.0f;
    if (timeline)
        CHECK(mlp_timeline_enable(model, 256) == MLP_OK, "enable");
    for (int step = 0; step < 2; ++step)
        CHECK(mlp_train_step(model, threads, c->batch, x, t, 0.1f, 1e-3f, NULL) == MLP_OK, "step");
    free(x);
    free(t);
    return model;
}

static int same_parameters(mlp_model *a, mlp_model *b, const config *c)
{
    for (int l = 1; l <= c->n_layers; ++l) {
        const size_t n_w = (size_t)c->sizes[l] * c->sizes[l - 1];
        if (memcmp(mlp_model_buffer(a, MLP_BUF_WEIGHTS, l), mlp_model_buffer(b, MLP_BUF_WEIGHTS, l),
                   n_w * sizeof(float)) != 0 ||
            memcmp(mlp_model_buffer(a, MLP_BUF_BIAS, l), mlp_model_buffer(b, MLP_BUF_BIAS, l),
                   (size_t)c->sizes[l] * sizeof(float)) != 0)
            return 0;
    }
    return 1;
}

/* Multiply-adds of a product as the timeline counts them: whole tiles, or, in the BLAS build, m n k. */
static long long padded(int m, int n, int k, int mr, int nr)
{
    if (mlp_has_blas())
        return (long long)m * n * k;
    return (long long)((m + mr - 1) / mr * mr) * ((n + nr - 1) / nr * nr) * k;
}

/* `transposed`: plan 11 or 16, whose hidden layers' forward products are (n_out, batch). */
static void check_timeline(mlp_model *model, const config *c, int threads, int transposed)
{
    int count = -1, dropped = -1;
    CHECK(mlp_timeline_read(model, NULL, 0, &count, &dropped) == MLP_ERR_SIZE && count > 0 && dropped == 0,
          "count");
    mlp_event *events = calloc((size_t)count, sizeof *events);
    CHECK(mlp_timeline_read(model, events, count, &count, NULL) == MLP_OK, "read");
    const int wide = mlp_model_isa(model) == MLP_ISA_AVX512, mr = wide ? 8 : 6, nr = wide ? 32 : 16;
    for (int l = 1; l <= c->n_layers; ++l) {
        long long forward = 0, weight = 0;
        for (int e = 0; e < count; ++e) {
            CHECK(events[e].thread >= 0 && events[e].thread < threads && events[e].team == threads, "thread");
            CHECK(events[e].end_ns >= events[e].start_ns, "order");
            if (events[e].layer == l && events[e].kind == MLP_EV_FORWARD)
                forward += events[e].work;
            if (events[e].layer == l && events[e].kind == MLP_EV_WEIGHT_GRAD)
                weight += events[e].work;
        }
        const long long forward_tiles = transposed && l < c->n_layers
                                            ? padded(c->sizes[l], c->batch, c->sizes[l - 1], mr, nr)
                                            : padded(c->batch, c->sizes[l], c->sizes[l - 1], mr, nr);
        CHECK(forward == forward_tiles, "layer %d forward tiles", l);
        CHECK(weight == padded(c->sizes[l], c->sizes[l - 1], c->batch, mr, nr), "layer %d weight tiles", l);
    }
    free(events);
}

/* The plans the library keeps (see MLP_STEP_PLAN in mlp.h). */
enum { SHARED_PACKING_PLAN = 8, OWNED_ROWS_PLAN = 11, RULE_PLAN = 12, OWNED_COPY_PLAN = 16,
       DEFAULT_PLAN = RULE_PLAN };

static void test_threads(int isa, int plan)
{
    const int counts[] = {1, 2, 5, 8, 16};
    char text[16];
    snprintf(text, sizeof text, "%d", plan);
    for (size_t ci = 0; ci < sizeof CONFIGS / sizeof *CONFIGS; ++ci) {
        const config *c = &CONFIGS[ci];
        unsetenv("MLP_STEP_PLAN");
        mlp_model *one = stepped(c, 1, isa, 0);
        setenv("MLP_STEP_PLAN", text, 1);
        for (size_t ti = 0; ti < sizeof counts / sizeof *counts; ++ti) {
            const int threads = mlp_has_openmp() ? counts[ti] : 1;
            for (int timeline = 0; timeline <= 1; ++timeline) {
                mlp_model *many = stepped(c, threads, isa, timeline);
                CHECK(many && mlp_model_plan(many) == plan, "plan %d", plan);
                CHECK(one && many && same_parameters(one, many, c),
                      "config %zu isa %d threads %d timeline %d plan %d", ci, isa, threads, timeline, plan);
                const int step_plan = many ? mlp_step_plan(many, threads, c->batch) : 0;
                if (timeline && many)
                    check_timeline(many, c, threads, step_plan == OWNED_ROWS_PLAN || step_plan == OWNED_COPY_PLAN);
                mlp_model_destroy(many);
            }
        }
        unsetenv("MLP_STEP_PLAN");
        mlp_model_destroy(one);
    }
}

/* Change 12's rule (plan 12, the default): plan 16 on the packed rung without BLAS for networks of three
 * layers or more, batches of at most 144 rows and at least 8 threads; plan 8 everywhere else. MLP_STEP_PLAN=8,
 * 11 or 16 runs that plan for every step (11 only where it applies, 16 where 11 does and a hidden layer lies
 * above the first: plan 11 otherwise). */
static void test_rule(void)
{
    static const int deep[] = {2, 300, 300, 1}, shallow[] = {64, 128, 10};
    const int owned = !mlp_has_blas(); /* the BLAS build has no fused step: every plan runs as plan 8 */
    const struct {
        const char *plan;
        const int *sizes;
        int n_layers, threads, batch, expected;
    } cases[] = {
        {NULL, deep, 3, 1, 32, 8},   {NULL, deep, 3, 2, 32, 8},    {NULL, deep, 3, 4, 32, 8},
        {NULL, deep, 3, 7, 32, 8},   {NULL, deep, 3, 8, 32, 16},   {NULL, deep, 3, 16, 32, 16},
        {NULL, deep, 3, 16, 144, 16}, {NULL, deep, 3, 16, 145, 8}, {NULL, deep, 3, 16, 256, 8},
        {NULL, shallow, 2, 16, 32, 8}, {NULL, shallow, 2, 8, 32, 8}, {"12", deep, 3, 8, 32, 16},
        {"8", deep, 3, 16, 32, 8},   {"11", deep, 3, 1, 32, 11},   {"11", deep, 3, 16, 256, 8},
        {"11", shallow, 2, 1, 32, 11}, {"16", deep, 3, 1, 32, 16}, {"16", deep, 3, 16, 144, 16},
        {"16", deep, 3, 16, 145, 8}, {"16", shallow, 2, 16, 32, 11},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; ++i) {
        if (cases[i].plan)
            setenv("MLP_STEP_PLAN", cases[i].plan, 1);
        else
            unsetenv("MLP_STEP_PLAN");
        for (int kernel = MLP_KERNEL_NAIVE; kernel <= MLP_KERNEL_PACKED; ++kernel) {
            mlp_model *model = NULL;
            CHECK(mlp_model_create(&model, cases[i].n_layers, cases[i].sizes, MLP_TANH, MLP_SIGMOID_BCE, 256, 16,
                                   kernel, MLP_ISA_AUTO) == MLP_OK, "create");
            const int expected = kernel == MLP_KERNEL_PACKED && owned ? cases[i].expected : 8;
            CHECK(mlp_step_plan(model, cases[i].threads, cases[i].batch) == expected,
                  "case %zu kernel %d: plan %d, expected %d", i, kernel,
                  mlp_step_plan(model, cases[i].threads, cases[i].batch), expected);
            CHECK(mlp_model_plan(model) == (cases[i].plan ? atoi(cases[i].plan) : DEFAULT_PLAN), "model plan");
            CHECK(mlp_step_plan(model, 0, 32) == 0 && mlp_step_plan(model, 17, 32) == 0 &&
                  mlp_step_plan(model, 1, 0) == 0 && mlp_step_plan(model, 1, 257) == 0, "refused arguments");
            mlp_model_destroy(model);
        }
    }
    unsetenv("MLP_STEP_PLAN");
    CHECK(mlp_step_plan(NULL, 1, 1) == 0, "NULL model");
}

static void test_errors(void)
{
    const config *c = &CONFIGS[1];
    mlp_model *model = stepped(c, 1, MLP_ISA_AUTO, 0);
    int count = 0;
    mlp_event event;
    CHECK(mlp_timeline_read(model, &event, 1, &count, NULL) == MLP_ERR_STATE, "read while off");
    CHECK(mlp_timeline_read(NULL, &event, 1, &count, NULL) == MLP_ERR_NULL, "NULL model");
    CHECK(mlp_timeline_read(model, NULL, 1, &count, NULL) == MLP_ERR_NULL, "NULL events");
    CHECK(mlp_timeline_enable(NULL, 8) == MLP_ERR_NULL, "enable NULL");
    CHECK(mlp_timeline_enable(model, -1) == MLP_ERR_SIZE, "negative events");
    CHECK(mlp_timeline_enable(model, 2) == MLP_OK, "enable small");
    float x[7 * 64] = {0}, t[7 * 10] = {0};
    for (int i = 0; i < 7; ++i)
        t[i * 10] = 1.0f;
    CHECK(mlp_train_step(model, 1, 7, x, t, 0.1f, 0.0f, NULL) == MLP_OK, "step");
    int dropped = 0;
    CHECK(mlp_timeline_read(model, &event, 1, &count, &dropped) == MLP_ERR_SIZE && count == 2 && dropped > 0,
          "dropped events counted");
    CHECK(mlp_timeline_enable(model, 0) == MLP_OK, "off");
    CHECK(mlp_timeline_read(model, &event, 1, &count, NULL) == MLP_ERR_STATE, "read after off");
    mlp_model_destroy(model);
}

int main(void)
{
    test_errors();
    test_rule();
    for (int isa = MLP_ISA_PORTABLE; isa <= MLP_ISA_AVX512; ++isa) {
        if (!mlp_isa_supported(isa)) {
            printf("test_timeline: this CPU cannot run isa %d; skipped\n", isa);
            continue;
        }
        mlp_model *model = stepped(&CONFIGS[1], 1, isa, 0);
        CHECK(mlp_model_plan(model) == DEFAULT_PLAN, "default plan %d", mlp_model_plan(model));
        mlp_model_destroy(model);
        test_threads(isa, RULE_PLAN);
        test_threads(isa, SHARED_PACKING_PLAN);
        test_threads(isa, OWNED_ROWS_PLAN);
        test_threads(isa, OWNED_COPY_PLAN);
    }
    return check_report(mlp_has_openmp() ? "test_timeline (omp)"
                        : mlp_has_blas() ? "test_timeline (blas)" : "test_timeline (serial)");
}
