"""Matrix products with NumPy's ``matmul`` rules: batch dimensions broadcast, 1-d operands allowed."""

from __future__ import annotations

from gpuflow.ops.registry import broadcast_shapes, builtin_op
from gpuflow.ops.shape import matrix_transpose, reshape


def _check_matmul(name, arrays, params):
    a, b = (tuple(array.shape) for array in arrays)
    if not a or not b:
        raise ValueError(
            f"matmul: operands of shapes {a} and {b} include a 0-d array; "
            "use multiply for scalars"
        )
    inner_a = a[-1]
    inner_b = b[0] if len(b) == 1 else b[-2]
    if inner_a != inner_b:
        raise ValueError(
            f"matmul: shapes {a} and {b} are not aligned: the last axis of the first operand "
            f"({inner_a}) must equal the {'only' if len(b) == 1 else 'second-to-last'} axis of "
            f"the second ({inner_b})"
        )
    broadcast_shapes("matmul (batch dimensions)", [a[:-2], b[:-2]])


def _matmul_vjp(g, out, a, b):
    # Treat 1-d operands as a row (left) or a column (right) matrix, as matmul does,
    # and give the gradient the matching 2-d shape before removing that axis again.
    vector_a, vector_b = len(a.shape) == 1, len(b.shape) == 1
    a2 = reshape(a, (1, a.shape[0])) if vector_a else a
    b2 = reshape(b, (b.shape[0], 1)) if vector_b else b
    g_shape = tuple(g.shape)
    if vector_a and vector_b:
        g2 = reshape(g, (1, 1))
    elif vector_a:
        g2 = reshape(g, g_shape[:-1] + (1, g_shape[-1]))
    elif vector_b:
        g2 = reshape(g, g_shape + (1,))
    else:
        g2 = g
    grad_a = matmul(g2, matrix_transpose(b2))
    grad_b = matmul(matrix_transpose(a2), g2)
    if vector_a:
        grad_a = reshape(grad_a, tuple(grad_a.shape[:-2]) + (grad_a.shape[-1],))
    if vector_b:
        grad_b = reshape(grad_b, tuple(grad_b.shape[:-1]))
    return grad_a, grad_b


_matmul = builtin_op("matmul", lambda xp, a, b: xp.matmul(a, b), _matmul_vjp, check=_check_matmul)


def matmul(x1, x2):
    """Return the matrix product; leading (batch) dimensions broadcast and 1-d operands work."""
    return _matmul(x1, x2)
