"""Autodiff cases with known results, each drawn from a bug another library once shipped.

The cases live in a JSON file (see tests/data/README.md for the format). The
preferred result is checked on both backends. An accepted alternative is never
taken in place of it, because gpuflow documents one convention per case.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import gpuflow as gf
from gpuflow.cli.parser import parse_expression

_LOCAL = Path(__file__).parent / "data" / "autodiff-cases.json"
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "cases" / "autodiff-cases.json"
CASES = json.loads((_SHARED if _SHARED.exists() else _LOCAL).read_text())
BY_ID = {case["id"]: case for case in CASES}

# Cases whose program is more than one expression get their own test below.
SPECIAL = {"inplace-01", "twice-01", "int-01"}


def _number(value):
    if isinstance(value, str):
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[value]
    if isinstance(value, list):
        return [_number(v) for v in value]
    return value


def _expected(entry):
    return np.array(_number(entry["value"]), dtype=entry["dtype"]).reshape(entry["shape"])


def _inputs(case, bk):
    names = list(case["inputs"])
    arrays = [bk.backend.from_numpy(_expected(case["inputs"][name])) for name in names]
    wrt = tuple(i for i, name in enumerate(names) if case["inputs"][name]["requires_grad"])
    return names, arrays, wrt


def _assert_matches(actual, entry, tolerance, label):
    expected = _expected(entry)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{label}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{label}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_allclose(
        actual, expected, rtol=tolerance["rtol"], atol=tolerance["atol"], equal_nan=True,
        err_msg=label,
    )


@pytest.mark.parametrize("case_id", [c["id"] for c in CASES if c["id"] not in SPECIAL])
def test_case(case_id, bk):
    case = BY_ID[case_id]
    names, arrays, wrt = _inputs(case, bk)
    function = parse_expression(case["function"]).function(names)

    value, grads = gf.value_and_grad(function, wrt)(*arrays)

    tolerance = case["tolerance"]
    _assert_matches(bk.numpy(value), case["expected_output"], tolerance["output"], "output")
    for number, gradient in zip(wrt, grads):
        name = names[number]
        _assert_matches(
            bk.numpy(gradient), case["expected_grads"][name], tolerance["grads"], f"grad {name}"
        )


def test_case_integer_input_raises(bk):
    case = BY_ID["int-01"]
    names, arrays, wrt = _inputs(case, bk)
    function = parse_expression(case["function"]).function(names)
    with pytest.raises(TypeError) as raised:
        gf.grad(function, wrt)(*arrays)
    message = str(raised.value)
    assert "x" in message.split(" of dtype")[0]
    assert "int64" in message
    assert "floating-point" in message
    assert "x.astype('float32')" in message


def test_case_integer_constant_still_works(bk):
    case = BY_ID["int-01"]
    _, arrays, _ = _inputs(case, bk)
    value = gf.sum(gf.Tensor(arrays[0]) ** 2)
    assert value.item() == case["expected_output"]["value"]


def test_case_in_place_write_after_use():
    # The Tensor keeps its own copy of w, so the write cannot reach the saved value.
    case = BY_ID["inplace-01"]
    x = gf.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    w = np.array([4.0, 5.0, 6.0])
    y = x * w
    w[0] = 100.0
    f = gf.sum(y)
    f.backward()
    assert f.detach().item() == case["expected_output"]["value"]
    np.testing.assert_array_equal(x.grad.numpy(), case["expected_grads"]["x"]["value"])


def test_case_backward_twice_functional(bk):
    case = BY_ID["twice-01"]
    names, arrays, wrt = _inputs(case, bk)
    grad = gf.grad(parse_expression(case["function"]).function(names), wrt)
    first = bk.numpy(grad(*arrays)[0])
    second = bk.numpy(grad(*arrays)[0])
    assert [first.item(), second.item()] == case["expected_sequence"]["functional_api"]


def test_case_backward_twice_accumulates_on_leaves():
    case = BY_ID["twice-01"]
    x = gf.Tensor(np.array(3.0), requires_grad=True)
    y = 2.0 * x
    f = y * y
    f.backward(retain_graph=True)
    first = x.grad.item()
    f.backward()
    second = x.grad.item()
    assert [first, second] == case["expected_sequence"]["accumulating_api_without_zeroing"]
