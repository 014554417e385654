"""The built-in operations, available as ``gpuflow.NAME`` with NumPy's names and signatures."""

from gpuflow.ops.elementwise import (
    abs,
    add,
    astype,
    clip,
    cos,
    divide,
    equal,
    exp,
    greater,
    greater_equal,
    isfinite,
    less,
    less_equal,
    log,
    log1p,
    logical_and,
    logical_not,
    logical_or,
    maximum,
    minimum,
    multiply,
    negative,
    not_equal,
    ones_like,
    power,
    relu,
    sigmoid,
    sign,
    sin,
    softplus,
    sqrt,
    square,
    subtract,
    tanh,
    where,
    xlogy,
    zeros_like,
)
from gpuflow.ops.fused import multiply_add
from gpuflow.ops.linalg import matmul
from gpuflow.ops.reduce import logsumexp, max, mean, min, norm, sum
from gpuflow.ops.registry import Operation, define_op
from gpuflow.ops.shape import (
    broadcast_to,
    concatenate,
    expand_dims,
    flip,
    getitem,
    matrix_transpose,
    reshape,
    squeeze,
    stack,
    transpose,
)

# The differentiable operations, by the names the command-line parser accepts.
DIFFERENTIABLE = (
    "abs add astype broadcast_to clip concatenate cos divide exp expand_dims flip log log1p "
    "logsumexp matmul matrix_transpose max maximum mean min minimum multiply multiply_add "
    "negative norm "
    "power relu reshape sigmoid sin softplus sqrt square squeeze stack subtract sum tanh "
    "transpose where xlogy"
).split()

__all__ = [
    *DIFFERENTIABLE,
    "Operation",
    "define_op",
    "equal",
    "getitem",
    "greater",
    "greater_equal",
    "isfinite",
    "less",
    "less_equal",
    "logical_and",
    "logical_not",
    "logical_or",
    "not_equal",
    "ones_like",
    "sign",
    "zeros_like",
]
