"""Where a c-omp training step spends its time on each thread, for a few networks, batches and thread counts.

For every case (``--cases name:batch,...``, names from ``mlpbench.PRESETS`` or sizes such as ``64-128-10``)
and thread count (``--threads``) it

* times ``train_step`` with the package's own timing (:func:`mlpbench.timing.time_call`, host clock, inputs
  rotating over a few random batches, PyTorch's and NumPy's pools pinned to the same count), timeline off;
* records the library's per-thread timeline (``NativeCModel.enable_timeline``) over ``--timeline-steps`` more
  steps, and reports per thread the busy time of each phase (forward products, output rows, weight, bias and
  input gradients, update; packing apart), the barrier waits, the fork and join, the barriers per step, and the
  load imbalance (max / mean busy over threads) of each phase and of each stretch between two barriers,
  both in time and in multiply-adds (the latter is the partition's geometry, meaningful on any machine);
* with ``--blas``, times ``c-blas`` at the same thread counts;
* with ``--plans``, runs every case and thread count (one thread included: a plan may change it too) under
  each of the given plans of the library's fused step (``MLP_STEP_PLAN``, see ``native/SCALING.md``), so a
  change and the code before it are compared on the same machine in the same run;
* prints, per thread count, each phase's busy time summed over the threads against the same phase on one
  thread (the work inflation: what the threads do together beyond the one thread's work).

Every configuration runs ``--rounds`` times (default 3), interleaved: per case, round after round, each round
runs every thread count under every plan once (with c-blas), A B C A B C ..., so that a drift of the machine
(another job, the clock, the load) reaches every plan alike instead of the one that happened to run then. A
configuration's step time is the median over its rounds of the per-round medians, reported with the rounds'
min-max; its timeline is the one recorded in its median round. A difference between plans smaller than their
spreads is not one.

The run bounds itself: ``--budget-s`` is split evenly over the runs (configurations x rounds), and each one
takes only as many steps as fit (never fewer than ``--min-steps``). The load average is recorded before and
after each.

Writes ``timeline.json`` (everything) and ``timeline.txt`` (the tables, also printed) under ``--out``.

    python scripts/cpu_timeline.py --cases moons-5h300:32,mnist:256,digits:32 --threads 1,2,4,8,16 \\
        --steps 200 --blas --budget-s 180 --out results/h200-timeline
    python scripts/cpu_timeline.py --plans 8,11 --rounds 5 --blas --budget-s 170 --out results/h200-plans
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from itertools import cycle
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

import mlpbench
from mlpbench import native
from mlpbench.backends import model_class
from mlpbench.backends.native_c import timeline_kinds
from mlpbench.network import Network, resolve
from mlpbench.thread_policy import pinned_threads, usable_cores
from mlpbench.timing import CpuClock, time_call

#: Phases whose per-thread busy time is reported, in table order.
WORK_KINDS = ("forward", "output_rows", "output_grad", "weight_grad", "bias_grad", "input_grad", "update",
              "pack_weights", "activation_rows")


def parse_cases(text: str) -> list[tuple[str, int]]:
    cases = []
    for item in text.split(","):
        name, _, batch = item.strip().rpartition(":")
        if not name or not batch.isdigit() or int(batch) < 1:
            raise argparse.ArgumentTypeError(f"case {item!r}: expected name:batch, e.g. moons-5h300:32")
        resolve(name)
        cases.append((name, int(batch)))
    return cases


def parse_threads(text: str) -> list[int]:
    counts = [int(t) for t in text.split(",")]
    if any(t < 1 for t in counts):
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text}")
    return counts


def random_inputs(network: Network, batch: int, count: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` random batches (never zeros) with valid labels for the network's loss."""
    rng = np.random.default_rng(seed)
    inputs = []
    for _ in range(count):
        X = rng.standard_normal((batch, network.n_inputs)).astype(np.float32)
        if network.loss == "softmax-ce":
            y = rng.integers(0, network.n_outputs, batch)
        else:
            y = rng.integers(0, 2, (batch, network.n_outputs)).astype(np.float32)
        inputs.append((X, y))
    return inputs


def time_steps(model: Any, batches: list[Any], steps: int, warmup: int) -> dict[str, float]:
    """Median and quartiles of ``train_step`` in microseconds (timeline off)."""
    rotation = cycle(batches)
    stats = time_call(lambda: model.train_step(next(rotation), 1e-4), repeats=steps, warmup=warmup,
                      clock=CpuClock(sync=model.synchronize))
    return {"median_us": stats.median * 1e6, "q1_us": stats.q1 * 1e6, "q3_us": stats.q3 * 1e6, "n": stats.n}


def summarise_timelines(steps: list[np.ndarray], team: int, kinds: dict[int, str]) -> dict[str, Any]:
    """Per-thread busy time per phase, barrier waits, and imbalance, from the events of several steps
    (medians over steps of each per-thread sum)."""
    per_step: dict[str, list[np.ndarray]] = {}
    segment_time: list[list[np.ndarray]] = []  # step -> segment -> busy per thread
    segment_work: list[list[np.ndarray]] = []
    segment_labels: list[str] = []
    barriers = []
    spans = []
    for events in steps:
        sums = {name: np.zeros(team) for name in (*WORK_KINDS, "pack", "barrier", "fork", "join")}
        seg_t: list[np.ndarray] = []
        seg_w: list[np.ndarray] = []
        labels: list[set[str]] = []
        position = np.zeros(team, dtype=int)  # each thread's current segment
        for event in events:
            thread, kind = int(event["thread"]), kinds[int(event["kind"])]
            duration = (int(event["end_ns"]) - int(event["start_ns"])) * 1e-3
            sums[kind][thread] += duration
            if kind == "barrier":
                position[thread] += 1
                continue
            if kind not in WORK_KINDS:
                continue
            sums["pack"][thread] += int(event["pack_ns"]) * 1e-3
            segment = position[thread]
            while len(seg_t) <= segment:
                seg_t.append(np.zeros(team))
                seg_w.append(np.zeros(team))
                labels.append(set())
            seg_t[segment][thread] += duration
            seg_w[segment][thread] += int(event["work"])
            labels[segment].add(f"{kind}{int(event['layer'])}")
        barriers.append(int(np.sum((events["thread"] == 0) & (events["kind"] == _code(kinds, "barrier")))))
        spans.append(float(events["end_ns"].max()) * 1e-3 if len(events) else 0.0)
        for name, values in sums.items():
            per_step.setdefault(name, []).append(values)
        segment_time.append(seg_t)
        segment_work.append(seg_w)
        if not segment_labels:
            segment_labels = ["+".join(sorted(label)) for label in labels]
    median = {name: np.median(np.stack(values), axis=0) for name, values in per_step.items()}
    phases = {}
    for name in (*WORK_KINDS, "pack", "barrier", "fork", "join"):
        busy = median[name]
        if not busy.any():
            continue
        phases[name] = {"per_thread_us": [round(float(v), 3) for v in busy], "mean_us": float(busy.mean()),
                        "max_us": float(busy.max()),
                        "imbalance": float(busy.max() / busy.mean()) if busy.mean() > 0 else None}
    n_segments = min(len(s) for s in segment_time)
    segments = []
    for index in range(n_segments):
        busy = np.median(np.stack([s[index] for s in segment_time]), axis=0)
        work = segment_work[0][index]
        segments.append({
            "what": segment_labels[index] if index < len(segment_labels) else "",
            "max_us": float(busy.max()), "mean_us": float(busy.mean()),
            "imbalance": float(busy.max() / busy.mean()) if busy.mean() > 0 else None,
            "threads_with_work": int(np.count_nonzero(work)),
            "work_imbalance": float(work.max() / work.mean()) if work.mean() > 0 else None,
        })
    busy_total = sum(median[name] for name in WORK_KINDS)
    return {
        "steps_recorded": len(steps),
        # The region's closing (implicit) barrier is not an event: counted here for teams of 2 or more.
        "barriers_per_step": int(np.median(barriers)) + (1 if team > 1 else 0),
        "timeline_span_us": float(np.median(spans)),
        "busy_us_per_thread": [round(float(v), 3) for v in busy_total],
        "busy_imbalance": float(busy_total.max() / busy_total.mean()) if busy_total.mean() > 0 else None,
        "phases": phases,
        "segments": segments,
        # Time lost to imbalance: what the slowest thread of each stretch takes beyond the mean.
        "imbalance_loss_us": float(sum(s["max_us"] - s["mean_us"] for s in segments)),
    }


def _code(kinds: dict[int, str], name: str) -> int:
    return next(code for code, kind in kinds.items() if kind == name)


def parse_plans(text: str) -> list[int | None]:
    plans = [int(p) for p in text.split(",")]
    if any(p < 1 for p in plans):
        raise argparse.ArgumentTypeError(f"plans are positive change numbers, got {text}")
    return list(dict.fromkeys(plans))


def load_with_plan(network: Network, threads: int, batch: int, isa: str, plan: int | None) -> Any:
    """A c-omp model created with ``MLP_STEP_PLAN`` set to ``plan`` (None: the library's default)."""
    previous = os.environ.pop("MLP_STEP_PLAN", None)
    try:
        if plan is not None:
            os.environ["MLP_STEP_PLAN"] = str(plan)
        return mlpbench.load("c-omp", network, seed=0, threads=threads, max_batch=batch, isa=isa)
    finally:
        os.environ.pop("MLP_STEP_PLAN", None)
        if previous is not None:
            os.environ["MLP_STEP_PLAN"] = previous


def schedule(cases: list[tuple[str, int]], threads: list[int], plans: list[int | None],
             rounds: int) -> list[tuple[int, str, int, int, int | None]]:
    """The order of the runs, ``(round, name, batch, threads, plan)``: per case, ``rounds`` rounds, each running
    every thread count under every plan once, so that the runs of one configuration are spread over the case's
    whole time and every other configuration of the case runs between two of them."""
    return [(index, name, batch, t, plan) for name, batch in cases for index in range(rounds) for t in threads
            for plan in plans]


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median_us": float(median(values)), "min_us": float(min(values)), "max_us": float(max(values)),
            "rounds_us": [round(v, 3) for v in values]}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's runs (one per round, in round order) as one result: the step's median over the
    rounds and its min-max (each round's own median, quartiles and steps under ``rounds``); the timeline and
    everything else from the median round (the lower middle one of an even count)."""
    steps = [r["step"]["median_us"] for r in runs]
    middle = sorted(range(len(runs)), key=lambda i: steps[i])[(len(runs) - 1) // 2]
    result = dict(runs[middle])
    result["timeline_round"] = middle
    result["rounds"] = [{"step": r["step"], "load_before": r["load_before"], **({"blas_step": r["blas_step"]}
                                                                                  if "blas_step" in r else {})}
                        for r in runs]
    result["step"] = _spread(steps)
    blas = [r["blas_step"]["median_us"] for r in runs if "blas_step" in r]
    if blas:
        result["blas_step"] = _spread(blas)
    result["load_before"], result["load_after"] = runs[0]["load_before"], runs[-1]["load_after"]
    result["seconds"] = sum(r["seconds"] for r in runs)
    return result


#: The phases of the work-inflation line: name -> (phases added, phases taken out).
INFLATION_PHASES = {
    "update": (("update",), ()),
    "packing": (("pack", "pack_weights"), ()),
    "arithmetic": (("forward", "weight_grad", "input_grad"), ("pack",)),
    "bias_grad": (("bias_grad",), ()),
    "output_rows": (("output_rows",), ()),
}


def phase_total(result: dict[str, Any], added: tuple[str, ...], removed: tuple[str, ...] = ()) -> float:
    """Busy time of some phases summed over the threads (us per step); the products' packing (``pack``) is
    part of their time, hence ``removed``."""
    phases, team = result["timeline"]["phases"], result["threads"]
    total = sum(phases[k]["mean_us"] for k in added if k in phases) - sum(
        phases[k]["mean_us"] for k in removed if k in phases)
    return total * team


def inflation(result: dict[str, Any], one: dict[str, Any]) -> dict[str, float | None]:
    """Each phase's busy time summed over ``result``'s threads over the same on one thread (``one``), and
    the whole busy time's (``busy``): 1.0 when the threads together do the one thread's work."""
    out: dict[str, float | None] = {}
    for name, (added, removed) in INFLATION_PHASES.items():
        base = phase_total(one, added, removed)
        out[name] = phase_total(result, added, removed) / base if base > 0 else None
    busy, busy_one = sum(result["timeline"]["busy_us_per_thread"]), sum(one["timeline"]["busy_us_per_thread"])
    out["busy"] = busy / busy_one if busy_one > 0 else None
    return out


def run_config(name: str, batch: int, threads: int, args: argparse.Namespace, budget_s: float,
               kinds: dict[int, str], plan: int | None = None, with_blas: bool = True) -> dict[str, Any]:
    network = resolve(name)
    started = time.perf_counter()
    result: dict[str, Any] = {"case": f"{name}:{batch}", "network": network.name, "batch": batch,
                              "threads": threads, "load_before": os.getloadavg()}
    inputs = random_inputs(network, batch, 4, seed=threads)
    with pinned_threads(threads):
        model = load_with_plan(network, threads, batch, args.isa, plan)
        try:
            result["plan"], result["step_plan"] = model.plan, model.step_plan(batch)
            if plan is not None and model.plan != plan:
                raise SystemExit(f"plan {plan} asked, the library ran plan {model.plan}: not a plan it knows")
            batches = [model.prepare(X, y) for X, y in inputs]
            probe = time_call(lambda: model.train_step(batches[0], 1e-4), repeats=3, warmup=2).median
            # Two thirds of the budget for timing, one third for the timeline (which runs slower).
            steps = int(max(args.min_steps, min(args.steps, budget_s * 0.6 / max(probe, 1e-7))))
            result["isa"] = model.isa
            result["step"] = time_steps(model, batches, steps, warmup=min(20, steps))
            tl_steps = int(max(3, min(args.timeline_steps, budget_s * 0.25 / max(probe * 1.5, 1e-7))))
            model.enable_timeline(args.events_per_thread)
            recorded = []
            for index in range(tl_steps):
                model.train_step(batches[index % len(batches)], 1e-4)
                recorded.append(model.timeline())
            model.disable_timeline()
            result["timeline"] = summarise_timelines(recorded, threads, kinds)
            if not (args.blas and with_blas):
                pass
            elif not native.library_path("blas").is_file():
                result["blas_skipped"] = "libmlp_blas.so not built"
            elif threads > model_class("c-blas").max_threads():
                result["blas_skipped"] = f"c-blas takes at most {model_class('c-blas').max_threads()} threads here"
            else:
                blas = mlpbench.load("c-blas", network, seed=0, threads=threads, max_batch=batch)
                try:
                    blas_batches = [blas.prepare(X, y) for X, y in inputs]
                    blas_probe = time_call(lambda: blas.train_step(blas_batches[0], 1e-4), repeats=3,
                                           warmup=2).median
                    blas_steps = int(max(args.min_steps, min(args.steps, budget_s * 0.6 / max(blas_probe, 1e-7))))
                    result["blas_step"] = time_steps(blas, blas_batches, blas_steps, warmup=min(20, blas_steps))
                finally:
                    blas.close()
        finally:
            model.close()
    result["load_after"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started
    return result


def table(results: list[dict[str, Any]], compare_plans: bool = False) -> str:
    lines = []
    groups = dict.fromkeys((r["case"], r.get("plan") if compare_plans else None) for r in results)
    for case, plan in groups:
        rows = [r for r in results if r["case"] == case and (not compare_plans or r.get("plan") == plan)]
        one_result = next((r for r in rows if r["threads"] == 1), None)
        one = one_result["step"]["median_us"] if one_result else None
        plans = sorted({r["plan"] for r in rows if "plan" in r})
        rounds = len(rows[0].get("rounds", [None]))
        lines.append(f"\n== {case} (isa {rows[0].get('isa')}, plan {','.join(map(str, plans)) or '-'}; "
                     f"step: median of {rounds} interleaved rounds [min-max])")
        lines.append(f"{'thr':>4} {'step us':>9} {'[min-max]':>15} {'speedup':>7} {'blas us':>8} {'[min-max]':>15} "
                     f"{'busy us':>8} {'busy max':>8} "
                     f"{'barr us':>7} {'#barr':>5} {'fork+join':>9} {'imb.loss':>8} {'load':>5}  "
                     "phases: mean us (max/mean)")
        for r in rows:
            tl = r["timeline"]
            busy = np.asarray(tl["busy_us_per_thread"])
            phases = tl["phases"]
            speedup = f"{one / r['step']['median_us']:.2f}" if one else "-"
            blas = f"{r['blas_step']['median_us']:.1f}" if "blas_step" in r else "-"
            spread = _range(r["step"])
            blas_spread = _range(r["blas_step"]) if "blas_step" in r else "-"
            fj = phases.get("fork", {}).get("mean_us", 0.0) + phases.get("join", {}).get("max_us", 0.0)
            parts = "  ".join(f"{kind} {phases[kind]['mean_us']:.1f} ({phases[kind]['imbalance']:.2f})"
                              for kind in (*WORK_KINDS, "pack") if kind in phases)
            lines.append(f"{r['threads']:>4} {r['step']['median_us']:>9.1f} {spread:>15} {speedup:>7} {blas:>8} "
                         f"{blas_spread:>15} {busy.mean():>8.1f} {busy.max():>8.1f} "
                         f"{phases.get('barrier', {}).get('mean_us', 0.0):>7.1f} {tl['barriers_per_step']:>5} "
                         f"{fj:>9.1f} {tl['imbalance_loss_us']:>8.1f} {r['load_before'][0]:>5.2f}  {parts}")
        if one_result is not None:
            lines.append("  work inflation (phase busy time summed over the threads / the same on one thread):")
            for r in rows:
                if r["threads"] == 1:
                    continue
                ratios = inflation(r, one_result)
                lines.append(f"    {r['threads']:>3} threads: " + "  ".join(
                    f"{k} {v:.2f}x" for k, v in ratios.items() if v is not None))
        worst = max(rows, key=lambda r: r["threads"])
        lines.append(f"  stretches between barriers at {worst['threads']} threads "
                     "(max us, max/mean time, threads with work, max/mean multiply-adds):")
        for s in worst["timeline"]["segments"]:
            imb = f"{s['imbalance']:.2f}" if s["imbalance"] else "-"
            wimb = f"{s['work_imbalance']:.2f}" if s["work_imbalance"] else "-"
            lines.append(f"    {s['what']:<40} {s['max_us']:>8.1f} {imb:>6} {s['threads_with_work']:>4} {wimb:>6}")
    return "\n".join(lines)


def _range(step: dict[str, Any]) -> str:
    if "min_us" not in step:
        return "-"
    return f"[{step['min_us']:.1f}-{step['max_us']:.1f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=parse_cases, default=parse_cases("moons-5h300:32,mnist:256,digits:32"))
    parser.add_argument("--threads", type=parse_threads, default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per configuration (at most)")
    parser.add_argument("--min-steps", type=int, default=20)
    parser.add_argument("--timeline-steps", type=int, default=50, help="steps recorded on the timeline (at most)")
    parser.add_argument("--events-per-thread", type=int, default=4096)
    parser.add_argument("--isa", default="auto")
    parser.add_argument("--blas", action="store_true", help="also time c-blas at the same thread counts")
    parser.add_argument("--plans", type=parse_plans, default=None,
                        help="plans of the fused step to compare (MLP_STEP_PLAN values, e.g. 8,10); "
                             "default: the library's own")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds: every configuration runs once per round (default 3)")
    parser.add_argument("--budget-s", type=float, default=180.0, help="the whole run's time budget")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    kinds = timeline_kinds()
    plans: list[int | None] = args.plans or [None]
    # c-blas runs with the first plan's run of each case, thread count and round.
    order = schedule(args.cases, args.threads, plans, args.rounds)
    blas_runs = sum(1 for run in order if run[4] == plans[0]) if args.blas else 0
    per_run = args.budget_s / (len(order) + blas_runs)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv, "machine": platform.machine(), "processor": cpu_model(),
            "usable_cores": usable_cores(), "os_cpu_count": os.cpu_count(), "budget_s": args.budget_s,
            "rounds": args.rounds, "build_info": native.build_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    runs: dict[tuple[str, int, int | None], list[dict[str, Any]]] = {}
    started = time.perf_counter()
    for index, name, batch, threads, plan in order:
        r = run_config(name, batch, threads, args, per_run, kinds, plan=plan, with_blas=plan == plans[0])
        r["round"] = index
        runs.setdefault((f"{name}:{batch}", threads, plan), []).append(r)
        print(f"round {index} {r['case']} threads {threads} plan {r['plan']} (runs {r['step_plan']}): "
              f"{r['step']['median_us']:.1f} us "
              f"({r['seconds']:.1f} s, load {r['load_before'][0]:.2f})", flush=True)
    results = [aggregate(group) for group in runs.values()]
    meta["seconds"] = round(time.perf_counter() - started, 1)
    text = table(results, compare_plans=len(plans) > 1)
    print(text)
    print(f"\n{len(results)} configurations x {args.rounds} rounds in {meta['seconds']} s")
    (args.out / "timeline.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out / "timeline.txt").write_text(
        f"{meta['processor']}, {meta['usable_cores']} usable cores, started {meta['started']}\n{text}\n")
    return 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
