/* Run-time choice of the kernel set: the library is built on one machine and run on others, so the CPU is
 * asked, never the build flags. libgcc also checks that the OS saves the YMM / ZMM state (XGETBV) before
 * reporting AVX2 or AVX-512. */
#include "internal.h"

static int cpu_has_avx2_fma(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

static int cpu_has_avx512f(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

int mlp_isa_supported(int isa)
{
    switch (isa) {
    case MLP_ISA_AUTO:
    case MLP_ISA_PORTABLE: return 1;
    case MLP_ISA_AVX2: return cpu_has_avx2_fma();
    case MLP_ISA_AVX512: return cpu_has_avx512f();
    default: return 0;
    }
}

int mlp_best_isa(void)
{
    return cpu_has_avx512f() ? MLP_ISA_AVX512 : cpu_has_avx2_fma() ? MLP_ISA_AVX2 : MLP_ISA_PORTABLE;
}

const cpu_kernels *kernels_for_isa(int isa)
{
    if (!mlp_isa_supported(isa))
        return NULL;
    switch (isa == MLP_ISA_AUTO ? mlp_best_isa() : isa) {
    case MLP_ISA_AVX512: return &avx512_kernels;
    case MLP_ISA_AVX2: return &avx2_kernels;
    default: return &portable_kernels;
    }
}
