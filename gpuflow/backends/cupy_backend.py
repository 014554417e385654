"""The CuPy backend: the same operation rules on CUDA device arrays."""

from __future__ import annotations

import logging

from gpuflow.backends.base import Backend, BackendUnavailableError

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install CuPy for your CUDA version with the gpuflow extra: "
    "pip install 'gpuflow[cuda12]' or pip install 'gpuflow[cuda13]'"
)


def import_cupy():
    """Import CuPy and check for a CUDA device, raising BackendUnavailableError otherwise."""
    try:
        import cupy
    except ImportError as error:
        raise BackendUnavailableError(
            f"the cupy backend needs CuPy, which failed to import ({error}); {INSTALL_HINT}"
        ) from error
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CuPy raises CUDARuntimeError without a driver.
        raise BackendUnavailableError(
            f"the cupy backend found no usable CUDA device ({error}); "
            "run on a machine with an NVIDIA GPU and driver, or choose backend='numpy'"
        ) from error
    if count == 0:
        raise BackendUnavailableError(
            "the cupy backend found no CUDA device; "
            "run on a machine with an NVIDIA GPU, or choose backend='numpy'"
        )
    return cupy


class CuPyBackend(Backend):
    """CuPy arrays on the current CUDA device, allocated through CuPy's memory pool."""

    name = "cupy"
    native_indexing = True

    def __init__(self):
        cupy = import_cupy()
        self._cupy = cupy
        super().__init__(cupy, "cupy")
        # Array API names that CuPy releases before its NumPy 2 namespace lack.
        # NOTE: chosen from CuPy's documentation; not yet run on a CuPy 13 device.
        import numpy

        fallbacks = {
            "isdtype": numpy.isdtype,
            "astype": lambda x, dtype: x.astype(dtype),
            "concat": cupy.concatenate,
            "permute_dims": cupy.transpose,
            "pow": cupy.power,
        }
        for name, function in fallbacks.items():
            if not hasattr(cupy, name):
                setattr(self, name, function)

    def is_array(self, value) -> bool:
        return isinstance(value, self._cupy.ndarray)

    def from_numpy(self, array):
        return self._cupy.asarray(array)

    def to_numpy(self, array):
        return self._cupy.asnumpy(array)

    def copy(self, array):
        return self._cupy.array(array, copy=True)

    def index_add(self, shape, dtype, key, values):
        result = self._cupy.zeros(shape, dtype=dtype)
        self._cupy.add.at(result, key, values)
        return result

    def errstate(self):
        return self._cupy.errstate(all="ignore")

    def fused(self, name: str, *arrays):
        """Launch the CUDA kernel for ``name`` when the operands suit it, else run the reference.

        The kernels take C-contiguous float32 or float64 arrays of one shape and
        dtype. Broadcast or strided operands take the reference path, which is
        the same formula run as unfused CuPy operations.
        """
        if self._fusable(arrays):
            from gpuflow.backends import cuda_kernels

            logger.debug("fused kernel %s on %d elements", name, arrays[0].size)
            return getattr(cuda_kernels, name)(*arrays)
        return super().fused(name, *arrays)

    def _fusable(self, arrays) -> bool:
        first = arrays[0]
        if not isinstance(first, self._cupy.ndarray) or first.dtype.name not in (
            "float32", "float64"
        ):
            return False
        return all(
            isinstance(array, self._cupy.ndarray)
            and array.shape == first.shape
            and array.dtype == first.dtype
            and array.flags.c_contiguous
            for array in arrays
        )

    def out_of_memory(self, error: MemoryError) -> MemoryError:
        """Return a MemoryError that adds the device's free memory to CuPy's message.

        CuPy's own message states the size of the allocation that failed.
        """
        try:
            free_bytes, total_bytes = self._cupy.cuda.runtime.memGetInfo()
            state = f"the device has {free_bytes} bytes free of {total_bytes}"
        except Exception as query_error:  # the device may be unusable after the failure
            state = f"the free memory could not be read ({query_error})"
        return MemoryError(
            f"out of GPU memory: {error}; {state}; process a smaller batch, or free cached "
            "blocks with cupy.get_default_memory_pool().free_all_blocks()"
        )

    def synchronize(self) -> None:
        self._cupy.cuda.get_current_stream().synchronize()
