"""environment.yml (for conda users) must offer everything pyproject.toml asks for, with the same bounds."""

import re
import tomllib
from pathlib import Path

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


def test_environment_offers_every_dependency_with_the_same_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found, _ = environment_requirements()
    wanted = [requirement(t) for t in project["dependencies"]]
    # the development extra, except the CPU pin of torch that is for pip installs only
    wanted += [requirement(t) for t in project["optional-dependencies"]["dev"] if not t.startswith("torch")]
    for name, spec in wanted:
        conda_name = CONDA_NAMES.get(name, name)
        assert conda_name in found, f"{name} is missing from environment.yml"
        assert found[conda_name] == spec, f"{name}: pyproject says {spec!r}, environment.yml {found[conda_name]!r}"


def test_environment_installs_the_package_itself():
    _, env = environment_requirements()
    pip_section = next(entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict))
    assert "-e ." in pip_section
