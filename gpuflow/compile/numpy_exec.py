"""Run a Plan on NumPy: fused regions block by block, other steps on whole arrays.

A fused region whose values all have the region's shape or one element runs
on ``BLOCK`` elements at a time (see ``_BlockedRegion``). Its intermediates
then live in a few block-sized buffers that stay in the cache, and peak
memory is the inputs, the outputs and those buffers. Other steps run on
whole arrays: the mapped ufuncs write with ``out=`` into buffers of a pool, and
other operations run their own forward function.

A liveness analysis at build time gives each value a buffer that no live
value uses. A buffer is therefore reused as soon as its value is dead, and a
step may write over an input that dies at that step. Because a fallback step's result
may be a view of an input (a reshape or a broadcast), the inputs of such a
step stay alive as long as its result does. Returned values get fresh arrays
on every call.
"""

from __future__ import annotations

import threading

import numpy

from gpuflow.compile.passes import Region, _size
from gpuflow.compile.plan import Plan

# Elements a fused region computes at a time: about 128 KiB of float32 per buffer,
# so a region's block buffers stay in a core's L2 cache.
BLOCK = 32768

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
            if exponent == 2 and x.dtype == out.dtype:
                numpy.square(x, out=out)
            else:
                # The result's dtype, as in eager: uint8 ** 2.0 is computed in float64.
                numpy.power(x, exponent, out=out, dtype=out.dtype)

        return run
    return _ufunc_kernel(numpy.power)


def _where_kernel(out, scratch, condition, x1, x2):
    if condition.dtype != bool:
        condition = condition.astype(bool)  # nonzero is true, as in numpy.where
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
    """Return ``(kernel, scratch dtypes)`` for a step that writes with ``out=``, or None."""
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
        return _sigmoid_kernel, (step.dtype, numpy.dtype(bool))
    if name == "sigmoid_partial":
        return _sigmoid_partial_kernel, (step.dtype,)
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

    def nbytes(self) -> int:
        return sum(_size(shape) * dtype.itemsize for shape, dtype in self.specs)


# Operations whose forward function always returns a new array, never a view of an input.
_FRESH_RESULTS = frozenset({"sum", "mean", "max", "min", "logsumexp", "norm", "matmul",
                            "concatenate", "stack", "multiply_add", "index_add"})


def _may_alias(step) -> bool:
    """Return whether a fallback step's result may share memory with one of its inputs."""
    if step.name in ("sum", "mean", "logsumexp"):
        # These return their input itself when they reduce no axis.
        return step.params.get("axis") == ()
    if step.name in _FRESH_RESULTS:
        return False
    # Built-in elementwise operations make new arrays; a user's may return its input.
    builtin = step.op.builtin
    return not (builtin and step.op.elementwise and step.name not in ("identity", "astype"))


def _last_uses(units, outputs, forever) -> dict:
    """Return, for each slot, the index of the last unit that reads it (or may alias it).

    A unit is a ``(reads, writes, aliasing)`` triple, where ``aliasing`` is
    whether its results may be views of what it reads.
    """
    last = {slot: forever for slot in outputs}
    for index, (reads, _, _) in enumerate(units):
        for slot in reads:
            last[slot] = max(last.get(slot, index), index)
    for index in range(len(units) - 1, -1, -1):
        reads, writes, aliasing = units[index]
        if aliasing:
            alive = max(last.get(slot, index) for slot in writes)
            for slot in reads:
                last[slot] = max(last[slot], alive)
    return last


def _give_back(pool, owner, slots) -> None:
    """Return the pooled buffers of ``slots`` (those that have one) to the pool."""
    for slot in slots:
        if slot in owner:
            pool.give(owner.pop(slot))


def _place_step(pool, owner, step, kernel, dying, shape, pooled) -> tuple:
    """Give back the buffers of the values that die at ``step`` and take its own.

    A kernel may write over an input that dies at its step, except the kernels
    of ``_NO_ALIAS``, so those inputs' buffers go back before the output's is
    taken. Scratch buffers are taken and given back at once. Return the
    scratch buffer numbers and the output's number, which is None unless
    ``pooled``.
    """
    overwrite = kernel is not None and step.name not in _NO_ALIAS
    if overwrite:
        _give_back(pool, owner, dying)
    scratch, number = (), None
    if kernel is not None:
        scratch = tuple(pool.take(shape, dtype) for dtype in kernel[1])
        if pooled:
            number = owner[step.output] = pool.take(shape, step.dtype)
        for scratch_number in scratch:
            pool.give(scratch_number)
    if not overwrite:
        _give_back(pool, owner, dying)
    return scratch, number


class _StepUnit:
    """One step run on whole arrays: a kernel writing into a buffer, or its forward."""

    def __init__(self, step):
        self.step = step
        self.kernel = _kernel_for(step)
        self.buffer = None  # pool number of the output, None for a fresh array
        self.scratch = ()

    def liveness(self):
        aliasing = self.kernel is None and _may_alias(self.step)
        return tuple(self.step.inputs), (self.step.output,), aliasing

    def run(self, values, buffers, blocks, backend):
        step = self.step
        inputs = [values[slot] for slot in step.inputs]
        if self.kernel is None:
            result = step.op.forward(backend, *inputs, **step.params)
            if tuple(result.shape) != tuple(step.shape):
                raise ValueError(
                    f"compile: operation {step.name} returned shape {tuple(result.shape)}, "
                    f"but the trace gave {tuple(step.shape)}; its result's shape depends on "
                    "the values, so use gpuflow.value_and_grad for this function"
                )
            values[step.output] = result
            return
        if self.buffer is None:
            out = numpy.empty(step.shape, step.dtype)
        else:
            out = buffers[self.buffer]
        self.kernel[0](out, tuple(buffers[number] for number in self.scratch), *inputs)
        values[step.output] = out


class _BlockedRegion:
    """A fused region run block by block, so its intermediates stay in the cache.

    Every value of the region has the region's shape or one element. The
    region's elements are taken in C order, ``block`` at a time, and each step
    runs on the current block of its inputs. Intermediates live in block-sized
    buffers, and region outputs are written block by block into whole arrays.
    Each full sum or mean adds up one partial result per block in float64.
    Steps of one element are computed once, before the first block, and a
    broadcast of a one-element value is that value itself inside a block.
    """

    def __init__(self, region, info, block):
        self.shape = tuple(region.shape)
        self.count = _size(self.shape)
        self.block = min(block, self.count)
        self.inputs = list(region.inputs)
        self.outputs = list(region.outputs)
        self.small = []  # steps of one element, run once
        self.broadcasts = {}  # slot -> the one-element slot it broadcasts
        self.reductions = []  # (step, source slot)
        # (step, kernel, scratch block numbers, output block number, reductions of its value)
        self.body = []
        self.whole = {}  # region output slot -> pool number, None for a fresh array
        produced = set()
        for step in region.steps:
            if step.output in region.reductions:
                self.reductions.append((step, step.inputs[0]))
            elif _size(step.shape) == 1:
                self.small.append(step)
            elif step.name == "broadcast_to" and _size(info[step.inputs[0]][0]) == 1:
                self.broadcasts[step.output] = step.inputs[0]
            else:
                self.body.append(step)
                produced.add(step.output)
        self.materialized = [slot for slot in self.outputs if slot in produced]
        self.dtypes = {step.output: step.dtype for step in self.body}
        self._assign_block_buffers(info)

    @staticmethod
    def fits(region, info) -> bool:
        """Return whether every value of ``region`` has its shape or one element."""
        if not region.fused or _size(region.shape) <= 1:
            return False
        shapes = [info[slot][0] for step in region.steps for slot in step.inputs]
        shapes += [step.shape for step in region.steps]
        return all(tuple(shape) == tuple(region.shape) or _size(shape) == 1 for shape in shapes)

    def _assign_block_buffers(self, info):
        pool = _Pool()
        body = self.body
        kernels = [_kernel_for(step) for step in body]
        units = [(tuple(step.inputs), (step.output,), kernel is None and _may_alias(step))
                 for step, kernel in zip(body, kernels)]
        last = _last_uses(units, set(self.materialized), len(body))
        owner = {}
        planned = []
        for index, (step, kernel) in enumerate(zip(body, kernels)):
            dying = [slot for slot in set(step.inputs) if last.get(slot) == index]
            pooled = kernel is not None and step.output not in self.materialized
            scratch, number = _place_step(pool, owner, step, kernel, dying, (self.block,),
                                          pooled)
            # Sums of this step's value are taken right after it, while it is in a buffer.
            summed = tuple(position for position, (_, source) in enumerate(self.reductions)
                           if source == step.output)
            planned.append((step, kernel, scratch, number, summed))
        self.body = planned
        produced = {step.output for step in body}
        self.summed_first = tuple(position for position, (_, source)
                                  in enumerate(self.reductions) if source not in produced)
        self.block_specs = pool.specs

    def liveness(self):
        return tuple(self.inputs), tuple(self.outputs), False

    def run(self, values, buffers, blocks, backend):
        for step in self.small:
            values[step.output] = step.op.forward(
                backend, *[values[slot] for slot in step.inputs], **step.params
            )
        flat, scalars = {}, {}
        for slot in self.inputs:
            array = values[slot]
            if _size(array.shape) == 1:
                scalars[slot] = numpy.reshape(array, ())
            else:
                flat[slot] = numpy.reshape(array, -1)
        for step in self.small:
            scalars[step.output] = numpy.reshape(values[step.output], ())
        for slot, source in self.broadcasts.items():
            scalars[slot] = scalars[source]
        for slot in self.materialized:
            number = self.whole.get(slot)
            if number is None:
                array = numpy.empty(self.shape, self.dtypes[slot])
            else:
                array = buffers[number]
            values[slot] = array
            flat[slot] = array.reshape(-1)
        totals = self._run_blocks(flat, scalars, blocks, backend)
        for (step, _), total in zip(self.reductions, totals):
            if step.name == "mean":
                total /= self.count
            values[step.output] = numpy.asarray(total, dtype=step.dtype).reshape(step.shape)
        for slot, source in self.broadcasts.items():
            # A copy, because the source may be a pooled buffer that a later step reuses.
            values[slot] = numpy.broadcast_to(numpy.array(values[source]), self.shape)

    def _run_blocks(self, flat, scalars, blocks, backend) -> list:
        """Run the body on every block; return each reduction's float64 total."""
        sources = [source for _, source in self.reductions]
        totals = [0.0] * len(sources)
        summed_first = self.summed_first
        flat_items = list(flat.items())
        add = numpy.add.reduce
        for start in range(0, self.count, self.block):
            stop = min(start + self.block, self.count)
            length = stop - start
            current = scalars.copy()
            for slot, array in flat_items:
                current[slot] = array[start:stop]
            for index in summed_first:
                totals[index] += _block_sum(current[sources[index]], length)
            for step, kernel, scratch, number, summed in self.body:
                inputs = [current[slot] for slot in step.inputs]
                if number is not None:
                    out = blocks[number][:length]
                else:
                    out = current.get(step.output)
                if kernel is None:
                    result = step.op.forward(backend, *inputs, **step.params)
                    if out is not None:
                        numpy.copyto(out, result, casting="unsafe")
                    elif result.shape != (length,):
                        # Inputs of one value each give one value, broadcast to the block.
                        current[step.output] = numpy.broadcast_to(result, (length,))
                    else:
                        current[step.output] = result
                elif scratch:
                    kernel[0](out, tuple(blocks[number][:length] for number in scratch), *inputs)
                    current[step.output] = out
                else:
                    kernel[0](out, (), *inputs)
                    current[step.output] = out
                for index in summed:
                    totals[index] += float(add(current[step.output], axis=None))
        return totals


class NumpyProgram:
    """A Plan prepared for NumPy: its fused regions run block by block, other steps whole.

    ``block`` is the number of elements a fused region computes at a time.
    Whole-array values (inputs and outputs of regions, and the values of
    steps outside them) get buffers from a pool by a liveness analysis over
    the units, so a buffer is reused once its value is dead.
    """

    def __init__(self, plan: Plan, block: int | None = None):
        block = BLOCK if block is None else block
        if block < 1:
            raise ValueError(f"compile: block must be a positive number of elements, not {block}")
        self.plan = plan
        info = plan.all_info()
        returned = set(plan.outputs)
        regions = plan.regions
        if regions is None:
            regions = [Region(fused=False, shape=step.shape, steps=[step]) for step in plan.steps]
        self.units = []
        for region in regions:
            if _BlockedRegion.fits(region, info):
                self.units.append(_BlockedRegion(region, info, block))
            else:
                self.units.extend(_StepUnit(step) for step in region.steps)
        self._assign_buffers(returned)
        self._local = threading.local()

    def _assign_buffers(self, returned) -> None:
        units = [unit.liveness() for unit in self.units]
        last = _last_uses(units, self.plan.outputs, len(units))
        pool = _Pool()
        owner = {}  # slot -> pool number of a value written into the pool
        self.fresh = set()  # slots written into a fresh array on each call
        for index, unit in enumerate(self.units):
            reads, writes, _ = units[index]
            dying = [slot for slot in set(reads) if last.get(slot) == index]
            if isinstance(unit, _StepUnit):
                kernel, step = unit.kernel, unit.step
                pooled = kernel is not None and step.output not in returned
                unit.scratch, unit.buffer = _place_step(pool, owner, step, kernel, dying,
                                                        step.shape, pooled)
                dying = []
                if kernel is not None and not pooled:
                    self.fresh.add(step.output)
                elif (step.output in returned and step.name in _FRESH_RESULTS
                      and not _may_alias(step)):
                    self.fresh.add(step.output)  # its forward made a new array this call
            else:
                # Blocks interleave reads and writes, so outputs never take a dying input's buffer.
                for slot in unit.materialized:
                    if slot in returned:
                        self.fresh.add(slot)
                        unit.whole[slot] = None
                    else:
                        unit.whole[slot] = owner[slot] = pool.take(unit.shape, unit.dtypes[slot])
                self.fresh.update(step.output for step, _ in unit.reductions)
            _give_back(pool, owner, dying)
            _give_back(pool, owner, [slot for slot in writes if last.get(slot, index) <= index])
        self.pool = pool
        # Regions run one after another, so they share one set of block buffers,
        # as many of each (shape, dtype) as the region needing the most.
        self.block_specs = _shared_specs(
            unit.block_specs for unit in self.units if isinstance(unit, _BlockedRegion)
        )

    def pool_bytes(self) -> int:
        """Return the bytes of the whole-array and block buffers that one thread keeps."""
        blocks = sum(count * _size(shape) * dtype.itemsize
                     for (shape, dtype), count in self.block_specs.items())
        return self.pool.nbytes() + blocks

    def __call__(self, arrays):
        plan = self.plan
        # Each thread has its own buffers, so that calls from several threads cannot
        # write into each other's intermediates.
        local = self._local
        if not hasattr(local, "buffers"):
            local.buffers = [numpy.empty(shape, dtype) for shape, dtype in self.pool.specs]
            local.blocks = self._block_buffers()
        values = dict(plan.constants)
        for plan_input, array in zip(plan.inputs, arrays):
            values[plan_input.slot] = array
        backend = plan.backend
        with numpy.errstate(all="ignore"):
            for unit, blocks in zip(self.units, local.blocks):
                unit.run(values, local.buffers, blocks, backend)
        return _returned_arrays(plan, values, self.fresh)

    def _block_buffers(self) -> list:
        """Return, for each unit, the block buffers its block numbers refer to."""
        arrays = {}
        for (shape, dtype), count in self.block_specs.items():
            arrays[shape, dtype] = [numpy.empty(shape, dtype) for _ in range(count)]
        bound = []
        for unit in self.units:
            used, blocks = {}, []
            for spec in getattr(unit, "block_specs", ()):
                position = used.get(spec, 0)
                used[spec] = position + 1
                blocks.append(arrays[spec][position])
            bound.append(blocks)
        return bound


def _block_sum(value, length: int) -> float:
    """Return the sum of one block of a value, which may be a single value broadcast."""
    if value.shape != (length,):
        value = numpy.broadcast_to(value, (length,))
    return float(numpy.add.reduce(value, axis=None))


def _shared_specs(spec_lists) -> dict:
    """Return, for each (shape, dtype), the most buffers any one region needs."""
    counts = {}
    for specs in spec_lists:
        mine = {}
        for spec in specs:
            mine[spec] = mine.get(spec, 0) + 1
        for spec, count in mine.items():
            counts[spec] = max(counts.get(spec, 0), count)
    return counts


def _returned_arrays(plan, values, fresh) -> list:
    """Return the output arrays, copying any that is not a fresh array of its own."""
    results, handed = [], set()
    for slot in plan.outputs:
        array = values[slot]
        if slot not in fresh or slot in handed or not isinstance(array, numpy.ndarray):
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
