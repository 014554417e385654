"""Every operation on CuPy against the NumPy backend (needs a CUDA device, marked gpu).

Sizes include ones that are not multiples of a CUDA block, so kernels' tails
are exercised. This file imports only NumPy, pytest and gpuflow, so that
ci/gpu-check can run it on a machine with nothing else installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import gpuflow as gf
from gpuflow.passes.fusion import fusion_disabled
from op_specs import BINARY, UNARY

pytestmark = pytest.mark.gpu

SIZES = [1, 1000, 1023, 4097, 1_000_003]
TOLERANCE = {"float32": {"rtol": 2e-5, "atol": 1e-6}, "float64": {"rtol": 1e-11, "atol": 1e-12}}


@pytest.fixture(scope="module")
def cupy_backend():
    try:
        return gf.get_backend("cupy")
    except gf.backends.BackendUnavailableError as error:
        pytest.skip(f"needs CuPy and a CUDA device: {error}")


def _both(function, arrays, argnums, cupy_backend):
    on_cpu = gf.value_and_grad(function, argnums)(*arrays)
    on_gpu = gf.value_and_grad(function, argnums, backend=cupy_backend)(*arrays)
    return on_cpu, on_gpu


def _compare(on_cpu, on_gpu, cupy_backend, dtype):
    tolerance = TOLERANCE[dtype]
    np.testing.assert_allclose(cupy_backend.to_numpy(on_gpu[0]), on_cpu[0], **tolerance)
    grads_cpu = on_cpu[1] if isinstance(on_cpu[1], tuple) else (on_cpu[1],)
    grads_gpu = on_gpu[1] if isinstance(on_gpu[1], tuple) else (on_gpu[1],)
    for cpu, gpu in zip(grads_cpu, grads_gpu):
        host = cupy_backend.to_numpy(gpu)
        assert host.dtype == cpu.dtype
        np.testing.assert_allclose(host, cpu, **tolerance)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("spec", UNARY, ids=lambda spec: spec.name)
def test_unary_parity(spec, size, dtype, cupy_backend):
    x = spec.domain(np.random.default_rng(size), (size,)).astype(dtype)
    function = lambda t: gf.sum(spec.function(t))  # noqa: E731
    _compare(*_both(function, [x], 0, cupy_backend), cupy_backend, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("spec", BINARY, ids=lambda spec: spec.name)
def test_binary_parity(spec, size, dtype, cupy_backend):
    rng = np.random.default_rng(size)
    a = spec.domains[0](rng, (size,)).astype(dtype)
    b = spec.domains[1](rng, (size,)).astype(dtype)
    function = lambda u, v: gf.sum(spec.function(u, v))  # noqa: E731
    _compare(*_both(function, [a, b], (0, 1), cupy_backend), cupy_backend, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES)
def test_fused_multiply_add_parity(size, dtype, cupy_backend):
    rng = np.random.default_rng(size)
    arrays = [rng.normal(size=size).astype(dtype) for _ in range(4)]

    def function(a, b, c, w):
        return gf.sum((a * b + c) * w)

    fused = _both(function, arrays, (0, 1, 2), cupy_backend)
    with fusion_disabled():
        plain = _both(function, arrays, (0, 1, 2), cupy_backend)
    _compare(fused[0], fused[1], cupy_backend, dtype)
    _compare(plain[0], plain[1], cupy_backend, dtype)


@pytest.mark.parametrize(
    "name, function",
    [
        ("sum", lambda t: gf.sum(t, axis=1)),
        ("mean", lambda t: gf.mean(t, axis=0)),
        ("max", lambda t: gf.max(t, axis=1)),
        ("logsumexp", lambda t: gf.logsumexp(t, axis=1)),
        ("norm", lambda t: gf.norm(t, axis=0)),
        ("matmul", lambda t: t @ gf.transpose(t)),
        ("reshape", lambda t: gf.reshape(t, (-1,)) * 2.0),
        ("getitem", lambda t: t[1:, ::2]),
        ("concatenate", lambda t: gf.concatenate([t, t * t], axis=0)),
    ],
)
def test_array_operation_parity(name, function, cupy_backend):
    x = np.random.default_rng(7).uniform(0.5, 2.0, size=(37, 129))
    _compare(*_both(lambda t: gf.sum(function(t)), [x], 0, cupy_backend), cupy_backend, "float64")


# gpuflow.compile on CuPy: one generated kernel per fused region, against eager NumPy.

COMPILED = {
    "quadratic": (lambda x, a, b, c: gf.sum(a * x**2 + b * x + c), (0, 1, 2, 3), (-1.0, 1.0)),
    "root": (
        lambda a, b, c: gf.sum((-b + gf.sqrt(b**2 - 4 * a * c)) / (2 * a)),
        (0, 1, 2),
        None,  # coefficients drawn so that b**2 - 4ac > 0
    ),
    "sigmoid": (lambda x: gf.sum(gf.sigmoid(x)), 0, (-8.0, 8.0)),
    "mixed": (
        lambda x, y: gf.mean(gf.where(x > y, gf.tanh(x), gf.maximum(x, y) / (y * y + 1.0))),
        (0, 1),
        (-2.0, 2.0),
    ),
    "softplus_chain": (
        lambda x, y: gf.sum(gf.softplus(x * y) - gf.log1p(gf.exp(-gf.abs(y))) * x),
        (0, 1),
        (-3.0, 3.0),
    ),
}


def _compiled_inputs(name, size, dtype):
    function, argnums, domain = COMPILED[name]
    rng = np.random.default_rng(size)
    if domain is None:
        ranges = ((1.0, 2.0), (5.0, 6.0), (0.5, 1.0))
        return [rng.uniform(low, high, size).astype(dtype) for low, high in ranges]
    count = function.__code__.co_argcount
    return [rng.uniform(*domain, size).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(COMPILED))
def test_compiled_parity(name, size, dtype, cupy_backend):
    from gpuflow.compile.cuda_codegen import CupyProgram

    function, argnums, _ = COMPILED[name]
    arrays = _compiled_inputs(name, size, dtype)
    on_cpu = gf.value_and_grad(function, argnums)(*arrays)
    compiled = gf.compile(function, argnums, backend=cupy_backend)
    for _ in range(2):  # the second call reuses the traced plan and its kernels
        on_gpu = compiled(*[cupy_backend.from_numpy(array) for array in arrays])
        _compare(on_cpu, on_gpu, cupy_backend, dtype)
    programs = [entry[2] for entry in compiled.cache.values()]
    assert all(isinstance(program, CupyProgram) for program in programs)
    assert any(region.fused for region in compiled.plan.regions)
