"""CPU benchmarks: each gpuflow workload beside a hand-written NumPy gradient, in one run.

Run with
    python -m pytest benchmarks/test_cpu_bench.py --benchmark-json=cpu.json
    python benchmarks/report.py cpu.json
The report prints each workload's median time, its ratio to the NumPy version
and the peak memory of one call, which pytest-benchmark stores in extra_info.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import gpuflow as gf

BATCH = 10_000_000


def peak_bytes(function, *args) -> int:
    """Return the peak of memory allocated by one call, as NumPy reports it to tracemalloc."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        function(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def run(benchmark, function, *args):
    benchmark.extra_info["peak_bytes"] = peak_bytes(function, *args)
    benchmark.extra_info["input_bytes"] = sum(np.asarray(a).nbytes for a in args)
    return benchmark(function, *args)


# Sigmoid batch: value and gradient of sum(sigmoid(x)).


def sigmoid_numpy(x):
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)
    value = np.where(x >= 0, r, e * r).sum()
    return value, e * r * r


sigmoid_gpuflow = gf.value_and_grad(lambda x: gf.sum(gf.sigmoid(x)))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(BATCH, dtype=np.float32) for _ in range(4)]


@pytest.mark.benchmark(group="sigmoid batch")
def test_sigmoid_numpy(benchmark, batch):
    run(benchmark, sigmoid_numpy, batch[0])


@pytest.mark.benchmark(group="sigmoid batch")
def test_sigmoid_gpuflow(benchmark, batch):
    value, gradient = run(benchmark, sigmoid_gpuflow, batch[0])
    reference = sigmoid_numpy(batch[0])
    np.testing.assert_allclose(value, reference[0], rtol=1e-4)
    np.testing.assert_allclose(gradient, reference[1], rtol=1e-6)


def sigmoid_gpuflow_anomaly(x):
    with gf.detect_anomaly():
        return sigmoid_gpuflow(x)


@pytest.mark.benchmark(group="sigmoid batch")
def test_sigmoid_anomaly(benchmark, batch):
    # The cost of checking every value and gradient for NaN and infinity.
    run(benchmark, sigmoid_gpuflow_anomaly, batch[0])


# Quadratic batch: value and the four gradients of sum(a*x**2 + b*x + c).


def quadratic_numpy(x, a, b, c):
    x2 = x * x
    value = (a * x2 + b * x + c).sum()
    return value, (2 * a * x + b, x2, x.copy(), np.ones_like(c))


def quadratic(x, a, b, c):
    return gf.sum(a * x**2 + b * x + c)


quadratic_gpuflow = gf.value_and_grad(quadratic, (0, 1, 2, 3))


@pytest.mark.benchmark(group="quadratic batch")
def test_quadratic_numpy(benchmark, batch):
    run(benchmark, quadratic_numpy, *batch)


@pytest.mark.benchmark(group="quadratic batch")
def test_quadratic_gpuflow(benchmark, batch):
    value, grads = run(benchmark, quadratic_gpuflow, *batch)
    reference = quadratic_numpy(*batch)
    np.testing.assert_allclose(value, reference[0], rtol=1e-4)
    for gradient, expected in zip(grads, reference[1]):
        np.testing.assert_allclose(gradient, expected, rtol=1e-6)


# Scalar graph: the same quadratic on Python floats, time per call.


@pytest.mark.benchmark(group="scalar graph")
def test_scalar_numpy(benchmark):
    scalars = [np.float64(v) for v in (3.0, 2.0, 1.0, 4.0)]
    run(benchmark, quadratic_numpy, *scalars)


@pytest.mark.benchmark(group="scalar graph")
def test_scalar_gpuflow(benchmark):
    value, grads = run(benchmark, quadratic_gpuflow, 3.0, 2.0, 1.0, 4.0)
    assert value == 25.0
    assert [float(g) for g in grads] == [13.0, 9.0, 3.0, 1.0]
