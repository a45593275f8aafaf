"""Matrix-product ladders: each rung checked against float64, timed, and set against the library ceiling
measured in the same run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mlpbench import machine
from mlpbench.backends import BackendUnavailable
from mlpbench.sweep.measuring import describe_error
from mlpbench.sweep.params import SweepParams
from mlpbench.thread_policy import pinned_threads
from mlpbench.timing import time_in_turn
from mlpbench.verify import relative_error


class LadderUnavailable(RuntimeError):
    """A ladder's kernels are not built or not importable here."""


def native_gemm_hook(n: int, threads: int) -> tuple[Callable[..., np.ndarray], dict[int, str]]:
    """The C library's numbered matrix products, as ``mlpbench.native`` exposes them: a ``native.Gemm``
    workspace for ``n x n`` products on ``threads`` threads, called as ``gemm(A, B, out, version=v)``
    (``out = A @ B``, nothing allocated per call), and ``KERNELS``, a dict of rung number -> name."""
    try:
        from mlpbench import native

        return native.Gemm(n, n, threads=threads), dict(native.KERNELS)
    except (ImportError, AttributeError, OSError, BackendUnavailable) as error:
        raise LadderUnavailable(describe_error(error)) from error


def cuda_matmul_hook() -> tuple[Callable[..., Any], dict[int, str]]:
    """The CUDA backends' numbered matrix-product kernels, as ``mlpbench.backends.cuda`` exposes them:
    ``matmul(A, B, version: int, out=C) -> C`` on float32 contiguous CUDA tensors ``A (m, k)``, ``B (k, n)``,
    returning ``C = A @ B`` as a CUDA tensor, and ``VERSIONS``, whose integer keys are the rung numbers and
    values their names. Anything missing makes the GPU ladder's kernel rows ``skipped`` with the reason."""
    try:
        from mlpbench.backends import cuda

        rungs = {version: name for version, name in cuda.VERSIONS.items() if isinstance(version, int)}
        return cuda.matmul, rungs
    except (ImportError, AttributeError, OSError, BackendUnavailable) as error:
        raise LadderUnavailable(describe_error(error)) from error


def _checked(device: str, impl: str, rung: int | None, n: int, threads: int | None,
             result: Callable[[], np.ndarray], reference: np.ndarray, params: SweepParams) -> dict[str, Any]:
    """One product's row after checking its result against the float64 reference: ``status`` ok (to be
    timed) or failed with the reason."""
    # The table's ``version`` column holds the rung number, ``rung`` its name.
    row: dict[str, Any] = {"device": device, "impl": impl, "version": rung, "n": n, "threads": threads}
    try:
        error = relative_error(result(), reference)
    except Exception as error:  # a rung that crashes is recorded, the ladder goes on
        return {**row, "status": "failed", "reason": describe_error(error)}
    row["rel_error"] = error
    if not error <= params.tolerance:
        return {**row, "status": "failed",
                "reason": f"verification failed: relative error {error:.3g} > {params.tolerance:.3g}"}
    return {**row, "status": "ok", "reason": ""}


#: The pause before each CPU product's turn: longer than the thread pools of OpenBLAS (NumPy), PyTorch and
#: the C library spin after a call (with none, PyTorch's product right after NumPy's ran at about half its
#: speed on two cores; after 0.1-0.2 s mostly at its own: results/dev-pool-spin).
CPU_SETTLE_S = 0.2


def _timed(checked: list[tuple[dict[str, Any], Callable[[], Any]]], params: SweepParams,
           clock: Any = None, settle_s: float = 0.0) -> list[dict[str, Any]]:
    """The rows of the checked products, those that passed timed against each other sample by sample
    (:func:`mlpbench.timing.time_in_turn`), so a ratio to the library's product compares the same minutes."""
    calls = {index: fn for index, (row, fn) in enumerate(checked) if row["status"] == "ok"}
    timings = time_in_turn(calls, repeats=params.ladder_repeats, warmup=1, settle_s=settle_s, clock=clock)
    rows = []
    for index, (row, _) in enumerate(checked):
        stats = timings.get(index)
        if isinstance(stats, Exception):
            row = {**row, "status": "failed", "reason": describe_error(stats)}
        elif stats is not None:
            row = {**row, "repeats": stats.n, "median_s": stats.median, "iqr_s": stats.iqr,
                   "gflops": 2 * row["n"] ** 3 / stats.median / 1e9}
        rows.append(row)
    return rows


def _with_ceiling(rows: list[dict[str, Any]], ceiling_impl: str) -> list[dict[str, Any]]:
    ceiling = next((r.get("gflops") for r in rows if r["impl"] == ceiling_impl and r["status"] == "ok"), None)
    finished = machine.now_utc()
    for row in rows:
        row.update(ceiling_impl=ceiling_impl, ceiling_gflops=ceiling, finished_at=finished)
        if ceiling and row["status"] == "ok":
            row["pct_of_ceiling"] = 100.0 * row["gflops"] / ceiling
    return rows


def cpu_ladder(params: SweepParams) -> list[dict[str, Any]]:
    """The C library's matrix products 1..k, NumPy (OpenBLAS, the ceiling) and PyTorch on ``ladder_cpu_n``³,
    all on ``max_threads`` threads."""
    import torch

    n, threads = params.ladder_cpu_n, params.max_threads
    rng = np.random.Generator(np.random.PCG64(params.seed))
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    reference = A.astype(np.float64) @ B.astype(np.float64)
    At, Bt = torch.from_numpy(A), torch.from_numpy(B)
    # Every product writes into a buffer allocated once, so no call times page faults of a fresh result.
    out = np.empty((n, n), dtype=np.float32)
    out_t = torch.from_numpy(out)
    with pinned_threads(threads):
        checked = [
            (_checked("cpu", "numpy", None, n, threads, lambda: np.matmul(A, B, out=out), reference, params),
             lambda: np.matmul(A, B, out=out)),
            (_checked("cpu", "torch-cpu", None, n, threads, lambda: torch.matmul(At, Bt, out=out_t).numpy(),
                      reference, params), lambda: torch.matmul(At, Bt, out=out_t)),
        ]
        skipped, gemm = [], None
        try:
            gemm, rungs = native_gemm_hook(n, threads)
        except LadderUnavailable as error:
            skipped.append({"device": "cpu", "impl": "c", "n": n, "threads": threads, "status": "skipped",
                            "reason": str(error)})
        else:
            for rung, name in rungs.items():
                def call(rung: int = rung) -> np.ndarray:
                    return gemm(A, B, out, version=rung)
                checked.append(({**_checked("cpu", f"c-v{rung}", rung, n, threads, call, reference, params),
                                 "rung": name}, call))
        rows = _timed(checked, params, settle_s=CPU_SETTLE_S) + skipped
        if gemm is not None:
            gemm.close()
    return _with_ceiling(rows, "numpy")


def gpu_ladder(params: SweepParams) -> list[dict[str, Any]]:
    """The CUDA kernels' matrix products against PyTorch (cuBLAS, IEEE float32: the ceiling) on
    ``ladder_gpu_n``³, timed with CUDA events."""
    import torch

    from mlpbench.timing import CudaEventClock

    n = params.ladder_gpu_n
    if not torch.cuda.is_available():
        return [{"device": "gpu", "impl": "torch-gpu", "n": n, "status": "skipped",
                 "reason": "no CUDA GPU visible to PyTorch", "finished_at": machine.now_utc()}]
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    rng = np.random.Generator(np.random.PCG64(params.seed))
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    reference = A.astype(np.float64) @ B.astype(np.float64)
    Ad, Bd = torch.from_numpy(A).cuda(), torch.from_numpy(B).cuda()
    Cd = torch.empty_like(Ad)  # one result buffer for every product, as on the CPU
    checked = [(_checked("gpu", "torch-gpu", None, n, None, lambda: torch.matmul(Ad, Bd, out=Cd).cpu().numpy(),
                         reference, params), lambda: torch.matmul(Ad, Bd, out=Cd))]
    skipped = []
    try:
        matmul, rungs = cuda_matmul_hook()
    except LadderUnavailable as error:
        skipped.append({"device": "gpu", "impl": "cuda", "n": n, "status": "skipped", "reason": str(error)})
    else:
        for rung, name in rungs.items():
            def call(rung: int = rung) -> Any:
                return matmul(Ad, Bd, version=rung, out=Cd)
            checked.append(({**_checked("gpu", f"cuda-v{rung}", rung, n, None, lambda call=call: call().cpu().numpy(),
                                        reference, params), "rung": name}, call))
    rows = _timed(checked, params, CudaEventClock()) + skipped
    return _with_ceiling(rows, "torch-gpu")
