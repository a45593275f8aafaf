"""Run every CUDA kernel of the project once on small inputs, for compute-sanitizer:

    compute-sanitizer --tool memcheck  --error-exitcode 9 python scripts/gpu_sanitize.py
    compute-sanitizer --tool racecheck --error-exitcode 9 python scripts/gpu_sanitize.py [--fused-only]

Covers each rung's forward, backprop, update and train_step (cuda-opt on both its float4 and its scalar
kernels), cuda-fused's grid kernel (its single-warp and separate output heads, its two k-chunk weight
gradient) and its cluster kernel (one block and several, the partial input gradients of two hidden layers),
each also with several steps in one launch, matmul in every layout, and each of cuda-opt's configurations for
large products (forced onto a small float4 shape with edge tiles, unsplit and split, nt and nn also with their
k-contiguous operands transposed first); then checks that the results still match
the float64 reference (:func:`mlpbench.verify.check_stages`). Prints the kernels it launched.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mlpbench import Network, load
from mlpbench.backends import cuda
from mlpbench.verify import check_stages, random_batch

CASES = [
    (Network((7, 33, 5), "sigmoid", "softmax-ce"), 7),   # scalar paths, single-warp head
    (Network((8, 16, 12), "tanh", "softmax-ce"), 8),     # float4 paths
    (Network((5, 40), "relu", "softmax-ce"), 9),          # fused: separate output head phase
    (Network((5, 12), "tanh", "softmax-ce"), 9),          # cluster: no hidden layer, one block
    (Network((3, 6, 1), "sigmoid", "sigmoid-bce"), 520),  # fused: weight gradient over two k-chunks
    (Network((6, 20, 9, 4), "relu", "softmax-ce"), 13),   # cluster: partial input gradients across blocks
]


def cluster_takes(net: Network, batch: int) -> bool:
    """Whether cuda-fused's cluster kernel runs ``net`` at ``batch`` rows when asked for (``auto`` may prefer the
    grid kernel where both can)."""
    try:
        return load("cuda-fused", net, kernel="cluster").kernel_choice(batch, 2)[0] == "cluster"
    except ValueError:  # does not fit one cluster
        return False


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fused-only", action="store_true", help="cuda-fused's two kernels only")
    args = parser.parse_args()
    failures = []
    variants = [("cuda-naive", {}), ("cuda-tiled", {}), ("cuda-opt", {}), ("cuda-fused", {"kernel": "grid"}),
                ("cuda-fused", {"kernel": "cluster"}), ("cuda-cublas", {})]
    if args.fused_only:
        variants = [(backend, options) for backend, options in variants if backend == "cuda-fused"]
    for backend, options in variants:
        for net, batch in CASES:
            if options.get("kernel") == "cluster" and not cluster_takes(net, batch):
                continue  # the cluster kernel does not take it (the reason is tested in tests/test_gpu_planning.py)
            check = check_stages(backend, net, batch, seed=batch, **options)
            model = load(backend, net, **options)
            X, y = random_batch(net, batch, np.random.default_rng(batch))
            model.step(X, y, 0.1, 1e-3)
            if backend == "cuda-fused":  # three steps in one launch: the barriers between steps
                X3, y3 = random_batch(net, 3 * batch, np.random.default_rng(batch + 1))
                model.train_steps(model.prepare(X3, y3), batch, 0.1, 1e-3)
            model.predict(X)
            model.synchronize()
            name = backend + "".join(f"-{value}" for value in options.values())
            print(f"{name:18s} {net.name:10s} b{batch:<4d} worst relative error "
                  f"{max(check.relative.values()):.2e}, scaled {max(check.scaled.values()):.2f}", flush=True)
            if not check.passed:
                failures.append((name, net.name, check.scaled))
    for version in () if args.fused_only else cuda.KERNELS:
        for layout in cuda.LAYOUTS:
            A = torch.randn(33, 20, device="cuda")
            B = torch.randn(20 if layout != "nt" else 17, 17 if layout != "nt" else 20, device="cuda")
            if layout == "tn":
                A = torch.randn(20, 33, device="cuda")
            cuda.matmul(A, B, version, layout)
    products = cuda._products("opt")
    M, N, K = 36, 68, 100
    for config in () if args.fused_only else cuda.OPT_CONFIGS:
        if config in cuda.OPT_SMALL_CONFIGS:
            continue
        for layout in cuda.LAYOUTS:
            A = torch.randn((K, M) if layout == "tn" else (M, K), device="cuda")
            B = torch.randn((N, K) if layout == "nt" else (K, N), device="cuda")
            C = torch.empty(M, N, device="cuda")
            a, b = A.double(), B.double()
            reference = (a.T if layout == "tn" else a) @ (b.T if layout == "nt" else b)
            for splits in (1, 2):
                for transposed in (False, True) if layout != "tn" else (False,):
                    products.run(cuda.OptChoice(config, splits, transposed), True, layout, C.data_ptr(),
                                 A.data_ptr(), B.data_ptr(), M, N, K)
                    error = ((C.double() - reference).norm() / reference.norm()).item()
                    if not error < 1e-5:
                        failures.append((config, layout, splits, transposed, error))
    torch.cuda.synchronize()
    print("kernels:", ", ".join(f"{row['kernel']}" for row in cuda.kernel_report()))
    if failures:
        print("FAILED:", failures)
        return 1
    print("all results match the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
