"""What a result was measured on: code version, CPU, threading settings, libraries, native build, GPU.

:func:`describe` returns a JSON-ready dict; every entry that cannot be read here holds a string starting
with ``"unavailable: "`` and the reason, so a missing GPU or library never stops a sweep. It starts
subprocesses (``git``, ``nvidia-smi``): call it before any OpenMP work ran in the process, because forking
after OpenMP work is not safe with libgomp.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlpbench.thread_policy import usable_cores

#: Prefixes of environment variables that change threading or numerics of the libraries measured.
THREAD_ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "TORCH_", "CUDA_", "PYCUDA_", "MLP_")

_REPO = Path(__file__).resolve().parents[2]


def unavailable(reason: object) -> str:
    return f"unavailable: {reason}"


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _run(args: list[str], cwd: Path | None = None) -> str:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def git_info(repo: Path = _REPO) -> dict[str, Any]:
    """Commit of the source tree and whether it had uncommitted changes. A copy of the tree shipped to another
    machine reports the commit given in ``$MLPBENCH_GIT_COMMIT``: its own ``.git``, if it has one, may hold
    another commit than the files it was sent with."""
    given = os.environ.get("MLPBENCH_GIT_COMMIT")
    if given:
        return {"commit": given, "dirty": None, "source": "MLPBENCH_GIT_COMMIT"}
    if shutil.which("git") is None:
        return {"commit": unavailable("git not installed"), "dirty": None}
    try:
        commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
        status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        return {"commit": unavailable(f"not a git checkout ({error})"), "dirty": None}
    return {"commit": commit, "dirty": bool(status)}


#: /proc/cpuinfo's fields that say which CPU this is where the model name does not: a cloud VM's name is often
#: generic ("Intel(R) Xeon(R) Processor", "AMD EPYC") while the family and model number tell generations apart.
CPU_IDENTITY_FIELDS = {"vendor_id": "vendor", "cpu family": "family", "model": "model_number",
                       "stepping": "stepping"}


def cpu_identity(cpuinfo: str) -> dict[str, str]:
    """The model name and CPU_IDENTITY_FIELDS of the first processor in ``cpuinfo`` (/proc/cpuinfo's text)."""
    identity: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block ends here
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name":
            identity["model"] = value.strip()
        elif name in CPU_IDENTITY_FIELDS:
            identity[CPU_IDENTITY_FIELDS[name]] = value.strip()
    return identity


def cache_sizes(cpu_dir: Path = Path("/sys/devices/system/cpu/cpu0")) -> dict[str, str] | str:
    """The caches the first CPU sees, by level and type as the kernel lists them (``{"L1d": "48K", "L1i":
    "32K", "L2": "2048K", "L3": "107520K"}``): instances of one cloud machine type may differ in them."""
    indices = sorted((cpu_dir / "cache").glob("index[0-9]*"))
    if not indices:
        return unavailable(f"no cache description under {cpu_dir}")
    suffix = {"Data": "d", "Instruction": "i"}
    sizes = {}
    for index in indices:
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        sizes[f"L{level}{suffix.get(kind, '')}"] = size
    return sizes


def booted_at() -> str:
    """When this machine's kernel booted (UTC, to the second; /proc/stat's ``btime``): two sessions of a run
    with different boot times ran on two machines, or one rebooted, whatever their names say."""
    stat = Path("/proc/stat")
    for line in stat.read_text().splitlines() if stat.exists() else []:
        if line.startswith("btime "):
            return dt.datetime.fromtimestamp(int(line.split()[1]), dt.UTC).isoformat(timespec="seconds")
    return unavailable("no boot time in /proc/stat")


#: Boot times this close are one boot: the kernel derives ``btime`` from the wall clock, which may be adjusted.
SAME_BOOT_S = 60.0
#: What of the CPU tells two machines apart (cpu_info's keys).
CPU_IDENTITY_KEYS = (*CPU_IDENTITY_FIELDS.values(), "caches")


def another_machine(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Where description ``now`` (:func:`describe`) is of another machine than ``before`` (another boot, or
    another CPU), a sentence saying how; ``None`` where they agree or ``before`` recorded too little to tell. A
    resumed run's session on another machine compares its rows with the earlier sessions' across machines: the
    GPU host lends a fresh instance whenever the last one was given back between two calls."""
    differences = []
    boots = [record.get("booted_at") for record in (before, now)]
    if all(isinstance(boot, str) and not boot.startswith("unavailable") for boot in boots):
        apart = abs((dt.datetime.fromisoformat(boots[1]) - dt.datetime.fromisoformat(boots[0])).total_seconds())
        if apart > SAME_BOOT_S:
            differences.append(f"booted at {boots[1]}, not {boots[0]}")
    cpus = [record.get("cpu", {}) for record in (before, now)]
    differences += [f"CPU {key.replace('_', ' ')} {cpus[1][key]}, not {cpus[0][key]}" for key in CPU_IDENTITY_KEYS
                    if key in cpus[0] and key in cpus[1] and cpus[0][key] != cpus[1][key]]
    if not differences:
        return None
    return (f"this session runs on another machine than the session before it ({'; '.join(differences)}): its "
            "timings compare with that session's across machines")


def cpu_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo")
    identity = cpu_identity(cpuinfo.read_text()) if cpuinfo.exists() else {}
    identity.setdefault("model", platform.processor() or unavailable("unknown"))
    return {**identity, "caches": cache_sizes(), "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
            "machine": platform.machine(), "load_average": list(os.getloadavg())}


def thread_env() -> dict[str, str]:
    return {key: value for key, value in sorted(os.environ.items()) if key.startswith(THREAD_ENV_PREFIXES)}


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return unavailable("not installed")


def library_info() -> dict[str, Any]:
    """Versions of Python and the numeric libraries, PyTorch's threading report, and NumPy's BLAS pools."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_parallel_info": torch.__config__.parallel_info(),
        "pycuda": _version("pycuda"),
        "mlpbench": _version("mlpbench"),
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas_threadpools"] = threadpool_info()
    except ImportError as error:
        info["blas_threadpools"] = unavailable(error)
    return info


def native_info() -> Any:
    """Compiler, flags and OpenMP version of the C library, as ``mlpbench.native.build_info()`` reports."""
    try:
        native = importlib.import_module("mlpbench.native")
        build_info = native.build_info
    except (ImportError, AttributeError) as error:
        return unavailable(error)
    try:
        return build_info()
    except Exception as error:  # the library may be unbuilt; the sweep goes on without it
        return unavailable(f"{type(error).__name__}: {error}")


_SMI_FIELDS = ("name", "driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem",
               "power.limit", "temperature.gpu", "persistence_mode", "pstate")


def strip_terminal_codes(text: str) -> str:
    """``text`` without the terminal's colour and underline codes (``nvidia-smi topo -m`` underlines its header)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def nccl_version() -> str:
    """The NCCL version PyTorch was built with (``major.minor.patch``), as the data-parallel GPU ranks use it."""
    import torch

    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError) as error:  # CPU builds of PyTorch have no NCCL
        return unavailable(error)
    return ".".join(str(part) for part in version) if isinstance(version, tuple) else str(version)


def gpu_info() -> dict[str, Any]:
    """What PyTorch sees of the GPUs, and the NCCL it was built with; the driver version, clocks and how the GPUs
    are linked (``nvidia-smi topo -m``) come from ``nvidia-smi`` when installed."""
    import torch

    info: dict[str, Any] = {"torch_cuda": torch.version.cuda or unavailable("CPU build of PyTorch")}
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, memory_bytes=props.total_memory,
                    count=torch.cuda.device_count(), nccl=nccl_version())
    else:
        info["name"] = unavailable("no CUDA GPU visible to PyTorch")
    if shutil.which("nvidia-smi") is None:
        info["nvidia_smi"] = unavailable("nvidia-smi not installed")
        return info
    try:
        out = _run(["nvidia-smi", f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader"])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        info["nvidia_smi"] = unavailable(error)
        return info
    info["nvidia_smi"] = [dict(zip(_SMI_FIELDS, (v.strip() for v in line.split(",")), strict=False))
                          for line in out.splitlines() if line.strip()]
    try:
        info["topology"] = strip_terminal_codes(_run(["nvidia-smi", "topo", "-m"])).splitlines()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        info["topology"] = unavailable(error)
    return info


#: OpenBLAS's names (threadpoolctl's ``architecture``) of its kernel sets that use AVX-512.
OPENBLAS_AVX512_CORES = frozenset({"SkylakeX", "Cooperlake", "SapphireRapids"})


def narrower_blas(description: dict[str, Any]) -> str | None:
    """Where ``description`` (:func:`describe`) has the C library on its AVX-512 kernels and an OpenBLAS it loaded
    (c-blas's, NumPy's) on a narrower kernel set, a sentence saying so, naming ``OPENBLAS_CORETYPE`` where the
    environment chose that set: those baselines are then not at their best on this CPU. ``None`` otherwise."""
    native = description.get("native")
    pools = description.get("libraries", {}).get("blas_threadpools")
    if not isinstance(native, dict) or native.get("isa") != "avx512" or not isinstance(pools, list):
        return None
    narrower = sorted({f"{pool.get('filepath', '').rsplit('/', 1)[-1]} ({pool['architecture']})" for pool in pools
                       if pool.get("internal_api") == "openblas" and pool.get("architecture")
                       and pool["architecture"] not in OPENBLAS_AVX512_CORES})
    if not narrower:
        return None
    forced = description.get("thread_env", {}).get("OPENBLAS_CORETYPE")
    why = f"OPENBLAS_CORETYPE={forced} in the environment chose" if forced else "OpenBLAS chose"
    return (f"the C library runs its AVX-512 kernels, and {why} narrower ones for {', '.join(narrower)}: "
            "c-blas and NumPy are not at their best on this CPU")


def describe() -> dict[str, Any]:
    """Everything above, plus host name, operating system and the time it was read."""
    return {
        "hostname": socket.gethostname(),
        "booted_at": booted_at(),
        "platform": platform.platform(),
        "read_at": now_utc(),
        "git": git_info(),
        "cpu": cpu_info(),
        "thread_env": thread_env(),
        "libraries": library_info(),
        "native": native_info(),
        "gpu": gpu_info(),
    }
