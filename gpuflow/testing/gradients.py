"""Reverse mode against central finite differences along random directions, in float64.

For an input x, a unit direction v and a step h, the first-order check compares
the directional derivative ``grad(F)(x) . v`` with ``(F(x + h v) - F(x - h v)) / 2h``,
where F is the sum of the function's output. The second-order check compares
the Hessian-vector product, the gradient of ``grad(F)(x) . v`` by nested
``gpuflow.grad``, with central differences of the gradient along v. Checking
along directions costs two evaluations per direction however large x is,
where element-by-element differences cost two per element.
"""

from __future__ import annotations

import numpy

from gpuflow import api, backends, ops
from gpuflow.api import GradientCheckError, _argument_names, _choose_backend
from gpuflow.tensor import Tensor, no_grad
from gpuflow.testing.comparison import Comparison, compare_arrays
from gpuflow.testing.parity import is_floating_argument, select_argnums

DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-7
DEFAULT_DIRECTIONS = 3

_EPSILON = float(numpy.finfo(numpy.float64).eps)
# The step is cbrt(eps) * max(1, max|x|), which balances the O(h**2) truncation error of
# central differences against their O(eps / h) rounding error.
_STEP_SCALE = float(numpy.cbrt(_EPSILON))
# The rounding error of a difference quotient is estimated as this many epsilons of the
# magnitudes it subtracts, divided by 2h. It is an estimate, not a bound: it covers a few
# roundings per element and a pairwise sum, not a function that loses precision itself.
_ROUNDING_EPSILONS = 16.0


def _host(value) -> numpy.ndarray:
    """Return a Tensor, an array of any backend or a number as a float64 NumPy array."""
    if isinstance(value, Tensor):
        value = value.numpy()
    else:
        owner = backends.backend_of(value)
        if owner is not None:
            value = owner.to_numpy(value)
    return numpy.asarray(value, dtype=numpy.float64)


class _Problem:
    """The function under test at one point, with float64 copies of its floating arguments."""

    def __init__(self, f, args, numbers, backend):
        self.f = f
        self.backend = backend
        self.numbers = numbers
        self.point = list(args)
        # Every floating-point array becomes float64, so that the finite differences are
        # not limited by the precision of an argument that is not differentiated.
        for position, value in enumerate(args):
            if is_floating_argument(value) and not isinstance(value, float):
                self.point[position] = backend.from_numpy(_host(value))
            elif position in numbers:
                self.point[position] = backend.from_numpy(_host(value))
        self.gradient = api.grad(f, numbers, backend=backend)

    def moved(self, position, offset):
        """Return the arguments with ``offset`` (a NumPy array) added to argument ``position``."""
        arguments = list(self.point)
        base = _host(self.point[position])
        arguments[position] = self.backend.from_numpy(base + offset)
        return arguments

    def total(self, arguments) -> tuple[float, float]:
        """Return the sum of the output in float64, and the sum of its absolute values."""
        wrapped = [
            Tensor(value, backend=self.backend)
            if backends.backend_of(value) is not None else value
            for value in arguments
        ]
        with no_grad():
            out = _host(self.f(*wrapped))
        return float(numpy.sum(out)), float(numpy.sum(numpy.abs(out)))

    def gradients(self, arguments) -> list[numpy.ndarray]:
        return [_host(g) for g in self.gradient(*arguments)]

    def hessian_vector_products(self, position, direction) -> list[numpy.ndarray]:
        """Return the derivative along ``direction`` of the gradient of every checked input.

        ``direction`` perturbs argument ``position``. By the symmetry of second
        derivatives this is the gradient, with respect to every checked input,
        of the directional derivative ``grad_position(F) . direction``.
        """
        inner = api.grad(self.f, position)
        vector = self.backend.from_numpy(direction)

        def directional_derivative(*arguments):
            return ops.sum(inner(*arguments) * vector)

        products = api.grad(directional_derivative, self.numbers, backend=self.backend)
        return [_host(product) for product in products(*self.point)]


def _step(base: numpy.ndarray) -> float:
    largest = float(numpy.max(numpy.abs(base))) if base.size else 0.0
    if not numpy.isfinite(largest):
        largest = 1.0
    return _STEP_SCALE * max(1.0, largest)


def _direction(generator, shape) -> numpy.ndarray:
    direction = generator.standard_normal(shape)
    norm = float(numpy.linalg.norm(direction))
    return direction / norm if norm > 0 else direction


class _Worst:
    """The direction with the largest excess over the tolerance, for one input and order."""

    def __init__(self):
        self.difference = None
        self.details = None
        self.max_abs_error = 0.0
        self.max_rel_error = 0.0

    def update(self, difference, details):
        self.max_abs_error = max(self.max_abs_error, difference.max_abs_error)
        self.max_rel_error = max(self.max_rel_error, difference.max_rel_error)
        if numpy.isnan(difference.max_abs_error):
            self.max_abs_error = numpy.nan
        if self.difference is None or difference.excess > self.difference.excess:
            self.difference = difference
            self.details = details


def _excess_text(difference, rtol, atol) -> str:
    if not (numpy.isfinite(difference.abs_error) and numpy.isfinite(difference.allowed)):
        return (
            "and a NaN or an infinity fails the check; choose a point where the function is "
            "finite and differentiable, or"
        )
    return (
        f"an error of {difference.abs_error:.3g}, above the tolerance "
        f"{difference.allowed:.3g} (atol {atol:g} + rtol {rtol:g} * |finite differences| + "
        "their estimated rounding error);"
    )


def _order_1_message(name, details, difference, rtol, atol, seed) -> str:
    direction, count = details
    return (
        f"check_grads: at order 1, the derivative with respect to {name} along random "
        f"direction {direction} of {count} (seed {seed}) is {difference.actual!r} in reverse "
        f"mode but {difference.expected!r} by central finite differences, "
        f"{_excess_text(difference, rtol, atol)} check the gradient rules of the operations "
        f"that {name} passes through"
    )


def _order_2_message(name, details, difference, rtol, atol, seed) -> str:
    direction, count, gradient_name = details
    return (
        f"check_grads: at order 2, the derivative with respect to {name} along random "
        f"direction {direction} of {count} (seed {seed}) of the gradient of {gradient_name}, "
        f"at index {difference.index}, is {difference.actual!r} by nested reverse mode but "
        f"{difference.expected!r} by central finite differences of the gradient, "
        f"{_excess_text(difference, rtol, atol)} check that the gradient rules are "
        "themselves differentiable, written with gpuflow functions and operators"
    )


def _record(order, name, backend, worst, rtol, atol, seed) -> Comparison:
    difference = worst.difference
    if difference is None:  # An empty input has no direction to check.
        return Comparison(f"order {order}", name, backend.name, "finite differences",
                          0.0, 0.0, rtol, atol, passed=True)
    message = None
    if not difference.passed:
        describe = _order_1_message if order == 1 else _order_2_message
        message = describe(name, worst.details, difference, rtol, atol, seed)
    return Comparison(
        f"order {order}", name, backend.name, "finite differences",
        worst.max_abs_error, worst.max_rel_error, rtol, atol,
        passed=difference.passed, index=difference.index, expected=difference.expected,
        actual=difference.actual, message=message,
    )


def compare_gradients(
    f, *args, order=1, argnums=None, rtol=None, atol=None, seed=0, backend=None,
    directions=DEFAULT_DIRECTIONS,
):
    """Run the checks of check_grads and return one Comparison per input and order.

    Nothing is raised for a mismatch, because each Comparison records whether it passed.
    """
    if order not in (1, 2):
        raise ValueError(f"check_grads: order must be 1 or 2, got {order!r}")
    if isinstance(directions, bool) or not isinstance(directions, int) or directions < 1:
        raise ValueError(
            f"check_grads: directions must be a positive int, got {directions!r}"
        )
    rtol = DEFAULT_RTOL if rtol is None else float(rtol)
    atol = DEFAULT_ATOL if atol is None else float(atol)
    numbers = select_argnums("check_grads", args, argnums)
    names = _argument_names(f, len(args))
    chosen = _choose_backend(backend, [args[number] for number in numbers])
    problem = _Problem(f, args, numbers, chosen)
    generator = numpy.random.default_rng(seed)
    reverse = problem.gradients(problem.point)

    comparisons = []
    for slot, number in enumerate(numbers):
        base = _host(problem.point[number])
        step = _step(base)
        first, second = _Worst(), _Worst()
        for direction_index in range(directions if base.size else 0):
            direction = _direction(generator, base.shape)
            plus = problem.moved(number, step * direction)
            minus = problem.moved(number, -step * direction)

            total_plus, magnitude_plus = problem.total(plus)
            total_minus, magnitude_minus = problem.total(minus)
            numeric = (total_plus - total_minus) / (2 * step)
            rounding = _ROUNDING_EPSILONS * _EPSILON * (magnitude_plus + magnitude_minus)
            analytic = float(numpy.sum(reverse[slot] * direction))
            difference = compare_arrays(
                numeric, analytic, rtol, atol, nan_equal=False, slack=rounding / (2 * step)
            )
            first.update(difference, (direction_index, directions))

            if order == 2:
                _check_second_order(
                    problem, number, direction, step, plus, minus, names, second,
                    (direction_index, directions), rtol, atol,
                )
        comparisons.append(_record(1, names[number], chosen, first, rtol, atol, seed))
        if order == 2:
            comparisons.append(_record(2, names[number], chosen, second, rtol, atol, seed))
    return comparisons


def _check_second_order(problem, number, direction, step, plus, minus, names, worst,
                        details, rtol, atol):
    products = problem.hessian_vector_products(number, direction)
    gradients_plus = problem.gradients(plus)
    gradients_minus = problem.gradients(minus)
    for gradient_number, product, above, below in zip(
        problem.numbers, products, gradients_plus, gradients_minus
    ):
        numeric = (above - below) / (2 * step)
        rounding = _ROUNDING_EPSILONS * _EPSILON * (numpy.abs(above) + numpy.abs(below))
        difference = compare_arrays(
            numeric, product, rtol, atol, nan_equal=False, slack=rounding / (2 * step)
        )
        worst.update(difference, (*details, names[gradient_number]))


def check_grads(f, *args, order=1, argnums=None, rtol=None, atol=None, seed=0, backend=None,
                directions=DEFAULT_DIRECTIONS):
    """Check the gradients of ``f`` against central finite differences in float64.

    Every floating-point argument (or those in ``argnums``) is copied to float64
    and checked along ``directions`` random unit directions drawn from
    ``numpy.random.default_rng(seed)``. Order 1 compares the directional
    derivative ``grad . v`` from reverse mode with ``(F(x + h v) - F(x - h v)) /
    2h``, where F is the sum of the output and ``h = cbrt(eps) * max(1, max|x|)``.
    Order 2 also compares the Hessian-vector product from nested
    ``gpuflow.grad`` with central differences of the gradient, for the
    gradient of every checked input. A value passes when ``|reverse - numeric|
    <= atol + rtol * |numeric|`` plus an estimate of the rounding error of the
    differences; ``rtol`` defaults to 1e-5 and ``atol`` to 1e-7. ``backend``
    defaults to the arguments' own backend, as in ``gpuflow.grad``.

    Raises GradientCheckError naming the input, the order, the direction and
    both values for the worst mismatch of the first failing input. Returns the
    list of Comparison records otherwise.
    """
    comparisons = compare_gradients(
        f, *args, order=order, argnums=argnums, rtol=rtol, atol=atol, seed=seed,
        backend=backend, directions=directions,
    )
    for comparison in comparisons:
        if not comparison.passed:
            raise GradientCheckError(comparison.message)
    return comparisons
