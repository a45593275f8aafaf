"""Read the host probes that stand beside the sweep: what N one-thread copies of the C step that share nothing
reach (``scripts/cpu_ceiling.py``, ``ceiling.json``), what the step's exchange between two barriers costs
alone (``scripts/exchange_probe.py``, ``exchange.json``), and where a fused GPU step timed between events goes
(``scripts/fused_step_parts.py``, ``step_parts.json``). The report cites them where it explains the threads
study and the GPU steps; ``report/studies.txt`` names the folders it reads. Never runs a probe.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

#: How many hex digits of a commit the report prints, for a run's and a probe's alike.
COMMIT_DIGITS = 12

#: Each probe's output file, by which a study folder is recognised.
STUDY_FILES = {"ceiling": "ceiling.json", "exchange": "exchange.json", "step_parts": "step_parts.json"}


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


_READERS = {"ceiling": ceiling_study, "exchange": exchange_study, "step_parts": step_parts_study}


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
