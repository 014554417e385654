"""The engine: paths that meet, deep graphs, freed graphs, higher order, custom operations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpuflow as gf


def quadratic(x, a, b, c):
    return a * x**2 + b * x + c


def test_quadratic_example(bk):
    inputs = [bk.array(v) for v in (3.0, 2.0, 1.0, 4.0)]
    value, grads = gf.value_and_grad(quadratic, (0, 1, 2, 3))(*inputs)
    assert bk.numpy(value) == 25.0
    assert [bk.numpy(g).item() for g in grads] == [13.0, 9.0, 3.0, 1.0]


def test_python_floats_return_arrays():
    value, gradient = gf.value_and_grad(lambda x: x * x)(3.0)
    assert isinstance(value, np.ndarray)
    assert isinstance(gradient, np.ndarray)
    assert gradient.shape == ()
    assert gradient.dtype == np.float64


def test_batch_gradient_is_elementwise(bk, rng):
    x = rng.normal(size=1000)
    gradient = gf.grad(lambda t: t**3)(bk.array(x))
    np.testing.assert_allclose(bk.numpy(gradient), 3 * x**2)


# Paths that meet.


@pytest.mark.parametrize(
    "function, derivative",
    [
        (lambda x: x * x, lambda x: 2 * x),
        (lambda x: x + x, lambda x: 2 + 0 * x),
        (lambda x: gf.exp(x) * x + x**2 - 3 * x, lambda x: np.exp(x) * (1 + x) + 2 * x - 3),
    ],
    ids=["x*x", "x+x", "three-branches"],
)
def test_fan_out_adds_paths(function, derivative, bk, rng):
    x = rng.normal(size=5)
    gradient = gf.grad(lambda t: gf.sum(function(t)))(bk.array(x))
    np.testing.assert_allclose(bk.numpy(gradient), derivative(x), rtol=1e-12)


def test_intermediate_used_three_times(bk):
    def f(x):
        y = 2.0 * x
        return y * y + y + gf.exp(y)

    gradient = gf.grad(f)(bk.array(0.5))
    assert bk.numpy(gradient) == pytest.approx(2 * (2 * 1.0 + 1 + np.exp(1.0)))


def test_chain_of_100000_operations():
    x = gf.Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0000001
    y.backward()
    assert x.grad.item() == pytest.approx(1.0000001**100_000, rel=1e-9)


def test_chain_of_100000_operations_functional():
    def f(x):
        for _ in range(50_000):
            x = gf.sigmoid(x) + x * 0.5
        return x

    gradient = gf.grad(f)(0.1)
    assert np.isfinite(gradient)


# Freed graphs and leaves.


def test_second_backward_raises():
    x = gf.Tensor(np.array(3.0), requires_grad=True)
    y = gf.exp(x) * x
    y.backward()
    with pytest.raises(gf.GraphFreedError, match="pass retain_graph=True"):
        y.backward()


def test_retain_graph_allows_second_backward():
    x = gf.Tensor(np.array(3.0), requires_grad=True)
    y = x * x
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.item() == 12.0


def test_backward_without_graph_raises():
    with pytest.raises(RuntimeError, match="create the inputs with requires_grad=True"):
        gf.Tensor(np.array(2.0)).backward()


def test_backward_with_seed():
    x = gf.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).backward(np.array([10.0, 100.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [20.0, 400.0])


def test_backward_seed_shape_mismatch():
    x = gf.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(ValueError, match=r"seed gradient has shape \(3,\) but the output"):
        (x * x).backward(np.ones(3))


def test_unconnected_input_gets_zeros(bk):
    grads = gf.grad(lambda x, z: gf.sum(x**2), (0, 1))(bk.array([1.0, 2.0]), bk.array([[5.0]]))
    np.testing.assert_array_equal(bk.numpy(grads[1]), [[0.0]])


def test_constant_output_gets_zeros():
    gradient = gf.grad(lambda x: 3.0)(np.ones(4))
    np.testing.assert_array_equal(gradient, np.zeros(4))


def test_no_grad_stops_recording():
    x = gf.Tensor(np.array(2.0), requires_grad=True)
    with gf.no_grad():
        y = x * x
    assert not y.requires_grad
    assert y.node is None


@pytest.mark.parametrize(
    "convert", [float, int, lambda t: t.item(), lambda t: t.numpy(), np.asarray],
    ids=["float", "int", "item", "numpy", "asarray"],
)
def test_leaving_graph_raises(convert):
    x = gf.Tensor(np.array(2.0), requires_grad=True)
    with pytest.raises(TypeError, match=r"would drop it from the graph.*\.detach\(\)"):
        convert(x * x)


def test_numpy_ufunc_on_tensor_is_recorded():
    gradient = gf.grad(lambda t: np.sum(np.exp(t) * np.ones(2)))(np.array([0.0, 1.0]))
    np.testing.assert_allclose(gradient, np.exp([0.0, 1.0]))


def test_unsupported_numpy_function_raises():
    with pytest.raises(TypeError, match="numpy.cumsum does not take gpuflow Tensors"):
        gf.grad(lambda t: np.cumsum(t))(np.ones(2))


@pytest.mark.parametrize("result", [(1.0, 2.0), None, "loss", [1.0]], ids=repr)
def test_function_must_return_array(result):
    with pytest.raises(TypeError, match="it must return one array or Tensor"):
        gf.grad(lambda t: result if not isinstance(result, tuple) else (t, t))(1.0)


def test_python_int_input_names_float_fix():
    with pytest.raises(TypeError, match=r"the Python int 3: .* for example 3\.0"):
        gf.grad(lambda a: a * a)(3)


def test_custom_forward_must_return_array():
    broken = gf.define_op("broken", lambda xp, x: [1, 2])
    with pytest.raises(TypeError, match="operation 'broken' returned list, not an array"):
        broken(np.ones(2))


def test_custom_gradient_shape_is_checked():
    wide = gf.define_op("wide", lambda xp, x: x, lambda g, out, x: (gf.ones_like(g)[:1] * 0,))
    wrong = gf.define_op("wrong_shape", lambda xp, x: x, lambda g, out, x: (np.ones(5),))
    assert gf.grad(lambda t: gf.sum(wide(t)))(np.ones(3)).shape == (3,)
    with pytest.raises(ValueError, match=r"'wrong_shape' returned a gradient of shape \(5,\)"):
        gf.grad(lambda t: gf.sum(wrong(t)))(np.ones(3))


def test_max_with_two_arrays_suggests_maximum():
    with pytest.raises(TypeError, match=r"use maximum\(x1, x2\)"):
        gf.max(gf.Tensor(np.ones(2)), gf.Tensor(np.ones(2)))


def test_tensor_rejects_item_assignment():
    x = gf.Tensor(np.ones(3))
    with pytest.raises(TypeError, match="does not support item assignment"):
        x[0] = 2.0


def test_tensor_copies_its_data():
    data = np.array([1.0, 2.0])
    x = gf.Tensor(data, requires_grad=True)
    data[0] = 50.0
    assert x.detach().numpy()[0] == 1.0


def test_results_do_not_alias_inputs():
    x = np.array([1.0, 2.0])
    value, gradient = gf.value_and_grad(lambda t: t, 0)(x)
    value[0] = 9.0
    assert x[0] == 1.0
    np.testing.assert_array_equal(gradient, [1.0, 1.0])
    assert gradient.dtype == np.float64
    assert gradient.flags.writeable


def test_gradients_do_not_share_memory():
    ga, gb = gf.grad(lambda a, b: gf.sum(a + b), (0, 1))(np.ones(3), np.ones(3))
    ga[0] = 5.0
    assert gb[0] == 1.0


# Higher order.

SECOND_DERIVATIVES = [
    ("sigmoid", gf.sigmoid, lambda x: (s := 1 / (1 + np.exp(-x))) * (1 - s) * (1 - 2 * s)),
    ("tanh", gf.tanh, lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2)),
    ("exp", gf.exp, np.exp),
    ("log", gf.log, lambda x: -1 / x**2),
    ("quadratic", lambda x: 2.0 * x**2 + 1.0 * x + 4.0, lambda x: 4 + 0 * x),
    ("softplus", gf.softplus, lambda x: (s := 1 / (1 + np.exp(-x))) * (1 - s)),
    ("sin", gf.sin, lambda x: -np.sin(x)),
]


@pytest.mark.parametrize("name, function, second", SECOND_DERIVATIVES, ids=lambda v: str(v))
def test_second_derivative(name, function, second, bk, rng):
    x = rng.uniform(0.3, 2.0, size=6)
    first = gf.grad(lambda t: gf.sum(function(t)))
    result = gf.grad(lambda t: gf.sum(first(t)))(bk.array(x))
    np.testing.assert_allclose(bk.numpy(result), second(x), rtol=1e-10)


def test_second_derivative_of_product(bk):
    # f = x * y: d2f/dxdy = 1, d2f/dx2 = 0.
    mixed = gf.grad(gf.grad(lambda x, y: x * y, 0), 1)(bk.array(2.0), bk.array(3.0))
    pure = gf.grad(gf.grad(lambda x, y: x * y, 0), 0)(bk.array(2.0), bk.array(3.0))
    assert bk.numpy(mixed) == 1.0
    assert bk.numpy(pure) == 0.0


def test_third_derivative():
    assert gf.grad(gf.grad(gf.grad(lambda x: x**4)))(2.0) == 48.0


def test_create_graph_on_tensors():
    x = gf.Tensor(np.array(1.5), requires_grad=True)
    y = x**3
    y.backward(create_graph=True)
    first = x.grad
    x.grad = None
    first.backward()
    assert x.grad.item() == pytest.approx(6 * 1.5)


def test_second_derivative_finite_differences(rng):
    x = rng.uniform(0.5, 1.5, size=4)
    first = gf.grad(lambda t: gf.sum(gf.sigmoid(t) * gf.log(t) * t))
    gf.check_grad(first, x)


# Custom operations.


def _cube_forward(xp, x):
    return x * x * x


def _cube_vjp(g, out, x):
    return (3 * x * x * g,)


cube = gf.define_op("cube", _cube_forward, _cube_vjp)


def test_custom_operation_gradients(bk, rng):
    x = rng.normal(size=5)
    gradient = gf.grad(lambda t: gf.sum(cube(t)))(bk.array(x))
    np.testing.assert_allclose(bk.numpy(gradient), 3 * x**2)
    gf.check_grad(lambda t: cube(t), bk.array(x))


def test_custom_operation_second_derivative():
    assert gf.grad(gf.grad(lambda t: cube(t)))(2.0) == 12.0


def test_custom_operation_wrong_gradient_detected():
    wrong = gf.define_op("wrong_cube", _cube_forward, lambda g, out, x: (2 * x * x * g,))
    with pytest.raises(gf.GradientCheckError, match=r"gradient of t differs .* at index \("):
        gf.check_grad(lambda t: wrong(t), np.array([0.5, 1.5]))


def test_custom_operation_without_gradient_rule():
    opaque = gf.define_op("opaque", lambda xp, x: x + 1)
    y = opaque(gf.Tensor(np.ones(2), requires_grad=True))
    assert not y.requires_grad


def test_custom_operation_wrong_gradient_count():
    bad = gf.define_op("bad_add", lambda xp, a, b: a + b, lambda g, out, a, b: (g,))
    with pytest.raises(ValueError, match="'bad_add' returned 1 gradients for 2 inputs"):
        gf.grad(lambda a: bad(a, a))(np.ones(2))


# dtypes.


def test_float32_with_python_float_stays_float32(bk):
    x = bk.array([1.0, 2.0], dtype="float32")
    value, gradient = gf.value_and_grad(lambda t: gf.sum(t * 0.2 + 1.5))(x)
    assert bk.dtype_name(value) == "float32"
    assert bk.dtype_name(gradient) == "float32"


def test_integer_input_raises_type_error(bk):
    x = bk.array([1, 2], dtype="int64")
    with pytest.raises(TypeError, match=r"x of dtype int64: only floating-point .* x\.astype"):
        gf.grad(lambda x: gf.sum(x * x))(x)


def test_boolean_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="mask of dtype bool"):
        gf.Tensor(np.array([True]), requires_grad=True, name="mask")


def test_empty_and_zero_dimensional(bk):
    empty = gf.grad(lambda t: gf.sum(gf.exp(t)))(bk.array(np.zeros((0, 3))))
    assert bk.numpy(empty).shape == (0, 3)
    scalar = gf.grad(lambda t: gf.sum(t))(bk.array(2.0))
    assert bk.numpy(scalar).shape == ()


def test_argnums_out_of_range():
    with pytest.raises(ValueError, match="argnums 2 is out of range"):
        gf.grad(lambda x: x, 2)(1.0)


# Stability and conventions.


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_stable_at_extremes(bk, dtype):
    x = bk.array([-1000.0, -1.0, 0.0, 1.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = gf.sigmoid(gf.Tensor(x)).numpy()
        gradient = bk.numpy(gf.grad(lambda t: gf.sum(gf.sigmoid(t)))(x))
    s1 = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(value, [0.0, 1 - s1, 0.5, s1, 1.0], rtol=1e-6)
    np.testing.assert_allclose(gradient, [0.0, s1 * (1 - s1), 0.25, s1 * (1 - s1), 0.0], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_stable_at_extremes(bk, dtype):
    x = bk.array([-1000.0, 1000.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = gf.softplus(gf.Tensor(x)).numpy()
        gradient = bk.numpy(gf.grad(lambda t: gf.sum(gf.softplus(t)))(x))
    np.testing.assert_array_equal(value, [0.0, 1000.0])
    np.testing.assert_array_equal(gradient, [0.0, 1.0])


def test_kink_conventions(bk):
    zero = bk.array([0.0])
    assert bk.numpy(gf.grad(lambda t: gf.sum(gf.abs(t)))(zero))[0] == 0.0
    assert bk.numpy(gf.grad(lambda t: gf.sum(gf.relu(t)))(zero))[0] == 0.0
    assert bk.numpy(gf.grad(lambda t: gf.sum(gf.maximum(t, 0.0)))(zero))[0] == 0.5
    assert bk.numpy(gf.grad(lambda t: gf.sum(gf.minimum(t, 0.0)))(zero))[0] == 0.5
    assert bk.numpy(gf.grad(lambda t: gf.sum(t**0))(zero))[0] == 0.0
    assert bk.numpy(gf.grad(lambda t: gf.norm(t))(bk.array([0.0, 0.0]))).tolist() == [0.0, 0.0]


def test_max_reduction_tie_splits(bk):
    gradient = gf.grad(lambda t: gf.max(t))(bk.array([1.0, 3.0, 3.0, 3.0]))
    np.testing.assert_allclose(bk.numpy(gradient), [0.0, 1 / 3, 1 / 3, 1 / 3])


def test_power_negative_base_exponent_gradient_is_nan(bk):
    grads = gf.grad(lambda a, b: gf.sum(a**b), (0, 1))(bk.array([-2.0]), bk.array([2.0]))
    assert bk.numpy(grads[0])[0] == -4.0
    assert np.isnan(bk.numpy(grads[1])[0])


def test_logsumexp_all_negative_infinity(bk):
    x = bk.array([-np.inf, -np.inf])
    value, gradient = gf.value_and_grad(lambda t: gf.logsumexp(t))(x)
    assert bk.numpy(value) == -np.inf
    np.testing.assert_array_equal(bk.numpy(gradient), [0.0, 0.0])


def test_mean_over_no_axes_is_identity(bk):
    value, gradient = gf.value_and_grad(lambda t: gf.sum(gf.mean(t, axis=())))(
        bk.array([1.0, 2.0, 3.0])
    )
    assert bk.numpy(value) == 6.0
    np.testing.assert_array_equal(bk.numpy(gradient), [1.0, 1.0, 1.0])


# The graph.


def test_trace_lists_nodes_in_topological_order():
    graph = gf.trace(quadratic, 3.0, 2.0, 1.0, 4.0)
    assert [node.output for node in graph.inputs] == ["x", "a", "b", "c"]
    assert [node.op for node in graph.nodes] == [
        "power", "multiply", "multiply", "add", "add",
    ]
    seen = {"x", "a", "b", "c"}
    for node in graph.nodes:
        assert set(node.inputs) <= seen
        seen.add(node.output)


def test_trace_prints_one_node_a_line():
    graph = gf.trace(lambda x: gf.sum(gf.sigmoid(x)), np.ones((2, 3), dtype=np.float32))
    lines = str(graph).splitlines()
    assert lines[0] == "input x : float32[2, 3]"
    assert lines[1] == "%0 = sigmoid(x) : float32[2, 3]"
    assert lines[2].startswith("%1 = sum(%0, axis=(0, 1), keepdims=False) : float32[]")
    assert lines[-1] == "return %1"


def test_eager_graph_matches_trace():
    x = gf.Tensor(np.ones(3), requires_grad=True, name="x")
    y = gf.sum(gf.exp(x) * 2.0)
    graph = gf.Graph.from_tensors([y], {id(x): "x"})
    assert [node.op for node in graph.nodes] == ["exp", "multiply", "sum"]


# Backends.


def test_environment_variable_chooses_backend(monkeypatch):
    monkeypatch.setenv("GPUFLOW_BACKEND", "array_api_strict")
    gradient = gf.grad(lambda t: t * t)(3.0)
    assert gf.backends.backend_of(gradient).name == "array_api_strict"


def test_auto_backend_without_cupy_is_numpy(monkeypatch):
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert gf.get_backend("auto").name == "numpy"
    else:
        pytest.skip("CuPy is installed; auto may choose it")


def test_cupy_without_cupy_names_extra():
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(gf.backends.BackendUnavailableError, match=r"gpuflow\[cuda12\]"):
            gf.get_backend("cupy")
    else:
        pytest.skip("CuPy is installed")


def test_unknown_backend_lists_choices():
    with pytest.raises(gf.backends.BackendUnavailableError, match="choose one of auto, numpy"):
        gf.get_backend("no_such_array_library")


def test_mixed_backends_raise():
    strict = gf.get_backend("array_api_strict")
    with pytest.raises(TypeError, match="cannot combine arrays of the array_api_strict and numpy"):
        gf.Tensor(strict.from_numpy(np.ones(2))) + np.ones(2)


def test_explicit_backend_moves_inputs():
    gradient = gf.grad(lambda t: gf.sum(t * t), backend="array_api_strict")(np.ones(2))
    assert gf.backends.backend_of(gradient).name == "array_api_strict"


# Cases found by trying to break the engine.


def test_nested_grad_through_closure():
    assert gf.grad(lambda y: gf.grad(lambda x: x * y)(2.0))(3.0) == 1.0


def test_duplicate_argnums_raise():
    with pytest.raises(ValueError, match=r"names argument 0 twice"):
        gf.grad(lambda a: gf.sum(a * a), (0, -1))(np.ones(2))


def test_numpy_integer_argnums_accepted():
    assert gf.grad(lambda a: a * a, np.int64(0))(3.0) == 6.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logsumexp_gradient_for_large_logits(bk, dtype):
    scale = 1e8 if dtype == "float32" else 1e17
    x = bk.array([scale, scale, 0.0], dtype=dtype)
    gradient = gf.grad(lambda t: gf.logsumexp(t))(x)
    np.testing.assert_allclose(bk.numpy(gradient), [0.5, 0.5, 0.0])


def test_cast_to_integer_has_no_gradient(bk):
    gradient = gf.grad(lambda t: gf.sum(gf.astype(t * 0.4, "int64")))(bk.array([1.0, 2.0]))
    np.testing.assert_array_equal(bk.numpy(gradient), [0.0, 0.0])


@pytest.mark.parametrize(
    "values, dtype", [([300.0, 400.0], "float16"), ([3e30, 4e30], "float32"),
                      ([3e-200, 4e-200], "float64")],
)
def test_norm_neither_overflows_nor_underflows(values, dtype):
    value, gradient = gf.value_and_grad(gf.norm)(np.array(values, dtype=dtype))
    np.testing.assert_allclose(value, 5 * values[0] / 3, rtol=1e-3)
    np.testing.assert_allclose(gradient, [0.6, 0.8], rtol=1e-3)


def test_concatenate_without_axis_flattens():
    out = gf.concatenate([np.ones((2, 3)), np.zeros((2, 3))], axis=None)
    assert out.shape == (12,)


def test_stack_without_axis_raises():
    with pytest.raises(TypeError, match="stack: axis must be an int, got None"):
        gf.stack([np.ones(2), np.ones(2)], axis=None)


def test_complex_constant_raises():
    with pytest.raises(TypeError, match="multiply: complex input 1j is not supported"):
        gf.grad(lambda a: gf.sum(gf.abs(a * 1j + 1)))(np.array([1.0, 2.0]))


def test_sqrt_gradient_at_negative_zero():
    assert gf.grad(gf.sqrt)(np.array(-0.0)) == np.inf


def test_iterating_tensors():
    assert [t.item() for t in gf.Tensor(np.arange(3.0))] == [0.0, 1.0, 2.0]
    with pytest.raises(TypeError, match="iteration over a 0-d Tensor"):
        list(gf.Tensor(np.array(1.0)))


def test_leaf_data_is_read_only():
    x = gf.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    with pytest.raises(ValueError, match="read-only"):
        x.data[0] = 5.0


def test_custom_gradient_of_larger_shape_raises():
    wrong = gf.define_op("wide_gradient", lambda xp, x: x, lambda g, out, x: (np.ones((4, 3)),))
    with pytest.raises(ValueError, match=r"returned a gradient of shape \(4, 3\)"):
        gf.grad(lambda t: gf.sum(wrong(t)))(np.ones(3))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_anomaly_mode_ignores_nan_inputs():
    with gf.detect_anomaly():
        gradient = gf.grad(lambda t: gf.sum(gf.log(t)))(np.array([np.nan, 1.0]))
    assert np.isnan(gradient[0])
    assert gradient[1] == 1.0


def test_backend_of_wrong_type_raises():
    with pytest.raises(TypeError, match="backend must be a name such as 'numpy'"):
        gf.grad(lambda t: t, backend=3)(1.0)


def test_define_op_checks_callables():
    with pytest.raises(TypeError, match="operation 'bad': vjp must be callable or None"):
        gf.define_op("bad", lambda xp, x: x, 3)


def test_check_grad_rejects_negative_tolerance():
    with pytest.raises(ValueError, match="check_grad: rtol must be a non-negative number"):
        gf.check_grad(lambda t: t, np.ones(2), rtol=-1.0)


def test_trace_rejects_non_array_result():
    with pytest.raises(TypeError, match="trace: the function returned NoneType"):
        gf.trace(lambda t: None, 1.0)


def test_graph_from_non_tensors_raises():
    with pytest.raises(TypeError, match="Graph.from_tensors takes Tensors, got int"):
        gf.Graph.from_tensors([3])


def test_sum_of_booleans_counts(bk):
    total = gf.sum(gf.Tensor(bk.array([1.0, -1.0, 2.0])) > 0)
    assert bk.numpy(total.data) == 2


def test_transpose_rejects_non_integer_axes():
    with pytest.raises(TypeError, match="transpose: axes must be a tuple of ints"):
        gf.transpose(np.ones((2, 3)), (0.5, 1))


def test_reshape_rejects_text_shape():
    with pytest.raises(TypeError, match="reshape: shape must be a tuple of ints"):
        gf.reshape(np.ones(4), "ab")


def test_tanh_at_float_maximum_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradient = gf.grad(lambda t: gf.sum(gf.tanh(t)))(np.array([1e308, -1e308]))
    np.testing.assert_array_equal(gradient, [0.0, 0.0])
