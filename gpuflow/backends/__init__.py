"""Backend selection: by name, by the ``GPUFLOW_BACKEND`` variable, or from an array's type.

This is the one module that inspects array types. Everything above it requests
a backend object and calls array functions through it.
"""

from __future__ import annotations

import importlib
import logging
import os

from gpuflow.backends.base import Backend, BackendUnavailableError
from gpuflow.backends.numpy_backend import NumPyBackend

logger = logging.getLogger(__name__)

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "NumPyBackend",
    "backend_of",
    "default_backend",
    "get_backend",
    "BACKEND_NAMES",
]

BACKEND_NAMES = ("auto", "numpy", "cupy", "array_api_strict")

_NUMPY = NumPyBackend()
_by_name: dict[str, Backend] = {"numpy": _NUMPY}
_by_namespace: dict[int, Backend] = {}


def _cupy_backend() -> Backend:
    from gpuflow.backends.cupy_backend import CuPyBackend

    return CuPyBackend()


def _auto_backend() -> Backend:
    try:
        backend = get_backend("cupy")
    except BackendUnavailableError as error:
        logger.debug("auto backend: using numpy because cupy is unavailable: %s", error)
        return _NUMPY
    logger.debug("auto backend: using cupy")
    return backend


def get_backend(spec=None) -> Backend:
    """Return the backend named by ``spec``.

    ``spec`` is a Backend, one of ``"numpy"``, ``"cupy"``, ``"array_api_strict"``,
    ``"auto"`` (CuPy when it imports and a CUDA device is present, else NumPy),
    the name of any importable module that follows the Array API standard, or
    such a module itself. ``None`` reads ``GPUFLOW_BACKEND`` and falls back to
    NumPy.
    """
    if isinstance(spec, Backend):
        return spec
    if spec is None:
        spec = os.environ.get("GPUFLOW_BACKEND") or "numpy"
    if not isinstance(spec, str):
        return _namespace_backend(spec)

    name = spec.strip().lower()
    if name in _by_name:
        return _by_name[name]
    if name == "auto":
        return _auto_backend()
    if name == "cupy":
        backend = _cupy_backend()
    else:
        try:
            module = importlib.import_module(spec)
        except ImportError as error:
            hint = (
                "pip install array-api-strict (or the 'test' extra)"
                if name == "array_api_strict"
                else f"choose one of {', '.join(BACKEND_NAMES)}"
            )
            raise BackendUnavailableError(
                f"backend {spec!r} is not available: {error}; {hint}"
            ) from error
        backend = _namespace_backend(module)
    _by_name[name] = backend
    logger.debug("created backend %s", backend.name)
    return backend


def _namespace_backend(namespace) -> Backend:
    if not hasattr(namespace, "__name__"):
        raise TypeError(
            f"backend must be a name such as 'numpy', a Backend or an array namespace module, "
            f"got {type(namespace).__name__} {namespace!r:.40}; choose one of "
            f"{', '.join(BACKEND_NAMES)}"
        )
    if namespace.__name__ == "numpy":
        return _NUMPY
    if namespace.__name__.split(".")[0] == "cupy":
        return get_backend("cupy")
    backend = _by_namespace.get(id(namespace))
    if backend is None:
        if not hasattr(namespace, "asarray") or not hasattr(namespace, "__array_api_version__"):
            raise BackendUnavailableError(
                f"module {namespace.__name__!r} does not follow the Array API standard "
                "(it has no __array_api_version__); choose one of "
                f"{', '.join(BACKEND_NAMES)}"
            )
        backend = Backend(namespace, namespace.__name__)
        _by_namespace[id(namespace)] = backend
    return backend


def default_backend() -> Backend:
    """Return the backend for inputs that carry none (Python numbers, NumPy arrays)."""
    return get_backend(None)


def backend_of(value) -> Backend | None:
    """Return the backend that owns the array ``value``, or None for a non-array."""
    if _NUMPY.is_array(value):
        return _NUMPY
    namespace_of = getattr(value, "__array_namespace__", None)
    if namespace_of is None:
        return None
    return _namespace_backend(namespace_of())
