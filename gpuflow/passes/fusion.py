"""Pattern fusion: replace ``a * b + c`` and its variants with one multiply_add node.

The pass runs on the recorded tensors just before a backward pass. A sum or
difference with a product operand that nothing else consumes becomes a
``multiply_add`` node whose backward step is fused, in any operand order:
``a * b + c``, ``c + a * b``, ``a * b - c`` and ``c - a * b``. The product's own
node stays in place, unused by this pass's graph, so other graphs that share it
still work. ``sigmoid`` needs no rewriting: it is a primitive whose forward
pass already computes the value and the local partial together.
"""

from __future__ import annotations

import contextlib
import threading

from gpuflow.graph import Node
from gpuflow.ops.elementwise import _add, _multiply, _subtract
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
