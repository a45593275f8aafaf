"""The timing harness: statistics, warm-up, rotation, clocks and budgets, on a fake clock and on real models."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from mlpbench import PRESETS, load
from mlpbench.backends.base import Batch, Model, Params
from mlpbench.network import Network
from mlpbench.timing import (
    EPOCH_STEPS,
    STAGES,
    CpuClock,
    OverBudget,
    Stats,
    pinned_threads,
    probe_step,
    stages_for,
    time_call,
    time_in_turn,
    time_stages,
)
from mlpbench.verify import random_batch

NET = Network((4, 3, 2))


class FakeClock:
    """A nanosecond counter that only moves when a stage says so."""

    def __init__(self) -> None:
        self.t = 0

    def now(self) -> int:
        return self.t


class ScriptedModel(Model):
    """Each stage advances the fake clock by the next duration of its script (cycled), and records the
    batch it was given, so the tests know exactly which samples the harness should have taken."""

    name = "scripted"

    def __init__(self, clock: FakeClock, scripts: dict[str, list[int]], first_call_ns: int = 0) -> None:
        super().__init__(NET, NET.init_params())
        self.clock, self.scripts, self.first_call_ns = clock, scripts, first_call_ns
        self.calls = dict.fromkeys(scripts, 0)
        self.seen: list[np.ndarray] = []

    def _advance(self, stage: str) -> None:
        script, count = self.scripts[stage], self.calls[stage]
        self.clock.t += script[count % len(script)] + (self.first_call_ns if count == 0 else 0)
        self.calls[stage] += 1

    def forward(self, batch: Batch) -> None:
        self.seen.append(batch.X)
        self._advance("forward")

    def backprop(self, batch: Batch) -> None:
        self._advance("backprop")

    def update(self, lr: float, weight_decay: float = 0.0) -> None:
        self._advance("update")

    def train_step(self, batch: Batch, lr: float, weight_decay: float = 0.0) -> None:
        self._advance("step")

    def loss(self) -> float:
        return 0.5

    def activations(self) -> list[np.ndarray]:
        return []

    def params(self) -> Params:
        return []

    def grads(self) -> Params:
        return []


def batches(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [random_batch(NET, 5, rng) for _ in range(n)]


def test_stats_of_known_samples() -> None:
    stats = Stats.from_ns([9, 1, 8, 2, 7, 3, 6, 4, 5])
    assert stats.n == 9
    assert stats.median == pytest.approx(5e-9)
    assert stats.q1 == pytest.approx(3e-9)
    assert stats.q3 == pytest.approx(7e-9)
    assert stats.iqr == pytest.approx(4e-9)
    assert stats.min == pytest.approx(1e-9)
    assert stats.mean == pytest.approx(5e-9)
    assert stats.as_dict()["iqr"] == pytest.approx(4e-9)


def test_stats_interpolate_quartiles_and_reject_no_samples() -> None:
    stats = Stats.from_ns([10, 20, 30, 40])
    assert (stats.q1, stats.median, stats.q3) == pytest.approx((17.5e-9, 25e-9, 32.5e-9))
    with pytest.raises(ValueError, match="no samples"):
        Stats.from_ns([])


def test_stage_samples_on_a_fake_clock_exclude_warmup() -> None:
    clock = FakeClock()
    scripts = {"forward": [100, 300, 200, 500], "backprop": [1000, 3000], "update": [7], "step": [40, 10, 20, 30]}
    model = ScriptedModel(clock, scripts, first_call_ns=10**9)
    result = time_stages(model, batches(3), lr=0.1, repeats=8, warmup=2, clock=CpuClock(now=clock.now))
    assert set(result.stats) == {"checks", "forward", "backprop", "update", "step"}
    assert result.repeats == 8
    assert result.stats["checks"].n == 8  # the input checks, on the host clock
    # Two warm-up calls (with the huge first-call cost) come first, then 8 samples of each script, cycled.
    forward = Stats.from_ns([200, 500, 100, 300] * 2)
    assert result.stats["forward"] == forward
    assert result.stats["backprop"] == Stats.from_ns([1000, 3000] * 4)
    assert result.stats["update"].median == pytest.approx(7e-9)
    assert result.stats["update"].iqr == 0
    assert result.stats["step"] == Stats.from_ns([20, 30, 40, 10] * 2)
    assert result.stats["forward"].min < 1e-6  # the first call's cost stayed in the warm-up
    assert result.loss_after == 0.5


def test_inputs_rotate_in_order_and_are_never_zero() -> None:
    clock = FakeClock()
    inputs = batches(3)
    model = ScriptedModel(clock, {s: [1] for s in ("forward", "backprop", "update", "step")})
    time_stages(model, inputs, lr=0.1, repeats=7, warmup=1, clock=CpuClock(now=clock.now))
    expected = [inputs[i % 3][0] for i in range(8)]
    assert len(model.seen) == 8
    for seen, X in zip(model.seen, expected, strict=True):
        np.testing.assert_array_equal(seen, X)
        assert np.abs(seen).min() > 0


def test_budget_trims_repeats_but_keeps_the_minimum() -> None:
    clock = FakeClock()
    # One pass (forward + backprop + update + step) costs 1 ms of fake time.
    model = ScriptedModel(clock, {"forward": [250_000], "backprop": [250_000], "update": [250_000],
                                  "step": [250_000]})
    fit = time_stages(model, batches(1), lr=0.1, repeats=100, warmup=1, budget_s=0.010,
                      clock=CpuClock(now=clock.now))
    assert fit.repeats == 10
    assert all(stats.n == 10 for stats in fit.stats.values())
    floor = time_stages(model, batches(1), lr=0.1, repeats=100, warmup=1, min_repeats=4, budget_s=0.004,
                        clock=CpuClock(now=clock.now))
    assert floor.repeats == 4
    before = dict(model.calls)
    with pytest.raises(OverBudget, match=r"took 0\.001 s"):
        time_stages(model, batches(1), lr=0.1, repeats=100, warmup=1, min_repeats=5, budget_s=0.004,
                    clock=CpuClock(now=clock.now))
    assert all(model.calls[stage] == before[stage] + 1 for stage in before)  # the warm-up pass only


def test_bad_arguments_are_refused() -> None:
    model = ScriptedModel(FakeClock(), {s: [1] for s in ("forward", "backprop", "update", "step")})
    with pytest.raises(ValueError, match="repeats"):
        time_stages(model, batches(1), lr=0.1, repeats=0)
    with pytest.raises(ValueError, match="input batch"):
        time_stages(model, [], lr=0.1)


def test_transfer_is_a_stage_of_gpu_models_only() -> None:
    model = load("numpy", NET)
    assert stages_for(model) == ("checks", "forward", "backprop", "update", "step")
    assert "transfer" in STAGES


class ScriptedStepsModel(ScriptedModel):
    """A scripted model that runs many steps per call (``fuses_steps``): a ``train_steps`` call advances the
    clock by its script's next duration and records the batch and step size it was given."""

    name = "scripted-steps"

    def __init__(self, clock: FakeClock, scripts: dict[str, list[int]]) -> None:
        super().__init__(clock, scripts)
        self.epochs_seen: list[tuple[np.ndarray, int]] = []

    def train_steps(self, batches: Batch, batch_size: int, lr: float, weight_decay: float = 0.0) -> None:
        self.epochs_seen.append((batches.X, batch_size))
        self._advance("steps")


def test_epoch_step_is_timed_per_step_on_models_that_fuse_steps() -> None:
    clock = FakeClock()
    inputs = batches(3)
    model = ScriptedStepsModel(clock, {"forward": [1], "backprop": [1], "update": [1], "step": [10],
                                       "steps": [EPOCH_STEPS * 4, EPOCH_STEPS * 2]})
    assert stages_for(model)[-1] == "epoch_step"
    result = time_stages(model, inputs, lr=0.1, repeats=4, warmup=1, clock=CpuClock(now=clock.now))
    assert result.stats["epoch_step"] == Stats.from_ns([2, 4, 2, 4])  # per step: the call over EPOCH_STEPS
    rows, batch_size = model.epochs_seen[0]
    assert batch_size == 5  # the stages' batch size, EPOCH_STEPS of them in one call over the inputs in turn
    np.testing.assert_array_equal(rows, np.concatenate([inputs[i % 3][0] for i in range(EPOCH_STEPS)]))
    assert "epoch_step" not in stages_for(load("numpy", NET))  # one call per step: nothing to add


def test_the_epoch_step_count_is_an_argument() -> None:
    clock = FakeClock()
    inputs = batches(2)
    model = ScriptedStepsModel(clock, {"forward": [1], "backprop": [1], "update": [1], "step": [10],
                                       "steps": [30, 60]})
    result = time_stages(model, inputs, lr=0.1, repeats=2, warmup=1, epoch_steps=6, clock=CpuClock(now=clock.now))
    assert result.stats["epoch_step"] == Stats.from_ns([10, 5])  # each call over its 6 steps
    rows, _ = model.epochs_seen[0]
    np.testing.assert_array_equal(rows, np.concatenate([inputs[i % 2][0] for i in range(6)]))
    with pytest.raises(ValueError, match="epoch_steps >= 1"):
        time_stages(model, inputs, lr=0.1, epoch_steps=0)


class SleepingModel(ScriptedModel):
    """A real clock and real sleeps: forward sleeps 2 ms."""

    def forward(self, batch: Batch) -> None:
        time.sleep(0.002)


def test_cpu_clock_measures_a_known_sleep() -> None:
    model = SleepingModel(FakeClock(), {s: [0] for s in ("forward", "backprop", "update", "step")})
    result = time_stages(model, batches(2), lr=0.1, repeats=5, warmup=1)
    assert result.stats["forward"].min >= 0.002
    assert result.stats["forward"].median > result.stats["update"].median


def test_real_backend_is_timed_and_stays_finite() -> None:
    net = PRESETS["digits"]
    rng = np.random.default_rng(0)
    model = load("numpy", net)
    result = time_stages(model, [random_batch(net, 16, rng) for _ in range(2)], lr=0.01, repeats=3, warmup=1)
    assert all(stats.n == 3 and stats.median > 0 for stats in result.stats.values())
    assert np.isfinite(result.loss_after)
    assert probe_step(model, *random_batch(net, 8, rng), lr=0.01) > 0


def test_time_call_on_a_fake_clock() -> None:
    clock = FakeClock()
    durations = iter([999, 5, 15, 10])

    def call() -> None:
        clock.t += next(durations)

    stats = time_call(call, repeats=3, warmup=1, clock=CpuClock(now=clock.now))
    assert stats == Stats.from_ns([5, 15, 10])


def test_time_in_turn_gives_each_callable_a_turn_per_round() -> None:
    # Each turn is one untimed call, then one sample. A slow spell of the machine during the second round
    # reaches every callable alike; one that fails in its second turn is reported with its exception and the
    # others keep their five samples.
    clock = FakeClock()
    order: list[str] = []
    spell = iter([1] * 6 + [9] * 6 + [1] * 40)  # round 1 (a warm-up and a sample each), round 2 slow, ...
    calls = {"a": 0, "b": 0, "c": 0}

    def product(name: str, ns: int) -> None:
        calls[name] += 1
        order.append(name)
        clock.t += ns * next(spell)
        if name == "c" and calls[name] == 4:  # the sample of its second turn
            raise FloatingPointError("the product went wrong")

    result = time_in_turn({"a": lambda: product("a", 10), "b": lambda: product("b", 20),
                           "c": lambda: product("c", 30)}, repeats=5, warmup=1, clock=CpuClock(now=clock.now))
    assert order == ["a", "a", "b", "b", "c", "c"] * 2 + ["a", "a", "b", "b"] * 3
    assert result["a"] == Stats.from_ns([10, 90, 10, 10, 10])
    assert result["b"] == Stats.from_ns([20, 180, 20, 20, 20])
    assert isinstance(result["c"], FloatingPointError)


def test_time_in_turn_pauses_before_every_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pause lets another runtime's spinning threads sleep before the next callable's turn.
    events: list[object] = []
    monkeypatch.setattr("mlpbench.timing.time.sleep", lambda seconds: events.append(seconds))
    time_in_turn({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, repeats=2, warmup=0,
                 settle_s=0.2)
    assert events == [0.2, "a", 0.2, "b"] * 2


def test_pinned_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    with pinned_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.gpu
def test_cuda_events_measure_device_time() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch")
    from mlpbench.timing import CudaEventClock

    clock = CudaEventClock()
    rate = torch.cuda.get_device_properties(0).clock_rate * 1e3  # kHz -> cycles per second
    ns = clock.measure(lambda: torch.cuda._sleep(int(rate * 0.002)))
    assert ns >= 1.5e6  # a 2 ms spin on the device, timed on the device


@pytest.mark.gpu
def test_cuda_events_device_only_leaves_out_the_hosts_time() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch")
    from mlpbench.timing import CudaEventClock

    def host_then_device() -> None:
        time.sleep(0.004)  # host time before the work is queued: longer than the first spin
        torch.cuda._sleep(1)  # a kernel of a few microseconds

    assert CudaEventClock().measure(host_then_device) >= 4e6
    assert 0 < CudaEventClock(device_only=True).measure(host_then_device) < 1e6
