"""Fused operations that the fusion pass puts in place of recognized patterns.

``multiply_add`` is ``±(a * b) ± c`` as one node. Its first-order backward pass
is one fused step (``ga = g * b``, ``gb = g * a``, ``gc = g``) that the CuPy
backend runs as a single kernel reading g, a and b once. With a higher-order
pass the rule is recorded from ordinary operations instead.
"""

from __future__ import annotations

from gpuflow.ops.registry import builtin_op, check_broadcast
from gpuflow.tensor import Ones, state


def _multiply_add_forward(xp, a, b, c, negate_product, negate_addend):
    if not (negate_product or negate_addend):
        return xp.fused("multiply_add_forward", a, b, c)
    product = -(a * b) if negate_product else a * b
    return product - c if negate_addend else product + c


def _multiply_add_vjp(g, out, a, b, c, negate_product, negate_addend):
    backend = state.raw_backend
    if backend is not None and not isinstance(g, Ones):
        grad_a, grad_b, grad_c = backend.fused("multiply_add_backward", g, a, b)
    else:
        grad_a, grad_b, grad_c = g * b, g * a, g
    if negate_product:
        grad_a, grad_b = -grad_a, -grad_b
    if negate_addend:
        grad_c = -grad_c
    return grad_a, grad_b, grad_c


multiply_add_op = builtin_op(
    "multiply_add",
    _multiply_add_forward,
    _multiply_add_vjp,
    check=check_broadcast,
    elementwise=True,
)


def multiply_add(a, b, c, negate_product=False, negate_addend=False):
    """Return ``a * b + c`` as one node (``-(a * b)`` and ``- c`` with the flags)."""
    return multiply_add_op(
        a, b, c, negate_product=bool(negate_product), negate_addend=bool(negate_addend)
    )
