"""Build the written report: figures and data tables from result folders, then ``report/report.typ`` → PDF.

``python -m analysis.report RUN_DIR [RUN_DIR ...] --figures figures --data report/data --output report/report.pdf``

The Typst source types no number: it reads the summary tables (:func:`analysis.summary.write_summaries`) and
``numbers.json``, the named quantities its text cites (:func:`report_numbers`). Two roles are filled from the
runs given: ``cpu`` (a run without a usable GPU, e.g. the development machine) and ``gpu`` (a run that timed
GPU backends); with a single run both roles are that run.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import draw_all, load_runs
from analysis.load import Results, machine_label
from analysis.palette import CPU_BACKENDS, GPU_BACKENDS
from analysis.summary import (
    AUTHORS_BATCH,
    AUTHORS_NETWORK,
    AUTHORS_THREADS,
    batch_effect,
    correctness_table,
    json_ready,
    ladder_table,
    lineprofile_table,
    stage_table,
    thread_scaling,
    training_table,
    width_table,
    write_summaries,
)

ROOT = Path(__file__).resolve().parents[1]
#: Sweep parameters the report's method section states.
TIMING_PARAMETERS = ("repeats", "warmup", "min_repeats", "budget_s", "rotate", "verify_batch", "tolerance", "lr",
                     "weight_decay", "epochs", "train_batch", "train_lr", "profile_steps", "width_layers",
                     "width_batch")


def _has_gpu_rows(results: Results, run_id: str) -> bool:
    rows = results.rows
    ok = rows[(rows.run_id == run_id) & (rows.status == "ok")]
    return bool(ok.backend.isin(GPU_BACKENDS).any())


def roles(results: Results) -> dict[str, str]:
    """``{"cpu": run_id, "gpu": run_id}``: the first run without GPU measurements and the first with them;
    a role no run fills falls back to the other role's run."""
    with_gpu = [r for r in results.run_ids if _has_gpu_rows(results, r)]
    without = [r for r in results.run_ids if r not in with_gpu]
    cpu = (without or with_gpu)[0]
    gpu = (with_gpu or without)[0]
    return {"cpu": cpu, "gpu": gpu}


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


class _Run:
    """Lookups into one run's summary tables."""

    def __init__(self, results: Results, tables: dict[str, pd.DataFrame], run_id: str) -> None:
        self.run_id = run_id
        self.meta = results.meta[run_id]
        mine = {name: table[table.run_id == run_id] for name, table in tables.items()}
        self.stages, self.threads, self.batch = mine["stages"], mine["threads"], mine["batch"]
        self.width, self.ladder, self.training = mine["width"], mine["ladder"], mine["training"]
        self.profile, self.correct = mine["profile"], mine["correct"]

    def step(self, network: str, backend: str) -> float | None:
        found = self.stages[(self.stages.network == network) & (self.stages.backend == backend)]
        return _finite(found.step_s.iloc[0]) if len(found) else None

    def speedup(self, network: str, faster: str, slower: str) -> float | None:
        """How many times ``faster``'s step beats ``slower``'s on ``network`` (None if either is missing)."""
        a, b = self.step(network, faster), self.step(network, slower)
        return b / a if a and b else None

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

    def most_threads(self, network: str, backend: str) -> dict[str, Any] | None:
        found = self.threads[(self.threads.network == network) & (self.threads.backend == backend)]
        if found.empty:
            return None
        row = found.loc[found.threads.idxmax()]
        return {"threads": int(row.threads), "speedup": float(row.speedup), "step_s": float(row.step_s)}

    def batch_gain(self, backend: str) -> dict[str, Any] | None:
        """Samples/s at the largest batch over samples/s at the smallest."""
        found = self.batch[self.batch.backend == backend].sort_values("batch")
        if len(found) < 2:
            return None
        return {"from": int(found.batch.iloc[0]), "to": int(found.batch.iloc[-1]),
                "gain": float(found.samples_per_s.iloc[-1] / found.samples_per_s.iloc[0])}

    def width_crossover(self) -> int | None:
        """Smallest width at which the fastest GPU backend beats the fastest CPU backend."""
        table = self.width
        for width in sorted(table.width.unique()):
            at = table[table.width == width]
            cpu = at[at.backend.isin(CPU_BACKENDS)].step_s.min()
            gpu = at[at.backend.isin(GPU_BACKENDS)].step_s.min()
            if np.isfinite(cpu) and np.isfinite(gpu) and gpu < cpu:
                return int(width)
        return None

    def widest(self) -> dict[str, Any] | None:
        """At the largest width measured: the fastest CPU and GPU backends' step GFLOP/s as % of their ceiling."""
        if self.width.empty:
            return None
        top = self.width[self.width.width == self.width.width.max()]
        out: dict[str, Any] = {"width": int(top.width.iloc[0])}
        for device, backends in (("cpu", CPU_BACKENDS), ("gpu", GPU_BACKENDS)):
            found = top[top.backend.isin(backends) & np.isfinite(top.gflops)]
            if len(found):
                best = found.loc[found.gflops.idxmax()]
                out[device] = {"backend": best.backend, "gflops": float(best.gflops),
                               "pct_of_ceiling": 100 * float(best.gflops / best.ceiling_gflops)}
        return out

    def machine(self) -> dict[str, Any]:
        described = self.meta.get("machine", {})
        libraries = described.get("libraries", {})
        native = described.get("native", {})
        gpu = described.get("gpu", {})
        smi = (gpu.get("nvidia_smi") or [{}])[0] if isinstance(gpu.get("nvidia_smi"), list) else {}
        commit = described.get("git", {}).get("commit", "")
        return {
            "run_id": self.run_id, "label": machine_label(self.meta),
            "cpu": described.get("cpu", {}).get("model"), "cores": described.get("cpu", {}).get("usable_cores"),
            "gpu": gpu.get("name") if not str(gpu.get("name", "unavailable")).startswith("unavailable") else None,
            "gpu_driver": smi.get("driver_version"), "gpu_max_clock": smi.get("clocks.max.sm"),
            "python": libraries.get("python"), "numpy": libraries.get("numpy"), "torch": libraries.get("torch"),
            "pycuda": libraries.get("pycuda"), "compiler": native.get("compiler"), "isa": native.get("isa"),
            "cflags": native.get("cflags"), "commit": str(commit)[:12], "preset": self.meta.get("preset"),
            "started_at": str(self.meta.get("started_at", ""))[:16].replace("T", " "),
        }


def report_numbers(results: Results) -> dict[str, Any]:
    """The named quantities the report's text cites, per role (see module docstring)."""
    chosen = roles(results)
    out: dict[str, Any] = {"roles": chosen}
    # Each summary over all runs, once; every role reads its own rows.
    tables = {"stages": stage_table(results), "threads": thread_scaling(results), "batch": batch_effect(results),
              "width": width_table(results), "ladder": ladder_table(results), "training": training_table(results),
              "profile": lineprofile_table(results), "correct": correctness_table(results)}
    for role, run_id in chosen.items():
        run = _Run(results, tables, run_id)
        nets = sorted(run.stages.network.unique())
        parameters = run.meta.get("parameters", {})
        entry: dict[str, Any] = {"machine": run.machine(), "networks": nets,
                                 "parameters": {key: parameters.get(key) for key in TIMING_PARAMETERS},
                                 "thread_counts": run.meta.get("thread_counts"),
                                 "sessions": len(run.meta.get("sessions", [])), "status": run.meta.get("status")}
        entry["omp_vs_torch"] = {n: run.speedup(n, "c-omp", "torch-cpu") for n in nets}
        entry["omp_vs_serial"] = {n: run.speedup(n, "c-omp", "c-serial") for n in nets}
        entry["fused_vs_graph"] = {n: run.speedup(n, "cuda-fused", "torch-gpu-graph") for n in nets}
        entry["fused_vs_serial"] = {n: run.speedup(n, "cuda-fused", "c-serial") for n in nets}
        entry["opt_vs_torch_gpu"] = {n: run.speedup(n, "cuda-opt", "torch-gpu") for n in nets}
        entry["fused_vs_torch_gpu"] = {n: run.speedup(n, "cuda-fused", "torch-gpu") for n in nets}
        entry["graph_vs_eager"] = {n: run.speedup(n, "torch-gpu-graph", "torch-gpu") for n in nets}
        entry["step_s"] = {n: {b: run.step(n, b) for b in run.stages[run.stages.network == n].backend} for n in nets}
        entry["best_cpu"] = {n: run.best(n, CPU_BACKENDS[1:]) for n in nets}
        entry["best_gpu"] = {n: run.best(n, GPU_BACKENDS) for n in nets}
        gpu_best = entry["best_gpu"].get(AUTHORS_NETWORK)
        serial = run.step(AUTHORS_NETWORK, "c-serial")
        entry["best_gpu_vs_serial_authors"] = serial / gpu_best["step_s"] if gpu_best and serial else None
        entry["threads"] = {n: {b: run.most_threads(n, b) for b in ("c-omp", "torch-cpu")}
                            for n in sorted(run.threads.network.unique())}
        entry["batch_network"] = str(run.batch.network.iloc[0]) if len(run.batch) else None
        entry["batch_gain"] = {b: run.batch_gain(b) for b in sorted(run.batch.backend.unique())}
        entry["width_crossover"] = run.width_crossover()
        entry["widest"] = run.widest()
        entry["best_per_operation_gpu"] = {n: run.best(n, ("cuda-naive", "cuda-tiled", "cuda-opt")) for n in nets}
        entry["ladder_pct"] = {impl: run.ladder_pct(impl) for impl in run.ladder.impl}
        entry["ladder_gflops"] = {impl: run.ladder_gflops(impl) for impl in run.ladder.impl}
        entry["ladder_n"] = {device: int(group.n.iloc[0]) for device, group in run.ladder.groupby("device")}
        accuracy = run.training.test_accuracy
        entry["test_accuracy"] = {"min": _finite(accuracy.min()), "max": _finite(accuracy.max()),
                                  "backends": len(accuracy),
                                  "epochs": int(run.training.epochs.max()) if len(accuracy) else None}
        checked = run.correct[run.correct.checked > 0]
        entry["correctness"] = {"configurations": int(checked.checked.sum()),
                                "passed": int(checked.passed.sum()),
                                "max_error": _finite(checked.err_max.max()),
                                "tolerance": _finite(checked.tolerance.max())}
        entry["profile"] = {row.backend: {"python_share": _python_share(row), "step_s": float(row.plain_step_s)}
                            for row in run.profile.itertuples()}
        out[role] = entry
    out["authors"] = {
        "threads": AUTHORS_THREADS[["threads", "seconds"]].to_dict(orient="records"),
        "thread_speedup": float(AUTHORS_THREADS.speedup.iloc[-1]),
        "batch": AUTHORS_BATCH[["batch", "seconds"]].to_dict(orient="records"),
        "batch_gain": float(AUTHORS_BATCH.relative_throughput.iloc[-1]),
    }
    return json_ready(out)


def _python_share(row: Any) -> float | None:
    """Share of a profiled step spent in Python outside the backend's compute calls: input checks, batch
    preparation and the rest of the driver (what a compiled training loop would not pay)."""
    parts = [row.checks_share, row.prepare_share, row.rest_share]
    return float(np.nansum(parts)) if any(np.isfinite(p) for p in parts) else None


def build(run_dirs: list[str | Path], figures_dir: str | Path, data_dir: str | Path, output: str | Path,
          source: str | Path = ROOT / "report" / "report.typ") -> Path:
    """Draw every figure, write the data tables and ``numbers.json``, and compile the report."""
    import typst

    figures_dir, data_dir, output = Path(figures_dir), Path(data_dir), Path(output)
    source_dir = Path(source).resolve().parent
    figures_path = _relative(figures_dir.resolve(), source_dir)
    data_path = _relative(data_dir.resolve(), source_dir)
    results = load_runs(*run_dirs)
    draw_all(results, figures_dir)
    write_summaries(results, data_dir)
    numbers = report_numbers(results)
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
    args = parser.parse_args(argv)
    print(build(args.runs, args.figures, args.data, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())

