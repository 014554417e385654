"""The dataflow graph: nodes that record one operation each, and their topological order.

A node stores the operation, its input tensors, its parameters and whatever the
forward pass cached for the backward pass. The tensor a node produced points to
the node, so the graph is reached by walking from an output back through
``tensor.node.inputs``. Nothing here depends on any particular operation.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


_sequence = itertools.count()


class Node:
    """One recorded operation: ``output = op(*inputs, **params)``.

    ``seq`` increases with every node created. An operation's inputs exist
    before it runs, so sorting nodes by ``seq`` gives a topological order.
    """

    __slots__ = ("op", "inputs", "params", "cache", "freed", "seq", "location", "__weakref__")

    def __init__(self, op, inputs, params, cache=None):
        self.op = op
        self.inputs = inputs
        self.params = params
        self.cache = cache
        self.freed = False
        self.seq = next(_sequence)
        # Where the node was built, recorded in anomaly mode only.
        self.location = None

    def free(self) -> None:
        """Drop the cached values and the input references once the backward pass used them."""
        self.inputs = ()
        self.cache = None
        self.freed = True


def _sequence_of(tensor) -> int:
    return tensor.node.seq


def reachable(outputs, needs_grad_only: bool = True) -> tuple[list, list]:
    """Return the leaves and the computed tensors reachable from ``outputs``.

    The computed tensors come sorted by their nodes' ``seq``, so each one
    follows all of its inputs. The walk uses an explicit stack, so a chain of
    any length fits in memory without touching Python's recursion limit. With
    ``needs_grad_only`` it does not enter tensors that do not require a gradient.
    """
    leaves, computed = [], []
    seen = set()
    stack = []
    for root in outputs:
        if id(root) not in seen:
            seen.add(id(root))
            stack.append(root)
    mark, push = seen.add, stack.append
    while stack:
        tensor = stack.pop()
        node = tensor.node
        if node is None:
            leaves.append(tensor)
            continue
        computed.append(tensor)
        for parent in node.inputs:
            key = id(parent)
            if key in seen or (needs_grad_only and not parent.requires_grad):
                continue
            mark(key)
            push(parent)
    computed.sort(key=_sequence_of)
    return leaves, computed


def topological_order(outputs, needs_grad_only: bool = True) -> list:
    """Return every tensor reachable from ``outputs``, leaves first, each after its inputs."""
    leaves, computed = reachable(outputs, needs_grad_only)
    return leaves + computed


def _describe_params(params: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in params.items() if value is not None)


@dataclass
class GraphNode:
    """A printable record of one node: the operation, its inputs and outputs with shapes and dtypes."""

    index: int
    op: str
    inputs: list[str]
    output: str
    shape: tuple
    dtype: str
    params: dict = field(default_factory=dict)

    def __str__(self) -> str:
        arguments = ", ".join(self.inputs)
        details = _describe_params(self.params)
        if details:
            arguments = f"{arguments}, {details}" if arguments else details
        return f"{self.output} = {self.op}({arguments}) : {self.dtype}{list(self.shape)}"


@dataclass
class Graph:
    """A dataflow graph in topological order, as recorded from one evaluation.

    ``inputs`` lists the named inputs with their shapes and dtypes, ``nodes``
    one operation each with every input listed before its consumers, and
    ``outputs`` the names of the values the function returned. ``tensors``
    maps each of those names to its recorded Tensor, so that ``to_dot`` can
    show values and local partial derivatives. The Graph therefore keeps
    those arrays alive.
    """

    inputs: list[GraphNode]
    nodes: list[GraphNode]
    outputs: list[str]
    tensors: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_tensors(cls, outputs, names: dict[int, str] | None = None) -> Graph:
        """Build a Graph from output tensors, naming tensors found in ``names`` (by ``id``)."""
        for output in outputs:
            if getattr(output, "node", False) is False:
                raise TypeError(
                    f"Graph.from_tensors takes Tensors, got {type(output).__name__}; pass the "
                    "Tensors a computation returned"
                )
        names = dict(names or {})
        order = topological_order(outputs, needs_grad_only=False)
        inputs, nodes = [], []
        counts = {"leaf": 0, "const": 0}
        for tensor in order:
            if tensor.node is None:
                if id(tensor) not in names:
                    # Unnamed leaves that require a gradient are inputs; the rest are constants.
                    kind = "leaf" if tensor.requires_grad else "const"
                    names[id(tensor)] = tensor.name or f"{kind}{counts[kind]}"
                    counts[kind] += 1
                inputs.append(
                    GraphNode(len(inputs), "input", [], names[id(tensor)], tensor.shape,
                              _dtype_name(tensor.dtype))
                )
                continue
            label = names.setdefault(id(tensor), f"%{len(nodes)}")
            node = tensor.node
            nodes.append(
                GraphNode(
                    len(nodes),
                    node.op.name,
                    [names[id(parent)] for parent in node.inputs],
                    label,
                    tensor.shape,
                    _dtype_name(tensor.dtype),
                    dict(node.params),
                )
            )
        # Named inputs first, in the order given, then the constants.
        rank = {label: position for position, label in enumerate(names.values())}
        inputs.sort(key=lambda node: rank.get(node.output, len(rank)))
        for position, node in enumerate(inputs):
            node.index = position
        tensors = {names[id(tensor)]: tensor for tensor in order}
        return cls(inputs, nodes, [names[id(tensor)] for tensor in outputs], tensors)

    def __str__(self) -> str:
        lines = [f"input {node.output} : {node.dtype}{list(node.shape)}" for node in self.inputs]
        lines.extend(str(node) for node in self.nodes)
        lines.append("return " + ", ".join(self.outputs))
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.nodes)

    def to_dot(self, path_to: str | None = None, values: bool = True) -> str:
        """Return this graph as Graphviz DOT text, as described in ``gpuflow.viz.to_dot``."""
        from gpuflow import viz

        return viz.to_dot(self, path_to=path_to, values=values)


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    return str(dtype).rsplit(".", 1)[-1]
