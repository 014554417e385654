"""Tests of gpuflow.testing: assert_parity, check_grads and their tolerances."""

from __future__ import annotations

import numpy as np
import pytest

import gpuflow as gf
from gpuflow.testing import (
    TOLERANCES,
    GradientCheckError,
    ParityError,
    assert_parity,
    available_backends,
    check_grads,
    compare_backends,
    default_tolerance,
)

BOTH = ["numpy", "array_api_strict"]


def on_strict(value) -> bool:
    """Return whether an array belongs to the array_api_strict backend."""
    owner = gf.backends.backend_of(value)
    return owner is not None and owner.name == "array_api_strict"


def cube_forward(xp, x):
    return x * x * x


def cube_vjp(g, out, x):
    return (3 * x * x * g,)


cube = gf.define_op("cube", cube_forward, cube_vjp)
# The gradient rule is off by a factor 2/3, which only finite differences can notice.
wrong_cube = gf.define_op("wrong_cube", cube_forward, lambda g, out, x: (2 * x * x * g,))


def cube_cached(xp, x):
    return x * x * x, 3 * x * x


# The first-order rule (vjp_cached) is right but the differentiable fallback, which
# second derivatives use, is wrong: only the order 2 check can notice.
wrong_second_cube = gf.define_op(
    "wrong_second_cube",
    cube_forward,
    lambda g, out, x: (4.5 * x * g,),
    forward_cached=cube_cached,
    vjp_cached=lambda g, cache: (cache * g,),
)

# A value that differs by one part in a thousand on array_api_strict.
skewed = gf.define_op(
    "skewed",
    lambda xp, x: x * (1.001 if xp.name == "array_api_strict" else 1.0),
    lambda g, out, x: (g * (1.001 if on_strict(x) else 1.0),),
)

# The right value everywhere, but a gradient that is 1.5 times too large on array_api_strict.
skewed_gradient = gf.define_op(
    "skewed_gradient",
    lambda xp, x: 2 * x,
    lambda g, out, x: (g * (3.0 if on_strict(g) else 2.0),),
)

# A row vector on array_api_strict where NumPy gives a flat vector.
reshaped = gf.define_op(
    "reshaped",
    lambda xp, x: xp.reshape(x, (1, -1)) if xp.name == "array_api_strict" else x,
    lambda g, out, x: (g,),
)

# float32 on array_api_strict where NumPy keeps float64.
narrowed = gf.define_op(
    "narrowed",
    lambda xp, x: xp.astype(x, xp.float32) if xp.name == "array_api_strict" else x,
    lambda g, out, x: (g,),
)


@pytest.fixture
def x(rng):
    return rng.standard_normal(7)


# Backends and tolerances.


def test_available_includes_both():
    names = available_backends()
    assert names[0] == "numpy"
    assert "array_api_strict" in names


def test_tolerance_table():
    assert default_tolerance(np.dtype("float64")) == (1e-10, 1e-12)
    assert default_tolerance(np.dtype("float32")) == (1e-5, 1e-6)
    assert default_tolerance(np.dtype("float16")) == (1e-2, 1e-3)
    assert default_tolerance(np.dtype("int64")) == (0.0, 0.0)
    assert set(TOLERANCES) == {"float64", "float32", "float16", "bfloat16"}


def test_tolerance_of_strict_dtype():
    strict = gf.get_backend("array_api_strict")
    assert default_tolerance(strict.float32) == (1e-5, 1e-6)


# assert_parity.


def test_parity_passes(x):
    comparisons = assert_parity(lambda t: gf.sum(gf.sigmoid(t) * t), x, backends=BOTH)
    assert [c.output for c in comparisons] == ["value", "t"]
    assert all(c.passed for c in comparisons)
    assert {c.backend for c in comparisons} == {"array_api_strict"}
    assert {c.reference for c in comparisons} == {"numpy"}


def test_parity_default_backends(x):
    comparisons = assert_parity(gf.tanh, x)
    expected = [name for name in available_backends() if name != "numpy"]
    assert sorted({c.backend for c in comparisons}) == sorted(expected)


def test_parity_custom_op(x):
    comparisons = assert_parity(lambda t: cube(t), x, backends=BOTH)
    assert all(c.passed for c in comparisons)


def test_parity_value_mismatch(x):
    with pytest.raises(ParityError) as caught:
        assert_parity(lambda t: skewed(t), x, backends=BOTH)
    message = str(caught.value)
    assert message.startswith("assert_parity: the value differs between numpy and")
    assert "and array_api_strict at index (" in message
    assert "at index (" in message
    assert "atol 1e-12 + rtol 1e-10" in message
    assert "for float64" in message


def test_parity_gradient_mismatch(x):
    with pytest.raises(ParityError) as caught:
        assert_parity(lambda t: gf.sum(skewed_gradient(t)), x, backends=BOTH)
    message = str(caught.value)
    assert "the gradient of t differs between numpy and array_api_strict" in message
    assert "numpy gives 2.0, array_api_strict gives 3.0" in message


def test_parity_error_is_assertion():
    assert issubclass(ParityError, AssertionError)


def test_parity_shape_mismatch(x):
    with pytest.raises(ParityError) as caught:
        assert_parity(lambda t: reshaped(t), x, backends=BOTH)
    message = str(caught.value)
    assert "the value differs in shape between numpy and array_api_strict" in message
    assert "shape (7,) on numpy, shape (1, 7) on array_api_strict" in message


def test_parity_dtype_mismatch(x):
    with pytest.raises(ParityError) as caught:
        assert_parity(lambda t: narrowed(t), x, backends=BOTH)
    message = str(caught.value)
    assert "the value differs in dtype" in message
    assert "dtype float64 on numpy, dtype float32 on array_api_strict" in message


def test_parity_float32_tolerance(x):
    comparisons = assert_parity(gf.sigmoid, x.astype(np.float32), backends=BOTH)
    assert comparisons[0].rtol == 1e-5
    assert comparisons[0].atol == 1e-6


def test_parity_rtol_override(x):
    comparisons = assert_parity(lambda t: skewed(t), x, backends=BOTH, rtol=1e-2)
    assert all(c.passed for c in comparisons)
    assert comparisons[0].rtol == 1e-2


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_parity_nan_in_both():
    x = np.array([-1.0, 0.0, 4.0])
    comparisons = assert_parity(gf.sqrt, x, backends=BOTH)
    assert all(c.passed for c in comparisons)


def test_parity_skips_integers(x):
    index = np.array([0, 2, 2])
    comparisons = assert_parity(lambda t, i: gf.sum(t[i] ** 2), x, index, backends=BOTH)
    assert [c.output for c in comparisons] == ["value", "t"]


def test_parity_explicit_argnums(x, rng):
    y = rng.standard_normal(7)
    comparisons = assert_parity(lambda a, b: gf.sum(a * b), x, y, argnums=1, backends=BOTH)
    assert [c.output for c in comparisons] == ["value", "b"]


def test_parity_single_backend(x):
    assert compare_backends(gf.exp, x, backends=["numpy"]) == []


def test_parity_repeated_backend(x):
    comparisons = assert_parity(gf.exp, x, backends=["numpy", "array_api_strict", "numpy"])
    assert [c.backend for c in comparisons] == ["array_api_strict", "array_api_strict"]


def test_parity_empty_backends(x):
    with pytest.raises(ValueError, match="backends is empty"):
        assert_parity(gf.exp, x, backends=[])


def test_parity_no_float_argument():
    with pytest.raises(ValueError, match="none of the 1 arguments is a floating-point"):
        assert_parity(gf.sign, np.arange(3), backends=BOTH)


def test_parity_unavailable_backend(x, monkeypatch):
    def missing(spec=None):
        raise gf.backends.BackendUnavailableError(f"backend {spec!r} is missing here")

    monkeypatch.setattr(gf.backends, "get_backend", missing)
    with pytest.raises(gf.backends.BackendUnavailableError, match="'cupy' is missing"):
        assert_parity(gf.exp, x, backends=["cupy"])


# check_grads.


def test_grads_pass(x):
    comparisons = check_grads(lambda t: gf.sum(gf.softplus(t) * t), x)
    assert [(c.check, c.output) for c in comparisons] == [("order 1", "t")]
    assert comparisons[0].passed
    assert comparisons[0].max_abs_error < 1e-8


def test_grads_second_order(x, rng):
    y = rng.standard_normal(7)
    comparisons = check_grads(lambda a, b: gf.sum(gf.tanh(a * b) * a), x, y, order=2)
    pairs = [(c.check, c.output) for c in comparisons]
    assert pairs == [("order 1", "a"), ("order 2", "a"), ("order 1", "b"), ("order 2", "b")]
    assert all(c.passed for c in comparisons)


def test_grads_custom_op(x):
    comparisons = check_grads(lambda t: gf.sum(cube(t)), x, order=2)
    assert all(c.passed for c in comparisons)


def test_grads_wrong_rule(x):
    with pytest.raises(GradientCheckError) as caught:
        check_grads(lambda t: gf.sum(wrong_cube(t)), x)
    message = str(caught.value)
    assert message.startswith("check_grads: at order 1, the derivative with respect to t")
    assert "along random direction" in message
    assert "in reverse mode but" in message
    assert "by central finite differences" in message


def test_grads_wrong_second_order(x):
    function = lambda t: gf.sum(wrong_second_cube(t))  # noqa: E731
    assert check_grads(function, x)[0].passed
    with pytest.raises(GradientCheckError) as caught:
        check_grads(function, x, order=2)
    message = str(caught.value)
    assert message.startswith("check_grads: at order 2, the derivative with respect to t")
    assert "of the gradient of t, at index (" in message
    assert "by nested reverse mode" in message


def test_grads_names_wrong_input(x, rng):
    y = rng.standard_normal(7)
    with pytest.raises(GradientCheckError, match="with respect to second"):
        check_grads(lambda first, second: gf.sum(cube(first) + wrong_cube(second)), x, y)


def test_grads_error_class():
    assert GradientCheckError is gf.GradientCheckError
    assert issubclass(GradientCheckError, AssertionError)


def test_grads_large_input(rng):
    # Element-by-element differences (gpuflow.check_grad) stop at 100000 elements.
    x = rng.standard_normal(300_000)
    comparisons = check_grads(lambda t: gf.sum(gf.sigmoid(t)), x)
    assert comparisons[0].passed


def test_grads_float32_input(x):
    comparisons = check_grads(lambda t: gf.sum(gf.exp(t)), x.astype(np.float32))
    assert comparisons[0].max_abs_error < 1e-8


def test_grads_strict_backend(x):
    comparisons = check_grads(lambda t: gf.sum(cube(t)), x, order=2, backend="array_api_strict")
    assert {c.backend for c in comparisons} == {"array_api_strict"}
    assert all(c.passed for c in comparisons)


def test_grads_seed_repeats(x):
    def function(t):
        return gf.sum(wrong_cube(t))

    first = [str(error) for error in _errors(function, x, seed=3)]
    again = [str(error) for error in _errors(function, x, seed=3)]
    other = [str(error) for error in _errors(function, x, seed=4)]
    assert first == again
    assert first != other


def _errors(function, x, seed):
    try:
        check_grads(function, x, seed=seed)
    except GradientCheckError as error:
        return [error]
    return []


def test_grads_constant_argument(x):
    comparisons = check_grads(lambda t, k: gf.sum(t * k), x, 2.0, argnums=0)
    assert [c.output for c in comparisons] == ["t"]


def test_grads_empty_input():
    comparisons = check_grads(lambda t: gf.sum(t), np.zeros(0))
    assert comparisons[0].passed


def test_grads_invalid_order(x):
    with pytest.raises(ValueError, match="order must be 1 or 2, got 3"):
        check_grads(gf.exp, x, order=3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_grads_nan_fails():
    with pytest.raises(GradientCheckError) as caught:
        check_grads(lambda t: gf.sum(gf.log(t)), np.array([-1.0, 2.0]))
    message = str(caught.value)
    assert "but nan by central finite differences" in message
    assert "a NaN or an infinity fails the check" in message


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_parity_nan_on_one_side(x):
    poisoned = gf.define_op(
        "poisoned",
        lambda xp, t: t / 0.0 * 0.0 if xp.name == "array_api_strict" else t,
        lambda g, out, t: (g,),
    )
    with pytest.raises(ParityError) as caught:
        assert_parity(lambda t: poisoned(t), x, backends=BOTH)
    message = str(caught.value)
    assert "array_api_strict gives nan" in message
    assert "a NaN or an infinity matches only the same value" in message


@pytest.mark.parametrize("tolerance", [-1.0, float("nan"), "1e-3", {"float32": 1e-3}], ids=repr)
def test_assert_parity_rejects_invalid_tolerance(tolerance):
    from gpuflow.testing import assert_parity

    with pytest.raises(TypeError, match="assert_parity: rtol must be a non-negative number"):
        assert_parity(lambda t: gf.sum(t * t), np.ones(3), rtol=tolerance)
