"""The ``gpuflow check`` subcommand: backend parity and finite-difference checks of an expression.

``gpuflow check EXPR NAME=VALUE ...`` runs ``gpuflow.testing.compare_backends``
over the chosen backends and ``gpuflow.testing.compare_gradients`` on the first
of them, prints the worst error of every check, and exits with status 1 when a
check fails. ``--plugin FILE.py`` imports a Python file of the user's (running
its code) so that EXPR can call the operations it defines with
``gpuflow.define_op``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys

import numpy

from gpuflow import backends
from gpuflow.cli import CommandError
from gpuflow.cli.inputs import add_input_arguments, cast_inputs, collect_inputs, match_inputs
from gpuflow.cli.parser import FUNCTIONS, parse_expression
from gpuflow.ops.registry import Operation
from gpuflow.testing import (
    KNOWN_BACKENDS,
    available_backends,
    compare_backends,
    compare_gradients,
    unavailable_reason,
)

NAME = "check"
HELP = "check an expression's gradients across backends and against finite differences"

DESCRIPTION = """\
Evaluate EXPR and its gradient with respect to every floating-point input on
each backend of --backends, and compare the results with those of the first
backend. Then compare the first backend's reverse-mode gradients with central
finite differences in float64 along random directions (--order 2 also checks
Hessian-vector products). The table lists the worst absolute and relative
error of each check with its tolerance."""

EPILOG = """\
examples:
  gpuflow check "sum(sigmoid(X @ w))" --random X=100x3 w=3
  gpuflow check "logsumexp(x)" x=1,2,3 --backends numpy,array_api_strict --order 2
  gpuflow check "sum(cube(x))" x=1,2,3 --plugin my_ops.py --json

plugins:
  --plugin takes a path to a .py file or the name of a module on Python's
  module search path. The file is imported, which runs its code, so name only
  files you trust. Every operation that the plugin binds to a public name
  with gpuflow.define_op becomes a function of EXPR under that name.

tolerances:
  Parity uses the defaults of gpuflow.testing.assert_parity for the dtype of
  each output (float64: rtol 1e-10, atol 1e-12; float32: rtol 1e-5, atol 1e-6).
  Finite differences use rtol 1e-5 and atol 1e-7 plus an estimate of their
  rounding error.

exit status: 0 when every check passes, 1 when one fails, 2 for invalid
input (one line on stderr)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_input_arguments(parser, "the expression to check")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of --random and of the random directions of the finite differences "
        "(default 0)",
    )
    parser.add_argument(
        "--backends",
        metavar="NAME,...",
        help=f"the backends to compare, separated by commas, from {', '.join(KNOWN_BACKENDS)}; "
        "the first is the reference (default: every one available here)",
    )
    parser.add_argument(
        "--order",
        type=int,
        choices=(1, 2),
        default=1,
        help="1 checks gradients, 2 also checks Hessian-vector products (default 1)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="the floating-point type that numeric inputs are cast to for the parity "
        "check (default float64); finite differences always run in float64",
    )
    parser.add_argument(
        "--plugin",
        metavar="FILE.py|MODULE",
        action="append",
        default=[],
        help="import this Python file or module, running its code, and make its "
        "define_op operations callable in EXPR by their names (repeatable)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object in place of the table (NaN and inf as strings)",
    )


# Plugins.


def _import_plugin(spec: str):
    """Import the file or module ``spec`` and return the module."""
    is_path = spec.endswith(".py") or os.sep in spec or "/" in spec
    if not is_path:
        try:
            return importlib.import_module(spec)
        except ModuleNotFoundError as error:
            if error.name != spec.split(".")[0] and error.name != spec:
                raise _plugin_failure(spec, error) from None
            raise CommandError(
                f"plugin module {spec} not found; pass a path to a .py file, for example "
                f"--plugin ./{spec}.py, or install the module"
            ) from None
        except Exception as error:  # The plugin's own code can raise anything.
            raise _plugin_failure(spec, error) from None
    if not os.path.isfile(spec):
        raise CommandError(f"plugin file not found: {spec}; check the path")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(spec))[0])
    module_name = f"gpuflow_plugin_{stem}"
    location = importlib.util.spec_from_file_location(module_name, spec)
    if location is None or location.loader is None:
        raise CommandError(f"cannot import plugin {spec}; pass a Python source file (.py)")
    module = importlib.util.module_from_spec(location)
    sys.modules[module_name] = module
    try:
        location.loader.exec_module(module)
    except Exception as error:  # The plugin's own code can raise anything.
        del sys.modules[module_name]
        raise _plugin_failure(spec, error) from None
    return module


def _plugin_failure(spec: str, error: Exception) -> CommandError:
    detail = " ".join(str(error).split()) or "no message"
    return CommandError(
        f"importing plugin {spec} failed with {type(error).__name__}: {detail}; "
        "fix the plugin so that it imports"
    )


def load_plugins(specs) -> dict:
    """Return the operations of the plugins ``specs``, by the public names they are bound to.

    Built-in operations that a plugin imports under their own names are left out.
    """
    operations = {}
    sources = {}
    for spec in specs:
        module = _import_plugin(spec)
        found = {
            name: value
            for name, value in vars(module).items()
            if isinstance(value, Operation)
            and not name.startswith("_")
            and FUNCTIONS.get(name) is not value
        }
        if not found:
            raise CommandError(
                f"plugin {spec} defines no operation; bind one to a public name, for "
                "example cube = gpuflow.define_op('cube', forward, vjp)"
            )
        for name, operation in found.items():
            if name in FUNCTIONS:
                raise CommandError(
                    f"operation {name} of plugin {spec} has the name of a built-in function; "
                    "bind it to another name"
                )
            if name in operations and operations[name] is not operation:
                raise CommandError(
                    f"operation {name} is defined by both plugins {sources[name]} and {spec}; "
                    "rename one of them"
                )
            operations[name] = operation
            sources[name] = spec
    return operations


# Backends.


def select_backends(text: str | None) -> list[str]:
    """Return the backend names of --backends, checked, or every available one."""
    if text is None:
        return list(available_backends())
    names = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            raise CommandError(
                f"invalid --backends {text!r}: empty name; list backend names separated by "
                "commas, for example --backends numpy,array_api_strict"
            )
        if name not in KNOWN_BACKENDS:
            raise CommandError(
                f"unknown backend {name!r} in --backends; choose from "
                f"{', '.join(KNOWN_BACKENDS)}"
            )
        reason = unavailable_reason(name)
        if reason is not None:
            raise CommandError(
                f"backend {name} of --backends is not available here: {reason} (available "
                f"here: {', '.join(available_backends())})"
            )
        if name not in names:
            names.append(name)
    return names


# Running the checks.


def _as_command_error(error: Exception) -> CommandError:
    text = " ".join(str(error).split()) or type(error).__name__
    if ";" not in text:
        text += "; check the expression and the shapes of its inputs"
    return CommandError(text)


@contextlib.contextmanager
def _quiet(backend_names):
    """Silence floating-point warnings, because NaN and inf show in the table already."""
    with contextlib.ExitStack() as stack:
        for name in backend_names:
            stack.enter_context(backends.get_backend(name).errstate())
        yield


def run_checks(expression, inputs, backend_names, order: int, seed: int) -> list:
    """Run the parity and gradient checks and return the Comparison records."""
    names = [item.name for item in inputs]
    arrays = [item.array for item in inputs]
    numbers = tuple(
        position for position, item in enumerate(inputs)
        if numpy.issubdtype(item.array.dtype, numpy.floating)
    )
    if not numbers:
        raise CommandError(
            f"none of the inputs {', '.join(names)} is floating-point, so there is nothing "
            "to differentiate; give a numeric input"
        )
    function = expression.function(names)
    try:
        with _quiet(backend_names):
            comparisons = compare_backends(
                function, *arrays, backends=backend_names, argnums=numbers
            )
            comparisons += compare_gradients(
                function, *arrays, order=order, argnums=numbers, seed=seed,
                backend=backend_names[0],
            )
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as error:
        raise _as_command_error(error) from None
    except MemoryError:
        raise CommandError(
            "out of memory while evaluating the expression; use smaller inputs"
        ) from None
    return comparisons


# Output.


def _format_number(value) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    return f"{value:.3g}"


_COLUMNS = (
    "check", "output", "backend", "reference", "max abs error", "max rel error", "rtol",
    "atol", "result",
)


def format_table(comparisons, backend_names) -> str:
    """Format one row per check, then the failure messages and a summary line."""
    rows = [
        (
            comparison.check,
            comparison.output,
            comparison.backend,
            comparison.reference,
            _format_number(comparison.max_abs_error),
            _format_number(comparison.max_rel_error),
            _format_number(comparison.rtol),
            _format_number(comparison.atol),
            "ok" if comparison.passed else "FAIL",
        )
        for comparison in comparisons
    ]
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [_COLUMNS, *rows]]
    if len(backend_names) == 1:
        lines.append(
            f"note: only the backend {backend_names[0]} was given, so no parity was checked"
        )
    failures = [comparison for comparison in comparisons if not comparison.passed]
    for comparison in failures:
        lines.append(f"FAIL: {comparison.message}")
    if failures:
        lines.append(f"{len(failures)} of {len(comparisons)} checks failed")
    else:
        lines.append(f"all {len(comparisons)} checks passed")
    return "\n".join(lines)


def _json_number(value):
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"


def format_json(comparisons, args, backend_names) -> str:
    """Format the checks as one JSON object with the keys of the table, per check."""
    checks = [
        {
            "check": comparison.check,
            "output": comparison.output,
            "backend": comparison.backend,
            "reference": comparison.reference,
            "max_abs_error": _json_number(comparison.max_abs_error),
            "max_rel_error": _json_number(comparison.max_rel_error),
            "rtol": comparison.rtol,
            "atol": comparison.atol,
            "passed": comparison.passed,
            "index": None if comparison.index is None else list(comparison.index),
            "expected": _json_number(comparison.expected),
            "actual": _json_number(comparison.actual),
            "message": comparison.message,
        }
        for comparison in comparisons
    ]
    document = {
        "expression": args.expression,
        "backends": backend_names,
        "dtype": args.dtype,
        "order": args.order,
        "seed": args.seed,
        "passed": all(comparison.passed for comparison in comparisons),
        "checks": checks,
    }
    return json.dumps(document, allow_nan=False)


def run(args) -> int:
    """Run ``gpuflow check`` with parsed arguments; return 0 if every check passes, else 1."""
    # load_plugins rejects the names that parse_expression would reject.
    operations = load_plugins(args.plugin)
    expression = parse_expression(args.expression, extra_functions=operations)
    backend_names = select_backends(args.backends)
    inputs = collect_inputs(args.assignments, args.inputs, args.random, args.seed)
    inputs = match_inputs(expression, cast_inputs(inputs, numpy.dtype(args.dtype)))
    if not inputs:
        raise CommandError(
            f"{args.expression!r} has no inputs, so there is nothing to check; use an input "
            "name, for example x * pi with x=1"
        )
    comparisons = run_checks(expression, inputs, backend_names, args.order, args.seed)
    if args.json:
        print(format_json(comparisons, args, backend_names))
    else:
        print(format_table(comparisons, backend_names))
    return 0 if all(comparison.passed for comparison in comparisons) else 1
