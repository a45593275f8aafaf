"""``python -m analysis RUN_DIR [RUN_DIR ...] --figures figures --summaries DIR``: every figure and summary."""

from __future__ import annotations

import argparse
import sys

from analysis import draw_all, load_runs, write_summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis", description=__doc__)
    parser.add_argument("runs", nargs="+", help="results/<run-id> directories")
    parser.add_argument("--figures", default="figures", help="where PNG and PDF figures go")
    parser.add_argument("--summaries", help="where summary CSV/JSON files go (none if not given)")
    args = parser.parse_args(argv)
    results = load_runs(*args.runs)
    for name, paths in draw_all(results, args.figures).items():
        print(f"{name}: {', '.join(map(str, paths))}")
    if args.summaries:
        for path in write_summaries(results, args.summaries):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
