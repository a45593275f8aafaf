"""cuda-opt's large configurations and cuBLAS at n^3 in each layout, for Nsight Compute.

``python profile_opt.py``: each product checked against float64, then timed (the package's event clock).
``python profile_opt.py --once``: each product once between ``cudaProfilerStart`` and ``cudaProfilerStop``,
after an untimed call, for ``ncu --profile-from-start off``.
"""
import sys

import torch

from mlpbench.backends import cuda
from mlpbench.timing import CudaEventClock, time_call
from mlpbench.verify import FLOAT32_TOLERANCE, relative_error

N = 4096
CONFIGS = ("128x128k16s4t256dbt", "128x128k16s3t256dbt", "128x256k16s3t256dbt", "128x128k16s3t256db")

once = "--once" in sys.argv
torch.backends.cuda.matmul.allow_tf32 = False
g = torch.Generator(device="cuda").manual_seed(0)
A = torch.randn(N, N, device="cuda", generator=g)
B = torch.randn(N, N, device="cuda", generator=g)
C = torch.empty(N, N, device="cuda")
views = {"nn": (A, B), "nt": (A, B.T), "tn": (A.T, B)}
products = cuda._products("opt")

for layout, (a, b) in views.items():
    calls = {"cublas": lambda a=a, b=b: torch.mm(a, b, out=C)}
    for config in CONFIGS:
        calls[config] = lambda config=config, layout=layout: products.run(
            cuda.OptChoice(config, 1), True, layout, C.data_ptr(), A.data_ptr(), B.data_ptr(), N, N, N)
    reference = None if once else (a.double() @ b.double()).cpu().numpy()
    for name, call in calls.items():
        call()
        torch.cuda.synchronize()
        if once:
            torch.cuda.profiler.start()
            call()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            continue
        error = relative_error(C.double().cpu().numpy(), reference)
        assert error <= FLOAT32_TOLERANCE, (layout, name, error)
        ms = time_call(call, repeats=20, warmup=2, clock=CudaEventClock()).median * 1e3
        print(f"{layout} {name:22s} {ms:7.3f} ms {2 * N**3 / ms / 1e9:6.2f} TFLOP/s  error {error:.1e}", flush=True)
