"""End-to-end tests of ``gpuflow check``, each running the command in a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import gpuflow as gf
from gpuflow.cli import ExpressionError
from gpuflow.cli.parser import FUNCTIONS, parse_expression
from gpuflow.testing import unavailable_reason

HAS_DEVICE = unavailable_reason("cupy") is None

CORRECT_PLUGIN = '''
import gpuflow as gf
from gpuflow import sigmoid


def _forward(xp, x):
    return x * x * x


cube = gf.define_op("cube", _forward, lambda g, out, x: (3 * x * x * g,))
'''

WRONG_PLUGIN = '''
import gpuflow as gf


def _forward(xp, x):
    return x * x * x


# The gradient rule is off by a factor 2/3.
cube = gf.define_op("cube", _forward, lambda g, out, x: (2 * x * x * g,))
'''

# The first-order rule (vjp_cached) is right, but the differentiable fallback is wrong.
WRONG_SECOND_ORDER_PLUGIN = '''
import gpuflow as gf


def _forward(xp, x):
    return x * x * x


cube = gf.define_op(
    "cube",
    _forward,
    lambda g, out, x: (4.5 * x * g,),
    forward_cached=lambda xp, x: (x * x * x, 3 * x * x),
    vjp_cached=lambda g, cache: (cache * g,),
)
'''

# A value one part in a thousand larger on array_api_strict.
BACKEND_DEPENDENT_PLUGIN = '''
import gpuflow as gf

skewed = gf.define_op(
    "skewed",
    lambda xp, x: x * (1.001 if xp.name == "array_api_strict" else 1.0),
    lambda g, out, x: (g,),
)
'''


def run_check(*arguments, cwd=None):
    environment = dict(os.environ)
    environment.pop("GPUFLOW_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", "check", *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=120,
    )


def table_rows(stdout: str) -> list[list[str]]:
    """Return the cells of the table's rows, header first, splitting at two or more spaces."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith(("FAIL: ", "note: ")) or line.endswith((" passed", " failed")):
            continue
        rows.append(re.split(r" {2,}", line))
    return rows


def write_plugin(tmp_path, text, name="user_ops.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


# Passing checks.


def test_check_passes_with_table():
    completed = run_check("sum(sigmoid(X @ w))", "--random", "X=20x3", "w=3")
    assert completed.returncode == 0, completed.stderr
    header, *rows = table_rows(completed.stdout)
    assert header == [
        "check", "output", "backend", "reference", "max abs error", "max rel error", "rtol",
        "atol", "result",
    ]
    assert rows[0][:4] == ["parity", "value", "array_api_strict", "numpy"]
    assert rows[1][:4] == ["parity", "X", "array_api_strict", "numpy"]
    assert rows[4][:4] == ["order 1", "w", "numpy", "finite differences"]
    assert [row[-1] for row in rows] == ["ok"] * 5
    assert completed.stdout.splitlines()[-1] == "all 5 checks passed"


def test_check_parity_tolerance_shown():
    completed = run_check("x * 2", "x=1,2")
    rows = table_rows(completed.stdout)
    assert rows[1][-3:] == ["1e-10", "1e-12", "ok"]
    assert rows[3][-3:] == ["1e-05", "1e-07", "ok"]


def test_check_float32_tolerance():
    completed = run_check("x * 2", "x=1,2", "--dtype", "float32")
    assert completed.returncode == 0, completed.stderr
    rows = table_rows(completed.stdout)
    assert rows[1][-3:] == ["1e-05", "1e-06", "ok"]


def test_check_order_2():
    completed = run_check("logsumexp(x) * y", "x=1,2,3", "y=0.5", "--order", "2")
    assert completed.returncode == 0, completed.stderr
    checks = [row[:2] for row in table_rows(completed.stdout)]
    assert ["order 2", "x"] in checks
    assert ["order 2", "y"] in checks


def test_check_json():
    completed = run_check("sum(tanh(x))", "x=1,2,3", "--order", "2", "--json")
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["passed"] is True
    assert document["backends"] == ["numpy", "array_api_strict"]
    assert document["order"] == 2
    kinds = [(check["check"], check["output"]) for check in document["checks"]]
    assert kinds == [("parity", "value"), ("parity", "x"), ("order 1", "x"), ("order 2", "x")]
    assert document["checks"][2]["reference"] == "finite differences"
    assert document["checks"][0]["rtol"] == 1e-10


def test_check_json_nan():
    completed = run_check("sum(log(x))", "x=-1,2", "--json")
    assert completed.returncode == 1
    document = json.loads(completed.stdout)
    gradient = document["checks"][2]
    assert gradient["expected"] == "nan"
    assert gradient["passed"] is False


def test_check_single_backend():
    completed = run_check("x ** 2", "x=3", "--backends", "numpy")
    assert completed.returncode == 0, completed.stderr
    assert "note: only the backend numpy was given, so no parity was checked" in completed.stdout
    checks = [row[0] for row in table_rows(completed.stdout)[1:]]
    assert checks == ["order 1"]


def test_check_mask_input(tmp_path):
    np.savez(tmp_path / "batch.npz", x=np.array([1.0, -2.0]), m=np.array([True, False]))
    completed = run_check("sum(where(m, x, 0.0) ** 2)", "--inputs", tmp_path / "batch.npz")
    assert completed.returncode == 0, completed.stderr
    outputs = {row[1] for row in table_rows(completed.stdout)[1:]}
    assert outputs == {"value", "x"}


def test_check_correct_plugin(tmp_path):
    plugin = write_plugin(tmp_path, CORRECT_PLUGIN)
    completed = run_check("sum(cube(x))", "x=1,2,3", "--plugin", plugin, "--order", "2")
    assert completed.returncode == 0, completed.stderr


# Failing checks.


def test_check_catches_wrong_gradient(tmp_path):
    plugin = write_plugin(tmp_path, WRONG_PLUGIN)
    completed = run_check("sum(cube(x) * y)", "x=1,2,3", "y=0.5", "--plugin", plugin)
    assert completed.returncode == 1, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[-1] == "1 of 5 checks failed"
    failures = [line for line in lines if line.startswith("FAIL: ")]
    assert len(failures) == 1
    assert "at order 1, the derivative with respect to x along random direction" in failures[0]
    row = table_rows(completed.stdout)[4]
    assert row[:2] == ["order 1", "x"]
    assert row[-1] == "FAIL"


def test_check_catches_second_order(tmp_path):
    plugin = write_plugin(tmp_path, WRONG_SECOND_ORDER_PLUGIN)
    first = run_check("sum(cube(x))", "x=1,2,3", "--plugin", plugin)
    second = run_check("sum(cube(x))", "x=1,2,3", "--plugin", plugin, "--order", "2")
    assert first.returncode == 0, first.stdout
    assert second.returncode == 1, second.stderr
    assert "FAIL: check_grads: at order 2, the derivative with respect to x" in second.stdout


def test_check_catches_parity(tmp_path):
    plugin = write_plugin(tmp_path, BACKEND_DEPENDENT_PLUGIN)
    completed = run_check("skewed(x)", "x=1,2,3", "--plugin", plugin)
    assert completed.returncode == 1, completed.stderr
    assert "the value differs between numpy and array_api_strict" in completed.stdout


def test_check_plugin_module(tmp_path):
    write_plugin(tmp_path, WRONG_PLUGIN, "wrong_ops.py")
    completed = run_check("sum(cube(x))", "x=1,2", "--plugin", "wrong_ops", cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr


# Invalid input.


def test_check_plugin_missing(tmp_path):
    completed = run_check("cube(x)", "x=1", "--plugin", tmp_path / "absent.py")
    assert completed.returncode == 2
    assert "plugin file not found" in completed.stderr


def test_check_plugin_module_missing():
    completed = run_check("cube(x)", "x=1", "--plugin", "no_such_gpuflow_plugin")
    assert completed.returncode == 2
    assert "plugin module no_such_gpuflow_plugin not found" in completed.stderr


def test_check_plugin_raises(tmp_path):
    plugin = write_plugin(tmp_path, "1 / 0\n")
    completed = run_check("cube(x)", "x=1", "--plugin", plugin)
    assert completed.returncode == 2
    assert "failed with ZeroDivisionError: division by zero" in completed.stderr


def test_check_plugin_without_operations(tmp_path):
    plugin = write_plugin(tmp_path, "import gpuflow\nfrom gpuflow import exp\n")
    completed = run_check("x", "x=1", "--plugin", plugin)
    assert completed.returncode == 2
    assert "defines no operation" in completed.stderr


def test_check_plugin_shadows_builtin(tmp_path):
    plugin = write_plugin(tmp_path, CORRECT_PLUGIN + "sum = cube\n")
    completed = run_check("sum(x)", "x=1", "--plugin", plugin)
    assert completed.returncode == 2
    assert "operation sum of plugin" in completed.stderr
    assert "has the name of a built-in function" in completed.stderr


def test_check_unknown_function():
    completed = run_check("cube(x)", "x=1")
    assert completed.returncode == 2
    assert "unknown function 'cube'" in completed.stderr


def test_check_unknown_backend():
    completed = run_check("x", "x=1", "--backends", "numpy,torch")
    assert completed.returncode == 2
    assert "unknown backend 'torch' in --backends" in completed.stderr
    assert "choose from numpy, cupy, array_api_strict" in completed.stderr


@pytest.mark.skipif(HAS_DEVICE, reason="a CUDA device is present here")
def test_check_unavailable_cupy():
    completed = run_check("x", "x=1", "--backends", "numpy,cupy")
    assert completed.returncode == 2
    assert "backend cupy of --backends is not available here" in completed.stderr
    assert "pip install 'gpuflow[cuda12]'" in completed.stderr


def test_check_shape_error():
    completed = run_check("x + y", "x=1,2", "y=1,2,3")
    assert completed.returncode == 2
    assert "cannot be broadcast" in completed.stderr


def test_check_missing_input():
    completed = run_check("x * y", "x=1")
    assert completed.returncode == 2
    assert "no value for y" in completed.stderr


def test_check_help_lists_plugin():
    completed = run_check("--help")
    assert completed.returncode == 0
    assert "--plugin" in completed.stdout
    assert "runs its code" in completed.stdout


# The parser's extra_functions hook.


def test_parser_extra_function():
    double = gf.define_op("double", lambda xp, x: 2 * x, lambda g, out, x: (2 * g,))
    expression = parse_expression("sum(double(x))", extra_functions={"double": double})
    assert expression.names == ("x",)
    assert gf.grad(expression.function(["x"]))(np.array([1.0, 2.0])).tolist() == [2.0, 2.0]


def test_parser_extra_not_global():
    double = gf.define_op("double", lambda xp, x: 2 * x)
    parse_expression("double(x)", extra_functions={"double": double})
    assert "double" not in FUNCTIONS
    with pytest.raises(ExpressionError, match="unknown function 'double'"):
        parse_expression("double(x)")


def test_parser_extra_listed():
    with pytest.raises(ExpressionError, match="known functions: .*, double"):
        parse_expression("triple(x)", extra_functions={"double": gf.exp})


def test_parser_extra_shadowing():
    with pytest.raises(ValueError, match="'exp' has the name of a built-in function"):
        parse_expression("exp(x)", extra_functions={"exp": gf.log})


def test_parser_extra_invalid_name():
    with pytest.raises(ValueError, match="invalid extra function name '_hidden'"):
        parse_expression("x", extra_functions={"_hidden": gf.log})
