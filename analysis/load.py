"""Read sweep result directories (``results/<run-id>/``) into tidy pandas tables; never runs a backend.

A run directory holds ``meta.json`` and append-only CSV tables (:data:`TABLES`; older runs have fewer of
them, and a table a run lacks is read as empty), each row tagged with its unit's ``key`` and ``block_rows``.
A table of a sweep that is still running or was killed may end in half a unit: only complete units are read.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TABLES = ("rows", "ladder", "training", "lineprofile", "endtoend", "ranks", "allreduce")


@dataclass
class Results:
    """All tables of one or more runs, each row tagged with ``run_id`` and ``machine``."""

    rows: pd.DataFrame
    ladder: pd.DataFrame
    training: pd.DataFrame
    lineprofile: pd.DataFrame
    endtoend: pd.DataFrame
    ranks: pd.DataFrame
    allreduce: pd.DataFrame
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame:
        return getattr(self, name)

    @property
    def run_ids(self) -> list[str]:
        return list(self.meta)

    def subset(self, *run_ids: str) -> Results:
        """The tables of some of the runs only."""
        unknown = set(run_ids) - set(self.meta)
        if unknown:
            raise ValueError(f"no run {sorted(unknown)} in these results; runs: {self.run_ids}")
        tables = {name: self.table(name)[self.table(name)["run_id"].isin(run_ids)] for name in TABLES}
        return Results(meta={r: self.meta[r] for r in run_ids}, **tables)


def machine_label(meta: dict[str, Any]) -> str:
    """A short name of the machine a run measured: CPU model and cores, and the GPU if one was usable."""
    described = meta.get("machine", {})
    cpu = described.get("cpu", {})
    label = f"{_short_cpu_name(str(cpu.get('model', '?')))} ({cpu.get('usable_cores', '?')} cores)"
    gpu = gpu_name(meta)
    if gpu:
        count = described.get("gpu", {}).get("count") or 1
        label += f" + {count} × {gpu}" if count > 1 else f" + {gpu}"
    return label


def _short_cpu_name(model: str) -> str:
    """``Intel(R) Xeon(R) Processor`` -> ``Intel Xeon``: trademarks and filler words out of figure titles."""
    for noise in ("(R)", "(TM)", "(tm)", " Processor", " CPU"):
        model = model.replace(noise, "")
    return " ".join(model.split())


def read_table(path: Path) -> pd.DataFrame:
    """One CSV table, complete units only (a torn last line or a half-written unit is left out); where a unit
    was timed again in its session (its first timing on shared cores), its later block of rows in place of the
    earlier one, which the file keeps."""
    if not path.exists():
        return pd.DataFrame()
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # torn last line
    frame = pd.read_csv(io.StringIO(text))
    if frame.empty:
        return frame
    keys, sizes = frame["key"].tolist(), frame["block_rows"].tolist()
    block = [-1] * len(frame)  # each row's block, in file order; -1: not in a complete block
    start = number = 0
    while start < len(frame):
        size = int(sizes[start])
        if start + size > len(frame) or any(key != keys[start] for key in keys[start:start + size]):
            break  # an incomplete block can only be the last one written
        block[start:start + size] = [number] * size
        start, number = start + size, number + 1
    frame = frame.assign(_block=block)
    latest = frame[frame._block >= 0].groupby("key")._block.max()
    frame = frame[frame._block == frame.key.map(latest)].drop(columns="_block")
    return frame.reset_index(drop=True)


#: Columns later sweeps added to a table, with the value its rows from earlier runs stand for: an end-to-end run
#: from before the study repeated its runs (and a row saying why a unit did not train) is its first run; a
#: timing row from before the threads study had rounds is of its first round.
ADDED_COLUMNS: dict[str, dict[str, Any]] = {"endtoend": {"repeat": 0}, "rows": {"round": 0}, "ranks": {"round": 1}}


def load_run(run_dir: str | Path) -> Results:
    """One run directory."""
    return load_runs(run_dir)


def load_runs(*run_dirs: str | Path) -> Results:
    """Several run directories (say the development machine's and the GPU host's) as one set of tables."""
    if not run_dirs:
        raise ValueError("give at least one results directory")
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    metas: dict[str, dict[str, Any]] = {}
    for run_dir in map(Path, run_dirs):
        meta_path = run_dir / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{run_dir}: no meta.json; is this a sweep results directory?")
        meta = json.loads(meta_path.read_text())
        run_id = meta.get("run_id", run_dir.name)
        if run_id in metas:
            raise ValueError(f"run {run_id!r} given twice")
        metas[run_id] = meta
        for name in TABLES:
            frame = read_table(run_dir / f"{name}.csv")
            if frame.empty:
                continue
            for column, value in ADDED_COLUMNS.get(name, {}).items():
                frame[column] = frame[column].fillna(value) if column in frame else value
            frames[name].append(frame.assign(run_id=run_id, machine=machine_label(meta)))
    tables = {name: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run_id"])
              for name, parts in frames.items()}
    return Results(meta=metas, **tables)


def gpu_name(meta: dict[str, Any]) -> str | None:
    """The run's GPU as the driver names it, or None where no GPU was usable."""
    gpu = meta.get("machine", {}).get("gpu", {}).get("name")
    return None if not gpu or str(gpu).startswith("unavailable") else str(gpu)


def usable_cores(meta: dict[str, Any]) -> int | None:
    cores = meta.get("machine", {}).get("cpu", {}).get("usable_cores")
    return int(cores) if cores else None


def epoch_steps(meta: dict[str, Any]) -> int | None:
    """Steps of one ``epoch_step`` sample (the sweep's ``epoch_steps`` parameter) in the sessions of a run that
    ran the stages study; ``None`` where none recorded it. Sessions that disagree are an error: the run's
    ``epoch_step`` rows would not be one measure."""
    counts = {session.get("parameters", {}).get("epoch_steps") for session in meta.get("sessions") or []
              if "stages" in session.get("parameters", {}).get("studies", ())} - {None}
    if len(counts) > 1:
        raise ValueError(f"run {meta.get('run_id')}: its sessions timed epochs of {sorted(counts)} steps")
    return counts.pop() if counts else None


def busy_keys(meta: dict[str, Any]) -> set[str]:
    """The unit keys (``rows:<row key>``, ``endtoend:<task>/<backend>``, ``ladder:cpu``) the sweep's neighbour
    probe or load check flagged as timed while the cores were shared (meta.json ``busy``)."""
    return {entry.get("key") for entry in meta.get("busy") or []}
