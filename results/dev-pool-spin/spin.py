"""PyTorch's 1024^3 float32 product on 2 threads right after NumPy's (OpenBLAS), with a pause between them."""
import time

import numpy as np
import torch

from mlpbench.thread_policy import pinned_threads
from mlpbench.timing import time_call

n = 1024
A, B, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
An, Bn, o = A.numpy(), B.numpy(), np.empty((n, n), np.float32)
with pinned_threads(2):
    alone = time_call(lambda: torch.matmul(A, B, out=out), repeats=10, warmup=2).median
    print(f"alone: {2 * n**3 / alone / 1e9:.0f} GFLOP/s")
    for pause in (0.0, 0.05, 0.1, 0.2, 0.4):
        rates = []
        for _ in range(4):
            np.matmul(An, Bn, out=o)
            time.sleep(pause)
            rates.append(2 * n**3 / time_call(lambda: torch.matmul(A, B, out=out), repeats=1, warmup=1).median / 1e9)
        print(f"after NumPy, pause {pause} s: " + " ".join(f"{r:.0f}" for r in rates) + " GFLOP/s")
