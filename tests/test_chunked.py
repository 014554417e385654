"""Tests of chunked evaluation: gpuflow.value_and_grad(..., chunk_size=N) and --chunk-size."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import gpuflow as gf
from gpuflow import chunked


def quadratic_sum(x, a, b, c):
    return gf.sum(a * x**2 + b * x + c)


def linear_model(X, w, y):
    return gf.sum((X @ w - y) ** 2)


def batch_inputs(dtype="float64", rows=10):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(rows).astype(dtype)
    a = np.asarray(1.5, dtype=dtype)
    b = rng.standard_normal(rows).astype(dtype)
    return x, a, b, 4.0


def assert_same(chunked_result, single_result, rtol=1e-12):
    (value, grads), (expected_value, expected_grads) = chunked_result, single_result
    assert np.asarray(value).dtype == np.asarray(expected_value).dtype
    np.testing.assert_allclose(value, expected_value, rtol=rtol)
    for gradient, expected in zip(grads, expected_grads):
        assert gradient.shape == expected.shape
        assert gradient.dtype == expected.dtype
        np.testing.assert_allclose(gradient, expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 25])
def test_scalar_output_uneven_chunks(chunk_size):
    args = batch_inputs()
    argnums = (0, 1, 2, 3)
    single = gf.value_and_grad(quadratic_sum, argnums)(*args)
    result = gf.value_and_grad(quadratic_sum, argnums, chunk_size=chunk_size)(*args)
    assert_same(result, single)


def test_batched_output_concatenated():
    x, a, b, _ = batch_inputs()

    def per_row(x, a, b):
        return gf.sigmoid(a * x + b)

    single = gf.value_and_grad(per_row, (0, 1, 2))(x, a, b)
    result = gf.value_and_grad(per_row, (0, 1, 2), chunk_size=3)(x, a, b)
    assert result[0].shape == (10,)
    assert_same(result, single)


def test_matrix_batch_with_shared_parameter():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((10, 3))
    w = rng.standard_normal(3)
    y = rng.standard_normal(10)
    single = gf.value_and_grad(linear_model, (0, 1, 2))(X, w, y)
    result = gf.value_and_grad(linear_model, (0, 1, 2), chunk_size=3)(X, w, y)
    assert_same(result, single)


def test_grad_with_chunk_size():
    args = batch_inputs()
    expected = gf.grad(quadratic_sum, 1)(*args)
    gradient = gf.grad(quadratic_sum, 1, chunk_size=3)(*args)
    np.testing.assert_allclose(gradient, expected, rtol=1e-12)


def test_float32_accumulates_in_float64():
    x, a, b, c = batch_inputs("float32", rows=100_000)
    value, grad_a = gf.value_and_grad(quadratic_sum, 1, chunk_size=1000)(x, a, b, c)
    assert grad_a.dtype == np.float32
    exact = np.sum(x.astype(np.float64) ** 2)
    # A float32 running sum over 100 chunks would lose about 1e-6 relative per addition.
    assert abs(float(grad_a) - exact) <= 1e-6 * exact


def test_float16_results_keep_dtype():
    x, a, b, _ = batch_inputs("float16", rows=12)
    value, grads = gf.value_and_grad(quadratic_sum, (0, 1), chunk_size=5)(x, a, b, 0.0)
    single_value, single_grads = gf.value_and_grad(quadratic_sum, (0, 1))(x, a, b, 0.0)
    assert grads[1].dtype == np.float16
    np.testing.assert_allclose(grads[1], single_grads[1], rtol=2e-3)
    np.testing.assert_allclose(grads[0], single_grads[0], rtol=1e-3)


def test_batch_argnums_disagree_raises():
    X = np.zeros((10, 3))
    y = np.zeros(8)
    with pytest.raises(ValueError, match=r"X of shape \(10, 3\), y of shape \(8,\)"):
        gf.value_and_grad(linear_model, 1, chunk_size=3, batch_argnums=(0, 2))(
            X, np.zeros(3), y
        )


def test_batch_argnums_selects_batch():
    rng = np.random.default_rng(2)
    # W has the largest leading dimension but is a parameter, so the batch is named.
    X = rng.standard_normal((6, 20))
    W = rng.standard_normal((20, 2))

    def f(X, W):
        return gf.sum(gf.tanh(X @ W))

    single = gf.value_and_grad(f, (0, 1))(X, W)
    result = gf.value_and_grad(f, (0, 1), chunk_size=4, batch_argnums=0)(X, W)
    assert_same(result, single)


def test_output_of_wrong_shape_raises():
    def mean_of_rows(x):
        return gf.reshape(gf.sum(x), (1,))

    with pytest.raises(ValueError, match="must return a scalar"):
        gf.value_and_grad(mean_of_rows, chunk_size=3)(np.ones(10))


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5])
def test_invalid_chunk_size_raises(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        gf.value_and_grad(quadratic_sum, chunk_size=chunk_size)


def test_progress_reports_rows():
    reports = []
    args = batch_inputs()
    chunked.value_and_grad(quadratic_sum, 0, chunk_size=4, progress=lambda *r: reports.append(r))(
        *args
    )
    assert reports == [(4, 10), (8, 10), (10, 10)]


def test_scalars_only_single_call():
    value, gradient = gf.value_and_grad(quadratic_sum, 0, chunk_size=2)(3.0, 2.0, 1.0, 4.0)
    assert float(value) == 25.0
    assert float(gradient) == 13.0


class FakeOutOfMemoryError(MemoryError):
    """Stands in for cupy.cuda.memory.OutOfMemoryError on NumPy."""


def test_out_of_memory_halves_chunk(monkeypatch, caplog):
    monkeypatch.setattr(chunked, "_out_of_memory_errors", lambda: (FakeOutOfMemoryError,))
    seen_rows = []

    def limited(x, a, b, c):
        rows = x.shape[0]
        seen_rows.append(rows)
        if rows > 2:
            raise FakeOutOfMemoryError(f"out of memory allocating {rows} rows")
        return quadratic_sum(x, a, b, c)

    args = batch_inputs()
    single = gf.value_and_grad(quadratic_sum, (0, 1))(*args)
    with caplog.at_level(logging.WARNING, logger="gpuflow.chunked"):
        result = gf.value_and_grad(limited, (0, 1), chunk_size=8)(*args)
    assert_same(result, single)
    assert seen_rows[:3] == [8, 4, 2]
    assert max(seen_rows[2:]) == 2
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "retrying with chunks of 4 rows" in messages[0]
    assert "retrying with chunks of 2 rows" in messages[1]


def test_out_of_memory_at_one_row_raises(monkeypatch):
    monkeypatch.setattr(chunked, "_out_of_memory_errors", lambda: (FakeOutOfMemoryError,))

    def always_fails(x):
        raise FakeOutOfMemoryError("out of memory")

    with pytest.raises(FakeOutOfMemoryError):
        gf.value_and_grad(always_fails, chunk_size=4)(np.ones(10))


def test_default_path_unchanged_without_chunk_size():
    args = batch_inputs()
    first = gf.value_and_grad(quadratic_sum, (0, 1))(*args)
    second = gf.value_and_grad(quadratic_sum, (0, 1), chunk_size=None)(*args)
    assert_same(second, first, rtol=0)


def run_gpuflow(*arguments, cwd=None):
    environment = dict(os.environ)
    environment.pop("GPUFLOW_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", *map(str, arguments)],
        capture_output=True, text=True, cwd=cwd, env=environment, timeout=120,
    )


def test_cli_chunk_size_matches_single(tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "x.npy", rng.standard_normal(10))
    common = ["grad", "sum(a*x**2 + b*x)", "a=2", "b=1", "--inputs", "x.npy",
              "--backend", "numpy", "--output"]
    single = run_gpuflow(*common, "single.npz", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    chunked_run = run_gpuflow(*common, "chunked.npz", "--chunk-size", "3", cwd=tmp_path)
    assert chunked_run.returncode == 0, chunked_run.stderr
    # stderr is a pipe here, so no progress bar is drawn.
    assert chunked_run.stderr == ""
    with np.load(tmp_path / "single.npz") as expected, np.load(tmp_path / "chunked.npz") as got:
        assert sorted(got.files) == sorted(expected.files)
        for key in expected.files:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-12)


def test_cli_invalid_chunk_size():
    completed = run_gpuflow("grad", "x*2", "x=1,2", "--chunk-size", "0")
    assert completed.returncode == 2
    assert "invalid --chunk-size 0" in completed.stderr


def test_npy_loaded_memory_mapped(tmp_path):
    from gpuflow.cli.inputs import load_file

    np.save(tmp_path / "x.npy", np.arange(5.0))
    (item,) = load_file(str(tmp_path / "x.npy"), mmap_mode="r")
    assert isinstance(item.array, np.memmap)
    (item,) = load_file(str(tmp_path / "x.npy"))
    assert not isinstance(item.array, np.memmap)


def test_progress_bar_text():
    from gpuflow.cli.scaling import _ProgressBar

    class Stream:
        text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    stream = Stream()
    bar = _ProgressBar(stream)
    bar(5, 10)
    bar(10, 10)
    assert "5/10 rows" in stream.text
    assert stream.text.endswith("10/10 rows\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses a Linux pseudo-terminal")
def test_cli_progress_bar_on_terminal():
    import pty

    controller, terminal = pty.openpty()
    environment = dict(os.environ)
    environment.pop("GPUFLOW_BACKEND", None)
    completed = subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", "grad", "sum(x**2)", "--random", "x=10",
         "--backend", "numpy", "--chunk-size", "4"],
        stdout=subprocess.PIPE, stderr=terminal, env=environment, timeout=120,
    )
    os.close(terminal)
    drawn = os.read(controller, 10_000).decode()
    os.close(controller)
    assert completed.returncode == 0
    assert "4/10 rows" in drawn
    assert "10/10 rows" in drawn


def test_batch_argnums_leaves_others_shared():
    x = np.arange(1.0, 8.0)
    shared = np.arange(7.0)

    def objective(t, s):
        return gf.sum(t * gf.sum(s))

    expected = gf.value_and_grad(objective, (0, 1))(x, shared)
    value, grads = gf.value_and_grad(objective, (0, 1), chunk_size=2, batch_argnums=(0,))(
        x, shared
    )
    assert value == expected[0]
    np.testing.assert_allclose(grads[0], expected[1][0])
    np.testing.assert_allclose(grads[1], expected[1][1])


@pytest.mark.parametrize(
    "batch_argnums, error, words",
    [((5,), ValueError, "out of range"), ((0, 0), ValueError, "twice"),
     ("x", TypeError, "must be an int"), ((), TypeError, "non-empty tuple")],
    ids=["range", "twice", "text", "empty"],
)
def test_invalid_batch_argnums(batch_argnums, error, words):
    with pytest.raises(error, match=words):
        gf.value_and_grad(lambda t, s: gf.sum(t * s), (0, 1), chunk_size=2,
                          batch_argnums=batch_argnums)(np.ones(4), np.ones(4))


def test_command_rejects_mean_with_chunks():
    completed = subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", "grad", "mean(a*x**2)", "a=2", "x=1,2,3",
         "--wrt", "x", "--chunk-size", "2", "--backend", "numpy"],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 2
    assert "wrong for mean" in completed.stderr
