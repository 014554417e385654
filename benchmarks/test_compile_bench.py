"""Benchmarks of gpuflow.compile beside eager gpuflow and hand-written NumPy with out= buffers.

Run with
    python -m pytest benchmarks/test_compile_bench.py --benchmark-min-rounds=5
Each benchmark stores in extra_info the peak memory of one call as tracemalloc
records it (``peak_bytes``), the bytes of the inputs and outputs, and for the
compiled version the bytes of its reused buffers (``pool_bytes``), which stay
allocated between calls and are added to ``peak_with_pool_bytes``. The
"first call" groups compile afresh in every round, and the "command" group
runs a whole ``gpuflow grad`` command in the process, compiled and eager.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpuflow as gf
from gpuflow.compile import CompiledFunction

BATCH = 10_000_000


def _nbytes(values) -> int:
    total = 0
    for value in values:
        if isinstance(value, (tuple, list)):
            total += _nbytes(value)
        else:
            total += np.asarray(value).nbytes
    return total


def _peak_bytes(function, *args) -> tuple[int, object]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        result = function(*args)
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def run(benchmark, function, *args):
    function(*args)  # The compiled versions trace and allocate their buffers here.
    pool_bytes = 0
    if isinstance(function, CompiledFunction):
        pool_bytes = _pool_bytes(function)
    peak, result = _peak_bytes(function, *args)
    moved = _nbytes(args) + _nbytes(result)
    benchmark.extra_info["peak_bytes"] = peak
    benchmark.extra_info["pool_bytes"] = pool_bytes
    benchmark.extra_info["peak_with_pool_bytes"] = peak + pool_bytes
    benchmark.extra_info["inputs_and_outputs_bytes"] = moved
    benchmark.extra_info["memory_ratio"] = (peak + pool_bytes + _nbytes(args)) / moved
    return benchmark(function, *args)


def _pool_bytes(compiled) -> int:
    return sum(entry[2].pool_bytes() for entry in compiled.cache.values())



@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(BATCH, dtype=np.float32) for _ in range(4)]


# Sigmoid batch: value and gradient of sum(sigmoid(x)).


def sigmoid_sum(x):
    return gf.sum(gf.sigmoid(x))


def sigmoid_out(x):
    e = np.empty_like(x)
    r = np.empty_like(x)
    np.abs(x, out=e)
    np.negative(e, out=e)
    np.exp(e, out=e)
    np.add(e, 1, out=r)
    np.divide(1, r, out=r)
    np.multiply(e, r, out=e)  # sigmoid(-|x|)
    gradient = np.multiply(e, r)
    np.copyto(e, r, where=x >= 0)
    return e.sum(), gradient


sigmoid_compiled = gf.compile(sigmoid_sum)
sigmoid_eager = gf.value_and_grad(sigmoid_sum)


@pytest.mark.benchmark(group="compile: sigmoid batch")
def test_sigmoid_out(benchmark, batch):
    run(benchmark, sigmoid_out, batch[0])


@pytest.mark.benchmark(group="compile: sigmoid batch")
def test_sigmoid_eager(benchmark, batch):
    run(benchmark, sigmoid_eager, batch[0])


@pytest.mark.benchmark(group="compile: sigmoid batch")
def test_sigmoid_compiled(benchmark, batch):
    value, gradient = run(benchmark, sigmoid_compiled, batch[0])
    expected = sigmoid_out(batch[0])
    np.testing.assert_allclose(value, expected[0], rtol=1e-4)
    np.testing.assert_allclose(gradient, expected[1], rtol=1e-6)


# Quadratic batch: value and the four gradients of sum(a*x**2 + b*x + c).


def quadratic(x, a, b, c):
    return gf.sum(a * x**2 + b * x + c)


def quadratic_out(x, a, b, c):
    x2 = np.multiply(x, x)
    total = np.multiply(a, x2)
    gradient_x = np.multiply(b, x)
    np.add(total, gradient_x, out=total)
    np.add(total, c, out=total)
    value = total.sum()
    np.multiply(a, x, out=gradient_x)
    np.multiply(gradient_x, 2, out=gradient_x)
    np.add(gradient_x, b, out=gradient_x)
    return value, (gradient_x, x2, x.copy(), np.ones_like(c))


quadratic_compiled = gf.compile(quadratic, (0, 1, 2, 3))
quadratic_eager = gf.value_and_grad(quadratic, (0, 1, 2, 3))


@pytest.mark.benchmark(group="compile: quadratic batch")
def test_quadratic_out(benchmark, batch):
    run(benchmark, quadratic_out, *batch)


@pytest.mark.benchmark(group="compile: quadratic batch")
def test_quadratic_eager(benchmark, batch):
    run(benchmark, quadratic_eager, *batch)


@pytest.mark.benchmark(group="compile: quadratic batch")
def test_quadratic_compiled(benchmark, batch):
    value, grads = run(benchmark, quadratic_compiled, *batch)
    expected = quadratic_out(*batch)
    np.testing.assert_allclose(value, expected[0], rtol=1e-4)
    for gradient, reference in zip(grads, expected[1]):
        np.testing.assert_allclose(gradient, reference, rtol=1e-6)


# Quadratic-formula root: sum((-b + sqrt(b**2 - 4ac)) / (2a)) and its three gradients.


def root(a, b, c):
    return gf.sum((-b + gf.sqrt(b**2 - 4 * a * c)) / (2 * a))


def root_out(a, b, c):
    d = np.multiply(b, b)
    t = np.multiply(a, c)
    np.multiply(t, 4, out=t)
    np.subtract(d, t, out=d)
    np.sqrt(d, out=d)
    np.subtract(d, b, out=t)
    np.divide(t, a, out=t)
    np.multiply(t, 0.5, out=t)  # the root r
    value = t.sum()
    gradient_c = np.divide(-1, d)  # dr/dc = -1 / d
    gradient_b = np.divide(b, d)  # dr/db = (b / d - 1) / (2a)
    np.subtract(gradient_b, 1, out=gradient_b)
    np.divide(gradient_b, a, out=gradient_b)
    np.multiply(gradient_b, 0.5, out=gradient_b)
    gradient_a = np.multiply(c, gradient_c)  # dr/da = (-c / d - r) / a
    np.subtract(gradient_a, t, out=gradient_a)
    np.divide(gradient_a, a, out=gradient_a)
    return value, (gradient_a, gradient_b, gradient_c)


root_compiled = gf.compile(root, (0, 1, 2))
root_eager = gf.value_and_grad(root, (0, 1, 2))


@pytest.fixture(scope="module")
def coefficients():
    rng = np.random.default_rng(1)
    ranges = ((1.0, 2.0), (5.0, 6.0), (0.5, 1.0))  # b**2 - 4ac >= 17
    return [rng.uniform(low, high, BATCH).astype(np.float32) for low, high in ranges]


@pytest.mark.benchmark(group="compile: quadratic root")
def test_root_out(benchmark, coefficients):
    run(benchmark, root_out, *coefficients)


@pytest.mark.benchmark(group="compile: quadratic root")
def test_root_eager(benchmark, coefficients):
    run(benchmark, root_eager, *coefficients)


@pytest.mark.benchmark(group="compile: quadratic root")
def test_root_compiled(benchmark, coefficients):
    value, grads = run(benchmark, root_compiled, *coefficients)
    expected = root_out(*coefficients)
    np.testing.assert_allclose(value, expected[0], rtol=1e-4)
    for gradient, reference in zip(grads, expected[1]):
        np.testing.assert_allclose(gradient, reference, rtol=2e-5, atol=1e-6)


# First call: a new signature traces the function on placeholders, builds the plan and
# runs it, which is what a one-off `gpuflow grad` pays. Each round compiles afresh.


def _first_call(function, argnums):
    def call(*args):
        return gf.compile(function, argnums)(*args)

    return call


@pytest.mark.benchmark(group="compile: first call, quadratic batch")
def test_quadratic_first_call_eager(benchmark, batch):
    run(benchmark, quadratic_eager, *batch)


@pytest.mark.benchmark(group="compile: first call, quadratic batch")
def test_quadratic_first_call_compiled(benchmark, batch):
    value, grads = run(benchmark, _first_call(quadratic, (0, 1, 2, 3)), *batch)
    np.testing.assert_allclose(value, quadratic_out(*batch)[0], rtol=1e-4)


@pytest.mark.benchmark(group="compile: first call, quadratic root")
def test_root_first_call_eager(benchmark, coefficients):
    run(benchmark, root_eager, *coefficients)


@pytest.mark.benchmark(group="compile: first call, quadratic root")
def test_root_first_call_compiled(benchmark, coefficients):
    value, grads = run(benchmark, _first_call(root, (0, 1, 2)), *coefficients)
    np.testing.assert_allclose(value, root_out(*coefficients)[0], rtol=1e-4)


# The command on one batch: `gpuflow grad` compiles by default on NumPy, and
# --no-compile evaluates eagerly. Each round is one whole command, trace included,
# with its printed output discarded.

COMMAND = ["grad", "a*x**2 + b*x + c", "a=2", "b=1", "c=4", "--random", "x=3000000"]


def _command(*extra):
    import contextlib
    import io

    from gpuflow.cli.main import main

    def call():
        with contextlib.redirect_stdout(io.StringIO()):
            status = main([*COMMAND, *extra])
        assert status == 0
        return status

    return call


@pytest.mark.benchmark(group="compile: command, quadratic x=3000000")
def test_command_first_call_eager(benchmark):
    call = _command("--no-compile")
    benchmark.extra_info["peak_bytes"] = _peak_bytes(call)[0]
    benchmark(call)


@pytest.mark.benchmark(group="compile: command, quadratic x=3000000")
def test_command_first_call_compiled(benchmark):
    call = _command()
    benchmark.extra_info["peak_bytes"] = _peak_bytes(call)[0]
    benchmark(call)
