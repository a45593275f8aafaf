"""``mlp_launch_kernel``, the C library's kernel launch from a record (the CUDA backends' one foreign call per
launch): every field reaches the launch function it names. The driver needs a GPU, so here Python callbacks
take the driver's place and record what they were called with; the GPU suite launches through the real one."""

import pytest

from mlpbench import native

CUDA_ERROR_INVALID_VALUE = 1


@pytest.fixture
def launch():
    """The library's launch function, a record, and the calls its two callbacks saw."""
    ffi, lib = native.ffi, native.library("serial")
    calls = []

    @ffi.callback("mlp_cu_launch_kernel")
    def plain(function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        calls.append(("plain", int(ffi.cast("uintptr_t", function)), (gx, gy, gz), (bx, by, bz), shared,
                      int(ffi.cast("uintptr_t", stream)), int(ffi.cast("uintptr_t", params)),
                      int(ffi.cast("uintptr_t", extra))))
        return 700 + len(calls)

    @ffi.callback("mlp_cu_launch_kernel_ex")
    def with_config(config, function, params, extra):
        calls.append(("ex", int(ffi.cast("uintptr_t", config)), int(ffi.cast("uintptr_t", function)),
                      int(ffi.cast("uintptr_t", params)), int(ffi.cast("uintptr_t", extra))))
        return 800 + len(calls)

    record = ffi.new("mlp_kernel_launch *")
    record.launch, record.launch_ex = plain, with_config
    record.function = ffi.cast("void *", 0x1000)
    record.grid, record.block, record.shared_bytes = (128, 2, 3), (256, 4, 5), 139264
    record.stream = ffi.cast("void *", 0x2000)
    record.params = ffi.cast("void **", 0x3000)
    # the callbacks live as long as the test: cffi frees a callback with its last reference
    yield lib.mlp_launch_kernel, record, calls, (plain, with_config)


def test_every_field_reaches_the_launch(launch):
    launch_kernel, record, calls, _ = launch
    assert launch_kernel(record) == 701
    assert calls == [("plain", 0x1000, (128, 2, 3), (256, 4, 5), 139264, 0x2000, 0x3000, 0)]


def test_a_configuration_takes_the_extended_launch(launch):
    launch_kernel, record, calls, _ = launch
    record.config = native.ffi.cast("void *", 0x4000)
    assert launch_kernel(record) == 801
    assert calls == [("ex", 0x4000, 0x1000, 0x3000, 0)]


def test_missing_pieces_are_refused_not_called(launch):
    launch_kernel, record, calls, _ = launch
    ffi = native.ffi
    assert launch_kernel(ffi.NULL) == CUDA_ERROR_INVALID_VALUE
    record.launch = ffi.NULL
    assert launch_kernel(record) == CUDA_ERROR_INVALID_VALUE
    record.config = ffi.cast("void *", 0x4000)
    record.launch_ex = ffi.NULL
    assert launch_kernel(record) == CUDA_ERROR_INVALID_VALUE
    assert calls == []
