"""The functional interface: grad, value_and_grad, trace and check_grad."""

from __future__ import annotations

import functools
import inspect
import operator
import os

import numpy

from gpuflow import backends
from gpuflow.engine import run_backward
from gpuflow.graph import Graph
from gpuflow.ops.registry import builtin_op
from gpuflow.tensor import _NUMBER_TYPES, Tensor, enable_grad, is_floating, no_grad, state

_NUMPY = backends.get_backend("numpy")

# Connects a differentiated argument to an enclosing graph, so that grad(grad(f))
# differentiates the inner gradient with respect to the outer argument.
_identity = builtin_op("identity", lambda xp, x: x, lambda g, out, x: (g,))


class GradientCheckError(AssertionError):
    """Raised by check_grad when reverse mode and finite differences disagree."""


def _argument_names(f, count: int) -> list[str]:
    try:
        parameters = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names = []
    for position in range(count):
        if position < len(parameters) and parameters[position].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            names.append(parameters[position].name)
        else:
            names.append(f"argument {position}")
    return names


def _normalize_argnums(argnums, count: int) -> tuple[int, ...]:
    if hasattr(argnums, "__index__") and not isinstance(argnums, bool):
        numbers = (argnums,)
    elif isinstance(argnums, (tuple, list)):
        numbers = tuple(argnums)
    else:
        raise TypeError(f"argnums must be an int or a tuple of ints, got {argnums!r}")
    if not numbers:
        raise ValueError("argnums is empty; pass the position of at least one argument")
    result = []
    for number in numbers:
        if isinstance(number, bool) or not hasattr(number, "__index__"):
            raise TypeError(f"argnums must be an int or a tuple of ints, got {argnums!r}")
        number = operator.index(number)
        if not -count <= number < count:
            raise ValueError(
                f"argnums {number} is out of range for a function called with {count} "
                "positional arguments"
            )
        if number % count in result:
            raise ValueError(
                f"argnums {argnums!r} names argument {number % count} twice; list each "
                "position once"
            )
        result.append(number % count)
    return tuple(result)


def _choose_backend(spec, values):
    if spec is not None:
        return backends.get_backend(spec)
    for value in values:
        if isinstance(value, Tensor):
            return value.backend
        if isinstance(value, _NUMBER_TYPES):
            continue
        found = backends.backend_of(value)
        if found is not None and found.name != "numpy":
            return found
    return backends.get_backend(os.environ.get("GPUFLOW_BACKEND") or "numpy")


def _to_backend(value, backend):
    """Return ``value`` (a number or an array of any backend) as an array of ``backend``."""
    if isinstance(value, _NUMBER_TYPES):
        return backend.asarray(value)
    owner = backends.backend_of(value)
    if owner is backend:
        return value
    if owner is None:
        return backend.from_numpy(numpy.asarray(value))
    return backend.from_numpy(owner.to_numpy(value))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_differentiable(f, position: int, count: int, backend, dtype, value=None) -> None:
    if not is_floating(backend, dtype):
        name = _argument_names(f, count)[position]
        if isinstance(value, (bool, int)):
            raise TypeError(
                f"cannot differentiate with respect to {name}, the Python {type(value).__name__} "
                f"{value!r}: only floating-point inputs have gradients; pass a float, for "
                f"example {float(value)!r}"
            )
        dtype_name = getattr(dtype, "name", None) or str(dtype).rsplit(".", 1)[-1]
        raise TypeError(
            f"cannot differentiate with respect to {name} of dtype {dtype_name}: only "
            "floating-point inputs have gradients; pass a float array, for example "
            f"{name}.astype('float32')"
        )


def _target(f, args, position, backend, nested: bool):
    value = args[position]
    if isinstance(value, Tensor):
        _check_differentiable(f, position, len(args), value.backend, value.dtype)
        if nested and value.requires_grad:
            return _identity(value)
        if state.capture:
            # While gpuflow.compile traces, the target stays a step of the plan, which
            # recomputes it on new inputs; no gradient flows on to the traced value.
            target = _identity(value)
            target.requires_grad = True
            return target
        return Tensor._wrap(value.data, value.backend, requires_grad=True)
    array = _to_backend(value, backend)
    _check_differentiable(f, position, len(args), backend, array.dtype, value)
    return Tensor._wrap(array, backend, requires_grad=True)


def _constant(value, backend):
    """Wrap an array argument as a constant Tensor once, so operations need not copy it."""
    if isinstance(value, (Tensor, _NUMBER_TYPES)) or backends.backend_of(value) is None:
        return value
    return Tensor._wrap(_to_backend(value, backend), backend)


def _any_traced(values) -> bool:
    for value in values:
        if isinstance(value, Tensor) and value.requires_grad:
            return True
    return False


def _evaluate(f, numbers, args, kwargs, backend_spec):
    """Run ``f`` once, then the backward pass; return the output and the gradients."""
    try:
        return _evaluate_once(f, numbers, args, kwargs, backend_spec)
    except MemoryError as error:
        backend = _choose_backend(backend_spec, [args[i] for i in numbers])
        replacement = backend.out_of_memory(error)
        if replacement is error:
            raise
        raise replacement from error


def _evaluate_once(f, numbers, args, kwargs, backend_spec):
    backend = _choose_backend(backend_spec, [args[i] for i in numbers])
    # Inside an enclosing grad the arguments are traced Tensors, or the function
    # may capture traced values (a tape is active). The backward pass is then
    # recorded, so that the enclosing grad can differentiate it.
    nested = state.recording and (
        state.tape is not None or state.capture or _any_traced(args)
        or _any_traced(kwargs.values())
    )

    call_args = list(args)
    for position, value in enumerate(args):
        if position not in numbers and not isinstance(value, _NUMBER_TYPES):
            call_args[position] = _constant(value, backend)
    targets = []
    for number in numbers:
        value = args[number]
        if type(value) is float:
            # The common case of a Python float needs no conversion checks.
            target = Tensor._wrap(backend.asarray(value), backend, requires_grad=True)
        else:
            target = _target(f, args, number, backend, nested)
        call_args[number] = target
        targets.append(target)

    previous = state.recording, state.tape
    state.recording, state.tape = True, []
    try:
        out = f(*call_args, **kwargs)
        tape = state.tape
    finally:
        state.recording, state.tape = previous
    if previous[1] is not None:
        # An enclosing grad walks its own tape, which must hold these nodes too.
        previous[1].extend(tape)
    if not isinstance(out, Tensor):
        if not isinstance(out, _NUMBER_TYPES) and backends.backend_of(out) is None:
            raise TypeError(
                f"the function returned {type(out).__name__} {_short(out)}; it must return "
                "one array or Tensor built with gpuflow operations (for a value with "
                "auxiliary results, differentiate a function that returns the value alone)"
            )
        out = Tensor._wrap(_to_backend(out, backend), backend)

    found = {}
    if out.requires_grad:
        # Freeing as the pass goes releases each intermediate array once it is used.
        found = run_backward([out], [None], targets, create_graph=nested, tape=tape)
        del tape

    grads = []
    for target in targets:
        g = found.get(id(target))
        if g is None:
            g = target.backend.zeros(target.data.shape, dtype=target.dtype)
        grads.append(g)
    if nested:
        grads = [g if isinstance(g, Tensor) else Tensor._wrap(g, backend) for g in grads]
        return out, grads
    return _user_arrays(out.backend, [out.data, *grads], args)


def _user_arrays(backend, arrays, args):
    """Return arrays safe to hand out: none a view, an input, or shared with another result."""
    claimed = {id(value) for value in args}
    results = []
    for array in arrays:
        if backend is _NUMPY:
            result = numpy.asarray(array)
            if result.base is not None:  # a view, such as a read-only broadcast
                result = result.copy()
        else:
            result = backend.asarray(array)
        if id(result) in claimed:
            result = backend.copy(result)
        claimed.add(id(result))
        results.append(result)
    return results[0], results[1:]


def _argnums_for(argnums):
    """Return a function that checks ``argnums`` once per number of positional arguments."""
    checked = {}

    def numbers_for(count):
        numbers = checked.get(count)
        if numbers is None:
            numbers = checked[count] = _normalize_argnums(argnums, count)
        return numbers

    return numbers_for


def value_and_grad(f, argnums=0, *, backend=None, chunk_size=None, batch_argnums=None):
    """Return a function that evaluates ``f`` and its gradient in one forward and backward pass.

    ``f`` takes arrays (NumPy, CuPy or any Array API array) and Python floats and
    returns an array built with gpuflow operations. The returned function gives
    ``(value, gradient)``, with arrays of the inputs' backend (not Tensors).
    ``argnums`` is the position of the argument to differentiate, or a tuple of
    positions, in which case the gradient is a tuple in the same order. When
    ``f`` returns a non-scalar, the gradient is that of the sum of its output:
    for an elementwise ``f`` that is every element's own derivative, so one call
    evaluates the derivatives of a whole batch. An argument the output does not
    depend on gets zeros of its own shape. ``backend`` moves the inputs to that
    backend (see ``gpuflow.backends.get_backend``). Calls nest:
    ``grad(grad(f))`` gives the second derivative. ``chunk_size`` evaluates the
    batch that many rows at a time and ``batch_argnums`` names the batched
    arguments (see ``gpuflow.chunked``).
    """
    if chunk_size is not None:
        from gpuflow import chunked

        return chunked.value_and_grad(
            f, argnums, chunk_size=chunk_size, backend=backend, batch_argnums=batch_argnums
        )
    single = hasattr(argnums, "__index__")
    numbers_for = _argnums_for(argnums)

    @functools.wraps(f)
    def evaluate(*args, **kwargs):
        value, grads = _evaluate(f, numbers_for(len(args)), args, kwargs, backend)
        return value, (grads[0] if single else tuple(grads))

    return evaluate


def grad(f, argnums=0, *, backend=None, chunk_size=None, batch_argnums=None):
    """Return a function that evaluates the gradient of ``f``; see ``value_and_grad``.

    For a non-scalar output this is the gradient of the sum of the output, so an
    elementwise function gives the derivative at every element of a batch.
    """
    if chunk_size is not None:
        chunked_call = value_and_grad(
            f, argnums, backend=backend, chunk_size=chunk_size, batch_argnums=batch_argnums
        )

        @functools.wraps(f)
        def evaluate_chunked(*args, **kwargs):
            return chunked_call(*args, **kwargs)[1]

        return evaluate_chunked
    single = hasattr(argnums, "__index__")
    numbers_for = _argnums_for(argnums)

    @functools.wraps(f)
    def evaluate(*args, **kwargs):
        _, grads = _evaluate(f, numbers_for(len(args)), args, kwargs, backend)
        return grads[0] if single else tuple(grads)

    return evaluate


def trace(f, *args, backend=None) -> Graph:
    """Run ``f`` once on ``args`` and return the recorded dataflow graph.

    Every floating-point argument becomes a named input of the graph; the
    nodes come in topological order, and ``print(graph)`` shows one a line.
    """
    names = _argument_names(f, len(args))
    chosen = _choose_backend(backend, args)
    call_args, labels = [], {}
    for name, value in zip(names, args):
        if isinstance(value, (Tensor, _NUMBER_TYPES)) or backends.backend_of(value) is not None:
            data = value.data if isinstance(value, Tensor) else _to_backend(value, chosen)
            owner = value.backend if isinstance(value, Tensor) else chosen
            tensor = Tensor._wrap(data, owner, requires_grad=is_floating(owner, data.dtype))
            labels[id(tensor)] = name
            call_args.append(tensor)
        else:
            call_args.append(value)
    with enable_grad():
        out = f(*call_args)
    outputs = list(out) if isinstance(out, (tuple, list)) else [out]
    for position, result in enumerate(outputs):
        if isinstance(result, Tensor):
            continue
        if not isinstance(result, _NUMBER_TYPES) and backends.backend_of(result) is None:
            raise TypeError(
                f"trace: the function returned {type(result).__name__} {_short(result)}; "
                "it must return arrays or Tensors built with gpuflow operations"
            )
        outputs[position] = Tensor._wrap(_to_backend(result, chosen), chosen)
    return Graph.from_tensors(outputs, labels)


def check_grad(f, *args, argnums=None, rtol=1e-5, atol=1e-7, backend=None) -> dict:
    """Compare the gradients of ``f`` with central finite differences in float64.

    Every floating-point argument is checked (or those in ``argnums``). The
    reverse-mode gradient is computed on the arguments' backend. The finite
    differences run on that backend too, in float64, perturbing one element at a
    time by about ``cbrt(eps) * max(1, |x|)``. An element fails when
    ``|reverse - numeric| > atol + rtol * |numeric|``. On failure this raises
    GradientCheckError naming the input, the index of the worst element, both
    values and the error. Otherwise it returns the largest absolute error for
    each input, by name.
    """
    for label, tolerance in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not (
            tolerance >= 0
        ):
            raise ValueError(
                f"check_grad: {label} must be a non-negative number, got {tolerance!r}"
            )
    names = _argument_names(f, len(args))
    if argnums is None:
        argnums = tuple(
            i for i, value in enumerate(args)
            if not isinstance(value, (int, bool))
            and numpy.issubdtype(numpy.asarray(_host(value)).dtype, numpy.floating)
        )
        if not argnums:
            raise ValueError("check_grad: none of the arguments is a floating-point array")
    numbers = _normalize_argnums(argnums, len(args))
    reverse = grad(f, numbers, backend=backend)(*args)

    chosen = _choose_backend(backend, [args[i] for i in numbers])
    host = {i: numpy.array(_host(args[i]), dtype=numpy.float64) for i in numbers}
    # Finite differences run on the checked backend, so closures over its arrays still work.
    base_args = [Tensor._wrap(chosen.from_numpy(host[i]), chosen) if i in host else value
                 for i, value in enumerate(args)]
    report = {}
    for number, analytic in zip(numbers, reverse):
        analytic = numpy.asarray(_host(analytic), dtype=numpy.float64)
        numeric = _finite_differences(f, base_args, host[number], number, chosen)
        error = numpy.abs(analytic - numeric)
        allowed = atol + rtol * numpy.abs(numeric)
        excess = numpy.where(numpy.isnan(error), numpy.inf, error - allowed)
        report[names[number]] = float(numpy.max(error)) if error.size else 0.0
        if excess.size and numpy.max(excess) > 0:
            index = numpy.unravel_index(int(numpy.argmax(excess)), excess.shape)
            raise GradientCheckError(
                f"check_grad: the gradient of {names[number]} differs from central finite "
                f"differences at index {tuple(int(i) for i in index)}: reverse mode gives "
                f"{analytic[index]!r}, finite differences give {numeric[index]!r}, an error of "
                f"{error[index]:.3g}, above atol {atol:g} + rtol {rtol:g} * |numeric|"
            )
    return report


_MAX_CHECKED_ELEMENTS = 100_000


def _host(value):
    if isinstance(value, Tensor):
        return value.numpy()
    owner = backends.backend_of(value)
    return owner.to_numpy(value) if owner is not None else value


def _finite_differences(f, base_args, base, number, backend):
    if base.size > _MAX_CHECKED_ELEMENTS:
        raise ValueError(
            f"check_grad: input {number} has {base.size} elements, more than the "
            f"{_MAX_CHECKED_ELEMENTS} that element-by-element finite differences allow; "
            "check a smaller input"
        )
    step_scale = numpy.cbrt(numpy.finfo(numpy.float64).eps)
    numeric = numpy.zeros(base.shape, dtype=numpy.float64)
    flat = numeric.reshape(-1)

    def total(values):
        arguments = list(base_args)
        arguments[number] = Tensor._wrap(backend.from_numpy(values), backend)
        with no_grad():
            out = f(*arguments)
        return float(numpy.sum(numpy.asarray(_host(out), dtype=numpy.float64)))

    for position in range(base.size):
        index = numpy.unravel_index(position, base.shape)
        step = step_scale * max(1.0, abs(float(base[index])))
        plus = base.copy()
        plus[index] += step
        minus = base.copy()
        minus[index] -= step
        flat[position] = (total(plus) - total(minus)) / (2 * step)
    return numeric
