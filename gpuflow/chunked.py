"""Chunked evaluation: ``value_and_grad`` over a batch, one chunk of rows at a time.

The batch length is the largest leading dimension among the array arguments
of ndim >= 1, or, with ``batch_argnums``, the common leading dimension of the
arguments named there. An argument whose leading dimension equals the batch
length is batched and sliced per chunk. Every other argument (a parameter that
broadcasts against the batch, a 0-d array, a Python number) is shared and
passed whole to every chunk, and so are keyword arguments.

``f`` must return either a scalar that adds up over chunks (a sum over the
batch, not a mean) or an array whose leading axis is the batch, which is then
concatenated. Values and the gradients of shared inputs are summed over chunks
in float64 for float16 and float32 (in the input dtype otherwise) and returned
in the dtype of the first chunk's result. The gradients of batched inputs are
concatenated.
"""

from __future__ import annotations

import logging
import sys

from gpuflow import backends
from gpuflow.tensor import _NUMBER_TYPES, Tensor

logger = logging.getLogger(__name__)

# Accumulation dtype of sums over chunks, by the name of the dtype of the summed terms.
_ACCUMULATION_DTYPES = {"float16": "float64", "bfloat16": "float64", "float32": "float64"}


def _out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """Return CuPy's out-of-memory error class when CuPy is imported, else an empty tuple."""
    cupy = sys.modules.get("cupy")
    if cupy is None:
        return ()
    return (cupy.cuda.memory.OutOfMemoryError,)


def _free_device_memory() -> None:
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        cupy.get_default_memory_pool().free_all_blocks()


def array_shape(value) -> tuple[int, ...] | None:
    """Return the shape of an array argument, or None for a number, Tensor or other value."""
    if isinstance(value, (Tensor, _NUMBER_TYPES)) or backends.backend_of(value) is None:
        return None
    return tuple(int(size) for size in value.shape)


def find_batch(shapes, batch_argnums=None, names=None) -> tuple[int | None, tuple[int, ...]]:
    """Return the batch length and the positions of the batched arguments.

    ``shapes`` has one entry per argument, its shape or None for a non-array.
    The batch length is None when no argument is an array of ndim >= 1. With
    ``batch_argnums``, those arguments must be arrays with one common leading
    dimension, else this raises ValueError naming them and their shapes.
    """
    names = names or [f"argument {position}" for position in range(len(shapes))]
    leading = [shape[0] if shape else None for shape in shapes]
    if batch_argnums is not None:
        positions = _batch_positions(batch_argnums, len(shapes))
        lengths = {leading[position] for position in positions}
        if None in lengths or len(lengths) != 1:
            listed = ", ".join(
                f"{names[position]} of shape {shapes[position]}" for position in positions
            )
            raise ValueError(
                f"the batched inputs disagree on the batch length: {listed}; pass batched "
                "inputs that are arrays with the same leading dimension"
            )
        # The named arguments alone are batched; the others are shared.
        return lengths.pop(), positions
    known = [dimension for dimension in leading if dimension is not None]
    if not known:
        return None, ()
    length = max(known)
    batched = tuple(position for position, dimension in enumerate(leading)
                    if dimension == length)
    return length, batched


def _batch_positions(batch_argnums, count: int) -> tuple[int, ...]:
    """Check ``batch_argnums`` against ``count`` arguments and return it as a tuple."""
    if hasattr(batch_argnums, "__index__") and not isinstance(batch_argnums, bool):
        numbers = (batch_argnums,)
    elif isinstance(batch_argnums, (tuple, list)) and batch_argnums:
        numbers = tuple(batch_argnums)
    else:
        raise TypeError(
            f"batch_argnums must be an int or a non-empty tuple of ints, got {batch_argnums!r}"
        )
    positions = []
    for number in numbers:
        if isinstance(number, bool) or not hasattr(number, "__index__"):
            raise TypeError(f"batch_argnums must contain ints, got {number!r}")
        number = int(number)
        if not -count <= number < count:
            raise ValueError(
                f"batch_argnums {number} is out of range for a function called with {count} "
                "positional arguments"
            )
        if number % count in positions:
            raise ValueError(f"batch_argnums {batch_argnums!r} names argument {number % count} twice")
        positions.append(number % count)
    return tuple(positions)


def accumulation_dtype(backend, dtype):
    """Return the dtype that sums of ``dtype`` terms accumulate in: float64 for 16/32 bits."""
    name = getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1]
    wider = _ACCUMULATION_DTYPES.get(name)
    return getattr(backend, wider) if wider is not None else dtype


class _Accumulator:
    """The running results over chunks: sums for scalars and shared inputs, lists of pieces."""

    def __init__(self):
        self.totals = {}
        self.pieces = {}
        self.dtypes = {}

    def add(self, key, backend, array):
        if key not in self.dtypes:
            self.dtypes[key] = array.dtype
        wide = backend.astype(array, accumulation_dtype(backend, array.dtype))
        self.totals[key] = wide if key not in self.totals else self.totals[key] + wide

    def append(self, key, array):
        self.pieces.setdefault(key, []).append(array)

    def result(self, key, backend):
        if key in self.pieces:
            pieces = self.pieces.pop(key)
            return pieces[0] if len(pieces) == 1 else backend.concat(pieces, axis=0)
        return backend.astype(self.totals.pop(key), self.dtypes[key])


def _check_output(value, rows: int, start: int) -> bool:
    """Return whether the chunk's value is batched (True) or a scalar (False)."""
    shape = tuple(value.shape)
    if len(shape) == 0:
        return False
    if shape[0] != rows:
        raise ValueError(
            f"with chunk_size the function must return a scalar (a sum over the batch) or "
            f"an array whose leading axis is the batch, but for the chunk of {rows} rows "
            f"starting at row {start} it returned shape {shape}; return the sum or the "
            "per-row values"
        )
    return True


def value_and_grad(f, argnums=0, *, chunk_size: int, backend=None, batch_argnums=None,
                   progress=None):
    """Return a function that evaluates ``f`` and its gradient chunk by chunk (see the module docstring).

    ``chunk_size`` is the number of rows per chunk; the last chunk may be shorter.
    ``progress``, when given, is called with ``(rows_done, batch_length)`` after
    every chunk. On CuPy an out-of-memory error retries the chunk with half as
    many rows, logs a warning, and keeps the smaller size for the remaining chunks.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    from gpuflow import api

    single = isinstance(argnums, int)
    numbers_for = api._argnums_for(argnums)

    def evaluate(*args, **kwargs):
        numbers = numbers_for(len(args))
        for value in (*args, *kwargs.values()):
            if isinstance(value, Tensor):
                raise TypeError(
                    "chunk_size does not take Tensor arguments, so chunked calls do not nest "
                    "inside grad; pass arrays, or call without chunk_size"
                )
        names = api._argument_names(f, len(args))
        shapes = [array_shape(value) for value in args]
        length, batched = find_batch(shapes, batch_argnums, names)
        single_call = api.value_and_grad(f, numbers, backend=backend)
        if length is None:
            value, grads = single_call(*args, **kwargs)
            return value, (grads[0] if single else tuple(grads))
        value, grads = _run_chunks(single_call, numbers, args, kwargs, length, batched,
                                   chunk_size, progress)
        return value, (grads[0] if single else tuple(grads))

    return evaluate


def _run_chunks(single_call, numbers, args, kwargs, length, batched, chunk_size, progress):
    accumulator = _Accumulator()
    value_batched = None
    chunk_backend = None
    start = 0
    while True:
        stop = min(start + chunk_size, length)
        chunk_args = [value[start:stop] if position in batched else value
                      for position, value in enumerate(args)]
        try:
            value, grads = single_call(*chunk_args, **kwargs)
        except _out_of_memory_errors() as error:
            if chunk_size == 1:
                raise
            del chunk_args
            _free_device_memory()
            smaller = max(1, chunk_size // 2)
            logger.warning(
                "chunk of rows %d to %d ran out of device memory (%s); retrying with "
                "chunks of %d rows", start, stop, error, smaller,
            )
            chunk_size = smaller
            continue
        chunk_backend = backends.backend_of(value)
        is_batched = _check_output(value, stop - start, start)
        if value_batched is None:
            value_batched = is_batched
        elif is_batched != value_batched:
            raise ValueError(
                f"the function returned shape {tuple(value.shape)} for the chunk starting at "
                f"row {start}, but a {'batched' if value_batched else 'scalar'} value for the "
                "first chunk; return the same kind of value for every chunk"
            )
        if is_batched:
            accumulator.append("value", value)
        else:
            accumulator.add("value", chunk_backend, value)
        for number, gradient in zip(numbers, grads):
            if number in batched:
                accumulator.append(number, gradient)
            else:
                accumulator.add(number, chunk_backend, gradient)
        start = stop
        if progress is not None:
            progress(start, length)
        if start >= length:
            break
    value = accumulator.result("value", chunk_backend)
    grads = [accumulator.result(number, chunk_backend) for number in numbers]
    return value, grads
