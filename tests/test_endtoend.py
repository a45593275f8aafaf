"""End-to-end training with the data set resident where the backend computes, and the sweep's parts around it:
the end-to-end and ranks studies' plans, busy-machine detection, the command line."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from mlpbench import data, training
from mlpbench.backends import load
from mlpbench.network import Network
from mlpbench.sweep import ENDTOEND_COLUMNS, cli, make_params
from mlpbench.sweep.endtoend import endtoend_rows
from mlpbench.sweep.params import HELP, SweepParams
from mlpbench.sweep.ranks import rank_counts, rank_jobs
from mlpbench.sweep.runner import BUSY_LOAD_MARGIN, busy_entry

CPU = ("numpy", "c-serial", "c-omp", "torch-cpu")
SMALL = Network((2, 12, 8, 1), "tanh", "sigmoid-bce")
TASK = training.Task("small", "moons", SMALL, batch=32, lr=0.1, weight_decay=1e-3, epochs=2, target_accuracy=0.9,
                     stop_at_target=False)


def options(backend):
    return {"threads": 2} if backend in ("c-omp", "torch-cpu") else {}


@pytest.mark.parametrize("backend", CPU)
def test_resident_training_equals_steps_on_the_same_shuffled_batches(backend):
    moons = data.moons()
    run = training.train_resident(lambda: load(backend, SMALL, seed=4, **options(backend)), moons, TASK, seed=9)
    # The same epochs by hand: each epoch's permutation from the same generator, full batches only.
    model = load(backend, SMALL, seed=4, **options(backend))
    rng = np.random.Generator(np.random.PCG64(9))
    for _ in range(TASK.epochs):
        order = rng.permutation(len(moons.X_train))
        for start in range(0, len(order) - TASK.batch + 1, TASK.batch):
            index = order[start:start + TASK.batch]
            model.step(moons.X_train[index], moons.y_train[index], TASK.lr, TASK.weight_decay)
    for (w, b), (rw, rb) in zip(run.params, model.params(), strict=True):
        np.testing.assert_allclose(w, rw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, rb, rtol=1e-5, atol=1e-6)
    assert [epoch.epoch for epoch in run.epochs] == [1, 2]
    assert 0 < run.epochs[0].seconds < run.epochs[1].seconds
    _loss, accuracy = training.evaluate(SMALL, run.params, moons.X_test, moons.y_test)
    assert accuracy == run.epochs[-1].test_accuracy


def test_training_stops_at_the_target_when_asked():
    task = dataclasses.replace(TASK, epochs=30, target_accuracy=0.8, stop_at_target=True)
    run = training.train_resident(lambda: load("c-serial", SMALL, seed=4), data.moons(), task)
    accuracies = [epoch.test_accuracy for epoch in run.epochs]
    assert accuracies[-1] >= 0.8 and all(a < 0.8 for a in accuracies[:-1])


def test_repeated_runs_time_the_same_epochs_and_end_where_the_first_did():
    task = dataclasses.replace(TASK, epochs=30, target_accuracy=0.8, stop_at_target=True)
    run = training.train_resident(lambda: load("c-serial", SMALL, seed=4), data.moons(), task, repeats=3)
    assert len(run.repeats) == 2
    for again in run.repeats:
        # as many epochs as the first run took to reach the target, each timed, evaluated after the last only
        assert [e.epoch for e in again] == [e.epoch for e in run.epochs]
        assert all(0 < a.seconds < b.seconds for a, b in itertools.pairwise(again))
        assert all(np.isnan(e.train_loss) and np.isnan(e.test_accuracy) for e in again[:-1])
        # the same batches from the same start on a deterministic backend: the same loss and accuracy
        assert again[-1].train_loss == run.epochs[-1].train_loss
        assert again[-1].test_accuracy == run.epochs[-1].test_accuracy
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="repeats"):
            training.train_resident(lambda: load("c-serial", SMALL, seed=4), data.moons(), task, repeats=bad)


def test_the_end_to_end_study_writes_every_timed_run():
    params = make_params("quick", task_repeats=2, task_epochs=2)
    rows = endtoend_rows("moons-tanh", "c-serial", params)
    assert {row["status"] for row in rows} == {"ok"}
    assert [(row["repeat"], row["epoch"]) for row in rows] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert set(rows[0]) <= set(ENDTOEND_COLUMNS)
    with pytest.raises(ValueError, match="task_repeats"):
        make_params("quick", task_repeats=0)


def test_the_original_benchmark_is_specified_as_the_study_ran_it():
    task = training.TASKS["moons-original"]
    assert task.network.sizes == (2, 300, 300, 300, 300, 300, 300, 1) and task.network.activation == "sigmoid"
    assert (task.batch, task.lr, task.weight_decay, task.epochs, task.dataset) == (32, 0.3, 1e-3, 100, "moons")
    assert training.TASKS["moons-tanh"].network.sizes == task.network.sizes


def test_a_batch_gathers_rows_on_its_device_and_rejects_bad_indices():
    model = load("c-serial", SMALL)
    moons = data.moons()
    full = model.prepare(moons.X_train, moons.y_train)
    order = np.arange(full.size)[::-1]
    gathered = full.take(order)
    np.testing.assert_array_equal(gathered.X, moons.X_train[::-1])
    assert not gathered.X.flags.writeable
    model.forward(gathered.rows(0, 32))  # a gathered batch is computed on like a prepared one
    for bad in ([], [[0, 1]], [full.size], [-1], [0.5]):
        with pytest.raises(ValueError, match="indices"):
            full.take(np.asarray(bad))


def test_busy_machine_is_detected_from_the_load_around_a_unit():
    quiet = [{"load_before": 1.9, "load_1min": 2.0, "threads": 2}]
    assert busy_entry("rows:x", quiet, cores=2) is None
    busy = [{"load_before": 2.0, "load_after": 2 + BUSY_LOAD_MARGIN + 0.1, "threads": 2}]
    assert busy_entry("ranks:y", busy, cores=2)["key"] == "ranks:y"
    assert busy_entry("rows:z", [{"load_before": "", "load_1min": ""}], cores=2) is None


def test_rank_counts_follow_the_machine_unless_given():
    params = make_params("quick", ranks=(), rank_threads=1)
    counts = rank_counts("c-serial", params)
    assert counts[0] == 1 and all(b == 2 * a for a, b in itertools.pairwise(counts))
    assert make_params("quick", ranks=(3,)).ranks == (3,)
    jobs = rank_jobs(make_params("quick", ranks=(1, 2), scaling=("strong", "weak")), run_dir=None)
    assert [job.identity["world_size"] for job in jobs] == [1, 2, 1, 2]
    assert len({job.key for job in jobs}) == 4  # weak scaling multiplies the global batch: its own key
    # In rounds every configuration comes once a round, world sizes side by side; the first round keeps its key.
    rounds = rank_jobs(make_params("quick", ranks=(1, 2), rank_rounds=3), run_dir=None)
    assert [(job.identity["round"], job.identity["world_size"]) for job in rounds] == [
        (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    assert [job.key for job in rounds[:2]] == [job.key for job in jobs if job.identity["scaling"] == "strong"]
    assert [job.key.rsplit("|", 1)[1] for job in rounds[2:]] == ["round2", "round2", "round3", "round3"]
    with pytest.raises(ValueError, match="rank_rounds"):
        make_params("quick", rank_rounds=0)
    with pytest.raises(ValueError, match="scaling"):
        make_params("quick", scaling=("sideways",))
    with pytest.raises(ValueError, match="unknown backend"):
        make_params("quick", rank_backends=("no-such-backend",))


def test_a_rank_configuration_that_cannot_run_is_recorded_not_raised(tmp_path):
    # 32 rows do not split over 3 ranks: the study records why and the sweep goes on to the next job.
    (job,) = rank_jobs(make_params("quick", ranks=(3,)), run_dir=tmp_path)
    (row,) = job.work()
    assert row["status"] == "failed" and "not divisible by the world size 3" in row["reason"]


def test_every_sweep_parameter_is_an_option_with_its_help_and_default():
    text = cli.parser().format_help()
    for field in dataclasses.fields(SweepParams):
        assert f"--{field.name.replace('_', '-')}" in text
        assert field.name in HELP
    args = cli.parser().parse_args(["--budget-s", "2.5", "--widths", "8,16", "--tasks", "moons-tanh"])
    assert (args.budget_s, args.widths, args.tasks) == (2.5, (8, 16), ("moons-tanh",))
    assert args.repeats is None  # left out: the preset's value


def test_evaluation_runs_blas_on_one_thread(monkeypatch):
    """A multi-threaded BLAS pool spins on after the evaluation and takes the cores from the steps timed next."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from mlpbench.backends.numpy_ref import NumpyModel

    seen = []
    forward = NumpyModel.forward

    def watched(self, batch):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return forward(self, batch)

    monkeypatch.setattr(NumpyModel, "forward", watched)
    moons = data.moons()
    with threadpool_limits(limits=2, user_api="blas"):
        training.evaluate(SMALL, SMALL.init_params(0), moons.X_test, moons.y_test)
    assert seen and set(seen) == {1}


def test_a_model_of_another_network_is_refused_before_any_step():
    other = Network((3, 5, 1), "tanh", "sigmoid-bce")  # moons has 2 features: a step would fail otherwise
    with pytest.raises(ValueError, match="trains network 2-12-8-1"):
        training.train_resident(lambda: load("c-serial", other), data.moons(), TASK)
