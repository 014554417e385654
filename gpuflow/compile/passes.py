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
    return tuple(sorted((key, _parameter_key(value)) for key, value in params.items()))


def _parameter_key(value):
    """Return a key equal for equal parameters; an array is equal only to itself.

    NumPy prints large arrays with "...", so their repr cannot tell them apart.
    """
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_parameter_key(item) for item in value))
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return ("array", id(value))
    return repr(value)


def _constant_key(backend, array):
    if _size(array.shape) > _SMALL_CONSTANT:
        return None
    host = backend.to_numpy(array)
    return (host.dtype.str, host.shape, host.tobytes())


def eliminate_common_subexpressions(plan: Plan) -> Plan:
    """Merge small equal constants, then steps with the same op, inputs and parameters."""
    renames, constants, seen_constants = {}, {}, {}
    for slot, array in plan.constants.items():
        key = _constant_key(plan.backend, array)
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


def _host_copy(backend, array):
    """Return a NumPy copy of a constant, only its first element if it is a broadcast of one."""
    if _size(array.shape) > 1 and not any(getattr(array, "strides", (1,))):
        array = array[(0,) * len(array.shape)]
    return backend.to_numpy(array)


def _is_filled_with(backend, array, value: float) -> bool:
    """Return whether every element of ``array`` equals ``value``, with the sign of a zero."""
    host = _host_copy(backend, array)
    if not host.size or not bool(numpy.all(host == value)):
        return False
    if value == 0 and host.dtype.kind == "f":
        return bool(numpy.all(numpy.signbit(host) == numpy.signbit(value)))
    return True


def _uniform_value(backend, array):
    """Return a 0-d constant bitwise equal to every element of ``array``, or None."""
    host = _host_copy(backend, array)
    if host.size == 0 or host.dtype.itemsize not in (1, 2, 4, 8):
        return None
    first = host.reshape(-1)[:1].copy().reshape(())
    if host.size > 1:
        # Bits, not values, so that -0.0 and 0.0 differ and NaNs match.
        flat = numpy.ascontiguousarray(host).reshape(-1).view(f"u{host.dtype.itemsize}")
        if not bool(numpy.all(flat == flat[0])):
            return None
    return backend.asarray(first)


def _simplify(step: Step, constants: dict, info: dict, backend):
    """Return a slot equal to the step's value, a replacement step, or None."""
    name = step.name
    if name in ("zeros_like", "ones_like"):
        return None
    inputs = step.inputs
    if name in ("broadcast_to", "identity", "detach") or (name == "astype" and len(inputs) == 1):
        if info[inputs[0]] == (step.shape, step.dtype):
            return inputs[0]
        return None
    if name == "sum" and not step.params.get("axis", True) and info[inputs[0]] == (step.shape,
                                                                                step.dtype):
        return inputs[0]
    # x + (-0.0) and x - 0.0 are x for every x, but x + 0.0 turns -0.0 into 0.0.
    neutral = {"multiply": (1.0, (0, 1)), "divide": (1.0, (1,)), "add": (-0.0, (0, 1)),
               "subtract": (0.0, (1,))}.get(name)
    if neutral is None:
        return None
    value, positions = neutral
    for position in positions:
        constant = inputs[position]
        if constant not in constants or not _is_filled_with(backend, constants[constant],
                                                            value):
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

    ``x * 1``, ``x / 1``, ``x + (-0.0)`` and ``x - 0.0`` with a constant of
    ones or zeros become ``x`` (or a broadcast of ``x``), which removes the
    seed's work from the backward pass. ``x + 0.0`` stays, because it turns
    -0.0 into 0.0 (integer zeros fold either way). ``zeros_like`` and ``ones_like`` become
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
        simpler = _simplify(step, constants, info, backend)
        if isinstance(simpler, Step):
            steps.append(simpler)
        elif simpler is not None:
            renames[step.output] = simpler
        else:
            steps.append(step)
    folded = _rename(plan, renames, steps, constants)
    return eliminate_dead_code(folded.replace(slot_info=slot_info))


def shrink_uniform_constants(plan: Plan) -> Plan:
    """Replace each large constant whose elements are all equal with a broadcast of one.

    Folding leaves such constants behind (the seed of ones broadcast to a
    batch, for one). As a broadcast of a 0-d constant, a fused region reads
    one number in place of a whole array, and the plan keeps no copy of it.
    The broadcast step goes just before the first step that reads it.
    """
    backend = plan.backend
    constants, slot_info = dict(plan.constants), dict(plan.slot_info)
    broadcasts = {}
    next_slot = plan.next_slot
    for slot, array in plan.constants.items():
        if _size(array.shape) <= _SMALL_CONSTANT:
            continue
        value = _uniform_value(backend, array)
        if value is None:
            continue
        shape, dtype = plan.info(slot)
        del constants[slot], slot_info[slot]
        constants[next_slot] = value
        slot_info[next_slot] = ((), dtype)
        broadcasts[slot] = Step(_broadcast_to, (next_slot,), {"shape": tuple(shape)}, slot,
                                tuple(shape), dtype)
        next_slot += 1
    if not broadcasts:
        return plan
    steps = []
    for step in plan.steps:
        for input_slot in step.inputs:
            if input_slot in broadcasts:
                steps.append(broadcasts.pop(input_slot))
        steps.append(step)
    steps.extend(broadcasts.values())  # constants that are only returned
    return plan.replace(steps=steps, constants=constants, slot_info=slot_info,
                        next_slot=next_slot)


def _uses(plan: Plan) -> dict:
    counts = {}
    for step in plan.steps:
        for slot in step.inputs:
            counts[slot] = counts.get(slot, 0) + 1
    for slot in plan.outputs:
        counts[slot] = counts.get(slot, 0) + 1
    return counts


def fold_negations(plan: Plan) -> Plan:
    """Absorb negations, which traced backward rules leave everywhere, into other steps.

    ``a + (-b)`` and ``(-b) + a`` become ``a - b``, ``a - (-b)`` becomes
    ``a + b``, and ``-(-a)`` becomes ``a``. A product with a one-element
    floating-point constant ``k`` takes the sign: ``(-a) * k`` becomes
    ``a * (-k)``, and so do ``((-a) / b) * k`` and ``((-a) * b) * k`` when
    nothing else reads the quotient or product. Negation is exact, so every
    rewrite gives bitwise the same values.
    """
    backend = plan.backend
    constants = dict(plan.constants)
    uses = _uses(plan)
    producers, renames, steps = {}, {}, []
    next_slot = plan.next_slot

    def negated(slot):
        step = producers.get(slot)
        return step.inputs[0] if step is not None and step.name == "negative" else None

    def scale(slot):
        if slot not in constants or _size(constants[slot].shape) != 1:
            return None
        dtype = numpy.dtype(_dtype_text(constants[slot].dtype))
        return slot if dtype.kind == "f" else None

    def add_step(step):
        steps.append(step)
        producers[step.output] = step

    for step in plan.steps:
        step = step.with_inputs(_resolve(renames, slot) for slot in step.inputs)
        name, inputs = step.name, step.inputs
        if name == "negative" and negated(inputs[0]) is not None:
            renames[step.output] = negated(inputs[0])
            continue
        if name in ("add", "subtract") and len(inputs) == 2:
            first, second = inputs
            if negated(second) is not None:
                other = "subtract" if name == "add" else "add"
                step = Step(_binary(other), (first, negated(second)), {}, step.output,
                            step.shape, step.dtype)
            elif name == "add" and negated(first) is not None:
                step = Step(_binary("subtract"), (second, negated(first)), {}, step.output,
                            step.shape, step.dtype)
        elif name == "multiply" and len(inputs) == 2:
            for position in (0, 1):
                constant, operand = inputs[1 - position], inputs[position]
                if scale(constant) is None:
                    continue
                inner = producers.get(operand)
                if negated(operand) is not None:
                    operand = negated(operand)
                elif (inner is not None and inner.name in ("multiply", "divide")
                      and len(inner.inputs) == 2 and negated(inner.inputs[0]) is not None
                      and uses.get(operand) == 1):
                    product = Step(inner.op, (negated(inner.inputs[0]), inner.inputs[1]),
                                   inner.params, next_slot, inner.shape, inner.dtype)
                    next_slot += 1
                    add_step(product)
                    operand = product.output
                else:
                    continue
                constants[next_slot] = backend.negative(constants[constant])
                flipped = [None, None]
                flipped[position], flipped[1 - position] = operand, next_slot
                next_slot += 1
                step = step.with_inputs(flipped)
                break
        add_step(step)
    folded = _rename(plan, renames, steps, constants).replace(next_slot=next_slot)
    slot_info = dict(plan.slot_info)
    for slot, array in constants.items():
        slot_info.setdefault(slot, (tuple(array.shape), array.dtype))
    return eliminate_dead_code(folded.replace(slot_info=slot_info))


def _binary(name):
    from gpuflow.ops import elementwise

    return getattr(elementwise, f"_{name}")


def rewrite_sigmoid_partial(plan: Plan) -> Plan:
    """Replace ``sigmoid(x) * sigmoid(-x)``, the traced sigmoid gradient, with one step.

    The new ``sigmoid_partial`` step computes ``e / (1 + e)**2`` from ``x``,
    so the plan no longer computes ``-x`` and a second sigmoid.
    """
    producers = plan.producers()
    info = plan.all_info()

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
                    and info[inputs[first]] == (step.shape, step.dtype)
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
        # A region of one element may still grow, and a sum over its one element
        # would then be taken once per element of the larger shape.
        return (
            source not in region.reductions
            and shape == region.shape
            and _size(shape) > 1
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
          shrink_uniform_constants, fold_negations, eliminate_common_subexpressions,
          rewrite_sigmoid_partial, eliminate_dead_code, partition)


def optimize(plan: Plan) -> Plan:
    """Run the passes in their fixed order (see ``PASSES``) and return the partitioned plan."""
    for run_pass in PASSES:
        plan = run_pass(plan)
    return plan
