"""The Plan: a flat list of steps traced once from a function and its recorded backward pass.

Every value of a plan lives in a numbered slot. A slot is an input (an argument
of the function), a constant captured at trace time, or the output of exactly
one step. ``outputs`` lists the slots returned: the value first, then one
gradient per requested argument.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy

from gpuflow.engine import run_backward
from gpuflow.graph import _dtype_name, topological_order
from gpuflow.passes.fusion import fusion_disabled
from gpuflow.tensor import Tensor, enable_grad, state


@dataclass(frozen=True)
class Step:
    """One operation of a plan: ``slots[output] = op(*slots[inputs], **params)``."""

    op: object
    inputs: tuple
    params: dict
    output: int
    shape: tuple
    dtype: object

    @property
    def name(self) -> str:
        """Return the operation's name, prefixed with ``user:`` for an operation of define_op.

        Passes and executors recognize built-in operations by name, so a user's
        operation that shares a built-in's name must not be taken for it.
        """
        return self.op.name if self.op.builtin else f"user:{self.op.name}"

    def with_inputs(self, inputs) -> Step:
        return dataclasses.replace(self, inputs=tuple(inputs))


@dataclass(frozen=True)
class PlanInput:
    """An argument of the traced function: its slot, name, shape and dtype."""

    slot: int
    name: str
    shape: tuple
    dtype: object


@dataclass
class Plan:
    """Steps in an order where each one follows the steps that produce its inputs."""

    backend: object
    inputs: list
    constants: dict
    steps: list
    outputs: list
    output_names: list
    regions: list | None = None
    next_slot: int = 0
    # Shapes and dtypes of the input and constant slots.
    slot_info: dict = field(default_factory=dict)

    def info(self, slot) -> tuple:
        """Return the (shape, dtype) of ``slot``, which may be an input, a constant or a step."""
        found = self.slot_info.get(slot)
        if found is not None:
            return found
        for step in self.steps:
            if step.output == slot:
                return step.shape, step.dtype
        raise KeyError(f"slot {slot} is not in the plan")

    def all_info(self) -> dict:
        """Return the (shape, dtype) of every slot."""
        result = dict(self.slot_info)
        for step in self.steps:
            result[step.output] = (step.shape, step.dtype)
        return result

    def replace(self, **changes) -> Plan:
        return dataclasses.replace(self, **changes)

    def producers(self) -> dict:
        """Return the step that produces each step output slot."""
        return {step.output: step for step in self.steps}

    def label(self, slot) -> str:
        for plan_input in self.inputs:
            if plan_input.slot == slot:
                return plan_input.name
        if slot in self.constants:
            return _constant_label(slot, self.constants[slot])
        return f"%{slot}"

    def __str__(self) -> str:
        lines = [
            f"input {item.name} : {_dtype_name(item.dtype)}{list(item.shape)}"
            for item in self.inputs
        ]
        for step in self.steps:
            arguments = [self.label(slot) for slot in step.inputs]
            details = ", ".join(
                f"{key}={value!r}" for key, value in step.params.items() if value is not None
            )
            if details:
                arguments.append(details)
            lines.append(
                f"%{step.output} = {step.name}({', '.join(arguments)}) : "
                f"{_dtype_name(step.dtype)}{list(step.shape)}"
            )
        returned = [
            f"{name}={self.label(slot)}" for name, slot in zip(self.output_names, self.outputs)
        ]
        lines.append("return " + ", ".join(returned))
        return "\n".join(lines)


def _constant_label(slot, array) -> str:
    size = 1
    for extent in array.shape:
        size *= extent
    if size == 1:
        value = array.reshape(()) if hasattr(array, "reshape") else array
        try:
            return repr(value.item())
        except (AttributeError, TypeError, ValueError):
            pass
    return f"const{slot}"


def trace_plan(f, args, numbers, names, backend, kwargs=None):
    """Trace ``f`` on ``args`` and its backward pass for the arguments at ``numbers``.

    Array arguments become plan inputs (those at ``numbers`` require a
    gradient), and other arguments are passed to ``f`` unchanged. The backward
    pass runs with ``create_graph=True``, so its operations are recorded as
    ordinary nodes. Return the Plan and the printable Graph of every node.

    On NumPy the trace runs on placeholders of one value each (see
    gpuflow.compile.placeholder). An operation that fails on such values (the
    inverse of a matrix of equal entries, an integer raised to a negative
    power) makes the trace run again on placeholders that wrap the real
    arrays, which still raise when ``f`` reads them.
    """
    from gpuflow.compile.placeholder import PlaceholderReadError

    if backend.name != "numpy":
        return _trace(f, args, numbers, names, backend, kwargs, None)
    try:
        return _trace(f, args, numbers, names, backend, kwargs, "shapes")
    except (PlaceholderReadError, MemoryError):
        raise
    except Exception:  # noqa: BLE001 - any failure may come from the placeholder values
        return _trace(f, args, numbers, names, backend, kwargs, "values")


def _trace(f, args, numbers, names, backend, kwargs, placeholders):
    """Trace once; ``placeholders`` is None (real arrays), "shapes" or "values"."""
    from gpuflow.compile.placeholder import Placeholder, placeholder_like
    from gpuflow.graph import Graph

    call_args, leaves, labels = [], [], {}
    for position, value in enumerate(args):
        if not backend.is_array(value):
            call_args.append(value)
            continue
        if placeholders == "shapes":
            value = placeholder_like(value)
        elif placeholders == "values":
            value = Placeholder(numpy.asarray(value))
        tensor = Tensor._wrap(value, backend, requires_grad=position in numbers)
        labels[id(tensor)] = names[position]
        leaves.append((position, tensor))
        call_args.append(tensor)
    targets = [call_args[number] for number in numbers]

    previous = state.capture, state.tape, state.placeholders
    state.capture, state.tape, state.placeholders = True, None, placeholders or False
    try:
        with fusion_disabled(), enable_grad(), backend.errstate():
            out = f(*call_args, **(kwargs or {}))
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"the compiled function returned {type(out).__name__}; it must return "
                    "one Tensor built with gpuflow operations from its array arguments"
                )
            found = {}
            if out.requires_grad:
                found = run_backward([out], [None], targets, create_graph=True)
    finally:
        state.capture, state.tape, state.placeholders = previous

    grads = []
    for target in targets:
        g = found.get(id(target))
        if not isinstance(g, Tensor):
            data = g if g is not None else backend.zeros(target.shape, dtype=target.dtype)
            g = Tensor._wrap(data, backend)
        grads.append(g)
    roots = [out, *grads]
    output_names = ["value"] + [f"grad {names[number]}" for number in numbers]
    plan = _plan_from_tensors(roots, output_names, leaves, labels, backend)
    graph_labels = dict(labels)
    graph = Graph.from_tensors(roots, graph_labels)
    return plan, graph


def _plan_from_tensors(roots, output_names, leaves, labels, backend) -> Plan:
    slots = {}
    inputs, constants, steps, slot_info = [], {}, [], {}
    counter = 0
    for _, tensor in leaves:
        slots[id(tensor)] = counter
        inputs.append(PlanInput(counter, labels[id(tensor)], tensor.shape, tensor.dtype))
        slot_info[counter] = (tensor.shape, tensor.dtype)
        counter += 1
    for tensor in topological_order(roots, needs_grad_only=False):
        if id(tensor) in slots:
            continue
        slot = slots[id(tensor)] = counter
        counter += 1
        node = tensor.node
        if node is None:
            data = tensor.data
            if getattr(data, "is_placeholder", False):
                if not data.known:
                    from gpuflow.compile.placeholder import _reject

                    _reject("a Tensor made from a traced array's data")
                data = data.array  # the seed of ones
            constants[slot] = data
            slot_info[slot] = (tensor.shape, tensor.dtype)
            continue
        steps.append(
            Step(
                node.op,
                tuple(slots[id(parent)] for parent in node.inputs),
                dict(node.params),
                slot,
                tensor.shape,
                tensor.dtype,
            )
        )
    outputs = [slots[id(root)] for root in roots]
    return Plan(backend, inputs, constants, steps, outputs, output_names,
                next_slot=counter, slot_info=slot_info)
