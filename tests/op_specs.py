"""A table of operations with NumPy references and analytic gradients, driving test_ops.py.

Each spec builds inputs in a domain where the operation is smooth (away from
kinks, ties and singular points), so reverse mode, the analytic formula and
central finite differences must all agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import gpuflow as gf


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _positive(rng, shape):
    return rng.uniform(0.5, 2.0, size=shape)


def _any(rng, shape):
    return rng.uniform(-2.0, 2.0, size=shape)


def _away_from_zero(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.2, 2.0, size=shape)


@dataclass
class UnarySpec:
    name: str
    function: Callable
    reference: Callable
    derivative: Callable
    domain: Callable = _any


UNARY = [
    UnarySpec("negative", gf.negative, np.negative, lambda x: -np.ones_like(x)),
    UnarySpec("square", gf.square, np.square, lambda x: 2 * x),
    UnarySpec("sqrt", gf.sqrt, np.sqrt, lambda x: 0.5 / np.sqrt(x), _positive),
    UnarySpec("exp", gf.exp, np.exp, np.exp),
    UnarySpec("sin", gf.sin, np.sin, np.cos),
    UnarySpec("cos", gf.cos, np.cos, lambda x: -np.sin(x)),
    UnarySpec("log", gf.log, np.log, lambda x: 1 / x, _positive),
    UnarySpec("log1p", gf.log1p, np.log1p, lambda x: 1 / (1 + x), _positive),
    UnarySpec("sigmoid", gf.sigmoid, _sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    UnarySpec("tanh", gf.tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    UnarySpec(
        "relu", gf.relu, lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0, _away_from_zero
    ),
    UnarySpec("softplus", gf.softplus, lambda x: np.log1p(np.exp(x)), _sigmoid),
    UnarySpec("abs", gf.abs, np.abs, np.sign, _away_from_zero),
    UnarySpec("power_3", lambda x: x**3, lambda x: x**3, lambda x: 3 * x**2),
    UnarySpec("power_half", lambda x: x**0.5, np.sqrt, lambda x: 0.5 * x**-0.5, _positive),
    UnarySpec(
        "power_minus_one", lambda x: x**-1, lambda x: 1 / x, lambda x: -(x**-2), _away_from_zero
    ),
    UnarySpec("number_power", lambda x: 2.0**x, lambda x: 2.0**x, lambda x: 2.0**x * np.log(2)),
]


@dataclass
class BinarySpec:
    name: str
    function: Callable
    reference: Callable
    derivatives: Callable  # (a, b) -> (d/da, d/db) elementwise, before broadcasting is summed
    domains: tuple = field(default=(_any, _any))


BINARY = [
    BinarySpec("add", gf.add, np.add, lambda a, b: (np.ones_like(a * b), np.ones_like(a * b))),
    BinarySpec(
        "subtract", gf.subtract, np.subtract,
        lambda a, b: (np.ones_like(a * b), -np.ones_like(a * b)),
    ),
    BinarySpec("multiply", gf.multiply, np.multiply, lambda a, b: (b + 0 * a, a + 0 * b)),
    BinarySpec(
        "divide", gf.divide, np.divide, lambda a, b: (1 / b + 0 * a, -a / b**2),
        (_any, _away_from_zero),
    ),
    BinarySpec(
        "power", gf.power, np.power,
        lambda a, b: (b * a ** (b - 1), a**b * np.log(a)), (_positive, _any),
    ),
    BinarySpec(
        "maximum", gf.maximum, np.maximum,
        lambda a, b: ((a > b) * 1.0, (b > a) * 1.0),
    ),
    BinarySpec(
        "minimum", gf.minimum, np.minimum,
        lambda a, b: ((a < b) * 1.0, (b < a) * 1.0),
    ),
    BinarySpec(
        "xlogy", gf.xlogy, lambda a, b: a * np.log(b),
        lambda a, b: (np.log(b) + 0 * a, a / b), (_any, _positive),
    ),
]

# Pairs of shapes that broadcast in every direction, including 0-d.
BROADCAST_SHAPES = [
    ((3,), (3,)),
    ((3, 1), (1, 4)),
    ((4,), (3, 4)),
    ((2, 3, 4), (3, 1)),
    ((), (3,)),
    ((2, 1), ()),
]


def sum_to_shape(array, shape):
    """Sum a broadcast gradient back to ``shape`` (the test's own reference implementation)."""
    array = np.asarray(array)
    while array.ndim > len(shape):
        array = array.sum(axis=0)
    for axis, extent in enumerate(shape):
        if extent == 1 and array.shape[axis] != 1:
            array = array.sum(axis=axis, keepdims=True)
    return np.broadcast_to(array, shape)
