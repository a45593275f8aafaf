"""The plan: every timing configuration of a run, with the thread count each backend runs on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlpbench.backends import model_class
from mlpbench.network import PRESETS as NETWORKS
from mlpbench.network import resolve
from mlpbench.sweep.params import SweepParams, split_network
from mlpbench.timing import thread_option


@dataclass(frozen=True)
class Config:
    """One backend on one network, batch size and thread count, in one study."""

    study: str
    backend: str
    network: str
    batch: int
    threads: int | None  # None: not a CPU-threaded backend (GPU)
    #: The threads study's round (0 first): every thread count is timed once a round, so a speed-up over one
    #: thread is read within a round, from minutes when the cores ran alike.
    round: int = 0

    @property
    def key(self) -> str:
        key = f"{self.study}/{self.backend}/{self.network}/b{self.batch}/t{self.threads or '-'}"
        return f"{key}/r{self.round}" if self.round else key  # the first round's keys are those of older runs

    @property
    def measurement(self) -> tuple[str, str, int, int | None, int]:
        """What is measured, whatever the study: configurations of two studies that agree here share rows (a
        later round measures again)."""
        return self.backend, self.network, self.batch, self.threads, self.round

    @classmethod
    def from_key(cls, key: str) -> Config:
        """The configuration a ``rows.csv`` key was made from (inverse of :attr:`key`)."""
        study, backend, network, batch, threads, *rest = key.split("/")
        return cls(study, backend, network, int(batch[1:]), None if threads == "t-" else int(threads[1:]),
                   int(rest[0][1:]) if rest else 0)


def backend_threads(backend: str, params: SweepParams, threads: int | None = None) -> int | None:
    """The thread count a backend runs on, as its class declares: ``None`` (not applicable) on a GPU;
    ``threads`` for a threaded backend when given; a single-threaded build's fixed count; otherwise the
    most threads of the run (the thread pools the harness sets)."""
    cls = model_class(backend)
    if cls.device != "cpu":
        return None
    if cls.threaded and threads is not None:
        return threads
    if cls.fixed_threads is not None:
        return cls.fixed_threads
    return params.max_threads


def backend_options(backend: str, params: SweepParams, threads: int | None) -> dict[str, Any]:
    """What ``load`` gets besides the network: the thread count where the backend takes one, and the compile
    budget of backends that compile each batch size."""
    options: dict[str, Any] = thread_option(backend, threads)
    if model_class(backend).compiles_per_shape:
        options["compile_budget_s"] = params.compile_budget_s
    return options


def width_network(width: int, layers: int) -> str:
    return "-".join([str(width)] * (layers + 1))


def plan(params: SweepParams) -> list[Config]:
    """Every timing configuration of the chosen studies, in run order (study by study)."""
    configs: list[Config] = []

    def add(study: str, network: str, batch: int, backends: Sequence[str] | None = None,
            threads: Sequence[int | None] = (None,), in_round: int = 0) -> None:
        label = network if network in NETWORKS else resolve(network).name  # preset names stay readable
        for backend in params.backends_in(study) if backends is None else backends:
            for count in threads:
                configs.append(Config(study, backend, label, batch, backend_threads(backend, params, count),
                                      in_round))

    studies = set(params.studies)
    if "stages" in studies:
        for spec in params.networks:
            add("stages", *split_network(spec))
    if "threads" in studies:
        threaded = [b for b in params.backends_in("threads") if model_class(b).threaded]
        # The stages study's networks too: every backend compared there has its best thread count measured.
        for spec in dict.fromkeys((*params.thread_networks, *params.networks)):
            add("threads", *split_network(spec), backends=threaded, threads=params.thread_counts)
        # The scaling networks again, round after round: one thread's step moves between minutes on some hosts.
        for later in range(1, params.thread_rounds):
            for spec in params.thread_networks:
                add("threads", *split_network(spec), backends=threaded, threads=params.thread_counts, in_round=later)
    if "batch" in studies:
        for batch in params.batch_sizes:
            add("batch", params.batch_network, batch)
    if "width" in studies:
        for width in params.widths:
            add("width", width_network(width, params.width_layers), params.width_batch)
    return configs
