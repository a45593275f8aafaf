"""A busy machine the load average cannot see: on a shared VM another tenant's work on the same physical cores
slows this machine's threads without adding to its run queue (the development machine's second core went from
0.62 to 1.3 ms per 2-thread step and back within seconds, the load average under 0.7; results/dev-2core/NOTES.md).

Before each CPU measurement the sweep times a fixed training step of the C library on the configuration's
thread count (before a GPU backend's, on one thread: the host thread that launches its work, whose pace is most
of a small network's step) and compares it with what that step takes there on quiet cores as far as the session has seen
(a low percentile of its probes on as many threads, or on one thread). Slower than :data:`SLOWDOWN_LIMIT` times
that, the cores are taken as shared at that moment: the sweep waits and probes again, a few times, then puts
the configuration back at the end of its queue (``deferrals`` times) and, at its next turn, measures it anyway
and flags it in ``meta.json``'s ``busy`` list if the cores are still shared.

The probe is a step, not a product: a neighbour on the second core doubled the development machine's 2-thread
steps for seconds at a time, which wait at a barrier a few dozen times each, while a 192^3 product on the same
threads, best of five, ran within 1.2x of its fastest (results/dev-2core-63ab435/probes.txt: the step over 1.3x
its fastest in 245 of 2571 probes, the product in 21 of those); a product was the probe before, and took the
slow starts of that machine's sweeps for quiet cores.

A session that starts on shared cores sets its baseline from slow probes and flags nothing at first. So at the
end of a session every CPU measurement is judged again against the probes of the whole session
(:meth:`NeighbourCheck.slowdown_against_session`), and those whose probes, before and after them, were both
slower than the limit are timed again then (``retimes``), as are those flagged as they were measured; a unit
stays flagged only if the cores are shared still.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlpbench.checks import BackendUnavailable
from mlpbench.timing import time_call

#: A probe this much slower than its baseline on as many threads means other work shares the cores.
SLOWDOWN_LIMIT = 1.3
#: The probe: the median of PROBE_STEPS training steps of the C library's OpenMP backend on this network and
#: batch (about a millisecond on one core: long enough to be compute, with a barrier per product), after
#: PROBE_WARMUP untimed steps.
PROBE_NETWORK = "moons-5h300"
PROBE_BATCH = 32
PROBE_STEPS = 20
PROBE_WARMUP = 3
#: A probe is compared with this percentile of the session's probes on as many threads, not with their fastest:
#: on the H200 host's cores the step probe's fastest ran 1.5-1.6x faster than its median on 2-8 threads, over the
#: limit in 91-99.6 % of probes (results/h200-step-probe), a rare placement of the threads, not quiet cores.
BASELINE_PERCENTILE = 10
#: After a measurement, a slow probe is taken again this many times, this far apart, before it counts.
AFTER_PAUSES = 2
AFTER_PAUSE_S = 0.25


def step_probe() -> Callable[[int], float] | None:
    """Seconds of one ``c-omp`` training step of PROBE_NETWORK at PROBE_BATCH on ``threads`` threads (the
    median of PROBE_STEPS); ``None`` where the OpenMP library is not built."""
    from mlpbench.backends import load
    from mlpbench.network import PRESETS
    from mlpbench.verify import random_batch

    network = PRESETS[PROBE_NETWORK]
    X, y = random_batch(network, PROBE_BATCH, np.random.default_rng(0))
    models: dict[int, Any] = {}

    def model_on(threads: int) -> Any:
        if threads not in models:
            model = load("c-omp", network, seed=0, threads=threads)
            models[threads] = (model, model.prepare(X, y))
        return models[threads]

    try:
        model_on(1)
    except BackendUnavailable:  # the library is not built: nothing to probe with
        return None

    def probe(threads: int) -> float:
        model, batch = model_on(threads)
        # A learning rate of zero: every probe steps the same weights.
        return time_call(lambda: model.train_step(batch, 0.0), repeats=PROBE_STEPS, warmup=PROBE_WARMUP).median

    return probe


class NeighbourCheck:
    """Probes the cores around a CPU measurement: before it, waiting up to ``wait_s`` seconds (a probe every
    ``pause_s``) while the probe on its thread count runs slower than SLOWDOWN_LIMIT times its baseline in this
    session (:meth:`baseline`); after it, once. ``probe(threads)`` returns seconds; ``sleep`` is
    :func:`time.sleep` (tests pass fakes)."""

    def __init__(self, probe: Callable[[int], float] | None, wait_s: float = 12.0, pause_s: float = 1.0,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.probe, self.wait_s, self.pause_s, self.sleep = probe, wait_s, pause_s, sleep
        self.probes: dict[int, list[float]] = {}  # every probe's seconds so far, per thread count
        self.last_seconds: float | None = None  # the latest probe's time, as before() or after() left it

    def _probe(self, threads: int) -> float:
        seconds = self.probe(threads)
        self.probes.setdefault(threads, []).append(seconds)
        self.last_seconds = seconds
        return seconds

    def baseline(self, threads: int) -> float:
        """What the probe takes on ``threads`` threads on quiet cores, as far as this session has seen: the
        BASELINE_PERCENTILE-th percentile of its probes there (their fastest while there are ten or fewer)."""
        return float(np.percentile(self.probes[threads], BASELINE_PERCENTILE, method="lower"))

    def _slowdown(self, threads: int) -> float:
        """The probe over its baseline on as many threads, or on one thread if that is lower: several threads
        slower than one mean some of them waited, even when this session never saw them quiet."""
        if 1 not in self.probes:
            self._probe(1)
        return self.slowdown_against_session(self._probe(threads), threads)

    def slowdown_against_session(self, seconds: float, threads: int) -> float:
        """A probe of ``seconds`` on ``threads`` threads over the baseline of the probes this session has taken
        so far, on as many threads or on one (called at the end of a session: against the whole session's)."""
        return seconds / min(self.baseline(threads), self.baseline(1))

    def before(self, threads: int) -> float | None:
        """The probe's time over its baseline on ``threads`` threads so far (1.0: as fast as usual) once it is
        within SLOWDOWN_LIMIT or the wait is over; ``None`` without a probe."""
        if self.probe is None:
            return None
        ratio, waited = self._slowdown(threads), 0.0
        while ratio > SLOWDOWN_LIMIT and waited + self.pause_s <= self.wait_s:
            self.sleep(self.pause_s)
            waited += self.pause_s
            ratio = self._slowdown(threads)
        return ratio

    def after(self, threads: int) -> float | None:
        """The probe right after the measurement, which the cores' sharing may have slowed too. Thread pools
        the measurement woke may spin for a while yet (OpenBLAS's for about 0.1 s) and slow the first probe
        themselves, so a slow probe is repeated AFTER_PAUSES times, AFTER_PAUSE_S apart, before it counts."""
        if self.probe is None:
            return None
        ratio = self._slowdown(threads)
        for _ in range(AFTER_PAUSES):
            if ratio <= SLOWDOWN_LIMIT:
                break
            self.sleep(AFTER_PAUSE_S)
            ratio = self._slowdown(threads)
        return ratio


@dataclass(frozen=True)
class ProbeSite:
    """Where the probe runs around a unit: on ``threads`` threads, and whether they stand for the one host
    thread that launches a GPU backend's work (``launcher``)."""

    threads: int
    launcher: bool = False


def neighbour_entry(key: str, slowdown: float | None, site: ProbeSite | None, cores: int,
                    at_session_end: bool = False) -> dict[str, Any] | None:
    """What ``meta.json`` records of a unit measured while the probe said the cores were shared; ``None`` if
    they were not (or were not probed: no ``site``). ``at_session_end``: judged against the whole session's
    probes, after it."""
    if site is None or slowdown is None or slowdown <= SLOWDOWN_LIMIT:
        return None
    when = ("before and after it, judged at the end of the session against all of its probes"
            if at_session_end else "after waiting")
    where = (f"on {site.threads} thread{'s' if site.threads != 1 else ''}"
             + (", the host's pace for the thread that launches the GPU's work" if site.launcher else ""))
    return {"key": key, "threads": site.threads, "cores": cores, "probe_slowdown": round(slowdown, 3),
            "launcher": site.launcher,
            "reason": f"the cores were shared with work outside this machine's load average: a fixed training "
                      f"step ran {slowdown:.2f}x slower than usual {where}, {when}"}
