"""Shared fixtures: every gradient test runs on NumPy and on the strict Array API namespace."""

from __future__ import annotations

import numpy as np
import pytest

import gpuflow

BACKENDS = ["numpy", "array_api_strict"]


class BackendHelper:
    """Move test data to one backend and back, so a test body is written once."""

    def __init__(self, name):
        self.name = name
        self.backend = gpuflow.get_backend(name)

    def __repr__(self):
        return self.name

    def array(self, values, dtype="float64"):
        return self.backend.from_numpy(np.asarray(values, dtype=dtype))

    def numpy(self, array):
        if isinstance(array, gpuflow.Tensor):
            return array.numpy()
        return np.asarray(self.backend.to_numpy(array))

    def dtype_name(self, array) -> str:
        return np.dtype(self.numpy(array).dtype).name


@pytest.fixture(params=BACKENDS)
def bk(request) -> BackendHelper:
    return BackendHelper(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(20261203)
