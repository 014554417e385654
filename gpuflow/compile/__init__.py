"""``gpuflow.compile``: trace a function and its gradient once per signature, then run a plan.

See docs/compile.md. The traced forward and backward nodes become a Plan
(gpuflow.compile.plan), which the passes (gpuflow.compile.passes) simplify and
partition into fused regions. NumPy runs the plan with reused ``out=`` buffers
(gpuflow.compile.numpy_exec), CuPy with one generated kernel per region
(gpuflow.compile.cuda_codegen), and other backends step by step.
"""

from __future__ import annotations

import functools
import textwrap
import threading

from gpuflow import backends
from gpuflow.api import _argument_names, _check_differentiable, _choose_backend, _normalize_argnums
from gpuflow.api import _to_backend
from gpuflow.compile.cuda_codegen import generated_cuda_source
from gpuflow.compile.numpy_exec import NumpyProgram, run_generic
from gpuflow.compile.passes import optimize
from gpuflow.compile.plan import Plan
from gpuflow.api import value_and_grad
from gpuflow.tensor import _NUMBER_TYPES, Tensor, state

__all__ = ["CompiledFunction", "compile", "explain", "generated_cuda_source", "Plan"]


def _itemsize(dtype) -> int:
    import numpy

    return numpy.dtype(getattr(dtype, "name", str(dtype).rsplit(".", 1)[-1])).itemsize


def explain(plan: Plan) -> str:
    """Return the regions of a partitioned plan: steps, inputs, outputs and bytes moved."""
    lines = [f"{len(plan.regions)} region(s), {len(plan.steps)} step(s)"]
    for index, region in enumerate(plan.regions):
        kind = "fused" if region.fused else "single"
        reads = sum(_itemsize(plan.info(s)[1]) * _count(plan.info(s)[0]) for s in region.inputs
                    if s not in plan.constants or _count(plan.info(s)[0]) > 1)
        writes = sum(_itemsize(plan.info(s)[1]) * _count(plan.info(s)[0])
                     for s in region.outputs)
        names = ", ".join(step.name for step in region.steps)
        lines.append(
            f"region {index} ({kind}, shape {list(region.shape)}): {len(region.steps)} step(s)"
        )
        lines.append(textwrap.fill(names, width=99, initial_indent="  steps:   ",
                                   subsequent_indent="           "))
        lines.append("  inputs:  " + ", ".join(plan.label(s) for s in region.inputs))
        lines.append("  outputs: " + ", ".join(_output_label(plan, region, s)
                                               for s in region.outputs))
        lines.append(f"  bytes: {reads} read + {writes} written = {reads + writes}")
    returned = ", ".join(f"{name}={plan.label(slot)}"
                         for name, slot in zip(plan.output_names, plan.outputs))
    lines.append("return " + returned)
    return "\n".join(lines)


def _count(shape) -> int:
    count = 1
    for extent in shape:
        count *= extent
    return count


def _output_label(plan, region, slot) -> str:
    label = plan.label(slot)
    if slot in region.reductions:
        step = next(step for step in region.steps if step.output == slot)
        return f"{label} ({step.name} of {plan.label(region.reductions[slot])})"
    return label


class CompiledFunction:
    """A function compiled with ``gpuflow.compile``; calls return ``(value, gradients)``.

    ``graph`` and ``plan`` are those of the most recent signature, and
    ``traces`` counts how many times the function was traced.
    """

    def __init__(self, f, argnums, backend):
        self.function = f
        self.argnums = argnums
        self.backend_spec = backend
        self.single = hasattr(argnums, "__index__") and not isinstance(argnums, bool)
        self.cache = {}
        self._trace_lock = threading.Lock()
        self.traces = 0
        self.graph = None
        self.plan = None
        functools.update_wrapper(self, f)

    def _signature(self, args, numbers, backend) -> tuple:
        parts = [backend.name, numbers]
        for value in args:
            if backend.is_array(value):
                parts.append(("array", tuple(value.shape), str(value.dtype)))
            elif _is_static(value):
                # Numbers, strings and tuples of them are static: a new value traces again.
                parts.append(("static", type(value).__name__, repr(value)))
            else:
                raise TypeError(
                    f"compile: an argument of type {type(value).__name__} cannot be part of "
                    "a compiled signature; pass arrays as array arguments of their own, and "
                    "other values as numbers, strings or tuples of them"
                )
        return tuple(parts)

    def _arguments(self, args, numbers, backend) -> list:
        converted = []
        for position, value in enumerate(args):
            if isinstance(value, Tensor):
                value = value.data
            if getattr(value, "mask", None) is not None and hasattr(value, "filled"):
                raise TypeError(
                    f"compile: argument {position} is a masked array, whose mask a plan "
                    "would ignore; pass value.filled(fill_value), or use "
                    "gpuflow.value_and_grad"
                )
            if (position not in numbers and isinstance(value, _NUMBER_TYPES)
                    and type(value) not in (int, float, complex, bool)):
                # NumPy's float64 is a float: a number, as value_and_grad treats it.
                value = value.item()
            if position in numbers or not isinstance(value, _NUMBER_TYPES):
                if position in numbers or backends.backend_of(value) is not None:
                    value = _to_backend(value, backend)
            if position in numbers:
                _check_differentiable(self.function, position, len(args), backend, value.dtype,
                                      args[position])
            converted.append(value)
        return converted

    def entry(self, *args, **kwargs):
        """Return the cached (plan, program) for these arguments, tracing on a new signature."""
        numbers = _normalize_argnums(self.argnums, len(args))
        backend = _choose_backend(self.backend_spec, [args[i] for i in numbers])
        arrays = self._arguments(args, numbers, backend)
        key = self._signature(arrays, numbers, backend) + _keyword_signature(kwargs)
        found = self.cache.get(key)
        if found is None:
            with self._trace_lock:  # threads with a new signature trace it once
                found = self.cache.get(key)
                if found is None:
                    found = self.cache[key] = self._trace(arrays, numbers, backend, kwargs)
                    self.traces += 1
        self.plan, self.graph = found[0], found[1]
        return found, arrays

    def _trace(self, arrays, numbers, backend, kwargs) -> tuple:
        from gpuflow.compile.plan import trace_plan

        names = _argument_names(self.function, len(arrays))
        plan, graph = trace_plan(self.function, arrays, numbers, names, backend, kwargs)
        # The traced Tensors would keep their arrays alive as long as the cache.
        graph.tensors = {}
        plan = optimize(plan)
        return plan, graph, _program_for(plan)

    def __call__(self, *args, **kwargs):
        if _runs_eagerly(args, kwargs):
            return value_and_grad(self.function, self.argnums, backend=self.backend_spec)(
                *args, **kwargs
            )
        (plan, _, program), arrays = self.entry(*args, **kwargs)
        inputs = [arrays[position] for position in _input_positions(arrays, plan)]
        value, *grads = program(inputs)
        return value, (grads[0] if self.single else tuple(grads))


def _runs_eagerly(args, kwargs) -> bool:
    """Return whether a call must evaluate eagerly instead of through a plan.

    Inside an enclosing grad or compile, the enclosing transformation must
    see every operation, and in anomaly mode every operation is checked as it
    runs, neither of which a plan does.
    """
    if state.anomaly or state.capture or state.tape is not None:
        return True
    values = list(args) + list(kwargs.values())
    return any(isinstance(value, Tensor) and value.requires_grad for value in values)


def _keyword_signature(kwargs) -> tuple:
    """Return the signature part of keyword arguments, which must be static values."""
    parts = []
    for name in sorted(kwargs):
        value = kwargs[name]
        if not _is_static(value):
            raise TypeError(
                f"compile: keyword argument {name} of type {type(value).__name__} cannot be "
                "part of a compiled signature; keyword arguments must be numbers, strings or "
                "tuples of them, so pass arrays positionally"
            )
        parts.append(("keyword", name, type(value).__name__, repr(value)))
    return tuple(parts)


def _is_static(value) -> bool:
    """Return whether ``value`` is fully described by its repr (numbers, strings, tuples)."""
    if value is None or isinstance(value, (bool, int, float, complex, str)):
        return True
    if isinstance(value, tuple):
        return all(_is_static(item) for item in value)
    return False


def _input_positions(arrays, plan) -> list:
    backend = plan.backend
    return [position for position, value in enumerate(arrays) if backend.is_array(value)]


def _program_for(plan: Plan):
    name = plan.backend.name
    if name == "numpy":
        return NumpyProgram(plan)
    if name == "cupy":
        from gpuflow.backends.cupy_backend import import_cupy
        from gpuflow.compile.cuda_codegen import CupyProgram

        return CupyProgram(plan, import_cupy())
    return functools.partial(run_generic, plan)


def compile(f, argnums=0, *, backend=None) -> CompiledFunction:  # noqa: A001
    """Return a function like ``value_and_grad(f, argnums)`` that traces ``f`` once per signature.

    The signature is the shapes and dtypes of the array arguments, the values
    of the other arguments, the backend and ``argnums``. Each new signature
    traces ``f`` and its backward pass into a Plan, runs the passes, and
    caches the result.
    """
    return CompiledFunction(f, argnums, backend)
