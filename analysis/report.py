"""Build the written report: figures and data tables from result folders, then ``report/report.typ`` → PDF.

``python -m analysis.report RUN_DIR [RUN_DIR ...] --figures figures --data report/data --output report/report.pdf``

The Typst source types no number: it reads the summary tables (:func:`analysis.summary.write_summaries`) and
``numbers.json``, the named quantities its text cites (:func:`report_numbers`). Two roles are filled from the
runs given: ``cpu`` (a run without a usable GPU, e.g. the development machine) and ``gpu`` (a run that timed
GPU backends); with a single run both roles are that run. ``numbers.json`` also carries the host probes that
stand beside the sweep (``studies``: :mod:`analysis.studies`, the folders ``report/studies.txt`` names).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import draw_all, load_runs
from analysis.load import Results, busy_keys, epoch_steps, gpu_name, machine_label
from analysis.palette import REFERENCE, hand_written_ladder, ordered
from analysis.studies import load_studies, run_commit
from analysis.summary import (
    AUTHORS_BATCH,
    AUTHORS_NETWORK,
    AUTHORS_THREADS,
    COMPUTE_STAGES,
    allreduce_table,
    batch_effect,
    correctness_table,
    endtoend_table,
    gpu_backends,
    json_ready,
    ladder_table,
    lineprofile_table,
    load_table,
    multi_gpu,
    over_rank_rounds,
    rank_scaling,
    stage_speedups,
    stage_table,
    thread_baselines,
    thread_scaling,
    training_table,
    width_table,
    write_summaries,
)

ROOT = Path(__file__).resolve().parents[1]
#: The committed runs the report is drawn from, one path a line: the development machine's run, the GPU host's
#: run and the several-GPU data-parallel run (``make report`` reads the same file).
REPORT_RUNS_FILE = ROOT / "report" / "runs.txt"
#: The host probes beside the sweep that the report cites (``analysis.studies``), one folder a line.
REPORT_STUDIES_FILE = ROOT / "report" / "studies.txt"
#: A ladder's library product whose interquartile range exceeds this share of its median makes every
#: percentage of that ladder uncertain, and the report and the README say so beside it.
LADDER_SPREAD_LIMIT = 0.10
#: Timed runs of an end-to-end task whose range (greatest less least) exceeds this share of their median are
#: named beside the end-to-end figures: their median is a median of runs that disagreed.
ENDTOEND_SPREAD_LIMIT = 0.25
#: Sweep parameters the report's method section states.
TIMING_PARAMETERS = ("repeats", "warmup", "min_repeats", "budget_s", "rotate", "verify_batch", "tolerance", "lr",
                     "weight_decay", "epochs", "train_batch", "train_lr", "profile_steps", "width_layers",
                     "width_batch")


def _has_gpu_rows(results: Results, run_id: str) -> bool:
    rows = results.rows
    ok = rows[(rows.run_id == run_id) & (rows.status == "ok")]
    return bool(ok.backend.isin(gpu_backends(results)).any())


def roles(results: Results) -> dict[str, str]:
    """``{"cpu": run_id, "gpu": run_id}``: the first run without GPU measurements and the first with them,
    among the runs with per-stage measurements (a run of the data-parallel study alone fills no role); a role
    no run fills falls back to the other role's run."""
    studied = [r for r in results.run_ids if (results.rows.run_id == r).any()] or list(results.run_ids)
    with_gpu = [r for r in studied if _has_gpu_rows(results, r)]
    without = [r for r in studied if r not in with_gpu]
    cpu = (without or with_gpu)[0]
    gpu = (with_gpu or without)[0]
    return {"cpu": cpu, "gpu": gpu}


#: nvidia-smi's names of a path between two GPUs (with one GPU the third column is the CPU affinity).
_LINK = re.compile(r"NV\d+|SYS|NODE|PHB|PXB|PIX")


def _gpu_link(topology: Any) -> str | None:
    """How GPU 0 reaches GPU 1 in ``nvidia-smi topo -m`` (``NV18``: 18 bonded NVLinks); None with one GPU."""
    if not isinstance(topology, list):
        return None
    for line in topology:
        cells = [cell.strip() for cell in line.split("\t")]
        if len(cells) > 2 and cells[0] == "GPU0" and cells[1] == "X" and _LINK.fullmatch(cells[2]):
            return cells[2]
    return None


def _listed_folders(listing: Path) -> list[Path]:
    """The folders a listing file names, one a line, relative to the project, in its order."""
    return [ROOT / line for line in listing.read_text().split()]


def report_runs() -> list[Path]:
    """The run folders of :data:`REPORT_RUNS_FILE`, in its order."""
    return _listed_folders(REPORT_RUNS_FILE)


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def _text(values: pd.Series) -> str | None:
    """The one non-empty text of ``values`` (a summary column of one configuration), or None."""
    present = [str(v) for v in values if isinstance(v, str) and v]
    return present[0] if present else None


def _ratio(slower: float | None, faster: float | None) -> float | None:
    """How many times ``faster`` beats ``slower`` (two times in seconds); None if either is missing."""
    return slower / faster if slower and faster else None


def _cache_size(size: str) -> str:
    """The kernel's cache size (``"2048K"``) in MiB where it is whole ones."""
    kib = int(size.rstrip("K")) if size.rstrip("K").isdigit() else None
    if kib is None:
        return size
    return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"


def cpu_identity(cpu: dict[str, Any]) -> str | None:
    """What tells this CPU from others of the same model name (family, model number, stepping, L2 and L3), as
    a run recorded it; ``None`` for runs that did not (swept before the record)."""
    if not cpu.get("family") or not cpu.get("model_number"):
        return None
    text = f"family {cpu['family']}, model {cpu['model_number']}"
    if cpu.get("stepping"):
        text += f", stepping {cpu['stepping']}"
    caches = cpu.get("caches") if isinstance(cpu.get("caches"), dict) else {}
    sizes = [f"{level} {_cache_size(caches[level])}" for level in ("L2", "L3") if level in caches]
    return text + (f"; {', '.join(sizes)}" if sizes else "")


def later_sessions(rows: pd.DataFrame, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Backends whose stage timings all come from a later session of the run than most backends' (a resumed
    run measures in several sessions, minutes or an instance apart): each session's start, its minutes after
    the run's first session and its backends, in order. Sessions are read from ``meta.json``; a row belongs to
    the session whose span holds its ``finished_at``."""
    sessions = [(pd.Timestamp(s["started_at"]), pd.Timestamp(s["finished_at"])) for s in meta.get("sessions", [])
                if s.get("started_at") and s.get("finished_at")]
    timed = rows[(rows.study == "stages") & (rows.status == "ok")].dropna(subset=["finished_at"])
    if len(sessions) < 2 or timed.empty:
        return []

    def session_of(finished: str) -> int | None:
        at = pd.Timestamp(finished)
        return next((index for index, (start, end) in enumerate(sessions) if start <= at <= end), None)

    of_backend = timed.groupby("backend").finished_at.agg(lambda done: {session_of(at) for at in done})
    single = {backend: next(iter(found)) for backend, found in of_backend.items()
              if len(found) == 1 and None not in found}
    if not single:
        return []
    main = pd.Series(list(single.values())).mode().iloc[0]
    first = sessions[0][0]
    later = sorted({index for index in single.values() if index > main})
    return [{"started_at": sessions[index][0].isoformat(),
             "minutes_after_first": round((sessions[index][0] - first).total_seconds() / 60),
             "backends": ordered([b for b, found in single.items() if found == index])} for index in later]


class _Run:
    """Lookups into one run's summary tables."""

    def __init__(self, results: Results, tables: dict[str, pd.DataFrame], run_id: str) -> None:
        self.run_id = run_id
        self.meta = results.meta[run_id]
        self.gpu = gpu_backends(results)
        mine = {name: table[table.run_id == run_id] for name, table in tables.items()}
        self.stages, self.threads, self.batch = mine["stages"], mine["threads"], mine["batch"]
        self.width, self.ladder, self.training = mine["width"], mine["ladder"], mine["training"]
        self.profile, self.correct = mine["profile"], mine["correct"]
        self.baselines_table, self.stage_speedups = mine["baselines"], mine["stage_speedups"]
        self.endtoend_table, self.load = mine["endtoend"], mine["load"]
        self.rank_scaling, self.rank_rounds, self.allreduce = (mine["rank_scaling"], mine["rank_rounds"],
                                                               mine["allreduce"])

    def step(self, network: str, backend: str) -> float | None:
        found = self.stages[(self.stages.network == network) & (self.stages.backend == backend)]
        return _finite(found.step_s.iloc[0]) if len(found) else None

    def speedup(self, network: str, faster: str, slower: str) -> float | None:
        """How many times ``faster``'s step beats ``slower``'s on ``network`` (None if either is missing)."""
        return _ratio(self.step(network, slower), self.step(network, faster))

    def best(self, network: str, backends: tuple[str, ...]) -> dict[str, Any] | None:
        found = self.stages[(self.stages.network == network) & self.stages.backend.isin(backends)]
        found = found[np.isfinite(found.step_s)]
        if found.empty:
            return None
        row = found.loc[found.step_s.idxmin()]
        return {"backend": row.backend, "step_s": float(row.step_s)}

    def ladder_pct(self, impl: str) -> float | None:
        found = self.ladder[(self.ladder.impl == impl) & (self.ladder.status == "ok")]
        return _finite(found.pct_of_ceiling.iloc[0]) if len(found) else None

    def ladder_gflops(self, impl: str) -> float | None:
        found = self.ladder[(self.ladder.impl == impl) & (self.ladder.status == "ok")]
        return _finite(found.gflops.iloc[0]) if len(found) else None

    def ladder_ceiling_spread(self, device: str) -> float | None:
        """The interquartile range of the library product that ``device``'s ladder is measured against, over
        its median: how far every percentage of that ladder can be trusted."""
        rows = self.ladder[(self.ladder.device == device) & (self.ladder.status == "ok")]
        found = rows[rows.impl == rows.ceiling_impl]
        return _finite(found.iqr_s.iloc[0] / found.median_s.iloc[0]) if len(found) else None

    def rung_order(self) -> dict[str, Any]:
        """The hand-written CUDA rungs' steps per network in ladder order, and every rung slower than a rung
        below it (``overlap``: their interquartile ranges meet), with cuda-fused's step of the same network
        where it runs: the whole step's arithmetic in one launch, so what a layered rung takes beyond it
        (``beyond_fused``, a share of its step) is the host's Python and kernel launches; ``products_climb``:
        whether the ladder study's CUDA products gain GFLOP/s with every rung."""
        ladder = hand_written_ladder("cuda")
        networks: dict[str, dict[str, float]] = {}
        slower = []
        for network in sorted(self.stages.network.unique()):
            found = self.stages[(self.stages.network == network) & self.stages.backend.isin(ladder)
                                & np.isfinite(self.stages.step_s)].set_index("backend")
            rungs = [b for b in ladder if b in found.index]
            if len(rungs) < 2:
                continue
            networks[network] = {b: float(found.step_s[b]) for b in rungs}
            fused = networks[network].get("cuda-fused")
            for i, upper in enumerate(rungs):
                for lower in rungs[:i]:
                    if found.step_s[upper] > found.step_s[lower]:
                        slower.append({"network": network, "rung": upper, "below": lower,
                                       "step_s": float(found.step_s[upper]), "below_s": float(found.step_s[lower]),
                                       "overlap": bool(found.step_q1_s[upper] <= found.step_q3_s[lower]),
                                       "fused_s": fused if upper != "cuda-fused" else None,
                                       "beyond_fused": 1 - fused / float(found.step_s[upper])
                                       if fused and upper != "cuda-fused" else None})
        products = self.ladder[(self.ladder.device == "gpu") & self.ladder.impl.str.startswith("cuda-v")
                               & (self.ladder.status == "ok")].sort_values("version")
        climbing = bool(len(products) > 1 and products.gflops.is_monotonic_increasing)
        return {"networks": networks, "slower": slower, "products_climb": climbing}

    def most_threads(self, network: str, backend: str) -> dict[str, Any] | None:
        """The step on the most threads measured and its speed-up over one thread (the median of the rounds'
        own, with their least and greatest); ``flagged`` where either of the two steps, or a round the median
        speed-up is taken from, was timed while the cores were shared."""
        found = self.threads[(self.threads.network == network) & (self.threads.backend == backend)]
        if found.empty:
            return None
        row = found.loc[found.threads.idxmax()]
        compared = found[found.threads.isin((1, row.threads))]
        return {"threads": int(row.threads), "speedup": float(row.speedup), "step_s": float(row.step_s),
                "rounds": int(compared.rounds.min()), "speedup_min": float(row.speedup_min),
                "speedup_max": float(row.speedup_max),
                "flagged": bool(compared.flagged.any() or row.speedup_flagged)}

    def batch_gain(self, backend: str) -> dict[str, Any] | None:
        """Samples/s at the largest batch over samples/s at the smallest."""
        found = self.batch[self.batch.backend == backend].sort_values("batch")
        if len(found) < 2:
            return None
        return {"from": int(found.batch.iloc[0]), "to": int(found.batch.iloc[-1]),
                "gain": float(found.samples_per_s.iloc[-1] / found.samples_per_s.iloc[0])}

    def width_crossover(self) -> dict[str, Any] | None:
        """From which width on the fastest GPU step beats the fastest CPU step (the float64 reference left out)
        at every larger width measured, and the widths measured; None where the run timed no GPU backend."""
        table = self.width[self.width.backend != REFERENCE]
        on_gpu = table.backend.isin(self.gpu)
        if not on_gpu.any() or on_gpu.all():
            return None
        cpu = table[~on_gpu].groupby("width").step_s.min()
        gpu = table[on_gpu].groupby("width").step_s.min()
        widths = sorted(set(cpu.index) & set(gpu.index))
        leads = [w for w in widths if gpu[w] < cpu[w]]
        start = next((w for i, w in enumerate(widths) if all(x in leads for x in widths[i:])), None)
        return {"from": int(start) if start is not None else None, "smallest": int(widths[0]),
                "largest": int(widths[-1]), "gpu_leads_at": [int(w) for w in leads],
                "everywhere": start == widths[0]}

    def widest(self) -> dict[str, Any] | None:
        """At the largest width measured: the fastest CPU and GPU backends' step GFLOP/s as % of their ceiling."""
        if self.width.empty:
            return None
        top = self.width[self.width.width == self.width.width.max()]
        out: dict[str, Any] = {"width": int(top.width.iloc[0])}
        for device, wanted in (("cpu", False), ("gpu", True)):
            found = top[(top.backend.isin(self.gpu) == wanted) & np.isfinite(top.gflops)]
            if len(found):
                best = found.loc[found.gflops.idxmax()]
                out[device] = {"backend": best.backend, "gflops": float(best.gflops),
                               "pct_of_ceiling": 100 * float(best.gflops / best.ceiling_gflops)}
        return out

    def largest_stages(self) -> dict[str, Any]:
        """Which compute stage is the largest for each backend and network, and the exceptions to backprop."""
        table = self.stages.dropna(subset=[f"{s}_s" for s in COMPUTE_STAGES])
        largest = table[[f"{s}_s" for s in COMPUTE_STAGES]].idxmax(axis=1).str.removesuffix("_s")
        exceptions = [{"network": r.network, "backend": r.backend, "largest": stage,
                       "ratio": float(getattr(r, f"{stage}_s") / r.backprop_s)}
                      for r, stage in zip(table.itertuples(), largest, strict=True) if stage != "backprop"]
        groups: dict[tuple[str, str], list[str]] = {}  # the exceptions by stage and network, as the report lists them
        for e in exceptions:
            groups.setdefault((e["largest"], e["network"]), []).append(e["backend"])
        return {"backprop": int((largest == "backprop").sum()), "total": len(table), "exceptions": exceptions,
                "exception_groups": [{"largest": stage, "network": network, "backends": backends}
                                     for (stage, network), backends in sorted(groups.items())]}

    def batch_fastest(self) -> list[dict[str, Any]]:
        """At each batch size of the batch study: the fastest backend (the float64 reference left out)."""
        table = self.batch[self.batch.backend != REFERENCE]
        out = []
        for batch, group in table.groupby("batch"):
            row = group.loc[group.step_s.idxmin()]
            out.append({"batch": int(batch), "backend": row.backend, "step_s": float(row.step_s),
                        "c_library": row.backend.startswith("c-")})
        return out

    def baselines(self) -> dict[str, Any]:
        """Per network: each threaded CPU backend at the matched count and at its best (``flagged``: timed
        while the cores were shared), and c-omp's speed-up over torch-cpu both ways."""
        out: dict[str, Any] = {}
        for network, group in self.baselines_table.groupby("network"):
            entry: dict[str, Any] = {}
            for row in group.itertuples():
                entry.setdefault(row.backend, {})[row.which] = {
                    "threads": int(row.threads), "step_s": float(row.step_s), "tried": int(row.thread_counts_tried),
                    "flagged": bool(row.flagged)}
            omp, torch = entry.get("c-omp", {}), entry.get("torch-cpu", {})
            for which in ("matched", "best"):
                if which in omp and which in torch:
                    entry[f"omp_vs_torch_{which}"] = torch[which]["step_s"] / omp[which]["step_s"]
            out[network] = entry
        return out

    def stage_gains(self) -> dict[str, Any]:
        """Per network and stage: OpenMP C's and the best GPU backend's speed-up over serial C, and which stage
        gains most from each."""
        out: dict[str, Any] = {}
        for network, group in self.stage_speedups.groupby("network"):
            entry: dict[str, Any] = {}
            for level, key in (("OpenMP C", "omp"), ("best GPU", "gpu")):
                # Without a serial C time (skipped over budget) a stage has no speed-up to rank.
                mine = group[(group.level == level) & group.stage.isin(COMPUTE_STAGES) & group.speedup.notna()]
                entry[key] = {r.stage: {"speedup": float(r.speedup), "backend": r.backend} for r in mine.itertuples()}
                if len(mine):
                    entry[f"{key}_most"] = str(mine.loc[mine.speedup.idxmax()].stage)
                    entry[f"{key}_least"] = str(mine.loc[mine.speedup.idxmin()].stage)
            out[network] = entry
        return out

    def endtoend(self) -> dict[str, Any]:
        """Per task: every backend's time to train and to target, loss and accuracy, whether every / no
        backend learned, and the fastest CPU and GPU backends with their ratio (what it includes is the
        measure's: training steps with the data resident where the backend computes, evaluation excluded), each
        ``flagged`` where the run's ``meta.json`` lists it as timed while the cores were shared, and the slower
        CPU backends so listed (``flagged_slower_cpu``)."""
        out: dict[str, Any] = {}
        flagged = busy_keys(self.meta)
        for task, group in self.endtoend_table.groupby("task", sort=False):
            done = group[group.status == "ok"]
            backends = {r.backend: {"train_s": _finite(r.train_s), "target_s": _finite(r.target_s),
                                    "first_loss": _finite(r.first_loss), "final_loss": _finite(r.final_loss),
                                    "final_accuracy": _finite(r.final_accuracy), "learned": bool(r.learned),
                                    "epochs": int(r.epochs_run)} for r in done.itertuples()}
            learned = [b["learned"] for b in backends.values()]
            spread = (done.train_max_s - done.train_min_s) / done.train_s
            measure = "target_s" if done.target_s.notna().any() else "train_s"
            entry: dict[str, Any] = {
                "backends": backends, "measure": measure, "failed": int((group.status != "ok").sum()),
                "learned": "all" if learned and all(learned) else "none" if not any(learned) else "some",
                "chance": _finite(group.chance.iloc[0]), "target_accuracy": _finite(group.target_accuracy.iloc[0]),
                "network": group.network.iloc[0], "activation": group.activation.iloc[0],
                "batch": int(group.batch.iloc[0]), "lr": float(group.lr.iloc[0]),
                "final_loss": {"min": _finite(done.final_loss.min()), "max": _finite(done.final_loss.max())},
                "final_accuracy": {"min": _finite(done.final_accuracy.min()),
                                   "max": _finite(done.final_accuracy.max())},
                # the timed runs behind each median: how many, how far apart, and whether they computed alike
                "repeats": int(done.repeats.min()) if len(done) else 0,
                "spread_max": _finite(spread.max()) if len(done) else None,
                "spread_over": [{"backend": r.backend, "spread": float(x)}
                                for r, x in zip(done.itertuples(), spread, strict=True) if x > ENDTOEND_SPREAD_LIMIT],
                "loss_gap_max": _finite(done.repeat_loss_gap.max()) if len(done) else None}
            timed = done[done[measure].notna() & (done.backend != REFERENCE)]
            for side, wanted in (("cpu", False), ("gpu", True)):
                mine = timed[timed.backend.isin(self.gpu) == wanted]
                if len(mine):
                    row = mine.loc[mine[measure].idxmin()]
                    entry[f"best_{side}"] = {"backend": row.backend, "seconds": float(row[measure]),
                                             "flagged": f"endtoend:{task}/{row.backend}" in flagged}
            # slower CPU backends timed on shared cores: one of them may be the fastest on quiet cores
            entry["flagged_slower_cpu"] = [b for b in timed[~timed.backend.isin(self.gpu)].backend
                                           if f"endtoend:{task}/{b}" in flagged
                                           and b != entry.get("best_cpu", {}).get("backend")]
            serial = timed[timed.backend == "c-serial"]
            if "best_gpu" in entry:
                gpu_s = entry["best_gpu"]["seconds"]
                if "best_cpu" in entry:
                    entry["gpu_vs_best_cpu"] = entry["best_cpu"]["seconds"] / gpu_s
                if len(serial):
                    entry["gpu_vs_serial"] = float(serial[measure].iloc[0]) / gpu_s
            out[task] = entry
        return out

    def ranks(self) -> dict[str, Any] | None:
        """Data-parallel runs: the GPUs and how they are linked, the code's commit, the largest world size,
        efficiency there per configuration (``backend network scaling pg_backend rung``; launched in rounds: the
        median of the rounds', with their count and range in ``efficiency_rounds``), the all-reduce share
        of the step at every world size, the gradient all-reduce against a plain one of the same bytes, the
        highest plain all-reduce bus bandwidth, and on several GPUs :func:`~analysis.summary.multi_gpu`; None
        without such data."""
        if self.rank_scaling.empty and self.allreduce.empty:
            return None
        gpu = self.meta.get("machine", {}).get("gpu", {})
        out: dict[str, Any] = {"machine": machine_label(self.meta), "gpus": gpu.get("count"),
                               "commit": run_commit(self.meta),
                               "nccl": gpu.get("nccl"), "link": _gpu_link(gpu.get("topology")),
                               "efficiency": {}, "efficiency_rounds": {}, "allreduce_share": {},
                               "gradient_vs_plain": {}}
        scaling = self.rank_scaling
        if len(scaling):
            most = int(scaling.world_size.max())
            out["max_world_size"] = most
            for row in scaling.itertuples():
                key = f"{row.backend} {row.network} {row.scaling} {row.pg_backend} {row.rung}"
                out["allreduce_share"].setdefault(key, {})[str(int(row.world_size))] = _finite(row.allreduce_share)
                if row.world_size != most:
                    continue
                out["efficiency"][key] = float(row.efficiency)
                if row.rounds > 1:  # the median of the rounds' efficiencies: their range beside it
                    out["efficiency_rounds"][key] = {"rounds": int(row.rounds), "min": float(row.efficiency_min),
                                                     "max": float(row.efficiency_max)}
                # Only after backprop is the all-reduce timed alone (overlapped: the wait backprop left).
                if row.rung == "after-backprop" and np.isfinite(row.busbw_of_plain):
                    out["gradient_vs_plain"][key] = {"bytes": int(row.grad_bytes), "busbw": row.grad_busbw_gbps,
                                                     "plain_busbw": row.plain_busbw_gbps,
                                                     "ratio": row.busbw_of_plain}
        if len(self.allreduce):
            best = self.allreduce.loc[self.allreduce.busbw_gbps.idxmax()]
            out["max_busbw"] = {"gbps": float(best.busbw_gbps), "bytes": int(best.bytes),
                                "world_size": int(best.world_size), "pg_backend": best.pg_backend}
        out["multi_gpu"] = multi_gpu(self.rank_rounds)
        return json_ready(out)

    def machine(self) -> dict[str, Any]:
        described = self.meta.get("machine", {})
        cpu = described.get("cpu", {})
        libraries = described.get("libraries", {})
        native = described.get("native", {})
        gpu = described.get("gpu", {})
        smi = (gpu.get("nvidia_smi") or [{}])[0] if isinstance(gpu.get("nvidia_smi"), list) else {}
        return {
            "run_id": self.run_id, "label": machine_label(self.meta),
            "cpu": cpu.get("model"), "cores": cpu.get("usable_cores"), "cpu_identity": cpu_identity(cpu),
            "gpu": gpu.get("name") if not str(gpu.get("name", "unavailable")).startswith("unavailable") else None,
            "gpu_driver": smi.get("driver_version"), "gpu_max_clock": smi.get("clocks.max.sm"),
            "python": libraries.get("python"), "numpy": libraries.get("numpy"), "torch": libraries.get("torch"),
            "pycuda": libraries.get("pycuda"), "compiler": native.get("compiler"), "isa": native.get("isa"),
            "cflags": native.get("cflags"), "commit": run_commit(self.meta), "preset": self.meta.get("preset"),
            "started_at": str(self.meta.get("started_at", ""))[:16].replace("T", " "),
        }


def report_numbers(results: Results) -> dict[str, Any]:
    """The named quantities the report's text cites, per role (see module docstring)."""
    chosen = roles(results)
    out: dict[str, Any] = {"roles": chosen}
    # Each summary over all runs, once; every role reads its own rows.
    tables = {"stages": stage_table(results), "threads": thread_scaling(results), "batch": batch_effect(results),
              "width": width_table(results), "ladder": ladder_table(results), "training": training_table(results),
              "profile": lineprofile_table(results), "correct": correctness_table(results),
              "baselines": thread_baselines(results), "stage_speedups": stage_speedups(results),
              "endtoend": endtoend_table(results), "load": load_table(results),
              "rank_rounds": rank_scaling(results, by_round=True), "allreduce": allreduce_table(results)}
    tables["rank_scaling"] = over_rank_rounds(tables["rank_rounds"])
    for role, run_id in chosen.items():
        run = _Run(results, tables, run_id)
        nets = sorted(run.stages.network.unique())
        parameters = run.meta.get("parameters", {})
        entry: dict[str, Any] = {"machine": run.machine(), "networks": nets,
                                 "parameters": {key: parameters.get(key) for key in TIMING_PARAMETERS},
                                 "thread_counts": run.meta.get("thread_counts"),
                                 "sessions": len(run.meta.get("sessions", [])), "status": run.meta.get("status"),
                                 "later_sessions": later_sessions(results.rows[results.rows.run_id == run_id],
                                                                  run.meta)}
        entry["omp_vs_torch"] = {n: run.speedup(n, "c-omp", "torch-cpu") for n in nets}
        entry["omp_vs_serial"] = {n: run.speedup(n, "c-omp", "c-serial") for n in nets}
        entry["fused_vs_graph"] = {n: run.speedup(n, "cuda-fused", "torch-gpu-graph") for n in nets}
        entry["fused_vs_serial"] = {n: run.speedup(n, "cuda-fused", "c-serial") for n in nets}
        entry["opt_vs_torch_gpu"] = {n: run.speedup(n, "cuda-opt", "torch-gpu") for n in nets}
        entry["fused_vs_torch_gpu"] = {n: run.speedup(n, "cuda-fused", "torch-gpu") for n in nets}
        entry["graph_vs_eager"] = {n: run.speedup(n, "torch-gpu-graph", "torch-gpu") for n in nets}
        entry["step_s"] = {n: {b: run.step(n, b) for b in run.stages[run.stages.network == n].backend} for n in nets}
        on_gpu = run.stages.backend.isin(run.gpu)
        cpu_backends = tuple(sorted(set(run.stages.backend[~on_gpu]) - {REFERENCE}))
        gpu_backends = tuple(sorted(set(run.stages.backend[on_gpu])))
        entry["transfer_s"] = {n: {r.backend: _finite(r.transfer_s) for r in run.stages[run.stages.network == n]
                                   .itertuples()} for n in nets}
        # per step of an epoch in one train_steps call, where a backend runs many steps per launch
        entry["epoch_step_s"] = {n: {r.backend: _finite(r.epoch_step_s) for r in run.stages[run.stages.network == n]
                                     .itertuples() if _finite(r.epoch_step_s)} for n in nets}
        # the kernel cuda-fused chose for its epoch launch, where the run records it (an empty cell: none)
        entry["epoch_kernel"] = {n: _text(run.stages[(run.stages.network == n) & (run.stages.backend == "cuda-fused")]
                                          .epoch_kernel) for n in nets}
        entry["epoch_steps"] = epoch_steps(run.meta)
        if entry["epoch_steps"] is None and any(entry["epoch_step_s"].values()):
            raise ValueError(f"run {run_id}: epoch_step timings, but meta.json records no epoch_steps")
        entry["fused_epoch_vs_graph"] = {n: _ratio(run.step(n, "torch-gpu-graph"),
                                                   entry["epoch_step_s"][n].get("cuda-fused")) for n in nets}
        entry["best_cpu"] = {n: run.best(n, cpu_backends) for n in nets}
        entry["best_gpu"] = {n: run.best(n, gpu_backends) for n in nets}
        gpu_best = entry["best_gpu"].get(AUTHORS_NETWORK)
        serial = run.step(AUTHORS_NETWORK, "c-serial")
        entry["best_gpu_vs_serial_authors"] = serial / gpu_best["step_s"] if gpu_best and serial else None
        entry["threads"] = {n: {b: run.most_threads(n, b) for b in ("c-omp", "torch-cpu")}
                            for n in sorted(run.threads.network.unique())}
        entry["batch_network"] = str(run.batch.network.iloc[0]) if len(run.batch) else None
        entry["batch_gain"] = {b: run.batch_gain(b) for b in sorted(run.batch.backend.unique())}
        entry["width_crossover"] = run.width_crossover()
        entry["widest"] = run.widest()
        entry["rung_order"] = run.rung_order()
        entry["best_per_operation_gpu"] = {n: run.best(n, ("cuda-naive", "cuda-tiled", "cuda-opt")) for n in nets}
        entry["ladder_pct"] = {impl: run.ladder_pct(impl) for impl in run.ladder.impl}
        entry["ladder_gflops"] = {impl: run.ladder_gflops(impl) for impl in run.ladder.impl}
        entry["ladder_n"] = {device: int(group.n.iloc[0]) for device, group in run.ladder.groupby("device")}
        entry["ladder_ceiling_spread"] = {device: run.ladder_ceiling_spread(device) for device in entry["ladder_n"]}
        entry["ladder_ceiling_noisy"] = {device: spread is not None and spread > LADDER_SPREAD_LIMIT
                                         for device, spread in entry["ladder_ceiling_spread"].items()}
        accuracy = run.training.test_accuracy
        entry["test_accuracy"] = {"min": _finite(accuracy.min()), "max": _finite(accuracy.max()),
                                  "backends": len(accuracy),
                                  "epochs": int(run.training.epochs.max()) if len(accuracy) else None}
        checked = run.correct[run.correct.checked > 0]
        entry["correctness"] = {"configurations": int(checked.checked.sum()),
                                "passed": int(checked.passed.sum()),
                                "max_error": _finite(checked.err_max.max()),
                                "tolerance": _finite(checked.tolerance.max())}
        entry["correctness"]["margin"] = (entry["correctness"]["tolerance"] / entry["correctness"]["max_error"]
                                          if entry["correctness"]["max_error"] else None)
        entry["test_accuracy"]["same"] = (entry["test_accuracy"]["min"] is not None and round(
            entry["test_accuracy"]["min"] * 100) == round(entry["test_accuracy"]["max"] * 100))
        entry["nonfinite"] = sorted(f"{r.backend} on {r.network}" for r in run.stages.itertuples()
                                    if r.nonfinite == 1)
        entry["largest_stages"] = run.largest_stages()
        entry["batch_fastest"] = run.batch_fastest()
        entry["c_fastest_batches"] = [b["batch"] for b in entry["batch_fastest"] if b["c_library"]]
        entry["batch_winners"] = _stretches(entry["batch_fastest"])
        entry["baselines"] = run.baselines()
        entry["stage_gains"] = run.stage_gains()
        entry["endtoend"] = run.endtoend()
        entry["profile"] = {row.backend: {"python_share": _python_share(row), "step_s": float(row.plain_step_s)}
                            for row in run.profile.itertuples()}
        out[role] = entry
    # Data-parallel measurements of every run, in the order given (a run of that study alone has no role).
    out["ranks_runs"] = {run_id: ranks for run_id in results.run_ids
                         if (ranks := _Run(results, tables, run_id).ranks()) is not None}
    out["backends"] = ordered(results.rows.backend.dropna().unique()) if "backend" in results.rows else []
    correct = tables["correct"]
    out["correctness_all"] = {"configurations": int(correct.checked.sum()), "passed": int(correct.passed.sum()),
                              "runs": correct.run_id.nunique()}
    out["load"] = [{**row._asdict(), "gpu": gpu_name(results.meta[row.run_id])}
                   for row in tables["load"].itertuples(index=False)]
    out["all_quiet"] = all(run["quiet"] for run in out["load"])
    out["endtoend_spread_limit"] = ENDTOEND_SPREAD_LIMIT
    out["authors"] = {
        "threads": AUTHORS_THREADS[["threads", "seconds"]].to_dict(orient="records"),
        "thread_speedup": float(AUTHORS_THREADS.speedup.iloc[-1]),
        "batch": AUTHORS_BATCH[["batch", "seconds"]].to_dict(orient="records"),
        "batch_gain": float(AUTHORS_BATCH.relative_throughput.iloc[-1]),
    }
    return json_ready(out)


def _stretches(fastest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive batch sizes with the same fastest backend, as ``{"backend", "from", "to"}``."""
    out: list[dict[str, Any]] = []
    for entry in fastest:
        if out and out[-1]["backend"] == entry["backend"]:
            out[-1]["to"] = entry["batch"]
        else:
            out.append({"backend": entry["backend"], "from": entry["batch"], "to": entry["batch"]})
    return out


def _python_share(row: Any) -> float | None:
    """Share of a profiled step spent in Python outside the backend's compute calls: input checks, batch
    preparation and the rest of the driver (what a compiled training loop would not pay)."""
    parts = [row.checks_share, row.prepare_share, row.rest_share]
    return float(np.nansum(parts)) if any(np.isfinite(p) for p in parts) else None


def committed_studies() -> list[Path]:
    """The study folders of :data:`REPORT_STUDIES_FILE`, in its order."""
    return _listed_folders(REPORT_STUDIES_FILE)


def build(run_dirs: list[str | Path], figures_dir: str | Path, data_dir: str | Path, output: str | Path,
          source: str | Path = ROOT / "report" / "report.typ", studies: list[str | Path] | None = None) -> Path:
    """Draw every figure, write the data tables and ``numbers.json``, and compile the report. ``studies``: the
    host probes it cites (default: those ``report/studies.txt`` names; ``[]`` for none)."""
    import typst

    figures_dir, data_dir, output = Path(figures_dir), Path(data_dir), Path(output)
    source_dir = Path(source).resolve().parent
    figures_path = _relative(figures_dir.resolve(), source_dir)
    data_path = _relative(data_dir.resolve(), source_dir)
    results = load_runs(*run_dirs)
    draw_all(results, figures_dir)
    write_summaries(results, data_dir)
    numbers = report_numbers(results)
    numbers["studies"] = load_studies(committed_studies() if studies is None else list(studies), root=ROOT)
    numbers["figures"] = figures_path
    (data_dir / "numbers.json").write_text(json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Only the fonts Typst embeds, and a fixed timestamp: identical inputs give an identical PDF anywhere.
    typst.compile(str(source), output=str(output), root=str(ROOT), ignore_system_fonts=True,
                  sys_inputs={"data": data_path},
                  timestamp=REPORT_TIMESTAMP)
    return output


#: The date printed on the report's PDF metadata (a constant, so builds are reproducible).
REPORT_TIMESTAMP = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def _relative(path: Path, start: Path) -> str:
    """``path`` as Typst resolves it from the report's folder: relative to it, or from the project root."""
    if path.is_relative_to(start):
        return str(path.relative_to(start))
    if path.is_relative_to(ROOT):
        return "/" + str(path.relative_to(ROOT))
    raise ValueError(f"{path}: the report's figures and data must lie inside {ROOT} (Typst reads nothing outside "
                     "the project)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="results/<run-id> directories")
    parser.add_argument("--figures", default="figures", help="where PNG and PDF figures go")
    parser.add_argument("--data", default="report/data", help="where the report's data tables go")
    parser.add_argument("--output", default="report/report.pdf")
    parser.add_argument("--studies", nargs="*", default=None,
                        help="host probe folders the report cites (default: those report/studies.txt names)")
    args = parser.parse_args(argv)
    print(build(args.runs, args.figures, args.data, args.output, studies=args.studies))
    return 0


if __name__ == "__main__":
    sys.exit(main())

