"""NaN and infinity tracing: name the first node whose value or gradient is not finite.

Inside ``with gpuflow.detect_anomaly():`` every recorded operation checks its
output, and every backward step checks the gradients it produces. The first
non-finite result that came from finite inputs raises AnomalyError naming the
operation, the input shapes, and where the node was built: the position in a
command-line expression, or the Python line. Outside the block the only cost
is one flag test per operation.
"""

from __future__ import annotations

import contextlib
import os
import sys

from gpuflow.tensor import state

_PACKAGE_DIRECTORY = os.path.dirname(os.path.abspath(__file__))


class AnomalyError(FloatingPointError):
    """Raised in anomaly mode by the first operation that makes a NaN or an infinity."""


@contextlib.contextmanager
def detect_anomaly():
    """Check every forward value and gradient inside the block for NaN and infinity."""
    previous = state.anomaly
    state.anomaly = True
    try:
        yield
    finally:
        state.anomaly = previous


@contextlib.contextmanager
def expression_position(text: str):
    """Label the operations run inside the block with ``text`` (used by the command's parser)."""
    previous = state.position
    state.position = text
    try:
        yield
    finally:
        state.position = previous


def current_location() -> str:
    """Return where the running operation was called from, outside gpuflow itself."""
    if state.position is not None:
        return state.position
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE_DIRECTORY
    ):
        frame = frame.f_back
    if frame is None:
        return "an unknown place"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _first_bad(backend, array):
    """Return (index, value) of the first non-finite element, or None if all are finite."""
    import numpy

    host = numpy.asarray(backend.to_numpy(array))
    if not numpy.issubdtype(host.dtype, numpy.inexact):
        return None
    bad = ~numpy.isfinite(host)
    if not bad.any():
        return None
    index = tuple(int(i) for i in numpy.argwhere(bad)[0])
    return index, host[index] if host.ndim else host.item()


def is_finite(backend, array) -> bool:
    """Return whether every element of ``array`` is finite (non-float arrays always are)."""
    return _first_bad(backend, array) is None


def _all_finite(backend, arrays) -> bool:
    return all(is_finite(backend, array) for array in arrays)


def check_forward(op, backend, arrays, out, location) -> None:
    """Raise AnomalyError if ``out`` is not finite although every input is."""
    found = _first_bad(backend, out)
    if found is None or not _all_finite(backend, arrays):
        return
    index, value = found
    shapes = ", ".join(str(tuple(array.shape)) for array in arrays)
    raise AnomalyError(
        f"detect_anomaly: {op.name} produced {value} at index {index} from finite inputs of "
        f"shapes {shapes}, at {location}; keep its inputs inside the function's domain, or "
        "mask them first, for example with where"
    )


def check_backward(op, backend, g, parent_position, parent_grad, parent_shape, location):
    """Raise AnomalyError if a gradient rule made a non-finite gradient from a finite one."""
    found = _first_bad(backend, parent_grad)
    if found is None or _first_bad(backend, g) is not None:
        return
    index, value = found
    raise AnomalyError(
        f"detect_anomaly: the gradient of {op.name} with respect to its input "
        f"{parent_position} (shape {tuple(parent_shape)}) is {value} at index {index} although "
        f"the upstream gradient is finite; the node was built at {location}"
    )
