"""The README's table of findings, written from the report's ``numbers.json``, so the README says what the
report's data says: ``python -m analysis.findings report/data/numbers.json README.md`` (``make report`` runs
it) replaces the text between the two markers below; a test checks the committed README against the
committed numbers."""

from __future__ import annotations

import argparse
import json
import math
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

BEGIN = "<!-- findings: written by `make report` from report/data/numbers.json -->"
END = "<!-- end of findings -->"


def _sig(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, halves rounded away from zero as the report rounds them,
    without an exponent."""
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    rounded = Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    return f"{rounded:.{decimals}f}"


def _spread_caveat(library: str, role: dict[str, Any], device: str) -> str:
    """A caveat when the library product a ladder is measured against varied too much between repeats."""
    if not (role.get("ladder_ceiling_noisy") or {}).get(device):
        return ""
    spread = role["ladder_ceiling_spread"][device]
    return (f" ({library}'s own time varied by {_sig(100 * spread, 2)} % of its median between repeats "
            f"(interquartile range), so this percentage is uncertain)")


def duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{_sig(seconds * 1e6)} µs"
    if seconds < 1:
        return f"{_sig(seconds * 1e3)} ms"
    return f"{_sig(seconds)} s"


def times(ratio: float) -> str:
    return f"{_sig(ratio)}×"


def percent(fraction: float) -> str:
    return f"{_sig(fraction * 100, 2)} %"


def _endtoend_rows(role: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    tasks = role.get("endtoend") or {}
    for name, task in tasks.items():
        backends = task["backends"]
        serial = backends.get("c-serial", {}).get(task["measure"])
        cpu, gpu = task.get("best_cpu"), task.get("best_gpu")
        if cpu is None:
            continue
        if task["measure"] == "target_s":
            what = (f"{name}: {task['network']} {task['activation']}, batch {task['batch']}, lr {task['lr']}, time to "
                    f"{percent(task['target_accuracy'])} test accuracy, end to end")
        else:
            what = (f"{name}: {task['network']} {task['activation']}, batch {task['batch']}, lr {task['lr']}, every "
                    f"epoch, end to end")
        parts = []
        if task["learned"] == "none":
            loss, accuracy = task["final_loss"], task["final_accuracy"]
            parts.append(f"does not learn on any backend (loss {_sig(loss['max'])}, ln 2 = 0.693; test accuracy "
                         f"{percent(accuracy['max'])}, chance {percent(task['chance'])}): its times measure "
                         f"arithmetic")
        shared = " (timed while its cores were shared)" if cpu.get("flagged") else ""
        slower = task.get("flagged_slower_cpu") or []
        if slower:
            shared += (f" ({', '.join(slower)} {'was' if len(slower) == 1 else 'were'} timed on shared cores "
                       f"and may be faster than measured)")
        if gpu is not None:
            parts.append(f"{gpu['backend']} {duration(gpu['seconds'])}, the fastest CPU backend ({cpu['backend']}) "
                         f"{duration(cpu['seconds'])}{shared}: {times(task['gpu_vs_best_cpu'])}")
        else:
            parts.append(f"the fastest backend, {cpu['backend']}, {duration(cpu['seconds'])}{shared}")
        if serial is not None:
            parts.append(f"serial C {duration(serial)}")
        rows.append((what, "; ".join(parts)))
    return rows


def _step_rows(cpu_role: dict[str, Any], gpu_role: dict[str, Any] | None, authors: dict[str, Any]
               ) -> list[tuple[str, str, str]]:
    """(what, machine, result) for one training step."""
    rows = []
    cpu_label = cpu_role["machine"]["label"]
    for network in ("digits", "moons-5h300", "large"):
        steps = cpu_role["step_s"].get(network) or {}
        if "c-omp" in steps and "torch-cpu" in steps:
            threads = cpu_role["machine"]["cores"]
            result = (f"OpenMP C {duration(steps['c-omp'])} vs PyTorch CPU {duration(steps['torch-cpu'])}: "
                      f"{times(steps['torch-cpu'] / steps['c-omp'])}")
            if "c-serial" in steps:
                result += f"; {times(steps['c-serial'] / steps['c-omp'])} serial C"
            rows.append((f"one step of {network}, {threads} threads", cpu_label, result))
    if gpu_role is None:
        return rows
    gpu_label = gpu_role["machine"]["label"]
    steps = gpu_role["step_s"].get("moons-5h300") or {}
    if {"cuda-fused", "torch-gpu-graph", "c-serial"} <= set(steps):
        rows.append(("one step of moons-5h300, batch 32 (the batch already on the device)", gpu_label,
                     f"fused CUDA kernel {duration(steps['cuda-fused'])}; PyTorch's whole step in a CUDA graph "
                     f"{duration(steps['torch-gpu-graph'])} ({times(steps['torch-gpu-graph'] / steps['cuda-fused'])}); "
                     f"serial C {duration(steps['c-serial'])} ({times(steps['c-serial'] / steps['cuda-fused'])})"))
    epoch = (gpu_role.get("epoch_step_s", {}).get("moons-5h300") or {}).get("cuda-fused")
    if epoch is not None and "torch-gpu-graph" in steps:
        rows.append((f"moons-5h300 an epoch per launch: {gpu_role['epoch_steps']} steps in one `train_steps` call, "
                     "per step", gpu_label,
                     f"fused CUDA kernel {duration(epoch)} (one step alone {duration(steps['cuda-fused'])}); "
                     f"{times(steps['torch-gpu-graph'] / epoch)} PyTorch's single graph step"))
    scaling = []
    for network in ("moons-5h300", "mnist"):
        entry = (gpu_role["threads"].get(network) or {}).get("c-omp")
        if entry and entry.get("speedup") is not None:
            shared = ", a time taken on shared cores" if entry.get("flagged") else ""
            rounds = (f", median of {entry['rounds']} rounds, {times(entry['speedup_min'])}-"
                      f"{times(entry['speedup_max'])}" if (entry.get("rounds") or 1) > 1 else "")
            scaling.append(f"{network} {times(entry['speedup'])} ({entry['threads']} threads{rounds}{shared})")
    if scaling:
        rows.append(("OpenMP C, 1 thread to all cores", gpu_label,
                     "; ".join(scaling) + f" (the original study: {times(authors['thread_speedup'])} on 16 cores)"))
    steps = gpu_role["step_s"].get("large") or {}
    if {"cuda-opt", "torch-gpu"} <= set(steps):
        result = f"cuda-opt {duration(steps['cuda-opt'])}, eager PyTorch {duration(steps['torch-gpu'])}"
        if "cuda-cublas" in steps:
            result += f", the cuBLAS rung {duration(steps['cuda-cublas'])}"
        if "c-omp" in steps and "torch-cpu" in steps:
            result += (f"; on the host's cores OpenMP C {duration(steps['c-omp'])}, PyTorch CPU "
                       f"{duration(steps['torch-cpu'])}")
        rows.append(("one step of large (1024-4096-4096-1024, batch 1024)", gpu_label, result))
    ladder, n = gpu_role.get("ladder_pct") or {}, gpu_role.get("ladder_n") or {}
    if ladder.get("c-v3") is not None and ladder.get("cuda-v3") is not None:
        rows.append(("hand-written matrix products against the libraries", gpu_label,
                     f"C rung 3 at {_sig(ladder['c-v3'], 2)} % of OpenBLAS (n = {n['cpu']})"
                     f"{_spread_caveat('OpenBLAS', gpu_role, 'cpu')}; cuda-opt at "
                     f"{_sig(ladder['cuda-v3'], 2)} % of cuBLAS (n = {n['gpu']})"
                     f"{_spread_caveat('cuBLAS', gpu_role, 'gpu')}"))
    return rows


def _ranks_rows(ranks: dict[str, Any]) -> list[tuple[str, str, str]]:
    """One run's data-parallel rows, one per backend, network and scaling with its rungs: efficiency (with its
    rounds' range where the configurations were launched in rounds) and all-reduce share at the largest world
    size, the gradient all-reduce against a plain one of its size; and the all-reduce share of configurations
    measured on one NCCL rank only."""
    label, most = ranks["machine"], ranks.get("max_world_size")
    shares = ranks.get("allreduce_share") or {}
    rounds = ranks.get("efficiency_rounds") or {}
    grouped: dict[str, list[str]] = {}
    for key, efficiency in (ranks.get("efficiency") or {}).items():
        backend, network, scaling, group, rung = key.split(" ")
        result = f"{rung}: {percent(efficiency)} efficiency"
        if key in rounds:
            spread = rounds[key]
            result += (f" (median of {spread['rounds']} rounds, {percent(spread['min'])}-"
                       f"{percent(spread['max'])})")
        share = shares.get(key, {}).get(str(most))
        if share is not None:
            result += f", the all-reduce {percent(share)} of the step"
        plain = (ranks.get("gradient_vs_plain") or {}).get(key)
        if plain:
            result += (f", {_sig(plain['busbw'], 3)} GB/s bus bandwidth ({percent(plain['ratio'])} of a plain "
                       f"all-reduce of its {_sig(plain['bytes'] / 1e6, 3)} MB)")
        what = f"data-parallel {backend} on {network}, {scaling} scaling, {most} ranks over {group}"
        grouped.setdefault(what, []).append(result)
    rows = [(what, label, "; ".join(results)) for what, results in grouped.items()]
    for key, by_world in shares.items():
        backend, network, scaling, group, rung = key.split(" ")
        if group == "nccl" and rung == "after-backprop" and set(by_world) == {"1"} and by_world["1"] is not None:
            rows.append((f"all-reduce share of a {backend} step on {network}, one rank over NCCL", label,
                         percent(by_world["1"])))
    return rows


def findings_markdown(numbers: dict[str, Any]) -> str:
    """The README's findings table and the correctness sentence under it."""
    cpu_role = numbers["cpu"]
    gpu_role = numbers.get("gpu")
    lines = ["| what | measured on | result |", "|---|---|---|"]
    for role in (gpu_role, cpu_role):
        if role is not None:
            lines += [f"| {what} | {role['machine']['label']} | {result} |" for what, result in _endtoend_rows(role)]
    lines += [f"| {what} | {machine} | {result} |"
              for what, machine, result in _step_rows(cpu_role, gpu_role, numbers["authors"])]
    for ranks in (numbers.get("ranks_runs") or {}).values():
        if ranks["machine"] != cpu_role["machine"]["label"]:  # the hosts' runs; the development machine's: report
            lines += [f"| {what} | {machine} | {result} |" for what, machine, result in _ranks_rows(ranks)]
    counts = numbers["correctness_all"]
    worst = max(role["correctness"]["max_error"] for role in (cpu_role, gpu_role) if role is not None)
    lines += ["", f"Every backend passed the scale-aware check against the float64 reference on "
                  f"{counts['passed']} of {counts['configurations']} checked configurations (worst plain relative "
                  f"error {worst:.2g})."]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with everything between the markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN!r} and {END!r} are missing")
    return text[:start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.findings", description=__doc__)
    parser.add_argument("numbers", type=Path, help="report/data/numbers.json")
    parser.add_argument("readme", type=Path, help="the README whose findings block is replaced")
    args = parser.parse_args(argv)
    block = findings_markdown(json.loads(args.numbers.read_text()))
    args.readme.write_text(replace_block(args.readme.read_text(), block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
