"""The C library's standalone matrix product (the ladder benchmark's entry point): every version and
transposition against NumPy in float64 on sizes that divide no tile, bit-identical across thread counts, and
every malformed input stopped in Python with a clear error."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlpbench import native

VERSIONS = sorted(native.KERNELS)
# Sizes that divide no tile of the packed product (6 x 16 and 8 x 32, KC 512, MC 144), plus k > KC and n > NC.
SHAPES = [(1, 1, 1), (7, 33, 257), (257, 7, 33), (33, 257, 7), (150, 17, 300), (3, 4100, 2), (7, 33, 1031)]


def operands(m, n, k, transpose_a, transpose_b, seed=0):
    rng = np.random.Generator(np.random.PCG64(seed))
    A = rng.uniform(-1, 1, size=(k, m) if transpose_a else (m, k)).astype(np.float32)
    B = rng.uniform(-1, 1, size=(n, k) if transpose_b else (k, n)).astype(np.float32)
    return A, B


def expected(A, B, transpose_a, transpose_b):
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    return (A64.T if transpose_a else A64) @ (B64.T if transpose_b else B64)


def assert_product_close(C, A, B, transpose_a, transpose_b):
    """Element-wise against the float32 accumulation bound (k + 2) eps sum |a b|."""
    A64, B64 = np.abs(A.astype(np.float64)), np.abs(B.astype(np.float64))
    bound = (A64.T if transpose_a else A64) @ (B64.T if transpose_b else B64)
    k = A.shape[0] if transpose_a else A.shape[1]
    error = np.abs(C.astype(np.float64) - expected(A, B, transpose_a, transpose_b))
    assert np.isfinite(C).all()
    assert (error <= (k + 2) * np.finfo(np.float32).eps * bound + 1e-30).all(), float(error.max())


# The BLAS build (every version is cblas_sgemm there) exists where the scipy-openblas32 wheel was installed.
NEEDS_BLAS = pytest.mark.skipif(not native.library_path("blas").is_file(),
                                reason="libmlp_blas.so not built (make -C native with scipy-openblas32 installed)")


@pytest.mark.parametrize("variant", [pytest.param(v, marks=NEEDS_BLAS) if v == "blas" else v for v in native.VARIANTS])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_every_version_matches_float64(variant, version, transpose_a, transpose_b):
    threads = 1 if variant == "serial" else 2
    with native.Gemm(300, 4200, threads=threads, variant=variant) as gemm:
        for m, n, k in SHAPES:
            A, B = operands(m, n, k, transpose_a, transpose_b)
            out = np.full((m, n), np.nan, dtype=np.float32)  # every element must be written
            gemm(A, B, out, version=version, transpose_a=transpose_a, transpose_b=transpose_b)
            assert_product_close(out, A, B, transpose_a, transpose_b)


@pytest.mark.parametrize("isa", [isa for isa in native.ISAS if isa != "auto"])
def test_each_instruction_set(isa):
    lib = native.library("omp")
    if not lib.mlp_isa_supported(native.ISAS[isa]):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    A, B = operands(33, 257, 300, False, True)
    C = native.matmul(A, B, version=3, threads=2, transpose_b=True, isa=isa)
    assert_product_close(C, A, B, False, True)


@pytest.mark.parametrize("version", VERSIONS)
def test_thread_count_changes_no_bit(version):
    A, B = operands(150, 257, 300, True, False, seed=3)
    results = [native.matmul(A, B, version=version, threads=t, transpose_a=True) for t in (1, 2, 3)]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


@pytest.mark.parametrize("isa", [isa for isa in native.ISAS if isa != "auto"])
@pytest.mark.parametrize("transpose_b", [False, True])
def test_a_few_rows_get_the_bits_of_the_same_rows_in_a_tall_product(isa, transpose_b):
    """A product of at most one row sliver reads B where it lies instead of packing it (where B's rows are
    contiguous): the same multiply-adds in the same order, so each row equals that row of a product tall enough
    to pack B, bit for bit."""
    lib = native.library("omp")
    if not lib.mlp_isa_supported(native.ISAS[isa]):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    A, B = operands(40, 257, 300, False, transpose_b, seed=5)
    tall = native.matmul(A, B, version=3, threads=1, transpose_b=transpose_b, isa=isa)
    for rows in (1, 5, 6, 8):
        short = native.matmul(A[:rows], B, version=3, threads=1, transpose_b=transpose_b, isa=isa)
        np.testing.assert_array_equal(short, tall[:rows])


@pytest.mark.parametrize("isa", [isa for isa in native.ISAS if isa != "auto"])
@pytest.mark.parametrize("threads", [1, 3])
def test_a_product_of_depth_one_has_the_micro_kernels_bits(isa, threads):
    """A product of depth 1 (a weight gradient at batch 1) is computed as an outer product, each element with
    the micro-kernel's multiply-add from zero: the bits of the same product with a second term of zeros, which
    the micro-kernel computes, a product of -0 stored as +0 in both (A and B hold zeros and negatives)."""
    lib = native.library("omp")
    if not lib.mlp_isa_supported(native.ISAS[isa]):
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    rng = np.random.default_rng(7)
    a = rng.choice(np.array([0.0, -0.0, -1.5, 2.25, 3e-20], np.float32), size=(67, 1)) * rng.standard_normal(
        (67, 1)).astype(np.float32)
    b = rng.choice(np.array([0.0, -0.0, -3.0, 0.5, 7e-25], np.float32), size=(1, 301)) * rng.standard_normal(
        (1, 301)).astype(np.float32)
    outer = native.matmul(a, b, version=3, threads=threads, isa=isa)
    deeper = native.matmul(np.hstack([a, np.zeros_like(a)]), np.vstack([b, np.ones_like(b)]), version=3,
                           threads=threads, isa=isa)
    assert np.signbit(outer).any() and (outer == 0).any()  # negatives and zeros both present
    assert outer.tobytes() == deeper.tobytes()
    np.testing.assert_array_equal(outer, (a.astype(np.float64) * b).astype(np.float32))


def test_serial_library_has_no_openmp():
    assert native.library("serial").mlp_has_openmp() == 0
    assert native.library("omp").mlp_has_openmp() == 1


def test_matmul_defaults_and_out():
    A, B = operands(7, 33, 5, False, False)
    np.testing.assert_allclose(native.matmul(A, B), A @ B, rtol=1e-5, atol=1e-6)
    with native.Gemm(7, 33, threads=1) as gemm:
        out = np.empty((7, 33), dtype=np.float32)
        assert gemm(A, B, out) is out
        np.testing.assert_allclose(out, A @ B, rtol=1e-5, atol=1e-6)


def test_matmul_workspace_grows_and_shrinks_nothing():
    rng = np.random.default_rng(4)
    for m, n, k in [(3, 4, 5), (40, 300, 17), (2, 3, 700), (41, 1, 1)]:
        A = rng.standard_normal((m, k)).astype(np.float32)
        B = rng.standard_normal((k, n)).astype(np.float32)
        assert_product_close(native.matmul(A, B, threads=2), A, B, False, False)


def test_closed_workspace_refuses():
    gemm = native.Gemm(4, 4, threads=1)
    gemm.close()
    gemm.close()
    with pytest.raises(RuntimeError, match="closed"):
        gemm(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32))


GOOD = np.ones((4, 5), dtype=np.float32)
OTHER = np.ones((5, 3), dtype=np.float32)


@pytest.mark.parametrize(("A", "B", "kwargs", "error", "match"), [
    (GOOD.astype(np.float64), OTHER, {}, TypeError, "dtype float32"),
    (GOOD.tolist(), OTHER, {}, TypeError, "numpy.ndarray"),
    (GOOD[None], OTHER, {}, ValueError, "2-D"),
    (np.ones((0, 5), np.float32), OTHER, {}, ValueError, "empty"),
    (np.ones((4, 10), np.float32)[:, ::2], OTHER, {}, ValueError, "C-contiguous"),
    (GOOD, np.ones((4, 3), np.float32), {}, ValueError, "inner dimensions"),
    (GOOD, OTHER, {"version": 0}, ValueError, "unknown matrix-product version"),
    (GOOD, OTHER, {"version": 4}, ValueError, "unknown matrix-product version"),
    (GOOD, OTHER, {"version": 2.0}, TypeError, "kernel"),
    (GOOD, OTHER, {"version": True}, TypeError, "kernel"),
    (GOOD, OTHER, {"threads": 0}, ValueError, "threads"),
    (GOOD, OTHER, {"threads": -3}, ValueError, "threads"),
    (GOOD, OTHER, {"threads": 1.5}, TypeError, "threads"),
    (GOOD, OTHER, {"threads": 10**9}, ValueError, "threads"),
    (GOOD, OTHER, {"transpose_a": 1}, TypeError, "transpose_a"),
    (GOOD, OTHER, {"variant": "cuda"}, ValueError, "variant"),
    (GOOD, OTHER, {"variant": "serial", "threads": 2}, ValueError, "one thread"),
    (GOOD, OTHER, {"isa": "sse9"}, ValueError, "instruction set"),
    (GOOD, OTHER, {"isa": 2}, TypeError, "isa"),
])
def test_bad_matmul_input_raises(A, B, kwargs, error, match):
    with pytest.raises(error, match=match):
        native.matmul(A, B, **kwargs)


def misaligned_float32(shape):
    """A float32 array whose data starts one byte past an aligned address."""
    raw = np.zeros(int(np.prod(shape)) * 4 + 1, dtype=np.uint8)
    return np.frombuffer(raw.data, dtype=np.float32, count=int(np.prod(shape)), offset=1).reshape(shape)


def test_bad_out_and_misalignment_raise():
    with native.Gemm(4, 3, threads=1) as gemm:
        with pytest.raises(ValueError, match="misaligned"):
            gemm(misaligned_float32((4, 5)), OTHER)
        with pytest.raises(ValueError, match="out: expected shape"):
            gemm(GOOD, OTHER, np.empty((3, 4), np.float32))
        with pytest.raises(ValueError, match="read-only"):
            gemm(GOOD, OTHER, np.frombuffer(bytes(48), dtype=np.float32).reshape(4, 3))
        with pytest.raises(ValueError, match="overlap"):
            rows = np.ones((8, 3), np.float32)
            gemm(rows[:4], np.ones((3, 3), np.float32), rows[3:7])
        with pytest.raises(ValueError, match="exceeds this workspace"):
            gemm(np.ones((5, 5), np.float32), OTHER)
        with pytest.raises(ValueError, match="at most 1"):
            native.Gemm(4, 3, threads=1, variant="omp")(GOOD, OTHER, threads=2)


# ------------------------------------------------------------------ random abuse of the API

BAD_DTYPES = [np.float64, np.float16, np.int32, np.uint8, np.complex64]
# Each example breaks none, one or two of these rules (so about a third of them are valid calls, whose
# results are then checked).
ARRAY_DEFECTS = ["dtype", "fortran", "strided", "misaligned", "3d", "empty", "wrong_size"]
CALL_DEFECTS = ["version", "threads", "transpose_flag"]


def corrupt(draw, array, defect):
    """``array`` broken in one way C would misread (or left alone)."""
    if defect == "dtype":
        with np.errstate(invalid="ignore"):  # NaN or Inf into an integer type
            return array.astype(draw(st.sampled_from(BAD_DTYPES)))
    if defect == "fortran":
        return np.asfortranarray(array)  # a single row or column stays C-contiguous: then valid
    if defect == "strided":
        return np.repeat(array, 2, axis=1)[:, ::2]
    if defect == "misaligned":
        offset = draw(st.integers(1, 3))
        raw = np.zeros(array.nbytes + offset, dtype=np.uint8)
        raw[offset:] = np.frombuffer(array.tobytes(), dtype=np.uint8)
        return np.frombuffer(raw.data, dtype=array.dtype, count=array.size, offset=offset).reshape(array.shape)
    if defect == "3d":
        return array[None]
    if defect == "empty":
        return array[:0]
    if defect == "wrong_size":
        return np.ones((array.shape[0], array.shape[1] + 1), dtype=array.dtype)
    return array


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_inputs_raise_cleanly_or_compute_correctly(data):
    m, n, k = (data.draw(st.integers(1, 40), label=name) for name in "mnk")
    transpose_a, transpose_b = data.draw(st.booleans()), data.draw(st.booleans())
    rng = np.random.Generator(np.random.PCG64(data.draw(st.integers(0, 2**32), label="seed")))
    A = rng.uniform(-1, 1, size=(k, m) if transpose_a else (m, k)).astype(np.float32)
    B = rng.uniform(-1, 1, size=(n, k) if transpose_b else (k, n)).astype(np.float32)
    if data.draw(st.booleans(), label="non-finite value"):  # not a defect: IEEE propagation expected
        A.flat[rng.integers(A.size)] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    version = data.draw(st.sampled_from([1, 2, 3]), label="version")
    threads = data.draw(st.sampled_from([1, 2, 3, None]), label="threads")
    flag_a = transpose_a
    choices = [f"A:{d}" for d in ARRAY_DEFECTS] + [f"B:{d}" for d in ARRAY_DEFECTS] + CALL_DEFECTS
    defects = data.draw(st.lists(st.sampled_from(choices), max_size=2, unique=True), label="defects")
    for defect in defects:
        if defect.startswith("A:"):
            A = corrupt(data.draw, A, defect[2:])
        elif defect.startswith("B:"):
            B = corrupt(data.draw, B, defect[2:])
        elif defect == "version":
            version = data.draw(st.sampled_from([0, 4, -1, 2.0, None, "3", True]))
        elif defect == "threads":
            threads = data.draw(st.sampled_from([0, -1, 10**6, 1.0, True, "2"]))
        else:
            flag_a = data.draw(st.sampled_from([1, 0, None, "yes"]))
    try:
        C = native.matmul(A, B, version=version, threads=threads, transpose_a=flag_a, transpose_b=transpose_b)
    except (TypeError, ValueError) as error:
        assert str(error)  # says what was wrong
        event("rejected")
        return
    event("computed")
    # Accepted: then it was a well-formed call, and the result must be right.
    assert A.dtype == B.dtype == np.float32 and A.flags.c_contiguous and A.flags.aligned and B.flags.aligned
    if np.isfinite(A).all():
        assert_product_close(C, A, B, transpose_a, transpose_b)
    else:
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(np.isnan(C), np.isnan(expected(A, B, transpose_a, transpose_b)))


def test_unloading_the_library_keeps_openmp_threads_alive():
    """cffi dlcloses a library whose handle is collected (at interpreter exit, say); libgomp must stay
    loaded under its worker threads, or they crash."""
    code = """
import time, cffi, numpy as np
from mlpbench import native
ffi = cffi.FFI()
ffi.cdef(native._declarations(native.native_dir() / "include" / "mlp.h"))
lib = ffi.dlopen(str(native.library_path("omp")))
handle = ffi.new("mlp_gemm_workspace **")
assert lib.mlp_gemm_workspace_create(handle, 64, 64, 2, 0) == 0
a, c = np.ones((64, 64), np.float32), np.empty((64, 64), np.float32)
pa, pc = ffi.from_buffer("float[]", a), ffi.from_buffer("float[]", c)
assert lib.mlp_gemm(handle[0], 3, 2, 0, 0, 64, 64, 64, pa, 64, pa, 64, pc, 64) == 0
ffi.dlclose(lib)
time.sleep(0.5)
print("alive")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "alive" in result.stdout, (result.returncode, result.stderr)


def test_build_info_names_the_compiler_and_the_instruction_set():
    info = native.build_info()
    assert info["compiler"] and "-O3" in info["cflags"] and "-march=native" not in info["cflags"]
    assert info["openmp"] is True and info["isa"] in native.ISAS
