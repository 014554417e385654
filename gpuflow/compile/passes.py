"""Plan passes, each a function Plan -> Plan, and the fixed order ``optimize`` runs them in."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from gpuflow.compile.plan import Plan, Step
from gpuflow.ops.registry import builtin_op
from gpuflow.ops.shape import _broadcast_to

# Operations that a fused region can compute per element (see cuda_codegen.EXPRESSIONS).
FUSABLE = frozenset(
    "add subtract multiply divide negative power square sqrt exp log log1p tanh sigmoid "
    "maximum minimum abs sign where relu softplus sin cos astype broadcast_to identity "
    "less less_equal greater greater_equal equal not_equal logical_and logical_or "
    "logical_not sigmoid_partial".split()
)


def _sigmoid_partial_forward(xp, x):
    # sigmoid(x) * sigmoid(-x) = e / (1 + e)**2 with e = exp(-|x|), as in
    # gpuflow.backends.fused_reference.sigmoid_forward.
    e = xp.exp(-xp.abs(x))
    r = 1 / (1 + e)
    return e * r * r


# A plan-only operation: plans are not differentiated again, so it has no rule.
sigmoid_partial_op = builtin_op("sigmoid_partial", _sigmoid_partial_forward, elementwise=True)

# Constants with at most this many elements are compared by value when merging.
_SMALL_CONSTANT = 16


def _size(shape) -> int:
    count = 1
    for extent in shape:
        count *= extent
    return count


def _rename(plan: Plan, renames: dict, steps, constants) -> Plan:
    def resolve(slot):
        while slot in renames:
            slot = renames[slot]
        return slot

    steps = [step.with_inputs(resolve(slot) for slot in step.inputs) for step in steps]
    outputs = [resolve(slot) for slot in plan.outputs]
    return plan.replace(steps=steps, outputs=outputs, constants=constants)


def eliminate_dead_code(plan: Plan) -> Plan:
    """Keep only the steps and constants that the plan's outputs need."""
    needed = set(plan.outputs)
    live_steps = []
    for step in reversed(plan.steps):
        if step.output in needed:
            live_steps.append(step)
            needed.update(step.inputs)
    live_steps.reverse()
    constants = {slot: value for slot, value in plan.constants.items() if slot in needed}
    return plan.replace(steps=live_steps, constants=constants)


def _params_key(params: dict) -> tuple:
    return tuple(sorted((key, repr(value)) for key, value in params.items()))


def _constant_key(array):
    if _size(array.shape) > _SMALL_CONSTANT:
        return None
    host = numpy.asarray(array)
    return (host.dtype.str, host.shape, host.tobytes())


def eliminate_common_subexpressions(plan: Plan) -> Plan:
    """Merge small equal constants, then steps with the same op, inputs and parameters."""
    renames, constants, seen_constants = {}, {}, {}
    for slot, array in plan.constants.items():
        key = _constant_key(array)
        if key is not None and key in seen_constants:
            renames[slot] = seen_constants[key]
            continue
        if key is not None:
            seen_constants[key] = slot
        constants[slot] = array
    steps, seen_steps = [], {}
    for step in plan.steps:
        inputs = tuple(_resolve(renames, slot) for slot in step.inputs)
        key = (id(step.op), inputs, _params_key(step.params))
        if key in seen_steps:
            renames[step.output] = seen_steps[key]
            continue
        seen_steps[key] = step.output
        steps.append(step.with_inputs(inputs))
    return _rename(plan, renames, steps, constants)


def _resolve(renames, slot):
    while slot in renames:
        slot = renames[slot]
    return slot


def _is_filled_with(array, value) -> bool:
    host = numpy.asarray(array)
    return bool(host.size) and bool(numpy.all(host == value))


def _simplify(step: Step, constants: dict, info: dict):
    """Return a slot equal to the step's value, a replacement step, or None."""
    name = step.name
    if name in ("zeros_like", "ones_like"):
        return None
    inputs = step.inputs
    if name in ("broadcast_to", "identity") or (name == "astype" and len(inputs) == 1):
        if info[inputs[0]] == (step.shape, step.dtype):
            return inputs[0]
        return None
    if name == "sum" and not step.params.get("axis", True) and info[inputs[0]][0] == step.shape:
        return inputs[0]
    neutral = {"multiply": (1, (0, 1)), "divide": (1, (1,)), "add": (0, (0, 1)),
               "subtract": (0, (1,))}.get(name)
    if neutral is None:
        return None
    value, positions = neutral
    for position in positions:
        constant = inputs[position]
        if constant not in constants or not _is_filled_with(constants[constant], value):
            continue
        other = inputs[1 - position]
        shape, dtype = info[other]
        if dtype != step.dtype:
            continue
        if shape == step.shape:
            return other
        return Step(_broadcast_to, (other,), {"shape": step.shape}, step.output,
                    step.shape, step.dtype)
    return None


def fold_constants(plan: Plan) -> Plan:
    """Evaluate steps whose inputs are all constants, and drop multiplications by ones.

    ``x * 1``, ``x / 1``, ``x + 0`` and ``x - 0`` with a constant of ones or
    zeros become ``x`` (or a broadcast of ``x``), which removes the seed's
    work from the backward pass. ``zeros_like`` and ``ones_like`` become
    constants because their values depend only on the shape.
    """
    backend = plan.backend
    constants = dict(plan.constants)
    info = plan.all_info()
    slot_info = dict(plan.slot_info)
    renames, steps = {}, []
    for step in plan.steps:
        step = step.with_inputs(_resolve(renames, slot) for slot in step.inputs)
        if step.name in ("zeros_like", "ones_like"):
            fill = 0 if step.name == "zeros_like" else 1
            scalar = backend.asarray(fill, dtype=step.dtype)
            constants[step.output] = backend.broadcast_to(scalar, step.shape)
            slot_info[step.output] = (step.shape, step.dtype)
            continue
        if all(slot in constants for slot in step.inputs):
            arrays = [constants[slot] for slot in step.inputs]
            with backend.errstate():
                constants[step.output] = step.op.forward(backend, *arrays, **step.params)
            slot_info[step.output] = (step.shape, step.dtype)
            continue
        simpler = _simplify(step, constants, info)
        if isinstance(simpler, Step):
            steps.append(simpler)
        elif simpler is not None:
            renames[step.output] = simpler
        else:
            steps.append(step)
    folded = _rename(plan, renames, steps, constants)
    return eliminate_dead_code(folded.replace(slot_info=slot_info))


def rewrite_sigmoid_partial(plan: Plan) -> Plan:
    """Replace ``sigmoid(x) * sigmoid(-x)``, the traced sigmoid gradient, with one step.

    The new ``sigmoid_partial`` step computes ``e / (1 + e)**2`` from ``x``,
    so the plan no longer computes ``-x`` and a second sigmoid.
    """
    producers = plan.producers()

    def sigmoid_input(slot):
        step = producers.get(slot)
        return step.inputs[0] if step is not None and step.name == "sigmoid" else None

    steps = []
    for step in plan.steps:
        if step.name == "multiply" and len(step.inputs) == 2:
            inputs = [sigmoid_input(slot) for slot in step.inputs]
            for first, second in ((0, 1), (1, 0)):
                negated = producers.get(inputs[second]) if inputs[second] is not None else None
                if (
                    inputs[first] is not None
                    and negated is not None
                    and negated.name == "negative"
                    and negated.inputs[0] == inputs[first]
                    and plan.info(inputs[first]) == (step.shape, step.dtype)
                ):
                    step = Step(sigmoid_partial_op, (inputs[first],), {}, step.output,
                                step.shape, step.dtype)
                    break
        steps.append(step)
    return eliminate_dead_code(plan.replace(steps=steps))


@dataclass
class Region:
    """A group of steps run as one unit: a fused elementwise kernel or a single other step.

    ``reductions`` maps each full sum or mean computed inside the region to
    its input slot. ``inputs`` and ``outputs`` are the slots the region reads
    and writes in memory.
    """

    fused: bool
    shape: tuple
    steps: list = field(default_factory=list)
    reductions: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)

    def produced(self) -> set:
        return {step.output for step in self.steps}


def _fusable(step: Step, info: dict) -> bool:
    if step.name not in FUSABLE:
        return False
    if step.name == "broadcast_to" and _size(info[step.inputs[0]][0]) != 1:
        return False
    for slot in step.inputs:
        shape = info[slot][0]
        if shape != step.shape and _size(shape) != 1:
            return False
    return True


def _joins(region: Region, step: Step, info: dict) -> bool:
    """Return whether ``step`` can join ``region`` as an elementwise step or a reduction."""
    if region is None or not region.fused:
        return False
    if any(slot in region.reductions for slot in step.inputs):
        return False
    if step.name in ("sum", "mean"):
        source = step.inputs[0]
        shape, dtype = info[source]
        return (
            source not in region.reductions
            and shape == region.shape
            and _size(step.shape) == 1
            and dtype == step.dtype
            and numpy.dtype(_dtype_text(dtype)).kind == "f"
            and numpy.dtype(_dtype_text(dtype)).itemsize >= 4
        )
    if not _fusable(step, info):
        return False
    return step.shape == region.shape or _size(step.shape) == 1 or _size(region.shape) == 1


def _dtype_text(dtype) -> str:
    name = getattr(dtype, "name", None)
    return name if isinstance(name, str) else str(dtype).rsplit(".", 1)[-1]


def partition(plan: Plan) -> Plan:
    """Group the steps into maximal runs of elementwise steps, each with its trailing sums.

    A run breaks at a step that is not elementwise, at an elementwise step of
    another shape, and at a step that reads a sum computed in the run, because
    that sum is complete only when the run has finished.
    """
    info = plan.all_info()
    regions: list[Region] = []
    current = None
    for step in plan.steps:
        if _joins(current, step, info):
            current.steps.append(step)
            if step.name in ("sum", "mean"):
                current.reductions[step.output] = step.inputs[0]
            elif _size(step.shape) > _size(current.shape):
                current.shape = step.shape
            continue
        current = Region(fused=_fusable(step, info), shape=step.shape, steps=[step])
        regions.append(current)
    _connect(plan, regions)
    return plan.replace(regions=regions)


def _connect(plan: Plan, regions) -> None:
    consumers: dict = {}
    for index, region in enumerate(regions):
        for step in region.steps:
            for slot in step.inputs:
                consumers.setdefault(slot, set()).add(index)
    returned = set(plan.outputs)
    for index, region in enumerate(regions):
        produced = region.produced()
        inputs = []
        for step in region.steps:
            for slot in step.inputs:
                if slot not in produced and slot not in inputs:
                    inputs.append(slot)
        region.inputs = inputs
        region.outputs = [
            step.output for step in region.steps
            if step.output in returned or consumers.get(step.output, set()) - {index}
        ]


PASSES = (eliminate_dead_code, eliminate_common_subexpressions, fold_constants,
          eliminate_common_subexpressions, rewrite_sigmoid_partial, eliminate_dead_code,
          partition)


def optimize(plan: Plan) -> Plan:
    """Run the passes in their fixed order (see ``PASSES``) and return the partitioned plan."""
    for run_pass in PASSES:
        plan = run_pass(plan)
    return plan
