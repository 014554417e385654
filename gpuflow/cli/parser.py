"""A safe parser for the array expressions of the ``gpuflow`` command.

``parse_expression`` reads the text with Python's ``ast`` module in ``eval``
mode and checks every node against a whitelist before anything runs. Nothing
reaches ``eval``, ``exec`` or a compiled code object. Instead, the checked tree
is translated into a flat list of steps for a small stack machine
(``gpuflow.cli.evaluation``). Both the translation and the evaluation are
loops, so a deep expression cannot overflow the Python stack. Trees nested
more than ``MAX_DEPTH`` levels, and texts that Python's own parser rejects as
too deep, raise ExpressionError.

The language:

* numbers (int and float), and ``True``, ``False`` and ``None`` as keyword values;
* names of inputs, which must not begin with an underscore;
* ``+ - * / ** @``, unary ``-`` and ``+``, and ``~``, ``&`` and ``|`` on boolean arrays;
* comparisons ``< <= > >= == !=``, including chains such as ``0 < x < 1``, which
  evaluate every operand (there is no short-circuit) and combine the results
  with ``logical_and``;
* calls of the functions in ``FUNCTIONS`` with positional arguments and the
  keywords in ``KEYWORDS``. The keywords ``axis`` and ``axes`` take constant
  integers, tuples of them or None, ``shape`` takes a constant integer or a
  tuple of them, ``keepdims`` takes True or False,
  ``dtype`` takes a string constant from ``DTYPES``, and ``a_min`` and ``a_max``
  take None or any expression;
* tuple and list literals, for example ``stack([x, y])`` or ``axis=(0, 1)``;
* ``(y := expr)``, which binds an intermediate that later parts of the
  expression reuse, in Python's left-to-right evaluation order;
* subscripts of an input or an intermediate with constant integers and
  slices, for example ``x[0]``, ``x[1:3]`` or ``X[:, 0]``.

The names ``pi``, ``e``, ``inf`` and ``nan`` are the mathematical constants
unless an input of that name is given. ``Expression.names`` leaves them out,
and ``Expression.constant_names`` lists the ones the expression uses. A
constant name passed to ``Expression.function`` (or a key of the values given
to ``Expression.evaluate``) makes it an input instead. So ``e`` is Euler's
number in ``exp(x) - e``, but an input in ``e * x`` when a value for ``e`` is
given. These names cannot be bound with ``:=``.

Operations on Python numbers alone, such as ``2 * 3`` in ``reshape(x, (2 * 3,))``,
use Python arithmetic and keep Python numbers. Integer results at or above
2**63 in magnitude, complex results, division by zero and float overflow raise
ExpressionError. Everything that involves an array calls the matching gpuflow
operation (``add`` for ``+``, ``less`` for ``<``), so ``Expression.function``
works with ``gpuflow.value_and_grad``.
"""

from __future__ import annotations

import ast
import inspect
import math
import warnings

from gpuflow import ops
from gpuflow.cli import ExpressionError, evaluation

__all__ = [
    "DTYPES",
    "Expression",
    "ExpressionError",
    "FUNCTIONS",
    "KEYWORDS",
    "MAX_DEPTH",
    "parse_expression",
]


# The callable functions, by name: the differentiable operations and a few without a gradient.
FUNCTIONS = {
    name: getattr(ops, name)
    for name in sorted(
        [
            *ops.DIFFERENTIABLE,
            "isfinite",
            "logical_and",
            "logical_not",
            "logical_or",
            "ones_like",
            "sign",
            "zeros_like",
        ]
    )
}

KEYWORDS = ("a_max", "a_min", "axes", "axis", "dtype", "keepdims", "shape")

# The dtype names that astype accepts. The list is closed so that a dtype string can
# never name another attribute of the array library.
DTYPES = (
    "bool",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
)

CONSTANTS = {"pi": math.pi, "e": math.e, "inf": math.inf, "nan": math.nan}

MAX_DEPTH = 1000

_LANGUAGE = (
    "the expression may contain numbers, input names, arithmetic, comparisons, calls of "
    "known functions, tuples, lists, := and subscripts of names"
)


def _known_functions(functions=FUNCTIONS) -> str:
    return ", ".join(functions)


_OPERATOR_SYMBOLS = {
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitXor: "^",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}


class Expression:
    """A parsed expression: its input names and a program that evaluates it.

    Create one with ``parse_expression``. ``names`` lists the free input names
    in order of first appearance, without names bound by ``:=`` and without
    the constants ``pi``, ``e``, ``inf`` and ``nan``, which ``constant_names``
    lists instead.
    """

    def __init__(self, text: str, names, constant_names, steps):
        self.text = text
        self.names = tuple(names)
        self.constant_names = tuple(constant_names)
        self._steps = tuple(steps)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def input_names(self, value_names) -> tuple:
        """Return ``names`` plus the constant names that are among ``value_names``.

        ``value_names`` are the names that have values. The order is that of
        first appearance in the expression, with the constant names last.
        """
        value_names = set(value_names)
        return self.names + tuple(name for name in self.constant_names if name in value_names)

    def function(self, names):
        """Return a function of positional arguments, one for each of ``names``, in that order.

        ``names`` must contain every name of ``names`` of this expression and
        may contain constant names, which then become inputs. The function
        evaluates the expression with gpuflow operations, so it works with
        ``gpuflow.value_and_grad``; an argument the expression does not use
        gets a zero gradient there.
        """
        names = tuple(names)
        if len(set(names)) != len(names):
            repeated = sorted({name for name in names if names.count(name) > 1})
            raise ExpressionError(
                f"names {', '.join(repeated)} appear more than once; give each input once"
            )
        missing = [name for name in self.names if name not in names]
        if missing:
            raise ExpressionError(
                f"no argument for input {', '.join(missing)} of {self.text!r}; "
                "include every name of Expression.names"
            )
        steps = self._steps
        text = self.text

        def evaluate(*arguments):
            if len(arguments) != len(names):
                raise TypeError(
                    f"the function of {text!r} takes {len(names)} positional arguments "
                    f"({', '.join(names)}) but {len(arguments)} were given"
                )
            return evaluation.run(steps, dict(zip(names, arguments)))

        evaluate.__name__ = "expression"
        evaluate.__qualname__ = "expression"
        evaluate.__doc__ = f"Evaluate {text!r}."
        try:
            evaluate.__signature__ = inspect.Signature(
                [inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY) for name in names]
            )
        except ValueError:
            # A name that is not a valid parameter name keeps the plain *arguments signature.
            pass
        return evaluate

    def evaluate(self, values: dict):
        """Evaluate the expression with ``values``, a dict from input name to array or number.

        Values for names the expression does not use are ignored. The result
        is a gpuflow Tensor, or a Python number when no array is involved.
        """
        names = self.input_names(values)
        missing = [name for name in names if name not in values]
        if missing:
            raise ExpressionError(
                f"no value for input {', '.join(missing)} of {self.text!r}; "
                "add it to the values"
            )
        return self.function(names)(*[values[name] for name in names])


# Parsing and checking.


def parse_expression(text: str, extra_functions=None) -> Expression:
    """Parse ``text`` and check it against the language; raise ExpressionError if it is invalid.

    Nothing in ``text`` runs here. ``extra_functions`` maps more names to
    callables, such as operations made with ``gpuflow.define_op``, that the
    expression may call besides ``FUNCTIONS``. Their names must be identifiers
    that do not begin with an underscore or shadow a name of ``FUNCTIONS``.
    """
    if not isinstance(text, str):
        raise TypeError(f"the expression must be a str, got {type(text).__name__}")
    # Python rejects leading whitespace in eval mode, so strip it and shift the columns.
    stripped = text.lstrip(" \t")
    shift = len(text) - len(stripped)
    if not stripped.strip():
        raise ExpressionError("the expression is empty; write one, for example 'x**2'")
    tree = _parse_tree(text, stripped, shift)
    functions = FUNCTIONS if not extra_functions else _with_extra(extra_functions)
    return _Compiler(text, stripped, shift, functions).compile(tree)


def _with_extra(extra_functions) -> dict:
    for name, function in extra_functions.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(
                f"invalid extra function name {name!r}; use an identifier that does not "
                "begin with an underscore"
            )
        if name in FUNCTIONS:
            raise ValueError(
                f"extra function {name!r} has the name of a built-in function; rename it"
            )
        if not callable(function):
            raise TypeError(f"extra function {name!r} is not callable: {function!r}")
    return {**FUNCTIONS, **extra_functions}


def _parse_tree(text: str, stripped: str, shift: int):
    try:
        with warnings.catch_warnings():
            # Python warns about some literals (such as '1if'), but the checks below decide.
            warnings.simplefilter("ignore")
            return ast.parse(stripped, mode="eval")
    except SyntaxError as error:
        # Python 3.11 reports "too many nested parentheses". NOTE: the other phrases are
        # meant for the wording of other Python versions and are not tested here.
        if any(words in (error.msg or "") for words in _NESTING_MESSAGES):
            raise _too_deep() from None
        raise ExpressionError(_syntax_message(text, error, shift)) from None
    except (RecursionError, MemoryError):
        raise _too_deep() from None
    except ValueError as error:
        # For example a null character or an integer literal with too many digits.
        raise ExpressionError(f"invalid expression: {error}; correct the expression") from None


_NESTING_MESSAGES = ("too many nested", "too complex", "recursion")


def _too_deep() -> ExpressionError:
    return ExpressionError(
        f"expression is too deeply nested (more than {MAX_DEPTH} levels, or more than "
        "Python's parser accepts); "
        "reduce the nesting, for example by writing a long sum as sum(stack([...]))"
    )


def _syntax_message(text: str, error: SyntaxError, shift: int) -> str:
    line = error.lineno or 1
    column = (error.offset or 1) + (shift if line == 1 else 0)
    where = f"column {column}" if line == 1 else f"line {line}, column {column}"
    detail = error.msg or "invalid syntax"
    if detail == "invalid syntax":
        detail = ""
    else:
        detail = f" ({detail})"
    return f"invalid syntax at {where}{detail} in {text!r}; correct the expression there"


class _Compiler:
    """Check an expression tree and translate it into steps, in evaluation order.

    The work list contains nodes still to visit and actions to run once the nodes
    before them are done, so the walk follows Python's evaluation order
    without recursion. Name bookkeeping happens during the walk, which is how
    an intermediate bound by := is known to the parts after it.
    """

    def __init__(self, text: str, stripped: str, shift: int, functions=FUNCTIONS):
        self.functions = functions
        self.text = text
        self.stripped = stripped
        self.shift = shift
        self.names: list[str] = []
        self.constant_names: list[str] = []
        self.bound: set[str] = set()
        self.steps: list = []
        self.work: list = []

    def compile(self, tree) -> Expression:
        self.work.append((tree.body, 1))
        while self.work:
            item, depth = self.work.pop()
            if callable(item):
                item()
            else:
                if depth > MAX_DEPTH:
                    raise _too_deep()
                self.visit(item, depth)
        return Expression(self.text, self.names, self.constant_names, self.steps)

    def schedule(self, *items, depth: int):
        """Queue nodes to visit and actions to run, first item first."""
        for item in reversed(items):
            self.work.append((item, depth + 1))

    def emit(self, step):
        self.steps.append(step)

    def emit_later(self, step):
        return lambda: self.emit(step)

    # Messages.

    def segment(self, node) -> str:
        source = ast.get_source_segment(self.stripped, node) or type(node).__name__
        source = " ".join(source.split())
        return source if len(source) <= 40 else source[:37] + "..."

    def column(self, node) -> int:
        offset = getattr(node, "col_offset", 0) + 1
        return offset + self.shift if getattr(node, "lineno", 1) == 1 else offset

    def positioned(self, step, node):
        """Label ``step`` with its place in the expression, for anomaly mode's messages."""
        segment = ast.get_source_segment(self.stripped, node) or ""
        label = f"column {self.column(node)} of the expression ({segment})"
        return evaluation.positioned_step(step, label)

    def reject(self, node, problem: str, fix: str):
        raise ExpressionError(f"{problem} (column {self.column(node)}); {fix}")

    # Visiting.

    def visit(self, node, depth: int):
        handler = getattr(self, "visit_" + type(node).__name__, None)
        if handler is None:
            self.reject_other(node)
        handler(node, depth)

    def reject_other(self, node):
        messages = {
            ast.Attribute: (
                "attribute access", "use a function instead, for example transpose(x) for x.T"
            ),
            ast.Lambda: ("lambda", "write the expression directly"),
            ast.ListComp: ("a comprehension", "use array inputs and functions such as sum"),
            ast.SetComp: ("a comprehension", "use array inputs and functions such as sum"),
            ast.DictComp: ("a comprehension", "use array inputs and functions such as sum"),
            ast.GeneratorExp: ("a comprehension", "use array inputs and functions such as sum"),
            ast.JoinedStr: ("an f-string", "remove it, because the expression computes arrays"),
            ast.IfExp: ("if-else", "use where(condition, x1, x2)"),
            ast.BoolOp: (
                "and/or", "use & or | on boolean arrays, for example (x > 0) & (x < 1)"
            ),
            ast.Starred: ("a starred argument", "list the arguments one by one"),
            ast.Slice: ("a slice outside a subscript", "use slices only inside x[...]"),
            ast.Set: ("a set", "use a list or a tuple, for example stack([x, y])"),
            ast.Dict: ("a dict", "use a list or a tuple, for example stack([x, y])"),
        }
        default = (f"the {type(node).__name__} expression", _LANGUAGE)
        problem, fix = messages.get(type(node), default)
        self.reject(node, f"{problem} {self.segment(node)!r} is not allowed", fix)

    def visit_Constant(self, node, depth: int):
        value = node.value
        if isinstance(value, bool) or value is None:
            self.reject(
                node,
                f"{value!r} is only allowed as a keyword value",
                "use it in a call, for example sum(x, axis=0, keepdims=True)",
            )
        if isinstance(value, (str, bytes)):
            self.reject(
                node,
                f"string constant {self.segment(node)} is only allowed as the dtype keyword",
                "write for example astype(x, dtype='float32')",
            )
        if isinstance(value, complex):
            self.reject(
                node, f"complex number {self.segment(node)} is not supported", "use real numbers"
            )
        if not isinstance(value, (int, float)):
            self.reject(node, f"constant {self.segment(node)} is not allowed", _LANGUAGE)
        if isinstance(value, int) and abs(value) >= evaluation.INT64_LIMIT:
            self.reject(
                node,
                f"integer {self.segment(node)} is too large (2**63 or more)",
                "write it as a float, for example 1e30",
            )
        self.emit(evaluation.constant_step(value))

    def check_name(self, node, name: str):
        if name.startswith("_"):
            self.reject(
                node,
                f"name {name!r} is not allowed because it begins with an underscore",
                "rename it to begin with a letter",
            )

    def visit_Name(self, node, depth: int):
        name = node.id
        self.check_name(node, name)
        if name in self.bound:
            self.emit(evaluation.load_step(name))
        elif name in CONSTANTS:
            if name not in self.constant_names:
                self.constant_names.append(name)
            self.emit(evaluation.load_constant_step(name, CONSTANTS[name]))
        else:
            if name not in self.names:
                self.names.append(name)
            self.emit(evaluation.load_step(name))

    def visit_NamedExpr(self, node, depth: int):
        name = node.target.id
        self.check_name(node.target, name)

        def bind():
            if name in self.names:
                self.reject(
                    node,
                    f"{name} := ... rebinds the input {name}",
                    "bind the intermediate to a new name",
                )
            if name in CONSTANTS:
                self.reject(
                    node,
                    f"{name} := ... rebinds the constant {name}",
                    "bind the intermediate to a name other than pi, e, inf and nan",
                )
            self.bound.add(name)
            self.emit(evaluation.store_step(name))

        self.schedule(node.value, bind, depth=depth)

    def visit_BinOp(self, node, depth: int):
        binary = evaluation.BINARY_OPERATORS.get(type(node.op))
        if binary is None:
            symbol = _OPERATOR_SYMBOLS.get(type(node.op), type(node.op).__name__)
            self.reject(
                node,
                f"operator {symbol} is not supported",
                "use + - * / ** @ on arrays, & | on boolean arrays, or a function",
            )
        step = self.positioned(evaluation.binary_step(binary), node)
        self.schedule(node.left, node.right, self.emit_later(step), depth=depth)

    def visit_UnaryOp(self, node, depth: int):
        unary = evaluation.UNARY_OPERATORS.get(type(node.op))
        if unary is None:
            self.reject(node, "'not' is not supported", "use ~ on a boolean array")
        self.schedule(node.operand, self.emit_later(evaluation.unary_step(unary)), depth=depth)

    def visit_Compare(self, node, depth: int):
        entries = []
        for op in node.ops:
            entry = evaluation.COMPARISONS.get(type(op))
            if entry is None:
                symbol = _OPERATOR_SYMBOLS.get(type(op), type(op).__name__)
                self.reject(
                    node,
                    f"comparison {symbol!r} is not supported",
                    "use ==, !=, <, <=, > or >=",
                )
            entries.append(entry)
        self.schedule(
            node.left,
            *node.comparators,
            self.emit_later(evaluation.compare_step(tuple(entries))),
            depth=depth,
        )

    def visit_Tuple(self, node, depth: int):
        self.visit_sequence(node, tuple, depth)

    def visit_List(self, node, depth: int):
        self.visit_sequence(node, list, depth)

    def visit_sequence(self, node, kind, depth: int):
        for element in node.elts:
            if isinstance(element, ast.Starred):
                self.reject_other(element)
        step = evaluation.build_step(kind, len(node.elts))
        self.schedule(*node.elts, self.emit_later(step), depth=depth)

    def visit_Subscript(self, node, depth: int):
        if not isinstance(node.value, ast.Name):
            self.reject(
                node,
                f"subscript {self.segment(node)!r} is not allowed because only an input or a "
                "name bound with := can be indexed",
                "index the input itself, for example x[0] + 1 in place of (x + 1)[0]",
            )
        key = self.static_key(node.slice)
        step = evaluation.subscript_step(node.value.id, key)
        self.schedule(node.value, self.emit_later(step), depth=depth)

    def visit_Call(self, node, depth: int):
        function_node = node.func
        if not isinstance(function_node, ast.Name):
            self.reject(
                node,
                f"call {self.segment(node)!r} is not allowed because only known functions "
                "can be called, by name",
                f"call one of {_known_functions(self.functions)}",
            )
        name = function_node.id
        self.check_name(function_node, name)
        function = self.functions.get(name)
        if function is None:
            self.reject(
                function_node,
                f"unknown function {name!r}",
                f"use one of the known functions: {_known_functions(self.functions)}",
            )
        for argument in node.args:
            if isinstance(argument, ast.Starred):
                self.reject_other(argument)
        items = list(node.args)
        keyword_names = []
        for keyword in node.keywords:
            items.append(self.keyword_item(keyword, name))
            keyword_names.append(keyword.arg)
        self.check_signature(node, name, function, len(node.args), keyword_names)
        step = self.positioned(
            evaluation.call_step(function, len(node.args), tuple(keyword_names)), node
        )
        self.schedule(*items, self.emit_later(step), depth=depth)

    def check_signature(self, node, name, function, positional_count, keyword_names):
        signature = inspect.signature(function)
        try:
            signature.bind(*([None] * positional_count), **dict.fromkeys(keyword_names))
        except TypeError as error:
            self.reject(
                node,
                f"invalid call of {name}: {error}",
                f"call it as {name}{signature}",
            )

    def keyword_item(self, keyword, function_name: str):
        """Check a keyword argument and return the node or action that produces its value."""
        if keyword.arg is None:
            self.reject(keyword.value, "** unpacking is not allowed", "write each keyword out")
        name = keyword.arg
        if name not in KEYWORDS:
            self.reject(
                keyword.value,
                f"keyword {name!r} is not allowed",
                f"use one of {', '.join(KEYWORDS)}",
            )
        value = keyword.value
        if name == "dtype":
            if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
                self.reject(
                    value,
                    "dtype must be a string constant",
                    "write for example astype(x, dtype='float32')",
                )
            if value.value not in DTYPES:
                self.reject(
                    value,
                    f"unknown dtype {value.value!r}",
                    f"use one of {', '.join(DTYPES)}",
                )
            return self.emit_later(evaluation.constant_step(value.value))
        if name == "keepdims":
            if not (isinstance(value, ast.Constant) and isinstance(value.value, bool)):
                self.reject(value, "keepdims must be True or False", "write keepdims=True")
            return self.emit_later(evaluation.constant_step(value.value))
        if name in ("axis", "axes", "shape"):
            return self.emit_later(evaluation.constant_step(self.static_axes(value, name)))
        # a_min and a_max take None or any expression.
        if isinstance(value, ast.Constant) and value.value is None:
            return self.emit_later(evaluation.constant_step(None))
        return value

    # Constant arguments, read without running anything.

    def static_int(self, node, role: str) -> int:
        sign = 1
        original = node
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            sign = -1 if isinstance(node.op, ast.USub) else 1
            node = node.operand
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int)
            and not isinstance(node.value, bool)
            and abs(node.value) < evaluation.INT64_LIMIT
        ):
            return sign * node.value
        self.reject(
            original,
            f"{role} {self.segment(original)!r} is not a constant integer",
            "write an integer such as 0 or -1",
        )

    def static_axes(self, node, name: str):
        if isinstance(node, ast.Constant) and node.value is None and name != "shape":
            return None
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self.static_int(element, name) for element in node.elts)
        return self.static_int(node, name)

    def static_key(self, node):
        if isinstance(node, ast.Tuple):
            return tuple(self.static_key_part(part) for part in node.elts)
        return self.static_key_part(node)

    def static_key_part(self, node):
        if isinstance(node, ast.Slice):
            bounds = []
            for bound in (node.lower, node.upper, node.step):
                bounds.append(None if bound is None else self.static_int(bound, "index"))
            if bounds[2] == 0:
                self.reject(node, "slice step 0 is invalid", "use a nonzero step")
            return slice(*bounds)
        return self.static_int(node, "index")
