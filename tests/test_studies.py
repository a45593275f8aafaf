"""``analysis.studies``: the host probes the report cites, read from their committed folders, each number the
median of the rounds' own as the probe's JSON holds them; folders that are not one study are refused."""

import csv
import json
import shutil
from pathlib import Path
from statistics import median

import pytest

from analysis.report import ROOT, committed_studies
from analysis.studies import COMMIT_DIGITS, PACE_WINDOW_S, load_studies

CEILING = ROOT / "results" / "h200-ceiling" / "take3"
EXCHANGE = ROOT / "results" / "h200-exchange" / "take2"
STEP_PARTS = ROOT / "results" / "h200-step-parts"
CORE_PACE = ROOT / "results" / "h200-core-pace"
RANKS_TAKE = ROOT / "results" / "h200x2-0464253-rounds"


def test_the_report_cites_the_committed_takes():
    assert committed_studies() == [CEILING, EXCHANGE, STEP_PARTS, CORE_PACE, RANKS_TAKE]


def test_a_take_of_the_gpu_ranks_reads_its_strong_speedups_round_by_round():
    study = load_studies([RANKS_TAKE], root=ROOT)["ranks_take"]
    meta = json.loads((RANKS_TAKE / "meta.json").read_text())
    assert study["folder"] == "results/h200x2-0464253-rounds" and study["world_size"] == 2
    assert study["commit"] == meta["machine"]["git"]["commit"][:COMMIT_DIGITS]
    steps = {}  # one rung a round here (after backprop): a step per configuration, round and world size
    with open(RANKS_TAKE / "ranks.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["stage"] == "step" and row["status"] == "ok" and row["scaling"] == "strong":
                steps[row["backend"], row["network"], int(row["round"]), int(row["world_size"])] = float(
                    row["median_s"])
    assert study["weak"] == [] and study["strong"] and study["rungs"] == ["after-backprop"]
    for entry in study["strong"]:
        ratios = [steps[entry["backend"], entry["network"], n, 1] / steps[entry["backend"], entry["network"], n, 2]
                  for n in range(1, entry["rounds"] + 1)]
        assert entry["rounds"] == 4
        assert entry["speedup"] == pytest.approx(median(ratios))
        assert (entry["speedup_min"], entry["speedup_max"]) == pytest.approx((min(ratios), max(ratios)))


def test_a_take_without_several_gpus_is_refused(tmp_path):
    one_gpu = tmp_path / "one-gpu"
    shutil.copytree(RANKS_TAKE, one_gpu)
    with open(RANKS_TAKE / "ranks.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        kept = [row for row in reader if row["world_size"] == "1"]
    with open(one_gpu / "ranks.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, reader.fieldnames)
        writer.writeheader()
        writer.writerows(kept)
    with pytest.raises(ValueError, match="no ranks on several GPUs"):
        load_studies([one_gpu])


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


def _pace_folder(folder: Path, cells: dict[tuple[int, int, int], float], series: dict[int, list[int]]) -> Path:
    """A core-pace folder: ``cells`` {(process, pass, core): median us}; ``series`` {core: one step time per
    window, each window holding two steps}."""
    folder.mkdir()
    steps = [{"process": p, "pass": n, "core": c, "median_us": us} for (p, n, c), us in cells.items()]
    (folder / "pace.json").write_text(json.dumps({"cores": sorted({c for _, _, c in cells}), "steps": steps}))
    window_us = round(PACE_WINDOW_S * 1e6)
    (folder / "series.json").write_text(json.dumps({"series": [
        {"core": core, "at_us": [w * window_us + half * window_us // 2 for w in range(len(took)) for half in (0, 1)],
         "step_us": [t for t in took for _ in (0, 1)]} for core, took in series.items()]}))
    return folder


def test_core_pace_counts_slow_cells_and_windows_against_their_own_medians(tmp_path):
    # Two processes, two passes, three cores, every cell 100 us but three: core 2 slow in both passes of
    # process 0 (1.5x), core 1 once in process 1 (1.3x); 1.1x is under the limit. Process 1 runs at 200 us:
    # each cell is set against its own process.
    cells = {(p, n, c): 100.0 * (1 + p) for p in (0, 1) for n in (0, 1) for c in (0, 1, 2)}
    cells[0, 0, 2] = cells[0, 1, 2] = 150.0
    cells[1, 1, 1] = 260.0
    cells[1, 0, 0] = 220.0
    # Two cores, twelve windows: both slow in the first two, core 0 alone in windows 4-6, core 1 in window 7.
    series = {0: [200, 200, 100, 100, 300, 300, 300, 100, 100, 100, 100, 100],
              1: [150, 150, 100, 100, 100, 100, 100, 130, 100, 100, 100, 100]}
    study = load_studies([_pace_folder(tmp_path / "pace", cells, series)])["core_pace"]
    assert (study["cores"], study["processes"], study["passes"], study["cells"]) == (3, 2, 2, 12)
    assert study["slow_cells"] == 3 and (study["slow_cores"], study["slow_processes"]) == (2, 2)
    assert study["slow_ratio"] == {"median": 1.5, "min": 1.3, "max": 1.5}
    assert study["slow_per_core"] == {"median": 1, "min": 0, "max": 2} and study["cells_per_core"] == 4
    assert study["slow_every_pass"] == 1
    got = study["series"]
    assert (got["cores"], got["windows"]) == (2, 12)
    assert (got["slow_on_one"], got["slow_on_several"], got["slow_on_all"]) == (4, 2, 2)
    assert got["leading_on_all_s"] == pytest.approx(2 * PACE_WINDOW_S)
    assert got["longest_s"] == pytest.approx(3 * PACE_WINDOW_S)


def test_a_core_pace_probe_without_a_slow_measurement_has_no_slow_ratio(tmp_path):
    cells = {(p, n, c): 100.0 for p in (0, 1) for n in (0, 1) for c in (0, 1)}
    study = load_studies([_pace_folder(tmp_path / "steady", cells, {0: [100] * 4, 1: [100] * 4})])["core_pace"]
    assert (study["slow_cells"], study["slow_ratio"], study["slow_cores"], study["slow_every_pass"]) == (0, None, 0, 0)
    assert (study["series"]["slow_on_one"], study["series"]["leading_on_all_s"], study["series"]["longest_s"]) == (
        0, 0, 0)
