"""Tests of gpuflow.compile: tracing, the plan passes, NumPy execution and CUDA code generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuflow as gf
from gpuflow.compile import explain, generated_cuda_source, passes
from gpuflow.compile.plan import trace_plan
from kernel_host import nvrtc_compile

NUMPY = gf.get_backend("numpy")


def quadratic(x, a, b, c):
    return a * x**2 + b * x + c


# Random expressions: a tree of operations over the inputs, kept in safe domains.

_UNARY = ("exp", "tanh", "sigmoid", "square", "sqrt", "sin", "softplus", "abs", "log1p")
_BINARY = ("add", "subtract", "multiply", "divide", "maximum", "where")


def _expressions(count):
    leaves = st.integers(0, count - 1).map(lambda index: ("input", index))

    def extend(children):
        unary = st.tuples(st.sampled_from(_UNARY), children)
        binary = st.tuples(st.sampled_from(_BINARY), children, children)
        return unary | binary

    return st.recursive(leaves, extend, max_leaves=6)


def _evaluate(tree, inputs):
    kind = tree[0]
    if kind == "input":
        return inputs[tree[1]]
    operands = [_evaluate(child, inputs) for child in tree[1:]]
    if kind == "exp":
        return gf.exp(gf.tanh(operands[0]))
    if kind == "tanh":
        return gf.tanh(operands[0])
    if kind == "sigmoid":
        return gf.sigmoid(operands[0])
    if kind == "square":
        return gf.square(operands[0])
    if kind == "sqrt":
        return gf.sqrt(operands[0] * operands[0] + 1.0)
    if kind == "sin":
        return gf.sin(operands[0])
    if kind == "softplus":
        return gf.softplus(operands[0])
    if kind == "abs":
        return gf.abs(operands[0])
    if kind == "log1p":
        return gf.log1p(operands[0] * operands[0])
    first, second = operands
    if kind == "add":
        return first + second
    if kind == "subtract":
        return first - second
    if kind == "multiply":
        return first * second
    if kind == "divide":
        return first / (second * second + 1.0)
    if kind == "maximum":
        return gf.maximum(first, second)
    return gf.where(first > second, first, second * 2.0)


def _function_of(tree, count):
    def function(*inputs):
        return _evaluate(tree, inputs[:count])

    return function


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 3),
    data=st.data(),
    size=st.sampled_from([1, 7]),
    seed=st.integers(0, 2**16),
)
def test_compiled_matches_eager(count, data, size, seed):
    tree = data.draw(_expressions(count))
    rng = np.random.default_rng(seed)
    inputs = [rng.uniform(-2.0, 2.0, size) for _ in range(count)]
    _check_compiled(_function_of(tree, count), inputs, rtol=1e-10)


def test_quadratic_matches_eager():
    x = np.linspace(-1.0, 2.0, 11)
    compiled = gf.compile(quadratic, (0, 1, 2, 3))(x, 2.0, 1.0, 4.0)
    eager = gf.value_and_grad(quadratic, (0, 1, 2, 3))(x, 2.0, 1.0, 4.0)
    np.testing.assert_allclose(compiled[0], eager[0], rtol=1e-12)
    for got, expected in zip(compiled[1], eager[1]):
        np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("x", [3.0, np.linspace(0.0, 1.0, 1000)])
def test_quadratic_is_one_region(x):
    compiled = gf.compile(quadratic, (0, 1, 2, 3))
    compiled(x, 2.0, 1.0, 4.0)
    regions = compiled.plan.regions
    assert len(regions) == 1, explain(compiled.plan)
    assert regions[0].fused


def _traced(function, args, argnums):
    names = [f"x{position}" for position in range(len(args))]
    arrays = [np.asarray(value, dtype=np.float64) for value in args]
    plan, _ = trace_plan(function, arrays, argnums, names, NUMPY)
    return plan


def test_dead_code_removes_unused_gradient():
    def product(x, y):
        return gf.exp(x) * gf.sin(y)

    plan = _traced(product, [0.5, 0.25], (0, 1))
    without_y = plan.replace(outputs=plan.outputs[:2], output_names=plan.output_names[:2])
    pruned = passes.eliminate_dead_code(without_y)
    assert "cos" in [step.name for step in plan.steps]
    assert "cos" not in [step.name for step in pruned.steps]
    assert len(pruned.steps) < len(plan.steps)


def test_dead_code_removes_unused_forward():
    def wasteful(x):
        gf.log(x)
        return gf.exp(x)

    plan = passes.eliminate_dead_code(_traced(wasteful, [0.5], (0,)))
    assert "log" not in [step.name for step in plan.steps]


def test_common_subexpressions_merge():
    def repeated(x):
        return gf.exp(x * 2.0) + gf.exp(x * 2.0)

    plan = _traced(repeated, [0.5], (0,))
    before = [step.name for step in plan.steps].count("exp")
    merged = passes.eliminate_common_subexpressions(plan)
    after = [step.name for step in merged.steps].count("exp")
    assert before == 2
    assert after == 1


def test_folding_removes_seed_multiplications():
    plan = _traced(lambda x: gf.exp(x), [np.ones(4)], (0,))
    seed_uses = [
        step for step in plan.steps if any(slot in plan.constants for slot in step.inputs)
    ]
    assert seed_uses, "the traced backward pass should multiply by the seed"
    folded = passes.fold_constants(plan)
    assert [step.name for step in folded.steps] == ["exp"]
    assert folded.outputs[0] == folded.outputs[1]


def test_folding_evaluates_constant_steps():
    plan = _traced(lambda x: x * (gf.exp(np.asarray(0.0)) + 1.0), [0.5], (0,))
    assert "exp" in [step.name for step in plan.steps]
    folded = passes.fold_constants(plan)
    assert "exp" not in [step.name for step in folded.steps]
    assert all(any(slot not in folded.constants for slot in step.inputs)
               for step in folded.steps)


def test_new_signature_traces_again():
    compiled = gf.compile(gf.sigmoid)
    compiled(np.zeros(3))
    compiled(np.ones(3))
    assert compiled.traces == 1
    compiled(np.zeros(4))
    assert compiled.traces == 2
    compiled(np.zeros(4, dtype=np.float32))
    assert compiled.traces == 3
    compiled(np.zeros(3))
    assert compiled.traces == 3


def test_graph_and_plan_print():
    compiled = gf.compile(quadratic, (0, 1, 2, 3))
    compiled(3.0, 2.0, 1.0, 4.0)
    assert "power(x, exponent=2)" in str(compiled.graph)
    assert "return value=" in str(compiled.plan)
    assert "region 0 (fused" in explain(compiled.plan)


def test_comparison_replays_on_new_values():
    relu_like = gf.compile(lambda x: gf.where(x > 0.0, x, 0.0 * x))
    first = relu_like(np.array([1.0, -1.0]))
    second = relu_like(np.array([-1.0, 1.0]))
    np.testing.assert_array_equal(first[1], [1.0, 0.0])
    np.testing.assert_array_equal(second[1], [0.0, 1.0])


def test_buffers_are_reused():
    compiled = gf.compile(lambda x: gf.sum(gf.exp(((x + 1.0) * 2.0 - 3.0) / 4.0)))
    compiled(np.ones(100))
    program = compiled.cache[next(iter(compiled.cache))][2]
    assert program.pool_bytes() == 100 * 8


def test_results_are_not_shared():
    compiled = gf.compile(lambda x: x * 1.0)
    x = np.ones(3)
    value, gradient = compiled(x)
    assert value is not x
    assert not np.shares_memory(value, gradient)


CUDA_FUNCTIONS = {
    "quadratic": (quadratic, (0, 1, 2, 3), lambda dtype: (np.ones(8, dtype), 2.0, 1.0, 4.0)),
    "sigmoid": (lambda x: gf.sigmoid(x), 0, lambda dtype: (np.ones(8, dtype),)),
    "root": (
        lambda a, b, c: (-b + gf.sqrt(b**2 - 4 * a * c)) / (2 * a),
        (0, 1, 2),
        lambda dtype: tuple(np.full(8, value, dtype) for value in (1.0, 5.0, 1.0)),
    ),
    "mixed": (
        lambda x, y: gf.mean(gf.where(x > y, gf.tanh(x), gf.maximum(x, y) / (y * y + 1.0))),
        (0, 1),
        lambda dtype: (np.ones(8, dtype), np.zeros(8, dtype)),
    ),
}


@pytest.mark.parametrize("architecture", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CUDA_FUNCTIONS))
def test_generated_source_compiles(name, dtype, architecture):
    function, argnums, make_args = CUDA_FUNCTIONS[name]
    compiled = gf.compile(function, argnums)
    compiled(*make_args(dtype))
    source = generated_cuda_source(compiled.plan)
    options = ["--std=c++14", f"--gpu-architecture={architecture}", "-Werror=all-warnings"]
    result = nvrtc_compile(source, f"{name}.cu", options)
    assert result.succeeded, f"NVRTC {result.status}:\n{result.log}\n{source}"
    assert result.log == "", f"NVRTC log:\n{result.log}"
    for index, region in enumerate(compiled.plan.regions):
        if region.fused:
            assert f".entry gpuflow_region{index}" in result.ptx


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(1, 3),
    data=st.data(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_random_expression_source_compiles(count, data, dtype):
    tree = data.draw(_expressions(count))
    function = _function_of(tree, count)
    compiled = gf.compile(lambda *args: gf.sum(function(*args)), tuple(range(count)))
    compiled(*[np.linspace(0.5, 1.5, 8).astype(dtype) for _ in range(count)])
    source = generated_cuda_source(compiled.plan)
    options = ["--std=c++14", "--gpu-architecture=sm_90", "-Werror=all-warnings"]
    result = nvrtc_compile(source, "random.cu", options)
    assert result.succeeded, f"NVRTC {result.status}:\n{result.log}\n{source}"
    assert result.log == "", f"NVRTC log:\n{result.log}"


def _run_command(capsys, *arguments):
    from gpuflow.cli.main import main

    status = main(["grad", *arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_command_compiled_matches_eager(capsys):
    arguments = ["a*x**2 + b*x + c", "x=1,2,3", "a=2", "b=1", "c=4", "--json"]
    status, compiled, _ = _run_command(capsys, *arguments, "--compile")
    eager_status, eager, _ = _run_command(capsys, *arguments, "--no-compile")
    assert status == 0
    assert eager_status == 0
    assert json.loads(compiled) == json.loads(eager)


def test_command_explain_prints_regions(capsys):
    status, out, _ = _run_command(capsys, "a*x**2 + b*x + c", "x=1,2,3", "a=2", "b=1", "c=4",
                                  "--explain")
    assert status == 0
    assert out.startswith("1 region(s)")
    assert "bytes:" in out
    assert "grad x:" in out


def test_command_explain_with_json_uses_stderr(capsys):
    status, out, err = _run_command(capsys, "sigmoid(x)", "x=1,2", "--explain", "--json")
    assert status == 0
    assert "region 0" in err
    assert json.loads(out)["grad"]["x"]


def test_command_compiles_by_default(capsys, monkeypatch):
    calls = []
    original = gf.compile

    def recording(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(gf, "compile", recording)
    status, out, _ = _run_command(capsys, "x*x", "x=1,2")
    assert status == 0
    assert len(calls) == 1
    assert "grad x: [2. 4.]" in out
    status, _, _ = _run_command(capsys, "x*x", "x=1,2", "--no-compile")
    assert status == 0
    assert len(calls) == 1


@pytest.mark.parametrize(
    "options, message",
    [
        (["--explain", "--no-compile"], "--explain cannot be combined with --no-compile"),
        (["--compile", "--detect-anomaly"], "--compile cannot be combined with --detect-anomaly"),
        (["--explain", "--chunk-size", "2"], "--explain cannot be combined with --chunk-size"),
    ],
)
def test_command_rejects_compile_with_eager_options(capsys, options, message):
    status, _, err = _run_command(capsys, "x*x", "x=1,2,3", *options)
    assert status == 2
    assert message in err


def test_sigmoid_gradient_becomes_one_step():
    plan = passes.optimize(_traced(gf.sigmoid, [np.linspace(-3.0, 3.0, 5)], (0,)))
    names = [step.name for step in plan.steps]
    assert names == ["sigmoid", "sigmoid_partial"]


def test_compile_inside_grad_runs_eagerly():
    compiled = gf.compile(gf.exp)

    def outer(x):
        value, gradient = compiled(x * 2.0)
        return value * gradient

    # d/dx exp(2x) * exp(2x) = 4 exp(4x)
    np.testing.assert_allclose(gf.grad(outer)(0.3), 4.0 * np.exp(1.2), rtol=1e-12)
    assert compiled.traces == 0


def test_compile_inside_compile_runs_eagerly():
    inner = gf.compile(lambda t, s: gf.sum(gf.sin(t) * s), 0)
    outer = gf.compile(lambda t, s: inner(t * s, s)[0] + gf.sum(inner(t, s)[1]), (0, 1))
    function = lambda t, s: gf.sum(gf.sin(t * s) * s) + gf.sum(gf.cos(t) * s)  # noqa: E731
    _check_compiled_pair(outer, function, [np.linspace(0.0, 1.0, 7), np.array(1.5)], (0, 1))


def test_grad_inside_compile_records_its_backward():
    # The inner gradient is taken with respect to s, which the compiled function does
    # not differentiate, so it must be replayed by the plan, not kept as a constant.
    def function(t, s):
        inner = gf.grad(lambda u: gf.sum(gf.sin(u * t)))(s)
        return gf.sum(inner * t)

    compiled = gf.compile(function)
    for s in (0.5, 1.5):
        args = [np.linspace(0.0, 1.0, 5), np.array(s)]
        _check_compiled_pair(compiled, function, args, 0)


def _check_compiled_pair(compiled, function, args, argnums):
    value, grads = compiled(*args)
    expected_value, expected_grads = gf.value_and_grad(function, argnums)(*args)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12)
    grads = grads if isinstance(grads, tuple) else (grads,)
    expected_grads = expected_grads if isinstance(expected_grads, tuple) else (expected_grads,)
    for got, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)


def test_static_argument_traces_again():
    compiled = gf.compile(lambda x, power: x**power)
    first = compiled(np.array([2.0]), 2)
    second = compiled(np.array([2.0]), 3)
    assert compiled.traces == 2
    np.testing.assert_allclose(first[1], [4.0])
    np.testing.assert_allclose(second[1], [12.0])


def test_array_api_strict_runs_step_by_step():
    strict = pytest.importorskip("array_api_strict")
    x = strict.asarray([0.5, -1.0, 2.0])
    compiled = gf.compile(quadratic, (0, 1))
    value, (gx, ga) = compiled(x, strict.asarray(2.0), 1.0, 4.0)
    expected_value, (expected_gx, expected_ga) = gf.value_and_grad(quadratic, (0, 1))(
        x, strict.asarray(2.0), 1.0, 4.0
    )
    np.testing.assert_allclose(np.asarray(value), np.asarray(expected_value), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(expected_gx), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(ga), np.asarray(expected_ga), rtol=1e-12)


def test_mean_over_no_axes_matches_eager():
    # mean over no axes returns its input itself, which must not share a reused buffer.
    x = np.array(0.5)
    function = lambda t: gf.mean(gf.tanh(t))  # noqa: E731
    expected = gf.value_and_grad(function)(x)
    value, gradient = gf.compile(function)(x)
    np.testing.assert_allclose(value, expected[0], rtol=1e-12)
    np.testing.assert_allclose(gradient, expected[1], rtol=1e-12)


def test_container_with_array_argument_raises():
    compiled = gf.compile(lambda a, ws: gf.sum(a * ws[0]), 0)
    with pytest.raises(TypeError, match="cannot be part of a compiled signature"):
        compiled(np.ones(3), (np.zeros(3),))


def test_keyword_arguments_are_static():
    compiled = gf.compile(lambda t, scale=1.0: gf.sum(t * scale), 0)
    first = compiled(np.ones(2), scale=3.0)
    second = compiled(np.ones(2), scale=5.0)
    third = compiled(np.ones(2), scale=3.0)
    assert compiled.traces == 2
    np.testing.assert_allclose(first[1], [3.0, 3.0])
    np.testing.assert_allclose(second[1], [5.0, 5.0])
    np.testing.assert_allclose(third[0], 6.0)


def test_array_keyword_argument_raises():
    with pytest.raises(TypeError, match="keyword argument s of type ndarray cannot be part"):
        gf.compile(lambda t, s: t * s, 0)(np.ones(2), s=np.ones(2))


# Blocked execution: small blocks, so that regions span many blocks and end in a partial one.


@pytest.fixture
def small_blocks(monkeypatch):
    from gpuflow.compile import numpy_exec

    monkeypatch.setattr(numpy_exec, "BLOCK", 5)


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(1, 3),
    data=st.data(),
    shape=st.sampled_from([(23,), (4, 6), (5,)]),
    seed=st.integers(0, 2**16),
)
def test_blocked_regions_match_eager(count, data, shape, seed):
    from gpuflow.compile import numpy_exec

    tree = data.draw(_expressions(count))
    rng = np.random.default_rng(seed)
    inputs = [rng.uniform(-2.0, 2.0, shape) for _ in range(count)]
    function = _function_of(tree, count)
    previous, numpy_exec.BLOCK = numpy_exec.BLOCK, 5
    try:
        _check_compiled(lambda *args: gf.sum(function(*args)), inputs, rtol=1e-10)
    finally:
        numpy_exec.BLOCK = previous


def _fused_regions(compiled):
    from gpuflow.compile.numpy_exec import _BlockedRegion

    program = compiled.cache[next(iter(compiled.cache))][2]
    return [unit for unit in program.units if isinstance(unit, _BlockedRegion)]


def test_quadratic_is_one_blocked_region(small_blocks):
    compiled = gf.compile(lambda x, a, b, c: gf.sum(quadratic(x, a, b, c)), (0, 1, 2, 3))
    x = np.linspace(-1.0, 2.0, 23)
    value, (gx, ga, gb, gc) = compiled(x, 2.0, 1.0, 4.0)
    (region,) = _fused_regions(compiled)
    assert region.block == 5
    np.testing.assert_allclose(value, np.sum(2.0 * x**2 + x + 4.0), rtol=1e-13)
    np.testing.assert_allclose(gx, 4.0 * x + 1.0, rtol=1e-13)
    np.testing.assert_allclose([ga, gb, gc], [np.sum(x**2), np.sum(x), 23.0], rtol=1e-13)


def test_broadcast_sums_count_every_element(small_blocks):
    # Inside a block a broadcast of one value is that value, so its sum is value * count.
    def function(x, b):
        wide = gf.broadcast_to(b, (23,))
        return gf.sum(wide) + 10.0 * gf.mean(wide) + gf.sum(gf.exp(x))

    x = np.linspace(0.0, 1.0, 23)
    compiled = gf.compile(function, (0, 1))
    value, (gx, gb) = compiled(x, 3.0)
    assert [step.name for step in compiled.plan.steps][:3] == ["broadcast_to", "sum", "mean"]
    np.testing.assert_allclose(value, 23 * 3.0 + 10 * 3.0 + np.sum(np.exp(x)), rtol=1e-13)
    np.testing.assert_allclose(gx, np.exp(x), rtol=1e-13)
    np.testing.assert_allclose(gb, 23.0 + 10.0, rtol=1e-13)


def test_non_contiguous_inputs_match_eager(small_blocks):
    x = np.arange(60.0).reshape(6, 10)[:, ::2]
    compiled = gf.compile(lambda t: gf.sum(gf.tanh(t * 0.1) * t))
    value, gradient = compiled(x)
    expected_value, expected_gradient = gf.value_and_grad(lambda t: gf.sum(gf.tanh(t * 0.1) * t))(x)
    np.testing.assert_allclose(value, expected_value, rtol=1e-13)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-13)


def test_region_output_feeds_a_later_step(small_blocks):
    # The elementwise part writes a whole array from a pool; matmul then reads it.
    w = np.random.default_rng(3).standard_normal((4, 3))
    function = lambda x: gf.sum(gf.matmul(gf.exp(x * 0.5) + x, w))  # noqa: E731
    x = np.random.default_rng(4).standard_normal((6, 4))
    value, gradient = gf.compile(function)(x)
    expected_value, expected_gradient = gf.value_and_grad(function)(x)
    np.testing.assert_allclose(value, expected_value, rtol=1e-13)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-13)


def test_float32_block_sums_use_float64(small_blocks):
    x = np.full(1001, 0.1, dtype=np.float32)
    value, gradient = gf.compile(lambda t: gf.sum(t * 3.0))(x)
    assert value.dtype == np.float32
    assert value.shape == ()
    np.testing.assert_allclose(value, 3.0 * 1001 * np.float64(np.float32(0.1)), rtol=1e-7)
    np.testing.assert_array_equal(gradient, np.full(1001, 3.0, dtype=np.float32))


def test_block_buffers_ignore_batch_size():
    from gpuflow.compile import numpy_exec

    compiled = gf.compile(lambda x: gf.sum(gf.sigmoid(x)))
    compiled(np.zeros(3 * numpy_exec.BLOCK + 1))
    program = compiled.cache[next(iter(compiled.cache))][2]
    # sigmoid and its partial need at most two values and two scratch buffers per block.
    assert program.pool_bytes() <= 4 * numpy_exec.BLOCK * 8


def test_block_must_be_positive():
    from gpuflow.compile.numpy_exec import NumpyProgram

    plan = _traced(lambda x: gf.exp(x), [np.ones(3)], (0,))
    with pytest.raises(ValueError, match="block must be a positive number"):
        NumpyProgram(passes.optimize(plan), block=0)


# The passes that shrink uniform constants and absorb negations.


def test_seed_becomes_scalar_broadcast():
    plan = passes.optimize(_traced(lambda a: gf.sum(1.0 / a), [np.linspace(1.0, 2.0, 40)], (0,)))
    large = [slot for slot, array in plan.constants.items() if np.size(array) > 16]
    assert large == [], str(plan)


def test_uniform_constants_keep_zero_sign():
    backend = NUMPY
    assert passes._uniform_value(backend, np.array([0.0, -0.0] * 10)) is None
    assert float(passes._uniform_value(backend, np.full(20, -0.0))) == 0.0
    assert np.signbit(passes._uniform_value(backend, np.full(20, -0.0)))
    assert passes._uniform_value(backend, np.arange(20.0)) is None


@pytest.mark.parametrize(
    "function",
    [
        lambda a, b: -a + b,
        lambda a, b: a + -b,
        lambda a, b: a - -b,
        lambda a, b: -(-a) * b,
        lambda a, b: (-a) * 3.0 + b,
        lambda a, b: (-a / b) * 3.0,
        lambda a, b: 2.0 * (-a * b),
    ],
)
def test_negations_fold_bitwise_exactly(function):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(9), rng.uniform(1.0, 2.0, 9)
    plan = passes.optimize(_traced(function, [a, b], (0,)))
    forward = [step.name for step in plan.steps if step.output <= plan.outputs[0]]
    assert "negative" not in forward, str(plan)
    value, gradient = gf.compile(function)(a, b)
    expected_value, expected_gradient = gf.value_and_grad(function)(a, b)
    np.testing.assert_array_equal(value, expected_value)
    np.testing.assert_array_equal(gradient, expected_gradient)


def test_shared_quotient_keeps_negation():
    # (-a / b) is read twice, so taking the sign out would compute a / b as well.
    function = lambda a, b: (-a / b) * 3.0 + (-a / b)  # noqa: E731
    a, b = np.linspace(1.0, 2.0, 5), np.linspace(2.0, 3.0, 5)
    value, grads = gf.compile(function, (0, 1))(a, b)
    expected_value, expected_grads = gf.value_and_grad(function, (0, 1))(a, b)
    np.testing.assert_array_equal(value, expected_value)
    np.testing.assert_allclose(grads[0], expected_grads[0], rtol=1e-15)


# Tracing on placeholders: shapes and dtypes without values.


def test_trace_runs_elementwise_on_one_element():
    seen = []

    def forward(xp, x):
        seen.append(tuple(x.shape))
        return xp.exp(x)

    exp_like = gf.define_op("exp_like", forward, lambda g, out, x: (g * out,), elementwise=True)
    compiled = gf.compile(lambda t: gf.sum(exp_like(t * 2.0)))
    x = np.linspace(-1.0, 1.0, 1000)
    value, gradient = compiled(x)
    traced = seen[: seen.index((1000,))] if (1000,) in seen else seen
    assert traced and all(shape == () for shape in traced), seen
    np.testing.assert_allclose(value, np.sum(np.exp(2.0 * x)), rtol=1e-13)
    np.testing.assert_allclose(gradient, 2.0 * np.exp(2.0 * x), rtol=1e-13)


@pytest.mark.parametrize(
    "function, what",
    [
        (lambda t: gf.sum(t * np.exp(t.data)), "numpy.exp"),
        (lambda t: gf.sum(t * gf.Tensor(t)), r"gpuflow.Tensor\(...\)"),
        (lambda t: gf.sum(t * t.data), r"multiply on the .data of a traced Tensor"),
        (lambda t: gf.sum(t) * float(t.detach()), r"float\(\)"),
        (lambda t: gf.sum(t) * t.data[0], "indexing"),
        (lambda t: gf.sum(t) * np.asarray(t.data).sum(), "converting to a NumPy array"),
        (lambda t: gf.sum(t) * t.data.max(), r"the array method max\(\)"),
        (lambda t: gf.sum(t) * (t.data + 1.0), "the operator add"),
    ],
)
def test_reading_traced_values_raises(function, what):
    with pytest.raises(TypeError, match=f"compile: {what}.*placeholders that hold no values"):
        gf.compile(function)(np.linspace(1.0, 2.0, 5))


def test_printed_tracer_shows_placeholder(capsys):
    def function(t):
        print(t)
        return gf.sum(t)

    gf.compile(function)(np.ones(3))
    assert "<placeholder float64[3]>" in capsys.readouterr().out


def test_compiled_graph_draws_without_values():
    compiled = gf.compile(lambda x, a: gf.sum(a * x**2), (0, 1))
    compiled(np.ones(4), 2.0)
    drawn = compiled.graph.to_dot()
    assert "power" in drawn
    assert drawn == compiled.graph.to_dot(values=False)
    eager = gf.trace(lambda x, a: gf.sum(a * x**2), np.ones(4), 2.0).to_dot()
    assert eager != gf.trace(lambda x, a: gf.sum(a * x**2), np.ones(4), 2.0).to_dot(values=False)


def test_anomaly_mode_runs_eagerly():
    compiled = gf.compile(lambda t: gf.sum(gf.log(t)))
    compiled(np.array([1.0, 2.0]))  # traced outside anomaly mode
    with gf.detect_anomaly(), np.errstate(divide="ignore"):
        with pytest.raises(FloatingPointError, match="log"):
            compiled(np.array([1.0, 0.0]))
    assert compiled.traces == 1


# Every operation traced on placeholders: compiled against eager, on random inputs.

from op_specs import BINARY, BROADCAST_SHAPES, UNARY  # noqa: E402


def _check_compiled(function, inputs, rtol=1e-12):
    argnums = tuple(range(len(inputs)))
    value, grads = gf.compile(function, argnums)(*inputs)
    expected_value, expected_grads = gf.value_and_grad(function, argnums)(*inputs)
    np.testing.assert_allclose(value, expected_value, rtol=rtol, atol=1e-12)
    for got, expected in zip(grads, expected_grads):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("spec", UNARY, ids=lambda spec: spec.name)
def test_every_unary_operation_compiles(spec):
    x = spec.domain(np.random.default_rng(7), (3, 4))
    _check_compiled(lambda t: gf.sum(spec.function(t) * t), [x])


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=str)
@pytest.mark.parametrize("spec", BINARY, ids=lambda spec: spec.name)
def test_every_binary_operation_compiles(spec, shapes):
    rng = np.random.default_rng(8)
    a, b = (domain(rng, shape) for domain, shape in zip(spec.domains, shapes))
    _check_compiled(lambda s, t: gf.sum(spec.function(s, t)), [a, b])


STRUCTURAL = {
    "sum_axis": lambda t: gf.sum(gf.sum(t, axis=1) ** 2),
    "mean_keepdims": lambda t: gf.sum(gf.mean(t, axis=0, keepdims=True) * t),
    "max": lambda t: gf.sum(gf.max(t, axis=1)),
    "min": lambda t: gf.sum(gf.min(t, axis=0)),
    "logsumexp": lambda t: gf.sum(gf.logsumexp(t, axis=1)),
    "norm": lambda t: gf.norm(t),
    "matmul": lambda t: gf.sum(gf.matmul(t, gf.transpose(t))),
    "matrix_transpose": lambda t: gf.sum(gf.matrix_transpose(t) * 2.0),
    "reshape": lambda t: gf.sum(gf.reshape(t, (4, 3)) * np.arange(12.0).reshape(4, 3)),
    "getitem": lambda t: gf.sum(gf.getitem(t, (slice(None), 1)) * t[0, :3]),
    "concatenate": lambda t: gf.sum(gf.concatenate([t, t * t], axis=0) ** 2),
    "stack": lambda t: gf.sum(gf.stack([t, gf.exp(t)]) ** 2),
    "flip": lambda t: gf.sum(gf.flip(t, axis=1) * np.arange(12.0).reshape(3, 4)),
    "expand_squeeze": lambda t: gf.sum(gf.squeeze(gf.expand_dims(t, 0), 0) ** 3),
    "broadcast_to": lambda t: gf.sum(gf.broadcast_to(gf.sum(t, axis=0), (2, 4)) ** 2),
    "where": lambda t: gf.sum(gf.where(t > 0.0, t * t, -t)),
    "clip": lambda t: gf.sum(gf.clip(t, -0.5, 0.5) * t),
    "sign": lambda t: gf.sum(gf.sign(t) * t * t),
    "astype": lambda t: gf.sum(gf.astype(t, "float32") * 2.0),
    "multiply_add": lambda t: gf.sum(gf.multiply_add(t, t, 1.0)),
    "comparisons": lambda t: gf.sum(gf.where(gf.logical_and(t < 1.0, t >= -1.0), t, 0.0 * t)),
}


@pytest.mark.parametrize("name", sorted(STRUCTURAL))
def test_every_structural_operation_compiles(name):
    x = np.random.default_rng(9).uniform(-2.0, 2.0, (3, 4))
    rtol = 1e-6 if name == "astype" else 1e-12
    _check_compiled(STRUCTURAL[name], [x], rtol=rtol)


# Cases where a compiled plan once differed from eager evaluation.


def _broadcast_of_reused_buffer(x):
    t = gf.cos(gf.sum(x))
    m = gf.flip(x)
    b = gf.flip(gf.broadcast_to(t, (4,)))
    return gf.sum(b * m)


@pytest.mark.parametrize(
    "function, args",
    [
        # A sum of one element, in a region that then grows to the batch's shape.
        (lambda x, b: gf.sum(gf.exp(b)) + gf.sum(x * x), (np.array([1.0, -2.0, 3.0, 0.5]),
                                                          np.array([0.5]))),
        (lambda x: gf.sum(gf.sin(gf.max(x, axis=0, keepdims=True))),
         (np.array([1.0, -2.0, 3.0, 0.5]),)),
        # softplus has no out= kernel, so inside a block its input is one broadcast value.
        (lambda x, a: gf.sum(gf.softplus(a * gf.ones_like(x))), (np.zeros(100_000), 0.3)),
        # A broadcast of a value that lives in a reused buffer.
        (_broadcast_of_reused_buffer, (np.array([1.0, -2.0, 3.0, 0.5]),)),
        # x + 0.0 is not x at -0.0.
        (lambda y: gf.norm(y + gf.zeros_like(y)), (np.array([-0.0, 3.0]),)),
        (lambda y: gf.sum(gf.sqrt(gf.square(y) + 0.0) * 0.0 + (y + 0.0)), (np.array([-0.0, 2.0]),)),
        # detach replays on new values instead of freezing the traced one.
        (lambda x: gf.sum(x / gf.max(x).detach()), (np.array([1.0, -2.0, 3.0]),)),
    ],
)
def test_compiled_matches_eager_in_edge_cases(small_blocks, function, args):
    argnums = tuple(range(len(args)))
    compiled = gf.compile(function, argnums)
    for scale in (1.0, 2.0):
        scaled = [np.asarray(arg) * scale for arg in args]
        value, grads = compiled(*scaled)
        expected_value, expected_grads = gf.value_and_grad(function, argnums)(*scaled)
        np.testing.assert_allclose(value, expected_value, rtol=1e-12)
        assert np.signbit(value) == np.signbit(expected_value)
        for got, expected in zip(grads, expected_grads):
            np.testing.assert_allclose(got, expected, rtol=1e-12)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))


@pytest.mark.parametrize(
    "function, what",
    [
        (lambda t: gf.sum(t) * float(gf.sum(t).detach()), r"float\(\)"),
        (lambda t: gf.sum(t) * 10.0 if gf.sum(t) > 1.6 else gf.sum(t), r"bool\(\)"),
        (lambda t: gf.sum(t) * np.exp(gf.sum(t).data), "numpy.exp"),
        (lambda t: gf.sum(t) * (t.data == t.data), "the operator =="),
    ],
)
def test_reductions_of_traced_values_are_placeholders(function, what):
    with pytest.raises(TypeError, match=f"compile: {what}"):
        gf.compile(function)(np.array([1.0, -2.0, 3.0]))


@pytest.mark.parametrize(
    "function, args",
    [
        (lambda x, i: gf.sum(x[i]), (np.array([1.0, 2.0]), np.array([0, 1, 1]))),
        (lambda x: gf.sum(x[x > 0.0]), (np.array([1.0, -2.0]),)),
    ],
)
def test_tensor_indices_raise(function, args):
    with pytest.raises(TypeError, match="indexing with a Tensor .* is not supported"):
        gf.compile(function)(*args)


def test_shape_of_traced_data_is_readable():
    value, gradient = gf.compile(lambda t: gf.sum(t) * np.shape(t.data)[0])(np.ones(3))
    np.testing.assert_allclose(value, 9.0)
    np.testing.assert_allclose(gradient, [3.0, 3.0, 3.0])


def test_user_operation_returning_a_number_raises():
    bad = gf.define_op("bad", lambda xp, x: 1.0, lambda g, out, x: (g,), elementwise=True)
    with pytest.raises(TypeError, match="forward function of operation 'bad' returned float"):
        gf.compile(lambda t: gf.sum(bad(t)))(np.ones(3))


def test_user_operation_that_is_not_elementwise_raises():
    bad = gf.define_op("bad", lambda xp, x: xp.stack([x, x]), lambda g, out, x: (g[0],),
                       elementwise=True)
    with pytest.raises(ValueError, match="bad: the operation is defined as elementwise"):
        gf.compile(lambda t: gf.sum(bad(t)))(np.ones(3))


def test_threads_get_their_own_buffers():
    from concurrent.futures import ThreadPoolExecutor

    compiled = gf.compile(lambda x: gf.sum(gf.exp(x) * x))
    rng = np.random.default_rng(11)
    batches = [rng.standard_normal(200_000) for _ in range(8)]
    compiled(batches[0])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(compiled, batches * 3))
    for batch, (value, gradient) in zip(batches * 3, results):
        np.testing.assert_allclose(value, np.sum(np.exp(batch) * batch), rtol=1e-12)
        np.testing.assert_allclose(gradient, np.exp(batch) * (batch + 1.0), rtol=1e-12, atol=1e-12)


def test_traced_matmul_uses_contiguous_operands():
    w = np.random.default_rng(12).standard_normal((3, 2))
    x = np.random.default_rng(13).standard_normal((5000, 3))
    _check_compiled(lambda t: gf.sum(gf.matmul(t, w)), [x])


@pytest.mark.parametrize(
    "left, right",
    [((4,), (4,)), ((4,), (4, 3)), ((2, 4), (4,)), ((2, 3, 4), (4, 5)), ((1, 2, 4), (3, 4, 2))],
    ids=str,
)
def test_traced_matmul_shapes_match_eager(left, right):
    rng = np.random.default_rng(14)
    a, b = rng.standard_normal(left), rng.standard_normal(right)
    _check_compiled(lambda s, t: gf.sum(gf.matmul(s, t) ** 2), [a, b])


def test_numpy_float_argument_is_a_number():
    x = np.arange(3, dtype=np.float32)
    function = lambda t, s: gf.sum(t * s)  # noqa: E731
    value, gradient = gf.compile(function)(x, np.float64(1.1))
    expected_value, expected_gradient = gf.value_and_grad(function)(x, np.float64(1.1))
    assert value.dtype == expected_value.dtype == np.float32
    np.testing.assert_array_equal(gradient, expected_gradient)


@pytest.mark.parametrize("reduce", [gf.mean, gf.logsumexp])
def test_reductions_over_no_axes_return_fresh_arrays(reduce):
    compiled = gf.compile(lambda t: reduce(gf.sin(t) * 2.0, axis=()))
    first, _ = compiled(np.zeros(4))
    second, _ = compiled(np.ones(4))
    assert not np.shares_memory(first, second)
    np.testing.assert_allclose(first, reduce(gf.Tensor(np.zeros(4)), axis=()).data)


def test_large_index_parameters_stay_apart():
    first = np.arange(2000)
    second = first.copy()
    second[1000] = 0
    function = lambda t: gf.sum(t[first]) + gf.sum(t[second] * 2.0)  # noqa: E731
    _check_compiled(function, [np.linspace(0.0, 1.0, 2000)])


def test_user_elementwise_operation_may_return_its_input():
    same = gf.define_op("same", lambda xp, x: x, lambda g, out, x: (g,), elementwise=True)

    def function(t):
        inner = same(gf.sin(gf.max(t)))
        return gf.sum(t * inner) + gf.cos(gf.max(t * 2.0)) * inner

    _check_compiled(function, [np.linspace(0.1, 1.0, 8)])


def test_sum_over_no_axes_keeps_integer_dtype():
    function = lambda t, m: gf.sum(t * (gf.sum(m, axis=()) + gf.sum(m, axis=())))  # noqa: E731
    mask = np.array([True, False, True])
    value, gradient = gf.compile(function)(np.ones(3), mask)
    np.testing.assert_allclose(value, 4.0)
    np.testing.assert_allclose(gradient, [2.0, 0.0, 2.0])


@pytest.mark.parametrize("condition", [np.array([1, 0, 1]), np.array([0.5, 0.0, np.nan])])
def test_where_accepts_conditions_that_are_not_boolean(condition):
    function = lambda t, m: gf.sum(gf.where(m, t, 0.0))  # noqa: E731
    value, gradient = gf.compile(function)(np.array([1.0, 2.0, 3.0]), condition)
    expected = np.where(condition, 1.0, 0.0)
    np.testing.assert_allclose(value, np.sum(expected * [1.0, 2.0, 3.0]))
    np.testing.assert_allclose(gradient, expected)


def test_integer_argnums_give_one_gradient():
    value, gradient = gf.compile(lambda t: gf.sum(t * t), np.int64(0))(np.ones(2))
    assert isinstance(gradient, np.ndarray)
    np.testing.assert_allclose(gradient, [2.0, 2.0])


def test_value_dependent_shape_raises():
    positive = gf.define_op("positive", lambda xp, x: x[x > 0], lambda g, out, x: (g,))
    with pytest.raises(ValueError, match="operation user:positive returned shape"):
        gf.compile(lambda t: gf.sum(positive(t)))(np.array([1.0, -1.0, 2.0]))


def _region_source_of(function, args, argnums=0):
    compiled = gf.compile(function, argnums)
    compiled(*args)
    return generated_cuda_source(compiled.plan)


def test_cuda_integer_division_is_true_division():
    source = _region_source_of(lambda t, i, j: gf.sum(t * (i / j)),
                               [np.ones(4), np.arange(1, 5), np.arange(2, 6)])
    assert "((double)in" in source or "((double)v" in source, source
    options = ["--std=c++14", "--gpu-architecture=sm_90", "-Werror=all-warnings"]
    result = nvrtc_compile(source, "division.cu", options)
    assert result.succeeded, result.log


def test_cuda_math_of_integers_compiles():
    source = _region_source_of(lambda t, i: gf.sum(t * gf.exp(i) + gf.sqrt(i) + gf.abs(i)),
                               [np.ones(4), np.arange(1, 5)])
    options = ["--std=c++14", "--gpu-architecture=sm_90", "-Werror=all-warnings"]
    result = nvrtc_compile(source, "integers.cu", options)
    assert result.succeeded, result.log


def test_cuda_float16_region_runs_step_by_step():
    source = _region_source_of(lambda t: gf.sum(gf.exp(t) * 2.0),
                               [np.ones(4, dtype=np.float16)])
    assert "runs step by step" in source


@pytest.mark.parametrize(
    "values, exponent",
    [
        (np.array([200, 16, 255], dtype=np.uint8), 2.0),
        (np.array([100_000, 3], dtype=np.int32), 2.0),
        (np.array([1e20, 1.1], dtype=np.float32), np.float64(2.0)),
    ],
    ids=["uint8", "int32", "float32"],
)
def test_power_computes_in_the_result_dtype(values, exponent):
    function = lambda w, k: gf.sum(w * k**exponent)  # noqa: E731
    weights = np.ones(len(values))
    value, gradient = gf.compile(function)(weights, values)
    expected_value, expected_gradient = gf.value_and_grad(function)(weights, values)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-12)


def test_cache_keeps_no_traced_arrays():
    import gc
    import tracemalloc

    x, y = np.linspace(-1.0, 1.0, 200_000), np.linspace(0.0, 2.0, 200_000)
    compiled = gf.compile(lambda s, t: gf.sum(gf.where(s > 0.0, s * t, t)), (0, 1))
    gc.collect()
    tracemalloc.start()
    try:
        result = compiled(x, y)
        del result
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    program = compiled.cache[next(iter(compiled.cache))][2]
    # Each traced array of the batch would be 1.6 MB; the block buffers stay.
    assert retained < program.pool_bytes() + 1_000_000, (retained, program.pool_bytes())
    assert compiled.graph.tensors == {}


def test_full_reductions_return_arrays():
    value, gradient = gf.compile(lambda w: gf.matmul(w, w))(np.arange(3.0))
    assert isinstance(value, np.ndarray)
    assert value.shape == ()
    value[...] = 1.0  # writable, as eager's is
    np.testing.assert_allclose(gradient, [0.0, 2.0, 4.0])


def test_masked_array_argument_raises():
    masked = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False])
    with pytest.raises(TypeError, match="argument 0 is a masked array"):
        gf.compile(lambda t: gf.sum(t))(masked)


@pytest.mark.parametrize("axis, keepdims", [((0, 2), False), ((1,), True), ((0, 1, 2), False)])
def test_traced_reductions_visit_one_element_per_result(axis, keepdims):
    from gpuflow.compile import placeholder
    from gpuflow.ops.reduce import _sum

    template = np.zeros((40, 50, 60))
    traced = placeholder.placeholder_like(template)
    assert placeholder._shrink_reduced_axes(traced.array, set(axis)).shape == tuple(
        1 if position in axis else extent for position, extent in enumerate(template.shape)
    )
    out = placeholder.forward(_sum, NUMPY, [traced], {"axis": axis, "keepdims": keepdims})
    assert out.shape == np.sum(template, axis=axis, keepdims=keepdims).shape



# Operations that need realistic values, and user operations with built-in names.


def test_placeholder_failure_retraces_on_values():
    inverse = gf.define_op(
        "inverse", lambda xp, a: np.linalg.inv(a),
        lambda g, out, a: (-gf.matmul(gf.matrix_transpose(out),
                                      gf.matmul(g, gf.matrix_transpose(out))),),
    )
    function = lambda t: gf.sum(inverse(t + 3.0 * np.eye(3)))  # noqa: E731
    compiled = gf.compile(function)
    for scale in (0.1, 0.2):
        x = np.random.default_rng(15).normal(size=(3, 3)) * scale
        value, gradient = compiled(x)
        expected_value, expected_gradient = gf.value_and_grad(function)(x)
        np.testing.assert_allclose(value, expected_value, rtol=1e-12)
        np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-12)


def test_integer_power_with_a_traced_exponent():
    function = lambda t, n: gf.sum(t * gf.astype(n ** (gf.sum(n) - 2), "float64"))  # noqa: E731
    x, n = np.ones(3), np.array([3, 4, 5])
    value, gradient = gf.compile(function)(x, n)
    np.testing.assert_allclose(value, np.sum(n.astype(float) ** 10))
    np.testing.assert_allclose(gradient, n.astype(float) ** 10)


def test_reading_values_still_raises_on_the_second_trace():
    inverse = gf.define_op("inverse", lambda xp, a: np.linalg.inv(a), None)
    function = lambda t: gf.sum(inverse(t + 3.0 * np.eye(2))) * float(t.detach().data[0, 0])  # noqa: E731,E501
    with pytest.raises(TypeError, match="placeholders that hold no values"):
        gf.compile(function)(np.eye(2))


def test_user_operations_named_like_builtins():
    tail = gf.define_op("sum", lambda xp, x: x[1:],
                        lambda g, out, x: (gf.concatenate([gf.zeros_like(x[:1]), g]),))
    compiled = gf.compile(lambda t: tail(t * 2.0))
    first, _ = compiled(np.arange(4.0))
    compiled(np.arange(4.0) + 100.0)
    np.testing.assert_array_equal(first, [2.0, 4.0, 6.0])
    assert "user:sum" in str(compiled.plan)

    total = gf.define_op("sum", lambda xp, x, axis: np.sum(x, axis=axis),
                         lambda g, out, x, axis: (gf.expand_dims(g, axis) + 0.0 * x,))
    _check_compiled(lambda t: gf.sum(total(t, axis=-1) ** 2), [np.ones((3, 4))])

    pairwise = gf.define_op("matmul", lambda xp, a, b: a * b, lambda g, out, a, b: (g * b, g * a))
    _check_compiled(lambda s, t: gf.sum(pairwise(s, t)), [np.ones((2, 3)), np.arange(3.0)])
