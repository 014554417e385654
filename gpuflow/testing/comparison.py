"""Elementwise comparison of two arrays against a tolerance, and the record of one check.

Both ``assert_parity`` and ``check_grads`` reduce every check to a
``Comparison``: the worst element of ``|actual - expected|`` measured against
``atol + rtol * |expected|`` (plus, for finite differences, an estimate of
their rounding error).
"""

from __future__ import annotations

import dataclasses

import numpy

# Default tolerances (rtol, atol) of assert_parity, by the dtype of the reference output.
#
# float64: GPU reductions add in a different order than NumPy's pairwise sum, and the
# difference grows with the number of terms and with cancellation. rtol 1e-10 is about
# 4.5e5 machine epsilons (2.2e-16), so it leaves room for sums over millions of elements.
# A mismatch in a gradient rule is orders of magnitude larger.
# float32: rtol 1e-5 is about 84 epsilons (1.2e-7).
# float16: rtol 1e-2 is about 10 epsilons (9.8e-4). Sums of 16-bit floats accumulate in
# float32, so the rounding of the final cast dominates.
# bfloat16: rtol 5e-2 is about 6 epsilons (7.8e-3), by the same reasoning as float16.
# Integer and boolean outputs must match exactly.
TOLERANCES = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 5e-3),
}


def dtype_name(dtype) -> str:
    """Return the short name of a dtype of any backend, such as "float32"."""
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    return str(dtype).rsplit(".", 1)[-1]


def default_tolerance(dtype) -> tuple[float, float]:
    """Return the default (rtol, atol) for outputs of ``dtype``, exact for non-float dtypes."""
    return TOLERANCES.get(dtype_name(dtype), (0.0, 0.0))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The result of one check: an output of one backend against its reference.

    ``check`` is "parity", "order 1" or "order 2". ``output`` is "value" or the
    name of an input. ``backend`` computed ``actual`` and ``reference`` is the
    backend name, or "finite differences", that computed ``expected``. ``index``,
    ``expected`` and ``actual`` describe the worst element, and ``message``
    explains a failure (None when the check passed).
    """

    check: str
    output: str
    backend: str
    reference: str
    max_abs_error: float
    max_rel_error: float
    rtol: float
    atol: float
    passed: bool
    index: tuple | None = None
    expected: float | None = None
    actual: float | None = None
    message: str | None = None


@dataclasses.dataclass(frozen=True)
class Difference:
    """The errors of ``actual`` against ``expected``, and the element with the largest excess."""

    max_abs_error: float
    max_rel_error: float
    passed: bool
    index: tuple
    expected: float
    actual: float
    abs_error: float
    allowed: float
    excess: float


def compare_arrays(expected, actual, rtol, atol, *, nan_equal, slack=0.0) -> Difference:
    """Compare two NumPy arrays of one shape elementwise in float64.

    An element passes when ``|actual - expected| <= atol + rtol * |expected| + slack``.
    Equal values pass, infinities included, and so do NaNs in both arrays when
    ``nan_equal`` is set; any other NaN fails. ``slack`` is a number or an array
    of the arrays' shape.
    """
    expected = numpy.asarray(expected, dtype=numpy.float64)
    actual = numpy.asarray(actual, dtype=numpy.float64)
    slack = numpy.broadcast_to(numpy.asarray(slack, dtype=numpy.float64), expected.shape)
    if expected.size == 0:
        return Difference(0.0, 0.0, True, (0,) * expected.ndim, 0.0, 0.0, 0.0, atol, -atol)

    with numpy.errstate(invalid="ignore", divide="ignore", over="ignore"):
        same = expected == actual
        if nan_equal:
            same |= numpy.isnan(expected) & numpy.isnan(actual)
        error = numpy.where(same, 0.0, numpy.abs(actual - expected))
        allowed = atol + rtol * numpy.abs(expected) + slack
        # A NaN here (a NaN on one side only, or a finite value against an infinity)
        # exceeds every tolerance, and equal elements exceed none.
        excess = error - allowed
        excess = numpy.where(numpy.isnan(excess), numpy.inf, excess)
        excess = numpy.where(same, -numpy.inf, excess)
        relative = numpy.where(error == 0.0, 0.0, error / numpy.abs(expected))

    flat = int(numpy.argmax(excess))
    index = tuple(int(i) for i in numpy.unravel_index(flat, expected.shape))
    return Difference(
        max_abs_error=float(numpy.max(error)),
        max_rel_error=float(numpy.max(relative)),
        passed=bool(numpy.max(excess) <= 0.0),
        index=index,
        expected=float(expected[index]),
        actual=float(actual[index]),
        abs_error=float(error[index]),
        allowed=float(allowed[index]),
        excess=float(excess[index]),
    )
