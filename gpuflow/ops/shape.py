"""Operations that move elements without changing them: reshapes, transposes, joins and indexing.

Their gradients move the upstream gradient back: reshape it, transpose it by
the inverse permutation, slice it apart, or add it into zeros at the indexed
positions (repeated indices accumulate).
"""

from __future__ import annotations

import math

import numpy

from gpuflow.ops.registry import builtin_op
from gpuflow.tensor import Tensor, state


def _shape_of(x) -> tuple:
    return tuple(getattr(x, "shape", ()))


def _normalize(name, axis, ndim):
    from gpuflow.ops.reduce import normalize_axis

    return normalize_axis(name, axis, ndim)


# Reshapes.


def _reshape_forward(xp, x, shape):
    try:
        return xp.reshape(x, shape)
    except ValueError:
        raise ValueError(
            f"reshape: cannot reshape an array of shape {tuple(x.shape)} "
            f"({math.prod(x.shape)} elements) into shape {shape}; the element counts must match"
        ) from None


_reshape = builtin_op(
    "reshape",
    _reshape_forward,
    lambda g, out, x, shape: (reshape(g, tuple(x.shape)),),
    keeps_ones=True,
)


def reshape(x, shape):
    """Return ``x`` with a new shape holding the same elements (one entry may be -1)."""
    if isinstance(shape, int):
        shape = (shape,)
    if isinstance(shape, str) or not all(
        hasattr(extent, "__index__") for extent in shape
    ):
        raise TypeError(f"reshape: shape must be a tuple of ints, got {shape!r:.60}")
    shape = tuple(int(extent) for extent in shape)
    if _shape_of(x) == shape and (isinstance(x, Tensor) or state.raw_backend is not None):
        return x
    return _reshape(x, shape=shape)


def _transpose_vjp(g, out, x, axes):
    inverse = [0] * len(axes)
    for position, axis in enumerate(axes):
        inverse[axis] = position
    return (transpose(g, tuple(inverse)),)


_transpose = builtin_op(
    "transpose", lambda xp, x, axes: xp.permute_dims(x, axes), _transpose_vjp
)


def transpose(x, axes=None):
    """Permute the axes of ``x``: reverse them by default, or put axis ``axes[i]`` at ``i``."""
    ndim = len(_shape_of(x))
    if axes is None:
        axes = tuple(reversed(range(ndim)))
    else:
        axes = tuple(axes)
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
            raise TypeError(f"transpose: axes must be a tuple of ints, got {axes!r:.60}")
        if sorted(a % ndim if ndim else a for a in axes) != list(range(ndim)):
            raise ValueError(
                f"transpose: axes {axes!r} are not a permutation of the {ndim} axes of an array "
                f"of shape {_shape_of(x)}"
            )
        axes = tuple(a % ndim for a in axes)
    return _transpose(x, axes=axes)


def matrix_transpose(x):
    """Swap the last two axes of ``x`` (which needs at least two)."""
    ndim = len(_shape_of(x))
    if ndim < 2:
        raise ValueError(
            f"matrix_transpose: needs an array of at least 2 dimensions, got shape {_shape_of(x)}"
        )
    axes = list(range(ndim))
    axes[-2], axes[-1] = axes[-1], axes[-2]
    return _transpose(x, axes=tuple(axes))


def _broadcast_to_forward(xp, x, shape):
    from gpuflow.ops.registry import broadcast_shapes

    if broadcast_shapes("broadcast_to", [tuple(x.shape), shape]) != shape:
        raise ValueError(
            f"broadcast_to: an array of shape {tuple(x.shape)} cannot be broadcast to shape "
            f"{shape}; each axis must match or be 1, and the target needs at least as many axes"
        )
    return xp.broadcast_to(x, shape)


# The engine sums a gradient back to its input's shape, so this rule passes it through.
_broadcast_to = builtin_op(
    "broadcast_to", _broadcast_to_forward, lambda g, out, x, shape: (g,), keeps_ones=True
)


def broadcast_to(x, shape):
    """Return ``x`` broadcast to ``shape`` (a read-only view on NumPy)."""
    shape = (shape,) if isinstance(shape, int) else tuple(int(extent) for extent in shape)
    return _broadcast_to(x, shape=shape)


def expand_dims(x, axis):
    """Insert axes of length 1 at the positions ``axis`` (an int or tuple) of the result."""
    shape = _shape_of(x)
    axes = _normalize("expand_dims", axis, len(shape) + (1 if isinstance(axis, int) else len(axis)))
    new_shape = list(shape)
    for position in axes:
        new_shape.insert(position, 1)
    return _reshape(x, shape=tuple(new_shape))


def squeeze(x, axis=None):
    """Remove axes of length 1: those in ``axis``, or every one by default."""
    shape = _shape_of(x)
    if axis is None:
        axes = tuple(i for i, extent in enumerate(shape) if extent == 1)
    else:
        axes = _normalize("squeeze", axis, len(shape))
        for position in axes:
            if shape[position] != 1:
                raise ValueError(
                    f"squeeze: axis {position} of an array of shape {shape} has length "
                    f"{shape[position]}, not 1, so it cannot be removed"
                )
    return _reshape(x, shape=tuple(e for i, e in enumerate(shape) if i not in axes))


_flip = builtin_op(
    "flip",
    lambda xp, x, axis: xp.flip(x, axis=axis),
    lambda g, out, x, axis: (flip(g, axis),),
)


def flip(x, axis=None):
    """Reverse the order of elements along ``axis`` (all axes by default)."""
    return _flip(x, axis=_normalize("flip", axis, len(_shape_of(x))))


# Joins.


def _pieces(g, shapes, axis):
    pieces, start = [], 0
    for shape in shapes:
        stop = start + shape[axis]
        key = (slice(None),) * axis + (slice(start, stop), Ellipsis)
        pieces.append(getitem(g, key))
        start = stop
    return tuple(pieces)


def _check_join(name, arrays, axis, same_shape):
    shapes = [tuple(array.shape) for array in arrays]
    first = shapes[0]
    for shape in shapes[1:]:
        if same_shape:
            matches = shape == first
        else:
            matches = len(shape) == len(first) and all(
                a == b for i, (a, b) in enumerate(zip(shape, first)) if i != axis
            )
        if not matches:
            listed = ", ".join(str(s) for s in shapes)
            rule = "have the same shape" if same_shape else f"match except along axis {axis}"
            raise ValueError(f"{name}: input shapes {listed} must {rule}")


def _concatenate_forward(xp, *arrays, axis):
    _check_join("concatenate", arrays, axis, same_shape=False)
    return xp.concat(arrays, axis=axis)


_concatenate = builtin_op(
    "concatenate",
    _concatenate_forward,
    lambda g, out, *arrays, axis: _pieces(g, [tuple(a.shape) for a in arrays], axis),
)


def concatenate(arrays, axis=0):
    """Join a sequence of arrays along an existing axis."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("concatenate: needs at least one array")
    if axis is None:
        # As in NumPy: flatten every array, then join them.
        return _concatenate(*[reshape(array, (-1,)) for array in arrays], axis=0)
    axis = _normalize("concatenate", axis, len(_shape_of(arrays[0])))[0]
    return _concatenate(*arrays, axis=axis)


def _stack_forward(xp, *arrays, axis):
    _check_join("stack", arrays, axis, same_shape=True)
    return xp.stack(arrays, axis=axis)


def _stack_vjp(g, out, *arrays, axis):
    return tuple(getitem(g, (slice(None),) * axis + (i, Ellipsis)) for i in range(len(arrays)))


_stack = builtin_op("stack", _stack_forward, _stack_vjp)


def stack(arrays, axis=0):
    """Join a sequence of arrays of one shape along a new axis."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("stack: needs at least one array")
    if axis is None:
        raise TypeError("stack: axis must be an int, got None; pass the position of the new axis")
    axis = _normalize("stack", axis, len(_shape_of(arrays[0])) + 1)[0]
    return _stack(*arrays, axis=axis)


# Indexing.


def _index_add_forward(xp, g, shape, key):
    return xp.index_add(shape, g.dtype, key, g)


# Adding into zeros is linear, so its gradient is the same indexing of the upstream gradient.
_index_add = builtin_op(
    "index_add", _index_add_forward, lambda g, out, values, shape, key: (getitem(g, key),)
)


def _getitem_forward(xp, x, key):
    try:
        if not xp.native_indexing and xp.is_array(key):
            # The standard's integer-array indexing needs an index on every axis, so
            # one index array on the first axis goes through take instead.
            rows = xp.take(x, xp.reshape(key, (-1,)), axis=0)
            return xp.reshape(rows, tuple(key.shape) + tuple(x.shape[1:]))
        return x[key]
    except IndexError as error:
        raise IndexError(
            f"getitem: index {_describe_key(key)} is invalid for an array of shape "
            f"{tuple(x.shape)}: {error}"
        ) from None


_getitem = builtin_op(
    "getitem",
    _getitem_forward,
    lambda g, out, x, key: (_index_add(g, shape=tuple(x.shape), key=key),),
)


def _describe_key(key) -> str:
    parts = key if isinstance(key, tuple) else (key,)
    if len(parts) > 1 and parts[-1] is Ellipsis:
        parts = parts[:-1]  # the Ellipsis that _normalize_key appended
    described = []
    for part in parts:
        if hasattr(part, "shape") and not isinstance(part, (int, slice)):
            described.append(f"<integer array of shape {tuple(part.shape)}>")
        else:
            described.append(repr(part))
    return "[" + ", ".join(described) + "]"


def _normalize_key(x, key):
    backend = x.backend if isinstance(x, Tensor) else state.raw_backend
    parts = key if isinstance(key, tuple) else (key,)
    normalized = []
    for part in parts:
        if isinstance(part, Tensor) and state.capture:
            raise TypeError(
                "compile: indexing with a Tensor (an argument of the compiled function, a "
                "value computed from one, or a boolean mask) is not supported, because the "
                "index would become a constant of the plan; index with a NumPy array or a "
                "list made outside the function, or use gpuflow.value_and_grad"
            )
        if isinstance(part, Tensor):
            part = part.data
        elif isinstance(part, list):
            part = backend.asarray(part) if backend is not None else part
        normalized.append(part)
    # The Array API standard requires an index on every axis; a trailing Ellipsis
    # gives NumPy's meaning of a shorter basic index on every backend.
    basic = all(part is None or isinstance(part, (int, slice)) for part in normalized)
    if basic and Ellipsis not in normalized:
        normalized.append(Ellipsis)
        return tuple(normalized)
    return tuple(normalized) if isinstance(key, tuple) else normalized[0]


def getitem(x, key):
    """Index ``x`` like NumPy: basic slicing, or integer arrays (repeated indices accumulate)."""
    key = _normalize_key(x, key)
    if isinstance(key, tuple) and any(part is None for part in key):
        # New axes are a reshape of the result, which keeps the backward pass to
        # keys that every backend can assign to.
        shape = numpy.broadcast_to(numpy.empty(()), _shape_of(x))[key].shape
        inner = _getitem(x, key=tuple(part for part in key if part is not None))
        return reshape(inner, shape)
    return _getitem(x, key=key)
