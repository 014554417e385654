"""Pattern fusion: put fused nodes in place of ``a * b + c`` and of a written-out sigmoid.

The passes run on the recorded tensors just before a backward pass, and only
change how the gradient is computed: the forward values are already there.

- A sum or difference with a product operand that nothing else consumes
  becomes a ``multiply_add`` node whose backward step is fused, in any operand
  order: ``a * b + c``, ``c + a * b``, ``a * b - c`` and ``c - a * b``.
- ``1 / (1 + exp(-x))``, in either order of the sum, becomes a ``sigmoid``
  node, whose gradient is computed in one stable step instead of through four
  nodes (which give NaN where exp(-x) overflows).

The replaced nodes stay in place, unused by this pass's graph, so other graphs
that share them still work. ``gpuflow.sigmoid`` itself is a primitive whose
forward pass already computes the value and the local partial together.
"""

from __future__ import annotations

import contextlib
import threading

from gpuflow.graph import Node
from gpuflow.ops.elementwise import (
    _add,
    _divide,
    _exp,
    _multiply,
    _negative,
    _sigmoid,
    _subtract,
)
from gpuflow.ops.fused import multiply_add_op

_settings = threading.local()


def fusion_enabled() -> bool:
    """Return whether backward passes in this thread run the fusion pass (the default)."""
    return getattr(_settings, "enabled", True)


@contextlib.contextmanager
def fusion_disabled():
    """Run backward passes inside the block without the fusion pass, for comparisons."""
    previous = fusion_enabled()
    _settings.enabled = False
    try:
        yield
    finally:
        _settings.enabled = previous


def fuse_multiply_add(tensors, roots) -> int:
    """Rewrite the nodes of ``tensors`` in place and return how many were fused.

    ``tensors`` lists recorded tensors in creation order (a tape, or the result
    of graph.reachable); ``roots`` are the outputs. A product is fused only when
    exactly one recorded node consumes it (``Tensor.consumers``) and it is not a
    root. A fused node keeps the creation number of the node it replaces, so
    the order of the graph does not change.
    """
    root_ids = None
    fused = 0
    for tensor in tensors:
        node = tensor.node
        if node is None or node.freed or (node.op is not _add and node.op is not _subtract):
            continue
        if root_ids is None:
            root_ids = {id(root) for root in roots}
        for position, operand in enumerate(node.inputs):
            product = operand.node
            if product is None or product.op is not _multiply or product.freed:
                continue
            if operand.consumers != 1 or id(operand) in root_ids:
                continue
            a, b = product.inputs
            c = node.inputs[1 - position]
            subtract = node.op is _subtract
            replacement = Node(
                multiply_add_op,
                (a, b, c),
                {
                    "negate_product": subtract and position == 1,
                    "negate_addend": subtract and position == 0,
                },
            )
            replacement.seq = node.seq
            tensor.node = replacement
            fused += 1
            break
    return fused


def _single_use(tensor, op, root_ids):
    """Return the node of ``tensor`` if ``op`` made it and one recorded node consumes it."""
    node = tensor.node
    if node is None or node.op is not op or node.freed:
        return None
    if tensor.consumers != 1 or id(tensor) in root_ids:
        return None
    return node


def _is_one(tensor) -> bool:
    # Constants from Python numbers are 0-d and carry no gradient.
    if tensor.node is not None or tensor.requires_grad or tuple(tensor.data.shape) != ():
        return False
    return float(tensor.backend.to_numpy(tensor.data)) == 1.0


def fuse_sigmoid(tensors, roots) -> int:
    """Rewrite ``1 / (1 + exp(-x))`` among ``tensors`` into sigmoid nodes; return the count."""
    root_ids = None
    fused = 0
    for tensor in tensors:
        node = tensor.node
        if node is None or node.op is not _divide or node.freed:
            continue
        if root_ids is None:
            root_ids = {id(root) for root in roots}
        numerator, denominator = node.inputs
        if not _is_one(numerator):
            continue
        total = _single_use(denominator, _add, root_ids)
        if total is None:
            continue
        for position in (0, 1):
            if not _is_one(total.inputs[1 - position]):
                continue
            exponential = _single_use(total.inputs[position], _exp, root_ids)
            negated = exponential and _single_use(exponential.inputs[0], _negative, root_ids)
            if negated:
                replacement = Node(_sigmoid, (negated.inputs[0],), {})
                replacement.seq = node.seq
                tensor.node = replacement
                fused += 1
                break
    return fused


def fuse(tensors, roots) -> int:
    """Run both fusion passes over ``tensors``, sigmoid first; return how many nodes changed.

    One scan finds whether any candidate node exists, so graphs without one pay
    for a single loop.
    """
    found_divide = found_sum = False
    for tensor in tensors:
        node = tensor.node
        if node is None:
            continue
        op = node.op
        if op is _divide:
            found_divide = True
        elif op is _add or op is _subtract:
            found_sum = True
    fused = fuse_sigmoid(tensors, roots) if found_divide else 0
    if found_sum:
        fused += fuse_multiply_add(tensors, roots)
    return fused
