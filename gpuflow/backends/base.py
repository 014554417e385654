"""The backend interface: an array namespace plus the few hooks the standard lacks."""

from __future__ import annotations

import logging

from gpuflow.backends.fused_reference import REFERENCES

logger = logging.getLogger(__name__)


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is requested but its library or device is missing."""


class Backend:
    """An array namespace with gpuflow's extra hooks.

    The namespace's public functions are copied onto the instance, so operation
    rules call ``xp.exp(x)`` on a backend exactly as they would on the module,
    without an attribute lookup through ``__getattr__`` on every call. The hooks
    below (``index_add``, ``to_numpy``, ``errstate``) have generic versions
    written with Array API standard functions only; a backend may override them
    with faster native ones.
    """

    name = "array_api"
    # Whether ``x[key]`` follows NumPy for every key, integer arrays included.
    native_indexing = False

    def __init__(self, namespace, name: str | None = None):
        self.namespace = namespace
        if name is not None:
            self.name = name
        # Only what the module has already loaded: reading every name of dir() would
        # import lazy submodules (numpy.testing, numpy.f2py), which takes a while.
        for attribute, value in vars(namespace).items():
            if not attribute.startswith("_") and not hasattr(type(self), attribute):
                setattr(self, attribute, value)

    def __getattr__(self, name):
        # Names not copied above, such as lazily loaded submodules.
        if name.startswith("__") or name == "namespace":
            raise AttributeError(name)
        return getattr(self.namespace, name)

    def __repr__(self) -> str:
        return f"<gpuflow backend {self.name!r}>"

    # Arrays in and out.

    def is_array(self, value) -> bool:
        """Return whether ``value`` is an array of this backend's namespace."""
        try:
            return self.namespace is value.__array_namespace__()
        except AttributeError:
            return False

    def from_numpy(self, array):
        """Copy a NumPy array (or anything ``numpy.asarray`` accepts) into this backend."""
        return self.namespace.asarray(array)

    def to_numpy(self, array):
        """Copy an array of this backend to a NumPy array on the host."""
        import numpy

        return numpy.from_dlpack(array) if hasattr(array, "__dlpack__") else numpy.asarray(array)

    def copy(self, array):
        """Return a copy that later writes to ``array`` cannot reach."""
        return self.namespace.asarray(array, copy=True)

    # Hooks that the Array API standard does not provide.

    def index_add(self, shape, dtype, key, values):
        """Return zeros of ``shape`` with ``values`` added at ``key``.

        Repeated integer indices accumulate. The generic version supports basic
        indexing (integers, slices, ``None``, ``Ellipsis``) by assignment and a
        single integer array on the first axis by a one-hot matrix product.
        """
        xp = self.namespace
        result = xp.zeros(shape, dtype=dtype)
        if self.is_array(key):
            if key.ndim == 0:
                result[int(key)] = values
                return result
            count = shape[0]
            flat_index = xp.reshape(key, (-1,))
            one_hot = xp.astype(
                flat_index[:, None] == xp.arange(count, dtype=flat_index.dtype)[None, :], dtype
            )
            flat_values = xp.reshape(values, (flat_index.shape[0], -1))
            summed = xp.matmul(xp.matrix_transpose(one_hot), flat_values)
            return xp.reshape(summed, shape)
        result[key] = values
        return result

    def errstate(self):
        """Return a context manager that silences floating-point warnings.

        Libraries built on NumPy (array_api_strict among them) warn through
        NumPy's error state, so the generic version sets that.
        """
        import numpy

        return numpy.errstate(all="ignore")

    def fused(self, name: str, *arrays):
        """Run the fused step ``name`` (a key of fused_reference.REFERENCES) on ``arrays``.

        The generic version runs the reference implementation; a backend with
        kernels overrides this and falls back to it for operands its kernels
        do not take.
        """
        try:
            reference = REFERENCES[name]
        except KeyError:
            raise ValueError(
                f"unknown fused step {name!r}; known steps: {', '.join(sorted(REFERENCES))}"
            ) from None
        return reference(self, *arrays)

    def out_of_memory(self, error: MemoryError) -> MemoryError:
        """Return the MemoryError to raise when an allocation of this backend fails."""
        return error

    def synchronize(self) -> None:
        """Wait until queued device work is complete (a no-op on the CPU)."""
