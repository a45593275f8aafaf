"""Run 35: where the host time of one cuda-fused train_step goes, and what a launch from C would leave of it.

For digits and moons-5h300 at batch 32 (the grid kernel, as a single step runs): host microseconds per call
(best of 5 rounds of 300 calls back to back) of ``train_step``, its batch check, its arguments + launch, the
ctypes ``cuLaunchKernel`` of ``DriverKernel.launch``, the same driver function called on its own through
ctypes, a one-argument ctypes call of ``launch_record`` (launch_helper.c), and ``launch_loop_ns``: launches
timed inside C (on the legacy default stream and on a non-blocking stream). Then the events around a
``train_step`` (as the sweep times it), around a one-argument C launch of the same step with its arguments
already set, and the device-only events around a ``train_step`` (the kernel with the GPU's own launch work),
in turn, 200 rounds. The C launch relaunches the step of the arguments last set: it recomputes the same next
copy of the weights from the same current one, so the model stays as the train_step calls left it.

Usage: launch_probe.py HELPER.so OUT_DIR
"""

from __future__ import annotations

import ctypes
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlpbench import gpu, load
from mlpbench.backends.cuda_fused import FUSED_SHARED_BYTES, FUSED_THREADS, FusedProfiler
from mlpbench.network import PRESETS
from mlpbench.timing import CudaEventClock, time_in_turn
from mlpbench.verify import random_batch


class LaunchRecord(ctypes.Structure):
    _fields_ = [("launch", ctypes.c_void_p), ("function", ctypes.c_void_p), ("grid", ctypes.c_uint),
                ("block", ctypes.c_uint), ("shared", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("params", ctypes.c_void_p)]


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


def probe(helper: ctypes.CDLL, name: str) -> dict:
    net = PRESETS[name]
    model = load("cuda-fused", net, kernel="grid")
    batch = model.prepare(*random_batch(net, 32, np.random.default_rng(0)))
    lr = 1e-4
    model.train_step(batch, lr)
    costs = FusedProfiler(model).host_costs(batch, lr)
    kernel = model._kernel
    _, _, grid = model._plan("step", batch.size)
    driver = gpu._driver()
    record = LaunchRecord(launch=ctypes.cast(driver.cuLaunchKernel, ctypes.c_void_p).value,
                          function=kernel.function.value, grid=grid, block=FUSED_THREADS,
                          shared=FUSED_SHARED_BYTES, stream=None,
                          params=ctypes.addressof(kernel._pointers))
    model._launch("step", batch, lr)  # the arguments the C launches reuse
    pointers = kernel._pointers
    launch = driver.cuLaunchKernel
    function = kernel.function
    costs["cuLaunchKernel through ctypes, called directly"] = host_us(
        lambda: launch(function, grid, 1, 1, FUSED_THREADS, 1, 1, FUSED_SHARED_BYTES, None, pointers, None))
    record_ref = ctypes.addressof(record)
    c_launch = helper.launch_record
    costs["launch_record (one ctypes argument)"] = host_us(lambda: c_launch(record_ref))
    loop = helper.launch_loop_ns
    loops = []
    for _ in range(5):
        torch.cuda.synchronize()
        loops.append(loop(record_ref, 300) / 1e3)
    costs["launch_loop in C, legacy stream"] = min(loops)
    stream = ctypes.c_void_p()
    driver.cuStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
    assert driver.cuStreamCreate(ctypes.byref(stream), 1) == 0  # CU_STREAM_NON_BLOCKING
    streamed = LaunchRecord.from_buffer_copy(record)
    streamed.stream = stream.value
    loops = []
    for _ in range(5):
        torch.cuda.synchronize()
        loops.append(loop(ctypes.addressof(streamed), 300) / 1e3)
    costs["launch_loop in C, non-blocking stream"] = min(loops)
    torch.cuda.synchronize()
    assert all(v > 0 for v in costs.values()), costs

    timed = time_in_turn({"events around train_step": lambda: model.train_step(batch, lr),
                          "events around launch_record": lambda: c_launch(record_ref)},
                         repeats=200, warmup=20, clock=CudaEventClock())
    timed["device-only events around train_step"] = time_in_turn(
        {0: lambda: model.train_step(batch, lr)}, repeats=200, warmup=20, clock=CudaEventClock(device_only=True))[0]
    events = {label: {"median_us": s.median * 1e6, "q1_us": s.q1 * 1e6, "q3_us": s.q3 * 1e6}
              for label, s in timed.items()}
    model.close()
    return {"network": name, "grid": grid, "host_us": costs, "events": events}


def main() -> None:
    helper = ctypes.CDLL(sys.argv[1])
    helper.launch_record.argtypes = [ctypes.c_void_p]
    helper.launch_record.restype = ctypes.c_int
    helper.launch_loop_ns.argtypes = [ctypes.c_void_p, ctypes.c_int]
    helper.launch_loop_ns.restype = ctypes.c_double
    out = Path(sys.argv[2])
    results = [probe(helper, name) for name in ("digits", "moons-5h300", "digits")]
    (out / "launch.json").write_text(json.dumps(results, indent=1))
    for result in results:
        print(f"## {result['network']} (grid kernel, {result['grid']} blocks)")
        for call, us in result["host_us"].items():
            print(f"host | {call} | {us:.2f}")
        for call, stats in result["events"].items():
            print(f"events | {call} | {stats['median_us']:.2f} ({stats['q1_us']:.2f}-{stats['q3_us']:.2f})")


if __name__ == "__main__":
    main()
