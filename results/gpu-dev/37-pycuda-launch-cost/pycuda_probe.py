"""Run 37: host time per launch of one kernel (elementwise.cu's transpose of a 32 x 300 matrix) through PyCUDA's
``prepared_call`` (as the CUDA ladder's element-wise kernels and most of its products launch) against
``DriverKernel.launch`` (the C library's launch record; its four arguments set in place first, as a caller
would), 300 calls back to back, best of 5 rounds, in turn; and the events around each, 300 rounds.

Usage: pycuda_probe.py OUT_DIR
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path

import torch

from mlpbench import gpu
from mlpbench.backends.cuda import ELEMENTWISE
from mlpbench.timing import CudaEventClock, time_in_turn


class TransposeArgs(ctypes.Structure):
    _fields_ = [("out", ctypes.c_uint64), ("inp", ctypes.c_uint64), ("rows", ctypes.c_int), ("cols", ctypes.c_int)]


def host_us(call, count: int = 300, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, (time.perf_counter() - start) * 1e6 / count)
    torch.cuda.synchronize()
    return best


def main() -> None:
    gpu.ensure_available()
    rows, cols = 32, 300
    source = torch.randn(rows, cols, device="cuda")
    out_pycuda, out_driver = torch.empty(cols, rows, device="cuda"), torch.empty(cols, rows, device="cuda")
    prepared = gpu.load(ELEMENTWISE).get_function("transpose").prepare("PPii")
    driver = gpu.DriverKernel(ELEMENTWISE, "transpose", TransposeArgs())
    grid, block = ((cols + 31) // 32, (rows + 31) // 32, 1), (32, 8, 1)

    def by_pycuda():
        prepared.prepared_call(grid, block, out_pycuda.data_ptr(), source.data_ptr(), rows, cols)

    def by_driver():
        args = driver.args
        args.out, args.inp, args.rows, args.cols = out_driver.data_ptr(), source.data_ptr(), rows, cols
        driver.launch(grid, 32 * 8, 0)

    # DriverKernel takes a block as a thread count; transpose's block is 32 x 8: its record is set so once made
    driver.launch(grid, 32 * 8, 0)
    driver._records[(grid, 32 * 8, 0, 1)][0].block = block
    by_pycuda()
    by_driver()
    torch.cuda.synchronize()
    assert torch.equal(out_pycuda, source.T) and torch.equal(out_driver, source.T)
    result = {"host_us": {}, "events_us": {}}
    for _ in range(2):  # in turn, twice: the host's speed drifts on a fresh instance
        for name, call in (("prepared_call", by_pycuda), ("DriverKernel", by_driver)):
            result["host_us"].setdefault(name, []).append(host_us(call))
    timed = time_in_turn({"prepared_call": by_pycuda, "DriverKernel": by_driver}, repeats=300, warmup=2,
                         clock=CudaEventClock())
    result["events_us"] = {name: {"median": s.median * 1e6, "q1": s.q1 * 1e6, "q3": s.q3 * 1e6}
                           for name, s in timed.items()}
    print(json.dumps(result, indent=1))
    (Path(sys.argv[1]) / "pycuda.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
