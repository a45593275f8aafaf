"""Speed of the CUDA backends on a GPU, in one run with PyTorch as the unit.

Sections (``--sections``, comma-separated):

* ``products``: the product ladder (rungs 1-3 in nn, cuda-opt in all three layouts) against ``torch.mm``
  (cuBLAS, IEEE float32) in the same layout at n^3, each verified against a float64 product first;
* ``tune``: every cuda-opt tile configuration (``cuda.OPT_CONFIGS``, unsplit) in each layout against
  ``torch.mm`` in the same layout, nt and nn also with their k-contiguous operands transposed first (the
  transposes timed with the product), each verified against a float64 product first;
* ``steps``: per-stage times (the project's timing harness: events around each call, median; on backends
  that run many steps per launch also ``epoch_step``, per step of one ``train_steps`` call over an epoch) and
  the back-to-back throughput of ``train_step`` for each network x backend, each verified against the
  float64 reference at the timed batch size first;
* ``barrier``: cost of one grid-wide barrier of the fused kernel (chains of trivial phases);
* ``host``: host microseconds of a fused ``train_step`` and of its parts;
* ``profile``: where a fused training step spends its GPU time, on each of cuda-fused's kernels: block 0's
  clock (%globaltimer) at the start and after each phase's barrier (grid kernel) or each step (cluster
  kernel), next to the events around the launch, and per step of an epoch run in one launch (``train_steps``).

``--cases`` and ``--backends`` restrict the ``steps`` section.

Writes ``bench.json`` and ``bench.txt`` under ``--out`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mlpbench import gpu, load
from mlpbench.backends import cuda, cuda_fused
from mlpbench.backends.torch_nn import pin_ieee_float32
from mlpbench.network import PRESETS, Network
from mlpbench.timing import EPOCH_STEPS, CudaEventClock, time_call, time_stages
from mlpbench.verify import FLOAT32_TOLERANCE, check_stages, random_batch, relative_error

# (preset, batch, backends); "cuda-fused:grid" is cuda-fused with its grid kernel for every launch (by
# default it takes the cluster kernel for an epoch's launch where the step fits)
STEP_CASES = [
    ("digits", 32, ["torch-cpu", "c-serial", "torch-gpu", "torch-gpu-graph", "torch-gpu-compile", "cuda-naive",
                    "cuda-tiled", "cuda-opt", "cuda-fused", "cuda-fused:grid", "cuda-cublas"]),
    ("moons-5h300", 32, ["torch-cpu", "c-serial", "torch-gpu", "torch-gpu-graph", "torch-gpu-compile", "cuda-naive",
                         "cuda-tiled", "cuda-opt", "cuda-fused", "cuda-cublas"]),
    ("mnist", 256, ["torch-gpu", "torch-gpu-graph", "torch-gpu-compile", "cuda-naive", "cuda-tiled", "cuda-opt",
                    "cuda-cublas"]),
    ("large", 1024, ["torch-gpu", "torch-gpu-graph", "cuda-naive", "cuda-tiled", "cuda-opt", "cuda-cublas"]),
]


def device_ms(fn, repeats: int, warmup: int = 2) -> float:
    """Median device milliseconds of ``fn`` (the package's event clock: each call between two events after
    the device went idle)."""
    return time_call(fn, repeats=repeats, warmup=warmup, clock=CudaEventClock()).median * 1e3


def rel_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return relative_error(value.double().cpu().numpy(), reference.cpu().numpy())


def products(n: int, repeats: int) -> list[dict]:
    """Each rung's product at n^3 against cuBLAS in the same layout, timed just before it (cuBLAS reads the
    transposed views in place), so the percentage compares two products of one layout timed one after the other."""
    g = torch.Generator(device="cuda").manual_seed(0)
    A = torch.randn(n, n, device="cuda", generator=g)
    B = torch.randn(n, n, device="cuda", generator=g)
    flops = 2 * n**3
    views = {"nn": (A, B), "nt": (A, B.T), "tn": (A.T, B)}
    rows = []
    for layout, (a, b) in views.items():
        reference = a.double() @ b.double()
        cublas = device_ms(lambda a=a, b=b: torch.mm(a, b), repeats)
        rows.append({"impl": "torch.mm (cuBLAS)", "layout": layout, "n": n, "ms": cublas,
                     "tflops": flops / cublas / 1e9, "pct_cublas": 100.0,
                     "rel_error": rel_error(torch.mm(a, b), reference)})
        for version, rung in cuda.KERNELS.items():
            if rung != "opt" and layout != "nn":
                continue
            out = cuda.matmul(A, B, version, layout)
            row = {"impl": f"cuda-{rung} (rung {version})", "layout": layout, "n": n,
                   "rel_error": rel_error(out, reference)}
            if row["rel_error"] <= FLOAT32_TOLERANCE:
                reps = repeats if rung == "opt" else 3
                ms = device_ms(lambda v=version, lay=layout, o=out: cuda.matmul(A, B, v, lay, o), reps, warmup=1)
                row.update(ms=ms, tflops=flops / ms / 1e9, pct_cublas=100 * cublas / ms)
            rows.append(row)
        del reference
    return rows


def tune(n: int, repeats: int) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(1)
    A = torch.randn(n, n, device="cuda", generator=g)
    B = torch.randn(n, n, device="cuda", generator=g)
    operands = {"nn": (A, B), "nt": (A, B.T), "tn": (A.T, B)}  # cuBLAS reads the transposed views in place
    products = cuda._products("opt")
    C = torch.empty(n, n, device="cuda")
    rows = []
    for layout, (a, b) in operands.items():
        reference = a.double() @ b.double()
        cublas_ms = device_ms(lambda a=a, b=b: torch.mm(a, b, out=C), repeats)
        rows.append({"config": "torch.mm (cuBLAS)", "layout": layout, "ms": cublas_ms,
                     "tflops": 2 * n**3 / cublas_ms / 1e9, "pct_cublas": 100.0})
        transposable = cuda.opt_transposable(layout, n, n, n, vector=True)
        choices = [cuda.OptChoice(config, 1, transposed) for transposed in (False, True)[:1 + transposable]
                   for config in cuda.OPT_CONFIGS]
        for choice in choices:

            def call(choice=choice, layout=layout):
                products.run(choice, True, layout, C.data_ptr(), A.data_ptr(), B.data_ptr(), n, n, n)

            C.fill_(float("nan"))
            call()
            row = {"config": choice.config, "transposed": choice.transposed, "layout": layout,
                   "threads": cuda.opt_threads(choice.config), "shared_bytes": cuda.opt_shared_bytes(choice.config),
                   "rel_error": rel_error(C, reference)}
            if row["rel_error"] <= FLOAT32_TOLERANCE:
                ms = device_ms(call, repeats)
                row.update(ms=ms, tflops=2 * n**3 / ms / 1e9, pct_cublas=100 * cublas_ms / ms)
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        del reference
    return rows


def network_of(name: str) -> Network:
    return PRESETS[name]


def steps(repeats: int, throughput_steps: int, cases: set[str] | None = None,
          only: set[str] | None = None) -> list[dict]:
    rows = []
    for name, batch, backends in STEP_CASES:
        if cases is not None and name not in cases:
            continue
        backends = [b for b in backends if only is None or b in only]
        net = network_of(name)
        rng = np.random.default_rng(0)
        inputs = [random_batch(net, batch, rng) for _ in range(3)]
        for entry in backends:
            backend, _, kernel = entry.partition(":")
            row = {"network": name, "sizes": net.name, "batch": batch, "backend": entry}
            options = {"threads": 1} if backend == "torch-cpu" else {"kernel": kernel} if kernel else {}
            try:
                if backend == "torch-gpu-compile":  # the first model of this shape pays the compilation
                    probe = load(backend, net)
                    probe.forward(probe.prepare(*inputs[0]))
                    row["compile_s"] = probe.compile_seconds
                    probe.close()
                check = check_stages(backend, net, batch, seed=1, **options)
                row["max_rel_error"] = max(check.relative.values())
                if not check.passed:
                    row["status"] = f"verification failed: scaled errors {check.scaled}"
                    rows.append(row)
                    print(row, flush=True)
                    continue
                model = load(backend, net, **options)
                if backend == "cuda-fused":  # the kernels of its single steps and of its epoch launch
                    single, epoch = model.kernel_choice(batch), model.kernel_choice(batch, EPOCH_STEPS)
                    row["kernel"] = f"{single[0]}/{epoch[0]}"
                    row["kernel_reason"] = f"{single[1]} / {epoch[1]}"
                cpu = model.device == "cpu"
                reps = max(3, repeats // 4) if cpu or (backend == "cuda-naive" and name == "large") else repeats
                times = time_stages(model, inputs, lr=1e-4, repeats=reps, warmup=3)
                for stage, stats in times.stats.items():
                    row[f"{stage}_us"] = stats.median * 1e6
                if not cpu:
                    batch_data = model.prepare(*inputs[0])
                    count = throughput_steps if name != "large" else 20
                    for _ in range(3):
                        model.train_step(batch_data, 1e-4)
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    host = time.perf_counter()
                    start.record()
                    for _ in range(count):
                        model.train_step(batch_data, 1e-4)
                    end.record()
                    host = time.perf_counter() - host
                    end.synchronize()
                    row["step_throughput_us"] = start.elapsed_time(end) * 1e3 / count
                    row["step_host_us"] = host * 1e6 / count
                row["loss_after"] = times.loss_after
                row["status"] = "ok"
                model.close()
            except Exception as error:  # record and go on: one broken backend must not hide the others
                row["status"] = f"{type(error).__name__}: {error}"
            rows.append(row)
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    flops = {name: network_of(name).flops(batch)["step"] for name, batch, _ in STEP_CASES}
    for row in rows:
        if "step_us" in row:
            row["step_tflops"] = flops[row["network"]] / row["step_us"] / 1e6
    return rows


def barrier(batch: int = 32) -> list[dict]:
    """Fused-kernel launches of 1 and 33 trivial phases (the output gradient, 32 x 1 elements): the difference
    over 32 is one grid barrier; measured for several grid sizes."""
    net = PRESETS["moons-5h300"]
    model = load("cuda-fused", net)
    profiler = cuda_fused.FusedProfiler(model)
    data = model.prepare(*random_batch(net, batch, np.random.default_rng(0)))
    model.forward(data)
    rows = [{"blocks": blocks, **profiler.barrier(data, blocks)}
            for blocks in (1, 8, 32, 66, 132) if blocks <= gpu.info().sm_count]
    model.close()
    return rows


def host_costs() -> list[dict]:
    """Host microseconds per call of a fused ``train_step`` on digits and of its parts, on each kernel."""
    net = PRESETS["digits"]
    rows = []
    for kernel in ("cluster", "grid"):
        model = load("cuda-fused", net, kernel=kernel)
        data = model.prepare(*random_batch(net, 32, np.random.default_rng(0)))
        costs = cuda_fused.FusedProfiler(model).host_costs(data, 1e-4)
        model.close()
        rows += [{"kernel": kernel, "call": call, "host_us": us} for call, us in costs.items()]
    return rows


def profile(repeats: int = 30, epoch_steps: int = EPOCH_STEPS) -> list[dict]:
    """Where a fused training step spends its GPU time, for each kernel cuda-fused runs: the grid kernel's
    block 0's clock after each phase's barrier, the cluster kernel's after each step; next to the events around
    one step's launch, and per step of ``epoch_steps`` steps run in one launch (``train_steps``)."""
    rows = []
    for name, batch, kernel in (("digits", 32, "cluster"), ("digits", 32, "grid"), ("moons-5h300", 32, "auto")):
        net = PRESETS[name]
        model = load("cuda-fused", net, kernel=kernel)
        profiler = cuda_fused.FusedProfiler(model)
        plan = profiler.plan("step", batch)
        label = f"{name} ({plan.kernel})"
        data = model.prepare(*random_batch(net, batch, np.random.default_rng(0)))
        epoch = model.prepare(*random_batch(net, batch * epoch_steps, np.random.default_rng(1)))
        for _ in range(3):
            model.train_step(data, 1e-4)
        if plan.kernel == "grid":
            marks = np.median([profiler.phase_times(data, batch, 1e-4) for _ in range(repeats)], axis=0)
            for index, (phase, us) in enumerate(zip(plan.phases, marks, strict=True)):
                rows.append({"network": label, "phase": index, "kind": cuda_fused.PHASE_NAMES[phase.kind],
                             "layer": phase.layer, "main": phase.main.as_tuple(),
                             "weights": phase.weights.as_tuple(), "items": phase.items(net, batch),
                             "us": float(us)})
            whole = float(marks.sum())
        else:
            whole = float(np.median([profiler.step_times(data, batch, 1e-4).sum() for _ in range(repeats)]))
        rows.append({"network": label, "phase": "all", "kind": f"start to the step's end ({plan.blocks} blocks)",
                     "us": whole})
        rows.append({"network": label, "phase": "events", "kind": "events around train_step",
                     "us": device_ms(lambda m=model, d=data: m.train_step(d, 1e-4), repeats) * 1e3})
        per_step = np.median([profiler.step_times(epoch, batch, 1e-4).sum() for _ in range(repeats)]) / epoch_steps
        rows.append({"network": label, "phase": f"{epoch_steps} steps", "kind": "clock per step, one launch",
                     "us": float(per_step)})
        rows.append({"network": label, "phase": f"{epoch_steps} steps", "kind": "events per step, train_steps",
                     "us": device_ms(lambda m=model, e=epoch, b=batch: m.train_steps(e, b, 1e-4), repeats) * 1e3
                     / epoch_steps})
        model.close()
    return rows


def table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = [" | ".join(columns)]
    for row in rows:
        lines.append(" | ".join(cell(row.get(c, "")) for c in columns))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sections", default="products,tune,barrier,host,profile,steps")
    parser.add_argument("--cases", help="comma-separated networks of the steps section (default: all)")
    parser.add_argument("--backends", help="comma-separated backends of the steps section (default: all)")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--throughput-steps", type=int, default=200)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pin_ieee_float32()
    gpu.ensure_available()
    gpu.precompile(list(cuda.MODULE_SPECS.values()))
    import pycuda

    result = {"device": gpu.info().name, "arch": gpu.info().arch, "sm_count": gpu.info().sm_count,
              "torch": torch.__version__, "pycuda": pycuda.VERSION_TEXT, "python": platform.python_version(),
              "kernel_report": cuda.kernel_report()}
    text = [f"# {result['device']} ({result['arch']}, {result['sm_count']} SMs), torch {result['torch']}, "
            f"PyCUDA {result['pycuda']}"]
    sections = args.sections.split(",")

    def save():
        (args.out / "bench.json").write_text(json.dumps(result, indent=1, default=str))
        (args.out / "bench.txt").write_text("\n\n".join(text) + "\n")

    text.append("## kernels\n" + table(result["kernel_report"], ["kernel", "registers", "static_shared_bytes",
                                                                "dynamic_shared_bytes", "local_bytes"]))
    if "products" in sections:
        result["products"] = products(args.n, args.repeats)
        text.append(f"## products at n = {args.n}\n" + table(result["products"], [
            "impl", "layout", "ms", "tflops", "pct_cublas", "rel_error"]))
        save()
    if "tune" in sections:
        result["tune"] = tune(args.n, max(5, args.repeats // 2))
        text.append(f"## cuda-opt tile configurations at n = {args.n} (unsplit; % of cuBLAS in the same layout)\n"
                    + table(result["tune"], ["config", "transposed", "layout", "threads", "shared_bytes", "ms",
                                             "tflops", "pct_cublas", "rel_error"]))
        save()
    if "barrier" in sections:
        result["barrier"] = barrier()
        text.append("## fused grid barrier\n" + table(result["barrier"], ["blocks", "one_phase_us", "barrier_us"]))
        save()
    if "host" in sections:
        result["host"] = host_costs()
        text.append("## host cost of a fused step\n" + table(result["host"], ["kernel", "call", "host_us"]))
        save()
    if "profile" in sections:
        result["profile"] = profile()
        text.append("## fused step, GPU time per phase (us, median; each phase includes its barrier)\n" + table(
            result["profile"], ["network", "phase", "kind", "layer", "main", "weights", "items", "us"]))
        save()
    if "steps" in sections:
        result["steps"] = steps(args.repeats, args.throughput_steps,
                                set(args.cases.split(",")) if args.cases else None,
                                set(args.backends.split(",")) if args.backends else None)
        text.append("## training steps (us, median; throughput = back-to-back train_step)\n" + table(
            result["steps"], ["network", "batch", "backend", "transfer_us", "forward_us", "backprop_us", "update_us",
                              "step_us", "step_throughput_us", "epoch_step_us", "step_host_us", "step_tflops",
                              "max_rel_error", "compile_s", "kernel", "status"]))
        save()
    result["opt_choices"] = cuda.opt_choices()
    text.append("## cuda-opt autotuner choices\n" + table(result["opt_choices"], [
        "layout", "M", "N", "K", "vector", "config", "splits", "transposed"]))
    save()
    print("\n\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
