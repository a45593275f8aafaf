/* mlp_launch_kernel: see mlp.h. */
#include "mlp.h"

#include <stddef.h>

enum { CUDA_ERROR_INVALID_VALUE = 1 };

int mlp_launch_kernel(const mlp_kernel_launch *launch)
{
    if (launch == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    if (launch->config != NULL) {
        if (launch->launch_ex == NULL)
            return CUDA_ERROR_INVALID_VALUE;
        return launch->launch_ex(launch->config, launch->function, launch->params, NULL);
    }
    if (launch->launch == NULL)
        return CUDA_ERROR_INVALID_VALUE;
    return launch->launch(launch->function, launch->grid[0], launch->grid[1], launch->grid[2], launch->block[0],
                          launch->block[1], launch->block[2], launch->shared_bytes, launch->stream,
                          launch->params, NULL);
}
