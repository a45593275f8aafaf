"""A run: its units of work, resumed where a killed run stopped, and its ``meta.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpbench import machine, profiling
from mlpbench.backends import BackendUnavailable, model_class
from mlpbench.distributed import RANKS_COLUMNS
from mlpbench.sweep.curves import training_curve
from mlpbench.sweep.endtoend import endtoend_rows
from mlpbench.sweep.ladders import cpu_ladder, gpu_ladder
from mlpbench.sweep.measuring import Unavailable, measure
from mlpbench.sweep.neighbours import SLOWDOWN_LIMIT, NeighbourCheck, ProbeSite, neighbour_entry, step_probe
from mlpbench.sweep.params import SCHEMA_VERSION, SweepParams, make_params
from mlpbench.sweep.planning import Config, backend_threads, plan
from mlpbench.sweep.ranks import rank_jobs
from mlpbench.sweep.tables import (
    ENDTOEND_COLUMNS,
    LADDER_COLUMNS,
    ROW_COLUMNS,
    TRAINING_COLUMNS,
    BlockTable,
    write_atomic,
)


def default_run_id() -> str:
    import socket

    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + socket.gethostname().split(".")[0]


@dataclass(frozen=True)
class Unit:
    """One piece of work of a run: its table, key, the function that produces its rows, the columns that
    identify it in a row saying why it produced none, and for timing units the configuration (whose rows
    another study's identical configuration reuses)."""

    table: str
    key: str
    work: Callable[[], list[dict[str, Any]]]
    identity: dict[str, Any]
    config: Config | None = None
    #: The work appends its own rows to the table (the ranks study's torchrun processes write them).
    records_itself: bool = False

    @property
    def name(self) -> str:
        """The unit's name across tables (``table:key``): in the attempts log, ``busy`` and the session's lists."""
        return f"{self.table}:{self.key}"


class Attempts:
    """Append-only log of units started: a unit that was started ``MAX_ATTEMPTS`` times without finishing
    killed the process each time (a crash in native or GPU code), so a resumed run records it as failed
    instead of dying on it again."""

    MAX_ATTEMPTS = 2

    def __init__(self, path: Path) -> None:
        self.path = path
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        self.counts = Counter(lines)

    def given_up(self, unit: Unit) -> str | None:
        """Why ``unit`` is not tried again (it crashed too often), or ``None``."""
        count = self.counts[unit.name]
        return f"the process died while measuring it, {count} times: not tried again" if (
            count >= self.MAX_ATTEMPTS) else None

    def begin(self, unit: Unit) -> None:
        """Log a start of ``unit``."""
        self.counts[unit.name] += 1
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(unit.name + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def gpu_present() -> bool:
    """Whether this machine has a GPU the GPU backends can run on."""
    import torch

    return torch.cuda.is_available()


def launcher_site() -> ProbeSite | None:
    """The probe's site around a GPU unit: the one host thread that launches its work, where a GPU is present."""
    return ProbeSite(1, launcher=True) if gpu_present() else None


def probe_site(unit: Unit, params: SweepParams) -> ProbeSite | None:
    """Where the neighbour probe runs around a unit: on the threads it times a CPU backend or the CPU's products
    on; on one thread for a GPU unit where a GPU is present, since one host thread launches its work and on the
    small networks that thread's pace is most of a step (a shared core slows it as it slows a CPU backend);
    ``None`` for other units."""
    if unit.config is not None:
        backend, threads = unit.config.backend, unit.config.threads
    elif unit.table == "ladder":
        return ProbeSite(params.max_threads) if unit.identity["device"] == "cpu" else launcher_site()
    elif unit.table == "endtoend":
        backend = unit.identity["backend"]
        threads = backend_threads(backend, params)
    else:
        return None
    try:
        on_cpu = model_class(backend).device == "cpu"
    except BackendUnavailable:
        return None
    return ProbeSite(threads or 1) if on_cpu else launcher_site()


def _write_meta(run_dir: Path, meta: dict[str, Any]) -> None:
    write_atomic(run_dir / "meta.json", json.dumps(meta, indent=1, default=str) + "\n")


def _start_meta(run_dir: Path, run_id: str, preset: str, params: SweepParams) -> dict[str, Any]:
    path = run_dir / "meta.json"
    meta = json.loads(path.read_text()) if path.exists() else None
    session = {"started_at": machine.now_utc(), "finished_at": None, "preset": preset,
               "parameters": dataclasses.asdict(params), "machine": machine.describe()}
    # An OpenBLAS on narrower kernels than the C library's: c-blas's and NumPy's times are not their best here.
    narrower = machine.narrower_blas(session["machine"])
    if narrower is not None:
        session["narrower_blas"] = narrower
    # A resumed run on another machine (a fresh GPU-host instance, say): its rows compare across machines.
    elsewhere = (machine.another_machine(meta["sessions"][-1]["machine"], session["machine"])
                 if meta and meta.get("sessions") else None)
    if elsewhere is not None:
        session["other_machine"] = elsewhere
    if meta is None:
        meta = {"schema": SCHEMA_VERSION, "run_id": run_id, "started_at": session["started_at"],
                "preset": preset, "parameters": session["parameters"], "machine": session["machine"],
                "sessions": []}
    meta.update(status="running", finished_at=None, preset=preset, parameters=session["parameters"],
                thread_counts=list(params.thread_counts))
    meta.setdefault("busy", [])  # configurations timed on a busy machine; empty: none was
    meta["sessions"].append(session)
    _write_meta(run_dir, meta)
    return meta


#: Runnable tasks beyond the machine's cores (a 1-minute load average over cores + this) mean threads competed
#: for the cores while a unit ran (other work, or thread pools spinning beside the ones timed): its timings are
#: flagged in ``meta.json`` and a warning printed.
BUSY_LOAD_MARGIN = 1.0


def busy_entry(key: str, rows: list[dict[str, Any]], cores: int) -> dict[str, Any] | None:
    """What ``meta.json`` records of a unit timed on a busy machine; ``None`` if the machine was quiet."""
    for row in rows:
        before, after = row.get("load_before"), row.get("load_after", row.get("load_1min"))
        loads = [float(value) for value in (before, after) if value not in (None, "")]
        if loads and max(loads) > cores + BUSY_LOAD_MARGIN:
            return {"key": key, "load_before": before, "load_after": after, "threads": row.get("threads"),
                    "cores": cores}
    return None


def _finish_meta(run_dir: Path, meta: dict[str, Any], status: str) -> None:
    meta["finished_at"] = meta["sessions"][-1]["finished_at"] = machine.now_utc()
    meta["sessions"][-1]["load_average_end"] = list(os.getloadavg())
    meta["status"] = status
    cuda_ladder = sys.modules.get("mlpbench.backends.cuda")  # only if this session used the CUDA kernels
    if cuda_ladder is not None:
        meta["sessions"][-1]["cuda_opt_choices"] = cuda_ladder.opt_choices()
    # The run's choices: every session's, a later session's choice for a shape replacing an earlier one (a
    # session without cuda-opt products must not erase what an earlier one tuned).
    choices = {(row["layout"], row["M"], row["N"], row["K"], row["vector"]): row
               for session in meta["sessions"] for row in session.get("cuda_opt_choices") or []}
    meta["cuda_opt_choices"] = list(choices.values())
    _write_meta(run_dir, meta)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    # Under papermill or CI every refresh becomes an output line: refresh rarely unless told otherwise.
    options = {} if "TQDM_MININTERVAL" in os.environ else {"mininterval": 5.0}
    if not enabled:
        options["disable"] = True
    return tqdm(total=total, unit="config", file=sys.stderr, dynamic_ncols=False, ascii=True, **options)


def run(preset: str = "default", *, results_dir: str | Path = "results", run_id: str | None = None,
        progress: bool = True, **overrides: Any) -> Path:
    """Run (or resume) a sweep; returns ``<results_dir>/<run_id>``. ``overrides`` replace preset fields
    (see :class:`SweepParams`); ``None`` keeps the preset's value."""
    params = make_params(preset, **overrides)
    run_id = run_id or default_run_id()
    run_dir = Path(results_dir) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = _start_meta(run_dir, run_id, preset, params)  # before any OpenMP work: it starts subprocesses

    tables = {"rows": BlockTable(run_dir / "rows.csv", ROW_COLUMNS),
              "ladder": BlockTable(run_dir / "ladder.csv", LADDER_COLUMNS),
              "training": BlockTable(run_dir / "training.csv", TRAINING_COLUMNS),
              "endtoend": BlockTable(run_dir / "endtoend.csv", ENDTOEND_COLUMNS),
              "ranks": BlockTable(run_dir / "ranks.csv", RANKS_COLUMNS),
              "lineprofile": BlockTable(run_dir / "lineprofile.csv", profiling.PROFILE_COLUMNS)}
    done = {name: table.read() for name, table in tables.items()}
    finished = {name: {row["key"] for row in rows} for name, rows in done.items()}
    # Rows of each measurement already made in this run: a configuration another study shares is copied.
    measured: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in done["rows"]:
        if not row["reused_from"]:
            measured.setdefault(Config.from_key(row["key"]).measurement, []).append(row)

    unavailable = Unavailable()
    unavailable_here: dict[str, str] = {}  # backend -> why, as the session's rows said it
    units = [Unit("rows", c.key, lambda c=c: measure(c, params, unavailable),
                  {"study": c.study, "backend": c.backend, "network": c.network, "batch": c.batch,
                   "threads": c.threads, "round": c.round, "stage": ""}, c) for c in plan(params)]
    studies = set(params.studies)
    if "ladder" in studies:
        units += [Unit("ladder", "cpu", lambda: cpu_ladder(params), {"device": "cpu"}),
                  Unit("ladder", "gpu", lambda: gpu_ladder(params), {"device": "gpu"})]
    if "training" in studies:
        units += [Unit("training", backend, lambda b=backend: training_curve(b, params), {"backend": backend})
                  for backend in params.backends_in("training")]
    if "endtoend" in studies:
        units += [Unit("endtoend", f"{task}/{backend}", lambda t=task, b=backend: endtoend_rows(t, b, params),
                       {"task": task, "backend": backend})
                  for task in params.tasks for backend in params.backends_in("endtoend")]
    if "ranks" in studies:
        units += [Unit("ranks", job.key, job.work, job.identity, records_itself=True)
                  for job in rank_jobs(params, run_dir)]
    if "lineprofile" in studies:
        units += [Unit("lineprofile", backend, lambda b=backend: profiling.profile_backend(
                       b, params.profile_network, params.profile_batch, params.profile_steps, run_dir,
                       seed=params.seed, threads=backend_threads(b, params)), {"backend": backend})
                  for backend in params.backends_in("lineprofile")]
    attempts = Attempts(run_dir / "attempts.log")
    cores = os.cpu_count() or 1  # the load average counts the whole machine, not this process's affinity
    neighbours = NeighbourCheck(step_probe(), wait_s=params.neighbour_wait_s)
    passed: list[tuple[Unit, ProbeSite, float]] = []  # (unit, probe site, its quicker probe) for the session end
    reused_by: dict[tuple[Any, ...], list[Unit]] = {}  # the units of this session that copied a measurement
    retimed: set[str] = set()  # units flagged at the session's end, then timed again on quiet cores
    shared_then: list[tuple[Unit, ProbeSite, dict[str, Any]]] = []  # units flagged as they were measured
    late: list[tuple[Unit, ProbeSite, dict[str, Any]]] | None = None  # those flagged at the session's end

    def time_again(unit: Unit, site: ProbeSite, entry: dict[str, Any]) -> bool:
        """Times ``unit`` again (up to ``retimes`` tries) and, where the cores were quiet, puts the new rows in
        place of the first timing's, for the units that copied that measurement too; whether it did."""
        for _ in range(params.retimes):
            rows = _time_again(unit, site, neighbours)
            if rows is None:
                continue
            tables[unit.table].append(unit.key, rows)
            if (busy := busy_entry(entry["key"], rows, cores)) is not None:
                _record_busy(meta, busy, f"the machine was busy while {busy['key']} ran again", bar)
            if unit.config is not None:  # the units that copied its first timing copy this one
                measurement = unit.config.measurement
                measured[measurement] = [{**row, "key": unit.key} for row in rows]
                for reuser in reused_by.get(measurement, []):
                    tables[reuser.table].append(reuser.key, _copied(measured[measurement], reuser.config))
            meta["sessions"][-1].setdefault("retimed", []).append({"key": entry["key"], "first": entry})
            retimed.add(entry["key"])
            bar.write(f"{entry['key']}: timed again on quiet cores at the end of the session (its first timing's "
                      f"probe {entry['probe_slowdown']:.2f}x the usual)", file=sys.stderr)
            return True
        return False

    todo = deque(unit for unit in units if unit.key not in finished[unit.table])
    deferred: Counter[str] = Counter()  # units put back at the end of the queue, and how often
    status = "interrupted"
    with _progress(len(units), progress) as bar:
        bar.update(len(units) - len(todo))
        for note in ("narrower_blas", "other_machine"):
            if sentence := meta["sessions"][-1].get(note):
                bar.write(f"warning: {sentence}", file=sys.stderr)
        try:
            while todo:
                unit = todo.popleft()
                bar.set_postfix_str(unit.key, refresh=False)
                config = unit.config
                recorded = False  # whether the unit's work already wrote its rows
                if config is not None and config.measurement in measured:
                    rows = _copied(measured[config.measurement], config)
                    reused_by.setdefault(config.measurement, []).append(unit)
                else:
                    crashed = attempts.given_up(unit)
                    if crashed is None:
                        site = probe_site(unit, params)
                        shared = neighbours.before(site.threads) if site else None
                        if shared is not None and shared > SLOWDOWN_LIMIT and todo and (
                                deferred[unit.name] < params.deferrals):
                            # Cores still shared after the wait: other units first, this one at the end.
                            deferred[unit.name] += 1
                            meta["sessions"][-1].setdefault("deferred", []).append(unit.name)
                            bar.write(f"{unit.name}: the cores were still shared after the wait (a fixed step "
                                      f"{shared:.2f}x slower than usual): put back at the end of the queue",
                                      file=sys.stderr)
                            todo.append(unit)
                            continue
                        probed_before = neighbours.last_seconds if shared is not None else None
                        attempts.begin(unit)
                        rows, recorded = unit.work(), unit.records_itself
                        if site:
                            shared = max(filter(None, (shared, neighbours.after(site.threads))), default=None)
                        flagged = neighbour_entry(unit.name, shared, site, cores)
                        if flagged is not None:
                            _record_busy(meta, flagged, f"{flagged['key']}: {flagged['reason']}", bar)
                            _write_meta(run_dir, meta)
                            if not recorded:
                                shared_then.append((unit, site, flagged))
                        elif probed_before is not None and not recorded:
                            passed.append((unit, site, min(probed_before, neighbours.last_seconds)))
                    else:
                        rows = [{**unit.identity, "status": "failed", "reason": crashed,
                                 "finished_at": machine.now_utc()}]
                    if config is not None:
                        measured[config.measurement] = [{**row, "key": unit.key} for row in rows]
                for row in rows:  # a backend that cannot run here, from any study's rows
                    backend = row.get("backend") or unit.identity.get("backend")
                    if backend and row.get("status") == "skipped" and str(row.get("reason", "")).startswith(
                            UNAVAILABLE):
                        unavailable_here.setdefault(backend, row["reason"])
                if not recorded:
                    tables[unit.table].append(unit.key, rows)
                busy = busy_entry(unit.name, rows, cores)
                if busy is not None:
                    _record_busy(meta, busy, f"the machine was busy while {busy['key']} ran (load average "
                                 f"{busy['load_before']} before, {busy['load_after']} after, on {cores} cores: "
                                 "more runnable threads than cores)", bar)
                    _write_meta(run_dir, meta)
                bar.update()
            # What shared cores spoiled, timed again now: flagged as measured (its busy entry goes), or only now.
            for unit, site, entry in shared_then:
                if time_again(unit, site, entry):
                    meta["busy"].remove(entry)
            late = _late_flags(neighbours, passed, cores)
            for unit, site, entry in late:
                time_again(unit, site, entry)
            status = "complete"
        finally:
            for _, _, entry in late if late is not None else _late_flags(neighbours, passed, cores):
                if entry["key"] not in retimed:
                    _record_busy(meta, entry, f"{entry['key']}: {entry['reason']}", bar)
            _record_unavailable(unavailable_here, meta, bar)
            _finish_meta(run_dir, meta, status)
    return run_dir


def _copied(rows: list[dict[str, Any]], config: Config) -> list[dict[str, Any]]:
    """A measurement's rows (each with the key it was recorded under) as another study's configuration of the
    same measurement records them."""
    return [{**row, "study": config.study, "reused_from": row["key"]} for row in rows]


def _late_flags(neighbours: NeighbourCheck, passed: list[tuple[Unit, ProbeSite, float]],
                cores: int) -> list[tuple[Unit, ProbeSite, dict[str, Any]]]:
    """The CPU units the probe let pass whose probes before and after them were both slower than SLOWDOWN_LIMIT
    times their baseline over the whole session, with their entries for ``busy``: a session that began on shared
    cores judged its first units against a slow baseline. (A unit the load average flagged keeps that entry
    beside this one.)"""
    late = []
    for unit, site, seconds in passed:
        entry = neighbour_entry(unit.name, neighbours.slowdown_against_session(seconds, site.threads), site, cores,
                                at_session_end=True)
        if entry is not None:
            late.append((unit, site, entry))
    return late


def _time_again(unit: Unit, site: ProbeSite, neighbours: NeighbourCheck) -> list[dict[str, Any]] | None:
    """``unit`` measured again where the probe, before and after, finds the cores as quiet as the session's usual
    and every row came out ``ok``: its rows, to replace its first timing's (the table keeps both). ``None``
    where the cores are shared still or a row did not come out ``ok``."""
    if neighbours.before(site.threads) > SLOWDOWN_LIMIT:
        return None
    rows = unit.work()
    if neighbours.after(site.threads) > SLOWDOWN_LIMIT or any(row.get("status") != "ok" for row in rows):
        return None
    return rows


#: How a row skipped because its backend cannot run here begins its reason (measuring.describe_error).
UNAVAILABLE = f"{BackendUnavailable.__name__}:"


def _record_unavailable(unavailable: dict[str, str], meta: dict[str, Any], bar: Any) -> None:
    """Records in the session each backend its rows found unavailable (backend -> the first reason), and warns
    once per backend on the terminal: a sweep that skipped a whole backend should say so where it is seen, not
    only in the rows."""
    meta["sessions"][-1]["unavailable"] = dict(unavailable)
    for backend, reason in unavailable.items():
        bar.write(f"warning: {backend} is unavailable here, its configurations were skipped: {reason}",
                  file=sys.stderr)


def _record_busy(meta: dict[str, Any], entry: dict[str, Any], why: str, bar: Any) -> None:
    """Adds ``entry`` to ``meta.json``'s list of units timed on a busy machine and warns on the terminal."""
    meta.setdefault("busy", []).append(entry)
    bar.write(f"warning: {why}: its timings are suspect", file=sys.stderr)
