"""Summary tables of sweep results, and the files a report reads (:func:`write_summaries`).

Every function takes :class:`analysis.load.Results` and returns a tidy :class:`pandas.DataFrame`; times are
medians in seconds, speed-ups are ratios of medians measured in the same run (the same machine). A table whose
study is absent from the runs comes back empty, with its columns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import Results, busy_keys, machine_label, usable_cores
from analysis.palette import BASELINE_OF_DEVICE, STAGE_ORDER, device, ladder_order, ordered

#: The network of the original study's measurements, as the sweep names it: its anchors are drawn only there.
AUTHORS_NETWORK = "moons-5h300"
#: The original study's OpenMP thread sweep on 2x Xeon E5-2667 v3 (5h300 network, batch 32, 100 epochs).
AUTHORS_THREADS = pd.DataFrame({"threads": [1, 16], "seconds": [179.3, 40.1]}).assign(
    speedup=lambda f: f.seconds.iloc[0] / f.seconds)
#: The original study's batch-size runs on 16 threads (same network and epochs): time for the whole run.
AUTHORS_BATCH = pd.DataFrame({"batch": [1, 512], "seconds": [1701.0, 12.0]}).assign(
    relative_throughput=lambda f: f.seconds.iloc[0] / f.seconds)

#: The stages one ``train_step`` runs.
COMPUTE_STAGES = ("forward", "backprop", "update")
ERROR_COLUMNS = ("err_activations", "err_loss", "err_grad_weights", "err_grad_biases", "err_params")
#: Interface checks every step runs (pure Python); nested checks are inside ``check_inputs``.
CHECK_FUNCTIONS = ("base.check_inputs", "base.Model._check_batch", "base.check_step_size")


def gpu_backends(results: Results) -> frozenset[str]:
    """Backends that compute on the GPU: by family (:func:`analysis.palette.device`), and for a name of no
    known family by the device its rows ran on."""
    seen: dict[str, bool] = {}
    for name in ("rows", "endtoend", "ranks"):
        frame = results.table(name)
        if {"backend", "device"} <= set(frame.columns):
            for backend, group in frame.groupby("backend"):
                seen[backend] = seen.get(backend, False) or bool((group.device == "cuda").any())
    return frozenset(b for b, on_cuda in seen.items() if device(b, default="gpu" if on_cuda else "cpu") == "gpu")


def _ok(frame: pd.DataFrame, **equal: Any) -> pd.DataFrame:
    """Rows of finished measurements (status ok) matching ``column=value`` filters."""
    if frame.empty or "status" not in frame:
        return pd.DataFrame()
    keep = frame["status"] == "ok"
    for column, value in equal.items():
        keep &= frame[column] == value
    return frame[keep]


def _sorted(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Sorted by ``columns`` with backends in the palette's order."""
    if frame.empty:
        return frame
    frame = frame.copy()
    if "backend" in frame:
        frame["backend"] = pd.Categorical(frame["backend"], ordered(frame["backend"].unique()), ordered=True)
    frame = frame.sort_values(list(columns), kind="stable").reset_index(drop=True)
    if "backend" in frame:
        frame["backend"] = frame["backend"].astype(str)
    return frame


def stage_table(results: Results, study: str = "stages") -> pd.DataFrame:
    """One row per run × network × backend: median seconds of each stage and of the whole step with the
    step's quartiles, the sum of the separately timed forward, backprop and update (the work of one
    ``train_step``; ``transfer`` is not part of it), ``epoch_step_s`` (per step of an epoch in one
    ``train_steps`` call, on backends that run many steps per launch; else empty) with ``epoch_kernel``, the
    kernel the backend chose for it (runs that record it; else empty), step GFLOP/s and
    samples/s, and the speed-up of the step over PyTorch on the same kind of device (``torch-cpu`` for CPU
    backends, ``torch-gpu`` for GPU backends) at the same thread count. ``load_before``/``load_1min`` are the
    machine's 1-min load average just before and after the configuration (``load_before`` is empty in runs that did
    not record it); ``nonfinite`` is 1 where the loss became non-finite while timing; ``compile_s`` the compilation
    before timing, if any."""
    rows = _ok(results.rows, study=study)
    optional = ("load_before", "load_1min", "nonfinite", "compile_s")
    columns = ["run_id", "machine", "network", "sizes", "batch", "backend", "threads", *[
        f"{s}_s" for s in STAGE_ORDER], "step_s", "step_q1_s", "step_q3_s", "epoch_step_s", "epoch_kernel",
        "stages_sum_s",
        "step_gflops", "samples_per_s", "baseline", "speedup", *optional]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    keys = ["run_id", "machine", "network", "sizes", "batch", "backend"]
    times = rows.pivot_table(index=keys, columns="stage", values="median_s", aggfunc="first")
    times = times.rename(columns=lambda stage: f"{stage}_s")
    step = rows[rows.stage == "step"].set_index(keys).rename(
        columns={"q1_s": "step_q1_s", "q3_s": "step_q3_s", "gflops": "step_gflops"})
    for column in optional:
        if column not in step:
            step[column] = np.nan
    table = times.join(step[["threads", "step_q1_s", "step_q3_s", "step_gflops", "samples_per_s",
                             *optional]]).reset_index()
    for stage in (*STAGE_ORDER, "step", "epoch_step"):
        if f"{stage}_s" not in table:
            table[f"{stage}_s"] = np.nan
    epoch = rows[rows.stage == "epoch_step"].set_index(keys)
    kernels = epoch["kernel_choice"] if "kernel_choice" in epoch else pd.Series(index=epoch.index, dtype=object)
    table = table.join(kernels.rename("epoch_kernel"), on=keys)
    table["stages_sum_s"] = table[[f"{s}_s" for s in COMPUTE_STAGES]].sum(axis=1, min_count=1)
    gpu = gpu_backends(results)
    table["baseline"] = [BASELINE_OF_DEVICE["gpu" if b in gpu else "cpu"] for b in table["backend"]]
    base = table.set_index(["run_id", "network", "batch", "backend"])["step_s"]
    lookup = list(zip(table.run_id, table.network, table.batch, table.baseline, strict=True))
    table["speedup"] = [base.get(key, np.nan) for key in lookup] / table["step_s"]
    return _sorted(table[columns], "run_id", "network", "backend")


#: Backends timed at several thread counts: shown at the thread count matched to the other side and at their best.
THREADED_BACKENDS = ("c-omp", "torch-cpu")


def thread_baselines(results: Results) -> pd.DataFrame:
    """Per run × network × batch of the stages study, ``c-omp`` and ``torch-cpu`` twice: at the matched thread
    count (``c-omp``'s in the stages study, which ``torch-cpu`` runs there too) and at their best (the thread
    count with the least median step of that backend, network and batch in the run, a count the threads study
    timed in several rounds taken as the median over them: :func:`over_rounds`), each with its step quartiles,
    the number of thread counts the run tried, and ``flagged``: whether the run's ``meta.json`` lists that
    row's configuration (at its best, a round its median is taken from) as timed while the cores were shared."""
    columns = ["run_id", "machine", "network", "batch", "backend", "which", "threads", "step_s", "step_q1_s",
               "step_q3_s", "thread_counts_tried", "flagged"]
    rows = _ok(results.rows, stage="step")
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows[rows.backend.isin(THREADED_BACKENDS) & rows.threads.notna()]
    stages = rows[rows.study == "stages"]
    matched = stages[stages.backend == "c-omp"].set_index(["run_id", "network", "batch"])["threads"]
    steps = _step_rows(rows, results)
    keys = ["run_id", "machine", "network", "batch", "backend", "threads"]
    # Each measurement once: a threads-study row that reuses the stages study's is the same time.
    at_counts = over_rounds(steps[steps.measured_here], keys)
    out = []
    for (run_id, network, batch), shown in stages.groupby(["run_id", "network", "batch"]):
        count = matched.get((run_id, network, batch), shown.threads.max())
        for backend in ordered(shown.backend):
            mine = steps[(steps.run_id == run_id) & (steps.network == network) & (steps.batch == batch)
                         & (steps.backend == backend)]
            at_count = mine[mine.threads == count].sort_values("study", key=lambda s: s != "stages")
            counts = at_counts[(at_counts.run_id == run_id) & (at_counts.network == network)
                               & (at_counts.batch == batch) & (at_counts.backend == backend)]
            best = counts.loc[counts.step_s.idxmin()]
            for which, row in (("matched", at_count.iloc[0] if len(at_count) else None), ("best", best)):
                if row is None:
                    continue
                out.append({"run_id": run_id, "machine": row.machine, "network": network, "batch": batch,
                            "backend": backend, "which": which, "threads": int(row.threads),
                            "step_s": row.step_s, "step_q1_s": row.step_q1_s, "step_q3_s": row.step_q3_s,
                            "thread_counts_tried": int(mine.threads.nunique()), "flagged": bool(row.flagged)})
    return _sorted(pd.DataFrame(out, columns=columns), "run_id", "network", "backend")


#: The levels of parallelism the stage speed-up compares, each the fastest backend of its kind in the run.
LEVELS = ("serial C", "OpenMP C", "best GPU")


def stage_speedups(results: Results) -> pd.DataFrame:
    """For each run, stages-study network and stage (forward, backprop, update and the whole step): the median
    time of serial C, OpenMP C and the fastest GPU backend at that stage, and each one's speed-up over serial
    C. The GPU's stage times exclude the ``transfer`` of the batch (timed as a stage of its own)."""
    table = stage_table(results)
    columns = ["run_id", "machine", "network", "batch", "stage", "level", "backend", "seconds", "speedup"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    out = []
    on_gpu = gpu_backends(results)
    for (run_id, network), group in table.groupby(["run_id", "network"], sort=False):
        serial = group[group.backend == "c-serial"]
        for stage in (*COMPUTE_STAGES, "step"):
            column = f"{stage}_s"
            gpu = group[group.backend.isin(on_gpu) & group[column].notna()]
            picks = {"serial C": serial, "OpenMP C": group[group.backend == "c-omp"],
                     "best GPU": gpu.loc[[gpu[column].idxmin()]] if len(gpu) else gpu}
            reference = float(serial[column].iloc[0]) if len(serial) else np.nan
            for level, pick in picks.items():
                if pick.empty or not np.isfinite(pick[column].iloc[0]):
                    continue
                seconds = float(pick[column].iloc[0])
                out.append({"run_id": run_id, "machine": group.machine.iloc[0], "network": network,
                            "batch": group.batch.iloc[0], "stage": stage, "level": level,
                            "backend": pick.backend.iloc[0], "seconds": seconds, "speedup": reference / seconds})
    return pd.DataFrame(out, columns=columns)


def load_table(results: Results) -> pd.DataFrame:
    """Per run: how busy the machine was while it measured. ``max_load`` is the largest 1-min load average
    recorded before or after any configuration (data-parallel ones included); ``busy`` the configurations the
    sweep flagged in ``meta.json`` (load above the cores the configuration left free); ``busy_recorded`` whether
    the run kept such a record (older runs did not). A run is ``quiet`` when it flagged nothing or, without a
    record, when the load never exceeded the core count. ``narrower_blas``: what its sessions recorded of an
    OpenBLAS on narrower kernels than the C library's (``None``: nothing); ``other_machines`` how many of its
    sessions recorded running on another machine than the session before them (a resumed run); ``retimed`` how
    many configurations its sessions timed again at their end, the first timing's probes slow."""
    columns = ["run_id", "machine", "cores", "configurations", "max_load", "busy", "busy_recorded", "quiet",
               "narrower_blas", "other_machines", "retimed"]
    out = []
    for run_id, meta in results.meta.items():
        rows = results.rows[results.rows.run_id == run_id] if "run_id" in results.rows else pd.DataFrame()
        ranks = results.ranks[results.ranks.run_id == run_id] if "run_id" in results.ranks else pd.DataFrame()
        loads = [table[c].max() for table, columns in ((rows, ("load_before", "load_1min")),
                                                       (ranks, ("load_before", "load_after")))
                 for c in columns if c in table and table[c].notna().any()]
        max_load = float(max(loads)) if loads else np.nan
        cores = usable_cores(meta)
        recorded = "busy" in meta
        busy = len(meta.get("busy") or [])
        quiet = busy == 0 if recorded else bool(cores and np.isfinite(max_load) and max_load <= cores)
        sessions = meta.get("sessions") or []
        notes = [session["narrower_blas"] for session in sessions if session.get("narrower_blas")]
        out.append({"run_id": run_id, "machine": machine_label(meta), "cores": cores,
                    "configurations": int(rows.key.nunique()) if len(rows) else 0, "max_load": max_load,
                    "busy": busy, "busy_recorded": recorded, "quiet": quiet,
                    "narrower_blas": "; ".join(dict.fromkeys(notes)) or None,
                    "other_machines": sum(bool(session.get("other_machine")) for session in sessions),
                    "retimed": sum(len(session.get("retimed") or []) for session in sessions)})
    return pd.DataFrame(out, columns=columns)


def speedup_table(results: Results, baseline: str, study: str = "stages", stage: str = "step") -> pd.DataFrame:
    """Speed-up of every backend's ``stage`` over ``baseline`` (median over median) per run and network."""
    rows = _ok(results.rows, study=study, stage=stage)
    columns = ["run_id", "machine", "network", "batch", "backend", "median_s", "baseline", "baseline_s",
               "speedup"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    base = rows[rows.backend == baseline].set_index(["run_id", "network", "batch"])["median_s"]
    table = rows[["run_id", "machine", "network", "batch", "backend", "median_s"]].copy()
    table["baseline"] = baseline
    table["baseline_s"] = [base.get(k, np.nan) for k in zip(table.run_id, table.network, table.batch,
                                                            strict=True)]
    table["speedup"] = table["baseline_s"] / table["median_s"]
    return _sorted(table[columns], "run_id", "network", "backend")


def timed_while_shared(key: str, reused_from: Any, flagged: set[str]) -> bool:
    """Whether a ``rows.csv`` row's measurement was flagged in ``meta.json`` (``flagged``: its busy keys): its
    own unit, or the unit it reuses the measurement of (the threads study's row at the stages study's count)."""
    return f"rows:{key}" in flagged or (isinstance(reused_from, str) and f"rows:{reused_from}" in flagged)


def _middle_rounds(rounds: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rounds a median of ``column`` is taken from: the middle one, or the middle two."""
    ordered = rounds.sort_values(column, kind="stable")
    return ordered.iloc[sorted({(len(rounds) - 1) // 2, len(rounds) // 2})]


def over_rounds(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The measurements of one configuration in the threads study's rounds as one row per ``keys``: the median
    of the rounds' step medians (``step_s``) and of their quartiles, the fastest and slowest round
    (``round_min_s``, ``round_max_s``), ``rounds``, and ``flagged`` where a round the median is taken from (the
    middle one, or either of the middle two) was timed while the cores were shared. One round: that round."""
    out = []
    for values, group in table.groupby(keys, sort=False):
        middle = _middle_rounds(group, "step_s")
        out.append({**dict(zip(keys, values, strict=True)), "step_s": group.step_s.median(),
                    "step_q1_s": group.step_q1_s.median(), "step_q3_s": group.step_q3_s.median(),
                    "round_min_s": group.step_s.min(), "round_max_s": group.step_s.max(), "rounds": len(group),
                    "flagged": bool(middle.flagged.any())})
    return pd.DataFrame(out, columns=[*keys, "step_s", "step_q1_s", "step_q3_s", "round_min_s", "round_max_s",
                                      "rounds", "flagged"])


def _step_rows(rows: pd.DataFrame, results: Results) -> pd.DataFrame:
    """``rows.csv``'s step rows as ``step_s``/``step_q1_s``/``step_q3_s``, with ``study``, ``round``,
    ``flagged`` and ``measured_here`` (false for a row that reuses another study's measurement)."""
    table = rows[["run_id", "machine", "study", "network", "batch", "backend", "threads", "round", "median_s",
                  "q1_s", "q3_s"]].rename(columns={"median_s": "step_s", "q1_s": "step_q1_s", "q3_s": "step_q3_s"})
    reused = rows["reused_from"] if "reused_from" in rows else pd.Series(np.nan, index=rows.index)
    flagged = {run_id: busy_keys(meta) for run_id, meta in results.meta.items()}
    table["flagged"] = [timed_while_shared(key, source, flagged.get(run_id, set()))
                        for run_id, key, source in zip(rows.run_id, rows.key, reused, strict=True)]
    table["measured_here"] = [not (isinstance(source, str) and source) for source in reused]
    table["threads"] = table["threads"].astype(int)
    table["round"] = table["round"].astype(int)
    return table


def thread_scaling(results: Results) -> pd.DataFrame:
    """Step time over thread count, speed-up over the same backend on 1 thread and parallel efficiency. The
    threads study times its scaling networks in rounds, every thread count once a round: ``step_s`` and its
    quartiles are the median over rounds (:func:`over_rounds`), and ``speedup`` the median of the rounds' own
    ratios, one thread's step over this one's in the same round, with the least and greatest of them
    (``speedup_min``, ``speedup_max``); ``flagged``: the run's ``meta.json`` lists a round the median step is
    taken from as timed while the cores were shared; ``speedup_flagged``: a round the median ratio is taken
    from had either of its two times so listed."""
    rows = _ok(results.rows, study="threads", stage="step")
    keys = ["run_id", "machine", "network", "batch", "backend", "threads"]
    columns = [*keys, "step_s", "step_q1_s", "step_q3_s", "round_min_s", "round_max_s", "rounds", "speedup",
               "speedup_min", "speedup_max", "speedup_flagged", "efficiency", "flagged"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    steps = _step_rows(rows, results)
    one = steps[steps.threads == 1].set_index(["run_id", "network", "batch", "backend", "round"])
    in_round = list(zip(steps.run_id, steps.network, steps.batch, steps.backend, steps["round"], strict=True))
    steps["ratio"] = [one.step_s.get(k, np.nan) for k in in_round] / steps["step_s"]
    # A round's ratio is suspect when either of its two times was taken on shared cores.
    steps["ratio_flagged"] = steps.flagged.to_numpy() | np.array([bool(one.flagged.get(k, False)) for k in in_round])
    ratios = steps.groupby(keys, sort=False)["ratio"].agg(speedup="median", speedup_min="min", speedup_max="max")
    ratios["speedup_flagged"] = steps.groupby(keys, sort=False)[["ratio", "ratio_flagged"]].apply(
        lambda rounds: bool(_middle_rounds(rounds, "ratio").ratio_flagged.any()))
    table = over_rounds(steps, keys).join(ratios, on=keys)
    table["efficiency"] = table["speedup"] / table["threads"]
    return _sorted(table[columns], "run_id", "network", "backend", "threads")


def batch_effect(results: Results) -> pd.DataFrame:
    """Step time, samples/s and throughput relative to batch 1 over batch size, per backend."""
    rows = _ok(results.rows, study="batch", stage="step")
    columns = ["run_id", "machine", "network", "backend", "batch", "step_s", "step_q1_s", "step_q3_s",
               "samples_per_s", "relative_throughput"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    table = rows[["run_id", "machine", "network", "backend", "batch", "median_s", "q1_s", "q3_s",
                  "samples_per_s"]].rename(columns={"median_s": "step_s", "q1_s": "step_q1_s", "q3_s": "step_q3_s"})
    smallest = table.sort_values("batch").groupby(["run_id", "network", "backend"])["samples_per_s"].first()
    keys = zip(table.run_id, table.network, table.backend, strict=True)
    table["relative_throughput"] = table["samples_per_s"] / [smallest.get(k, np.nan) for k in keys]
    return _sorted(table[columns], "run_id", "backend", "batch")


def width_table(results: Results) -> pd.DataFrame:
    """Step GFLOP/s over layer width, with each run's measured matrix-product ceilings (CPU and GPU)."""
    rows = _ok(results.rows, study="width", stage="step")
    columns = ["run_id", "machine", "network", "width", "batch", "backend", "step_s", "gflops",
               "ceiling_impl", "ceiling_gflops"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    table = rows[["run_id", "machine", "network", "batch", "backend", "median_s", "gflops"]].rename(
        columns={"median_s": "step_s"})
    table["width"] = table["network"].str.split("-").str[0].astype(int)
    ceilings = ceiling_table(results).set_index(["run_id", "device"])
    devices = np.where(table["backend"].isin(gpu_backends(results)), "gpu", "cpu")
    table["ceiling_impl"] = [ceilings["impl"].get(k) for k in zip(table.run_id, devices, strict=True)]
    table["ceiling_gflops"] = [ceilings["gflops"].get(k, np.nan) for k in zip(table.run_id, devices, strict=True)]
    return _sorted(table[columns], "run_id", "backend", "width")


def ceiling_table(results: Results) -> pd.DataFrame:
    """The library matrix product each ladder is measured against, per run and device (``cpu``/``gpu``)."""
    ladder = _ok(results.ladder)
    if ladder.empty:
        return pd.DataFrame(columns=["run_id", "device", "impl", "n", "gflops"])
    ceiling = ladder[ladder.impl == ladder.ceiling_impl]
    return ceiling[["run_id", "device", "impl", "n", "gflops"]].reset_index(drop=True)


def ladder_table(results: Results) -> pd.DataFrame:
    """Every matrix-product implementation that ran: GFLOP/s and % of the same run's library ceiling, plus
    rows for rungs that were skipped or failed (with the reason)."""
    ladder = results.ladder
    columns = ["run_id", "machine", "device", "impl", "version", "rung", "n", "threads", "status", "reason", "median_s",
               "iqr_s", "gflops", "pct_of_ceiling", "ceiling_impl", "rel_error"]
    if ladder.empty:
        return pd.DataFrame(columns=columns)
    table = ladder[[c for c in columns if c in ladder]].copy()
    rank = {impl: i for i, impl in enumerate(ladder_order(table["impl"]))}
    table["_rank"] = table["impl"].map(rank)
    return table.sort_values(["run_id", "device", "_rank"]).drop(columns="_rank").reset_index(drop=True)


def correctness_table(results: Results) -> pd.DataFrame:
    """Worst relative error against the float64 reference of every backend on every network it was
    checked on, over all its configurations, and whether all of them passed the tolerance."""
    rows = results.rows
    columns = ["run_id", "machine", "backend", "network", "sizes", "verify_batch", *ERROR_COLUMNS, "err_max",
               "tolerance", "checked", "passed"]
    if rows.empty or "err_max" not in rows:
        return pd.DataFrame(columns=columns)
    # A key names a configuration within one run; the same key in another run is another configuration.
    checked = rows[rows["err_max"].notna()].drop_duplicates(["run_id", "key"])
    if checked.empty:
        return pd.DataFrame(columns=columns)
    keys = ["run_id", "machine", "backend", "network", "sizes"]
    table = checked.groupby(keys).agg(
        verify_batch=("verify_batch", "max"),
        **{c: (c, "max") for c in (*ERROR_COLUMNS, "err_max")},
        tolerance=("tolerance", "first"),
        checked=("key", "size"),
        passed=("err_max", lambda e: int((e <= checked.loc[e.index, "tolerance"]).sum())),
    ).reset_index()
    table["verify_batch"] = table["verify_batch"].astype(int)
    return _sorted(table[columns], "run_id", "network", "backend")


def status_table(results: Results) -> pd.DataFrame:
    """Configurations per run, backend and status, with one reason each for those not timed."""
    rows = results.rows
    if rows.empty:
        return pd.DataFrame(columns=["run_id", "backend", "status", "configurations", "reason"])
    configs = rows.drop_duplicates(["run_id", "key"])
    table = configs.groupby(["run_id", "backend", "status"]).agg(
        configurations=("key", "size"), reason=("reason", lambda r: next((x for x in r if isinstance(x, str)),
                                                                          ""))).reset_index()
    return _sorted(table, "run_id", "backend", "status")


def training_table(results: Results) -> pd.DataFrame:
    """Per run and backend: the last epoch's loss and accuracies, seconds per epoch, and the largest
    difference of its per-epoch loss from the ``numpy`` reference's (a parity check of whole training)."""
    rows = _ok(results.training)
    columns = ["run_id", "machine", "dataset", "network", "backend", "epochs", "train_loss", "train_accuracy",
               "test_accuracy", "seconds_per_epoch", "max_loss_diff_vs_numpy"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    reference = rows[rows.backend == "numpy"].set_index(["run_id", "epoch"])["train_loss"]
    diffs = (rows["train_loss"] - [reference.get(k, np.nan) for k in zip(rows.run_id, rows.epoch,
                                                                          strict=True)]).abs()
    rows = rows.assign(diff=diffs)
    last = rows.sort_values("epoch").groupby(["run_id", "backend"]).tail(1).set_index(["run_id", "backend"])
    table = last[["machine", "dataset", "network", "epochs", "train_loss", "train_accuracy", "test_accuracy",
                  "seconds"]].rename(columns={"seconds": "seconds_per_epoch"})
    table["max_loss_diff_vs_numpy"] = rows.groupby(["run_id", "backend"])["diff"].max()
    return _sorted(table.reset_index()[columns], "run_id", "backend")


def lineprofile_table(results: Results) -> pd.DataFrame:
    """Per run and backend: unprofiled and profiled step time, and a split of the profiled step into
    disjoint shares: the interface's input checks (pure Python), the rest of ``prepare`` (any host-to-device
    copy), forward, backprop and update without their checks — or, where ``train_step`` fuses the stages
    and never calls them, ``fused_share`` — and the rest of the driver.

    The profile holds inclusive times per function; ``Model._check_batch`` is charged one call each to
    forward and backprop (the base interface's pattern), ``check_step_size`` to update.
    """
    rows = _ok(results.lineprofile)
    parts = ["checks_share", "prepare_share", "forward_share", "backprop_share", "update_share", "fused_share"]
    columns = ["run_id", "machine", "backend", "network", "batch", "plain_step_s", "profiled_step_s", *parts,
               "rest_share"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for (run_id, backend), group in rows.groupby(["run_id", "backend"]):
        indexed = group.set_index("function")
        shares = indexed["share_of_step"]

        def share(function: str, shares: pd.Series = shares) -> float:
            return float(shares.get(function, 0.0))

        def outermost(method: str, shares: pd.Series = shares) -> float:
            # A subclass wrapper and the base method both appear; the largest is the outermost (inclusive).
            found = shares[shares.index.str.endswith(f".{method}")]
            return float(found.max()) if len(found) else np.nan

        check_inputs, check_batch, check_step = (share(f) for f in CHECK_FUNCTIONS)
        entry = {"checks_share": check_inputs + check_batch + check_step,
                 "prepare_share": outermost("prepare") - check_inputs}
        stages = {m: outermost(m) for m in ("forward", "backprop", "update")}
        if all(np.isnan(v) for v in stages.values()):
            entry["fused_share"] = outermost("train_step") - check_batch - check_step
        else:
            calls = float(indexed["calls_per_step"].get(CHECK_FUNCTIONS[1], 1.0)) or 1.0
            entry.update(forward_share=stages["forward"] - check_batch / calls,
                         backprop_share=stages["backprop"] - check_batch / calls,
                         update_share=stages["update"] - check_step)
        first = group.iloc[0]
        out.append({"run_id": run_id, "machine": first.machine, "backend": backend, "network": first.network,
                    "batch": first.batch, "plain_step_s": first.plain_step_s,
                    "profiled_step_s": first.profiled_step_s, **entry,
                    "rest_share": max(0.0, 1.0 - sum(v for v in entry.values() if np.isfinite(v)))})
    return _sorted(pd.DataFrame(out, columns=columns), "run_id", "backend")


#: A task learned when its final test accuracy closed at least this share of the gap from chance to 100 %.
LEARNED_SHARE_OF_GAP = 0.5


def chance_accuracy(sizes: str) -> float:
    """Accuracy of guessing from the network's output width: one output is a two-class problem."""
    outputs = int(str(sizes).split("-")[-1])
    return 1 / max(outputs, 2)


def endtoend_table(results: Results) -> pd.DataFrame:
    """Per run × task × backend of the end-to-end training study: epochs run, the time to train (cumulative
    synchronised training seconds at the last epoch; evaluation excluded, data resident where the backend
    computes), the first and last epoch's loss and test accuracy, the time to reach the task's target accuracy
    (the first epoch at or above it; empty if never), the chance accuracy from the output width, and whether
    the task learned (last test accuracy at least :data:`LEARNED_SHARE_OF_GAP` of the way from chance to 1).

    ``flagged``: whether the run's ``meta.json`` lists the unit as timed while the cores were shared.

    Times are the median over the timed runs (``repeats``; runs before the sweep repeated them have one) with
    their least and greatest (``*_min_s``, ``*_max_s``); every run's time to target is its time at the first
    run's target epoch (the runs train the same batches from the same start). Losses and accuracies are the
    first run's, evaluated after every epoch; ``repeat_loss_gap`` is the largest relative difference of another
    run's last loss from it (0: the runs computed the same). Tasks that failed or were skipped keep one row with
    their reason."""
    frame = results.endtoend
    columns = ["run_id", "machine", "task", "backend", "device", "network", "sizes", "activation", "dataset",
               "threads", "batch", "lr", "status", "reason", "epochs_run", "repeats", "train_s", "train_min_s",
               "train_max_s", "first_loss", "final_loss", "final_accuracy", "target_accuracy", "target_epoch",
               "target_s", "target_min_s", "target_max_s", "repeat_loss_gap", "chance", "learned", "flagged"]
    if frame.empty or "task" not in frame:
        return pd.DataFrame(columns=columns)
    flagged = {run_id: busy_keys(meta) for run_id, meta in results.meta.items()}
    out = []
    for (run_id, task, backend), group in frame.groupby(["run_id", "task", "backend"], sort=False):
        first = group.iloc[0]
        entry = {c: first.get(c) for c in ("machine", "device", "network", "sizes", "activation", "dataset",
                                            "threads", "batch", "lr", "target_accuracy")}
        entry.update(run_id=run_id, task=task, backend=backend, chance=chance_accuracy(first.sizes),
                     flagged=f"endtoend:{task}/{backend}" in flagged.get(run_id, set()))
        done = group[(group.status == "ok") & group.epoch.notna()]
        evaluated = done[done.repeat == 0].sort_values("epoch")
        if evaluated.empty:
            out.append({**entry, "status": first.status, "reason": first.reason})
            continue
        last = evaluated.iloc[-1]
        target = first.target_accuracy
        reached = evaluated[evaluated.test_accuracy >= target] if pd.notna(target) else evaluated.iloc[:0]
        # One row per timed run and epoch: each run's seconds at the last epoch and at the target epoch.
        seconds = done.pivot_table(index="epoch", columns="repeat", values="seconds", aggfunc="first")
        train = seconds.loc[last.epoch].dropna()
        at_target = seconds.loc[reached.epoch.iloc[0]].dropna() if len(reached) else pd.Series(dtype=float)
        last_losses = done[done.epoch == last.epoch].train_loss.dropna()
        out.append({**entry, "status": "ok", "reason": "", "epochs_run": int(last.epoch),
                    "repeats": len(train), "train_s": train.median(), "train_min_s": train.min(),
                    "train_max_s": train.max(),
                    "first_loss": evaluated.train_loss.iloc[0], "final_loss": last.train_loss,
                    "final_accuracy": last.test_accuracy,
                    "target_epoch": int(reached.epoch.iloc[0]) if len(reached) else np.nan,
                    "target_s": at_target.median() if len(reached) else np.nan,
                    "target_min_s": at_target.min() if len(reached) else np.nan,
                    "target_max_s": at_target.max() if len(reached) else np.nan,
                    "repeat_loss_gap": float((last_losses / last.train_loss - 1).abs().max()),
                    "learned": bool(last.test_accuracy >= entry["chance"] + LEARNED_SHARE_OF_GAP
                                    * (1 - entry["chance"]))})
    return _sorted(pd.DataFrame(out, columns=columns), "run_id", "task", "backend")


#: A rank_scaling table's columns: what names a configuration, its sizes, and what is measured of it.
_RANK_KEYS = ["run_id", "machine", "backend", "device", "network", "scaling", "pg_backend", "rung"]
_RANK_SIZES = ["world_size", "global_batch", "batch_per_rank"]
_RANK_VALUES = ["step_s", "q1_s", "q3_s", "efficiency", "allreduce_s", "allreduce_share", "grad_bytes",
                "grad_busbw_gbps", "plain_busbw_gbps", "busbw_of_plain"]


def rank_scaling(results: Results, by_round: bool = False) -> pd.DataFrame:
    """Data-parallel training (``ranks.csv``): the whole step's median (slowest rank) per world size, and the
    scaling efficiency against the smallest world size measured in the same round: strong scaling (fixed global
    batch) ``T_1 · n_1 / (T_n · n)``, weak scaling (fixed batch per rank) ``T_1 / T_n``; 1 is ideal. Beside them
    the gradient all-reduce: its time and share of the stages' sum, its bus bandwidth, and that of a plain
    all-reduce of the same bytes timed in the same configuration (``allreduce.csv``), with their ratio. In the
    overlapped rung the all-reduce time is only the wait backprop did not hide, so its bandwidth is not the
    transfer's. A sweep that launches each configuration in several rounds gives one row per round with
    ``by_round``, and otherwise :func:`over_rank_rounds` of that."""
    frame = _ok(results.ranks, stage="step")
    keys, sizes, values = _RANK_KEYS, _RANK_SIZES, _RANK_VALUES
    if frame.empty:
        empty = pd.DataFrame(columns=[*keys, *sizes, *values, "round"])
        return empty if by_round else over_rank_rounds(empty)
    frame = frame.assign(round=frame["round"].astype(int))
    # The base of every round is the smallest world size any round measured: a round whose launch of it failed
    # has no efficiency (NaN), not one against another world size.
    smallest = frame.groupby(keys, sort=False).world_size.transform("min")
    out = []
    for _, group in frame.assign(smallest=smallest).groupby([*keys, "round"], sort=False):
        group = group.sort_values("world_size")
        base = group[group.world_size == group.smallest]
        ratio = (base.median_s.iloc[0] / group.median_s) if len(base) else pd.Series(np.nan, index=group.index)
        if group.scaling.iloc[0] == "strong":
            ratio = ratio * group.smallest / group.world_size
        out.append(group[[*keys, "key", "round", *sizes, "median_s", "q1_s", "q3_s"]].rename(
            columns={"median_s": "step_s"}).assign(efficiency=ratio))
    table = pd.concat(out, ignore_index=True)
    stages = _ok(results.ranks)
    stages = stages[stages.stage.isin(RANK_STAGES)]
    total = stages.groupby(["run_id", "key"]).median_s.sum().rename("stages_s")
    allreduce = stages[stages.stage == "allreduce"].set_index(["run_id", "key"])[["median_s", "bytes",
                                                                                  "busbw_gbps"]]
    allreduce.columns = ["allreduce_s", "grad_bytes", "grad_busbw_gbps"]
    table = table.join(allreduce, on=["run_id", "key"]).join(total, on=["run_id", "key"])
    table["allreduce_share"] = table.allreduce_s / table.stages_s
    plain = _ok(results.allreduce)
    if len(plain):
        plain = plain.assign(key=plain.key.str.removesuffix("|allreduce"))
        plain = plain[plain.pg_backend != "memcpy"].set_index(["run_id", "key", "bytes"]).busbw_gbps
        table = table.join(plain.rename("plain_busbw_gbps"), on=["run_id", "key", "grad_bytes"])
    else:
        table["plain_busbw_gbps"] = np.nan
    # One rank moves nothing: no bandwidth to compare.
    table["busbw_of_plain"] = (table.grad_busbw_gbps / table.plain_busbw_gbps).where(table.world_size > 1)
    by_round_table = _sorted(table[[*keys, *sizes, *values, "round"]], "run_id", "backend", "scaling", "world_size",
                             "round")
    return by_round_table if by_round else over_rank_rounds(by_round_table)


def over_rank_rounds(rounds: pd.DataFrame) -> pd.DataFrame:
    """A :func:`rank_scaling` table by round as one row per configuration and world size: the median of the
    rounds' values, their count (``rounds``) and the range of their efficiencies (``efficiency_min``,
    ``efficiency_max``)."""
    keys, sizes, values = _RANK_KEYS, _RANK_SIZES, _RANK_VALUES
    columns = [*keys, *sizes, *values, "rounds", "efficiency_min", "efficiency_max"]
    if rounds.empty:
        return pd.DataFrame(columns=columns)
    grouped = rounds.groupby([*keys, *sizes], sort=False, dropna=False)
    merged = grouped[values].median().assign(rounds=grouped.size(), efficiency_min=grouped.efficiency.min(),
                                             efficiency_max=grouped.efficiency.max()).reset_index()
    return _sorted(merged[columns], "run_id", "backend", "scaling", "world_size")


def multi_gpu(rounds: pd.DataFrame) -> dict[str, Any] | None:
    """Ranks on several GPUs (NCCL, world size > 1) in a :func:`rank_scaling` table by round, at the largest
    world size: per weak-scaling configuration both rungs' efficiency, the overlapped rung's gain and the gradient
    all-reduce against a plain one of its size; per strong-scaling one the speed-up over one GPU, each at its
    faster rung. Each is read round by round and given as the median over the rounds (``rounds`` of them; the
    strong speed-up's range as ``speedup_min`` and ``speedup_max``). None without such data."""
    table = rounds[rounds.pg_backend == "nccl"]
    if table.empty or table.world_size.max() < 2:
        return None
    most = int(table.world_size.max())
    weak, strong = [], []
    for (backend, network, mode), group in table.groupby(["backend", "network", "scaling"], sort=False):
        at = group[group.world_size == most]
        if at.empty:
            continue
        entry: dict[str, Any] = {"backend": backend, "network": network,
                                 "batch_per_rank": int(at.batch_per_rank.iloc[0]),
                                 "global_batch": int(at.global_batch.iloc[0]), "rounds": int(at["round"].nunique())}
        if mode == "weak":
            by_rung = at.groupby("rung")
            entry["efficiency"] = {rung: float(value) for rung, value in by_rung.efficiency.median().items()}
            step = at.pivot_table(index="round", columns="rung", values="step_s")
            if {"after-backprop", "overlapped"} <= set(step.columns):
                entry["overlap_gain"] = float((step["after-backprop"] / step["overlapped"]).median())
            after = at[at.rung == "after-backprop"]
            if len(after) and np.isfinite(after.busbw_of_plain).any():
                entry["gradient"] = {"bytes": int(after.grad_bytes.iloc[0]),
                                     "busbw": float(after.grad_busbw_gbps.median()),
                                     "plain_busbw": float(after.plain_busbw_gbps.median()),
                                     "ratio": float(after.busbw_of_plain.median())}
            weak.append(entry)
        else:
            # each round's speed-up at each world size's faster rung in that round, over the smallest world
            # size measured; none where that is the largest too (its launches on fewer GPUs all failed)
            base = int(group.world_size.min())
            fastest = group.groupby(["round", "world_size"]).step_s.min().unstack()
            ratios = (fastest[base] / fastest[most]).dropna() if base < most else pd.Series(dtype=float)
            if ratios.empty:
                continue
            entry.update(speedup=float(ratios.median()), speedup_min=float(ratios.min()),
                         speedup_max=float(ratios.max()), rounds=len(ratios))
            strong.append(entry)
    return {"world_size": most, "weak": weak, "strong": strong}


def rank_stage_shares(results: Results) -> pd.DataFrame:
    """Per data-parallel configuration and world size: each stage's median (slowest rank) and its share of
    the sum of forward, backprop, allreduce and update."""
    frame = _ok(results.ranks)
    keys = ["run_id", "machine", "backend", "network", "scaling", "pg_backend", "rung", "world_size"]
    columns = [*keys, "stage", "seconds", "share"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    parts = frame[frame.stage.isin(RANK_STAGES)]
    table = parts[[*keys, "stage", "median_s"]].rename(columns={"median_s": "seconds"})
    table["share"] = table.seconds / table.groupby(keys).seconds.transform("sum")
    return _sorted(table[columns], "run_id", "backend", "scaling", "world_size")


#: The stages of a data-parallel step, in the order they run.
RANK_STAGES = ("forward", "backprop", "allreduce", "update")


def allreduce_table(results: Results) -> pd.DataFrame:
    """All-reduce of plain tensors (``allreduce.csv``), the ceiling of the data-parallel runs: per message
    size, the median time and the algorithm and bus bandwidths (busbw = algbw · 2(n−1)/n)."""
    frame = _ok(results.allreduce)
    columns = ["run_id", "machine", "device", "pg_backend", "world_size", "bytes", "median_s", "algbw_gbps",
               "busbw_gbps"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    return frame[columns].sort_values(["run_id", "pg_backend", "world_size", "bytes"]).reset_index(drop=True)


def headline(results: Results) -> dict[str, Any]:
    """Key numbers per run for the report's text: machine, code version, best speed-ups, thread scaling at
    the most threads, ladder fractions, final accuracies; plus the original study's anchors."""
    runs: dict[str, Any] = {}
    stages, threads, ladder = stage_table(results), thread_scaling(results), ladder_table(results)
    training = training_table(results)
    for run_id, meta in results.meta.items():
        described = meta.get("machine", {})
        entry: dict[str, Any] = {
            "machine": machine_label(meta), "hostname": described.get("hostname"), "git": described.get("git"),
            "preset": meta.get("preset"), "started_at": meta.get("started_at"),
            "finished_at": meta.get("finished_at"), "status": meta.get("status"),
            "usable_cores": described.get("cpu", {}).get("usable_cores"),
            "max_load_1min": results.rows.loc[results.rows.run_id == run_id, "load_1min"].max()
            if "load_1min" in results.rows else None,
        }
        run_stages = stages[stages.run_id == run_id]
        entry["step_s"] = {f"{r.backend}@{r.network}": r.step_s for r in run_stages.itertuples()}
        entry["speedup_vs_baseline"] = {f"{r.backend}@{r.network}": r.speedup for r in run_stages.itertuples()
                                        if np.isfinite(r.speedup)}
        run_threads = threads[threads.run_id == run_id]
        most = run_threads.sort_values("threads").groupby(["backend", "network"]).tail(1)
        entry["thread_speedup_at_most_threads"] = {f"{r.backend}@{r.network}": {
            "threads": int(r.threads), "speedup": r.speedup} for r in most.itertuples()}
        run_ladder = ladder[(ladder.run_id == run_id) & (ladder.status == "ok")]
        entry["ladder_pct_of_ceiling"] = {r.impl: r.pct_of_ceiling for r in run_ladder.itertuples()}
        entry["ladder_gflops"] = {r.impl: r.gflops for r in run_ladder.itertuples()}
        run_training = training[training.run_id == run_id]
        entry["final_test_accuracy"] = {r.backend: r.test_accuracy for r in run_training.itertuples()}
        runs[run_id] = entry
    authors = {"threads": AUTHORS_THREADS.to_dict(orient="list"), "batch": AUTHORS_BATCH.to_dict(orient="list"),
               "thread_speedup_16": float(AUTHORS_THREADS.speedup.iloc[-1])}
    return json_ready({"runs": runs, "authors": authors})


SUMMARIES = {
    "stages": stage_table,
    "threads": thread_scaling,
    "batch": batch_effect,
    "width": width_table,
    "ladder": ladder_table,
    "correctness": correctness_table,
    "status": status_table,
    "training": training_table,
    "lineprofile": lineprofile_table,
    "baselines": thread_baselines,
    "stage_speedups": stage_speedups,
    "load": load_table,
    "endtoend": endtoend_table,
    "rank_scaling": rank_scaling,
    "rank_shares": rank_stage_shares,
    "allreduce": allreduce_table,
}


def write_summaries(results: Results, directory: str | Path) -> list[Path]:
    """Write every summary as ``<directory>/<name>.csv`` and the key numbers as ``headline.json``.

    Numbers are written in full precision (a report rounds them); missing values are empty cells in CSV and
    ``null`` in JSON.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, function in SUMMARIES.items():
        path = directory / f"{name}.csv"
        function(results).to_csv(path, index=False)
        written.append(path)
    path = directory / "headline.json"
    path.write_text(json.dumps(headline(results), indent=1, allow_nan=False) + "\n")
    written.append(path)
    return written


def json_ready(value: Any) -> Any:
    """JSON-ready: NumPy scalars as Python numbers, NaN as ``None``, containers recursively."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.integer | np.bool_):
        return value.item()
    if isinstance(value, float | np.floating):
        return None if not np.isfinite(value) else float(value)
    return value
