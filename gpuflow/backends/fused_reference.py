"""Reference implementations of the fused steps, written with Array API functions only.

Every backend runs these unless it has a faster kernel for the operands at hand
(the CuPy backend launches the CUDA kernels in kernels/ for contiguous float32
and float64 arrays of one shape). Each function is the specification its
kernel must match.
"""

from __future__ import annotations


def sigmoid_forward(xp, x):
    """Return ``(y, p)``: sigmoid(x) and its local partial sigmoid(x) * sigmoid(-x).

    With e = exp(-|x|), which never overflows, y = 1 / (1 + e) for x >= 0 and
    e / (1 + e) otherwise, and p = e / (1 + e)**2. Written as y * (1 - y) the
    partial would cancel to 0 for large positive x.
    """
    e = xp.exp(-xp.abs(x))
    r = 1 / (1 + e)
    return xp.where(x >= 0, r, e * r), e * r * r


def sigmoid_backward(xp, gy, p):
    """Return ``gx = gy * p`` from the partial saved by sigmoid_forward."""
    return gy * p


def multiply_add_forward(xp, a, b, c):
    """Return ``a * b + c``."""
    return a * b + c


def multiply_add_backward(xp, g, a, b):
    """Return the gradients of ``a * b + c``: ``(g * b, g * a, g)``."""
    return g * b, g * a, g


REFERENCES = {
    "sigmoid_forward": sigmoid_forward,
    "sigmoid_backward": sigmoid_backward,
    "multiply_add_forward": multiply_add_forward,
    "multiply_add_backward": multiply_add_backward,
}
