"""``scripts/cpu_ceiling.py`` end to end on a tiny budget: copies in their own processes, the ceiling computed
from their step times, c-omp beside them, copy counts beyond the cores left out."""

import importlib
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def script(monkeypatch):
    # Imported by name, as the copies' processes import it to find their entry point.
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module("cpu_ceiling")


def test_ceiling_is_the_copies_throughput_over_one_copy(tmp_path, monkeypatch):
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("two copies need two cores")
    assert script(monkeypatch).main(["--cases", "digits:8,4-5-3:3", "--copies", "1,2,4096", "--omp", "--rounds", "2",
                          "--steps", "6", "--min-steps", "4", "--budget-s", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ceiling.json").read_text())
    assert report["meta"]["copies"] == [1, 2]  # 4096 copies exceed the cores: left out
    assert [(r["case"], r["copies"]) for r in report["results"]] == [
        ("digits:8", 1), ("digits:8", 2), ("4-5-3:3", 1), ("4-5-3:3", 2)]
    assert all(4 <= steps <= 6 for steps in report["meta"]["steps"].values())
    rounds = report["rounds"]
    assert len(rounds) == 2 * 2 * 2
    for row in rounds:
        one = next(r for r in rounds if r["case"] == row["case"] and r["round"] == row["round"] and r["copies"] == 1)
        assert row["ceiling"] == pytest.approx(row["copies"] * one["copy_us"] / row["copy_us"])
        assert row["team_ceiling"] == pytest.approx(row["copies"] * one["copy_us"] / row["slowest_copy_us"])
        assert row["omp_speedup"] == pytest.approx(one["omp_us"] / row["omp_us"])
        assert row["slowest_copy_us"] == max(row["per_copy_us"]) and len(row["per_copy_us"]) == row["copies"]
        assert row["slowest_copy_us"] >= row["copy_us"] > 0
    for result in report["results"]:
        assert result["rounds"] == 2 and result["ceiling"]["min"] <= result["ceiling"]["median"]
    assert "c-omp of ceiling" in (tmp_path / "ceiling.txt").read_text()
