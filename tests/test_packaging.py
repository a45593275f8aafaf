"""environment.yml (for conda users) must offer everything pyproject.toml asks for, with the same bounds."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}


def requirement(text):
    match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", text.strip())
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def environment_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for entry in env["dependencies"]:
        entries = entry["pip"] if isinstance(entry, dict) else [entry]
        for text in entries:
            if not text.startswith("-"):
                name, spec = requirement(text)
                found[name] = spec
    return found, env


def project_table():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def extra(project, name):
    """An extra's requirements, with the extras it names of the package itself (``mlpbench[report]``) expanded."""
    wanted = []
    for text in project["optional-dependencies"][name]:
        included = re.fullmatch(rf"{project['name']}\[([a-z,]+)\]", text)
        if included:
            for other in included.group(1).split(","):
                wanted += extra(project, other)
        else:
            wanted.append(text)
    return wanted


def test_environment_offers_every_dependency_with_the_same_bounds():
    project = project_table()
    found, _ = environment_requirements()
    wanted = [requirement(t) for t in project["dependencies"]]
    # the development extra (the report tools included), except the CPU pin of torch for pip installs only
    wanted += [requirement(t) for t in extra(project, "dev") if not t.startswith("torch")]
    for name, spec in wanted:
        conda_name = CONDA_NAMES.get(name, name)
        assert conda_name in found, f"{name} is missing from environment.yml"
        assert found[conda_name] == spec, f"{name}: pyproject says {spec!r}, environment.yml {found[conda_name]!r}"


def test_environment_installs_the_package_itself():
    _, env = environment_requirements()
    pip_section = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
    assert "-e ." in pip_section


def test_notebook_and_report_tools_are_an_extra_that_dev_includes():
    project = project_table()
    runtime = {requirement(t)[0] for t in project["dependencies"]}
    report = {requirement(t)[0] for t in project["optional-dependencies"]["report"]}
    assert {"papermill", "ipykernel", "jupyterlab", "typst"} <= report
    assert not report & runtime
    assert report <= {requirement(t)[0] for t in extra(project, "dev")}


def test_only_the_package_is_installed_under_an_spdx_license():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    found = pyproject["tool"]["setuptools"]["packages"]["find"]
    assert found["where"] == ["src"] and found["include"] == ["mlpbench*"]


def test_an_installed_package_without_the_c_sources_says_how_to_get_them(tmp_path, monkeypatch):
    from mlpbench import native
    from mlpbench.checks import BackendUnavailable

    monkeypatch.delenv("MLPBENCH_NATIVE_DIR", raising=False)
    monkeypatch.setattr(native, "__file__", str(tmp_path / "lib" / "site-packages" / "mlpbench" / "native.py"))
    with pytest.raises(BackendUnavailable, match="MLPBENCH_NATIVE_DIR"):
        native.library_path("omp")
    monkeypatch.setenv("MLPBENCH_NATIVE_DIR", str(ROOT / "native"))
    assert native.library_path("omp") == ROOT / "native" / "build" / "libmlp_omp.so"
