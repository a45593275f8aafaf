"""Notebooks: committed without outputs, parameterised for papermill, and they run top to bottom."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
FIXTURE = Path(__file__).parent / "fixtures" / "results" / "quick-fixture"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def execute(name: str, tmp_path: Path, **parameters: object) -> nbformat.NotebookNode:
    out = tmp_path / f"{name}-out.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                               cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    book = nbformat.read(out, as_version=4)
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    return book


def test_the_three_notebooks_exist() -> None:
    assert {p.stem for p in ALL} == {"sweep", "figures", "lineprofile"}


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_committed_without_outputs(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    nbformat.validate(book)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.stem)
def test_parameters_are_typed_and_documented(path: Path) -> None:
    book = nbformat.read(path, as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assigned = [line for line in tagged[0].source.splitlines() if line.strip()]
    parameters = papermill.inspect_notebook(str(path))
    assert len(parameters) == len(assigned)  # papermill understood every line
    for name, parameter in parameters.items():
        assert parameter["inferred_type_name"] != "None", name
        assert parameter["help"], name


def test_sweep_notebook_runs_under_papermill(tmp_path: Path) -> None:
    execute("sweep", tmp_path, preset="quick", studies=["stages", "threads", "ladder"],
            results_dir=str(tmp_path / "results"), run_id="nb")
    run = tmp_path / "results" / "nb"
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["preset"] == "quick"
    assert meta["parameters"]["studies"] == ["stages", "threads", "ladder"]
    rows = pd.read_csv(run / "rows.csv")
    assert set(rows.study) == {"stages", "threads"}
    assert {"numpy", "torch-cpu"} <= set(rows[rows.status == "ok"].backend)
    assert len(pd.read_csv(run / "ladder.csv"))


def test_figures_notebook_draws_into_the_given_directory(tmp_path: Path) -> None:
    execute("figures", tmp_path, results_dirs=[str(FIXTURE)], figures_dir=str(tmp_path / "figures"),
            summaries_dir=str(tmp_path / "data"))
    assert len(list((tmp_path / "figures").glob("*.pdf"))) == len(list((tmp_path / "figures").glob("*.png"))) > 5
    assert (tmp_path / "data" / "headline.json").exists()


def test_lineprofile_notebook_saves_listings_with_the_run(tmp_path: Path) -> None:
    execute("lineprofile", tmp_path, backends=["numpy"], steps=10, results_dir=str(tmp_path / "results"),
            run_id="lp")
    listing = (tmp_path / "results" / "lp" / "lineprofile" / "numpy.txt").read_text()
    assert "Model.step" in listing and "Line #" in listing
