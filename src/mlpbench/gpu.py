"""PyCUDA inside PyTorch's CUDA context: availability, device properties and run-time kernel compilation.

The CUDA backends keep every buffer in PyTorch tensors and launch their own kernels through PyCUDA on those
tensors' device pointers. Both libraries must then work in one CUDA context: PyTorch's primary context. This
module makes it current for PyCUDA (never ``pycuda.autoinit``, which would create a second context) on the
main thread, once, and pops it again at interpreter exit (an unpopped context aborts the interpreter).
Other threads wrap their GPU work in ``with thread_context():``; PyCUDA's context stack is per thread.

Kernel sources live in ``mlpbench/kernels``; :class:`ModuleSpec` names a source file and its ``-D``
constants, and :func:`load` compiles it with ``SourceModule`` for the device's compute capability, with an
on-disk cache (``MLPBENCH_KERNEL_CACHE``, default ``~/.cache/mlpbench/kernels``).

:class:`DriverKernel` launches one kernel through the driver's ``cuLaunchKernel`` directly, with arguments
kept in a ctypes structure that the caller updates in place: PyCUDA's ``prepared_call`` packs every argument
again on every call, host time that a training step of a few microseconds on the GPU cannot hide. The call
itself goes through the C library's ``mlp_launch_kernel`` with a record built once per launch shape: one
foreign call of one argument, where ctypes' conversion of the driver's eleven took as long as the driver.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlpbench import native
from mlpbench.checks import BackendUnavailable

KERNEL_DIR = Path(__file__).with_name("kernels")


@dataclass(frozen=True)
class ModuleSpec:
    """One kernel source (a file of ``KERNEL_DIR``, or an absolute path) compiled with fixed ``-D`` constants;
    ``no_extern_c`` for template sources, which declare their own ``extern "C"`` kernels (PyCUDA otherwise wraps
    the whole source in ``extern "C"``)."""

    source: str
    defines: tuple[tuple[str, int], ...] = ()
    no_extern_c: bool = False

    @property
    def path(self) -> Path:
        return KERNEL_DIR / self.source

    def text(self) -> str:
        return self.path.read_text()

    def options(self) -> list[str]:
        return [f"-D{name}={value}" for name, value in self.defines]

    def wrapped_text(self) -> str:
        """The source exactly as nvcc sees it from PyCUDA."""
        return self.text() if self.no_extern_c else 'extern "C" {\n' + self.text() + "\n}\n"


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    max_shared_per_block_optin: int  # bytes of shared memory one block may ask for (dynamic included)

    @property
    def arch(self) -> str:
        return "sm_{}{}".format(*self.compute_capability)


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.context: Any = None  # PyCUDA Context of torch's primary context, pushed on the main thread
        self.info: DeviceInfo | None = None
        self.modules: dict[ModuleSpec, Any] = {}
        self.driver_modules: dict[ModuleSpec, ctypes.c_void_p] = {}  # loaded by DriverKernel, unloaded at exit
        self.failure: str | None = None
        self.local = threading.local()


_state = _State()


def ensure_available() -> None:
    """Make torch's primary context current for PyCUDA on this thread; raise :class:`BackendUnavailable`
    with the reason when there is no usable GPU, no PyCUDA or no driver."""
    if getattr(_state.local, "ready", False):
        return
    with _state.lock:
        if _state.failure is not None:
            raise BackendUnavailable(_state.failure)
        if _state.context is None:
            _state.failure = _first_use()
            if _state.failure is not None:
                raise BackendUnavailable(_state.failure)
        elif threading.current_thread() is not threading.main_thread():
            raise RuntimeError("mlpbench GPU backends started on the main thread; in another thread wrap the "
                               "GPU work in `with mlpbench.gpu.thread_context():`")
    _state.local.ready = True


def _first_use() -> str | None:
    """Start CUDA for torch and PyCUDA; returns the reason it cannot, or None."""
    if not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return f"no CUDA GPU visible to PyTorch on this machine (torch {torch.__version__}, {build})"
    try:
        import pycuda.driver as drv
    except ImportError as error:
        return f"PyCUDA cannot be imported ({error}); install the 'gpu' extra on a machine with a CUDA driver"
    if threading.current_thread() is not threading.main_thread():
        return "first use of a CUDA backend must be on the main thread (PyCUDA's context stack is per thread)"
    try:
        torch.empty(1, device="cuda")  # creates torch's primary context
        drv.init()
        device = drv.Device(torch.cuda.current_device())
        context = device.retain_primary_context()
        context.push()
    except drv.Error as error:
        return f"CUDA driver error while sharing PyTorch's context with PyCUDA: {error}"
    attr = drv.device_attribute
    _state.context = context
    _state.info = DeviceInfo(
        name=device.name(),
        compute_capability=device.compute_capability(),
        sm_count=device.get_attribute(attr.MULTIPROCESSOR_COUNT),
        max_shared_per_block_optin=device.get_attribute(attr.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
    )
    atexit.register(_release)
    return None


def _release() -> None:
    """Unload our modules while the context is current, then pop it (at interpreter exit)."""
    with _state.lock:
        if _state.context is None:
            return
        _state.modules.clear()
        for module in _state.driver_modules.values():
            _driver().cuModuleUnload(module)
        _state.driver_modules.clear()
        _state.context.pop()
        _state.context = None
        from pycuda.tools import clear_context_caches

        clear_context_caches()


@contextlib.contextmanager
def thread_context() -> Iterator[None]:
    """Make the shared context current for PyCUDA in a thread other than the main thread, for the block."""
    if threading.current_thread() is threading.main_thread():
        ensure_available()
        yield
        return
    if _state.context is None:
        raise RuntimeError("start the GPU on the main thread first (load a CUDA backend or call "
                           "mlpbench.gpu.ensure_available())")
    _state.context.push()
    _state.local.ready = True
    try:
        yield
    finally:
        _state.local.ready = False
        _state.context.pop()


def info() -> DeviceInfo:
    ensure_available()
    assert _state.info is not None
    return _state.info


def device() -> torch.device:
    """Where the CUDA backends allocate their tensors."""
    return torch.device("cuda", torch.cuda.current_device())


def synchronize() -> None:
    torch.cuda.synchronize()


def cache_dir() -> str:
    path = os.environ.get("MLPBENCH_KERNEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "mlpbench", "kernels")
    os.makedirs(path, exist_ok=True)
    return path


def load(spec: ModuleSpec) -> Any:
    """The compiled PyCUDA module of ``spec`` (compiled once per process, cached on disk across runs)."""
    ensure_available()
    with _state.lock:
        module = _state.modules.get(spec)
        if module is None:
            from pycuda.compiler import SourceModule

            module = SourceModule(spec.text(), options=spec.options(), no_extern_c=spec.no_extern_c,
                                  arch=_state.info.arch, cache_dir=cache_dir(),
                                  include_dirs=[str(KERNEL_DIR)])
            _state.modules[spec] = module
        return module


def _compile(spec: ModuleSpec) -> bytes:
    """The cubin of ``spec`` for this device, from the on-disk cache when an earlier compile left it there."""
    from pycuda.compiler import compile as nvcc_compile

    return nvcc_compile(spec.text(), options=spec.options(), no_extern_c=spec.no_extern_c, arch=info().arch,
                        cache_dir=cache_dir(), include_dirs=[str(KERNEL_DIR)])


class _LaunchAttribute(ctypes.Structure):
    """CUlaunchAttribute (cuda.h): an attribute id, 4 bytes of padding, a 64-byte value."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint * 16)]


class _LaunchConfig(ctypes.Structure):
    """CUlaunchConfig (cuda.h), the launch description cuLaunchKernelEx takes."""

    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)), ("n_attrs", ctypes.c_uint)]


_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4  # CUlaunchAttributeID (cuda.h)

_DRIVER: ctypes.CDLL | None = None


def _driver() -> ctypes.CDLL:
    """libcuda through ctypes (the library PyCUDA already loaded), with the signatures used here."""
    global _DRIVER
    if _DRIVER is None:
        lib = ctypes.CDLL("libcuda.so.1")
        p, u, i = ctypes.c_void_p, ctypes.c_uint, ctypes.c_int
        lib.cuModuleLoadData.argtypes = [ctypes.POINTER(p), ctypes.c_char_p]
        lib.cuModuleGetFunction.argtypes = [ctypes.POINTER(p), p, ctypes.c_char_p]
        lib.cuModuleUnload.argtypes = [p]
        lib.cuFuncSetAttribute.argtypes = [p, i, i]
        lib.cuFuncGetAttribute.argtypes = [ctypes.POINTER(i), i, p]
        lib.cuLaunchKernel.argtypes = [p, u, u, u, u, u, u, u, p, p, p]
        lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_LaunchConfig), p, p, p]
        lib.cuGetErrorName.argtypes = [i, ctypes.POINTER(ctypes.c_char_p)]
        for name in ("cuModuleLoadData", "cuModuleGetFunction", "cuModuleUnload", "cuFuncSetAttribute",
                     "cuFuncGetAttribute", "cuLaunchKernel", "cuLaunchKernelEx", "cuGetErrorName"):
            getattr(lib, name).restype = i
        _DRIVER = lib
    return _DRIVER


def _check(result: int, what: str) -> None:
    if result != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(result, ctypes.byref(name))
        raise RuntimeError(f"{what} failed: {(name.value or b'CUDA error').decode()} ({result})")


class DriverKernel:
    """Kernel ``name`` of ``spec``, launched with ``cuLaunchKernel`` on the default stream (``cuLaunchKernelEx``
    when the launch asks for thread-block clusters).

    ``args`` is an instance of a ctypes structure whose fields are the kernel's parameters in order, with
    their C types; each launch passes the fields' current values (set them between launches)."""

    # CUfunction_attribute values (cuda.h)
    MAX_THREADS_PER_BLOCK, SHARED_SIZE_BYTES, LOCAL_SIZE_BYTES, NUM_REGS = 0, 1, 3, 4
    MAX_DYNAMIC_SHARED_SIZE_BYTES, NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 8, 14

    def __init__(self, spec: ModuleSpec, name: str, args: ctypes.Structure) -> None:
        ensure_available()
        with _state.lock:
            module = _state.driver_modules.get(spec)
            if module is None:
                module = ctypes.c_void_p()
                _check(_driver().cuModuleLoadData(ctypes.byref(module), _compile(spec)), f"loading {spec.source}")
                _state.driver_modules[spec] = module
        self.function = ctypes.c_void_p()
        _check(_driver().cuModuleGetFunction(ctypes.byref(self.function), module, name.encode()),
               f"finding {name} in {spec.source}")
        self.args = args
        base = ctypes.addressof(args)
        fields = [field[0] for field in args._fields_]
        self._pointers = (ctypes.c_void_p * len(fields))(*[base + getattr(type(args), f).offset for f in fields])
        self._launch = native.library("serial").mlp_launch_kernel
        # per launch shape: the C library's record, and the ctypes cluster configuration it points at
        self._records: dict[tuple[Any, ...], tuple[Any, _LaunchConfig | None, _LaunchAttribute | None]] = {}
        self.name = name

    def set_attribute(self, attribute: int, value: int) -> None:
        _check(_driver().cuFuncSetAttribute(self.function, attribute, value), f"setting an attribute of {self.name}")

    def get_attribute(self, attribute: int) -> int:
        value = ctypes.c_int()
        _check(_driver().cuFuncGetAttribute(ctypes.byref(value), attribute, self.function),
               f"reading an attribute of {self.name}")
        return value.value

    def launch(self, grid: int | tuple[int, int, int], block: int, shared_bytes: int, cluster: int = 1) -> None:
        """One launch of ``grid`` blocks (a count, or x, y, z) of ``block`` threads with ``shared_bytes`` of
        dynamic shared memory; ``cluster`` > 1 groups the blocks along x into thread-block clusters of that
        many (sm_90 and later; more than 8 needs NON_PORTABLE_CLUSTER_SIZE_ALLOWED set first)."""
        key = (grid, block, shared_bytes, cluster)
        record = self._records.get(key)
        if record is None:  # built once per shape: building it costs more host time than the launch
            record = self._records[key] = self._record(grid, block, shared_bytes, cluster)
        result = self._launch(record[0])
        if result:
            _check(result, f"launching {self.name}")

    def _record(self, grid: int | tuple[int, int, int], block: int, shared_bytes: int,
                cluster: int) -> tuple[Any, _LaunchConfig | None, _LaunchAttribute | None]:
        """The C library's launch record for one shape; for clusters also the ctypes configuration it points
        at, returned beside it so that it lives as long as the record."""
        x, y, z = (grid, 1, 1) if isinstance(grid, int) else grid
        ffi, driver = native.ffi, _driver()
        record = ffi.new("mlp_kernel_launch *")
        record.launch = ffi.cast("mlp_cu_launch_kernel", ctypes.cast(driver.cuLaunchKernel, ctypes.c_void_p).value)
        record.launch_ex = ffi.cast("mlp_cu_launch_kernel_ex",
                                    ctypes.cast(driver.cuLaunchKernelEx, ctypes.c_void_p).value)
        record.function = ffi.cast("void *", self.function.value)
        record.grid, record.block, record.shared_bytes = (x, y, z), (block, 1, 1), shared_bytes
        record.params = ffi.cast("void **", ctypes.addressof(self._pointers))
        if cluster == 1:
            return record, None, None
        attribute = _LaunchAttribute(id=_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
        attribute.value[0], attribute.value[1], attribute.value[2] = cluster, 1, 1
        config = _LaunchConfig(grid=(ctypes.c_uint * 3)(x, y, z), block=(ctypes.c_uint * 3)(block, 1, 1),
                               shared=shared_bytes, stream=None, attrs=ctypes.pointer(attribute), n_attrs=1)
        record.config = ffi.cast("void *", ctypes.addressof(config))
        return record, config, attribute


def precompile(specs: list[ModuleSpec]) -> None:
    """Compile several modules at once into the on-disk cache (nvcc runs in parallel), so that the next
    :func:`load` of each is a cache hit. Saves minutes of idle GPU time on a fresh machine."""
    ensure_available()
    from concurrent.futures import ThreadPoolExecutor

    from pycuda.compiler import compile as nvcc_compile

    arch, cache = info().arch, cache_dir()

    def build(spec: ModuleSpec) -> None:
        nvcc_compile(spec.text(), options=spec.options(), no_extern_c=spec.no_extern_c, arch=arch, cache_dir=cache,
                     include_dirs=[str(KERNEL_DIR)])

    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        list(pool.map(build, specs))


def compile_report(spec: ModuleSpec, arch: str = "sm_90", nvcc: str = "nvcc") -> list[dict[str, Any]]:
    """Compile ``spec`` to a cubin with ``nvcc`` as PyCUDA does (same ``extern "C"`` wrapping, ``-D``
    constants and include path; no GPU needed) and return ptxas's resource report, one dict per kernel:
    ``kernel``, ``registers``, ``stack_bytes``, ``spill_store_bytes``, ``spill_load_bytes``,
    ``static_shared_bytes``. Raises ``RuntimeError`` with the compiler's output when compilation fails."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.cu"
        source.write_text(spec.wrapped_text())
        command = [nvcc, "--cubin", f"-arch={arch}", "-Xptxas", "-v", *spec.options(), f"-I{KERNEL_DIR}",
                   "-o", str(Path(tmp) / "kernel.cubin"), str(source)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {spec.source} ({' '.join(spec.options())}):\n{output}")
    kernels = []
    for block in re.split(r"(?=ptxas info\s*: Compiling entry function)", output)[1:]:
        name = re.search(r"Compiling entry function '(\w+)'", block)
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", block)
        used = re.search(r"Used (\d+) registers", block)
        shared = re.search(r"(\d+) bytes smem", block)
        if not (name and frame and used):
            raise RuntimeError(f"unexpected ptxas report for {spec.source}:\n{block}")
        kernels.append({"kernel": name.group(1), "registers": int(used.group(1)),
                        "stack_bytes": int(frame.group(1)), "spill_store_bytes": int(frame.group(2)),
                        "spill_load_bytes": int(frame.group(3)),
                        "static_shared_bytes": int(shared.group(1)) if shared else 0})
    return kernels
