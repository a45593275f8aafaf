"""C rung 3 (the packed product) against OpenBLAS (NumPy) on one variant of the C library, in one process:
``MLPBENCH_NATIVE_DIR=<native copy> python time_gemm.py <label>``; prints one line per (n, threads):
each product checked against float64 first, then the two timed in turn (after an untimed call each), the
median of their samples."""
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from mlpbench import native
from mlpbench.verify import FLOAT32_TOLERANCE, relative_error


def medians(A, B, out, reference, gemm, threads):
    """Median seconds of OpenBLAS and rung 3, each checked first, then timed in turn."""
    calls = {"openblas": lambda: np.matmul(A, B, out=out), "rung3": lambda: gemm(A, B, out, version=3)}
    samples = {name: [] for name in calls}
    with threadpool_limits(threads):
        for name, call in calls.items():
            call()
            error = relative_error(out.astype(np.float64), reference)
            assert error <= FLOAT32_TOLERANCE, (name, error)
        for _ in range(5):
            for name, call in calls.items():
                call()
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
    return np.median(samples["openblas"]), np.median(samples["rung3"])


label = sys.argv[1]
for n in (2048, 4096):
    rng = np.random.default_rng(n)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    reference = A.astype(np.float64) @ B.astype(np.float64)
    out = np.empty((n, n), dtype=np.float32)
    for threads in (8, 16):
        gemm = native.Gemm(n, n, threads=threads)
        blas, rung3 = medians(A, B, out, reference, gemm, threads)
        gemm.close()
        print(f"{label} n={n} threads={threads} openblas {2 * n**3 / blas / 1e9:.0f} GFLOP/s "
              f"rung3 {2 * n**3 / rung3 / 1e9:.0f} GFLOP/s  rung3/openblas {blas / rung3:.3f}", flush=True)
