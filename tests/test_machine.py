"""What a run records of the source tree it ran."""

from __future__ import annotations

import subprocess

import pytest

from mlpbench import machine


def test_the_commit_is_the_checkout_head_unless_one_is_given(monkeypatch):
    monkeypatch.delenv("MLPBENCH_GIT_COMMIT", raising=False)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=machine._REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert machine.git_info()["commit"] == head
    # A tree shipped elsewhere may carry a stale .git: the commit given with it wins.
    monkeypatch.setenv("MLPBENCH_GIT_COMMIT", "0123abc")
    assert machine.git_info() == {"commit": "0123abc", "dirty": None, "source": "MLPBENCH_GIT_COMMIT"}
