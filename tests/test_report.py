"""The report builds from the committed runs, and the numbers it prints are the results files' numbers."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("typst", reason="the report is compiled with the typst package (dev install)")
pypdf = pytest.importorskip("pypdf", reason="pypdf reads the built PDF (dev install)")

from analysis.report import ROOT, build  # noqa: E402 - after the skips

RUNS = [ROOT / "results" / "dev-2core", ROOT / "results" / "h100"]


def step_median(run: Path, network: str, backend: str) -> float:
    """The stages study's whole-step median, read straight from rows.csv."""
    with open(run / "rows.csv", newline="") as handle:
        values = [float(r["median_s"]) for r in csv.DictReader(handle)
                  if r["study"] == "stages" and r["network"] == network and r["backend"] == backend
                  and r["stage"] == "step" and r["status"] == "ok"]
    assert len(values) == 1, (run, network, backend)
    return values[0]


def duration(seconds: float) -> str:
    """The report's formatting of a time: three significant digits in µs, ms or s."""
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= scale or unit == "µs":
            value = float(f"{seconds / scale:.3g}")
            return f"{value:g} {unit}"
    raise AssertionError


@pytest.fixture(scope="module")
def built():
    out = ROOT / "build" / "test-report"
    shutil.rmtree(out, ignore_errors=True)
    pdf = build(RUNS, out / "figures", out / "data", out / "report.pdf")
    yield out, pdf
    shutil.rmtree(out, ignore_errors=True)


def pdf_text(pdf: Path) -> str:
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(pdf).pages)
    return re.sub(r"\s+", " ", text)


def test_report_has_every_section_and_figure(built):
    out, pdf = built
    reader = pypdf.PdfReader(pdf)
    assert len(reader.pages) >= 8
    text = pdf_text(pdf)
    for heading in ("The question and what was known", "Method", "Results", "Discussion", "Limitations",
                    "Reproducibility", "Bibliography"):
        assert heading in text
    for name in ("stages", "speedup", "threads", "batch", "width", "ladder", "training", "correctness",
                 "lineprofile"):
        assert (out / "figures" / f"{name}.pdf").stat().st_size > 1000


def test_stage_tables_print_the_measured_medians(built):
    _, pdf = built
    text = pdf_text(pdf)
    for run, network, backend in ((RUNS[0], "digits", "c-omp"), (RUNS[0], "large", "torch-cpu"),
                                  (RUNS[1], "moons-5h300", "cuda-fused"), (RUNS[1], "large", "cuda-opt")):
        expected = f"{network} {backend} "
        row = text[text.index(expected):][:200]
        assert duration(step_median(run, network, backend)) in row, (network, backend, row)


def test_cited_speedups_are_ratios_of_the_measured_medians(built):
    out, _ = built
    numbers = json.loads((out / "data" / "numbers.json").read_text())
    cpu, gpu = RUNS
    assert numbers["roles"] == {"cpu": "dev-2core", "gpu": "h100"}
    assert numbers["cpu"]["omp_vs_torch"]["moons-5h300"] == pytest.approx(
        step_median(cpu, "moons-5h300", "torch-cpu") / step_median(cpu, "moons-5h300", "c-omp"))
    assert numbers["gpu"]["fused_vs_graph"]["digits"] == pytest.approx(
        step_median(gpu, "digits", "torch-gpu-graph") / step_median(gpu, "digits", "cuda-fused"))
    assert numbers["gpu"]["opt_vs_torch_gpu"]["large"] == pytest.approx(
        step_median(gpu, "large", "torch-gpu") / step_median(gpu, "large", "cuda-opt"))


def test_thread_scaling_matches_the_rows(built):
    out, _ = built
    numbers = json.loads((out / "data" / "numbers.json").read_text())
    with open(RUNS[1] / "rows.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["study"] == "threads" and r["backend"] == "c-omp"
                and r["network"] == "moons-5h300" and r["stage"] == "step" and r["status"] == "ok"]
    by_threads = {int(r["threads"]): float(r["median_s"]) for r in rows}
    most = max(by_threads)
    cited = numbers["gpu"]["threads"]["moons-5h300"]["c-omp"]
    assert cited["threads"] == most
    assert cited["speedup"] == pytest.approx(by_threads[1] / by_threads[most])


def test_report_refuses_folders_outside_the_project(tmp_path):
    with pytest.raises(ValueError, match="inside"):
        build(RUNS, tmp_path / "figures", tmp_path / "data", tmp_path / "report.pdf")
