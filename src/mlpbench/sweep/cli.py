"""``python -m mlpbench.sweep``: the command line of :func:`mlpbench.sweep.run`.

Every field of :class:`~mlpbench.sweep.params.SweepParams` is an option (``budget_s`` is ``--budget-s``), the
same parameters the sweep notebook takes; an option left out keeps the preset's value, which ``--help`` shows.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from mlpbench.sweep import __doc__ as SWEEP_DOC
from mlpbench.sweep.params import HELP, PRESETS, SweepParams
from mlpbench.sweep.runner import run


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part)


def _strs(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


#: Each field type's parser and how its value is shown in the usage line.
_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "int": (int, "N"), "float": (float, "X"), "str": (str, "NAME"),
    "tuple[int, ...]": (_ints, "N,N,..."), "tuple[str, ...]": (_strs, "A,B,..."),
}


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def parser() -> argparse.ArgumentParser:
    default = PRESETS["default"]
    cli = argparse.ArgumentParser(prog="python -m mlpbench.sweep", description=SWEEP_DOC.split("\n")[0],
                                  epilog="Lists are comma-separated. Each option's default is the 'default' "
                                         "preset's value; another --preset brings its own.")
    cli.add_argument("--preset", default="default", choices=sorted(PRESETS),
                     help="the parameter set options are applied to (default: %(default)s)")
    cli.add_argument("--results", default="results",
                     help="directory that holds one folder per run (default: %(default)s)")
    cli.add_argument("--run-id", help="folder name; an existing run with this id is resumed "
                                      "(default: UTC time and host name)")
    cli.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    for field in dataclasses.fields(SweepParams):
        value = getattr(default, field.name)
        shown = _shown(value) if value != () else "every available, or the preset's choice"
        parse, metavar = _PARSERS[field.type]
        cli.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=parse, metavar=metavar,
                         help=f"{HELP[field.name]} (default: {shown})")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    preset, results, run_id = args.pop("preset"), args.pop("results"), args.pop("run_id")
    progress = not args.pop("no_progress")
    print(run(preset, results_dir=results, run_id=run_id, progress=progress, **args))
    return 0
