/* The fused step's launch from C: one foreign call per launch (launch_record), and a loop of launches timed
 * inside C (launch_loop_ns), the driver's own cost with no Python in it. The driver's cuLaunchKernel comes in
 * as a function pointer, so nothing here links against libcuda. */
#include <time.h>

typedef int (*launch_fn)(void *function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                         unsigned bz, unsigned shared, void *stream, void **params, void **extra);

struct launch_record {
    launch_fn launch;
    void *function;
    unsigned grid, block, shared;
    void *stream;
    void **params;
};

int launch_record(const struct launch_record *r)
{
    return r->launch(r->function, r->grid, 1, 1, r->block, 1, 1, r->shared, r->stream, r->params, 0);
}

/* Mean nanoseconds per launch of n back-to-back launches; a negative value is the first failure's code. */
double launch_loop_ns(const struct launch_record *r, int n)
{
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < n; i++) {
        int result = launch_record(r);
        if (result)
            return -result;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    return ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / n;
}
