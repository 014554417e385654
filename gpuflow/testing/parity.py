"""Backend parity: the same function and gradients on several backends, compared on the host."""

from __future__ import annotations

import numpy

from gpuflow import backends
from gpuflow.api import _argument_names, _normalize_argnums, value_and_grad
from gpuflow.backends import BackendUnavailableError
from gpuflow.tensor import _NUMBER_TYPES, Tensor, is_floating
from gpuflow.testing.comparison import Comparison, compare_arrays, default_tolerance, dtype_name

# The backends that parity checks can run on, in the order they are tried.
KNOWN_BACKENDS = ("numpy", "cupy", "array_api_strict")


class ParityError(AssertionError):
    """Raised by assert_parity when two backends give different values or gradients."""


def unavailable_reason(name: str) -> str | None:
    """Return why the backend ``name`` cannot run here, with the install hint, or None."""
    try:
        backends.get_backend(name)
    except BackendUnavailableError as error:
        return str(error)
    return None


def available_backends() -> tuple[str, ...]:
    """Return the names of the backends that run here, from KNOWN_BACKENDS.

    NumPy is always available. CuPy is available when it imports and a CUDA
    device is present, and array_api_strict when it is installed.
    """
    return tuple(name for name in KNOWN_BACKENDS if unavailable_reason(name) is None)


def is_floating_argument(value) -> bool:
    """Return whether ``value`` is a Python float or a floating-point array of any backend."""
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return True
    if isinstance(value, _NUMBER_TYPES):
        return False
    if isinstance(value, Tensor):
        return bool(is_floating(value.backend, value.dtype))
    owner = backends.backend_of(value)
    if owner is None:
        return False
    return bool(is_floating(owner, value.dtype))


def select_argnums(function_name: str, args, argnums) -> tuple[int, ...]:
    """Return ``argnums`` as a tuple of positions, by default every floating-point argument."""
    if argnums is None:
        numbers = tuple(i for i, value in enumerate(args) if is_floating_argument(value))
        if not numbers:
            raise ValueError(
                f"{function_name}: none of the {len(args)} arguments is a floating-point "
                "array or a float; pass float arguments or name the inputs with argnums"
            )
        return numbers
    return _normalize_argnums(argnums, len(args))


def _resolve_backends(requested) -> list:
    if requested is None:
        requested = available_backends()
    elif isinstance(requested, (str, backends.Backend)):
        requested = [requested]
    resolved = []
    for spec in requested:
        backend = backends.get_backend(spec)
        # A repeated backend is compared once, so that backends=["numpy", gpuflow_backend]
        # works for every case of the pytest fixture.
        if all(backend is not seen for seen in resolved):
            resolved.append(backend)
    if not resolved:
        raise ValueError(
            "assert_parity: backends is empty; pass at least one backend name, "
            f"for example {list(KNOWN_BACKENDS[:1])}"
        )
    return resolved


def _evaluate_on(backend, f, args, numbers):
    """Return the value and the gradients of ``f`` on ``backend``, as NumPy arrays."""
    value, grads = value_and_grad(f, numbers, backend=backend)(*args)
    return [numpy.asarray(backend.to_numpy(array)) for array in (value, *grads)]


def _describe_output(output: str) -> str:
    return "the value" if output == "value" else f"the gradient of {output}"


def _layout_problem(output, reference_name, name, expected, actual) -> str | None:
    """Describe a difference in shape or dtype between two outputs, or return None."""
    differing = []
    if expected.shape != actual.shape:
        differing.append("shape")
    if expected.dtype != actual.dtype:
        differing.append("dtype")
    if not differing:
        return None

    def layout(array):
        parts = []
        if "shape" in differing:
            parts.append(f"shape {array.shape}")
        if "dtype" in differing:
            parts.append(f"dtype {dtype_name(array.dtype)}")
        return " and ".join(parts)

    return (
        f"assert_parity: {_describe_output(output)} differs in {' and '.join(differing)} "
        f"between {reference_name} and {name}: {layout(expected)} on {reference_name}, "
        f"{layout(actual)} on {name}; make the function build the same result on every "
        "backend"
    )


def _compare_output(output, reference_name, name, expected, actual, rtol, atol) -> Comparison:
    default_rtol, default_atol = default_tolerance(expected.dtype)
    rtol = default_rtol if rtol is None else float(rtol)
    atol = default_atol if atol is None else float(atol)
    problem = _layout_problem(output, reference_name, name, expected, actual)
    if problem is not None:
        return Comparison(
            "parity", output, name, reference_name, numpy.inf, numpy.inf, rtol, atol,
            passed=False, message=problem,
        )

    difference = compare_arrays(expected, actual, rtol, atol, nan_equal=True)
    message = None
    if not difference.passed:
        if numpy.isfinite(difference.abs_error):
            excess = (
                f"an error of {difference.abs_error:.3g}, above atol {atol:g} + rtol {rtol:g} "
                f"* |{reference_name}| for {dtype_name(expected.dtype)}"
            )
        else:
            excess = "and a NaN or an infinity matches only the same value on the other backend"
        message = (
            f"assert_parity: {_describe_output(output)} differs between {reference_name} and "
            f"{name} at index {difference.index}: {reference_name} gives "
            f"{difference.expected!r}, {name} gives {difference.actual!r}, {excess}"
        )
    return Comparison(
        "parity", output, name, reference_name,
        difference.max_abs_error, difference.max_rel_error, rtol, atol,
        passed=difference.passed, index=difference.index, expected=difference.expected,
        actual=difference.actual, message=message,
    )


def compare_backends(f, *args, backends=None, argnums=None, rtol=None, atol=None):
    """Run the checks of assert_parity and return one Comparison per output and backend.

    Nothing is raised for a mismatch, because each Comparison records whether it passed.
    With a single backend there is nothing to compare, and the list is empty.
    """
    resolved = _resolve_backends(backends)
    numbers = select_argnums("assert_parity", args, argnums)
    names = _argument_names(f, len(args))
    outputs = ["value", *(names[number] for number in numbers)]

    reference = resolved[0]
    expected_arrays = _evaluate_on(reference, f, args, numbers)
    comparisons = []
    for backend in resolved[1:]:
        actual_arrays = _evaluate_on(backend, f, args, numbers)
        for output, expected, actual in zip(outputs, expected_arrays, actual_arrays):
            comparisons.append(
                _compare_output(output, reference.name, backend.name, expected, actual,
                                rtol, atol)
            )
    return comparisons


def assert_parity(f, *args, backends=None, argnums=None, rtol=None, atol=None):
    """Check that ``f`` gives the same value and gradients on every backend.

    ``gpuflow.value_and_grad(f, argnums, backend=name)`` runs on each backend of
    ``backends``, which are names or Backend objects and default to those that
    ``available_backends`` returns. A repeated backend runs once. Each result is
    moved to NumPy and compared with that of the first backend. ``argnums``
    defaults to every floating-point argument. The tolerances default to
    TOLERANCES by the dtype of the first backend's output, and a given ``rtol``
    or ``atol`` replaces the default for every output. An element passes when
    ``|actual - expected| <= atol + rtol * |expected|``, where NaNs in the same
    places count as equal.

    Raises ParityError for the first output that differs in shape, dtype or
    values, naming the output ("value" or the input's name), both backends, the
    index of the worst element, both values and the tolerance. Returns the list
    of Comparison records otherwise.
    """
    for label, tolerance in (("rtol", rtol), ("atol", atol)):
        if tolerance is None:
            continue
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
            tolerance >= 0
        ):
            raise TypeError(
                f"assert_parity: {label} must be a non-negative number or None for the "
                f"per-dtype default, got {tolerance!r}"
            )
    comparisons = compare_backends(
        f, *args, backends=backends, argnums=argnums, rtol=rtol, atol=atol
    )
    for comparison in comparisons:
        if not comparison.passed:
            raise ParityError(comparison.message)
    return comparisons
