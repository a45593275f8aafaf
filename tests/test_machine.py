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


def test_topology_is_recorded_without_terminal_codes():
    # The header line as nvidia-smi topo -m printed it on the two-GPU host (underlined).
    printed = "\x1b[4mGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\nGPU0\t X \tNV18\t0-31\t0\t\tN/A"
    lines = machine.strip_terminal_codes(printed).splitlines()
    assert lines == ["GPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID", "GPU0\t X \tNV18\t0-31\t0\t\tN/A"]


def test_nccl_version_is_a_version_or_says_why_not():
    version = machine.nccl_version()
    assert version.startswith("unavailable: ") or all(part.isdigit() for part in version.split("."))


def _described(isa: str, architecture: str, env: dict[str, str] | None = None) -> dict:
    """A machine description as :func:`machine.describe` writes it, reduced to what the check reads."""
    pools = [{"internal_api": "openblas", "architecture": architecture, "filepath": "/lib/libscipy_openblas-1.so"},
             {"internal_api": "openmp", "filepath": "/lib/libgomp.so.1"}]
    return {"native": {"isa": isa}, "thread_env": env or {}, "libraries": {"blas_threadpools": pools}}


def test_an_openblas_on_narrower_kernels_than_the_library_is_named():
    # The development machine's environment set OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU (results/
    # dev-2core-c74bdd7): OpenBLAS's AVX2 kernels there, c-blas 2.4x slower at batch 1 than with SkylakeX's.
    forced = machine.narrower_blas(_described("avx512", "Haswell", {"OPENBLAS_CORETYPE": "Haswell"}))
    assert forced == ("the C library runs its AVX-512 kernels, and OPENBLAS_CORETYPE=Haswell in the environment "
                      "chose narrower ones for libscipy_openblas-1.so (Haswell): c-blas and NumPy are not at their "
                      "best on this CPU")
    assert "and OpenBLAS chose narrower ones for libscipy_openblas-1.so (Zen)" in machine.narrower_blas(
        _described("avx512", "Zen"))
    for fine in (_described("avx512", "SkylakeX"), _described("avx512", "Cooperlake"),
                 _described("avx2", "Haswell"), {"native": "unavailable: not built"}):
        assert machine.narrower_blas(fine) is None
