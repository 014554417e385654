"""Tests of the safe expression parser behind ``gpuflow grad``."""

import ast
import builtins
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpuflow
from gpuflow.cli.parser import FUNCTIONS, MAX_DEPTH, ExpressionError, parse_expression

X = np.array([0.5, 1.5, 2.0])
Y = np.array([1.0, -2.0, 3.0])
M = np.arange(1.0, 7.0).reshape(2, 3)
W = np.array([0.1, 0.2, 0.3])
VALUES = {"x": X, "y": Y, "M": M, "w": W}


def evaluate(text, values=VALUES):
    expression = parse_expression(text)
    used = {name: values[name] for name in expression.input_names(values)}
    return np.asarray(expression.evaluate(used))


# Each case is an expression and the same computation written with NumPy.
VALUE_CASES = [
    ("x + y", X + Y),
    ("x - y", X - Y),
    ("x * y", X * Y),
    ("x / y", X / Y),
    ("x ** 2", X**2),
    ("x ** y", X**Y),
    ("x ** -1", X**-1),
    ("-x + +y", -X + Y),
    ("M @ w", M @ W),
    ("2 * x + 1", 2 * X + 1),
    ("2 ** 3 * x", 8 * X),
    ("x < 1.5", X < 1.5),
    ("x <= 1.5", X <= 1.5),
    ("x > 1.5", X > 1.5),
    ("x >= 1.5", X >= 1.5),
    ("x == 1.5", X == 1.5),
    ("x != 1.5", X != 1.5),
    ("0 < x < 1.8", (X > 0) & (X < 1.8)),
    ("(x > 1) & (y < 2)", (X > 1) & (Y < 2)),
    ("(x > 1) | (y > 2)", (X > 1) | (Y > 2)),
    ("~(x > 1)", ~(X > 1)),
    ("where(x > 1, x, y)", np.where(X > 1, X, Y)),
    ("sum(M, axis=0, keepdims=True)", M.sum(axis=0, keepdims=True)),
    ("sum(M, 1)", M.sum(axis=1)),
    ("mean(M, axis=1)", M.mean(axis=1)),
    ("max(M, axis=(0, 1))", M.max()),
    ("min(M, axis=-1)", M.min(axis=-1)),
    ("reshape(M, (3, 2))", M.reshape(3, 2)),
    ("reshape(M, shape=(-1,))", M.reshape(-1)),
    ("reshape(M, (2 * 3,))", M.reshape(6)),
    ("transpose(M, axes=(1, 0))", M.T),
    ("matrix_transpose(M)", M.T),
    ("clip(x, a_min=1.0, a_max=1.8)", np.clip(X, 1.0, 1.8)),
    ("clip(x, a_max=1.0)", np.minimum(X, 1.0)),
    ("clip(x, a_min=y, a_max=None)", np.maximum(X, Y)),
    ("stack([x, y])", np.stack([X, Y])),
    ("stack((x, y), axis=1)", np.stack([X, Y], axis=1)),
    ("concatenate([x, y])", np.concatenate([X, Y])),
    ("expand_dims(x, axis=0)", X[None, :]),
    ("squeeze(expand_dims(x, 0))", X),
    ("broadcast_to(x, shape=(2, 3))", np.broadcast_to(X, (2, 3))),
    ("flip(x)", X[::-1]),
    ("M[:, 0]", M[:, 0]),
    ("M[1]", M[1]),
    ("M[-1, 1:]", M[-1, 1:]),
    ("x[1:3]", X[1:3]),
    ("x[::-1]", X[::-1]),
    ("exp(x) - e", np.exp(X) - np.e),
    ("x * pi", X * np.pi),
    ("x + inf", X + np.inf),
    ("log(x) + log1p(x)", np.log(X) + np.log1p(X)),
    ("xlogy(x, x)", X * np.log(X)),
    ("logsumexp(x)", np.log(np.sum(np.exp(X)))),
    ("norm(x)", np.linalg.norm(X)),
    ("sqrt(square(x))", X),
    ("maximum(x, y) - minimum(x, y)", np.abs(X - Y)),
    ("sigmoid(x)", 1 / (1 + np.exp(-X))),
    ("softplus(x)", np.log1p(np.exp(X))),
    ("tanh(x)", np.tanh(X)),
    ("relu(y)", np.maximum(Y, 0)),
    ("abs(y)", np.abs(Y)),
    ("sign(y)", np.sign(Y)),
    ("negative(x)", -X),
    ("add(x, y) + subtract(x, y)", 2 * X),
    ("multiply(x, y) / divide(x, y)", Y * Y),
    ("power(x, 2)", X**2),
    ("matmul(M, w)", M @ W),
    ("zeros_like(x) + ones_like(y)", np.ones(3)),
    ("isfinite(x)", np.ones(3, dtype=bool)),
    ("logical_not(x > 1)", ~(X > 1)),
    ("logical_and(x > 1, y > 0)", (X > 1) & (Y > 0)),
    ("logical_or(x > 1, y > 0)", (X > 1) | (Y > 0)),
    ("(y := 2.0 * x) * y + y", (2 * X) ** 2 + 2 * X),
    ("(a := x + 1) * (b := a * 2) - b", (X + 1) * 2 * (X + 1) - 2 * (X + 1)),
    ("(s := stack([x, y])) * 0 + s[0]", np.broadcast_to(X, (2, 3))),
    ("(s := stack([x, y])) * 0 + s[1, 0:3]", np.broadcast_to(Y, (2, 3))),
    ("  x + 1", X + 1),
]


@pytest.mark.parametrize("text, expected", VALUE_CASES, ids=[case[0] for case in VALUE_CASES])
def test_value_matches_numpy(text, expected):
    result = evaluate(text)
    assert result.shape == np.shape(expected)
    np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_astype_keeps_values():
    result = evaluate("astype(x, dtype='float32')")
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, X.astype(np.float32))


def test_number_arithmetic_stays_python():
    assert parse_expression("2 * 3 + 1").evaluate({}) == 7
    assert isinstance(parse_expression("2 * 3").evaluate({}), int)


# Each case is an expression whose gradient gpuflow.check_grad compares with
# central finite differences.
GRADIENT_CASES = [
    "sum(x * y)",
    "sum(M @ w)",
    "sum(stack([x, x * y]) ** 2)",
    "sum(where(x > 1, x ** 2, y))",
    "sum(M[:, 0] * x[0:2])",
    "logsumexp(concatenate([x, y]))",
    "sum((z := exp(x)) * z + sigmoid(y))",
    "mean(clip(x, a_min=y - 2.0, a_max=1.8))",
    "norm(reshape(M, (3, 2)) @ expand_dims(w[0:2], axis=1))",
]


@pytest.mark.parametrize("text", GRADIENT_CASES)
def test_gradient_matches_finite_differences(text):
    expression = parse_expression(text)
    names = expression.names
    errors = gpuflow.check_grad(expression.function(names), *[VALUES[name] for name in names])
    assert set(errors) == set(names)


def test_readme_example_gradients():
    expression = parse_expression("a*x**2 + b*x + c")
    function = expression.function(["x", "a", "b", "c"])
    value, grads = gpuflow.value_and_grad(function, (0, 1, 2, 3))(3.0, 2.0, 1.0, 4.0)
    assert float(value) == 25
    assert [float(g) for g in grads] == [13, 9, 3, 1]


def test_walrus_reuses_intermediate():
    expression = parse_expression("sum((y := 2.0 * x) * y + y)")
    assert expression.names == ("x",)
    value, gradient = gpuflow.value_and_grad(expression.function(["x"]))(np.array(1.5))
    assert float(value) == pytest.approx(12.0)
    assert float(gradient) == pytest.approx(14.0)


def test_subscript_gradient_scatters():
    expression = parse_expression("sum(M[:, 0] * 2)")
    _, gradient = gpuflow.value_and_grad(expression.function(["M"]))(M)
    np.testing.assert_array_equal(gradient, [[2, 0, 0], [2, 0, 0]])


def test_keepdims_keyword_keeps_axis():
    result = evaluate("sum(M, axis=0, keepdims=True)")
    assert result.shape == (1, 3)


def test_stack_gradient():
    expression = parse_expression("sum(stack([c, c + x]))")
    function = expression.function(["c", "x"])
    _, grads = gpuflow.value_and_grad(function, (0, 1))(X, Y)
    np.testing.assert_array_equal(grads[0], [2, 2, 2])
    np.testing.assert_array_equal(grads[1], [1, 1, 1])


def test_deep_chain_evaluates():
    # 900 additions nest 900 levels deep: a recursive evaluator with two frames a level
    # would pass Python's default recursion limit of 1000.
    expression = parse_expression("+".join(["x"] * 900))
    value, gradient = gpuflow.value_and_grad(expression.function(["x"]))(np.array(2.0))
    assert float(value) == 1800
    assert float(gradient) == 900


# Input names.


def test_names_in_first_appearance_order():
    assert parse_expression("a*x**2 + b*x + c").names == ("a", "x", "b", "c")


def test_names_exclude_bound():
    expression = parse_expression("(t := x * y) + t + z")
    assert expression.names == ("x", "y", "z")


def test_constant_names_listed_apart():
    expression = parse_expression("exp(x) - e + pi")
    assert expression.names == ("x",)
    assert expression.constant_names == ("e", "pi")


def test_constant_is_input_when_given():
    expression = parse_expression("e * x")
    assert float(expression.evaluate({"x": 2.0})) == pytest.approx(2 * np.e)
    assert float(expression.evaluate({"x": 2.0, "e": 3.0})) == 6.0
    assert expression.input_names({"x", "e"}) == ("x", "e")


def test_function_needs_every_name():
    expression = parse_expression("x * y")
    with pytest.raises(ExpressionError, match="no argument for input y"):
        expression.function(["x"])


def test_evaluate_needs_every_value():
    with pytest.raises(ExpressionError, match="no value for input y"):
        parse_expression("x * y").evaluate({"x": 1.0})


def test_function_signature_names_inputs():
    expression = parse_expression("x * y")
    function = expression.function(["y", "x"])
    with pytest.raises(TypeError, match="with respect to y of dtype int64"):
        gpuflow.value_and_grad(function)(np.arange(3), X)


# Rejections.

REJECTED = [
    ("__import__('os')", "underscore"),
    ("os.system('true')", "only known functions can be called"),
    ("x.T", "attribute access"),
    ("x.__class__", "attribute access"),
    ("(lambda: 1)()", "only known functions can be called"),
    ("lambda: 1", "lambda"),
    ("[i for i in x]", "comprehension"),
    ("sum(i for i in x)", "comprehension"),
    ("open('f')", "unknown function 'open'"),
    ("x[0].real", "attribute access"),
    ("f'{x}'", "f-string"),
    ("'abc'", "string constant"),
    ("b'abc'", "string constant"),
    ("exec('1')", "unknown function 'exec'"),
    ("eval('1')", "unknown function 'eval'"),
    ("__class__", "underscore"),
    ("_x + 1", "underscore"),
    ("(_y := x)", "underscore"),
    ("(x := x + 1)", "rebinds the input x"),
    ("y + (y := x)", "rebinds the input y"),
    ("(pi := x)", "rebinds the constant pi"),
    ("(x + 1)[0]", "subscript"),
    ("sum(x)[0]", "subscript"),
    ("x[y]", "not a constant integer"),
    ("x[1.5]", "not a constant integer"),
    ("x[::0]", "step 0"),
    ("sum(*x)", "starred"),
    ("stack([*x])", "starred"),
    ("sum(x, **k)", "unpacking"),
    ("x if y else x", "where("),
    ("x and y", "&"),
    ("not x", "~"),
    ("x // 2", "operator //"),
    ("x % 2", "operator %"),
    ("x ^ y", "operator ^"),
    ("x in y", "'in'"),
    ("x is y", "'is'"),
    ("{1: x}", "dict"),
    ("{x}", "set"),
    ("1j * x", "complex"),
    ("...", "constant"),
    ("True", "keyword value"),
    ("sum(x, None)", "keyword value"),
    ("astype(x, 'float32')", "dtype keyword"),
    ("astype(x, dtype='__class__')", "unknown dtype"),
    ("astype(x, dtype=y)", "string constant"),
    ("sum(x, foo=1)", "keyword 'foo'"),
    ("sum(x, axis=y)", "not a constant integer"),
    ("sum(x, keepdims=1)", "keepdims must be True or False"),
    ("exp(x, y)", "invalid call of exp"),
    ("reshape(x)", "invalid call of reshape"),
    ("sum(x, shape=2)", "invalid call of sum"),
    ("99999999999999999999 * x", "too large"),
    ("", "empty"),
    ("   ", "empty"),
]


@pytest.mark.parametrize("text, words", REJECTED, ids=[case[0] or "empty" for case in REJECTED])
def test_rejects_construct(text, words):
    with pytest.raises(ExpressionError) as caught:
        parse_expression(text)
    assert words in str(caught.value)


def test_syntax_error_gives_column():
    with pytest.raises(ExpressionError, match="invalid syntax at column 5"):
        parse_expression("x + * y")


def test_syntax_column_counts_leading_spaces():
    with pytest.raises(ExpressionError, match="invalid syntax at column 7"):
        parse_expression("  x + * y")


def test_unknown_function_lists_known_sorted():
    with pytest.raises(ExpressionError) as caught:
        parse_expression("arcsin(x)")
    known = sorted(FUNCTIONS)
    assert ", ".join(known) in str(caught.value)


def test_rejection_message_is_one_line():
    for text, _ in REJECTED:
        with pytest.raises(ExpressionError) as caught:
            parse_expression(text)
        assert "\n" not in str(caught.value), text


RUNTIME_ERRORS = [
    ("x & y", "needs boolean operands"),
    ("~x", "needs a boolean operand"),
    ("(x, y)", "gives a tuple"),
    ("[x] + x", "cannot take a list"),
    ("9 ** 9 ** 9 * x", "2**63"),
    ("1 / 0 * x", "division by zero"),
    ("10.0 ** 400 * x", "overflows"),
    ("(-8) ** 0.5 * x", "complex"),
    ("2 @ 3", "needs at least one array operand"),
    ("pi[0]", "cannot index pi"),
]


@pytest.mark.parametrize("text, words", RUNTIME_ERRORS, ids=[case[0] for case in RUNTIME_ERRORS])
def test_runtime_error_is_expression_error(text, words):
    expression = parse_expression(text)
    with pytest.raises(ExpressionError) as caught:
        expression.evaluate(VALUES)
    assert words in str(caught.value)


# Proof that nothing in a rejected expression runs.

CREATING = [
    "open({path!r}, 'w')",
    "__import__('os').system('touch {path}')",
    "exec(\"open({path!r}, 'w')\")",
    "eval(\"open({path!r}, 'w')\")",
    "[open({path!r}, 'w') for i in x]",
    "(lambda: open({path!r}, 'w'))()",
    "x.__class__.__base__.__subclasses__()",
    "f'{{open({path!r}, \"w\")}}'",
]


@pytest.mark.parametrize("template", CREATING)
def test_rejected_expression_creates_no_file(template, tmp_path):
    path = tmp_path / "created"
    text = template.format(path=str(path))
    with pytest.raises(ExpressionError):
        expression = parse_expression(text)
        expression.evaluate({"x": X})
    assert not path.exists()


@pytest.mark.parametrize("template", CREATING)
def test_rejected_expression_imports_nothing(template, tmp_path, monkeypatch):
    text = template.format(path=str(tmp_path / "created"))
    calls = []
    original_import = builtins.__import__
    original_compile = builtins.compile

    def record_import(name, *args, **kwargs):
        calls.append(("__import__", name))
        return original_import(name, *args, **kwargs)

    def record_compile(source, filename, mode, flags=0, *args, **kwargs):
        if not flags & ast.PyCF_ONLY_AST:
            calls.append(("compile", source))
        return original_compile(source, filename, mode, flags, *args, **kwargs)

    def record_eval(*args, **kwargs):
        calls.append(("eval", args))

    def record_exec(*args, **kwargs):
        calls.append(("exec", args))

    # Only the parse runs patched, because pytest.raises and monkeypatch.setattr import
    # modules themselves. So __import__ is patched last and the error is checked after.
    raised = None
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "compile", record_compile)
        patch.setattr(builtins, "eval", record_eval)
        patch.setattr(builtins, "exec", record_exec)
        patch.setattr(builtins, "__import__", record_import)
        try:
            parse_expression(text)
        except ExpressionError as error:
            raised = error
    assert isinstance(raised, ExpressionError)
    assert calls == []


def test_accepted_expression_compiles_no_code(monkeypatch):
    calls = []
    original_compile = builtins.compile

    def record_compile(source, filename, mode, flags=0, *args, **kwargs):
        if not flags & ast.PyCF_ONLY_AST:
            calls.append(source)
        return original_compile(source, filename, mode, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "compile", record_compile)
        patch.setattr(builtins, "eval", lambda *args, **kwargs: calls.append(args))
        patch.setattr(builtins, "exec", lambda *args, **kwargs: calls.append(args))
        result = evaluate("sum((y := 2.0 * x) * y + y)")
    assert calls == []
    assert float(result) == pytest.approx(np.sum((2 * X) ** 2 + 2 * X))


# Deep nesting.

DEEP = [
    "(" * 500 + "x" + ")" * 500,
    "-" * (MAX_DEPTH + 100) + "x",
    "-" * 100_000 + "x",
    "+".join(["x"] * 100_000),
    "sum(" * 400 + "x" + ")" * 400,
    "[" * 3000 + "x" + "]" * 3000,
    "x" + "[0]" * 5000,
]


@pytest.mark.parametrize("text", DEEP, ids=lambda text: f"{text[:8]}...({len(text)} characters)")
def test_deep_nesting_is_expression_error(text):
    with pytest.raises(ExpressionError, match="expression is too deeply nested"):
        parse_expression(text)


# Random text.

TOKENS = [
    "x", "y", "M", "1", "2.5", "0", "-", "+", "*", "/", "**", "@", "(", ")", "[", "]", ",",
    ":", ":=", "<", ">", "==", "&", "|", "~", "e", "pi", "sum", "exp", "stack", "where",
    "reshape", "axis=", "keepdims=", "True", "None", "'float32'", "dtype=", ".", "_a", "lambda",
    "for", "in", "if", "else", "=", "not", "and", "__import__", "'os'", "open",
]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable, max_size=40))
def test_random_text_parses_or_raises(text):
    try:
        parse_expression(text)
    except ExpressionError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=12).map(" ".join))
def test_random_tokens_parse_or_raise(text):
    try:
        expression = parse_expression(text)
    except ExpressionError:
        return
    # A parsed expression may still fail on these values, but only with the errors of
    # invalid input, never with another exception type.
    values = {name: VALUES.get(name, X) for name in expression.names}
    try:
        expression.evaluate(values)
    except (ExpressionError, ValueError, TypeError, IndexError):
        pass
