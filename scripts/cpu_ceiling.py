"""What N cores give the C library's step when nothing is shared between them: N copies of a one-thread step,
each in its own process pinned to its own core, all stepping at once, against one copy alone.

For every case (``--cases name:batch,...``) and copy count (``--copies``), in interleaved rounds (``--rounds``),
``N`` worker processes, one per core, each with its own model and batches, wait on a barrier and time
``train_step`` together; a copy that finishes its timed steps keeps stepping, untimed, until the last one has
finished, so every timed step runs beside N - 1 busy cores. The ceiling of N cores is ``N · t_1 / t_N``
(``t_N``: the median over copies of each copy's median step): the throughput N independent copies reach, with
the clock the cores keep under load, the shared L3 and the memory bandwidth as the only limits. A team whose
threads meet at barriers goes at its slowest core's pace: its ceiling is ``N · t_1 / t_slowest`` (the slowest
copy's median), the team ceiling. With
``--omp`` each round also times ``c-omp`` on N threads (a process of its own per N, pinned to the copies'
first N cores before its threads exist: a thread keeps the core mask it was created with) and its speed-up
over one thread, so the two are read side by side: c-omp's speed-up over the ceiling is the
share of the hardware's parallelism the threaded step keeps once its threads share data.

Writes ``ceiling.json`` and ``ceiling.txt`` (the table, also printed) under ``--out``.

    python scripts/cpu_ceiling.py --cases moons-5h300:32,mnist:256 --copies 1,2,4,8,16 --omp \\
        --rounds 3 --budget-s 150 --out results/h200-ceiling
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from itertools import cycle
from pathlib import Path
from statistics import median
from typing import Any

# cpu_timeline.py beside this file: its case parsing and random batches.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_timeline import cpu_model, parse_cases, parse_threads, random_inputs

import mlpbench
from mlpbench import native
from mlpbench.network import resolve
from mlpbench.thread_policy import pinned_threads
from mlpbench.timing import CpuClock, Stats, time_call

LR = 1e-4
WARMUP = 5
#: Seconds a worker waits before its warm-up, so the threads of the run before have gone to sleep.
IDLE_S = 0.05


def _steppers(cases: list[tuple[str, int]], threads: int, isa: str, seed: int) -> dict[int, Any]:
    """Per case index, a c-omp model and a call that trains it one step on the next of its batches in turn."""
    steppers = {}
    for index, (name, batch) in enumerate(cases):
        network = resolve(name)
        model = mlpbench.load("c-omp", network, seed=0, threads=threads, max_batch=batch, isa=isa)
        rotation = cycle([model.prepare(X, y) for X, y in random_inputs(network, batch, 4, seed)])
        steppers[index] = (model, lambda model=model, rotation=rotation: model.train_step(next(rotation), LR))
    return steppers


def worker(cores: list[int], threads: int, cases: list[tuple[str, int]], isa: str, barriers: dict[int, Any],
           finished: Any, conn: Any) -> None:
    """One process pinned to ``cores`` before any thread of it exists (threads inherit the mask they are
    created with), a c-omp model per case on ``threads`` threads; answers ``(case, steps, copies)`` with the
    :class:`Stats` of its steps. ``copies`` > 0: one of that many copies, started together on a barrier and
    kept busy until the last one has finished; 0: alone."""
    os.sched_setaffinity(0, set(cores))
    with pinned_threads(threads):
        steppers = _steppers(cases, threads, isa, seed=cores[0] if threads == 1 else threads)
        conn.send("ready")
        while (order := conn.recv()) is not None:
            case, steps, copies = order
            model, step = steppers[case]
            time.sleep(IDLE_S)  # the threads of the run before (another process's) back to sleep
            for _ in range(WARMUP):
                step()
            if copies:
                barriers[copies].wait()
            stats = time_call(step, repeats=steps, warmup=0, clock=CpuClock(sync=model.synchronize))
            if copies:
                with finished.get_lock():
                    finished.value += 1
                while finished.value < copies:  # keep the core busy until the slowest copy is done
                    step()
            conn.send(stats)
        for model, _ in steppers.values():
            model.close()


def run_copies(pipes: list[Any], finished: Any, case: int, steps: int, copies: int) -> list[Stats]:
    with finished.get_lock():
        finished.value = 0
    for conn in pipes[:copies]:
        conn.send((case, steps, copies))
    return [conn.recv() for conn in pipes[:copies]]


def run_alone(conn: Any, case: int, steps: int) -> Stats:
    conn.send((case, steps, 0))
    return conn.recv()


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds, with the rounds' min-max, of one case and copy count."""
    out: dict[str, Any] = {"case": rounds[0]["case"], "copies": rounds[0]["copies"], "rounds": len(rounds)}
    for key in ("copy_us", "slowest_copy_us", "ceiling", "team_ceiling", "omp_us", "omp_speedup",
                "omp_of_ceiling"):
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            out[key] = {"median": median(values), "min": min(values), "max": max(values)}
    return out


def table(results: list[dict[str, Any]]) -> str:
    def cell(entry: dict[str, Any] | None, digits: int = 1) -> str:
        if entry is None:
            return "-"
        low, high = f"{entry['min']:.{digits}f}", f"{entry['max']:.{digits}f}"
        return f"{entry['median']:.{digits}f} ({low}-{high})"

    lines = ["| case | copies / threads | copy step us | slowest copy us | ceiling x | team ceiling x | "
             "c-omp step us | c-omp speed-up x | c-omp of ceiling |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cells = [cell(r.get("copy_us")), cell(r.get("slowest_copy_us")), cell(r.get("ceiling"), 2),
                 cell(r.get("team_ceiling"), 2), cell(r.get("omp_us")), cell(r.get("omp_speedup"), 2),
                 cell(r.get("omp_of_ceiling"), 2)]
        lines.append(f"| {r['case']} | {r['copies']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=parse_cases, default=parse_cases("moons-5h300:32,mnist:256"))
    parser.add_argument("--copies", type=parse_threads, default=[1, 2, 4, 8, 16],
                        help="copy counts (and c-omp thread counts); those above the usable cores are left out")
    parser.add_argument("--omp", action="store_true", help="also time c-omp on as many threads as copies")
    parser.add_argument("--steps", type=int, default=400, help="timed steps per copy (at most)")
    parser.add_argument("--min-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--isa", default="auto")
    parser.add_argument("--budget-s", type=float, default=150.0, help="the whole run's time budget")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    cores = sorted(os.sched_getaffinity(0))
    copies = sorted({n for n in args.copies if n <= len(cores)} | {1})
    context = mp.get_context("spawn")  # fresh processes: no OpenMP pool or PyTorch state inherited
    barriers = {n: context.Barrier(n) for n in copies}
    finished = context.Value("i", 0)
    workers = []

    def start(cores_: list[int], threads: int) -> Any:
        mine, theirs = context.Pipe()
        process = context.Process(target=worker, daemon=True, args=(cores_, threads, args.cases, args.isa,
                                                                    barriers, finished, theirs))
        process.start()
        workers.append((process, mine))
        return mine

    pipes = [start([core], 1) for core in cores[:max(copies)]]
    # c-omp on N threads: one process per N, pinned to the copies' first N cores.
    omp = {n: start(cores[:n], n) for n in copies} if args.omp else {}
    meta = {"argv": sys.argv, "processor": cpu_model(), "cores": cores, "copies": copies, "rounds": args.rounds,
            "budget_s": args.budget_s, "build_info": native.build_info(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    started = time.perf_counter()
    try:
        for _, conn in workers:
            if conn.recv() != "ready":
                raise RuntimeError("a worker process did not start")
        # Steps per run from one copy's step: the budget split over every run (copies, then c-omp).
        runs = len(args.cases) * len(copies) * args.rounds * (2 if args.omp else 1)
        steps = {}
        for case in range(len(args.cases)):
            probe = run_copies(pipes, finished, case, 3, 1)[0].median
            steps[case] = int(max(args.min_steps, min(args.steps, args.budget_s / runs / max(probe, 1e-7))))
        rows: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for round_index in range(args.rounds):
            for case, (name, batch) in enumerate(args.cases):
                for n in copies:
                    row: dict[str, Any] = {"case": f"{name}:{batch}", "copies": n, "round": round_index,
                                           "load_before": os.getloadavg()[0]}
                    stats = run_copies(pipes, finished, case, steps[case], n)
                    row["copy_us"] = median(s.median for s in stats) * 1e6
                    row["slowest_copy_us"] = max(s.median for s in stats) * 1e6
                    row["per_copy_us"] = [s.median * 1e6 for s in stats]  # in the order of meta's cores
                    if args.omp:
                        row["omp_us"] = run_alone(omp[n], case, steps[case]).median * 1e6
                    row["load_after"] = os.getloadavg()[0]
                    rows.setdefault((case, n), []).append(row)
                one = rows[(case, 1)][-1]
                for n in copies:
                    row = rows[(case, n)][-1]
                    row["ceiling"] = n * one["copy_us"] / row["copy_us"]
                    row["team_ceiling"] = n * one["copy_us"] / row["slowest_copy_us"]
                    if args.omp:
                        row["omp_speedup"] = one["omp_us"] / row["omp_us"]
                        row["omp_of_ceiling"] = row["omp_speedup"] / row["ceiling"]
                    print(f"round {round_index} {row['case']} x{n}: copy {row['copy_us']:.1f} us, ceiling "
                          f"{row['ceiling']:.2f}x" + (f", c-omp {row['omp_us']:.1f} us ({row['omp_speedup']:.2f}x)"
                                                      if args.omp else "") + f", load {row['load_before']:.2f}",
                          flush=True)
    finally:
        for _, conn in workers:
            conn.send(None)
        for process, _ in workers:
            process.join(timeout=30)
    results = [summarise(group) for group in rows.values()]
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["steps"] = {f"{name}:{batch}": steps[case] for case, (name, batch) in enumerate(args.cases)}
    text = table(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps({"meta": meta, "results": results,
                                                       "rounds": [r for g in rows.values() for r in g]}, indent=1))
    (args.out / "ceiling.txt").write_text(f"{meta['processor']}, cores {len(cores)}, started {meta['started']}, "
                                          f"steps {meta['steps']}\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
