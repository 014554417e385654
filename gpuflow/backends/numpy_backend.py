"""The NumPy backend: the CPU reference that every other backend is compared with."""

from __future__ import annotations

import numpy

from gpuflow.backends.base import Backend


class NumPyBackend(Backend):
    """NumPy arrays on the host, with native scatter-add and warning control."""

    name = "numpy"
    native_indexing = True

    def __init__(self):
        super().__init__(numpy, "numpy")

    def is_array(self, value) -> bool:
        return isinstance(value, (numpy.ndarray, numpy.generic))

    def from_numpy(self, array):
        return numpy.asarray(array)

    def to_numpy(self, array):
        return numpy.asarray(array)

    def copy(self, array):
        return numpy.array(array, copy=True)

    def index_add(self, shape, dtype, key, values):
        result = numpy.zeros(shape, dtype=dtype)
        numpy.add.at(result, key, values)
        return result

    def errstate(self):
        return numpy.errstate(all="ignore")
