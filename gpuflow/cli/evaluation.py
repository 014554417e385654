"""The stack machine that evaluates parsed expressions, and the runtime rules of each operator.

``gpuflow.cli.parser`` translates an expression into a list of steps. Each
step is a function of ``(stack, variables)`` that pops its operands from the
stack and pushes its result, and ``run`` executes the steps in a loop.
``variables`` maps the input names, and the names bound by ``:=``, to values.
Operations on Python numbers alone use Python arithmetic with the checks in
``number_arithmetic``, and everything that involves an array calls a gpuflow
operation.
"""

from __future__ import annotations

import ast
import operator

from gpuflow import backends, ops
from gpuflow.anomaly import expression_position
from gpuflow.cli import ExpressionError
from gpuflow.tensor import Tensor, state

INT64_LIMIT = 2**63


def _is_number(value) -> bool:
    return isinstance(value, (bool, int, float))


def _is_array(value) -> bool:
    return isinstance(value, Tensor) or backends.backend_of(value) is not None


def _is_boolean(value) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, Tensor):
        return bool(value.backend.isdtype(value.dtype, "bool"))
    backend = backends.backend_of(value)
    return backend is not None and bool(backend.isdtype(value.dtype, "bool"))


def _kind_of(value) -> str:
    if isinstance(value, tuple):
        return "a tuple"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if value is None:
        return "None"
    return f"a value of type {type(value).__name__}"


# Arithmetic on Python numbers alone.


def _check_number_result(symbol: str, left, right, result):
    if isinstance(result, complex):
        raise ExpressionError(
            f"{left!r} {symbol} {right!r} gives a complex number, which is not supported; "
            "use a non-negative base for fractional powers"
        )
    if isinstance(result, int) and abs(result) >= INT64_LIMIT:
        raise ExpressionError(
            f"{left!r} {symbol} {right!r} gives an integer of magnitude 2**63 or more; "
            "write a float, for example 1e30"
        )
    return result


def number_arithmetic(symbol: str, function, left, right):
    if (
        symbol == "**"
        and isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and abs(left) > 1
        and right * abs(left).bit_length() > 64
    ):
        raise ExpressionError(
            f"{left!r} ** {right!r} gives an integer of magnitude 2**63 or more; "
            f"write a float base, for example {float(left)!r} ** {right!r}"
        )
    try:
        result = function(left, right)
    except ZeroDivisionError:
        raise ExpressionError(
            f"division by zero in {left!r} {symbol} {right!r}; use a nonzero divisor"
        ) from None
    except OverflowError:
        raise ExpressionError(
            f"{left!r} {symbol} {right!r} overflows a float; use smaller numbers"
        ) from None
    return _check_number_result(symbol, left, right, result)


# The runtime operations: each takes evaluated operands and returns the result.


class _BinaryOperator:
    """A binary operator with its gpuflow function and its Python function for numbers."""

    def __init__(self, symbol: str, array_function, number_function=None, boolean=False):
        self.symbol = symbol
        self.array_function = array_function
        self.number_function = number_function
        self.boolean = boolean

    def __call__(self, left, right):
        for operand in (left, right):
            if isinstance(operand, (tuple, list)):
                raise ExpressionError(
                    f"operator {self.symbol} cannot take {_kind_of(operand)}; tuples and "
                    "lists are only function arguments, for example stack([x, y])"
                )
            if self.boolean and not _is_boolean(operand):
                raise ExpressionError(
                    f"operator {self.symbol} needs boolean operands, got {_describe(operand)}; "
                    "combine comparisons, for example (x > 0) & (x < 1)"
                )
        if _is_number(left) and _is_number(right):
            if self.number_function is None:
                raise ExpressionError(
                    f"operator {self.symbol} needs at least one array operand, got "
                    f"{left!r} and {right!r}; apply it to an input"
                )
            return number_arithmetic(self.symbol, self.number_function, left, right)
        return self.array_function(left, right)


def _describe(value) -> str:
    if isinstance(value, Tensor) or backends.backend_of(value) is not None:
        dtype = getattr(value.dtype, "name", None) or str(value.dtype)
        return f"an array of dtype {dtype}"
    return _kind_of(value)


BINARY_OPERATORS = {
    ast.Add: _BinaryOperator("+", ops.add, operator.add),
    ast.Sub: _BinaryOperator("-", ops.subtract, operator.sub),
    ast.Mult: _BinaryOperator("*", ops.multiply, operator.mul),
    ast.Div: _BinaryOperator("/", ops.divide, operator.truediv),
    ast.Pow: _BinaryOperator("**", ops.power, operator.pow),
    ast.MatMult: _BinaryOperator("@", ops.matmul),
    ast.BitAnd: _BinaryOperator("&", ops.logical_and, lambda a, b: a and b, boolean=True),
    ast.BitOr: _BinaryOperator("|", ops.logical_or, lambda a, b: a or b, boolean=True),
}

COMPARISONS = {
    ast.Lt: ("<", ops.less, operator.lt),
    ast.LtE: ("<=", ops.less_equal, operator.le),
    ast.Gt: (">", ops.greater, operator.gt),
    ast.GtE: (">=", ops.greater_equal, operator.ge),
    ast.Eq: ("==", ops.equal, operator.eq),
    ast.NotEq: ("!=", ops.not_equal, operator.ne),
}

def _negative(value):
    if isinstance(value, (tuple, list)):
        raise ExpressionError(
            f"unary - cannot take {_kind_of(value)}; apply it to an array or a number"
        )
    if _is_number(value):
        return -value
    return ops.negative(value)


def _positive(value):
    if isinstance(value, (tuple, list)):
        raise ExpressionError(
            f"unary + cannot take {_kind_of(value)}; apply it to an array or a number"
        )
    return value


def _invert(value):
    if not _is_boolean(value):
        raise ExpressionError(
            f"operator ~ needs a boolean operand, got {_describe(value)}; "
            "apply it to a comparison, for example ~(x > 0)"
        )
    if isinstance(value, bool):
        return not value
    return ops.logical_not(value)


UNARY_OPERATORS = {ast.USub: _negative, ast.UAdd: _positive, ast.Invert: _invert}


def _compare(symbols_and_functions, operands):
    results = []
    for (symbol, array_function, number_function), left, right in zip(
        symbols_and_functions, operands, operands[1:]
    ):
        for operand in (left, right):
            if isinstance(operand, (tuple, list)):
                raise ExpressionError(
                    f"comparison {symbol} cannot take {_kind_of(operand)}; compare arrays "
                    "or numbers"
                )
        if _is_number(left) and _is_number(right):
            results.append(number_function(left, right))
        else:
            results.append(array_function(left, right))
    combined = results[0]
    for result in results[1:]:
        if isinstance(combined, bool) and isinstance(result, bool):
            combined = combined and result
        else:
            combined = ops.logical_and(combined, result)
    return combined


def _index(name: str, value, key):
    if not _is_array(value):
        raise ExpressionError(
            f"cannot index {name} because it is {_kind_of(value)}, not an array; "
            "index an array input"
        )
    return ops.getitem(value, key)


# The steps.


def constant_step(value):
    def step(stack, variables):
        stack.append(value)

    return step


def load_step(name):
    def step(stack, variables):
        stack.append(variables[name])

    return step


def load_constant_step(name, constant):
    # The name is an input when a value for it is given, else the constant.
    def step(stack, variables):
        stack.append(variables[name] if name in variables else constant)

    return step


def store_step(name):
    def step(stack, variables):
        variables[name] = stack[-1]

    return step


def binary_step(binary):
    def step(stack, variables):
        right = stack.pop()
        left = stack.pop()
        stack.append(binary(left, right))

    return step


def unary_step(unary):
    def step(stack, variables):
        stack.append(unary(stack.pop()))

    return step


def compare_step(entries):
    count = len(entries) + 1

    def step(stack, variables):
        operands = stack[-count:]
        del stack[-count:]
        stack.append(_compare(entries, operands))

    return step


def call_step(function, positional_count: int, keyword_names: tuple):
    count = positional_count + len(keyword_names)

    def step(stack, variables):
        values = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        keywords = dict(zip(keyword_names, values[positional_count:]))
        stack.append(function(*values[:positional_count], **keywords))

    return step


def build_step(kind, count: int):
    def step(stack, variables):
        values = stack[len(stack) - count:]
        del stack[len(stack) - count:]
        stack.append(kind(values))

    return step


def subscript_step(name, key):
    def step(stack, variables):
        stack.append(_index(name, stack.pop(), key))

    return step


def positioned_step(step, label: str):
    """Wrap ``step`` so that anomaly mode reports ``label`` for the operations it runs."""

    def labelled(stack, variables):
        if not state.anomaly:
            step(stack, variables)
            return
        with expression_position(label):
            step(stack, variables)

    return labelled


def run(steps, variables):
    stack = []
    for step in steps:
        step(stack, variables)
    (result,) = stack
    if isinstance(result, (tuple, list)):
        raise ExpressionError(
            f"the expression gives {_kind_of(result)}, not an array; combine the items, "
            "for example with stack([x, y])"
        )
    return result
