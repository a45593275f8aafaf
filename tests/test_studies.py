"""``analysis.studies``: the host probes the report cites, read from their committed folders, each number the
median of the rounds' own as the probe's JSON holds them; folders that are not one study are refused."""

import json
import shutil
from pathlib import Path
from statistics import median

import pytest

from analysis.report import ROOT, committed_studies
from analysis.studies import COMMIT_DIGITS, load_studies

CEILING = ROOT / "results" / "h200-ceiling" / "take3"
EXCHANGE = ROOT / "results" / "h200-exchange" / "take2"
STEP_PARTS = ROOT / "results" / "h200-step-parts"


def test_the_report_cites_the_committed_takes():
    assert committed_studies() == [CEILING, EXCHANGE, STEP_PARTS]


def test_exchange_is_the_median_of_the_rounds_medians():
    study = load_studies([EXCHANGE], root=ROOT)["exchange"]
    raw = json.loads((EXCHANGE / "exchange.json").read_text())
    assert study["folder"] == "results/h200-exchange/take2"
    assert (study["rows"], study["batch"], study["layers"]) == (300, 32, 5)
    for result in raw["results"]:
        for mode in ("shared", "private"):
            stretches = [r[mode]["stretch"]["median"] for r in result["rounds"]]
            got = study["threads"][str(result["threads"])][mode]["stretch"]
            assert got == {"median": median(stretches), "min": min(stretches), "max": max(stretches)}
    sixteen = study["threads"]["16"]
    assert sixteen["shared"]["stretch"]["median"] > sixteen["private"]["stretch"]["median"]


def test_ceiling_is_taken_at_the_largest_copy_count():
    study = load_studies([CEILING], root=ROOT)["ceiling"]
    raw = json.loads((CEILING / "ceiling.json").read_text())
    for case, got in study["cases"].items():
        rows = [r for r in raw["results"] if r["case"] == case]
        last = max(rows, key=lambda r: r["copies"])
        assert got["copies"] == last["copies"] == 16
        assert (got["ceiling"], got["team_ceiling"], got["omp_speedup"]) == (
            last["ceiling"], last["team_ceiling"], last["omp_speedup"])


def test_step_parts_are_the_probe_medians_in_seconds():
    study = load_studies([STEP_PARTS], root=ROOT)["step_parts"]
    raw = json.loads((STEP_PARTS / "step_parts.json").read_text())
    assert study["folder"] == "results/h200-step-parts" and study["repeats"] == raw["meta"]["repeats"]
    assert study["commit"] == raw["meta"]["git"]["commit"][:COMMIT_DIGITS] == "08f46100df37"
    assert set(study["cases"]) == {r["case"] for r in raw["results"]} == {"digits:32", "moons-5h300:32"}
    for result in raw["results"]:
        got = study["cases"][result["case"]]
        for part in ("events", "device", "start", "kernel"):
            assert got[part] == result["parts"][part]["median"]
        assert got["host_step"] == pytest.approx(result["host_us"]["train_step"] * 1e-6)
        assert got["host_launch"] == pytest.approx(result["host_us"]["launch alone"] * 1e-6)
        assert (got["kernel_name"], got["blocks"]) == (result["kernel"], result["blocks"])
        # seconds, and the parts nest as measured: the GPU's share holds the start and the kernel
        assert 0 < got["start"] < got["device"] < got["events"] < 1e-3
        assert got["device"] == pytest.approx(got["start"] + got["kernel"], abs=1e-6)


def test_folders_that_are_not_one_study_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_studies([tmp_path])
    with pytest.raises(ValueError, match="second exchange"):
        load_studies([EXCHANGE, EXCHANGE])
    # Take 1 ran both modes in one process: its stretches are not the step's (results/h200-exchange/README.md).
    with pytest.raises(ValueError, match="processes of their own"):
        load_studies([ROOT / "results" / "h200-exchange" / "take1"])
    both = tmp_path / "both"
    shutil.copytree(EXCHANGE, both)
    shutil.copy(CEILING / "ceiling.json", both)
    with pytest.raises(ValueError, match="exactly one"):
        load_studies([both])


def test_a_folder_outside_the_root_keeps_the_name_it_was_given(tmp_path):
    copy = tmp_path / "exchange"
    shutil.copytree(EXCHANGE, copy)
    assert load_studies([copy], root=ROOT)["exchange"]["folder"] == str(copy)
    assert Path(load_studies([EXCHANGE], root=ROOT)["exchange"]["folder"]) == Path("results/h200-exchange/take2")
