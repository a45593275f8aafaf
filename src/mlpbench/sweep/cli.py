"""``python -m mlpbench.sweep``: the command line of :func:`mlpbench.sweep.run`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mlpbench.sweep import __doc__ as SWEEP_DOC
from mlpbench.sweep.params import PRESETS, STUDIES, TRAINING_NETWORKS
from mlpbench.sweep.runner import run


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _strs(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpbench.sweep", description=SWEEP_DOC.split("\n")[0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--results", default="results", help="directory that holds one folder per run")
    parser.add_argument("--run-id", help="folder name; an existing run with this id is resumed")
    parser.add_argument("--backends", type=_strs, help="comma-separated backend names")
    parser.add_argument("--studies", type=_strs, help=f"comma-separated, from {','.join(STUDIES)}")
    parser.add_argument("--networks", type=_strs, help="stages study, comma-separated name:batch")
    parser.add_argument("--batch-sizes", type=_ints, help="batch study, comma-separated")
    parser.add_argument("--threads", type=_ints, help="thread study, comma-separated counts")
    parser.add_argument("--widths", type=_ints, help="width study, comma-separated")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--budget-s", type=float, help="timing seconds per configuration")
    parser.add_argument("--dataset", choices=sorted(TRAINING_NETWORKS))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    run_dir = run(args.preset, results_dir=args.results, run_id=args.run_id, progress=not args.no_progress,
                  backends=args.backends, studies=args.studies, networks=args.networks,
                  batch_sizes=args.batch_sizes, threads=args.threads, widths=args.widths, repeats=args.repeats,
                  warmup=args.warmup, budget_s=args.budget_s, dataset=args.dataset, seed=args.seed)
    print(run_dir)
    return 0
