"""Notebooks: committed without outputs, parameterised for papermill, and they run top to bottom."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

ROOT = Path(__file__).parents[1]
NOTEBOOKS = ROOT / "notebooks"
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


def documented_commands() -> list[tuple[str, list[str]]]:
    """The lines of the code blocks of the README and of the notebooks' markdown that run papermill or make a
    folder, split into words as the shell would, with the document they are in, in order (continuation lines
    joined)."""
    texts = {"README.md": (ROOT / "README.md").read_text()}
    for path in ALL:
        book = nbformat.read(path, as_version=4)
        texts[f"notebooks/{path.name}"] = "\n".join(c.source for c in book.cells if c.cell_type == "markdown")
    commands = []
    for doc, text in texts.items():
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            commands += [(doc, shlex.split(line, comments=True))
                         for line in block.replace("\\\n", " ").splitlines()
                         if "papermill" in line or line.startswith("mkdir")]
    return commands


def test_documented_papermill_commands_write_into_folders_that_exist() -> None:
    """papermill refuses an output notebook whose folder does not exist: each documented run writes into a
    folder that a fresh clone has (one holding tracked files) or that a `mkdir -p` before it makes, read in
    the order README, then the notebooks (whose examples name the README's run folder)."""
    made: set[str] = set()
    checked = 0
    for doc, words in documented_commands():
        if words[:2] == ["mkdir", "-p"]:
            made.update(words[2:])
        runner = next((i for i, word in enumerate(words) if word.endswith("papermill")), None)
        if runner is None or "--help-notebook" in words:
            continue
        notebook, output = words[runner + 1:runner + 3]
        folder = str(Path(output).parent)
        tracked = subprocess.run(["git", "ls-files", "--", folder], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout
        assert (ROOT / notebook).is_file(), (doc, notebook)
        assert tracked or folder in made, f"{doc}: papermill writes into {folder}, which a clone lacks"
        checked += 1
    assert checked >= 3  # the README's sweep, and each notebook's own example


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
