"""analysis/: loads result directories without running a backend, summarises them and draws every figure.

The fixture ``tests/fixtures/results/quick-fixture`` is a real run of ``python -m mlpbench.sweep --preset quick
--results tests/fixtures/results --run-id quick-fixture`` on the 2-core development machine;
``tests/fixtures/results/gpu-fixture`` is made from it by ``tests/fixtures/make_gpu_fixture.py`` in the shape of
the GPU host's newer runs (end-to-end, data-parallel and all-reduce tables, load columns, new backend names).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import (
    FIGURES,
    SUMMARIES,
    draw_all,
    figures,
    headline,
    load_run,
    load_runs,
    palette,
    summary,
    write_summaries,
)
from analysis.load import read_table
from analysis.report import report_runs

FIXTURE = Path(__file__).parent / "fixtures" / "results" / "quick-fixture"
GPU_FIXTURE = FIXTURE.parent / "gpu-fixture"


@pytest.fixture(scope="module")
def results() -> summary.Results:
    return load_run(FIXTURE)


@pytest.fixture
def two_runs(tmp_path: Path) -> summary.Results:
    """The fixture and a copy of it under another run id, as the development and GPU-host runs would be."""
    copy = tmp_path / "second"
    shutil.copytree(FIXTURE, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["run_id"] = "second"
    (copy / "meta.json").write_text(json.dumps(meta))
    return load_runs(FIXTURE, copy)


def test_palette_places_every_backend_by_one_rule() -> None:
    from mlpbench.backends import BACKENDS

    names = list(BACKENDS)
    assert {"c-blas", "cuda-cublas", "torch-gpu-compile"} <= set(names)
    assert len({palette.backend_color(b) for b in names}) == len(names)
    order = palette.ordered(names)
    assert order[0] == palette.REFERENCE
    devices = [palette.device(b) for b in order]
    assert devices == sorted(devices)  # every CPU backend before every GPU backend
    assert order.index("c-blas") < order.index("torch-cpu") < order.index("cuda-naive")
    assert order.index("cuda-fused") < order.index("cuda-cublas") < order.index("torch-gpu")
    assert order.index("torch-gpu-graph") < order.index("torch-gpu-compile")
    assert [palette.BASELINE_OF_DEVICE[palette.device(b)] for b in ("c-blas", "cuda-cublas", "torch-gpu-compile")] == [
        "torch-cpu", "torch-gpu", "torch-gpu"]
    # A name of no known family: last, a colour of its own, the device its rows say.
    assert palette.ordered(["torch-gpu", "zzz", "numpy", "c-omp"]) == ["numpy", "c-omp", "torch-gpu", "zzz"]
    assert palette.device("zzz", default="gpu") == "gpu" and palette.backend_color("zzz").startswith("#")
    assert palette.ladder_order(["numpy", "c-v2", "torch-gpu", "c-v1", "cuda-v1"]) == [
        "c-v1", "c-v2", "numpy", "cuda-v1", "torch-gpu"]
    # The hand-written rungs a faster rung must not lose to: the library rung is not one of them.
    assert palette.hand_written_ladder("cuda") == ["cuda-naive", "cuda-tiled", "cuda-opt", "cuda-fused"]
    assert palette.hand_written_ladder("c") == ["c-serial", "c-omp"]


def test_analysis_imports_no_backend() -> None:
    code = ("import sys, analysis; bad = [m for m in sys.modules if m.startswith(('mlpbench', 'torch'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_tags_rows_with_run_and_machine(results: summary.Results) -> None:
    assert results.run_ids == ["quick-fixture"]
    for name in ("endtoend", "ranks", "allreduce"):  # tables this older run does not have
        assert results.table(name).empty
    for name in ("rows", "ladder", "training", "lineprofile"):
        table = results.table(name)
        assert len(table) and (table.run_id == "quick-fixture").all()
        assert table.machine.str.contains("cores").all()
    with pytest.raises(ValueError, match="twice"):
        load_runs(FIXTURE, FIXTURE)
    with pytest.raises(FileNotFoundError):
        load_runs(FIXTURE.parent)


def test_read_table_leaves_out_a_half_written_unit(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    text = (FIXTURE / "rows.csv").read_text()
    complete = read_table(FIXTURE / "rows.csv")
    lines = text.splitlines(keepends=True)
    first_block = int(lines[1].split(",")[1])
    # Two lines of a copy of the first block under a new key, then a torn line.
    extra = [lines[1].replace(lines[1].split(",")[0], "extra/key", 1)] * 2
    path.write_text(text + "".join(extra[: min(2, first_block - 1)]) + "torn,li")
    assert len(read_table(path)) == len(complete)
    assert read_table(tmp_path / "missing.csv").empty


def test_stage_table_matches_the_rows(results: summary.Results) -> None:
    table = summary.stage_table(results)
    rows = results.rows[(results.rows.study == "stages") & (results.rows.status == "ok")]
    assert len(table) == rows.key.nunique()
    for entry in table.itertuples():
        mine = rows[(rows.backend == entry.backend) & (rows.network == entry.network)].set_index("stage")
        assert entry.forward_s == mine.loc["forward", "median_s"]
        assert entry.step_s == mine.loc["step", "median_s"]
        assert entry.stages_sum_s == pytest.approx(mine.loc[["forward", "backprop", "update"], "median_s"].sum())
    torch = table[table.backend == "torch-cpu"]
    assert (torch.speedup == 1).all() and (torch.baseline == "torch-cpu").all()
    assert list(dict.fromkeys(table.backend)) == palette.ordered(table.backend.unique())


def test_speedup_and_scaling_tables(results: summary.Results) -> None:
    speedup = summary.speedup_table(results, "numpy")
    assert (speedup[speedup.backend == "numpy"].speedup == 1).all()
    threads = summary.thread_scaling(results)
    assert set(threads.backend) <= {"c-omp", "torch-cpu"} and len(threads)
    one = threads[threads.threads == 1]
    assert (one.speedup == 1).all() and (one.efficiency == 1).all()
    batch = summary.batch_effect(results)
    smallest = batch.sort_values("batch").groupby("backend").head(1)
    assert (smallest.relative_throughput == 1).all()
    width = summary.width_table(results)
    assert set(width.width) == {16, 64}
    cpu = width[~width.backend.isin(summary.gpu_backends(results))]
    assert (cpu.ceiling_impl == "numpy").all() and (cpu.ceiling_gflops > 0).all()


def test_ladder_correctness_training_profile_tables(results: summary.Results) -> None:
    ladder = summary.ladder_table(results)
    assert ladder[ladder.impl == "numpy"].pct_of_ceiling.iloc[0] == pytest.approx(100)
    assert set(ladder.status) <= {"ok", "skipped", "failed"}
    correctness = summary.correctness_table(results)
    assert (correctness.checked >= correctness.passed).all()
    assert (correctness[correctness.backend == "numpy"].err_max == 0).all()
    assert (correctness.err_max >= correctness[list(summary.ERROR_COLUMNS)].max(axis=1)).all()
    training = summary.training_table(results)
    assert training[training.backend == "numpy"].max_loss_diff_vs_numpy.iloc[0] == 0
    assert training.test_accuracy.between(0, 1).all()
    profile = summary.lineprofile_table(results)
    assert profile.checks_share.between(0, 1).all() and (profile.plain_step_s > 0).all()
    parts = profile[["checks_share", "prepare_share", "forward_share", "backprop_share", "update_share",
                     "fused_share", "rest_share"]].fillna(0)
    assert parts.sum(axis=1).to_numpy() == pytest.approx(1, abs=0.02)  # disjoint shares of the step
    assert (parts.min(axis=1) >= -0.02).all()
    status = summary.status_table(results)
    assert status.configurations.sum() == results.rows.key.nunique()
    assert status[status.status != "ok"].reason.str.len().gt(0).all()


def test_summaries_written_for_the_report(results: summary.Results, tmp_path: Path) -> None:
    written = write_summaries(results, tmp_path / "data")
    assert {p.name for p in written} == {f"{name}.csv" for name in SUMMARIES} | {"headline.json"}
    for path in written[:-1]:
        pd.read_csv(path)
    data = json.loads((tmp_path / "data" / "headline.json").read_text())
    run = data["runs"]["quick-fixture"]
    assert run["machine"].startswith("AMD") or run["machine"]
    assert run["ladder_pct_of_ceiling"]["numpy"] == pytest.approx(100)
    assert data["authors"]["thread_speedup_16"] == pytest.approx(179.3 / 40.1)
    assert headline(results)["runs"].keys() == {"quick-fixture"}


def _check_files(written: dict[str, list[Path]]) -> None:
    assert set(written) == set(FIGURES)
    for png, pdf in written.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert pdf.read_bytes()[:5] == b"%PDF-"


def test_every_figure_from_two_runs(results: summary.Results, two_runs: summary.Results, tmp_path: Path) -> None:
    # One row of panels per run (loss and accuracy side by side).
    assert len(FIGURES["training"](results).axes) == 2
    assert len(FIGURES["training"](two_runs).axes) == 4
    _check_files(draw_all(two_runs, tmp_path))


def test_figures_of_a_run_where_nothing_could_be_timed(tmp_path: Path) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    shutil.copy(FIXTURE / "meta.json", run)
    rows = read_table(FIXTURE / "rows.csv")
    skipped = rows[rows.status != "ok"].drop_duplicates("key")
    skipped.to_csv(run / "rows.csv", index=False)
    results = load_run(run)
    assert summary.stage_table(results).empty and summary.ladder_table(results).empty
    assert summary.correctness_table(results).empty and summary.training_table(results).empty
    _check_files(draw_all(results, tmp_path / "figures"))


def test_gpu_shaped_rows_take_the_gpu_paths(tmp_path: Path) -> None:
    """Until a GPU run exists here, the fixture's ``torch-cpu`` rows stand in for two GPU backends (with a
    ``transfer`` stage) and its CPU ladder for a GPU ladder, so the GPU code paths of every table and figure
    run: baselines, stacking of ``transfer``, GPU ceilings."""
    run = tmp_path / "gpu-shaped"
    shutil.copytree(FIXTURE, run)
    rows = read_table(FIXTURE / "rows.csv")
    torch = rows[(rows.backend == "torch-cpu") & (rows.status == "ok") & (rows.study != "threads")]
    gpu = []
    for backend in ("torch-gpu", "cuda-opt"):
        copy = torch.assign(backend=backend, device="cuda", threads=np.nan,
                            key=torch.key.str.replace("torch-cpu", backend))
        transfer = copy[copy.stage == "forward"].assign(stage="transfer", flops=np.nan, gflops=np.nan)
        both = pd.concat([copy, transfer]).assign(block_rows=lambda f: f.groupby("key").key.transform("size"))
        gpu.append(both.sort_values("key", kind="stable"))
    pd.concat([rows, *gpu]).to_csv(run / "rows.csv", index=False)
    ladder = read_table(FIXTURE / "ladder.csv")
    cpu = ladder[(ladder.device == "cpu") & ladder.impl.isin(["numpy", "c-v1"])]
    fake = cpu.assign(device="gpu", impl=cpu.impl.map({"numpy": "torch-gpu", "c-v1": "cuda-v1"}),
                      ceiling_impl="torch-gpu", key="gpu")
    pd.concat([ladder[ladder.device == "cpu"], fake.assign(block_rows=len(fake))]).to_csv(run / "ladder.csv",
                                                                                          index=False)
    results = load_run(run)
    stages = summary.stage_table(results)
    gpu_rows = stages[stages.backend.isin(["torch-gpu", "cuda-opt"])]
    assert (gpu_rows.baseline == "torch-gpu").all() and (gpu_rows.speedup == 1).all()
    assert gpu_rows.transfer_s.notna().all()
    assert gpu_rows.stages_sum_s.to_numpy() == pytest.approx(
        (gpu_rows.forward_s + gpu_rows.backprop_s + gpu_rows.update_s).to_numpy())
    width = summary.width_table(results)
    assert (width[width.backend == "cuda-opt"].ceiling_impl == "torch-gpu").all()
    ladder_table = summary.ladder_table(results)
    assert ladder_table[ladder_table.impl == "torch-gpu"].pct_of_ceiling.iloc[0] == pytest.approx(100)
    _check_files(draw_all(results, tmp_path / "figures"))


@pytest.fixture(scope="module")
def gpu_run() -> summary.Results:
    return load_run(GPU_FIXTURE)


def test_correctness_counts_every_configuration_of_every_run(two_runs: summary.Results) -> None:
    """The same configuration key in two runs is two checked configurations, not one."""
    one = summary.correctness_table(two_runs.subset("quick-fixture")).checked.sum()
    both = summary.correctness_table(two_runs)
    assert one > 0 and both.checked.sum() == 2 * one
    assert summary.status_table(two_runs).configurations.sum() == 2 * two_runs.subset(
        "quick-fixture").rows.key.nunique()


def test_newer_columns_and_backend_names(gpu_run: summary.Results) -> None:
    stages = summary.stage_table(gpu_run)
    assert {"cuda-cublas", "torch-gpu-compile"} <= set(stages.backend)
    assert list(dict.fromkeys(stages.backend)) == palette.ordered(stages.backend.unique())
    compiled = stages[stages.backend == "torch-gpu-compile"]
    assert (compiled.compile_s > 0).all() and stages[stages.backend != "torch-gpu-compile"].compile_s.isna().all()
    assert stages.load_before.notna().all()
    overflowed = stages[stages.nonfinite == 1]
    assert list(zip(overflowed.backend, overflowed.network, strict=True)) == [("cuda-naive", "2-32-32-1")]
    assert (stages.step_q1_s <= stages.step_s).all() and (stages.step_s <= stages.step_q3_s).all()
    assert (stages[stages.backend == "cuda-cublas"].baseline == "torch-gpu").all()


def test_matched_and_best_thread_counts(gpu_run: summary.Results) -> None:
    table = summary.thread_baselines(gpu_run)
    rows = gpu_run.rows[(gpu_run.rows.stage == "step") & (gpu_run.rows.status == "ok")]
    for entry in table.itertuples():
        mine = rows[(rows.backend == entry.backend) & (rows.network == entry.network) & (rows.batch == entry.batch)]
        if entry.which == "best":
            assert entry.step_s == mine.median_s.min()
            assert entry.threads == mine.loc[mine.median_s.idxmin(), "threads"]
        else:  # c-omp's thread count in the stages study
            omp = rows[(rows.study == "stages") & (rows.backend == "c-omp") & (rows.network == entry.network)]
            assert entry.threads == omp.threads.iloc[0]
    tiny = table[(table.network == "2-32-32-1") & (table.which == "best")]
    assert (tiny.threads == 1).all()  # one thread wins on this tiny network in the fixture


def test_stage_speedups_pick_the_fastest_gpu_backend_per_stage(gpu_run: summary.Results) -> None:
    table = summary.stage_speedups(gpu_run)
    stages = summary.stage_table(gpu_run)
    for entry in table[table.level == "best GPU"].itertuples():
        mine = stages[(stages.network == entry.network) & stages.backend.isin(summary.gpu_backends(gpu_run))]
        assert entry.seconds == mine[f"{entry.stage}_s"].min()
    assert (table[table.level == "serial C"].speedup == 1).all()
    assert set(table.level) == set(summary.LEVELS)


def test_endtoend_learning_is_computed_from_the_data(gpu_run: summary.Results) -> None:
    table = summary.endtoend_table(gpu_run).set_index(["task", "backend"])
    assert not table.loc["moons-original"].learned.astype(bool).any()
    ok = table[table.status == "ok"]
    assert ok.loc["moons-tanh"].learned.astype(bool).all() and ok.loc["digits-target"].learned.astype(bool).all()
    assert (table.loc["moons-original"].chance == 0.5).all() and (table.loc["digits-target"].chance == 0.1).all()
    digits = table.loc["digits-target"]
    assert (digits.target_s <= digits.train_s).all() and (digits.final_accuracy >= 0.95).all()
    failed = table.loc[("moons-tanh", "cuda-cublas")]
    assert failed.status == "failed" and "example failure" in failed.reason
    raw = gpu_run.endtoend
    last = raw[(raw.task == "moons-original") & (raw.backend == "c-omp")].sort_values("epoch").iloc[-1]
    assert table.loc[("moons-original", "c-omp")].train_s == last.seconds


def with_repeats(run: summary.Results, factors: tuple[float, ...], loss_factor: float = 1.0) -> summary.Results:
    """``run`` with its end-to-end runs timed again, once per factor: every epoch's seconds that many times the
    first run's, the loss and accuracy left out before the last epoch (as the sweep writes them)."""
    first = run.endtoend.assign(repeat=0)
    ok = first[first.status == "ok"]
    again = []
    for repeat, factor in enumerate(factors, start=1):
        copy = ok.assign(repeat=repeat, seconds=ok.seconds * factor)
        last = copy.groupby(["task", "backend"]).epoch.transform("max")
        copy.loc[copy.epoch < last, ["train_loss", "test_accuracy"]] = np.nan
        copy.loc[copy.epoch == last, "train_loss"] *= loss_factor
        again.append(copy)
    return dataclasses.replace(run, endtoend=pd.concat([first, *again], ignore_index=True))


def test_endtoend_times_are_medians_of_the_timed_runs(gpu_run: summary.Results) -> None:
    single = summary.endtoend_table(gpu_run).set_index(["task", "backend"])
    table = summary.endtoend_table(with_repeats(gpu_run, (3.0, 0.5), loss_factor=1.01)).set_index(["task", "backend"])
    ok = single.status == "ok"
    assert (single[ok].repeats == 1).all() and (table[ok].repeats == 3).all()
    # the first run's time, thrice and half of it: the median is the first run's, the range half to thrice
    for column in ("train", "target"):
        np.testing.assert_allclose(table[ok][f"{column}_s"], single[ok][f"{column}_s"])
        np.testing.assert_allclose(table[ok][f"{column}_min_s"], single[ok][f"{column}_s"] * 0.5)
        np.testing.assert_allclose(table[ok][f"{column}_max_s"], single[ok][f"{column}_s"] * 3.0)
    # losses and accuracies stay the first run's, and how far the others' last losses were from it is kept
    np.testing.assert_array_equal(table[ok].final_loss, single[ok].final_loss)
    np.testing.assert_array_equal(table[ok].target_epoch, single[ok].target_epoch)
    np.testing.assert_allclose(table[ok].repeat_loss_gap, 0.01)
    assert (single[ok].repeat_loss_gap == 0).all()


def test_endtoend_runs_with_and_without_repeats_read_together() -> None:
    # a run from before the repeats (no repeat column) loaded beside one with three runs of every unit
    older = Path(__file__).parents[1] / "results" / "dev-2core"
    assert "repeat" not in read_table(older / "endtoend.csv")
    table = summary.endtoend_table(load_runs(older, report_runs()[0]))
    ok = table[table.status == "ok"]
    assert set(ok[ok.run_id == "dev-2core"].repeats) == {1} and set(ok[ok.run_id != "dev-2core"].repeats) == {3}


def test_data_parallel_tables(gpu_run: summary.Results) -> None:
    scaling = summary.rank_scaling(gpu_run)
    assert (scaling[scaling.world_size == 1].efficiency == 1).all()
    strong = scaling[(scaling.scaling == "strong") & (scaling.rung == "after-backprop")].set_index("world_size")
    assert strong.loc[4, "efficiency"] == pytest.approx(strong.loc[1, "step_s"] / (4 * strong.loc[4, "step_s"]))
    weak = scaling[(scaling.scaling == "weak") & (scaling.rung == "overlapped")].set_index("world_size")
    assert weak.loc[2, "efficiency"] == pytest.approx(weak.loc[1, "step_s"] / weak.loc[2, "step_s"])
    shares = summary.rank_stage_shares(gpu_run)
    assert shares.groupby(["scaling", "rung", "world_size"]).share.sum().to_numpy() == pytest.approx(1)
    allreduce = summary.allreduce_table(gpu_run)
    n = allreduce.world_size
    assert allreduce.busbw_gbps.to_numpy() == pytest.approx((allreduce.algbw_gbps * 2 * (n - 1) / n).to_numpy())


def test_data_parallel_rounds_are_read_round_by_round(tmp_path: Path) -> None:
    """Two launches of every configuration as two rounds of one run (the committed two-GPU run and its second
    take, the take's rows marked round 2): each speed-up and efficiency is read within a round, then the median
    of the rounds is given with the rounds' range."""
    first, second = (Path(__file__).parents[1] / "results" / name
                     for name in ("h200x2-17430aa", "h200x2-17430aa-take2"))
    both = tmp_path / "both"
    shutil.copytree(first, both)
    ranks = read_table(first / "ranks.csv")
    take = read_table(second / "ranks.csv")
    take = take.assign(key=take.key + "|round2", round=2)
    pd.concat([ranks, take]).to_csv(both / "ranks.csv", index=False)
    run = load_run(both)
    by_round = summary.rank_scaling(run, by_round=True)
    assert sorted(by_round["round"].unique()) == [1, 2]
    alone = [summary.multi_gpu(summary.rank_scaling(load_run(folder), by_round=True)) for folder in (first, second)]
    merged = summary.multi_gpu(by_round)
    for entry in merged["strong"]:
        takes = [next(e["speedup"] for e in one["strong"] if (e["backend"], e["network"]) ==
                      (entry["backend"], entry["network"])) for one in alone]
        assert entry["rounds"] == 2 and entry["speedup"] == pytest.approx(sum(takes) / 2)
        assert (entry["speedup_min"], entry["speedup_max"]) == pytest.approx((min(takes), max(takes)))
    weak_steps = by_round[by_round.scaling == "weak"].set_index(["backend", "rung", "round", "world_size"]).step_s
    for row in by_round[(by_round.scaling == "weak") & (by_round.world_size == 2)].itertuples():
        one = weak_steps[row.backend, row.rung, row.round, 1]  # the same round's one-GPU step
        assert row.efficiency == pytest.approx(one / row.step_s)
    collapsed = summary.rank_scaling(run)
    weak = collapsed[(collapsed.scaling == "weak") & (collapsed.world_size == 2)]
    assert set(weak.rounds) == {2}
    for row in weak.itertuples():
        rounds = by_round[(by_round.backend == row.backend) & (by_round.rung == row.rung)
                          & (by_round.scaling == "weak") & (by_round.world_size == 2)].efficiency
        assert row.efficiency == pytest.approx(rounds.mean())
        assert (row.efficiency_min, row.efficiency_max) == pytest.approx((rounds.min(), rounds.max()))


def test_a_round_without_its_one_gpu_launch_has_no_efficiency(tmp_path: Path) -> None:
    """A launch on one GPU that failed leaves its round without a base: no efficiency there (not one against
    two GPUs), and a configuration with no one-GPU launch at all has no speed-up over one GPU."""
    first = Path(__file__).parents[1] / "results" / "h200x2-0464253-rounds"
    run_dir = tmp_path / "failed"
    shutil.copytree(first, run_dir)
    ranks = read_table(first / "ranks.csv")
    one_gpu = (ranks.world_size == 1) & (ranks.stage != "")
    lost = one_gpu & (((ranks.backend == "cuda-opt") & (ranks["round"] == 2)) | (ranks.backend == "torch-gpu"))
    ranks.loc[lost, "status"] = "failed"
    ranks.to_csv(run_dir / "ranks.csv", index=False)
    by_round = summary.rank_scaling(load_run(run_dir), by_round=True)
    cuda_opt = by_round[(by_round.backend == "cuda-opt") & (by_round.world_size == 2)]
    assert cuda_opt[cuda_opt["round"] == 2].efficiency.isna().all()
    assert cuda_opt[cuda_opt["round"] != 2].efficiency.notna().all()
    # no launch on one GPU at all: its efficiency is against two GPUs, the smallest world size measured
    assert (by_round[by_round.backend == "torch-gpu"].efficiency == 1).all()
    strong = {(e["backend"], e["network"]): e for e in summary.multi_gpu(by_round)["strong"]}
    assert {backend for backend, _ in strong} == {"cuda-opt", "cuda-fused"}
    assert all(strong["cuda-opt", network]["rounds"] == 3 for network in ("mnist", "moons-5h300"))


def test_load_table_says_which_runs_were_quiet(gpu_run: summary.Results, results: summary.Results) -> None:
    busy = summary.load_table(gpu_run).iloc[0]
    assert busy.busy_recorded and busy.busy == 1 and not busy.quiet
    older = summary.load_table(results).iloc[0]  # no busy record: judged by the load against the cores
    assert not older.busy_recorded and older.quiet == (older.max_load <= older.cores)


def test_every_figure_from_the_newer_run_shape_at_its_printed_width(gpu_run: summary.Results,
                                                                       tmp_path: Path) -> None:
    """Every figure is at most the report's text width, so its font sizes are its printed sizes (>= 7 pt)."""
    import matplotlib.pyplot as plt

    written = {}
    for name, plot in FIGURES.items():
        fig = plot(gpu_run)
        assert fig.get_figwidth() <= figures.TEXT_WIDTH + 1e-9, name
        written[name] = figures.save(fig, tmp_path, name)
        sizes = [t.get_fontsize() for t in fig.findobj(plt.Text) if t.get_text().strip() and t.get_visible()]
        assert min(sizes) >= figures.SMALL, (name, min(sizes))
        if name == "ranks":
            assert len(fig.axes) == 3
        plt.close(fig)
    _check_files(written)


def test_a_long_legend_stays_within_the_figure_and_adds_its_height() -> None:
    """Labels too long for the asked columns take fewer, and the figure grows by the legend, so no label runs
    past the printed page and the panels keep their height."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, layout="constrained", figsize=(figures.TEXT_WIDTH, 2.0))
    for i in range(12):
        axes[i % 2].plot([0, 1], [i, i], label=f"configuration {i:2d} of a study with a long descriptive name")
    figures._legend(fig, axes, columns=5)
    (legend,) = fig.legends
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).width <= fig.bbox.width
    assert legend._ncols < 5
    assert fig.get_figheight() == pytest.approx(2.0 + legend.get_window_extent(renderer).height / fig.dpi)
    plt.close(fig)


def test_no_tick_labels_overlap_in_the_committed_report_figures() -> None:
    """On every axis of every figure drawn from the report's runs, the x tick labels shown stand apart (a log
    axis under a decade wide once printed its minor labels over each other)."""
    import matplotlib.pyplot as plt

    runs = load_runs(*report_runs())
    for name, plot in FIGURES.items():
        fig = plot(runs)
        fig.canvas.draw()
        for ax in fig.axes:
            boxes = sorted((label.get_window_extent() for label in ax.get_xticklabels(which="both")
                            if label.get_visible() and label.get_text().strip()), key=lambda box: box.x0)
            for left, right in itertools.pairwise(boxes):
                assert left.x1 <= right.x0 + 0.5, (name, ax.get_title(), left, right)
        plt.close(fig)


def test_a_baseline_timed_on_shared_cores_is_flagged(tmp_path: Path) -> None:
    # The sweep lists a configuration timed while its cores were shared in meta.json's busy list by its unit
    # key ("rows:" and the row's key); the baseline that row gives is flagged, no other.
    run = tmp_path / "shared"
    shutil.copytree(FIXTURE, run)
    meta = json.loads((run / "meta.json").read_text())
    meta["busy"] = [{"key": "rows:threads/torch-cpu/digits/b32/t1", "reason": "a neighbour"}]
    (run / "meta.json").write_text(json.dumps(meta))
    table = summary.thread_baselines(load_run(run)).set_index(["network", "backend", "which"])
    assert table.flagged.sum() == 1 and table.flagged["digits", "torch-cpu", "best"]
    assert table.threads["digits", "torch-cpu", "best"] == 1


def test_a_stage_speedup_panel_without_serial_c_says_so(tmp_path: Path) -> None:
    # Without a serial C step on a network (over the timing budget, say) its panel says why it is empty.
    import matplotlib.pyplot as plt

    run = tmp_path / "no-serial"
    shutil.copytree(FIXTURE, run)
    rows = read_table(FIXTURE / "rows.csv")
    rows = rows[~((rows.backend == "c-serial") & (rows.network == "digits"))]
    rows.to_csv(run / "rows.csv", index=False)
    for source, missing in ((FIXTURE, False), (run, True)):
        fig = figures.plot_stage_speedup(load_run(source))
        notes = [t for t in fig.findobj(plt.Text) if t.get_text().startswith("no serial C step")]
        assert len(notes) == int(missing)
        plt.close(fig)


def test_a_backend_name_never_seen_takes_its_device_from_its_rows(tmp_path: Path) -> None:
    run = tmp_path / "unknown"
    shutil.copytree(GPU_FIXTURE, run)
    rows = read_table(GPU_FIXTURE / "rows.csv")
    rows.loc[rows.backend == "cuda-fused", "key"] = rows.key.str.replace("cuda-fused", "zz-accel")
    rows.loc[rows.backend == "cuda-fused", "backend"] = "zz-accel"
    rows.to_csv(run / "rows.csv", index=False)
    results = load_run(run)
    assert "zz-accel" in summary.gpu_backends(results) and "c-omp" not in summary.gpu_backends(results)
    stages = summary.stage_table(results)
    assert (stages[stages.backend == "zz-accel"].baseline == "torch-gpu").all()
    assert list(dict.fromkeys(stages.backend))[-1] == "zz-accel"  # no known family: last
    picks = summary.stage_speedups(results)
    assert "zz-accel" in set(picks[picks.level == "best GPU"].backend)  # the fastest GPU step, as cuda-fused was


# ------------------------------------------------------------------ the README's findings


def test_readme_findings_are_the_committed_numbers():
    from analysis.findings import BEGIN, END, findings_markdown

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    block = readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)].strip()
    numbers = json.loads((root / "report" / "data" / "numbers.json").read_text())
    assert block == findings_markdown(numbers), "README findings out of date: run make report"


def test_findings_follow_the_numbers():
    from analysis.findings import findings_markdown, replace_block

    numbers = json.loads((Path(__file__).resolve().parent.parent / "report" / "data" / "numbers.json").read_text())
    task = numbers["gpu"]["endtoend"]["moons-original"]
    task["best_gpu"]["seconds"], task["gpu_vs_best_cpu"] = 2.0, task["best_cpu"]["seconds"] / 2.0
    text = findings_markdown(numbers)
    assert f"{task['best_gpu']['backend']} 2.00 s" in text
    task["learned"] = "all"
    assert "does not learn" not in findings_markdown(numbers).split("moons-original")[1].split("\n")[0]
    with pytest.raises(ValueError, match="markers"):
        replace_block("no markers here", text)
    # On a machine without a GPU too, a slower CPU backend timed on shared cores is said beside the fastest.
    for role in ("cpu", "gpu"):
        for name, task in numbers[role]["endtoend"].items():
            task["flagged_slower_cpu"] = ["numpy"] if name == "moons-tanh" else []
    rows = [line for line in findings_markdown(numbers).splitlines() if line.startswith("| moons-tanh")]
    assert len(rows) == 2 and all("numpy was timed on shared cores and may be faster than measured" in row
                                  for row in rows)


def test_findings_give_the_rounds_range_of_a_data_parallel_efficiency():
    from analysis.findings import findings_markdown

    numbers = json.loads((Path(__file__).resolve().parent.parent / "report" / "data" / "numbers.json").read_text())
    cpu = numbers["cpu"]["machine"]["label"]
    hosts = {run_id: run for run_id, run in numbers["ranks_runs"].items() if run["machine"] != cpu}
    run_id, run = next((run_id, run) for run_id, run in hosts.items() if run["efficiency_rounds"])
    key = next(iter(run["efficiency_rounds"]))
    run["efficiency"][key], run["efficiency_rounds"][key] = 0.5, {"rounds": 3, "min": 0.25, "max": 0.75}
    rung = key.split(" ")[-1]
    assert f"{rung}: 50 % efficiency (median of 3 rounds, 25 %-75 %)" in findings_markdown(numbers)
    run["efficiency_rounds"] = {}  # launched once: no range
    assert f"{rung}: 50 % efficiency," in findings_markdown(numbers)
    assert "median of 3 rounds, 25 %" not in findings_markdown(numbers), run_id


def test_stage_table_carries_the_epoch_step_of_backends_that_run_many_steps_per_launch() -> None:
    # the H200 run times cuda-fused an epoch per launch (stage epoch_step); no other backend does
    runs = load_runs(report_runs()[1])
    table = summary.stage_table(runs).set_index(["network", "backend"])
    rows = runs.rows[(runs.rows.study == "stages") & (runs.rows.stage == "epoch_step")]
    assert set(rows.backend) == {"cuda-fused"}
    for row in rows.itertuples():
        assert table.loc[(row.network, "cuda-fused"), "epoch_step_s"] == row.median_s
    assert table.drop(index="cuda-fused", level="backend").epoch_step_s.isna().all()


def test_the_epoch_step_count_is_read_from_the_run(tmp_path: Path) -> None:
    # The steps per epoch_step sample come from the sessions that ran the stages study; a run with epoch_step
    # rows that does not record them cannot be reported.
    from analysis.load import epoch_steps
    from analysis.report import report_numbers

    run = tmp_path / "h200"
    shutil.copytree(report_runs()[1], run)
    meta = json.loads((run / "meta.json").read_text())
    assert epoch_steps(meta) == 32
    assert report_numbers(load_runs(run))["gpu"]["epoch_steps"] == 32
    for session in meta["sessions"]:
        session["parameters"]["epoch_steps"] = 8 if "stages" in session["parameters"]["studies"] else 99
    assert epoch_steps(meta) == 8  # sessions without the stages study do not count
    meta["sessions"][0]["parameters"]["epoch_steps"] = 16
    with pytest.raises(ValueError, match=r"epochs of \[8, 16\] steps"):
        epoch_steps(meta)
    for session in meta["sessions"]:
        del session["parameters"]["epoch_steps"]
    assert epoch_steps(meta) is None
    (run / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no epoch_steps"):
        report_numbers(load_runs(run))


def _with_rounds(tmp_path: Path, scales: dict[tuple[int, int], float], busy: tuple[str, ...] = ()) -> Path:
    """The fixture with c-omp's digits thread rows timed in two more rounds: each round's block of the first
    round's rows under its own key, its times scaled by ``scales[(round, threads)]``; ``busy`` keys flagged."""
    run = tmp_path / "rounds"
    shutil.copytree(FIXTURE, run)
    rows = read_table(FIXTURE / "rows.csv")
    first = rows[(rows.study == "threads") & (rows.backend == "c-omp") & (rows.network == "digits")]
    added = []
    for (round_, threads), scale in scales.items():
        block = first[first.threads == threads].copy()
        block["key"] = block["key"] + f"/r{round_}"
        block["round"] = round_
        block["reused_from"] = np.nan
        block[["median_s", "q1_s", "q3_s"]] *= scale
        added.append(block)
    pd.concat([rows.assign(round=0), *added]).to_csv(run / "rows.csv", index=False)
    meta = json.loads((run / "meta.json").read_text())
    meta["busy"] = [{"key": f"rows:{key}", "reason": "a neighbour"} for key in busy]
    (run / "meta.json").write_text(json.dumps(meta))
    return run


def test_a_speedup_is_the_median_of_the_rounds_own(tmp_path: Path) -> None:
    # One thread's step moves between minutes on some hosts, so each round's ratio divides times of one round;
    # here the ratio of the medians over rounds (0.84x) would differ from the rounds' own ratios' median.
    scales = {(1, 1): 2.0, (1, 2): 1.6, (2, 1): 1.2, (2, 2): 1.7}
    steps = read_table(FIXTURE / "rows.csv").query("stage == 'step'").set_index("key").median_s
    one, two = steps["threads/c-omp/digits/b32/t1"], steps["stages/c-omp/digits/b32/t2"]
    run = _with_rounds(tmp_path, scales, busy=("threads/c-omp/digits/b32/t2/r2",))
    table = summary.thread_scaling(load_run(run)).set_index(["network", "backend", "threads"])
    at_two = table.loc[("digits", "c-omp", 2)]
    ratios = [one / two, 2.0 * one / (1.6 * two), 1.2 * one / (1.7 * two)]
    assert at_two.rounds == 3
    assert at_two.speedup == pytest.approx(np.median(ratios))
    assert (at_two.speedup_min, at_two.speedup_max) == pytest.approx((min(ratios), max(ratios)))
    assert at_two.step_s == pytest.approx(1.6 * two)
    assert at_two.speedup != pytest.approx(np.median([one, 2 * one, 1.2 * one]) / at_two.step_s)
    # The slowest round was flagged, not the one the median is: the median stands.
    assert not at_two.flagged
    assert table.loc[("digits", "torch-cpu", 2)].rounds == 1
    flagged = summary.thread_scaling(load_run(_with_rounds(tmp_path / "b", scales, busy=(
        "threads/c-omp/digits/b32/t2/r1",)))).set_index(["network", "backend", "threads"])
    assert flagged.loc[("digits", "c-omp", 2)].flagged
    # The best thread count compares medians over rounds, not the fastest round (two threads' stages-study
    # time is the fastest single time, but its median over rounds is slower than one thread's).
    best = summary.thread_baselines(load_run(run)).set_index(["network", "backend", "which"])
    assert best.threads["digits", "c-omp", "best"] == 1
    assert best.step_s["digits", "c-omp", "best"] == pytest.approx(1.2 * one)
    assert best.threads["digits", "c-omp", "matched"] == 2
    assert best.step_s["digits", "c-omp", "matched"] == pytest.approx(two)


def test_a_speedup_whose_median_round_divides_a_shared_one_thread_time_is_flagged(tmp_path: Path) -> None:
    # The rounds' ratios: round 0 the median (1.0), round 1 1.25, round 2 0.71 of one/two. Neither row's median
    # step comes from round 0 (one thread's is round 2's, two threads' round 1's), so only the ratio can tell
    # that the speed-up the report prints divides a one-thread time taken on shared cores.
    from analysis.report import report_numbers

    scales = {(1, 1): 2.0, (1, 2): 1.6, (2, 1): 1.2, (2, 2): 1.7}
    for busy, suspect in (("threads/c-omp/digits/b32/t1", True), ("threads/c-omp/digits/b32/t1/r1", False)):
        run = _with_rounds(tmp_path / busy.replace("/", "-"), scales, busy=(busy,))
        table = summary.thread_scaling(load_run(run)).set_index(["network", "backend", "threads"])
        at_two = table.loc[("digits", "c-omp", 2)]
        assert not at_two.flagged and not table.loc[("digits", "c-omp", 1)].flagged
        assert at_two.speedup_flagged == suspect
        assert report_numbers(load_runs(run))["cpu"]["threads"]["digits"]["c-omp"]["flagged"] == suspect
