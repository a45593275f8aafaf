"""``scripts/exchange_probe.py`` end to end on a tiny budget: the C probe built and run per thread count, every
read checked against what the writers stored, and its samples summarised per mode."""

import importlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="the probe is C: no cc on this machine")


def script(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    return importlib.import_module("exchange_probe")


@pytest.mark.parametrize("batch", [5, 16])
def test_probe_runs_every_thread_count_and_checks_its_reads(tmp_path, monkeypatch, batch):
    threads = [1, 2] if len(os.sched_getaffinity(0)) >= 2 else [1]
    # Rows that fill no whole sliver of 8, an odd batch (plain stores in every mode) and one of whole lines
    # (streamed rows by non-temporal stores): the owned ranges and sums at uneven sizes.
    probe = script(monkeypatch)
    assert probe.main(["--threads", ",".join(map(str, [*threads, 4096])), "--rows", "37", "--batch", str(batch),
                       "--layers", "3", "--steps", "6", "--warmup", "1", "--rounds", "2", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "exchange.json").read_text())
    assert report["meta"]["threads"] == threads  # 4096 threads exceed the cores: left out
    assert [r["threads"] for r in report["results"]] == threads
    for result in report["results"]:
        assert [r["round"] for r in result["rounds"]] == [0, 1]
        for row in result["rounds"]:
            for mode in probe.MODES:
                times = row[mode]
                assert times["stretches"] == 6 * 3
                assert times["read"]["n"] == times["stretches"] * result["threads"]
                assert times["slowest_read"]["n"] == times["stretch"]["n"] == times["stretches"]
                assert times["slowest_read"]["median"] >= times["read"]["min"] > 0
                assert times["load_after"] >= 0
    assert (tmp_path / "exchange.txt").read_text().startswith(f"exchange of a 37 x {batch} float activation")


def test_slowest_read_is_the_maximum_over_threads_per_stretch(monkeypatch):
    reads = [[100, 300], [200, 50], [400, 10]]  # three stretches of two threads
    report = {"mode": "shared", "threads": 2, "mismatches": 0, "read_ns": list(np.ravel(reads)), "write_ns": [1] * 6,
              "stretch_ns": [5, 6, 7]}
    summary = script(monkeypatch).summarise(report)
    assert summary["stretches"] == 3
    assert summary["slowest_read"]["median"] == pytest.approx(300e-9)
    assert summary["read"]["median"] == pytest.approx(150e-9)
    assert summary["stretch"]["median"] == pytest.approx(6e-9)


@pytest.mark.parametrize("args", [["--rows", "0"], ["--layers", "1"], ["--rows", "1000", "--batch", "17"]])
def test_bad_sizes_are_refused_before_the_probe_runs(tmp_path, monkeypatch, args):
    with pytest.raises(SystemExit):
        script(monkeypatch).main([*args, "--out", str(tmp_path)])
    assert not (tmp_path / "exchange.json").exists()
