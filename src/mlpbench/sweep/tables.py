"""Crash-safe result tables: append-only CSV blocks, one per finished unit of work, and their columns."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlpbench.verify import QUANTITIES as ERROR_QUANTITIES

ROW_COLUMNS = (
    "key", "block_rows", "study", "backend", "device", "network", "sizes", "batch", "threads", "round", "stage",
    "status", "reason", "repeats", "warmup", "median_s", "q1_s", "q3_s", "iqr_s", "min_s", "mean_s", "flops", "gflops",
    "samples_per_s", "bytes", "gb_per_s", "verify_batch", "tolerance",
    *(f"err_{name}" for name in ERROR_QUANTITIES), "err_max",
    "scaled_err_max", "scaled_tolerance", "loss_after", "loss_finite", "reused_from", "finished_at",
    "load_1min", "load_before", "compile_s", "kernel_choice", "kernel_reason",
)
LADDER_COLUMNS = (
    "key", "block_rows", "device", "impl", "version", "rung", "n", "threads", "status", "reason", "repeats",
    "median_s", "iqr_s", "gflops", "rel_error", "ceiling_impl", "ceiling_gflops", "pct_of_ceiling",
    "finished_at",
)
TRAINING_COLUMNS = (
    "key", "block_rows", "backend", "network", "dataset", "threads", "epochs", "batch", "lr", "status",
    "reason", "epoch", "train_loss", "train_accuracy", "test_accuracy", "seconds", "finished_at",
)
#: End-to-end training (:mod:`mlpbench.sweep.endtoend`): one row per task x backend x timed run x epoch;
#: ``seconds`` is the run's training time from the first step to the end of that epoch; ``repeat`` 0 is the run
#: evaluated after every epoch, the others are evaluated after their last epoch only.
ENDTOEND_COLUMNS = (
    "key", "block_rows", "task", "backend", "device", "network", "sizes", "activation", "dataset", "threads",
    "batch", "lr", "weight_decay", "epochs", "target_accuracy", "status", "reason", "repeat", "epoch",
    "train_loss", "test_accuracy", "seconds", "load_before", "load_after", "finished_at",
)



def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so a reader sees the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def one_line(text: object, limit: int = 500) -> str:
    """Reasons go into CSV cells: one line, bounded length."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class BlockTable:
    """An append-only CSV file of blocks: all rows of one finished unit of work, written in one go.

    Every row carries its unit's ``key`` and the unit's row count ``block_rows``. :meth:`read` keeps only
    complete blocks (a SIGKILL can leave a torn last line or half a block) and cuts anything else off; a unit
    timed again appends a second block of its key, which replaces the first in what :meth:`read` returns.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self._header = ",".join(self.columns) + "\n"

    def _format(self, rows: Sequence[dict[str, Any]]) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n", extrasaction="raise")
        for row in rows:
            writer.writerow({k: one_line(v, 2000) if isinstance(v, str) else v for k, v in row.items()})
        return buffer.getvalue()

    def read(self) -> list[dict[str, str]]:
        """The complete blocks, in file order, a later block of a key in place of an earlier one (a unit timed
        again; the file keeps both); repairs the file in place when its tail is damaged."""
        if not self.path.exists():
            write_atomic(self.path, self._header)
            return []
        text = self.path.read_text(encoding="utf-8")
        if not text.startswith(self._header):
            if text and self._header.startswith(text):  # killed while the header was written
                write_atomic(self.path, self._header)
                return []
            raise ValueError(f"{self.path}: columns differ from this version's; use a new run id")
        body = text[len(self._header):]
        lines = body.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines.pop()  # torn last line
        rows = list(csv.DictReader(io.StringIO("".join(lines)), fieldnames=self.columns))
        blocks: list[list[dict[str, str]]] = []
        kept_lines: list[str] = []
        start = 0
        while start < len(rows):
            key, size = rows[start]["key"], int(rows[start]["block_rows"])
            block = rows[start:start + size]
            if len(block) < size or any(row["key"] != key for row in block):
                break  # an incomplete block can only be the last one written
            blocks.append(block)
            kept_lines += lines[start:start + size]
            start += size
        if start < len(rows) or len(lines) != len(body.splitlines(keepends=True)):
            write_atomic(self.path, self._header + "".join(kept_lines))
        latest = {block[0]["key"]: number for number, block in enumerate(blocks)}
        return [row for number, block in enumerate(blocks) if latest[block[0]["key"]] == number for row in block]

    def keys(self) -> set[str]:
        return {row["key"] for row in self.read()}

    def append(self, key: str, rows: Sequence[dict[str, Any]]) -> None:
        """Write one unit's rows with one ``write`` call and flush them to disk."""
        if not rows:
            raise ValueError(f"{key}: a block needs at least one row")
        rows = [{**row, "key": key, "block_rows": len(rows)} for row in rows]
        data = self._format(rows).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
