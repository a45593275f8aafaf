"""The probe that flags measurements taken while other work shared the cores, which the load average of a
VM cannot see: its waiting, its baseline, what the run records (around CPU units, and around GPU units on their
launching thread), and the real probe on the C library."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.load import load_run
from mlpbench.backends import REGISTRY
from mlpbench.backends.numpy_ref import NumpyModel
from mlpbench.sweep import make_params, neighbours, run
from mlpbench.sweep.neighbours import SLOWDOWN_LIMIT, NeighbourCheck, ProbeSite, neighbour_entry, step_probe


class FakeProbe:
    """Seconds per call from a script: ``times[threads]`` is consumed in order, the last value repeating."""

    def __init__(self, times: dict[int, list[float]]) -> None:
        self.times = {threads: list(values) for threads, values in times.items()}
        self.calls: list[int] = []

    def __call__(self, threads: int) -> float:
        self.calls.append(threads)
        values = self.times[threads]
        return values.pop(0) if len(values) > 1 else values[0]


def test_quiet_cores_are_measured_at_once():
    slept = []
    check = NeighbourCheck(FakeProbe({1: [1.0], 2: [0.5]}), wait_s=10, pause_s=1, sleep=slept.append)
    assert check.before(2) == 1.0 and slept == []


def test_shared_cores_are_waited_for_until_quiet():
    slept = []
    probe = FakeProbe({1: [1.0], 2: [0.5, 30.0, 30.0, 0.6]})
    check = NeighbourCheck(probe, wait_s=10, pause_s=1, sleep=slept.append)
    assert check.before(2) == 1.0   # the first probe sets the baseline
    assert check.before(2) == pytest.approx(1.2)  # 30 s twice, then quiet
    assert slept == [1, 1]


def test_the_wait_is_bounded_and_a_slow_start_is_caught_by_the_one_thread_baseline():
    slept = []
    # The very first two-thread probe is already slow: never seen quiet, but slower than one thread.
    check = NeighbourCheck(FakeProbe({1: [1.0], 2: [40.0]}), wait_s=3, pause_s=1, sleep=slept.append)
    ratio = check.before(2)
    assert ratio == 40.0 and slept == [1, 1, 1]
    entry = neighbour_entry("rows:x", ratio, ProbeSite(2), cores=2)
    assert entry["key"] == "rows:x" and entry["probe_slowdown"] == 40.0 and "shared" in entry["reason"]
    assert "on 2 threads, after waiting" in entry["reason"] and not entry["launcher"]
    assert neighbour_entry("rows:x", SLOWDOWN_LIMIT, ProbeSite(2), cores=2) is None
    assert neighbour_entry("rows:x", None, ProbeSite(2), cores=2) is None


def test_a_rare_fast_probe_is_not_the_baseline():
    # As on the H200 host: one lucky placement of the threads runs the probe at half its usual time; the usual
    # time must not then read as shared cores, while twice the usual still does.
    usual = [1.0] * 30
    check = NeighbourCheck(FakeProbe({1: [2.0], 2: [0.5, *usual, 1.2, 2.0]}), wait_s=0)
    for _ in range(31):
        check.before(2)
    assert check.baseline(2) == 1.0
    assert check.before(2) == pytest.approx(1.2)
    assert check.before(2) == pytest.approx(2.0) and check.before(2) > SLOWDOWN_LIMIT


def test_after_a_measurement_a_pool_still_spinning_is_not_a_neighbour():
    slept = []
    check = NeighbourCheck(FakeProbe({1: [1.0], 2: [0.5, 0.5, 20.0, 0.55]}), wait_s=0, sleep=slept.append)
    check.before(2)
    assert check.after(2) == 1.0            # quiet
    assert check.after(2) == pytest.approx(1.1)  # slow once, quiet after a pause
    assert slept == [neighbours.AFTER_PAUSE_S]


def test_without_a_probe_nothing_is_checked():
    check = NeighbourCheck(None)
    assert check.before(2) is None and check.after(2) is None


def test_the_real_probe_times_a_step_of_the_c_library(monkeypatch):
    from mlpbench.backends.native_c import OpenMPCModel

    steps = []
    step = OpenMPCModel.train_step
    monkeypatch.setattr(OpenMPCModel, "train_step",
                        lambda self, *a, **k: steps.append(self.threads) or step(self, *a, **k))
    probe = step_probe()
    assert probe is not None
    one, two = probe(1), probe(2)
    assert 0 < one < 1 and 0 < two < 1
    # each probe: its warm-up and timed steps on its own thread count, the models kept for the next probe
    per_probe = neighbours.PROBE_WARMUP + neighbours.PROBE_STEPS
    assert steps[-2 * per_probe:] == [1] * per_probe + [2] * per_probe


def test_a_run_flags_units_measured_on_shared_cores(tmp_path, monkeypatch):
    # Every probe on two threads is 50x slower than on one: every two-thread CPU unit is flagged, the
    # one-thread ones are not, and the run does not wait (the quick preset's neighbour_wait_s is 0).
    monkeypatch.setattr("mlpbench.sweep.runner.step_probe", lambda: FakeProbe({1: [1.0], 2: [50.0]}))
    run_dir = run("quick", results_dir=tmp_path, run_id="r", progress=False, backends=("c-serial", "c-omp"),
                  studies=("stages",), networks=("digits:32",), threads=(1, 2))
    busy = json.loads((run_dir / "meta.json").read_text())["busy"]
    flagged = {entry["key"] for entry in busy if "probe_slowdown" in entry}
    assert flagged == {"rows:stages/c-omp/digits/b32/t2"}


@pytest.mark.parametrize("deferrals", [1, 0])
def test_a_unit_on_shared_cores_goes_to_the_end_of_the_queue(tmp_path, monkeypatch, deferrals):
    # The first two-thread probe finds the cores shared (50x), every later one quiet: with a deferral the unit
    # is measured after the others, on quiet cores, and not flagged; without one it is measured at once, flagged.
    monkeypatch.setattr("mlpbench.sweep.runner.step_probe", lambda: FakeProbe({1: [1.0], 2: [50.0, 0.5]}))
    run_dir = run("quick", results_dir=tmp_path, run_id="r", progress=False, backends=("c-serial", "c-omp"),
                  studies=("stages",), networks=("digits:32", "2-8-1:4"), threads=(1, 2), deferrals=deferrals,
                  retimes=0)
    meta = json.loads((run_dir / "meta.json").read_text())
    first = "rows:stages/c-omp/digits/b32/t2"
    flagged = {entry["key"] for entry in meta["busy"] if "probe_slowdown" in entry}
    rows = pd.read_csv(run_dir / "rows.csv")
    last = rows.key.iloc[-1]  # the table's blocks are in the order the units were measured
    assert (rows[rows.key == first[len("rows:"):]].status == "ok").all()
    if deferrals:
        assert meta["sessions"][-1]["deferred"] == [first] and flagged == set()
        assert last == first[len("rows:"):]
    else:
        assert "deferred" not in meta["sessions"][-1] and flagged == {first}
        assert last != first[len("rows:"):]


def test_a_unit_flagged_as_it_was_measured_is_timed_again_at_the_session_end(tmp_path, monkeypatch):
    # Not deferred, measured on shared cores (50x) and flagged; at the session's end, the cores quiet (0.5 s),
    # it is timed again, its new rows replace the first ones and its busy entry goes to the session's retimed.
    monkeypatch.setattr("mlpbench.sweep.runner.step_probe", lambda: FakeProbe({1: [1.0], 2: [50.0, 0.5]}))
    run_dir = run("quick", results_dir=tmp_path, run_id="r", progress=False, backends=("c-serial", "c-omp"),
                  studies=("stages",), networks=("digits:32", "2-8-1:4"), threads=(1, 2), deferrals=0)
    meta = json.loads((run_dir / "meta.json").read_text())
    first = "rows:stages/c-omp/digits/b32/t2"
    assert not [entry for entry in meta["busy"] if "probe_slowdown" in entry]
    (again,) = meta["sessions"][-1]["retimed"]
    assert again["key"] == first and "after waiting" in again["first"]["reason"]
    key = first[len("rows:"):]
    written, read = pd.read_csv(run_dir / "rows.csv"), load_run(run_dir).rows
    assert written.key.iloc[-1] == key  # timed again last
    assert (written.key == key).sum() == 2 * (read.key == key).sum() > 0  # both timings kept, the second read


def test_the_session_baseline_judges_every_unit_again_at_its_end():
    # A session that starts on shared cores: the two-thread probe runs 0.8 s (faster than one thread, so
    # nothing flags then), later 0.5 s; judged against the session's fastest, 0.8 is 1.6x.
    check = NeighbourCheck(FakeProbe({1: [1.0], 2: [0.8, 0.8, 0.5]}), wait_s=0, sleep=lambda s: None)
    assert check.before(2) == 1.0 and check.last_seconds == 0.8
    assert check.after(2) == 1.0
    assert check.before(2) == 1.0 and check.last_seconds == 0.5
    assert check.slowdown_against_session(0.8, 2) == pytest.approx(1.6)
    entry = neighbour_entry("rows:x", 1.6, ProbeSite(2), cores=2, at_session_end=True)
    assert "judged at the end of the session" in entry["reason"]


def test_a_run_that_starts_on_shared_cores_flags_its_first_units_at_the_end(tmp_path, monkeypatch):
    # The first network's two-thread unit is probed at 0.8 s before and after it, the second's at 0.8 s before
    # and 0.5 s after (the neighbour left during it), the third's at 0.5 s: at the end of the session only the
    # first is flagged against the later baseline.
    # (Not timed again: retimes=0; the next test times it again.)
    monkeypatch.setattr("mlpbench.sweep.runner.step_probe",
                        lambda: FakeProbe({1: [1.0], 2: [0.8, 0.8, 0.8, 0.5]}))
    run_dir = run("quick", results_dir=tmp_path, run_id="r", progress=False, backends=("c-serial", "c-omp"),
                  studies=("stages",), networks=("digits:32", "2-8-1:4", "2-16-1:8"), threads=(1, 2), retimes=0)
    meta = json.loads((run_dir / "meta.json").read_text())
    late = {entry["key"]: entry for entry in meta["busy"] if "judged at the end" in entry.get("reason", "")}
    assert set(late) == {"rows:stages/c-omp/digits/b32/t2"}
    assert all(entry["probe_slowdown"] == pytest.approx(1.6) for entry in late.values())
    assert "retimed" not in meta["sessions"][-1]


def test_a_unit_flagged_at_the_session_end_is_timed_again_on_quiet_cores(tmp_path, monkeypatch):
    # The session begins on shared cores (two-thread probes at 0.8 s around its first two-thread unit, 0.5 s
    # after): at its end that unit is timed again, the probes quiet, and its new rows replace the first ones
    # in what the analysis reads, for the threads study's copy of the same measurement too; rows.csv keeps both
    # timings, and nothing is flagged.
    monkeypatch.setattr("mlpbench.sweep.runner.step_probe", lambda: FakeProbe({1: [1.0], 2: [0.8, 0.8, 0.5]}))
    run_dir = run("quick", results_dir=tmp_path, run_id="r", progress=False, backends=("c-serial", "c-omp"),
                  studies=("stages", "threads"), networks=("digits:32", "2-8-1:4"), thread_networks=("digits:32",),
                  threads=(1, 2), thread_rounds=1)
    meta = json.loads((run_dir / "meta.json").read_text())
    key = "stages/c-omp/digits/b32/t2"
    assert [entry["key"] for entry in meta["sessions"][-1]["retimed"]] == [f"rows:{key}"]
    assert meta["sessions"][-1]["retimed"][0]["first"]["probe_slowdown"] == pytest.approx(1.6)
    assert not [entry for entry in meta["busy"] if "probe_slowdown" in entry]
    written = pd.read_csv(run_dir / "rows.csv")
    first, again = (group for _, group in written[written.key == key].groupby((written.key != written.key.shift())
                                                                             .cumsum()))
    read = load_run(run_dir).rows
    kept = read[read.key == key].set_index("stage").median_s
    assert kept.equals(again.set_index("stage").median_s) and not kept.equals(first.set_index("stage").median_s)
    copy = read[read.reused_from == key].set_index("stage").median_s
    assert len(copy) and copy.equals(kept)


def test_the_cpu_ladder_is_probed_as_a_cpu_unit(tmp_path, monkeypatch):
    # The CPU's products run on every usable core: a probe slower there than on one core flags the CPU ladder,
    # and the GPU ladder, which no CPU backend times, is never probed.
    monkeypatch.setattr("mlpbench.sweep.runner.step_probe",
                        lambda: FakeProbe({1: [1.0], **{t: [50.0] for t in range(2, 257)}}))
    run_dir = run("quick", results_dir=tmp_path, run_id="r", progress=False, backends=("c-serial",),
                  studies=("ladder",), networks=("digits:32",))
    busy = json.loads((run_dir / "meta.json").read_text())["busy"]
    flagged = {entry["key"] for entry in busy if "probe_slowdown" in entry}
    if make_params("quick").max_threads > 1:
        assert flagged == {"ladder:cpu"}
    else:  # one core: nothing to compare a shared core with
        assert flagged == set()



class ToyAcceleratorModel(NumpyModel):
    """A backend declared on a device other than the CPU (computing with NumPy): what the sweep does around a
    GPU backend's units, on a machine without one."""

    name = "toy-accelerator"
    family = "toy"
    device = "toy-accelerator"


@pytest.mark.parametrize("present", [True, False], ids=["gpu", "no-gpu"])
def test_a_gpu_unit_is_probed_on_its_launching_thread_where_a_gpu_is_present(tmp_path, monkeypatch, present):
    # One host thread launches a GPU backend's work, and on the small networks its pace is most of a step: the
    # one-thread probe runs around the unit, and a slow one flags it as timed while that thread's core was
    # shared. Without a GPU, the GPU backends' units are skipped, and nothing is probed around them.
    monkeypatch.setitem(REGISTRY, "toy-accelerator", (__name__, "ToyAcceleratorModel"))
    monkeypatch.setattr("mlpbench.sweep.runner.gpu_present", lambda: present)
    probe = FakeProbe({1: [1.0, 50.0]})
    monkeypatch.setattr("mlpbench.sweep.runner.step_probe", lambda: probe)
    run_dir = run("quick", results_dir=tmp_path, run_id="r", progress=False, backends=("toy-accelerator",),
                  studies=("stages",), networks=("digits:32",))
    busy = [entry for entry in json.loads((run_dir / "meta.json").read_text())["busy"] if "probe_slowdown" in entry]
    if present:
        assert set(probe.calls) == {1}
        (entry,) = busy
        assert entry["key"].startswith("rows:stages/toy-accelerator/digits/b32") and entry["threads"] == 1
        assert entry["launcher"] and "on 1 thread, the host's pace for the thread that launches the GPU's work" in (
            entry["reason"])
    else:
        assert probe.calls == [] and busy == []
