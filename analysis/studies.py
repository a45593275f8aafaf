"""Read the host probes that stand beside the sweep: what N one-thread copies of the C step that share nothing
reach (``scripts/cpu_ceiling.py``, ``ceiling.json``), what the step's exchange between two barriers costs
alone (``scripts/exchange_probe.py``, ``exchange.json``), and where a fused GPU step timed between events goes
(``scripts/fused_step_parts.py``, ``step_parts.json``), and what sets the pace of a one-thread step
(``results/h200-core-pace``: ``pace.json``, ``series.json``), and another run of the data-parallel study on GPUs
(a sweep folder with ``ranks.csv`` from a fresh machine of the kind: a second take, or the same configurations in
rounds). The report cites them where it explains the threads study, the GPU steps and the scaling over GPUs;
``report/studies.txt`` names the folders it reads. Never runs a probe.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import groupby
from pathlib import Path
from statistics import median
from typing import Any

#: How many hex digits of a commit the report prints, for a run's and a probe's alike.
COMMIT_DIGITS = 12

#: Each probe's output file, by which a study folder is recognised.
STUDY_FILES = {"ceiling": "ceiling.json", "exchange": "exchange.json", "step_parts": "step_parts.json",
               "core_pace": "pace.json", "ranks_take": "ranks.csv"}
#: A core-pace cell (one pinned measurement) or window is slow above this multiple of its process's or core's
#: median.
PACE_SLOW = 1.2
#: The width of the core-pace series' windows, in seconds: shorter than the slow stretches seen (0.1-0.4 s).
PACE_WINDOW_S = 0.05


def run_commit(meta: dict[str, Any]) -> str:
    """A sweep run's commit as the report prints it, from its ``meta.json`` (empty where it recorded none)."""
    return str(meta.get("machine", {}).get("git", {}).get("commit") or "")[:COMMIT_DIGITS]


def study_kind(folder: Path) -> str:
    kinds = [kind for kind, name in STUDY_FILES.items() if (folder / name).is_file()]
    if len(kinds) != 1:
        raise ValueError(f"{folder}: a study folder holds exactly one of {sorted(STUDY_FILES.values())}")
    return kinds[0]


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": median(values), "min": min(values), "max": max(values)}


def ceiling_study(folder: Path, label: str) -> dict[str, Any]:
    """Per case, at the largest copy count: the ceiling (N t_1 / t_N), the team ceiling (at the slowest copy's
    pace) and c-omp's speed-up over one thread on as many threads in the same rounds (median and range over the
    rounds, as ``cpu_ceiling.py`` summarised them)."""
    report = json.loads((folder / "ceiling.json").read_text())
    cases: dict[str, Any] = {}
    for result in report["results"]:
        case = result["case"]
        if case in cases and cases[case]["copies"] >= result["copies"]:
            continue
        if result.get("omp_speedup") is None or result.get("team_ceiling") is None:
            raise ValueError(f"{folder}: {case} has no c-omp or team-ceiling column (an older take?)")
        cases[case] = {"copies": result["copies"], "rounds": result["rounds"],
                       **{key: result[key] for key in ("ceiling", "team_ceiling", "omp_speedup")}}
    return {"folder": label, "cpu": report["meta"]["processor"], "cases": cases}


def exchange_study(folder: Path, label: str) -> dict[str, Any]:
    """Per thread count and mode: the stretch and the slowest thread's read, in seconds (the median of the
    rounds' medians, and their range)."""
    report = json.loads((folder / "exchange.json").read_text())
    meta = report["meta"]
    threads = {}
    for result in report["results"]:
        rounds = result["rounds"]
        modes = [mode for mode in ("shared", "private", "streamed") if all(mode in r for r in rounds)]
        if "shared" not in modes or "private" not in modes:
            raise ValueError(f"{folder}: every round needs its shared and private modes in processes of their own")
        threads[str(result["threads"])] = {
            mode: {key: _spread([r[mode][key]["median"] for r in rounds]) for key in ("stretch", "slowest_read")}
            for mode in modes}
    return {"folder": label, "cpu": meta["cpu"], "rows": meta["rows"], "batch": meta["batch"],
            "layers": meta["layers"], "rounds": meta["rounds"], "threads": threads}


def step_parts_study(folder: Path, label: str) -> dict[str, Any]:
    """Per case: the medians, in seconds, of the events around a fused step (``events``), device-only events
    around it (``device``), around a launch with no phases (``start``) and the kernel's own span (``kernel``);
    the host's time per ``train_step`` call and per launch alone; which kernel ran (``kernel_name``) on how many
    blocks; the commit of the code it ran, shortened as the report prints commits."""
    report = json.loads((folder / "step_parts.json").read_text())
    cases = {}
    for result in report["results"]:
        parts = result["parts"]
        cases[result["case"]] = {"kernel_name": result["kernel"], "blocks": result["blocks"],
                                 **{part: parts[part]["median"] for part in ("events", "device", "start", "kernel")},
                                 "host_step": result["host_us"]["train_step"] * 1e-6,
                                 "host_launch": result["host_us"]["launch alone"] * 1e-6}
    meta = report["meta"]
    return {"folder": label, "gpu": meta["gpu"], "commit": meta["git"]["commit"][:COMMIT_DIGITS],
            "repeats": meta["repeats"], "cases": cases}


def _longest_run(flags: list[bool]) -> int:
    return max((len(list(run)) for flag, run in groupby(flags) if flag), default=0)


def core_pace_study(folder: Path, label: str) -> dict[str, Any]:
    """The one-thread pace probe. From ``pace.json`` (processes timing one model pinned to each core in turn, in
    passes): the cells, those over PACE_SLOW times their process's median (their share, the range of that ratio,
    on how many cores and in how many processes, how many of each core's cells) and how many (process, core)
    pairs were slow in every pass.
    From ``series.json`` (cores timed together from one start): per PACE_WINDOW_S window, the cores whose median
    step was over PACE_SLOW times their own median; the windows slow on one core alone, on several and on all
    (``leading_on_all_s``: how long all were slow from the start, when every process had just begun), and the
    longest stretch of slow windows on a core, in seconds."""
    pace = json.loads((folder / "pace.json").read_text())
    cells = pace["steps"]
    by_process: dict[int, list[float]] = defaultdict(list)
    for cell in cells:
        by_process[cell["process"]].append(cell["median_us"])
    usual = {process: median(values) for process, values in by_process.items()}
    slow = [cell for cell in cells if cell["median_us"] > PACE_SLOW * usual[cell["process"]]]
    passes = len({cell["pass"] for cell in cells})
    slow_passes: dict[tuple[int, int], int] = defaultdict(int)
    for cell in slow:
        slow_passes[cell["process"], cell["core"]] += 1
    series = json.loads((folder / "series.json").read_text())["series"]
    windows: list[list[bool]] = []
    for core in series:
        steps: dict[int, list[int]] = defaultdict(list)
        for at, took in zip(core["at_us"], core["step_us"], strict=True):
            steps[at // round(PACE_WINDOW_S * 1e6)].append(took)
        medians = [median(steps[w]) for w in sorted(steps)]
        windows.append([m > PACE_SLOW * median(medians) for m in medians])
    count = min(map(len, windows))
    slow_on = [sum(core[w] for core in windows) for w in range(count)]
    return {"folder": label, "cores": len(pace["cores"]), "processes": len(by_process), "passes": passes,
            "cells": len(cells), "slow_cells": len(slow),
            "slow_ratio": _spread([cell["median_us"] / usual[cell["process"]] for cell in slow]) if slow else None,
            "slow_cores": len({cell["core"] for cell in slow}),
            "slow_per_core": _spread([sum(cell["core"] == core for cell in slow) for core in pace["cores"]]),
            "cells_per_core": len(cells) // len(pace["cores"]),
            "slow_processes": len({cell["process"] for cell in slow}),
            "slow_every_pass": sum(n == passes for n in slow_passes.values()),
            "series": {"cores": len(series), "window_s": PACE_WINDOW_S, "windows": count,
                       "seconds": count * PACE_WINDOW_S,
                       "slow_on_one": sum(n == 1 for n in slow_on), "slow_on_several": sum(n > 1 for n in slow_on),
                       "slow_on_all": sum(n == len(series) for n in slow_on),
                       "leading_on_all_s": next((w for w, n in enumerate(slow_on) if n < len(series)), count)
                       * PACE_WINDOW_S,
                       "longest_s": max(_longest_run(core[:count]) for core in windows) * PACE_WINDOW_S}}


def ranks_take_study(folder: Path, label: str) -> dict[str, Any]:
    """Another run of the data-parallel study on several GPUs (a second take, or the same configurations in
    rounds): its code's commit, the all-reduce rungs it measured (a speed-up "at the faster rung" is over these)
    and, at its largest world size, what :func:`analysis.summary.multi_gpu` reads (weak-scaling efficiencies,
    strong-scaling speed-ups with their rounds' range)."""
    from analysis.load import load_run
    from analysis.summary import multi_gpu, rank_scaling

    results = load_run(folder)
    rounds = rank_scaling(results, by_round=True)
    scaling = multi_gpu(rounds)
    if scaling is None:
        raise ValueError(f"{folder}: no ranks on several GPUs to set beside the report's run")
    rungs = sorted(set(rounds[rounds.pg_backend == "nccl"].rung))
    return {"folder": label, "commit": run_commit(next(iter(results.meta.values()))), "rungs": rungs, **scaling}


_READERS = {"ceiling": ceiling_study, "exchange": exchange_study, "step_parts": step_parts_study,
            "core_pace": core_pace_study, "ranks_take": ranks_take_study}


def load_studies(folders: list[str | Path], root: Path | None = None) -> dict[str, Any]:
    """The studies in ``folders``, one of each kind at most, keyed by kind; each names its folder relative to
    ``root`` where it lies inside it."""
    studies: dict[str, Any] = {}
    for folder in map(Path, folders):
        kind = study_kind(folder)
        if kind in studies:
            raise ValueError(f"{folder}: a second {kind} study (the report cites one of each)")
        resolved = folder.resolve()
        label = str(resolved.relative_to(root)) if root is not None and resolved.is_relative_to(root) else str(folder)
        studies[kind] = _READERS[kind](folder, label)
    return studies
