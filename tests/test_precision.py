"""16-bit floats accumulate sums and meeting gradients in float32 and keep their own dtype."""

from __future__ import annotations

import numpy as np

import gpuflow as gf

COUNT = 100_000


def test_float16_sum_matches_exact_result():
    x = np.full(COUNT, 0.1, dtype=np.float16)
    exact = np.float16(np.sum(x.astype(np.float64)))
    sequential = np.cumsum(x)[-1]  # a float16 running sum, for contrast
    total = gf.sum(gf.Tensor(x))
    assert total.dtype == np.float16
    assert total.item() == exact
    assert sequential != exact


def test_float16_mean_matches_exact_result():
    x = np.full(COUNT, 0.3, dtype=np.float16)
    exact = np.float16(np.mean(x.astype(np.float64)))
    assert gf.mean(gf.Tensor(x)).item() == exact


def test_float16_broadcast_gradient_accumulates_in_float32():
    w = np.full(COUNT, 0.1, dtype=np.float16)
    gradient = gf.grad(lambda s: gf.sum(s * w))(np.float16(1.0))
    assert gradient.dtype == np.float16
    assert gradient == np.float16(np.sum(w.astype(np.float64)))


def test_float16_fan_out_keeps_dtype():
    gradient = gf.grad(lambda s: s * 0.1 + s * 0.2 + s * 0.3)(np.float16(1.0))
    assert gradient.dtype == np.float16
    assert gradient == np.float16(0.6)


def test_float16_eager_leaf_keeps_dtype():
    x = gf.Tensor(np.float16(1.0), requires_grad=True)
    (x * 0.5 + x * 0.25).backward()
    assert x.grad.dtype == np.float16
    assert x.grad.item() == 0.75
