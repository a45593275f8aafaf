"""Start one data-parallel configuration under ``torchrun`` and make sure it leaves rows behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from mlpbench import machine
from mlpbench.backends.base import BackendUnavailable
from mlpbench.distributed.config import NVLINK_MULTICAST_OFF, RANKS_COLUMNS, RankConfig, validate

#: Seconds the ranks get after the launcher's timeout before they are killed anyway.
_KILL_GRACE_S = 5.0
_RANK_FAILED = re.compile(r"mlpbench\.distributed: rank (\S+) failed: (.*)")
# torchrun's summary: one block per failed rank, "[i]:" then "rank : 1 (local_rank: 1)", "exitcode : -9 ...",
# "traceback : Signal 9 (SIGKILL) received by PID ..."
_SUMMARY_BLOCK = re.compile(r"^\[\d+\]:\s*$", re.MULTILINE)
_SUMMARY_FIELD = {name: re.compile(rf"^\s*{name}\s*:\s*(.+)$", re.MULTILINE)
                  for name in ("rank", "exitcode", "traceback")}


def command(config: RankConfig) -> list[str]:
    """The ``torchrun`` command line (one machine, a free rendezvous port) for ``config``."""
    options = [
        "--network", config.network, "--backend", config.backend, "--threads", str(config.threads),
        "--global-batch", str(config.global_batch), "--steps", str(config.steps), "--warmup", str(config.warmup),
        "--check-steps", str(config.check_steps), "--rung", config.rung, "--scaling", config.scaling,
        "--lr", repr(config.lr), "--seed", str(config.seed), "--timeout-s", repr(config.timeout_s),
        "--allreduce-sizes", ",".join(str(size) for size in config.allreduce_sizes),
        "--allreduce-repeats", str(config.allreduce_repeats), "--round", str(config.round),
    ]
    if config.force:
        options.append("--force")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={config.world_size}", "-m", "mlpbench.distributed", *options]


def failure_reason(output: str) -> str:
    """Which ranks failed and why: first the ranks that died without a word (killed: torchrun's summary names
    them and the signal), then every rank's own ``rank N failed: cause`` line, in the order they were written,
    and last the ranks ended by SIGTERM, which torchrun sends the survivors once one rank has failed: those
    deaths are its consequence, never its cause."""
    said: dict[str, str] = {}
    for rank, cause in _RANK_FAILED.findall(output):
        said.setdefault(rank, f"rank {rank} failed: {cause.strip()}")
    silent: dict[str, str] = {}
    torn_down: dict[str, str] = {}
    for block in _SUMMARY_BLOCK.split(output)[1:]:
        fields = {name: pattern.search(block) for name, pattern in _SUMMARY_FIELD.items()}
        if fields["rank"] is None or fields["exitcode"] is None:
            continue
        rank = fields["rank"].group(1).split()[0]
        trace = fields["traceback"].group(1).strip() if fields["traceback"] else ""
        how = trace if trace.startswith("Signal") else f"exit code {fields['exitcode'].group(1).split()[0]}"
        if rank not in said:
            (torn_down if how.startswith("Signal 15") else silent).setdefault(rank, f"rank {rank} died: {how}")
    reasons = [*silent.values(), *said.values(), *torn_down.values()]
    if reasons:
        return "; ".join(reasons)
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def run_ranks(backend: str, network: str, world_size: int, *, global_batch: int, out_dir: str | Path,
              timeout_s: float = 600.0, extra_args: tuple[str, ...] = (), record_invalid: bool = False,
              **options: Any) -> list[dict[str, str]]:
    """Train ``network`` data-parallel on ``world_size`` ranks of this machine under ``torchrun`` and return the
    configuration's rows of ``out_dir/ranks.csv``; what the ranks printed is appended to ``out_dir/ranks.log``.

    ``options`` are the other fields of :class:`RankConfig` (``threads``, ``steps``, ``rung``, ``scaling``,
    ``force``, ...); ``extra_args`` go to the rank program as they are (``--inject-fault``). Arguments are
    checked before any process starts (``TypeError``/``ValueError``, or with ``record_invalid`` one ``failed``
    row with the reason, as a sweep records a configuration that cannot run); a backend that cannot run here is
    recorded as ``skipped``. Ranks that fail, or run past ``timeout_s`` (then they are killed), are recorded
    as one ``failed`` row naming the rank and the cause. A configuration already in the table is not run again.
    """
    unknown = set(options) - {f.name for f in fields(RankConfig)}
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    config = RankConfig(backend=backend, network=network, world_size=world_size, global_batch=global_batch,
                        **options)
    from mlpbench.sweep import BlockTable

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = BlockTable(out_dir / "ranks.csv", RANKS_COLUMNS)

    def rows() -> list[dict[str, str]]:
        return [row for row in table.read() if row["key"] == config.key]

    if rows():
        return rows()
    try:
        validate(config)
    except BackendUnavailable as error:
        _record(table, config, "skipped", str(error))
        return rows()
    except (TypeError, ValueError) as error:
        if not record_invalid:
            raise
        _record(table, config, "failed", f"{type(error).__name__}: {error}")
        return rows()
    env = {**os.environ, **NVLINK_MULTICAST_OFF, "OMP_NUM_THREADS": str(config.threads)}
    process = subprocess.Popen([*command(config), "--out", str(out_dir), *extra_args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
        reason = None if process.returncode == 0 else failure_reason(output)
    except subprocess.TimeoutExpired:
        # torchrun and its ranks share the session started for them: end them all.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=_KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        reason = f"timed out after {timeout_s:g} s"
        if _RANK_FAILED.search(output):
            reason += f"; {failure_reason(output)}"
    with open(out_dir / "ranks.log", "a", encoding="utf-8") as log:
        log.write(f"=== {config.key} ({machine.now_utc()})\n{output}\n")
    written = rows()
    if written:
        return written
    if reason is None:
        reason = f"torchrun exited 0 but wrote no rows: {failure_reason(output)}"
    _record(table, config, "failed", reason)
    return rows()


def _record(table: Any, config: RankConfig, status: str, reason: str) -> None:
    """One row for a configuration that was not timed (empty ``stage``); what its arguments cannot say (an
    unknown backend's device, an unknown network's sizes) is left empty."""
    try:
        device, pg_backend = ("cuda" if config.pg_backend == "nccl" else "cpu"), config.pg_backend
    except (ValueError, BackendUnavailable):
        device = pg_backend = ""
    try:
        sizes = config.resolved_network().name
    except ValueError:
        sizes = ""
    per_rank = config.batch_per_rank if isinstance(config.world_size, int) and config.world_size > 0 else ""
    table.append(config.key, [{
        "backend": config.backend, "device": device, "network": config.network,
        "sizes": sizes, "scaling": config.scaling, "world_size": config.world_size,
        "pg_backend": pg_backend, "rung": config.rung, "round": config.round, "threads_per_rank": config.threads,
        "batch_per_rank": per_rank, "global_batch": config.global_batch,
        "stage": "", "status": status, "reason": reason, "load_before": "", "load_after": os.getloadavg()[0],
        "finished_at": machine.now_utc()}])
