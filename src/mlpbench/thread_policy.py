"""How many CPU threads a computation may use, and how the thread pools are set.

PyTorch's wheel and the C library share one OpenMP runtime and with it one thread-count setting, so a count
set for one leaks into the other unless every configuration sets its own. Everything that counts the usable
cores, checks a ``threads`` argument or sets PyTorch's count goes through this module.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import numpy as np


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's core count)."""
    return len(os.sched_getaffinity(0))


def check_threads(threads: Any, limit: int | None = None) -> int:
    """A thread count: an integer ``>= 1`` and, if ``limit`` is given, ``<= limit``."""
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer):
        raise TypeError(f"threads: expected an integer, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads: must be >= 1, got {threads}")
    if limit is not None and threads > limit:
        raise ValueError(f"threads: at most {limit} here, got {threads}")
    return int(threads)


def set_torch_threads(threads: int) -> None:
    """Set PyTorch's intra-op thread count (and so the shared OpenMP runtime's) if it differs."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """PyTorch's thread count (and with it the one OpenMP runtime the C library shares) and NumPy's BLAS
    pool set to ``threads`` for the block, restored afterwards: no configuration inherits another's."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    set_torch_threads(threads)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        set_torch_threads(previous)
