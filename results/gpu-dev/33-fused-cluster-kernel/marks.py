"""Rank 0's clock (%globaltimer and clock64) at the marks that marks.patch puts into fused_cluster.cu (the
kernel of commit 9f11240; earlier versions were marked the same way), over one step of digits at batch 32
(median of 30 launches): where the cluster kernel's step spends its time. Run on the GPU host from the
repository root with the patch applied; %globaltimer ticks in steps of about 0.5 us there, clock64 does not."""
import numpy as np
import torch

from mlpbench import load
from mlpbench.network import PRESETS
from mlpbench.verify import random_batch

net = PRESETS["digits"]
model = load("cuda-fused", net, kernel="cluster")
data = model.prepare(*random_batch(net, 32, np.random.default_rng(0)))
for _ in range(5):
    model.train_step(data, 1e-4)
times, cycles = [], []
for _ in range(30):
    clock = torch.zeros(64, dtype=torch.int64, device="cuda")
    model._launch("step", data, 1e-4, profile=clock.data_ptr(), steps=1)
    model._parity ^= 1
    c = clock.cpu().numpy()
    times.append(c[16:30].astype(float) - c[16])
    cycles.append(c[48:62].astype(float) - c[48])
t, k = np.median(np.array(times), axis=0) / 1e3, np.median(np.array(cycles), axis=0)
names = ["start", "weights queued", "batch and weights in", "forward product", "partial logits",
         "logits barrier", "output rows, P", "backward end", "end barrier", "head input gradient",
         "head weight gradient", "head bias gradient", "layer 0 weight gradient", "layer 0 bias gradient"]
for i in np.argsort(t):
    print(f"{names[i]:26s} {t[i]:7.2f} us {k[i]:8.0f} cycles after start")
print(f"SM clock over the step: {k.max() / t.max() / 1e3:.2f} GHz")
