"""The fusion pass: multiply-add patterns become fused nodes with the same gradients."""

from __future__ import annotations

import numpy as np
import pytest

import gpuflow as gf
from gpuflow.graph import reachable
from gpuflow.passes.fusion import fuse_multiply_add, fuse_sigmoid, fusion_disabled

PATTERNS = {
    "a*b+c": (lambda a, b, c: a * b + c, {"negate_product": False, "negate_addend": False}),
    "c+a*b": (lambda a, b, c: c + a * b, {"negate_product": False, "negate_addend": False}),
    "a*b-c": (lambda a, b, c: a * b - c, {"negate_product": False, "negate_addend": True}),
    "c-a*b": (lambda a, b, c: c - a * b, {"negate_product": True, "negate_addend": False}),
}


def _leaves(rng, *shapes):
    return [gf.Tensor(rng.normal(size=shape), requires_grad=True) for shape in shapes]


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_pattern_becomes_multiply_add(pattern, rng):
    function, flags = PATTERNS[pattern]
    a, b, c = _leaves(rng, (3,), (3,), (3,))
    out = function(a, b, c)
    computed = reachable([out])[1]

    assert fuse_multiply_add(computed, [out]) == 1
    assert out.node.op.name == "multiply_add"
    assert out.node.inputs == (a, b, c)
    assert out.node.params == flags


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
@pytest.mark.parametrize(
    "shapes", [((4,), (4,), (4,)), ((3, 1), (1, 4), (4,)), ((), (3,), (2, 3))], ids=str
)
def test_fused_gradients_match_unfused(pattern, shapes, bk, rng):
    function = PATTERNS[pattern][0]
    arrays = [bk.array(rng.normal(size=shape)) for shape in shapes]
    weights = bk.array(rng.normal(size=np.broadcast_shapes(*shapes)))

    def objective(a, b, c):
        return gf.sum(function(a, b, c) * weights)

    fused = gf.value_and_grad(objective, (0, 1, 2))(*arrays)
    with fusion_disabled():
        plain = gf.value_and_grad(objective, (0, 1, 2))(*arrays)
    np.testing.assert_allclose(bk.numpy(fused[0]), bk.numpy(plain[0]), rtol=1e-12)
    for got, expected in zip(fused[1], plain[1]):
        np.testing.assert_allclose(bk.numpy(got), bk.numpy(expected), rtol=1e-12)
    gf.check_grad(lambda a, b, c: function(a, b, c) * weights, *arrays)


def test_shared_product_is_not_fused(rng):
    a, b, c = _leaves(rng, (3,), (3,), (3,))
    product = a * b
    out = (product + c) * product
    computed = reachable([out])[1]
    assert fuse_multiply_add(computed, [out]) == 0


def test_product_that_is_a_root_is_not_fused(rng):
    a, b, c = _leaves(rng, (3,), (3,), (3,))
    product = a * b
    total = product + c
    computed = reachable([total, product])[1]
    assert fuse_multiply_add(computed, [total, product]) == 0


def test_fused_node_second_derivative():
    # d/dx (x * x + x) = 2x + 1, whose derivative is 2.
    assert gf.grad(gf.grad(lambda x: x * x + x))(1.5) == 2.0


def test_eager_backward_runs_pass(rng):
    a, b, c = _leaves(rng, (3,), (3,), (3,))
    out = gf.sum(a * b + c)
    out.backward()
    np.testing.assert_allclose(a.grad.numpy(), b.detach().numpy())
    np.testing.assert_allclose(b.grad.numpy(), a.detach().numpy())
    np.testing.assert_array_equal(c.grad.numpy(), np.ones(3))


def test_multiply_add_function(bk, rng):
    a, b, c = (bk.array(rng.normal(size=4)) for _ in range(3))
    out = gf.multiply_add(gf.Tensor(a), b, c, negate_product=True)
    np.testing.assert_allclose(
        out.numpy(), -bk.numpy(a) * bk.numpy(b) + bk.numpy(c), rtol=1e-12
    )
    gf.check_grad(lambda x, y, z: gf.multiply_add(x, y, z, negate_addend=True), a, b, c)


def test_fused_steps_dispatch_to_backend(monkeypatch, rng):
    backend = gf.get_backend("numpy")
    calls = []
    original = type(backend).fused

    def recording(self, name, *arrays):
        calls.append(name)
        return original(self, name, *arrays)

    monkeypatch.setattr(type(backend), "fused", recording)
    x, w, c = rng.normal(size=(3, 5))
    gf.grad(lambda t: gf.sum(w * gf.sigmoid(t)))(x)
    gf.grad(lambda t: gf.sum((t * w + c) * w))(x)
    assert calls == ["sigmoid_forward", "sigmoid_backward", "multiply_add_backward"]


@pytest.mark.parametrize(
    "written",
    [lambda t: 1 / (1 + gf.exp(-t)), lambda t: 1.0 / (gf.exp(-t) + 1.0)],
    ids=["1+e", "e+1"],
)
def test_written_sigmoid_becomes_sigmoid(written, rng):
    (x,) = _leaves(rng, (4,))
    out = written(x)
    computed = reachable([out])[1]
    assert fuse_sigmoid(computed, [out]) == 1
    assert out.node.op.name == "sigmoid"
    assert out.node.inputs == (x,)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_written_sigmoid_gradient_is_stable(bk):
    x = bk.array([-1000.0, -1.0, 0.0, 2.0, 1000.0])
    gradient = bk.numpy(gf.grad(lambda t: gf.sum(1 / (1 + gf.exp(-t))))(x))
    s = 1 / (1 + np.exp(-np.array([-1.0, 0.0, 2.0])))
    np.testing.assert_allclose(gradient, [0.0, *(s * (1 - s)), 0.0], rtol=1e-12)
    with fusion_disabled():
        plain = bk.numpy(gf.grad(lambda t: gf.sum(1 / (1 + gf.exp(-t))))(x))
    assert np.isnan(plain[0])


def test_written_sigmoid_with_other_constant_is_kept(rng):
    (x,) = _leaves(rng, (4,))
    out = 1 / (2 + gf.exp(-x))
    assert fuse_sigmoid(reachable([out])[1], [out]) == 0
    assert out.node.op.name == "divide"


def test_written_sigmoid_second_derivative():
    value = gf.grad(gf.grad(lambda t: 1 / (1 + gf.exp(-t))))(0.5)
    s = 1 / (1 + np.exp(-0.5))
    assert value == pytest.approx(s * (1 - s) * (1 - 2 * s), rel=1e-12)
