"""Elementwise operations and their local partial derivatives.

Each rule returns gradients of the broadcast output shape; the engine sums them
back to each input's shape. Conventions where the derivative is not unique:

- ``abs`` and ``relu`` have gradient 0 at 0.
- ``maximum`` and ``minimum`` split the gradient evenly (0.5 each) at a tie, so
  ``maximum(x, 0)`` has gradient 0.5 at 0 while ``relu`` has 0.
- ``x ** 0`` has gradient 0 everywhere, also at x = 0; ``a ** b`` has a NaN
  gradient for ``b`` at a negative base (no real logarithm) and 0 at a = 0
  with b >= 0.
- ``clip`` passes the gradient to ``x`` where ``a_min <= x <= a_max`` (bounds
  included) and to a bound where ``x`` lies beyond it.
- ``xlogy(x, y)`` is 0 where x = 0; its x-gradient is ``log(y)`` everywhere and
  its y-gradient ``x / y``.
"""

from __future__ import annotations

import builtins

from gpuflow.ops.registry import builtin_op, check_broadcast
from gpuflow.tensor import Ones, Tensor, is_floating, state

_abs = builtins.abs


def _elementwise(name, forward, vjp=None, **options):
    return builtin_op(name, forward, vjp, check=check_broadcast, elementwise=True, **options)


def zeros_like(x):
    """Return zeros of ``x``'s shape and dtype (no gradient)."""
    return _zeros_like(x)


def ones_like(x):
    """Return ones of ``x``'s shape and dtype (no gradient)."""
    return _ones_like(x)


_zeros_like = builtin_op("zeros_like", lambda xp, x: xp.zeros_like(x))
_ones_like = builtin_op("ones_like", lambda xp, x: xp.ones_like(x))

# Tensor.detach while gpuflow.compile traces: the value passes through and no gradient
# does, and the plan replays it on new inputs instead of keeping a traced constant.
detach_op = _elementwise("detach", lambda xp, x: x)


# Arithmetic.

_add = _elementwise("add", lambda xp, a, b: xp.add(a, b), lambda g, out, a, b: (g, g))
_subtract = _elementwise(
    "subtract", lambda xp, a, b: xp.subtract(a, b), lambda g, out, a, b: (g, -g)
)
_multiply = _elementwise(
    "multiply", lambda xp, a, b: xp.multiply(a, b), lambda g, out, a, b: (g * b, g * a)
)
_divide = _elementwise(
    "divide",
    lambda xp, a, b: xp.divide(a, b),
    lambda g, out, a, b: (g / b, -(g * out) / b),
)
_negative = _elementwise("negative", lambda xp, x: xp.negative(x), lambda g, out, x: (-g,))


def add(x1, x2):
    """Return ``x1 + x2`` elementwise, with broadcasting."""
    return _add(x1, x2)


def subtract(x1, x2):
    """Return ``x1 - x2`` elementwise, with broadcasting."""
    return _subtract(x1, x2)


def multiply(x1, x2):
    """Return ``x1 * x2`` elementwise, with broadcasting."""
    return _multiply(x1, x2)


def divide(x1, x2):
    """Return ``x1 / x2`` elementwise, with broadcasting."""
    return _divide(x1, x2)


def negative(x):
    """Return ``-x`` elementwise."""
    return _negative(x)


# Powers.


def _power_scalar_forward(xp, x, exponent):
    return x**exponent


def _power_scalar_vjp(g, out, x, exponent):
    # d/dx x**p = p * x**(p - 1), written without pow for the common exponents.
    if exponent == 0:
        return (zeros_like(g),)
    if exponent == 1:
        return (g,)
    if exponent == 2:
        return (g * (2 * x),)
    return (g * (exponent * x ** (exponent - 1)),)


def _power_vjp(g, out, a, b):
    # d/da a**b = b * a**(b-1), set to 0 where b == 0 (a**0 is constant, also at a = 0).
    # d/db a**b = a**b * log(a): NaN for a < 0, and 0 at a = 0 with b >= 0 because
    # 0**b is constant there.
    zero = zeros_like(g)
    grad_a = where(b == 0, zero, g * (b * a ** (b - 1)))
    grad_b = where(logical_and(a == 0, b >= 0), zero, g * (out * log(a)))
    return grad_a, grad_b


_power_scalar = _elementwise("power", _power_scalar_forward, _power_scalar_vjp)
_power = _elementwise("power", lambda xp, a, b: a**b, _power_vjp)


def power(x1, x2):
    """Return ``x1 ** x2`` for array ** number, number ** array and array ** array."""
    if isinstance(x2, (int, float)) and not isinstance(x1, (int, float)):
        return _power_scalar(x1, exponent=x2)
    return _power(x1, x2)


_square = _elementwise("square", lambda xp, x: xp.square(x), lambda g, out, x: (g * (2 * x),))
# abs(out) makes the gradient at -0.0 +inf, like at +0.0; elsewhere out is positive.
_sqrt = _elementwise(
    "sqrt", lambda xp, x: xp.sqrt(x), lambda g, out, x: (g / (2 * abs(out)),)
)


def square(x):
    """Return ``x * x`` elementwise."""
    return _square(x)


def sqrt(x):
    """Return the square root elementwise; its gradient ``1 / (2 sqrt(x))`` is inf at 0."""
    return _sqrt(x)


# Exponentials and logarithms.

_exp = _elementwise("exp", lambda xp, x: xp.exp(x), lambda g, out, x: (g * out,))
_log = _elementwise("log", lambda xp, x: xp.log(x), lambda g, out, x: (g / x,))
_log1p = _elementwise("log1p", lambda xp, x: xp.log1p(x), lambda g, out, x: (g / (1 + x),))


def exp(x):
    """Return ``e ** x`` elementwise."""
    return _exp(x)


def log(x):
    """Return the natural logarithm elementwise."""
    return _log(x)


def log1p(x):
    """Return ``log(1 + x)`` elementwise, accurate for small ``x``."""
    return _log1p(x)


def _xlogy_forward(xp, x, y):
    with xp.errstate():
        return xp.where(x == 0, xp.zeros_like(x * y), x * xp.log(y))


_xlogy = _elementwise("xlogy", _xlogy_forward, lambda g, out, x, y: (g * log(y), g * (x / y)))


_sin = _elementwise("sin", lambda xp, x: xp.sin(x), lambda g, out, x: (g * cos(x),))
_cos = _elementwise("cos", lambda xp, x: xp.cos(x), lambda g, out, x: (-(g * sin(x)),))


def sin(x):
    """Return the sine elementwise (x in radians)."""
    return _sin(x)


def cos(x):
    """Return the cosine elementwise (x in radians)."""
    return _cos(x)


def xlogy(x, y):
    """Return ``x * log(y)``, defined as 0 where ``x == 0`` (also where y is 0)."""
    return _xlogy(x, y)


# Sigmoid, tanh, softplus and relu, stable for large |x|.


def _sigmoid_parts(xp, x):
    # With e = exp(-|x|), which never overflows: sigmoid(|x|) = 1 / (1 + e) and
    # sigmoid(-|x|) = e / (1 + e). Neither branch loses precision.
    e = xp.exp(-xp.abs(x))
    r = 1 / (1 + e)
    return xp.where(x >= 0, r, e * r), e, r


def _sigmoid_forward(xp, x):
    return _sigmoid_parts(xp, x)[0]


def _sigmoid_forward_cached(xp, x):
    # The value and the local partial sigmoid(x) * sigmoid(-x) in one fused step
    # (a CUDA kernel on CuPy; see backends/fused_reference.py for the formula).
    return xp.fused("sigmoid_forward", x)


def _sigmoid_vjp_cached(g, partial):
    if isinstance(g, Ones):
        return (g * partial,)
    return (state.raw_backend.fused("sigmoid_backward", g, partial),)


_sigmoid = _elementwise(
    "sigmoid",
    _sigmoid_forward,
    lambda g, out, x: (g * (out * sigmoid(-x)),),
    forward_cached=_sigmoid_forward_cached,
    vjp_cached=_sigmoid_vjp_cached,
)


def _as_floating(x):
    """Return integer or boolean ``x`` cast to the float dtype NumPy's exp gives it.

    The stable formulas below negate ``|x|``, which wraps around for unsigned
    integers and for the most negative signed one.
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None or getattr(dtype, "kind", "f") not in "biu":
        return x
    import numpy

    return astype(x, numpy.result_type(dtype, numpy.float16).name)


def sigmoid(x):
    """Return the logistic function ``1 / (1 + exp(-x))``, without overflow for any x."""
    return _sigmoid(_as_floating(x))


def _tanh_partial(xp, x):
    # 1 - tanh(x)**2 = 4 e / (1 + e)**2 with e = exp(-2|x|), exact where tanh(x) rounds to 1.
    # For |x| near the float maximum, -2|x| is -inf and e is 0, which is right.
    with xp.errstate():
        e = xp.exp(-2 * xp.abs(x))
    r = 1 / (1 + e)
    return 4 * e * r * r


_tanh = _elementwise(
    "tanh",
    lambda xp, x: xp.tanh(x),
    lambda g, out, x: (g * (4 * (sigmoid(2 * x) * sigmoid(-2 * x))),),
    forward_cached=lambda xp, x: (xp.tanh(x), _tanh_partial(xp, x)),
    vjp_cached=lambda g, partial: (g * partial,),
)


def tanh(x):
    """Return the hyperbolic tangent elementwise."""
    return _tanh(x)


def _softplus_forward(xp, x):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), which never overflows.
    return xp.maximum(x, xp.zeros_like(x)) + xp.log1p(xp.exp(-xp.abs(x)))


def _softplus_forward_cached(xp, x):
    e = xp.exp(-xp.abs(x))
    r = 1 / (1 + e)
    out = xp.maximum(x, xp.zeros_like(x)) + xp.log1p(e)
    return out, xp.where(x >= 0, r, e * r)


_softplus = _elementwise(
    "softplus",
    _softplus_forward,
    lambda g, out, x: (g * sigmoid(x),),
    forward_cached=_softplus_forward_cached,
    vjp_cached=lambda g, sigmoid_x: (g * sigmoid_x,),
)


def softplus(x):
    """Return ``log(1 + exp(x))`` elementwise, without overflow; its gradient is sigmoid(x)."""
    return _softplus(_as_floating(x))


_relu = _elementwise(
    "relu",
    lambda xp, x: xp.maximum(x, xp.zeros_like(x)),
    lambda g, out, x: (where(x > 0, g, zeros_like(g)),),
)


def relu(x):
    """Return ``max(x, 0)`` elementwise; the gradient at 0 is 0."""
    return _relu(x)


# Piecewise operations.

_abs_op = _elementwise("abs", lambda xp, x: xp.abs(x), lambda g, out, x: (g * sign(x),))


def abs(x):
    """Return ``|x|`` elementwise; the gradient at 0 (and -0.0) is 0."""
    return _abs_op(x)


def _maximum_vjp(g, out, x1, x2):
    zero = zeros_like(g)
    half = g * 0.5
    tie = x1 == x2
    return (
        where(x1 > x2, g, where(tie, half, zero)),
        where(x2 > x1, g, where(tie, half, zero)),
    )


def _minimum_vjp(g, out, x1, x2):
    zero = zeros_like(g)
    half = g * 0.5
    tie = x1 == x2
    return (
        where(x1 < x2, g, where(tie, half, zero)),
        where(x2 < x1, g, where(tie, half, zero)),
    )


_maximum = _elementwise("maximum", lambda xp, a, b: xp.maximum(a, b), _maximum_vjp)
_minimum = _elementwise("minimum", lambda xp, a, b: xp.minimum(a, b), _minimum_vjp)


def maximum(x1, x2):
    """Return the elementwise maximum; a tie splits the gradient evenly."""
    return _maximum(x1, x2)


def minimum(x1, x2):
    """Return the elementwise minimum; a tie splits the gradient evenly."""
    return _minimum(x1, x2)


def _where_vjp(g, out, condition, x1, x2):
    zero = zeros_like(g)
    return None, where(condition, g, zero), where(condition, zero, g)


_where = _elementwise(
    "where", lambda xp, c, a, b: xp.where(c, a, b), _where_vjp, promotes=(1, 2)
)


def where(condition, x1, x2):
    """Return ``x1`` where ``condition`` is true and ``x2`` elsewhere.

    Each branch's gradient is exactly zero where it was not selected, so a NaN
    or inf computed in the other branch never reaches it. To keep a singular
    function's gradient finite, mask its input rather than its output:
    ``sqrt(where(m, s, 1))``.
    """
    return _where(condition, x1, x2)


def _clip_forward(xp, x, *bounds, lower, upper):
    bounds = list(bounds)
    if lower:
        x = xp.maximum(x, bounds.pop(0))
    if upper:
        x = xp.minimum(x, bounds.pop(0))
    return x


def _clip_vjp(g, out, x, *bounds, lower, upper):
    # The output is min(max(x, low), high): the upper bound wins where max(x, low)
    # exceeds it (also when low > high), the lower bound where x is below it
    # otherwise, and x itself everywhere else, bounds included.
    zero = zeros_like(g)
    bounds = list(bounds)
    low = bounds.pop(0) if lower else None
    high = bounds.pop(0) if upper else None
    by_upper = by_lower = None
    if upper:
        by_upper = (maximum(x, low) if lower else x) > high
    if lower:
        by_lower = x < low
    if lower and upper:
        by_lower = logical_and(by_lower, logical_not(by_upper))
    grads = []
    passed = None
    for active in (by_lower, by_upper):
        if active is None:
            continue
        grads.append(where(active, g, zero))
        passed = active if passed is None else logical_or(passed, active)
    return (where(passed, zero, g), *grads)


_clip = _elementwise("clip", _clip_forward, _clip_vjp)


def clip(x, a_min=None, a_max=None):
    """Limit ``x`` to ``[a_min, a_max]``; either bound may be None, not both."""
    if a_min is None and a_max is None:
        raise ValueError("clip: a_min and a_max are both None; pass at least one bound")
    bounds = [bound for bound in (a_min, a_max) if bound is not None]
    return _clip(x, *bounds, lower=a_min is not None, upper=a_max is not None)


def _astype_vjp(g, out, x, dtype):
    # A cast to an integer or boolean dtype is piecewise constant: no gradient.
    backend = out.backend if isinstance(out, Tensor) else state.raw_backend
    return (g if is_floating(backend, out.dtype) else None,)


_astype = builtin_op(
    "astype",
    lambda xp, x, dtype: xp.astype(x, _resolve_dtype(xp, dtype)),
    _astype_vjp,
)


def _resolve_dtype(xp, dtype):
    if isinstance(dtype, str):
        try:
            return getattr(xp, dtype)
        except AttributeError:
            raise TypeError(f"astype: unknown dtype {dtype!r}; use a name such as 'float32'") from None
    return dtype


def astype(x, dtype):
    """Return ``x`` converted to ``dtype`` (a dtype object or a name such as ``'float32'``)."""
    return _astype(x, dtype=dtype)


# Operations without a gradient: signs, comparisons and logic.

_sign = _elementwise("sign", lambda xp, x: xp.sign(x))
_isfinite = _elementwise("isfinite", lambda xp, x: xp.isfinite(x))


def sign(x):
    """Return -1, 0 or 1 by the sign of ``x`` (no gradient)."""
    return _sign(x)


def isfinite(x):
    """Return where ``x`` is neither infinite nor NaN (no gradient)."""
    return _isfinite(x)


def _comparison(name):
    op = _elementwise(name, lambda xp, a, b: getattr(xp, name)(a, b))

    def compare(x1, x2):
        return op(x1, x2)

    compare.__name__ = name
    compare.__doc__ = f"Return ``{name}(x1, x2)`` elementwise as booleans (no gradient)."
    return compare


less = _comparison("less")
less_equal = _comparison("less_equal")
greater = _comparison("greater")
greater_equal = _comparison("greater_equal")
equal = _comparison("equal")
not_equal = _comparison("not_equal")
logical_and = _comparison("logical_and")
logical_or = _comparison("logical_or")

_logical_not = _elementwise("logical_not", lambda xp, x: xp.logical_not(x))


def logical_not(x):
    """Return the elementwise logical negation (no gradient)."""
    return _logical_not(x)
