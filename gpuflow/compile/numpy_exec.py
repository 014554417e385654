"""Run a Plan step by step on NumPy, writing into preallocated buffers that are reused.

Steps of the mapped ufuncs write with ``out=`` into buffers of a pool. A
liveness analysis at build time gives each intermediate a buffer that no live
value uses. A buffer is therefore reused as soon as its value is dead, and a
step may write over an input that dies at that step. Returned values get fresh arrays on
every call. Other operations run their own forward function, and because their
result may be a view of an input (a reshape or a broadcast), the inputs of such a
step stay alive as long as its result does.
"""

from __future__ import annotations

import numpy

from gpuflow.compile.plan import Plan

_UFUNCS = {
    "add": numpy.add,
    "subtract": numpy.subtract,
    "multiply": numpy.multiply,
    "divide": numpy.divide,
    "negative": numpy.negative,
    "square": numpy.square,
    "sqrt": numpy.sqrt,
    "exp": numpy.exp,
    "log": numpy.log,
    "log1p": numpy.log1p,
    "tanh": numpy.tanh,
    "maximum": numpy.maximum,
    "minimum": numpy.minimum,
    "abs": numpy.abs,
    "sign": numpy.sign,
    "sin": numpy.sin,
    "cos": numpy.cos,
    "less": numpy.less,
    "less_equal": numpy.less_equal,
    "greater": numpy.greater,
    "greater_equal": numpy.greater_equal,
    "equal": numpy.equal,
    "not_equal": numpy.not_equal,
    "logical_and": numpy.logical_and,
    "logical_or": numpy.logical_or,
    "logical_not": numpy.logical_not,
}

# Kernels that read an input after writing part of the output, so the output
# must not share memory with an input.
_NO_ALIAS = frozenset({"where"})


def _ufunc_kernel(ufunc):
    def run(out, scratch, *arrays):
        ufunc(*arrays, out=out)

    return run


def _power_kernel(step):
    if "exponent" in step.params:
        exponent = step.params["exponent"]

        def run(out, scratch, x):
            numpy.power(x, exponent, out=out)

        return run
    return _ufunc_kernel(numpy.power)


def _where_kernel(out, scratch, condition, x1, x2):
    numpy.copyto(out, x2)
    numpy.copyto(out, x1, where=condition)


def _relu_kernel(out, scratch, x):
    numpy.maximum(x, numpy.zeros((), dtype=out.dtype), out=out)


def _astype_kernel(out, scratch, x):
    numpy.copyto(out, x, casting="unsafe")


def _exp_and_reciprocal(out, reciprocal, x):
    # out = e = exp(-|x|) and reciprocal = 1 / (1 + e), the shared start of both kernels.
    numpy.abs(x, out=out)
    numpy.negative(out, out=out)
    numpy.exp(out, out=out)
    numpy.add(out, 1, out=reciprocal)
    numpy.divide(1, reciprocal, out=reciprocal)


def _sigmoid_kernel(out, scratch, x):
    # The stable formula of gpuflow.ops.elementwise: e = exp(-|x|), r = 1 / (1 + e),
    # and sigmoid(x) is r where x >= 0 and e * r elsewhere. The mask is taken
    # first, so ``out`` may be the memory of ``x``.
    reciprocal, mask = scratch
    numpy.greater_equal(x, 0, out=mask)
    _exp_and_reciprocal(out, reciprocal, x)
    numpy.multiply(out, reciprocal, out=out)
    numpy.copyto(out, reciprocal, where=mask)


def _sigmoid_partial_kernel(out, scratch, x):
    # e / (1 + e)**2 with e = exp(-|x|), as passes.sigmoid_partial_op computes it.
    (reciprocal,) = scratch
    _exp_and_reciprocal(out, reciprocal, x)
    numpy.multiply(out, reciprocal, out=out)
    numpy.multiply(out, reciprocal, out=out)


def _kernel_for(step):
    """Return ``(kernel, scratch)`` for a step that writes with ``out=``, or None."""
    name = step.name
    if name in _UFUNCS:
        return _ufunc_kernel(_UFUNCS[name]), ()
    if name == "power":
        return _power_kernel(step), ()
    if name == "where":
        return _where_kernel, ()
    if name == "relu":
        return _relu_kernel, ()
    if name == "astype" and len(step.inputs) == 1:
        return _astype_kernel, ()
    if name == "sigmoid":
        return _sigmoid_kernel, ((step.shape, step.dtype), (step.shape, numpy.dtype(bool)))
    if name == "sigmoid_partial":
        return _sigmoid_partial_kernel, ((step.shape, step.dtype),)
    return None


class _Pool:
    """Buffer numbers by (shape, dtype), with the free ones available for reuse."""

    def __init__(self):
        self.specs = []
        self.free = {}

    def take(self, shape, dtype) -> int:
        key = (tuple(shape), numpy.dtype(dtype))
        available = self.free.get(key)
        if available:
            return available.pop()
        self.specs.append(key)
        return len(self.specs) - 1

    def give(self, number) -> None:
        self.free.setdefault(self.specs[number], []).append(number)


# Operations whose forward function always returns a new array, never a view of an input.
_FRESH_RESULTS = frozenset({"mean", "max", "min", "logsumexp", "norm", "matmul",
                            "concatenate", "stack", "multiply_add"})


def _may_alias(step) -> bool:
    """Return whether a fallback step's result may share memory with one of its inputs."""
    if step.name in ("sum", "mean", "logsumexp"):
        # These return their input itself when they reduce no axis.
        return step.params.get("axis") == ()
    if step.name in _FRESH_RESULTS:
        return False
    return not (step.op.elementwise and step.name not in ("identity", "astype"))


def _last_uses(plan: Plan, kernels) -> dict:
    """Return, for each slot, the index of the last step that reads it (or may alias it)."""
    forever = len(plan.steps)
    last = {slot: forever for slot in plan.outputs}
    for index, step in enumerate(plan.steps):
        for slot in step.inputs:
            last[slot] = max(last.get(slot, index), index)
    for index in range(len(plan.steps) - 1, -1, -1):
        step = plan.steps[index]
        if kernels[index] is None and _may_alias(step):
            alive = last.get(step.output, index)
            for slot in step.inputs:
                last[slot] = max(last[slot], alive)
    return last


class NumpyProgram:
    """A Plan prepared for NumPy: a kernel or a fallback per step, and buffer numbers."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.kernels = [_kernel_for(step) for step in plan.steps]
        last = _last_uses(plan, self.kernels)
        returned = set(plan.outputs)
        pool = _Pool()
        owner = {}  # slot -> pool buffer number, for intermediates written by a kernel
        # Per step: the output's buffer number (None for a fresh array or a fallback)
        # and the scratch buffer numbers.
        self.assignments = []
        for index, step in enumerate(plan.steps):
            kernel = self.kernels[index]
            buffer, scratch = None, ()
            dying = [slot for slot in set(step.inputs) if last.get(slot) == index]

            if kernel is not None and step.name not in _NO_ALIAS:
                for slot in dying:
                    if slot in owner:
                        pool.give(owner.pop(slot))
                dying = []
            if kernel is not None:
                scratch = tuple(pool.take(*spec) for spec in kernel[1])
                if step.output not in returned:
                    buffer = pool.take(step.shape, step.dtype)
                    owner[step.output] = buffer
                for number in scratch:
                    pool.give(number)

            for slot in dying:
                if slot in owner:
                    pool.give(owner.pop(slot))
            if step.output in owner and last.get(step.output, index) <= index:
                pool.give(owner.pop(step.output))
            self.assignments.append((buffer, scratch))

        self.pool_specs = pool.specs
        self.buffers = None
        # Slots written into a fresh array on each call.
        self.fresh = {
            step.output for step, kernel in zip(plan.steps, self.kernels)
            if kernel is not None and step.output in returned
        }

    def pool_bytes(self) -> int:
        """Return the bytes of the reused intermediate buffers."""
        total = 0
        for shape, dtype in self.pool_specs:
            count = 1
            for extent in shape:
                count *= extent
            total += count * dtype.itemsize
        return total

    def __call__(self, arrays):
        plan = self.plan
        if self.buffers is None:
            self.buffers = [numpy.empty(shape, dtype) for shape, dtype in self.pool_specs]
        buffers = self.buffers
        values = dict(plan.constants)
        for plan_input, array in zip(plan.inputs, arrays):
            values[plan_input.slot] = array
        backend = plan.backend
        with numpy.errstate(all="ignore"):
            for step, kernel, (buffer, scratch) in zip(plan.steps, self.kernels,
                                                       self.assignments):
                inputs = [values[slot] for slot in step.inputs]
                if kernel is None:
                    values[step.output] = step.op.forward(backend, *inputs, **step.params)
                    continue
                if buffer is None:
                    out = numpy.empty(step.shape, step.dtype)
                else:
                    out = buffers[buffer]
                kernel[0](out, tuple(buffers[number] for number in scratch), *inputs)
                values[step.output] = out
        return _returned_arrays(plan, values, self.fresh)


def _returned_arrays(plan, values, fresh) -> list:
    """Return the output arrays, copying any that is not a fresh array of its own."""
    results, handed = [], set()
    for slot in plan.outputs:
        array = values[slot]
        if slot not in fresh or slot in handed:
            array = numpy.array(array, copy=True)
        handed.add(slot)
        results.append(array)
    return results


def run_generic(plan: Plan, arrays) -> list:
    """Run a Plan step by step with each operation's own forward function (any backend)."""
    backend = plan.backend
    values = dict(plan.constants)
    for plan_input, array in zip(plan.inputs, arrays):
        values[plan_input.slot] = array
    with backend.errstate():
        for step in plan.steps:
            inputs = [values[slot] for slot in step.inputs]
            values[step.output] = step.op.forward(backend, *inputs, **step.params)
    shared = {item.slot for item in plan.inputs} | set(plan.constants)
    results, handed = [], set()
    for slot in plan.outputs:
        array = values[slot]
        if slot in handed or slot in shared:
            array = backend.copy(array)
        handed.add(slot)
        results.append(array)
    return results
