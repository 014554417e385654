"""The CuPy launch wrappers of the fused kernels against NumPy, on a CUDA device.

Every test here is marked gpu and skips when CuPy or a device is missing. Run them with
``python -m pytest -m gpu tests`` (or ci/gpu-check) on a machine with an NVIDIA GPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from gpuflow.backends import cuda_kernels
from kernel_host import (
    check_multiply_add_backward,
    check_multiply_add_forward,
    check_sigmoid_backward,
    check_sigmoid_forward,
    require_cupy_device,
    sample,
)

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
SIZES = [0, 1, 1000, 1023, 4097, 1_000_003]
# "aligned" arrays start on CuPy's 256-byte allocation boundary and take the vector path.
# "offset" arrays are x[1:] views, 4 or 8 bytes past it, which must take the scalar path.
LAYOUTS = ["aligned", "offset"]


@pytest.fixture(scope="module")
def cupy():
    return require_cupy_device()


def to_device(cupy, values: np.ndarray, layout: str):
    """Copy values to the device, as a fresh array or as a view that starts one element in."""
    if layout == "aligned":
        array = cupy.asarray(values)
        assert array.data.ptr % 16 == 0
        return array
    padded = cupy.empty(values.size + 1, dtype=values.dtype)
    padded[1:] = cupy.asarray(values)
    view = padded[1:]
    assert view.data.ptr % 16 != 0
    assert view.flags.c_contiguous
    return view


def device_inputs(cupy, layout, *arrays):
    return [to_device(cupy, array, layout) for array in arrays]


def host(cupy, *arrays):
    return [cupy.asnumpy(array) for array in arrays]


# Results against NumPy.


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_forward_matches_numpy(cupy, dtype, size, layout):
    rng = np.random.default_rng(size)
    x = sample(rng, size, dtype, -60.0, 60.0)
    (x_device,) = device_inputs(cupy, layout, x)
    y, p = cuda_kernels.sigmoid_forward(x_device)
    assert y.shape == x.shape
    assert p.shape == x.shape
    problems = check_sigmoid_forward(x, *host(cupy, y, p))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_backward_matches_numpy(cupy, dtype, size, layout):
    rng = np.random.default_rng(size + 1)
    gy = sample(rng, size, dtype, -5.0, 5.0)
    _, p = cuda_kernels.sigmoid_forward(cupy.asarray(sample(rng, size, dtype, -40.0, 40.0, 3)))
    p = cupy.asnumpy(p)
    gy_device, p_device = device_inputs(cupy, layout, gy, p)
    gx = cuda_kernels.sigmoid_backward(gy_device, p_device)
    problems = check_sigmoid_backward(gy, p, *host(cupy, gx))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_multiply_add_forward_matches_numpy(cupy, dtype, size, layout):
    rng = np.random.default_rng(size + 2)
    a = sample(rng, size, dtype, -10.0, 10.0)
    b = sample(rng, size, dtype, -10.0, 10.0, shift=5)
    c = sample(rng, size, dtype, -100.0, 100.0, shift=11)
    out = cuda_kernels.multiply_add_forward(*device_inputs(cupy, layout, a, b, c))
    problems = check_multiply_add_forward(a, b, c, *host(cupy, out), fused_rounding=True)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_multiply_add_backward_matches_numpy(cupy, dtype, size, layout):
    rng = np.random.default_rng(size + 3)
    g = sample(rng, size, dtype, -3.0, 3.0)
    a = sample(rng, size, dtype, -10.0, 10.0, shift=5)
    b = sample(rng, size, dtype, -10.0, 10.0, shift=11)
    ga, gb, gc = cuda_kernels.multiply_add_backward(*device_inputs(cupy, layout, g, a, b))
    problems = check_multiply_add_backward(g, a, b, *host(cupy, ga, gb, gc))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_and_scalar_paths_agree(cupy, dtype):
    rng = np.random.default_rng(5)
    x = sample(rng, 4097, dtype, -60.0, 60.0)
    aligned = host(cupy, *cuda_kernels.sigmoid_forward(to_device(cupy, x, "aligned")))
    offset = host(cupy, *cuda_kernels.sigmoid_forward(to_device(cupy, x, "offset")))
    np.testing.assert_array_equal(aligned[0], offset[0])
    np.testing.assert_array_equal(aligned[1], offset[1])


def test_multidimensional_operands(cupy):
    rng = np.random.default_rng(6)
    a, b, c = (rng.standard_normal((33, 65)) for _ in range(3))
    out = cuda_kernels.multiply_add_forward(*(cupy.asarray(v) for v in (a, b, c)))
    assert out.shape == (33, 65)
    problems = check_multiply_add_forward(a, b, c, cupy.asnumpy(out), fused_rounding=True)
    assert not problems, "\n".join(problems)


def test_aliased_inputs(cupy):
    rng = np.random.default_rng(7)
    a = rng.standard_normal(1001)
    c = rng.standard_normal(1001)
    a_device = cupy.asarray(a)
    out = cuda_kernels.multiply_add_forward(a_device, a_device, cupy.asarray(c))
    problems = check_multiply_add_forward(a, a, c, cupy.asnumpy(out), fused_rounding=True)
    assert not problems, "\n".join(problems)


def test_launch_on_current_stream(cupy):
    x = cupy.linspace(-30, 30, 100_003, dtype=cupy.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y, p = cuda_kernels.sigmoid_forward(x)
        gx = cuda_kernels.sigmoid_backward(cupy.ones_like(x), p)
    stream.synchronize()
    problems = check_sigmoid_forward(cupy.asnumpy(x), cupy.asnumpy(y), cupy.asnumpy(p))
    assert not problems, "\n".join(problems)
    np.testing.assert_array_equal(cupy.asnumpy(gx), cupy.asnumpy(p))


def test_compiles_once_per_dtype(cupy, caplog):
    cuda_kernels._functions.clear()
    x32 = cupy.ones(10, dtype=cupy.float32)
    x64 = cupy.ones(10, dtype=cupy.float64)
    with caplog.at_level(logging.DEBUG, logger=cuda_kernels.__name__):
        for _ in range(3):
            cuda_kernels.sigmoid_forward(x32)
            cuda_kernels.sigmoid_forward(x64)
    compiles = [r.getMessage() for r in caplog.records if "compiled CUDA kernel" in r.getMessage()]
    assert len(compiles) == 2, compiles
    assert any("gpuflow_sigmoid_forward_f32" in message for message in compiles)
    assert any("gpuflow_sigmoid_forward_f64" in message for message in compiles)


def test_empty_input_skips_launch(cupy, monkeypatch):
    def fail_launch(*arguments):
        raise AssertionError("a kernel was launched for an empty array")

    monkeypatch.setattr(cuda_kernels, "_launch", fail_launch)
    y, p = cuda_kernels.sigmoid_forward(cupy.empty((0, 3), dtype=cupy.float32))
    assert y.shape == (0, 3)
    assert p.shape == (0, 3)
    ga, gb, gc = cuda_kernels.multiply_add_backward(
        *(cupy.empty(0, dtype=cupy.float64) for _ in range(3))
    )
    assert ga.size == gb.size == gc.size == 0


# Rejected operands.


def test_rejects_unsupported_dtype(cupy):
    x = cupy.ones(8, dtype=cupy.float16)
    with pytest.raises(ValueError, match=r"sigmoid_forward.*x: float16.*cupy.where"):
        cuda_kernels.sigmoid_forward(x)


def test_rejects_mixed_dtypes(cupy):
    gy = cupy.ones(8, dtype=cupy.float32)
    p = cupy.ones(8, dtype=cupy.float64)
    with pytest.raises(ValueError, match=r"sigmoid_backward.*gy: float32, p: float64"):
        cuda_kernels.sigmoid_backward(gy, p)


def test_rejects_broadcast_shapes(cupy):
    a = cupy.ones((4, 3), dtype=cupy.float32)
    c = cupy.ones(3, dtype=cupy.float32)
    with pytest.raises(ValueError, match=r"multiply_add_forward.*c: \(3,\).*a \* b \+ c"):
        cuda_kernels.multiply_add_forward(a, a, c)


def test_rejects_non_contiguous(cupy):
    g = cupy.ones((4, 6), dtype=cupy.float64)[:, ::2]
    with pytest.raises(ValueError, match=r"multiply_add_backward.*g \(shape \(4, 3\)"):
        cuda_kernels.multiply_add_backward(g, g, g)


def test_rejects_numpy_array(cupy):
    with pytest.raises(TypeError, match=r"sigmoid_forward: operand x is a numpy.ndarray"):
        cuda_kernels.sigmoid_forward(np.ones(4, dtype=np.float32))


def test_out_of_memory_reports_bytes(cupy):
    pool = cupy.get_default_memory_pool()
    x = cupy.ones(1_000_000, dtype=cupy.float32)
    # Drop cached blocks so the outputs cannot reuse one, then leave room for half an output.
    pool.free_all_blocks()
    previous_limit = pool.get_limit()
    pool.set_limit(size=pool.used_bytes() + x.nbytes // 2)
    try:
        with pytest.raises(MemoryError, match=r"sigmoid_forward.*4000000 bytes.*bytes free of"):
            cuda_kernels.sigmoid_forward(x)
    finally:
        pool.set_limit(size=previous_limit)
