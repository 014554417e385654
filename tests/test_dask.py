"""Tests of gpuflow.dask: lazy gradients over Dask arrays, locally and on a LocalCluster."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import gpuflow as gf

dask = pytest.importorskip(
    "dask", reason="gpuflow.dask needs Dask: pip install 'gpuflow[dask]'"
)
da = pytest.importorskip("dask.array", reason="gpuflow.dask needs dask.array")
distributed = pytest.importorskip(
    "distributed", reason="the cluster tests need dask.distributed: pip install 'gpuflow[dask]'"
)

from gpuflow import dask as gpuflow_dask  # noqa: E402


def quadratic_sum(x, a, b, c):
    return gf.sum(a * x**2 + b * x + c)


def batch_inputs(dtype="float64", rows=10):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(rows).astype(dtype)
    a = np.asarray(1.5, dtype=dtype)
    b = rng.standard_normal(rows).astype(dtype)
    return x, a, b, 4.0


def assert_same(result, expected, rtol=1e-12):
    (value, grads), (expected_value, expected_grads) = result, expected
    np.testing.assert_allclose(value, expected_value, rtol=rtol)
    for gradient, want in zip(grads, expected_grads):
        gradient = np.asarray(gradient)
        assert gradient.shape == want.shape
        assert gradient.dtype == want.dtype
        np.testing.assert_allclose(gradient, want, rtol=rtol, atol=rtol)


def lazy_quadratic(x, a, b, c, chunks=3):
    argnums = (0, 1, 2, 3)
    return gpuflow_dask.value_and_grad(quadratic_sum, argnums)(
        da.from_array(x, chunks=chunks), a, da.from_array(b, chunks=chunks), c
    )


def test_import_gpuflow_does_not_import_dask():
    code = "import sys, gpuflow; print('dask' in sys.modules, 'distributed' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60)
    assert completed.stdout.split() == ["False", "False"]


def test_synchronous_matches_single_call():
    args = batch_inputs()
    expected = gf.value_and_grad(quadratic_sum, (0, 1, 2, 3))(*args)
    value, grads = lazy_quadratic(*args)
    assert isinstance(value, da.Array)
    assert all(isinstance(g, da.Array) for g in grads)
    assert grads[0].chunks == ((3, 3, 3, 1),)
    assert_same(dask.compute(value, grads, scheduler="synchronous"), expected)


def test_uneven_chunks_of_different_inputs():
    x, a, b, c = batch_inputs()
    expected = gf.value_and_grad(quadratic_sum, (0, 2))(x, a, b, c)
    value, grads = gpuflow_dask.value_and_grad(quadratic_sum, (0, 2))(
        da.from_array(x, chunks=3), a, da.from_array(b, chunks=4), c
    )
    assert_same(dask.compute(value, grads, scheduler="synchronous"), expected)


def test_shared_dask_array_and_batched_value():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((10, 3))
    w = rng.standard_normal(3)

    def per_row(X, w):
        return gf.sigmoid(X @ w)

    expected = gf.value_and_grad(per_row, (0, 1))(X, w)
    value, grads = gpuflow_dask.value_and_grad(per_row, (0, 1))(
        da.from_array(X, chunks=(3, 1)), da.from_array(w, chunks=2)
    )
    assert value.chunks == ((3, 3, 3, 1),)
    assert_same(dask.compute(value, grads, scheduler="synchronous"), expected)


def test_float32_shared_gradient_keeps_dtype():
    x, a, b, c = batch_inputs("float32", rows=1000)
    value, grad_a = gpuflow_dask.value_and_grad(quadratic_sum, 1)(
        da.from_array(x, chunks=100), a, b, c
    )
    assert grad_a.dtype == np.float32
    computed = grad_a.compute(scheduler="synchronous")
    assert computed.dtype == np.float32
    np.testing.assert_allclose(computed, np.sum(x.astype(np.float64) ** 2), rtol=1e-6)


def test_nothing_runs_before_compute():
    calls = []

    def counted(x):
        calls.append(x.shape)
        return gf.sum(x**2)

    value, gradient = gpuflow_dask.value_and_grad(counted)(da.ones(10, chunks=3))
    # One call on a one-row probe finds the value's shape and dtype.
    assert calls == [(1,)]
    dask.compute(value, gradient, scheduler="synchronous")
    assert sorted(calls[1:]) == [(1,), (3,), (3,), (3,)]


def test_gradient_stored_chunk_by_chunk(tmp_path):
    x, a, b, c = batch_inputs()
    _, grads = lazy_quadratic(x, a, b, c)
    with dask.config.set(scheduler="synchronous"):
        da.to_npy_stack(str(tmp_path / "grad_x"), grads[0], axis=0)
    stored = da.from_npy_stack(str(tmp_path / "grad_x"))
    np.testing.assert_allclose(stored.compute(), 2 * a * x + b, rtol=1e-12)
    assert len([name for name in os.listdir(tmp_path / "grad_x") if name.endswith(".npy")]) == 4


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None, memory_limit="200MB", silence_logs=40,
    ) as local_cluster, distributed.Client(local_cluster) as client:
        yield local_cluster, client


def test_local_cluster_matches_single_call(cluster):
    _, client = cluster
    args = batch_inputs()
    expected = gf.value_and_grad(quadratic_sum, (0, 1, 2, 3))(*args)
    value, grads = lazy_quadratic(*args)
    value, *grads = client.compute([value, *grads], sync=True)
    assert_same((value, grads), expected)


def slow_quadratic(x, a):
    time.sleep(0.3)
    return gf.sum(a * x**2)


def test_worker_killed_mid_computation(cluster):
    _, client = cluster
    client.wait_for_workers(2, timeout=60)
    x = np.random.default_rng(4).standard_normal(40)
    a = np.asarray(0.5)
    value, grads = gpuflow_dask.value_and_grad(slow_quadratic, (0, 1))(
        da.from_array(x, chunks=2), a
    )
    futures = client.compute([value, *grads])
    # Wait until both workers are busy, then end one worker's process abruptly.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        processing = client.processing()
        if sum(len(keys) for keys in processing.values()) >= 2:
            break
        time.sleep(0.05)
    victim = sorted(client.scheduler_info()["workers"])[0]
    threading.Thread(
        target=lambda: _ignore_errors(client.run, os._exit, 1, workers=[victim]), daemon=True
    ).start()
    value, grad_x, grad_a = client.gather(futures)
    np.testing.assert_allclose(value, 0.5 * np.sum(x**2), rtol=1e-12)
    np.testing.assert_allclose(grad_x, x, rtol=1e-12)
    np.testing.assert_allclose(grad_a, np.sum(x**2), rtol=1e-12)
    assert victim not in client.scheduler_info()["workers"]


def _ignore_errors(function, *args, **kwargs):
    try:
        function(*args, **kwargs)
    except Exception:  # the killed worker never replies to client.run
        pass


def test_input_larger_than_worker_memory(cluster):
    _, client = cluster
    client.wait_for_workers(2, timeout=60)
    before = set(client.scheduler_info()["workers"])
    rows = 50_000_000  # 400 MB of float64, more than the 200 MB limit of each worker
    x = da.random.default_rng(5).standard_normal(rows, chunks=1_000_000)
    a = np.asarray(0.5)
    value, (grad_x, grad_a) = gpuflow_dask.value_and_grad(
        lambda x, a: gf.sum(a * x**2), (0, 1)
    )(x, a)
    worst_error = da.max(abs(grad_x - x))
    total_squares = da.sum(x**2)
    value, grad_a, worst_error, total_squares = client.compute(
        [value, grad_a, worst_error, total_squares], sync=True
    )
    assert worst_error <= 1e-14
    np.testing.assert_allclose(grad_a, total_squares, rtol=1e-10)
    np.testing.assert_allclose(value, 0.5 * total_squares, rtol=1e-10)
    assert set(client.scheduler_info()["workers"]) == before


def run_gpuflow(*arguments, cwd=None):
    environment = dict(os.environ)
    environment.pop("GPUFLOW_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", *map(str, arguments)],
        capture_output=True, text=True, cwd=cwd, env=environment, timeout=120,
    )


def cli_results(tmp_path, name, *options):
    common = ["grad", "sum(a*x**2 + b*x)", "a=2", "b=1", "--inputs", "x.npy",
              "--backend", "numpy", "--output", f"{name}.npz"]
    completed = run_gpuflow(*common, *options, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    with np.load(tmp_path / f"{name}.npz") as archive:
        return {key: archive[key] for key in archive.files}


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_cli_scheduler_matches_single(tmp_path, scheduler):
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal(10))
    expected = cli_results(tmp_path, "single")
    got = cli_results(tmp_path, scheduler, "--chunk-size", "3", "--scheduler", scheduler)
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12)


def test_cli_scheduler_address(tmp_path, cluster):
    local_cluster, _ = cluster
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal(10))
    expected = cli_results(tmp_path, "single")
    got = cli_results(tmp_path, "cluster", "--chunk-size", "3",
                      "--scheduler", local_cluster.scheduler_address)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12)


def test_cli_scheduler_needs_chunk_size():
    completed = run_gpuflow("grad", "x*2", "x=1,2", "--scheduler", "threads")
    assert completed.returncode == 2
    assert "--scheduler needs --chunk-size" in completed.stderr


def test_value_kind_changing_between_chunks_raises():
    def sum_or_rows(x):
        # A scalar for the one-row call at graph construction, rows for wider chunks.
        return gf.sum(x) if x.shape[0] == 1 else x * 2.0

    value, gradient = gpuflow_dask.value_and_grad(sum_or_rows)(da.ones(10, chunks=3))
    with pytest.raises(ValueError, match="return the same kind of value for every chunk"):
        dask.compute(value, gradient, scheduler="synchronous")
