"""The C library in ``native/`` through cffi (ABI mode), and its standalone matrix product.

``make -C native`` builds ``native/build/libmlp_serial.so`` (no OpenMP), ``libmlp_omp.so`` and, where the
``scipy-openblas32`` wheel is installed, ``libmlp_blas.so`` (every product by OpenBLAS) from the same
sources; :func:`library` loads one of them by absolute path and declares its API from the region of
``native/include/mlp.h`` between the CDEF markers. ``MLPBENCH_NATIVE_DIR`` points elsewhere than the
repository's ``native/`` (a directory holding ``include/mlp.h`` and ``build/``).

cffi passes raw pointers: it checks neither dtype, nor alignment, nor shape. Every function here validates
its arrays first, so nothing malformed reaches C.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import cffi
import numpy as np

from mlpbench import checks
from mlpbench.checks import BackendUnavailable
from mlpbench.thread_policy import check_threads, usable_cores

#: The builds of the library: ``serial`` (no OpenMP runtime), ``omp``, and ``blas`` (products by OpenBLAS).
VARIANTS = ("serial", "omp", "blas")
#: The matrix-product ladder, numbered in the order it was built.
KERNELS = {1: "naive", 2: "blocked", 3: "packed"}
# ``ISAS`` (micro-kernel instruction set name -> code; ``auto`` asks the CPU at run time) and ``ISA_NAMES``
# (code -> name) are read from the header's ``enum mlp_isa`` on first use: see ``__getattr__`` below.

_CDEF_BEGIN = "/* BEGIN CDEF */"
_CDEF_END = "/* END CDEF */"

ffi = cffi.FFI()
_declared = False
_libraries: dict[str, Any] = {}
_load_lock = threading.Lock()


def native_dir() -> Path:
    """The directory holding ``include/mlp.h`` and ``build/``: ``$MLPBENCH_NATIVE_DIR`` or, for a package
    installed from a checkout in editable mode, the checkout's ``native/`` (two levels above this package)."""
    override = os.environ.get("MLPBENCH_NATIVE_DIR")
    if override:
        return Path(override).resolve()
    checkout = Path(__file__).resolve().parents[2] / "native"
    if not (checkout / "include" / "mlp.h").is_file():
        raise BackendUnavailable(
            f"the C library's sources are not beside this installed package ({checkout} has no include/mlp.h): "
            "build it in a checkout with `make -C native` and set MLPBENCH_NATIVE_DIR to that native/ "
            "directory, or install the package editable from the checkout (pip install -e .)")
    return checkout


def library_path(variant: str) -> Path:
    if variant not in VARIANTS:
        raise ValueError(f"unknown library variant {variant!r}; choose one of {VARIANTS}")
    return native_dir() / "build" / f"libmlp_{variant}.so"


def _declarations(header: Path) -> str:
    text = header.read_text()
    start, end = text.find(_CDEF_BEGIN), text.find(_CDEF_END)
    if start < 0 or end < start:
        raise BackendUnavailable(f"{header}: no {_CDEF_BEGIN} ... {_CDEF_END} region to declare the API from")
    return text[start + len(_CDEF_BEGIN):end]


def _declare() -> None:
    """Declare the header's API to cffi, once. Call with ``_load_lock`` held."""
    global _declared
    if _declared:
        return
    header = native_dir() / "include" / "mlp.h"
    if not header.is_file():
        raise BackendUnavailable(f"C library header {header} not found: run `make -C native` first")
    ffi.cdef(_declarations(header))
    _declared = True


@functools.cache
def _isa_codes() -> dict[str, int]:
    """``enum mlp_isa`` of the header as {"auto": 0, "portable": 1, ...} (callers must not modify it)."""
    with _load_lock:
        _declare()
    prefix = "MLP_ISA_"
    return {name.removeprefix(prefix).lower(): code
            for name, code in sorted(ffi.typeof("enum mlp_isa").relements.items(), key=lambda item: item[1])}


def __getattr__(name: str) -> Any:
    if name == "ISAS":
        return dict(_isa_codes())
    if name == "ISA_NAMES":
        return {code: isa for isa, code in _isa_codes().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def library(variant: str = "omp") -> Any:
    """The loaded library (cached); :class:`BackendUnavailable` if it has not been built."""
    path = library_path(variant)
    with _load_lock:
        if variant in _libraries:
            return _libraries[variant]
        if not path.is_file():
            if variant == "blas":
                raise BackendUnavailable(
                    f"C library {path} not found: it is built only against the scipy-openblas32 wheel; "
                    f"pip install scipy-openblas32, then run `make -C native PYTHON=<that environment's python>`")
            raise BackendUnavailable(f"C library {path} not found: run `make -C native` first")
        _declare()
        try:
            lib = ffi.dlopen(str(path))
        except OSError as error:
            raise BackendUnavailable(f"cannot load {path} ({error}): run `make -C native` first") from error
        _check_built_from_header(lib, path)
        _libraries[variant] = lib
        return lib


def _check_built_from_header(lib: Any, path: Path) -> None:
    """Refuse a library built from another ``mlp.h`` than the one its API is declared from: cffi would pass it
    structures laid out as the header says now, not as the library was compiled."""
    header = native_dir() / "include" / "mlp.h"
    expected = hashlib.sha256(header.read_bytes()).hexdigest()[:16]
    try:
        built = ffi.string(lib.mlp_header_hash()).decode()
    except AttributeError:  # built before the library recorded its header
        built = "not recorded"
    if built != expected:
        raise BackendUnavailable(f"{path} was built from another {header} than this one (header hash {built}, "
                                 f"now {expected}): a stale build; run `make -C native`")


def build_info() -> dict[str, Any]:
    """How the libraries were built (compiler, flags: ``build/build-info.txt`` written by the Makefile) and
    what they find at run time (OpenMP linked, the micro-kernel instruction set this CPU gets)."""
    info_path = native_dir() / "build" / "build-info.txt"
    if not info_path.exists():
        raise BackendUnavailable(f"{info_path} missing: run `make -C native` first")
    info: dict[str, Any] = {}
    for line in info_path.read_text().splitlines():
        key, _, value = line.partition("=")
        info[key] = value.strip()
    omp = library("omp")
    info["openmp"] = bool(omp.mlp_has_openmp())
    info["isa"] = _isa_name(int(omp.mlp_best_isa()))
    info["libraries"] = [str(library_path(variant)) for variant in VARIANTS if library_path(variant).is_file()]
    return info


def error_message(lib: Any, status: int) -> str:
    return ffi.string(lib.mlp_error_message(status)).decode()


def raise_for_status(lib: Any, status: int, where: str) -> None:
    """Turn a non-zero status into an exception. Python validates first, so this means a broken invariant
    (or, for ``MLP_ERR_STATE``, stages called out of order)."""
    if status == lib.MLP_OK:
        return
    message = f"{where}: {error_message(lib, status)} (status {status})"
    if status == lib.MLP_ERR_MEMORY:
        raise MemoryError(message)
    raise RuntimeError(message)


def resolve_threads(lib: Any, variant: str, threads: Any) -> int:
    """A validated thread count: ``None`` means all cores (``omp``; ``blas``: OpenBLAS's threads) or 1
    (``serial``, which has no threads)."""
    if threads is None:
        return 1 if variant == "serial" else usable_cores()
    threads = check_threads(threads)
    if variant == "serial" and threads != 1:
        raise ValueError(f"threads: the serial library runs on one thread, got {threads}")
    if threads > lib.MLP_THREADS_LIMIT:
        raise ValueError(f"threads: at most {lib.MLP_THREADS_LIMIT}, got {threads}")
    return threads


def resolve_kernel(kernel: Any) -> int:
    if isinstance(kernel, bool) or not isinstance(kernel, int | np.integer):
        raise TypeError(f"kernel: expected an integer ladder version, got {type(kernel).__name__}")
    if int(kernel) not in KERNELS:
        raise ValueError(f"kernel: unknown matrix-product version {kernel}; choose one of "
                         + ", ".join(f"{k} ({name})" for k, name in KERNELS.items()))
    return int(kernel)


def _isa_name(code: int) -> str:
    return {value: name for name, value in _isa_codes().items()}[code]


def resolve_isa(lib: Any, isa: Any) -> int:
    codes = _isa_codes()
    if not isinstance(isa, str):
        raise TypeError(f"isa: expected one of {tuple(codes)}, got {type(isa).__name__}")
    if isa not in codes:
        raise ValueError(f"isa: unknown instruction set {isa!r}; choose one of {tuple(codes)}")
    if not lib.mlp_isa_supported(codes[isa]):
        raise BackendUnavailable(f"isa: this CPU cannot run the {isa!r} kernels")
    return codes[isa]


def check_float32_matrix(name: str, array: Any, writable: bool = False) -> np.ndarray:
    """:func:`mlpbench.checks.check_float32_matrix`, and non-empty: C gets at least one element."""
    array = checks.check_float32_matrix(name, array, writable)
    if array.size == 0:
        raise ValueError(f"{name}: empty array of shape {array.shape}")
    return array


def float_pointer(array: np.ndarray) -> Any:
    """``float *`` to a validated array's data (keeps the array alive while the pointer lives)."""
    return ffi.from_buffer("float[]", array)


def buffer_view(pointer: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 NumPy view of C memory; valid only while its owner is alive."""
    count = int(np.prod(shape))
    return np.frombuffer(ffi.buffer(pointer, count * 4), dtype=np.float32).reshape(shape)


class Gemm:
    """The C library's standalone product ``C = op(A) @ op(B)`` with its own packing workspace, so a call
    allocates nothing (pass ``out``). Sized at creation for ``m <= max_m``, ``n <= max_n``, ``threads``.

    ``version`` picks the ladder rung (1 naive, 2 blocked, 3 packed); ``transpose_a`` / ``transpose_b`` use
    ``A.T`` / ``B.T`` of the stored arrays without copying. NaN and Inf propagate as in IEEE arithmetic.
    One call at a time: the packing buffers are the workspace's.
    """

    def __init__(self, max_m: int, max_n: int, threads: int | None = None, variant: str = "omp",
                 isa: str = "auto") -> None:
        self._lib = lib = library(variant)
        self.variant = variant
        self.max_threads = resolve_threads(lib, variant, threads)
        for name, value in (("max_m", max_m), ("max_n", max_n)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        self.max_m, self.max_n = int(max_m), int(max_n)
        isa_code = resolve_isa(lib, isa)
        self.isa = _isa_name(isa_code if isa_code else lib.mlp_best_isa())
        handle = ffi.new("mlp_gemm_workspace **")
        raise_for_status(lib, lib.mlp_gemm_workspace_create(handle, self.max_m, self.max_n, self.max_threads,
                                                            isa_code), "mlp_gemm_workspace_create")
        self._workspace = handle[0]
        self._finalizer = weakref.finalize(self, lib.mlp_gemm_workspace_destroy, self._workspace)

    def __call__(self, A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None, *, version: int = 3,
                 threads: int | None = None, transpose_a: bool = False, transpose_b: bool = False
                 ) -> np.ndarray:
        if not self._finalizer.alive:
            raise RuntimeError("Gemm workspace is closed")
        lib = self._lib
        version = resolve_kernel(version)
        threads = self.max_threads if threads is None else resolve_threads(lib, self.variant, threads)
        if threads > self.max_threads:
            raise ValueError(f"threads: this workspace was made for at most {self.max_threads}, got {threads}")
        for name, flag in (("transpose_a", transpose_a), ("transpose_b", transpose_b)):
            if not isinstance(flag, bool | np.bool_):
                raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")
        A = check_float32_matrix("A", A)
        B = check_float32_matrix("B", B)
        m, k = A.shape[::-1] if transpose_a else A.shape
        k_b, n = B.shape[::-1] if transpose_b else B.shape
        if k != k_b:
            raise ValueError(f"inner dimensions differ: op(A) is {m}x{k}, op(B) is {k_b}x{n}")
        if m > self.max_m or n > self.max_n:
            raise ValueError(f"product {m}x{n} exceeds this workspace's max_m={self.max_m}, max_n={self.max_n}")
        if out is None:
            out = np.empty((m, n), dtype=np.float32)
        else:
            out = check_float32_matrix("out", out, writable=True)
            if out.shape != (m, n):
                raise ValueError(f"out: expected shape {(m, n)}, got {out.shape}")
            if np.may_share_memory(out, A) or np.may_share_memory(out, B):
                raise ValueError("out: must not overlap A or B")
        status = lib.mlp_gemm(self._workspace, version, threads, int(transpose_a), int(transpose_b), m, n, k,
                              float_pointer(A), A.shape[1], float_pointer(B), B.shape[1],
                              float_pointer(out), n)
        raise_for_status(lib, status, "mlp_gemm")
        return out

    def close(self) -> None:
        """Free the workspace (idempotent; also done when the object is collected)."""
        self._finalizer()

    def __enter__(self) -> Gemm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_workspaces: dict[tuple[str, str, int], Gemm] = {}
_workspaces_lock = threading.Lock()


def matmul(A: np.ndarray, B: np.ndarray, *, version: int = 3, threads: int | None = None,
           transpose_a: bool = False, transpose_b: bool = False, variant: str = "omp",
           isa: str = "auto") -> np.ndarray:
    """``op(A) @ op(B)`` in float32 with the C library's ladder rung ``version``, into a new array.

    The packing workspace is kept per (variant, isa, threads) and only grows, so repeated calls allocate
    nothing but their result (a :class:`Gemm` with ``out`` avoids even that)."""
    A = check_float32_matrix("A", A)
    B = check_float32_matrix("B", B)
    threads = resolve_threads(library(variant), variant, threads)
    m = A.shape[1] if transpose_a else A.shape[0]
    n = B.shape[0] if transpose_b else B.shape[1]
    with _workspaces_lock:  # C works in the workspace with the GIL released: one caller at a time
        key = (variant, isa, threads)
        gemm = _workspaces.get(key)
        if gemm is None or gemm.max_m < m or gemm.max_n < n:
            grown = Gemm(max(m, gemm.max_m if gemm else 1), max(n, gemm.max_n if gemm else 1),
                         threads=threads, variant=variant, isa=isa)
            if gemm is not None:
                gemm.close()
            _workspaces[key] = gemm = grown
        return gemm(A, B, version=version, transpose_a=transpose_a, transpose_b=transpose_b)
