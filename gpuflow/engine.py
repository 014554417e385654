"""The backward pass: reverse topological order, a seed, and the adding of gradients that meet.

The pass starts from a seed at the output (ones by default, which gives the
gradient of the sum) and visits every recorded node after all of its consumers.
For each input it calls the node's rule, sums the gradient back to the input's
shape where the forward pass broadcast it, casts it to the input's dtype, and
adds it to what earlier paths gave that input. The walk is iterative, so the
depth of a graph is limited only by memory.
"""

from __future__ import annotations

from gpuflow.graph import reachable
from gpuflow.passes.fusion import fuse, fusion_enabled
from gpuflow.tensor import Ones, Tensor, _plain, state


# Names of the 16-bit float dtypes; a NumPy dtype compares equal to its name.
_HALF_DTYPES = ("float16", "bfloat16")


class GraphFreedError(RuntimeError):
    """Raised by a second backward pass through a graph whose cached values were freed."""


def _ops():
    import gpuflow.ops as ops

    return ops


def fit_to_input(g, shape, dtype):
    """Sum a gradient over the axes its input was broadcast along, then cast it to ``dtype``."""
    ops = _ops()
    if isinstance(g, Ones) and g.dtype != dtype:
        g = Ones(g.shape, dtype, g.backend)
    g_shape = tuple(g.shape)
    if g_shape != shape:
        extra = len(g_shape) - len(shape)
        if extra > 0:
            g = ops.sum(g, axis=tuple(range(extra)))
            g_shape = g_shape[extra:]
        stretched = tuple(
            i for i, extent in enumerate(shape) if extent == 1 and g_shape[i] != 1
        )
        if stretched:
            g = ops.sum(g, axis=stretched, keepdims=True)
        if tuple(g.shape) != shape:
            g = ops.broadcast_to(g, shape)
    if g.dtype != dtype:
        g = ops.astype(g, dtype)
    return g


def run_backward(
    roots, seeds, targets=None, retain_graph=False, create_graph=False, tape=None
):
    """Propagate ``seeds`` from ``roots`` back through the graph and return gradients by ``id``.

    A seed of None stands for ones of the root's shape. With ``targets`` (a list
    of Tensors) only the paths that reach a target are followed and the walk
    stops at the targets. Without it every leaf that requires a gradient is a
    target. In a first-order pass (``create_graph`` false) the gradients are
    plain arrays; otherwise they are Tensors recorded in a new graph.

    ``tape``, when given, lists every tensor recorded since the targets were
    made, in creation order; walking it backwards replaces the graph search.
    Tensors on it that do not lead to a root receive no gradient and are skipped.
    """
    useful = None
    if tape is not None:
        computed = tape
        target_ids = {id(t) for t in targets}
    else:
        leaves, computed = reachable(roots)
        leaf_ids = {id(leaf) for leaf in leaves}
        if targets is None:
            target_ids = leaf_ids
        else:
            target_ids = {id(t) for t in targets}
            # Paths need pruning only when the graph reaches a leaf that is not a target.
            if not leaf_ids <= target_ids:
                useful = _leads_to(leaves + computed, target_ids)

    if fusion_enabled():
        fuse(computed, roots)

    backend = roots[0].backend
    grads = {}
    for root, seed in zip(roots, seeds):
        if not root.requires_grad:
            continue
        data = root.data
        if seed is None and create_graph and state.capture:
            # A broadcast of one 1: a compiled plan reads one number, not a batch of ones.
            seed_element = backend.ones((), dtype=data.dtype)
            ones = backend.broadcast_to(seed_element, data.shape)
            if state.placeholders:
                from gpuflow.compile.placeholder import Placeholder

                ones = Placeholder(ones, known=True)  # traced like the arguments
            seed = Tensor._wrap(ones, backend)
        elif seed is None and create_graph:
            seed = Tensor._wrap(backend.ones(data.shape, dtype=data.dtype), backend)
        elif seed is None:
            seed = Ones(data.shape, data.dtype, backend)
        grads[id(root)] = seed if create_graph else _raw(seed)

    # A root that is itself a target takes its seed as its gradient.
    found = {key: grads.pop(key) for key in target_ids.intersection(grads)}
    # A recorded backward pass refers to the forward nodes, so it keeps them.
    free = not (retain_graph or create_graph)
    saved_state = (state.recording, state.raw_backend)
    if create_graph:
        state.recording, state.raw_backend = True, None
    else:
        state.raw_backend = backend
    try:
        with backend.errstate():
            _walk(computed, grads, found, target_ids, useful, create_graph, free)
            for key in target_ids.intersection(grads):
                found[key] = grads.pop(key)
            _finish(found, targets if targets is not None else leaves, backend)
    finally:
        state.recording, state.raw_backend = saved_state
    return found


def _finish(found, targets, backend):
    """Turn symbolic ones into arrays and give each gradient its target's dtype."""
    for target in targets:
        key = id(target)
        g = found.get(key)
        if g is None:
            continue
        dtype = target.data.dtype
        if type(g) is Ones:
            found[key] = backend.ones(g.shape, dtype=dtype)
        elif g.dtype != dtype:
            found[key] = _ops().astype(g, dtype)


def _walk(computed, grads, found, target_ids, useful, create_graph, free):
    """Visit the computed tensors from last to first, propagating each one's gradient.

    With ``free``, each visited node drops its inputs and cache and leaves the
    list, so intermediate arrays are released as soon as the pass is past them.
    """
    anomaly = state.anomaly
    pop = grads.pop
    for position in range(len(computed) - 1, -1, -1):
        tensor = computed[position]
        if free:
            computed[position] = None
        g = pop(id(tensor), None)
        if g is None:
            continue
        if id(tensor) in target_ids:
            found[id(tensor)] = g
            continue
        node = tensor.node
        if node.freed:
            raise GraphFreedError(
                f"backward through the {node.op.name!r} node a second time: its cached "
                "values were freed after the first backward pass; pass retain_graph=True "
                "to the first call to run backward more than once"
            )
        _propagate(tensor, node, g, grads, useful, create_graph, anomaly)
        if free:
            node.free()


def _raw(value):
    return value.data if isinstance(value, Tensor) else value


def _leads_to(order, target_ids):
    """Return the ids of tensors with a path to a target (inputs come first in ``order``)."""
    useful = set()
    for tensor in order:
        if id(tensor) in target_ids:
            useful.add(id(tensor))
        elif tensor.node is not None and any(id(p) in useful for p in tensor.node.inputs):
            useful.add(id(tensor))
    return useful


def _propagate(tensor, node, g, grads, useful, create_graph, anomaly):
    op = node.op
    inputs = node.inputs
    params = node.params
    if type(g) is Ones and not op.symbolic_ones:
        g = g.materialize()
    if create_graph:
        input_grads = op.vjp(g, tensor, *inputs, **params)
    elif node.cache is not None:
        input_grads = op.vjp_cached(g, node.cache, **params)
    else:
        input_grads = op.vjp(g, tensor.data, *[parent.data for parent in inputs], **params)
    if type(input_grads) is not tuple:
        input_grads = tuple(input_grads) if isinstance(input_grads, list) else (input_grads,)
    if len(input_grads) != len(inputs):
        raise ValueError(
            f"the gradient rule of {op.name!r} returned {len(input_grads)} gradients for "
            f"{len(inputs)} inputs; return one per input, None where there is none"
        )

    for position, parent in enumerate(inputs):
        parent_grad = input_grads[position]
        if parent_grad is None or not parent.requires_grad:
            continue
        if anomaly:
            _check_gradient(tensor, node, g, position, parent_grad, parent)
        key = id(parent)
        if useful is not None and key not in useful:
            continue
        data = parent.data
        if parent_grad.shape != data.shape or parent_grad.dtype != data.dtype:
            if parent_grad.shape != data.shape:
                _check_gradient_shape(op, position, parent_grad, tuple(tensor.data.shape),
                                      tuple(data.shape))
            parent_grad = fit_to_input(parent_grad, tuple(data.shape), data.dtype)
        previous = grads.get(key)
        if previous is None:
            grads[key] = parent_grad
        elif data.dtype in _HALF_DTYPES:
            # 16-bit gradients that meet are added in float32 (see accumulation_dtype);
            # the consumer's rule and fit_to_input bring them back to the input's dtype.
            wide = _ops().astype(_plain(previous), "float32")
            grads[key] = wide + _ops().astype(_plain(parent_grad), "float32")
        else:
            grads[key] = _plain(previous) + _plain(parent_grad)


def _check_gradient_shape(op, position, parent_grad, out_shape, input_shape):
    """Raise unless a rule's gradient has the output's or the input's shape, up to broadcasting.

    Built-in rules may also return batch-shaped gradients (matmul does), so for
    them only broadcasting against the input is required.
    """
    from gpuflow.ops.registry import broadcast_shapes

    shape = tuple(parent_grad.shape)
    try:
        combined = broadcast_shapes(op.name, [shape, input_shape])
        if not op.symbolic_ones and combined not in (out_shape, input_shape):
            raise ValueError(combined)
    except ValueError:
        raise ValueError(
            f"the gradient rule of {op.name!r} returned a gradient of shape {shape} for input "
            f"{position}, whose shape is {input_shape} (the output's is {out_shape}); return "
            "gradients of the output's or the input's shape"
        ) from None


def _check_gradient(tensor, node, g, position, parent_grad, parent):
    from gpuflow import anomaly

    # A NaN or infinity among the node's inputs is the input's fault, not the rule's.
    if not all(anomaly.is_finite(tensor.backend, p.data) for p in node.inputs):
        return
    raw = [_raw(_plain(value)) for value in (g, parent_grad)]
    anomaly.check_backward(
        node.op, tensor.backend, raw[0], position, raw[1], parent.shape,
        node.location or "an unknown place (the node was recorded outside anomaly mode)",
    )


def _seed_for(output, gradient):
    backend = output.backend
    if gradient is None:
        return None
    if not isinstance(gradient, Tensor):
        gradient = Tensor(gradient, backend=backend)
    if gradient.shape != output.shape:
        raise ValueError(
            f"backward: the seed gradient has shape {gradient.shape} but the output has shape "
            f"{output.shape}; pass a gradient of the output's shape"
        )
    return gradient


def backward_into_leaves(output, gradient=None, retain_graph=False, create_graph=False):
    """Run the backward pass from ``output`` and add the gradients to each leaf's ``.grad``."""
    if not output.requires_grad:
        raise RuntimeError(
            "backward: the output does not depend on any Tensor with requires_grad=True, so "
            "there is nothing to differentiate; create the inputs with requires_grad=True"
        )
    seed = _seed_for(output, gradient)
    leaves = {id(leaf): leaf for leaf in reachable([output])[0]}
    found = run_backward([output], [seed], None, retain_graph, create_graph)
    for key, g in found.items():
        leaf = leaves[key]
        if not isinstance(g, Tensor):
            g = Tensor._wrap(leaf.backend.asarray(g), leaf.backend)
        leaf.grad = g if leaf.grad is None else leaf.grad + g
        if not create_graph and leaf.grad.requires_grad:
            leaf.grad = leaf.grad.detach()

