"""analysis/: loads result directories without running a backend, summarises them and draws every figure.

The fixture ``tests/fixtures/results/quick-fixture`` is a real run of ``python -m mlpbench.sweep --preset quick
--results tests/fixtures/results --run-id quick-fixture`` on the 2-core development machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import FIGURES, SUMMARIES, draw_all, headline, load_run, load_runs, palette, summary, write_summaries
from analysis.load import read_table

FIXTURE = Path(__file__).parent / "fixtures" / "results" / "quick-fixture"


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


def test_palette_matches_the_registry() -> None:
    from mlpbench.backends import BACKENDS, CPU_BACKENDS, GPU_BACKENDS

    assert palette.BACKEND_ORDER == BACKENDS
    assert palette.CPU_BACKENDS == CPU_BACKENDS and palette.GPU_BACKENDS == GPU_BACKENDS
    assert len(set(palette.BACKEND_COLORS.values())) == len(BACKENDS)
    assert palette.ordered(["torch-gpu", "zzz", "numpy", "c-omp"]) == ["numpy", "c-omp", "torch-gpu", "zzz"]
    assert palette.ladder_order(["numpy", "c-v2", "torch-gpu", "c-v1", "cuda-v1"]) == [
        "c-v1", "c-v2", "numpy", "cuda-v1", "torch-gpu"]


def test_analysis_imports_no_backend() -> None:
    code = ("import sys, analysis; bad = [m for m in sys.modules if m.startswith(('mlpbench', 'torch'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_tags_rows_with_run_and_machine(results: summary.Results) -> None:
    assert results.run_ids == ["quick-fixture"]
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
    cpu = width[width.backend.isin(palette.CPU_BACKENDS)]
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
