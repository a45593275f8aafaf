"""The sweep: plan, crash-safe tables, checks before timing, failures recorded, resume, SIGKILL, metadata."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.load import read_table
from mlpbench import machine
from mlpbench.backends import BACKENDS, GPU_BACKENDS, model_class
from mlpbench.network import resolve
from mlpbench.sweep import (
    LADDER_COLUMNS,
    PRESETS,
    ROW_COLUMNS,
    TRAINING_COLUMNS,
    BlockTable,
    Config,
    default_thread_counts,
    make_params,
    plan,
    run,
    split_network,
)

CPU_STAGES = {"checks", "forward", "backprop", "update", "step"}
GPU_STAGES = CPU_STAGES | {"transfer"}  # where a GPU is usable, torch-gpu also times the host-to-device copy
# The quick preset, on the CPU backends plus one GPU backend (skipped with its reason where no GPU is usable).
BACKENDS_UNDER_TEST = ["numpy", "c-serial", "c-omp", "torch-cpu", "torch-gpu"]


def read_rows(run_dir: Path) -> pd.DataFrame:
    """The rows as the analysis reads them: where the sweep timed a configuration again (its first timing on
    shared cores, as the probe can find this machine's), its later block."""
    return read_table(run_dir / "rows.csv")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("results")
    return run("quick", results_dir=results, run_id="quick", progress=False, backends=BACKENDS_UNDER_TEST)


# --- plan and parameters -----------------------------------------------------------------------------------

def test_default_thread_counts() -> None:
    assert default_thread_counts(1) == (1,)
    assert default_thread_counts(2) == (1, 2)
    assert default_thread_counts(6) == (1, 2, 4, 6)
    assert default_thread_counts(16) == (1, 2, 4, 8, 16)


def test_make_params_overrides_and_refuses_unknowns() -> None:
    params = make_params("quick", repeats=7, backends=None)
    assert params.repeats == 7
    assert params.backends == PRESETS["quick"].backends
    with pytest.raises(ValueError, match="unknown preset"):
        make_params("nope")
    with pytest.raises(TypeError, match="unknown sweep parameters"):
        make_params("quick", repetitions=3)
    with pytest.raises(ValueError, match="unknown studies"):
        make_params("quick", studies=["stages", "speed"])
    with pytest.raises(ValueError, match="batch size"):
        make_params("quick", networks=["digits"])
    with pytest.raises(ValueError, match="data set"):
        make_params("quick", dataset="mnist")
    with pytest.raises(ValueError, match="thread_rounds"):
        make_params("quick", thread_rounds=0)


def test_split_network() -> None:
    assert split_network("large:1024") == ("large", 1024)
    assert split_network("64-128-10:32") == ("64-128-10", 32)
    for bad in ("digits:0", "digits", "digits:x"):
        with pytest.raises(ValueError, match="batch size"):
            split_network(bad)
    with pytest.raises(ValueError, match="sizes"):
        split_network("tiny:8")


def test_plan_threads_only_where_they_apply() -> None:
    params = make_params("default", threads=(1, 2, 4))
    configs = plan(params)
    by_study = {study: [c for c in configs if c.study == study] for study in ("stages", "threads", "batch", "width")}
    assert len(by_study["stages"]) == len(params.networks) * len(BACKENDS)
    assert {c.backend for c in by_study["threads"]} == {"c-omp", "c-blas", "torch-cpu"}
    # The threads study covers its own networks and the stages study's (moons-5h300:32 is in both).
    thread_networks = set(params.thread_networks) | set(params.networks)
    assert len(thread_networks) < len(params.thread_networks) + len(params.networks)
    rounds = [c for c in by_study["threads"] if c.round > 0]
    assert len(by_study["threads"]) - len(rounds) == 3 * 3 * len(thread_networks)
    # Later rounds time the scaling networks only, every thread count once a round, rounds one after another.
    assert len(rounds) == 3 * 3 * len(params.thread_networks) * (params.thread_rounds - 1)
    assert {f"{c.network}:{c.batch}" for c in rounds} == set(params.thread_networks)
    assert [c.round for c in by_study["threads"]] == sorted(c.round for c in by_study["threads"])
    # A backend that compiles every batch size takes part in the stages study only.
    once = [b for b in BACKENDS if b == "torch-gpu-compile"]
    assert once and all(c.backend not in once for c in by_study["batch"] + by_study["width"])
    assert len(by_study["batch"]) == len(params.batch_sizes) * (len(BACKENDS) - len(once))
    assert len(by_study["width"]) == len(params.widths) * (len(BACKENDS) - len(once))
    for config in configs:
        if config.backend in GPU_BACKENDS:
            assert config.threads is None
        elif config.backend == "c-serial":
            assert config.threads == 1
        elif config.study != "threads":
            assert config.threads == 4  # threaded and reference backends run on the most threads
    assert len({c.key for c in configs}) == len(configs)
    assert resolve(by_study["width"][0].network).sizes == (64, 64, 64, 64)


def test_config_key_round_trips() -> None:
    configs = plan(make_params("quick"))
    assert {c.round for c in configs} == {0, 1}
    for config in configs:
        assert Config.from_key(config.key) == config
    # The first round's keys are those of runs from before the rounds; a later round is its own measurement.
    first = next(c for c in configs if c.study == "threads" and c.round == 0)
    assert first.key == f"threads/{first.backend}/{first.network}/b{first.batch}/t{first.threads}"
    later = next(c for c in configs if c.round == 1)
    assert later.key.endswith("/r1")
    assert Config.from_key(later.key).measurement != Config.from_key(later.key.removesuffix("/r1")).measurement


# --- crash-safe tables -------------------------------------------------------------------------------------

def test_block_table_keeps_complete_blocks_only(tmp_path: Path) -> None:
    table = BlockTable(tmp_path / "t.csv", ["key", "block_rows", "value", "note"])
    assert table.read() == []
    table.append("a", [{"value": 1, "note": "x"}, {"value": 2, "note": "two\nlines, comma"}])
    table.append("b", [{"value": 3}])
    good = (tmp_path / "t.csv").read_text()
    rows = table.read()
    assert [r["key"] for r in rows] == ["a", "a", "b"]
    assert rows[1]["note"] == "two lines, comma"  # reasons are kept on one line
    # A SIGKILL inside a write: the first line of a two-row block made it, the second only half.
    with open(tmp_path / "t.csv", "a") as handle:
        handle.write("c,2,4,\nc,2,")
    assert table.keys() == {"a", "b"}
    assert (tmp_path / "t.csv").read_text() == good  # the damaged tail was cut off
    with open(tmp_path / "t.csv", "a") as handle:
        handle.write("d,3,5,\nd,3,6,\n")  # complete lines, incomplete block
    assert table.keys() == {"a", "b"}
    assert (tmp_path / "t.csv").read_text() == good


def test_block_table_header_torn_or_foreign(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("key,blo")
    table = BlockTable(path, ["key", "block_rows", "value"])
    assert table.read() == []
    assert path.read_text() == "key,block_rows,value\n"
    path.write_text("something,else\n")
    with pytest.raises(ValueError, match="new run id"):
        table.read()


# --- a quick run -------------------------------------------------------------------------------------------

def test_tables_have_the_schema(quick_run: Path) -> None:
    for name, columns in (("rows", ROW_COLUMNS), ("ladder", LADDER_COLUMNS), ("training", TRAINING_COLUMNS)):
        with open(quick_run / f"{name}.csv") as handle:
            assert tuple(next(csv.reader(handle))) == columns


def test_every_planned_configuration_is_recorded_once(quick_run: Path) -> None:
    rows = read_rows(quick_run)
    planned = {c.key for c in plan(make_params("quick", backends=BACKENDS_UNDER_TEST))}
    assert set(rows.key) == planned
    for key, group in rows.groupby("key"):
        assert len(group) == group.block_rows.iloc[0], key
        if group.status.iloc[0] == "ok":
            stages = GPU_STAGES if group.device.iloc[0] == "cuda" else CPU_STAGES
            if model_class(group.backend.iloc[0]).fuses_steps:  # also timed per step of one train_steps call
                stages = stages | {"epoch_step"}
            assert set(group.stage) == stages
        else:
            assert len(group) == 1 and group.stage.isna().all() and group.reason.iloc[0]


def test_reference_and_pytorch_are_checked_then_timed(quick_run: Path) -> None:
    rows = read_rows(quick_run)
    ok = rows[rows.status == "ok"]
    assert {"numpy", "torch-cpu"} <= set(ok.backend)
    assert (ok.scaled_err_max <= ok.scaled_tolerance).all()
    assert (ok.repeats >= 2).all() and (ok.median_s > 0).all() and (ok.q1_s <= ok.median_s).all()
    assert (ok.median_s <= ok.q3_s).all() and (ok.iqr_s >= 0).all()
    for row in ok[~ok.stage.isin(("transfer", "checks"))].itertuples():
        flops = resolve(row.sizes).flops(row.batch)[row.stage]
        assert row.flops == flops
        assert row.gflops == pytest.approx(flops / row.median_s / 1e9)
        assert row.samples_per_s == pytest.approx(row.batch / row.median_s)
    assert (rows[rows.backend == "numpy"].err_max == 0).all()  # the reference against itself
    assert ok.loss_finite.astype(bool).all()


def test_a_run_that_diverges_while_timing_is_flagged(tmp_path: Path) -> None:
    run_dir = run("quick", results_dir=tmp_path, run_id="diverge", progress=False, backends=("c-serial",),
                  studies=("stages",), networks=("digits:8",), lr=3e38)  # float32 overflows within steps
    rows = read_rows(run_dir)
    assert len(rows) == 1 and rows.status.iloc[0] == "failed"
    assert not rows.loss_finite.iloc[0] and "loss became nan" in rows.reason.iloc[0]


def test_the_epoch_step_count_reaches_the_timing_and_the_run_records_it(tmp_path: Path, monkeypatch) -> None:
    # Only GPU backends run many steps per launch, so on the CPU the count is seen on its way into the real
    # time_stages (called through) and in meta.json, which the report reads it from.
    from mlpbench.sweep import measuring

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["epoch_steps"])
        return measuring_time_stages(*args, **kwargs)

    measuring_time_stages = measuring.time_stages
    monkeypatch.setattr(measuring, "time_stages", spy)
    run_dir = run("quick", results_dir=tmp_path, run_id="epoch", progress=False, backends=("numpy",),
                  studies=("stages",), networks=("digits:8",), epoch_steps=5)
    assert seen == [5]
    meta = json.loads((run_dir / "meta.json").read_text())
    assert [session["parameters"]["epoch_steps"] for session in meta["sessions"]] == [5]
    with pytest.raises(ValueError, match="epoch_steps must be >= 1"):
        make_params("quick", epoch_steps=0)


def test_unknown_backends_are_parameter_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend 'no-such-backend'"):
        make_params("quick", backends=("numpy", "no-such-backend"))
    with pytest.raises(ValueError, match="unknown backend"):
        run("quick", results_dir=tmp_path, run_id="bad", progress=False, backends=("no-such-backend",))
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_unusable_configurations_are_recorded_with_reasons(quick_run: Path) -> None:
    rows = read_rows(quick_run).drop_duplicates("key")
    gpu = rows[rows.backend == "torch-gpu"]
    assert gpu.status.isin(["ok", "skipped"]).all()
    assert gpu[gpu.status == "skipped"].reason.str.contains("BackendUnavailable").all()


def test_a_backend_unavailable_here_is_named_once_in_the_session_and_on_the_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = run("quick", results_dir=tmp_path, run_id="unavailable", progress=False,
                  backends=("numpy", "cuda-naive"), studies=("stages",), networks=("digits:8", "digits:4"))
    rows = read_rows(run_dir).drop_duplicates("key")
    skipped = rows[rows.backend == "cuda-naive"]
    assert len(skipped) == 2 and (skipped.status == "skipped").all()
    session = json.loads((run_dir / "meta.json").read_text())["sessions"][-1]
    assert set(session["unavailable"]) == {"cuda-naive"}
    assert session["unavailable"]["cuda-naive"] == skipped.reason.iloc[0]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "is unavailable here" in line]
    assert warnings == [f"warning: cuda-naive is unavailable here, its configurations were skipped: "
                        f"{session['unavailable']['cuda-naive']}"]
    # any study's rows say it: a session of training curves alone
    run_dir = run("quick", results_dir=tmp_path, run_id="curves", progress=False, backends=("cuda-tiled",),
                  studies=("training",))
    session = json.loads((run_dir / "meta.json").read_text())["sessions"][-1]
    assert set(session["unavailable"]) == {"cuda-tiled"}
    assert session["unavailable"]["cuda-tiled"].startswith("BackendUnavailable: ")
    assert "warning: cuda-tiled is unavailable here" in capsys.readouterr().err


def test_a_session_records_an_openblas_narrower_than_the_library(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # What the check says of this machine (machine.narrower_blas, tested on set descriptions) is what the
    # session keeps and the terminal shows; nothing where it has nothing to say.
    run_dir = run("quick", results_dir=tmp_path, run_id="blas", progress=False, backends=("numpy",),
                  studies=("stages",), networks=("digits:4",))
    session = json.loads((run_dir / "meta.json").read_text())["sessions"][-1]
    expected = machine.narrower_blas(session["machine"])
    assert session.get("narrower_blas") == expected
    assert (f"warning: {expected}" in capsys.readouterr().err) == (expected is not None)


def test_a_run_resumed_on_another_machine_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A resumed run on the same machine records nothing; on another boot (a fresh GPU-host instance between two
    # calls), the new session records it and the terminal shows it. The earlier session is moved back an hour.
    options = {"progress": False, "backends": ("numpy",), "studies": ("stages",), "networks": ("digits:4",)}
    run_dir = run("quick", results_dir=tmp_path, run_id="moved", **options)
    run("quick", results_dir=tmp_path, run_id="moved", **options)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert "other_machine" not in meta["sessions"][-1]
    assert "another machine" not in capsys.readouterr().err
    earlier = meta["sessions"][-1]["machine"]
    booted = dt.datetime.fromisoformat(earlier["booted_at"])
    earlier["booted_at"] = (booted - dt.timedelta(hours=1)).isoformat()
    (run_dir / "meta.json").write_text(json.dumps(meta))
    run("quick", results_dir=tmp_path, run_id="moved", **options)
    session = json.loads((run_dir / "meta.json").read_text())["sessions"][-1]
    assert session["other_machine"] == machine.another_machine(earlier, session["machine"])
    assert f"warning: {session['other_machine']}" in capsys.readouterr().err


def test_a_later_block_of_a_key_replaces_the_earlier_one_and_both_stay_in_the_file(tmp_path: Path) -> None:
    table = BlockTable(tmp_path / "t.csv", ["key", "block_rows", "value"])
    table.read()  # writes the header
    table.append("a", [{"value": 1}, {"value": 2}])
    table.append("b", [{"value": 3}])
    table.append("a", [{"value": 4}])
    assert [(row["key"], row["value"]) for row in table.read()] == [("b", "3"), ("a", "4")]
    assert (tmp_path / "t.csv").read_text().count("\na,") == 3


def test_shared_configurations_are_measured_once(quick_run: Path) -> None:
    rows = read_rows(quick_run).assign(stage=lambda f: f.stage.fillna(""))
    reused = rows[rows.reused_from.notna()]
    assert len(reused)  # the thread study's largest count repeats a stages configuration
    for row in reused.itertuples():
        original = rows[(rows.key == row.reused_from) & (rows.stage == row.stage)]
        assert len(original) == 1
        assert original.status.iloc[0] == row.status
        assert original.median_s.iloc[0] == row.median_s or pd.isna(row.median_s)
        assert Config.from_key(row.key).measurement == Config.from_key(row.reused_from).measurement


def test_a_ladder_rung_that_is_wrong_or_fails_while_timed_is_recorded_and_the_others_timed() -> None:
    # Both ladders check each product, then time those that passed in turn; a wrong product is not timed, one
    # that raises while timed is recorded failed with the reason, and the rest keep their numbers.
    import numpy as np

    from mlpbench.sweep.ladders import _checked, _timed

    params = make_params("quick")
    reference = np.eye(4)
    right, wrong = (lambda: np.eye(4, dtype=np.float32)), (lambda: 2 * np.eye(4, dtype=np.float32))
    spent = {"library": 0}

    def unstable() -> None:
        spent["library"] += 1
        if spent["library"] > 3:
            raise MemoryError("no room for the product")

    checked = [(_checked("cpu", "numpy", None, 4, 1, right, reference, params), right),
               (_checked("cpu", "c-v1", 1, 4, 1, wrong, reference, params), right),
               (_checked("cpu", "c-v2", 2, 4, 1, right, reference, params), unstable)]
    rows = {row["impl"]: row for row in _timed(checked, params)}
    assert rows["numpy"]["status"] == "ok" and rows["numpy"]["repeats"] == params.ladder_repeats
    assert rows["numpy"]["gflops"] > 0
    assert rows["c-v1"]["status"] == "failed" and rows["c-v1"]["reason"].startswith("verification failed")
    assert "repeats" not in rows["c-v1"]
    assert rows["c-v2"]["status"] == "failed" and "no room for the product" in rows["c-v2"]["reason"]


def test_ladder_training_and_profiles(quick_run: Path) -> None:
    ladder = pd.read_csv(quick_run / "ladder.csv")
    numpy = ladder[ladder.impl == "numpy"].iloc[0]
    assert numpy.status == "ok" and numpy.pct_of_ceiling == pytest.approx(100)
    assert (ladder[ladder.status == "ok"].rel_error <= make_params("quick").tolerance).all()
    assert set(ladder.device) == {"cpu", "gpu"}
    training = pd.read_csv(quick_run / "training.csv")
    ok = training[training.status == "ok"]
    assert set(ok[ok.backend == "numpy"].epoch) == {1, 2}
    # Two epochs on digits learn far beyond chance (0.1) and lower the loss, the same on every backend.
    by_epoch = {epoch: ok[ok.epoch == epoch].set_index("backend") for epoch in (1, 2)}
    last = by_epoch[2]
    assert (last.train_accuracy > 0.8).all() and (last.test_accuracy > 0.8).all(), last
    assert (last.train_loss < by_epoch[1].train_loss.reindex(last.index)).all()
    assert (abs(last.test_accuracy - last.test_accuracy["numpy"]) <= 0.01).all()
    assert set(training.backend) == set(BACKENDS_UNDER_TEST)
    profile = pd.read_csv(quick_run / "lineprofile.csv")
    driver = profile[(profile.backend == "numpy") & (profile.function == "profiling.driver")]
    assert driver.share_of_step.iloc[0] == pytest.approx(1.0)
    assert "Line #" in (quick_run / "lineprofile" / "numpy.txt").read_text()


def test_meta_describes_the_run(quick_run: Path) -> None:
    meta = json.loads((quick_run / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["run_id"] == "quick"
    assert meta["started_at"] <= meta["finished_at"]
    assert meta["parameters"]["repeats"] == PRESETS["quick"].repeats
    described = meta["machine"]
    assert described["git"]["commit"]
    assert described["cpu"]["usable_cores"] >= 1 and described["cpu"]["model"]
    assert "torch_parallel_info" in described["libraries"] and described["libraries"]["numpy"]
    assert "native" in described and "gpu" in described and described["hostname"]
    assert isinstance(described["thread_env"], dict)


def test_every_session_keeps_its_autotuner_choices(tmp_path: Path, monkeypatch) -> None:
    # A run resumed in several sessions: a later session without cuda-opt products (here, none tuned) keeps
    # what an earlier one recorded, and a later choice for the same shape replaces the earlier one.
    from mlpbench.backends import cuda
    from mlpbench.sweep import runner

    def choice(M: int, config: str) -> dict:
        return {"layout": "nt", "M": M, "N": 300, "K": 300, "vector": True, "config": config, "splits": 1,
                "transposed": False}

    meta: dict = {"sessions": []}
    for tuned in ([choice(32, "32x32"), choice(64, "64x64")], [], [choice(32, "128x128")]):
        meta["sessions"].append({"started_at": "then"})
        monkeypatch.setattr(cuda, "opt_choices", lambda tuned=tuned: tuned)
        runner._finish_meta(tmp_path, meta, "complete")
    saved = json.loads((tmp_path / "meta.json").read_text())
    assert [session["cuda_opt_choices"] for session in saved["sessions"]] == [
        [choice(32, "32x32"), choice(64, "64x64")], [], [choice(32, "128x128")]]
    assert saved["cuda_opt_choices"] == [choice(32, "128x128"), choice(64, "64x64")]


def test_failed_verification_is_not_timed(tmp_path: Path) -> None:
    # Zero tolerance: any float32 rounding difference from the float64 reference fails.
    run_dir = run("quick", results_dir=tmp_path, run_id="strict", progress=False, studies=["stages"],
                  networks=["digits:8"], backends=["numpy", "torch-cpu"], scaled_tolerance=0.0)
    rows = read_rows(run_dir).set_index("backend")
    assert rows.loc["torch-cpu", "status"] == "failed"
    assert "verification failed" in rows.loc["torch-cpu", "reason"]
    assert pd.isna(rows.loc["torch-cpu", "median_s"]) and rows.loc["torch-cpu", "scaled_err_max"] > 0
    assert (rows.loc["numpy", "status"] == "ok").all()


def test_configurations_over_budget_are_skipped_with_the_estimate(tmp_path: Path) -> None:
    run_dir = run("quick", results_dir=tmp_path, run_id="b", progress=False, studies=["stages"],
                  networks=["digits:8"], backends=["numpy"], budget_s=1e-9)
    row = read_rows(run_dir).iloc[0]
    assert row.status == "skipped" and row.reason.startswith("over budget: one step estimated at")
    assert row.err_max == 0  # it was checked before its cost was estimated


def test_resume_skips_finished_configurations(tmp_path: Path) -> None:
    options = {"results_dir": tmp_path, "run_id": "r", "progress": False, "studies": ["stages"],
               "networks": ["digits:8", "2-8-1:4"], "backends": ["numpy", "torch-cpu"]}
    run_dir = run("quick", **options)
    first = (run_dir / "rows.csv").read_text()
    run("quick", **options)
    assert (run_dir / "rows.csv").read_text() == first  # nothing measured again
    # Drop the last configuration, as if the run had been killed before it finished: only it is redone.
    rows = read_rows(run_dir)
    last = rows.key.iloc[-1]
    kept = "".join(line for line in first.splitlines(keepends=True) if not line.startswith(last + ","))
    (run_dir / "rows.csv").write_text(kept)
    run("quick", **options)
    again = read_rows(run_dir)
    assert list(again.key.drop_duplicates()) == list(rows.key.drop_duplicates())
    assert len(again) == len(rows)
    meta = json.loads((run_dir / "meta.json").read_text())
    assert len(meta["sessions"]) == 3


def test_a_configuration_that_keeps_crashing_is_given_up(tmp_path: Path) -> None:
    options = {"results_dir": tmp_path, "run_id": "c", "progress": False, "studies": ["stages"],
               "networks": ["digits:8"], "backends": ["numpy", "torch-cpu"]}
    (tmp_path / "c").mkdir()
    # Two earlier sessions died while timing torch-cpu (a crash in native code, say).
    (tmp_path / "c" / "attempts.log").write_text("rows:stages/torch-cpu/digits/b8/t2\n" * 2)
    run_dir = run("quick", **options, threads=(2,))
    rows = read_rows(run_dir).drop_duplicates("key").set_index("backend")
    assert rows.loc["torch-cpu", "status"] == "failed"
    assert "process died" in rows.loc["torch-cpu", "reason"]
    assert rows.loc["numpy", "status"] == "ok"
    assert (run_dir / "attempts.log").read_text().count("rows:stages/numpy/digits/b8/t2") == 1


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    args = ["--preset", "quick", "--results", str(tmp_path), "--run-id", "k", "--studies", "stages",
            "--backends", "numpy,torch-cpu", "--repeats", "30", "--no-progress"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # A fresh interpreter (fork + exec), never a fork of this process, which may have run OpenMP work.
    process = subprocess.Popen([sys.executable, "-m", "mlpbench.sweep", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows_path = tmp_path / "k" / "rows.csv"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if rows_path.exists() and len(rows_path.read_text().splitlines()) >= 5:  # header + one block
                break
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    before = BlockTable(rows_path, ROW_COLUMNS).keys()
    planned = [c.key for c in plan(make_params("quick", studies=["stages"], backends=["numpy", "torch-cpu"]))]
    assert 0 < len(before) < len(planned)  # killed mid-run
    # Simulate a kill inside a write as well: a torn line at the end.
    with open(rows_path, "a") as handle:
        handle.write("stages/torch-cpu/digits/b32/t2,4,stages,tor")
    assert subprocess.run([sys.executable, "-m", "mlpbench.sweep", *args], env=env,
                          capture_output=True).returncode == 0
    rows = read_rows(tmp_path / "k")
    assert list(rows.key.drop_duplicates()) == planned
    assert (rows.groupby("key").size() == rows.groupby("key").block_rows.first()).all()
    assert not rows.duplicated(["key", "stage"]).any()
    assert json.loads((tmp_path / "k" / "meta.json").read_text())["status"] == "complete"


def test_each_timing_records_the_kernel_its_backend_chose(tmp_path: Path, monkeypatch) -> None:
    # A backend that chooses between kernels per launch (cuda-fused) says which and why; the sweep asks it
    # for each stage, the epoch's launch with the run's epoch_steps. numpy stands in for one here.
    from mlpbench.backends.numpy_ref import NumpyModel

    monkeypatch.setattr(NumpyModel, "fuses_steps", True)
    monkeypatch.setattr(NumpyModel, "kernel_choice",
                        lambda self, batch_size, steps=1: (f"k{steps}", f"{steps} steps of {batch_size} rows"))
    run_dir = run("quick", results_dir=tmp_path, run_id="kernels", progress=False, backends=("numpy", "c-serial"),
                  studies=("stages",), networks=("digits:8",), epoch_steps=3)
    rows = read_rows(run_dir).fillna("")
    numpy_rows = rows[rows.backend == "numpy"].set_index("stage")
    assert numpy_rows.loc["epoch_step", "kernel_choice"] == "k3"
    assert numpy_rows.loc["epoch_step", "kernel_reason"] == "3 steps of 8 rows"
    others = numpy_rows.drop(index="epoch_step")
    assert len(others) >= 4 and (others.kernel_choice == "k1").all()
    assert (rows[rows.backend == "c-serial"].kernel_choice == "").all()  # one way to run: nothing to record
