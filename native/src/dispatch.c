/* Run-time choice of the kernel set: the library is built on one machine and run on others, so the CPU is
 * asked, never the build flags. */
#include "internal.h"

static int cpu_has_avx2_fma(void)
{
    /* libgcc also checks that the OS saves the YMM state (XGETBV) before reporting AVX2. */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

int mlp_isa_supported(int isa)
{
    switch (isa) {
    case MLP_ISA_AUTO:
    case MLP_ISA_PORTABLE: return 1;
    case MLP_ISA_AVX2: return cpu_has_avx2_fma();
    default: return 0;
    }
}

int mlp_best_isa(void)
{
    return cpu_has_avx2_fma() ? MLP_ISA_AVX2 : MLP_ISA_PORTABLE;
}

const cpu_kernels *kernels_for_isa(int isa)
{
    if (!mlp_isa_supported(isa))
        return NULL;
    if (isa == MLP_ISA_AUTO)
        isa = mlp_best_isa();
    return isa == MLP_ISA_AVX2 ? &avx2_kernels : &portable_kernels;
}
