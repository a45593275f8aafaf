"""What the exchange between the C step's stretches costs on its own, with no arithmetic around it.

Under plan 16 (``native/SCALING.md``) every hidden stretch of the step on T threads reads the whole activation
below (rows x batch floats, transposed), which the T threads wrote a stretch before, and writes the thread's
own rows of the next. ``exchange_probe.c`` (its header says what it does) runs exactly that exchange on
``--rows`` x ``--batch`` buffers with nothing else in the stretch (``shared``), and beside it the same stretches
reading a buffer each thread alone reads and writing rows nobody else reads (``private``): the difference is
what reading lines other cores wrote, and writing lines other cores read, cost; ``streamed`` is ``shared`` with
the rows written by non-temporal stores. It is compiled here as the native library is (``cc -O3 -fopenmp``),
with ``-march=native`` for the loads' width; each mode and thread count runs in a process of its own, in
interleaved rounds.

Writes ``exchange.json`` and ``exchange.txt`` (the table, also printed) under ``--out``.

    python scripts/exchange_probe.py --threads 1,2,4,8,16 --rounds 5 --out results/h200-exchange
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_timeline import cpu_model, parse_threads

from mlpbench.machine import now_utc
from mlpbench.timing import Stats

SOURCE = Path(__file__).with_name("exchange_probe.c")
MODES = ("shared", "private", "streamed")
#: The largest buffer (floats) whose sum of values below 1024 stays exact in float (exchange_probe.c).
MAX_FLOATS = 2**24 // 1023
#: A process of the probe takes well under a second at the default sizes; past this it has hung.
PROCESS_TIMEOUT_S = 300
NATIVE = Path(__file__).resolve().parents[1] / "native"
#: As native/Makefile compiles the library, plus the host's widest loads; the library's internal header gives
#: the probe its partition and sizes.
COMPILE = ["cc", "-O3", "-std=c11", "-fopenmp", "-march=native", "-Wall", "-Wextra", "-Wshadow", "-Werror",
           f"-I{NATIVE / 'src'}", f"-I{NATIVE / 'include'}"]


def build(directory: Path) -> Path:
    binary = directory / "exchange_probe"
    subprocess.run([*COMPILE, "-o", str(binary), str(SOURCE)], check=True)
    return binary


def run_once(binary: Path, mode: str, threads: int, rows: int, batch: int, layers: int, steps: int,
             warmup: int) -> dict[str, Any]:
    """One process of the probe; raises if any read's sum differed from what the writers stored."""
    load_before = os.getloadavg()[0]
    out = subprocess.run([str(binary), mode, str(threads), str(rows), str(batch), str(layers), str(steps),
                          str(warmup)], check=True, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S).stdout
    report = json.loads(out)
    if report["mismatches"]:
        raise RuntimeError(f"{mode}, {threads} threads: {report['mismatches']} reads whose sum was not what the "
                           "writers stored")
    return {"load_before": load_before, "load_after": os.getloadavg()[0], **summarise(report)}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The read, write and stretch times (median and quartiles over every stretch, and for reads and writes
    every thread), and the slowest thread's read per stretch (what the barrier waits for)."""
    reads = np.asarray(report["read_ns"]).reshape(-1, report["threads"])
    return {
        "stretches": len(report["stretch_ns"]),
        "read": Stats.from_ns(reads.ravel()).as_dict(),
        "slowest_read": Stats.from_ns(reads.max(axis=1)).as_dict(),
        "write": Stats.from_ns(report["write_ns"]).as_dict(),
        "stretch": Stats.from_ns(report["stretch_ns"]).as_dict(),
    }


def table(results: list[dict[str, Any]], rows: int, batch: int) -> str:
    lines = [f"exchange of a {rows} x {batch} float activation per stretch, us (median of the rounds' medians; "
             "rounds' range in brackets)",
             f"{'thr':>4} {'mode':>8} {'read':>18} {'slowest read':>18} {'write':>16} {'stretch':>18}"]
    for result in results:
        for mode in MODES:
            cells = []
            for key in ("read", "slowest_read", "write", "stretch"):
                values = [r[mode][key]["median"] * 1e6 for r in result["rounds"]]
                cells.append(f"{median(values):6.2f} [{min(values):5.2f}-{max(values):5.2f}]")
            lines.append(f"{result['threads']:>4} {mode:>8} " + " ".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=parse_threads, default=[1, 2, 4, 8, 16])
    parser.add_argument("--rows", type=int, default=300, help="rows of each activation (a 300-wide layer)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=5,
                        help="buffers passed round (moons-5h300's hidden-to-hidden layers: 5)")
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if min(args.rows, args.batch, args.steps, args.rounds) < 1 or args.layers < 2 or args.warmup < 0:
        parser.error("--rows, --batch, --steps and --rounds must be >= 1, --layers >= 2, --warmup >= 0")
    if args.rows * args.batch > MAX_FLOATS:
        parser.error(f"--rows x --batch must be at most {MAX_FLOATS}: the probe's sums are exact only up to there")
    cores = len(os.sched_getaffinity(0))
    threads = [t for t in args.threads if t <= cores]
    if not threads:
        parser.error(f"no thread count fits the {cores} usable cores")
    started = now_utc()
    clock = time.perf_counter()
    rounds: dict[int, list[dict[str, Any]]] = {t: [] for t in threads}
    with tempfile.TemporaryDirectory() as directory:
        binary = build(Path(directory))
        for index in range(args.rounds):
            for t in threads:
                row: dict[str, Any] = {"round": index}
                for mode in MODES:
                    row[mode] = run_once(binary, mode, t, args.rows, args.batch, args.layers, args.steps, args.warmup)
                rounds[t].append(row)
                stretches = ", ".join(f"{row[mode]['stretch']['median'] * 1e6:.2f} {mode}" for mode in MODES)
                print(f"round {index} threads {t}: stretch us {stretches} (load {row[MODES[0]]['load_before']:.2f})",
                      flush=True)
    results = [{"threads": t, "rounds": rounds[t]} for t in threads]
    text = table(results, args.rows, args.batch)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv if argv is None else ["scripts/exchange_probe.py", *argv], "started": started,
            "seconds": round(time.perf_counter() - clock, 1), "cpu": cpu_model(), "usable_cores": cores,
            "compile": COMPILE, "rows": args.rows, "batch": args.batch, "layers": args.layers, "steps": args.steps,
            "warmup": args.warmup, "rounds": args.rounds, "threads": threads}
    (args.out / "exchange.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    (args.out / "exchange.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
