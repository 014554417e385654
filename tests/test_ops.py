"""Every operation against its NumPy reference, its analytic gradient and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gpuflow as gf
from op_specs import BINARY, BROADCAST_SHAPES, UNARY, sum_to_shape

FD = {"rtol": 1e-5, "atol": 1e-7}
HYPOTHESIS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


def spec_id(spec):
    return spec.name


# Elementwise unary operations.


@pytest.mark.parametrize("spec", UNARY, ids=spec_id)
def test_unary_value_and_gradient(spec, bk, rng):
    x = spec.domain(rng, (3, 4))
    value, gradient = gf.value_and_grad(lambda t: gf.sum(spec.function(t)))(bk.array(x))
    np.testing.assert_allclose(bk.numpy(value), spec.reference(x).sum(), rtol=1e-12)
    np.testing.assert_allclose(bk.numpy(gradient), spec.derivative(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", UNARY, ids=spec_id)
@HYPOTHESIS
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_unary_finite_differences(spec, bk, shape, seed):
    x = spec.domain(np.random.default_rng(seed), shape)
    report = gf.check_grad(lambda t: spec.function(t), bk.array(x), **FD)
    assert set(report) == {"t"}


@pytest.mark.parametrize("spec", UNARY, ids=spec_id)
def test_unary_keeps_float32(spec, bk, rng):
    x = bk.array(spec.domain(rng, (5,)), dtype="float32")
    value, gradient = gf.value_and_grad(lambda t: gf.sum(spec.function(t)))(x)
    assert bk.dtype_name(value) == "float32"
    assert bk.dtype_name(gradient) == "float32"


# Elementwise binary operations, under broadcasting.


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("spec", BINARY, ids=spec_id)
def test_binary_broadcast_gradients(spec, shapes, bk, rng):
    shape_a, shape_b = shapes
    a = spec.domains[0](rng, shape_a)
    b = spec.domains[1](rng, shape_b)
    value, (grad_a, grad_b) = gf.value_and_grad(
        lambda u, v: gf.sum(spec.function(u, v)), (0, 1)
    )(bk.array(a), bk.array(b))

    expected_a, expected_b = spec.derivatives(a, b)
    np.testing.assert_allclose(bk.numpy(value), spec.reference(a, b).sum(), rtol=1e-12)
    assert bk.numpy(grad_a).shape == shape_a
    assert bk.numpy(grad_b).shape == shape_b
    np.testing.assert_allclose(bk.numpy(grad_a), sum_to_shape(expected_a, shape_a), rtol=1e-10)
    np.testing.assert_allclose(bk.numpy(grad_b), sum_to_shape(expected_b, shape_b), rtol=1e-10)


@pytest.mark.parametrize("spec", BINARY, ids=spec_id)
@HYPOTHESIS
@given(data=st.data())
def test_binary_finite_differences(spec, bk, data):
    shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_side=3)).input_shapes
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = spec.domains[0](rng, shape_a)
    b = spec.domains[1](rng, shape_b)
    report = gf.check_grad(spec.function, bk.array(a), bk.array(b), **FD)
    assert len(report) == 2


def test_binary_shape_mismatch_names_operation(bk):
    with pytest.raises(ValueError, match=r"multiply: shapes \(3,\) and \(4,\) cannot be broadcast"):
        gf.multiply(gf.Tensor(bk.array(np.ones(3))), bk.array(np.ones(4)))


# where and clip.


def test_where_routes_gradient(bk, rng):
    x, y = rng.normal(size=(2, 5))
    mask = x > 0
    gx, gy = gf.grad(lambda u, v: gf.sum(gf.where(u > 0, u * v, v)), (0, 1))(
        bk.array(x), bk.array(y)
    )
    np.testing.assert_allclose(bk.numpy(gx), np.where(mask, y, 0.0))
    np.testing.assert_allclose(bk.numpy(gy), np.where(mask, x, 1.0))


@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt:RuntimeWarning")
def test_where_nan_branch_stays_out(bk):
    x = bk.array([-1.0, 4.0])
    value, gradient = gf.value_and_grad(lambda u: gf.sum(gf.where(u > 0, gf.sqrt(u), 0.0)))(x)
    assert bk.numpy(value) == 2.0
    assert bk.numpy(gradient)[1] == 0.25


def test_where_masking_keeps_gradient_finite(bk):
    s = bk.array([0.0, 4.0])
    gradient = gf.grad(lambda u: gf.sum(gf.sqrt(gf.where(u > 0, u, 1.0))))(s)
    np.testing.assert_array_equal(bk.numpy(gradient), [0.0, 0.25])


@pytest.mark.parametrize(
    "bounds", [(-0.5, 0.5), (None, 0.5), (-0.5, None)], ids=["both", "upper", "lower"]
)
def test_clip_gradient(bounds, bk, rng):
    x = rng.uniform(-1, 1, size=20)
    low, high = bounds
    gradient = gf.grad(lambda u: gf.sum(gf.clip(u, low, high)))(bk.array(x))
    inside = np.ones_like(x, dtype=bool)
    if low is not None:
        inside &= x >= low
    if high is not None:
        inside &= x <= high
    np.testing.assert_array_equal(bk.numpy(gradient), inside * 1.0)


def test_clip_bounds_receive_gradient(bk):
    x = bk.array([-2.0, 0.0, 2.0])
    gx, glow, ghigh = gf.grad(lambda u, lo, hi: gf.sum(gf.clip(u, lo, hi)), (0, 1, 2))(
        x, bk.array(-1.0), bk.array(1.0)
    )
    np.testing.assert_array_equal(bk.numpy(gx), [0.0, 1.0, 0.0])
    assert bk.numpy(glow) == 1.0
    assert bk.numpy(ghigh) == 1.0


def test_clip_without_bounds_raises():
    with pytest.raises(ValueError, match="clip: a_min and a_max are both None"):
        gf.clip(np.ones(2), None, None)


# Reductions.

AXES = [None, 0, -1, (0, 2), ()]


def _expand(reduced, shape, axis, keepdims):
    if axis is None:
        axis = tuple(range(len(shape)))
    axis = (axis,) if isinstance(axis, int) else axis
    axis = tuple(a % len(shape) for a in axis)
    if not keepdims:
        reduced = np.expand_dims(reduced, axis)
    return np.broadcast_to(reduced, shape)


def _softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=axis, keepdims=True)


REDUCTIONS = {
    "sum": (gf.sum, np.sum, lambda x, axis: np.ones_like(x)),
    "mean": (
        gf.mean,
        np.mean,
        lambda x, axis: np.ones_like(x) / max(1, x.size // max(1, np.sum(x, axis=axis).size))
        if axis != () else np.ones_like(x),
    ),
    "max": (gf.max, np.max, lambda x, axis: x == np.max(x, axis=axis, keepdims=True)),
    "min": (gf.min, np.min, lambda x, axis: x == np.min(x, axis=axis, keepdims=True)),
    "logsumexp": (
        gf.logsumexp,
        lambda x, axis, keepdims=False: np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims)),
        lambda x, axis: _softmax(x, axis) if axis != () else np.ones_like(x),
    ),
    "norm": (
        gf.norm,
        lambda x, axis, keepdims=False: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
        lambda x, axis: x / np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
        if axis != () else np.sign(x),
    ),
}


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_value_and_gradient(name, axis, keepdims, bk, rng):
    function, reference, derivative = REDUCTIONS[name]
    x = rng.uniform(0.5, 2.0, size=(2, 3, 4))
    value, gradient = gf.value_and_grad(
        lambda t: gf.sum(function(t, axis=axis, keepdims=keepdims))
    )(bk.array(x))
    expected_value = np.sum(reference(x, axis=axis, keepdims=keepdims))
    np.testing.assert_allclose(bk.numpy(value), expected_value, rtol=1e-12)
    np.testing.assert_allclose(bk.numpy(gradient), derivative(x, axis), rtol=1e-10)


@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_finite_differences(name, axis, bk, rng):
    function = REDUCTIONS[name][0]
    x = rng.uniform(0.5, 2.0, size=(2, 3, 4))
    weights = bk.array(rng.normal(size=np.shape(REDUCTIONS[name][1](x, axis=axis))))
    gf.check_grad(lambda t: function(t, axis=axis) * weights, bk.array(x), **FD)


def test_reduction_axis_out_of_bounds():
    with pytest.raises(ValueError, match="sum: axis 3 is out of bounds for an array of 2 dim"):
        gf.sum(np.ones((2, 2)), axis=3)


def test_max_of_empty_axis_raises():
    with pytest.raises(ValueError, match="max: cannot reduce an empty axis"):
        gf.max(np.ones((0, 3)), axis=0)


# Shape operations.

def _index_like(x, values):
    """Return an integer index array on the backend of ``x`` (a Tensor or a plain array)."""
    data = x.data if isinstance(x, gf.Tensor) else x
    return gf.backends.backend_of(data).from_numpy(np.array(values))


SHAPE_CASES = {
    "reshape": (lambda t: gf.reshape(t, (4, 6)), (2, 3, 4)),
    "reshape_minus_one": (lambda t: gf.reshape(t, (-1, 2)), (2, 3, 4)),
    "transpose": (lambda t: gf.transpose(t), (2, 3, 4)),
    "transpose_axes": (lambda t: gf.transpose(t, (1, 2, 0)), (2, 3, 4)),
    "matrix_transpose": (lambda t: gf.matrix_transpose(t), (2, 3, 4)),
    "broadcast_to": (lambda t: gf.broadcast_to(t, (2, 3, 4)), (3, 1)),
    "expand_dims": (lambda t: gf.expand_dims(t, (0, 2)), (3, 4)),
    "squeeze": (lambda t: gf.squeeze(t, 1), (3, 1, 4)),
    "squeeze_all": (lambda t: gf.squeeze(t), (1, 3, 1)),
    "flip": (lambda t: gf.flip(t, 1), (2, 3, 4)),
    "flip_all": (lambda t: gf.flip(t), (2, 3)),
    "concatenate": (lambda t: gf.concatenate([t, 2 * t, t[:, :1]], axis=1), (2, 3)),
    "stack": (lambda t: gf.stack([t, t * t], axis=1), (2, 3)),
    "slice": (lambda t: t[1:, ::2], (3, 5)),
    "slice_negative_step": (lambda t: t[::-1, 1], (3, 5)),
    "integer_index": (lambda t: t[1], (3, 5)),
    "none_and_ellipsis": (lambda t: t[None, ..., 0], (3, 5)),
    "integer_array": (lambda t: gf.getitem(t, _index_like(t, [0, 2, 0, 0])), (3, 5)),
    "integer_array_2d": (lambda t: gf.getitem(t, _index_like(t, [[0, 2], [2, 2]])), (3, 5)),
}


@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
def test_shape_operation_finite_differences(name, bk, rng):
    function, shape = SHAPE_CASES[name]
    x = rng.normal(size=shape)
    out = function(gf.Tensor(bk.array(x)))
    weights = bk.array(rng.normal(size=out.shape))
    gf.check_grad(lambda t: function(t) * weights, bk.array(x), **FD)


def test_repeated_indices_accumulate(bk):
    x = bk.array([1.0, 2.0, 3.0])
    index = bk.backend.from_numpy(np.array([0, 2, 0, 0]))
    gradient = gf.grad(lambda t: gf.sum(gf.getitem(t, index)))(x)
    np.testing.assert_array_equal(bk.numpy(gradient), [3.0, 0.0, 1.0])


def test_concatenate_shape_mismatch():
    with pytest.raises(ValueError, match=r"concatenate: input shapes \(2, 3\), \(3, 3\) must"):
        gf.concatenate([np.ones((2, 3)), np.ones((3, 3))], axis=1)


def test_reshape_size_mismatch():
    with pytest.raises(ValueError, match=r"reshape: cannot reshape an array of shape \(2, 3\)"):
        gf.reshape(np.ones((2, 3)), (4,))


def test_squeeze_non_unit_axis():
    with pytest.raises(ValueError, match="squeeze: axis 0 of an array of shape"):
        gf.squeeze(np.ones((2, 3)), 0)


def test_getitem_out_of_range():
    with pytest.raises(IndexError, match=r"getitem: index \[5\] is invalid for an array of shape"):
        gf.Tensor(np.ones(3))[5]


# Matrix products.

MATMUL_SHAPES = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((4,), (2, 4, 3)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_gradients(shapes, bk, rng):
    a = rng.normal(size=shapes[0])
    b = rng.normal(size=shapes[1])
    weights = rng.normal(size=np.matmul(a, b).shape)
    value, (grad_a, grad_b) = gf.value_and_grad(
        lambda u, v: gf.sum(gf.matmul(u, v) * bk.array(weights)), (0, 1)
    )(bk.array(a), bk.array(b))
    np.testing.assert_allclose(bk.numpy(value), np.sum(np.matmul(a, b) * weights), rtol=1e-12)
    assert bk.numpy(grad_a).shape == a.shape
    assert bk.numpy(grad_b).shape == b.shape
    gf.check_grad(
        lambda u, v: gf.matmul(u, v) * bk.array(weights), bk.array(a), bk.array(b), **FD
    )


def test_matmul_misaligned_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(3, 4\) and \(5, 2\) are not aligned"):
        gf.matmul(np.ones((3, 4)), np.ones((5, 2)))


def test_matmul_operator(bk, rng):
    a = rng.normal(size=(2, 3))
    b = rng.normal(size=(3,))
    gradient = gf.grad(lambda u: gf.sum(u @ bk.array(b)))(bk.array(a))
    np.testing.assert_allclose(bk.numpy(gradient), np.broadcast_to(b, (2, 3)))


def test_clip_crossed_bounds_give_upper_bound(bk):
    # With a_min > a_max the output is a_max, as in NumPy, so only a_max has a gradient.
    grads = gf.grad(lambda u, lo, hi: gf.sum(gf.clip(u, lo, hi)), (0, 1, 2))(
        bk.array([2.0, 0.0]), bk.array(3.0), bk.array(1.0)
    )
    np.testing.assert_array_equal(bk.numpy(grads[0]), [0.0, 0.0])
    assert bk.numpy(grads[1]) == 0.0
    assert bk.numpy(grads[2]) == 2.0


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32", "uint64", "bool"])
@pytest.mark.parametrize("name", ["sigmoid", "softplus"])
def test_integer_inputs_take_numpy_float_dtype(name, dtype):
    # -|x| wraps around for unsigned integers and the most negative signed one, so the
    # stable formulas run on the float dtype that NumPy's exp gives the integer dtype.
    info = np.iinfo(dtype) if dtype != "bool" else None
    values = [0, 1, 5] if info is None or info.min == 0 else [info.min, -3, 0, 5]
    x = np.array(values, dtype=dtype) if dtype != "bool" else np.array([True, False])
    result = getattr(gf, name)(x).data
    wide = x.astype(np.float64)
    with np.errstate(over="ignore"):  # exp(2**31) is inf, and 1 / (1 + inf) is 0
        expected = 1 / (1 + np.exp(-wide)) if name == "sigmoid" else np.logaddexp(0.0, wide)
    assert result.dtype == np.result_type(x.dtype, np.float16)
    half = result.dtype == np.float16
    np.testing.assert_allclose(result.astype(np.float64), expected,
                               rtol=1e-3 if half else 1e-12, atol=1e-4 if half else 0.0)
