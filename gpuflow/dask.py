"""Gradients over Dask arrays: one ``gpuflow.value_and_grad`` task per chunk of the batch.

Install with ``pip install 'gpuflow[dask]'``. This is the only module that
imports Dask, and ``import gpuflow`` does not import it.

Batched inputs are Dask arrays chunked along axis 0 (other axes are put into
one chunk). Shared inputs, the ones whose leading dimension is not the batch
length, are NumPy or CuPy arrays, Python numbers or Dask arrays, which are
rechunked into one chunk. The batch rule, the accepted return values of ``f``
and the float64 accumulation are those of ``gpuflow.chunked``.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy

import gpuflow
from gpuflow import backends, chunked
from gpuflow.tensor import _NUMBER_TYPES

__all__ = ["value_and_grad", "grad"]


def _find_batch(f, args, batch_argnums):
    """Return the batch length and the batched positions, with the rule of gpuflow.chunked."""
    shapes = [
        tuple(int(size) for size in value.shape) if isinstance(value, da.Array)
        else chunked.array_shape(value)
        for value in args
    ]
    names = gpuflow.api._argument_names(f, len(args))
    return chunked.find_batch(shapes, batch_argnums, names)


def _evaluate_chunk(f, numbers, backend, *args):
    value, grads = gpuflow.value_and_grad(f, numbers, backend=backend)(*args)
    return (value, *grads)


def _probe_value(f, numbers, args, batched):
    """Return the shape after the batch axis and dtype of f's value, from a one-row call.

    The call runs ``gpuflow.value_and_grad`` on NumPy zeros of the inputs' shapes
    and dtypes, so ``f`` must accept zeros.
    """
    stand_ins = []
    for position, value in enumerate(args):
        if isinstance(value, _NUMBER_TYPES):
            stand_ins.append(value)
            continue
        shape = tuple(value.shape)
        if position in batched:
            shape = (1, *shape[1:])
        stand_ins.append(numpy.zeros(shape, dtype=value.dtype))
    with numpy.errstate(all="ignore"):
        out = numpy.asarray(_evaluate_chunk(f, numbers, "numpy", *stand_ins)[0])
    if out.ndim == 0:
        return None, out.dtype
    if out.shape[0] != 1:
        raise ValueError(
            f"the function returned shape {out.shape} for one row; it must return a scalar "
            "(a sum over the batch) or an array whose leading axis is the batch"
        )
    return tuple(out.shape[1:]), out.dtype


# Per-chunk results that one task of the reduction adds.
_SPLIT_EVERY = 8


def _evaluate_split(f, numbers, backend, batched_slots, rows, start, *args):
    """Return a chunk's batched results and its shared ones, the latter in the sum dtype.

    Raises ValueError when the value is not of the kind (scalar or batched) that the
    one-row call at graph construction found, because the graph's shapes rely on it.
    """
    results = _evaluate_chunk(f, numbers, backend, *args)
    is_batched = chunked._check_output(results[0], rows, start)
    if is_batched != (0 in batched_slots):
        raise ValueError(
            f"the function returned shape {tuple(results[0].shape)} for the chunk starting "
            f"at row {start}, but {'an array' if 0 in batched_slots else 'a scalar'} for "
            "one row; return the same kind of value for every chunk"
        )
    batched = tuple(results[slot] for slot in batched_slots)
    shared = tuple(_widen(result) for slot, result in enumerate(results)
                   if slot not in batched_slots)
    return batched, shared


def _widen(array):
    owner = backends.backend_of(array)
    return owner.astype(array, chunked.accumulation_dtype(owner, array.dtype))


def _add_parts(*parts):
    return tuple(sum(terms[1:], terms[0]) for terms in zip(*parts))


def _cast_parts(part, dtypes):
    return tuple(backends.backend_of(array).astype(array, dtype)
                 for array, dtype in zip(part, dtypes))


def _tree_sum(parts, dtypes):
    """Add tuples of per-chunk results in a tree of tasks and cast the sums to ``dtypes``."""
    while len(parts) > 1:
        parts = [dask.delayed(_add_parts, pure=True)(*parts[start:start + _SPLIT_EVERY])
                 for start in range(0, len(parts), _SPLIT_EVERY)]
    total = dask.delayed(_cast_parts, pure=True, nout=len(dtypes))(parts[0], dtypes)
    return [total[position] for position in range(len(dtypes))]


def _prepare(args, batched):
    """Return the arguments as Dask arrays chunked along axis 0 only, or shared values."""
    prepared = []
    reference = None
    for position, value in enumerate(args):
        if position in batched:
            array = da.asarray(value)
            array = array.rechunk({axis: -1 for axis in range(1, array.ndim)})
            if reference is None:
                reference = array.chunks[0]
            elif array.chunks[0] != reference:
                array = array.rechunk({0: reference})
            prepared.append(array)
        elif isinstance(value, da.Array):
            prepared.append(value.rechunk(-1) if value.ndim else value)
        else:
            prepared.append(value)
    return prepared, reference


def value_and_grad(f, argnums=0, *, backend=None, batch_argnums=None):
    """Return a function over Dask arrays that gives a lazy value and lazy gradients.

    The value is a 0-d Dask array (summed over chunks by a tree reduction) or,
    for an ``f`` that returns one value per row, a Dask array chunked like the
    batch. The gradient of a batched input is a Dask array with the input's
    chunks, and that of a shared input is a tree-reduced sum over chunks.
    Nothing runs until the caller computes: ``dask.compute(value, grad)``, or
    ``dask.array.to_npy_stack`` to store a gradient chunk by chunk. ``backend``
    is passed to every task; without it each task uses its chunk's backend.
    """
    single = isinstance(argnums, int)

    def evaluate(*args):
        numbers = gpuflow.api._normalize_argnums(argnums, len(args))
        length, batched = _find_batch(f, args, batch_argnums)
        if length is None:
            raise ValueError(
                "gpuflow.dask.value_and_grad needs a batched input, an array of ndim >= 1; "
                "for scalars call gpuflow.value_and_grad"
            )
        prepared, row_chunks = _prepare(args, batched)
        rest_shape, value_dtype = _probe_value(f, numbers, prepared, batched)
        delayed_args = [_delayed_argument(value, position in batched)
                        for position, value in enumerate(prepared)]

        # Slot 0 of a chunk's results is the value and slot k the k-th gradient.
        dtypes = [value_dtype, *(_gradient_dtype(prepared[number]) for number in numbers)]
        shapes = [rest_shape, *(tuple(getattr(prepared[number], "shape", ()))
                                for number in numbers)]
        batched_slots = [slot for slot, number in enumerate((None, *numbers))
                         if (slot == 0 and rest_shape is not None) or number in batched]
        shared_slots = [slot for slot in range(len(dtypes)) if slot not in batched_slots]

        batched_parts, shared_parts = [], []
        for index in range(len(row_chunks)):
            chunk_args = [value[index] if position in batched else value
                          for position, value in enumerate(delayed_args)]
            task = dask.delayed(_evaluate_split, nout=2, pure=True)
            rows = row_chunks[index]
            start = sum(row_chunks[:index])
            batched_part, shared_part = task(
                f, numbers, backend, batched_slots, rows, start, *chunk_args
            )
            batched_parts.append(batched_part)
            shared_parts.append(shared_part)
        totals = []
        if shared_slots:
            totals = _tree_sum(shared_parts, [dtypes[slot] for slot in shared_slots])

        results = {}
        for position, slot in enumerate(shared_slots):
            shape = () if slot == 0 else shapes[slot]
            results[slot] = da.from_delayed(totals[position], shape=shape, dtype=dtypes[slot])
        for position, slot in enumerate(batched_slots):
            meta = prepared[numbers[slot - 1]]._meta if slot > 0 else None
            rest = rest_shape if slot == 0 else shapes[slot][1:]
            results[slot] = da.concatenate([
                da.from_delayed(part[position], shape=(rows, *rest), dtype=dtypes[slot],
                                meta=meta)
                for part, rows in zip(batched_parts, row_chunks)
            ])
        value = results[0]
        grads = [results[slot] for slot in range(1, len(dtypes))]
        return value, (grads[0] if single else tuple(grads))

    return evaluate


def grad(f, argnums=0, *, backend=None, batch_argnums=None):
    """Return a function over Dask arrays that gives lazy gradients; see ``value_and_grad``."""
    both = value_and_grad(f, argnums, backend=backend, batch_argnums=batch_argnums)
    return lambda *args: both(*args)[1]


def _gradient_dtype(argument):
    if isinstance(argument, _NUMBER_TYPES):
        return numpy.dtype(numpy.float64)
    return numpy.dtype(argument.dtype)


def _delayed_argument(value, is_batched):
    """Return per-chunk Delayed blocks of a batched input, or one Delayed for a shared one."""
    if is_batched:
        return list(value.to_delayed().ravel())
    if isinstance(value, da.Array):
        return value.to_delayed().ravel()[0]
    if isinstance(value, _NUMBER_TYPES) or backends.backend_of(value) is None:
        return value
    # One graph key for the array, so that it is sent once and not copied into every task.
    return dask.delayed(value, pure=True)
