"""Reductions over an axis, several axes or all of them, with NumPy's ``axis`` and ``keepdims``.

``axis=None`` reduces every axis and ``axis=()`` reduces none, as in NumPy.
A tie in ``max`` or ``min`` splits the gradient evenly among the tied elements.
The norm has gradient 0 at the origin, and ``logsumexp`` of all -inf has gradient 0.
"""

from __future__ import annotations

import math

from gpuflow.ops.elementwise import astype, exp, isfinite, ones_like, where, zeros_like
from gpuflow.ops.registry import builtin_op
from gpuflow.ops.shape import broadcast_to, reshape
from gpuflow.tensor import is_floating


def normalize_axis(name: str, axis, ndim: int) -> tuple:
    """Return ``axis`` as a sorted tuple of non-negative axes, checked against ``ndim``."""
    if axis is None:
        return tuple(range(ndim))
    if not isinstance(axis, (int, tuple, list)):
        hint = {"max": "maximum", "min": "minimum"}.get(name)
        extra = f"; for the elementwise {hint} of two arrays use {hint}(x1, x2)" if hint else ""
        raise TypeError(
            f"{name}: axis must be an int or a tuple of ints, got {type(axis).__name__}{extra}"
        )
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    result = []
    for entry in axes:
        if isinstance(entry, bool) or not isinstance(entry, int):
            raise TypeError(f"{name}: axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= entry < ndim:
            raise ValueError(
                f"{name}: axis {entry} is out of bounds for an array of {ndim} dimensions; "
                f"use an axis from {-ndim} to {ndim - 1}"
            )
        result.append(entry % ndim)
    if len(set(result)) != len(result):
        raise ValueError(f"{name}: axis {axis!r} repeats an axis")
    return tuple(sorted(result))


def _ndim(x) -> int:
    return len(getattr(x, "shape", ()))


def _kept_shape(shape, axis) -> tuple:
    return tuple(1 if i in axis else extent for i, extent in enumerate(shape))


def _expand(g, shape, axis, keepdims):
    """Reshape a reduced gradient so that it broadcasts against the input of ``shape``."""
    if keepdims or not axis:
        return g
    return reshape(g, _kept_shape(shape, axis))


def _sum_vjp(g, out, x, axis, keepdims):
    g = _expand(g, x.shape, axis, keepdims)
    shape = tuple(x.shape)
    return (g if tuple(g.shape) == shape else broadcast_to(g, shape),)


def accumulation_dtype(xp, dtype):
    """Return the dtype sums of ``dtype`` accumulate in: float32 for 16-bit floats, else ``dtype``.

    float16 has 11 significant bits, so a float16 running sum stops growing
    once it reaches 2048 times the terms. Sums and the adding of gradients that
    meet therefore accumulate 16-bit floats in float32 and return their own dtype.
    """
    name = getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1]
    return xp.float32 if name in ("float16", "bfloat16") else dtype


def _sum_forward(xp, x, axis, keepdims):
    if not axis and is_floating(xp, x.dtype):
        return x  # A float sum over no axes is the input itself, as in NumPy.
    if x.dtype == xp.bool:
        # NumPy counts True values; the Array API standard sums numbers only.
        return xp.sum(xp.astype(x, xp.int64), axis=axis, keepdims=keepdims)
    wide = accumulation_dtype(xp, x.dtype)
    if wide != x.dtype:
        total = xp.sum(xp.astype(x, wide), axis=axis, keepdims=keepdims)
        return xp.astype(total, x.dtype)
    return xp.sum(x, axis=axis, keepdims=keepdims)


_sum = builtin_op("sum", _sum_forward, _sum_vjp)


def sum(x, axis=None, keepdims=False):
    """Return the sum over ``axis`` (all axes by default)."""
    axis = normalize_axis("sum", axis, _ndim(x))
    return _sum(x, axis=axis, keepdims=keepdims)


def _count(shape, axis) -> int:
    return math.prod(shape[i] for i in axis)


def _mean_vjp(g, out, x, axis, keepdims):
    count = _count(x.shape, axis)
    scale = 1 / count if count else math.nan
    return (broadcast_to(_expand(g, x.shape, axis, keepdims) * scale, tuple(x.shape)),)


def _mean_forward(xp, x, axis, keepdims):
    if not axis:
        return x  # NumPy's mean over no axes is the input itself.
    wide = accumulation_dtype(xp, x.dtype)
    if wide != x.dtype:
        return xp.astype(xp.mean(xp.astype(x, wide), axis=axis, keepdims=keepdims), x.dtype)
    return xp.mean(x, axis=axis, keepdims=keepdims)


_mean = builtin_op("mean", _mean_forward, _mean_vjp)


def mean(x, axis=None, keepdims=False):
    """Return the arithmetic mean over ``axis`` (all axes by default)."""
    axis = normalize_axis("mean", axis, _ndim(x))
    return _mean(x, axis=axis, keepdims=keepdims)


def _extremum_vjp(g, out, x, axis, keepdims):
    # Every element equal to the extremum shares the gradient evenly.
    hit = x == reshape(out, _kept_shape(x.shape, axis))
    count = sum(astype(hit, g.dtype), axis=axis, keepdims=True)
    share = _expand(g, x.shape, axis, keepdims) / count
    return (where(hit, share, zeros_like(x)),)


def _checked_extremum(function_name):
    def forward(xp, x, axis, keepdims):
        if any(x.shape[i] == 0 for i in axis):
            raise ValueError(
                f"{function_name}: cannot reduce an empty axis of an array of shape "
                f"{tuple(x.shape)} because it has no identity; drop the empty axis first"
            )
        return getattr(xp, function_name)(x, axis=axis, keepdims=keepdims)

    return forward


_max = builtin_op("max", _checked_extremum("max"), _extremum_vjp)
_min = builtin_op("min", _checked_extremum("min"), _extremum_vjp)


def max(x, axis=None, keepdims=False):
    """Return the maximum over ``axis``; tied maxima share the gradient evenly."""
    return _max(x, axis=normalize_axis("max", axis, _ndim(x)), keepdims=keepdims)


def min(x, axis=None, keepdims=False):
    """Return the minimum over ``axis``; tied minima share the gradient evenly."""
    return _min(x, axis=normalize_axis("min", axis, _ndim(x)), keepdims=keepdims)


def _logsumexp_forward(xp, x, axis, keepdims):
    # Shift by the maximum for stability; an infinite maximum is replaced by 0 so
    # that all -inf gives log(0) = -inf instead of (-inf) - (-inf) = NaN.
    if not axis:
        return x
    if any(x.shape[i] == 0 for i in axis):
        raise ValueError(
            f"logsumexp: cannot reduce an empty axis of an array of shape {tuple(x.shape)}; "
            "logsumexp needs at least one element along each reduced axis"
        )
    shift = xp.max(x, axis=axis, keepdims=True)
    shift = xp.where(xp.isfinite(shift), shift, xp.zeros_like(shift))
    with xp.errstate():
        total = xp.sum(xp.exp(x - shift), axis=axis, keepdims=True)
        out = xp.log(total) + shift
    if not keepdims:
        out = xp.reshape(out, tuple(e for i, e in enumerate(x.shape) if i not in axis))
    return out


def _logsumexp_vjp(g, out, x, axis, keepdims):
    # The gradient is softmax(x), computed from the shifted exponentials rather
    # than exp(x - out): out has lost the small log-sum for large x (1e8 in
    # float32), which would make every weight 1. Where every term is -inf the
    # function is constant and the weights are 0.
    shift = max(x, axis=axis, keepdims=True)
    shift = where(isfinite(shift), shift, zeros_like(shift))
    terms = exp(x - shift)
    total = sum(terms, axis=axis, keepdims=True)
    empty = total == 0
    weights = where(empty, zeros_like(terms), terms / where(empty, ones_like(total), total))
    return (_expand(g, x.shape, axis, keepdims) * weights,)


_logsumexp = builtin_op("logsumexp", _logsumexp_forward, _logsumexp_vjp)


def logsumexp(x, axis=None, keepdims=False):
    """Return ``log(sum(exp(x)))`` over ``axis`` without overflow; all -inf gives -inf."""
    return _logsumexp(x, axis=normalize_axis("logsumexp", axis, _ndim(x)), keepdims=keepdims)


def _norm_forward(xp, x, axis, keepdims):
    # Scale by the largest magnitude so that squaring neither overflows (3e30 in
    # float32, 300 in float16) nor underflows (1e-200 in float64).
    scale = xp.max(xp.abs(x), axis=axis, keepdims=True) if axis else xp.abs(x)
    usable = xp.isfinite(scale) & (scale > 0)
    safe = xp.where(usable, scale, xp.ones_like(scale))
    scaled = x / safe
    out = safe * xp.sqrt(xp.sum(scaled * scaled, axis=axis, keepdims=True))
    out = xp.where(usable, out, scale)
    if not keepdims:
        out = xp.reshape(out, tuple(e for i, e in enumerate(x.shape) if i not in axis))
    return out


def _norm_vjp(g, out, x, axis, keepdims):
    # x / norm(x), with the zero subgradient at the origin instead of 0 / 0.
    norm_kept = reshape(out, _kept_shape(x.shape, axis))
    origin = norm_kept == 0
    safe = where(origin, zeros_like(norm_kept) + 1, norm_kept)
    direction = where(origin, zeros_like(x), x / safe)
    return (_expand(g, x.shape, axis, keepdims) * direction,)


_norm = builtin_op("norm", _norm_forward, _norm_vjp)


def norm(x, axis=None, keepdims=False):
    """Return the vector 2-norm over ``axis`` (all elements by default); its gradient at 0 is 0."""
    return _norm(x, axis=normalize_axis("norm", axis, _ndim(x)), keepdims=keepdims)

