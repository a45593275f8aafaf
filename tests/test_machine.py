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


def test_the_cpu_is_identified_beyond_its_model_name(tmp_path):
    # Cloud instances of one machine type report one generic name ("Intel(R) Xeon(R) Processor") whatever their
    # generation; results/h200-79558bb ran every CPU backend 1.2-1.6x faster than the run before it under that name.
    cpuinfo = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
               "model name\t: Intel(R) Xeon(R) Processor\nstepping\t: 8\nflags\t\t: fpu avx512f\n\n"
               "processor\t: 1\nvendor_id\t: OtherVendor\ncpu family\t: 25\nmodel\t\t: 1\n")
    assert machine.cpu_identity(cpuinfo) == {"vendor": "GenuineIntel", "family": "6", "model_number": "143",
                                             "model": "Intel(R) Xeon(R) Processor", "stepping": "8"}
    for index, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                                 (2, "Unified", "2048K"), (3, "Unified", "107520K")]):
        folder = tmp_path / "cache" / f"index{index}"
        folder.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    assert machine.cache_sizes(tmp_path) == {"L1d": "48K", "L1i": "32K", "L2": "2048K", "L3": "107520K"}
    assert machine.cache_sizes(tmp_path / "missing").startswith("unavailable: ")


@pytest.mark.skipif(not machine.Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo on this system")
def test_this_machines_cpu_identity_is_recorded():
    cpu = machine.cpu_info()
    assert cpu["family"].isdigit() and cpu["model_number"].isdigit() and cpu["vendor"] and cpu["model"]


def test_a_session_on_another_machine_is_told_apart():
    # The GPU host lends a fresh instance whenever the last one was given back between two calls of one sweep;
    # they share a host name and CPU model name, not a boot.
    cpu = {"model": "Intel(R) Xeon(R) Processor", "vendor": "GenuineIntel", "family": "6", "model_number": "207",
           "stepping": "2", "caches": {"L2": "2048K", "L3": "307200K"}}
    first = {"hostname": "vm", "booted_at": "2026-11-30T22:51:00+00:00", "cpu": cpu}
    assert machine.another_machine(first, first) is None
    assert machine.another_machine(first, {**first, "booted_at": "2026-11-30T22:51:40+00:00"}) is None
    rebooted = machine.another_machine(first, {**first, "booted_at": "2026-11-30T23:20:00+00:00"})
    assert rebooted == ("this session runs on another machine than the session before it (booted at "
                        "2026-11-30T23:20:00+00:00, not 2026-11-30T22:51:00+00:00): its timings compare with that "
                        "session's across machines")
    other_cpu = {**first, "cpu": {**cpu, "model_number": "143", "caches": {"L2": "2048K", "L3": "107520K"}}}
    assert "(CPU model number 143, not 207; CPU caches {'L2': '2048K', 'L3': '107520K'}, not" in (
        machine.another_machine(first, other_cpu))
    # A session recorded before boot times and CPU identities were: nothing to tell by.
    assert machine.another_machine({"hostname": "vm", "cpu": {"model": cpu["model"]}}, other_cpu) is None
    assert machine.another_machine({**first, "booted_at": "unavailable: no boot time in /proc/stat"}, first) is None
