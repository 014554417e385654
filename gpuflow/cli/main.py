"""Entry point of the ``gpuflow`` command and its ``grad`` subcommand.

``gpuflow grad EXPR NAME=VALUE ...`` evaluates an expression and its gradient
with respect to its inputs. Invalid input ends with exit status 2 and one line
on stderr, "gpuflow grad: error: <problem>; <fix>".
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy

import gpuflow
from gpuflow import backends
from gpuflow.cli import CommandError, scaling
from gpuflow.cli.inputs import add_input_arguments, cast_inputs, collect_inputs, match_inputs
from gpuflow.cli.output import check_output_path, format_json, format_text, write_npz
from gpuflow.cli.parser import FUNCTIONS, ExpressionError, parse_expression

PROGRAM = "gpuflow"

_GRAD_DESCRIPTION = """\
Evaluate EXPR and its gradient with respect to its inputs. For an array-valued
EXPR the gradient is that of the sum of its elements, so an elementwise
expression gives the derivative at every element of a batch in one call."""

_GRAD_EPILOG = f"""\
examples:
  gpuflow grad "a*x**2 + b*x + c" x=3 a=2 b=1 c=4
  gpuflow grad "sum(sigmoid(X @ w))" --random X=100x3 w=3 --wrt w --json
  gpuflow grad "sum(where(m, x, 0.0) ** 2)" --inputs batch.npz --wrt x --output out.npz

expressions:
  numbers, input names, + - * / ** @, comparisons, ~ & | on boolean arrays,
  (y := ...) to reuse an intermediate, subscripts such as x[0], x[1:3] and X[:, 0],
  tuples and lists as arguments, and calls of these functions:
  {", ".join(FUNCTIONS)}.
  pi, e, inf and nan are constants unless an input of that name is given.
  Quote EXPR for the shell. Start an EXPR that begins with - with a space,
  for example " -x**2", so that it is not read as an option.

inputs:
  Put NAME=VALUE arguments before --inputs and --random, because those take
  every argument that follows them. Numeric inputs are cast to --dtype. Boolean
  arrays from files stay boolean, for use as masks, and cannot be differentiated.

output:
  The default output is the value, then one line "grad NAME: ..." per name of
  --wrt; arrays of more than 20 elements print as a summary. --json prints one
  object {{"value": ..., "grad": {{"NAME": ...}}, "backend": ..., "dtype": ...}}
  with arrays as nested lists, and NaN, inf and -inf as the strings "nan", "inf"
  and "-inf", so that the output is valid JSON.

exit status: 0 on success, 1 when --detect-anomaly finds a NaN or infinity,
2 for invalid input (one line on stderr)."""


def _extra_commands():
    """Return the subcommands defined in their own modules, by name.

    Each module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``,
    which returns the exit status or raises CommandError for invalid input.
    """
    from gpuflow.cli import bench, check, graph

    modules = [check, graph, bench]
    return {module.NAME: module for module in modules}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, with exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parsers() -> tuple[argparse.ArgumentParser, dict]:
    """Build the ``gpuflow`` parser; return it and the subparsers by command name."""
    parser = _Parser(
        prog=PROGRAM,
        description="gpuflow: dataflow-graph automatic differentiation on NumPy and CuPy.",
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROGRAM} {gpuflow.__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    grad = subparsers.add_parser(
        "grad",
        help="evaluate an expression and its gradient",
        description=_GRAD_DESCRIPTION,
        epilog=_GRAD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_grad_arguments(grad)
    commands = {"grad": grad}
    for name, module in _extra_commands().items():
        commands[name] = subparsers.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(commands[name])
    return parser, commands


def _add_grad_arguments(grad: argparse.ArgumentParser) -> None:
    add_input_arguments(grad, "the expression to differentiate")

    grad.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random generator of --random (default 0)",
    )
    grad.add_argument(
        "--wrt",
        metavar="NAME,...",
        help="the inputs to differentiate, separated by commas (default: all inputs)",
    )

    grad.add_argument(
        "--backend",
        choices=backends.BACKEND_NAMES,
        default="auto",
        help="the array backend; auto picks cupy when a CUDA device is present (default auto)",
    )
    grad.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="the floating-point type that numeric inputs are cast to (default float64)",
    )

    grad.add_argument(
        "--output",
        metavar="FILE.npz",
        help="also write the keys value and grad_NAME to this .npz file",
    )
    grad.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object in place of text (NaN and inf as strings)",
    )
    grad.add_argument(
        "--detect-anomaly",
        action="store_true",
        help="stop at the first operation whose value or gradient is NaN or infinite, and "
        "name it with its column in EXPR (exit status 1)",
    )
    compile_choice = grad.add_mutually_exclusive_group()
    compile_choice.add_argument(
        "--compile",
        action="store_true",
        help="evaluate through a gpuflow.compile plan: fused regions, run in cache-sized "
        "blocks on NumPy (the default on NumPy)",
    )
    compile_choice.add_argument(
        "--no-compile",
        action="store_true",
        help="evaluate eagerly, operation by operation (the default on CuPy)",
    )
    grad.add_argument(
        "--explain",
        action="store_true",
        help="compile, and print the plan first: its regions, their inputs and outputs, and "
        "the bytes each reads and writes (on stderr with --json)",
    )
    scaling.add_arguments(grad)


def select_wrt(wrt_text: str | None, names: list[str]) -> list[str]:
    """Return the names to differentiate: those of --wrt in its order, or all ``names``."""
    if wrt_text is None:
        return list(names)
    selected = []
    for part in wrt_text.split(","):
        name = part.strip()
        if not name:
            raise CommandError(
                f"invalid --wrt {wrt_text!r}: empty name; list input names separated by "
                "commas, for example --wrt x,y"
            )
        if name not in names:
            raise CommandError(
                f"--wrt name {name} is not an input of the expression; use names from "
                f"{', '.join(names)}"
            )
        if name not in selected:
            selected.append(name)
    return selected


def _check_differentiable(inputs, wrt: list[str]) -> None:
    for item in inputs:
        if item.name in wrt and not numpy.issubdtype(item.array.dtype, numpy.floating):
            others = [name for name in wrt if name != item.name]
            fix = f"leave it out with --wrt {','.join(others)}" if others else (
                "differentiate with respect to a floating-point input with --wrt"
            )
            raise CommandError(
                f"cannot differentiate with respect to {item.name} of dtype "
                f"{item.array.dtype} (from {item.source}): only floating-point inputs have "
                f"gradients; {fix}"
            )


def check_compile_options(args) -> None:
    """Raise CommandError when --compile or --explain meets an option that evaluates eagerly."""
    requested = [name for name, given in (("--compile", args.compile),
                                          ("--explain", args.explain)) if given]
    if not requested:
        return
    eager = [name for name, given in (("--no-compile", args.no_compile),
                                      ("--detect-anomaly", args.detect_anomaly),
                                      ("--chunk-size", args.chunk_size is not None)) if given]
    if eager:
        raise CommandError(
            f"{requested[0]} cannot be combined with {eager[0]}, which evaluates eagerly, "
            f"operation by operation; drop one of the two"
        )


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if ";" not in text:
        text += "; check the expression and the shapes of its inputs"
    return text


def compute(expression, inputs, wrt, backend, compiled=False, explain_to=None):
    """Evaluate the expression and its gradients on ``backend``; return NumPy arrays.

    The result is the value and a dict from each name of ``wrt`` to its gradient.
    With ``compiled`` the expression runs as a gpuflow.compile plan, which is
    printed to the file ``explain_to`` when that is given. Errors of the engine
    (shape mismatches, invalid indices) become CommandError.
    """
    names = [item.name for item in inputs]
    function = expression.function(names)
    argnums = tuple(names.index(name) for name in wrt)
    if compiled:
        differentiate = gpuflow.compile(function, argnums, backend=backend)
    else:
        differentiate = gpuflow.value_and_grad(function, argnums, backend=backend)
    try:
        # NaN and inf show in the printed results, so NumPy's warnings about them would
        # only add noise to stderr.
        with backend.errstate():
            value, grads = differentiate(*[item.array for item in inputs])
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as error:
        raise CommandError(_one_line(error)) from None
    except MemoryError:
        raise CommandError(
            "out of memory while evaluating the expression; use smaller inputs"
        ) from None
    if compiled and explain_to is not None:
        from gpuflow.compile import explain

        print(explain(differentiate.plan), file=explain_to)
    value = numpy.asarray(backend.to_numpy(value))
    gradients = {
        name: numpy.asarray(backend.to_numpy(gradient)) for name, gradient in zip(wrt, grads)
    }
    return value, gradients


def run_grad(args) -> int:
    """Run ``gpuflow grad`` with parsed arguments; return the exit status."""
    expression = parse_expression(args.expression)
    if args.output is not None:
        check_output_path(args.output, args.inputs)
    scaling.check_arguments(args)
    check_compile_options(args)
    scaling.check_expression(args.expression, args)
    inputs = collect_inputs(
        args.assignments, args.inputs, args.random, args.seed, scaling.mmap_mode(args)
    )
    inputs = match_inputs(expression, cast_inputs(inputs, numpy.dtype(args.dtype)))
    names = [item.name for item in inputs]
    if not names:
        raise CommandError(
            f"{args.expression!r} has no inputs, so there is nothing to differentiate; "
            "use an input name, for example x * pi with x=1"
        )
    wrt = select_wrt(args.wrt, names)
    _check_differentiable(inputs, wrt)
    backend = backends.get_backend(args.backend)
    # NOTE: the generated CUDA kernels have not run on a GPU yet. On CuPy the command
    # therefore compiles only with --compile or --explain (see docs/compile.md).
    # Anomaly mode checks operations as they run, which a compiled plan does not do.
    requested = args.compile or args.explain or backend.name != "cupy"
    compiled = requested and not (args.no_compile or args.detect_anomaly)
    explain_to = None
    if args.explain:
        explain_to = sys.stderr if args.json else sys.stdout
    evaluate = functools.partial(compute, compiled=compiled, explain_to=explain_to)
    if scaling.is_requested(args):
        evaluate = functools.partial(scaling.compute, args=args)
    if args.detect_anomaly:
        with gpuflow.detect_anomaly():
            value, grads = evaluate(expression, inputs, wrt, backend)
    else:
        value, grads = evaluate(expression, inputs, wrt, backend)

    if args.output is not None:
        write_npz(args.output, value, grads)
    if args.json:
        print(format_json(value, grads, backend.name, args.dtype))
    else:
        print(format_text(value, grads))
    return 0


def main(argv=None) -> int:
    """Run the ``gpuflow`` command with ``argv`` (default ``sys.argv[1:]``); return the status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parsers()
    try:
        if argv and argv[0] in commands:
            # Intermixed parsing lets NAME=VALUE arguments follow options such as --json.
            args = commands[argv[0]].parse_intermixed_args(argv[1:])
            args.command = argv[0]
        else:
            args = parser.parse_args(argv)
    except SystemExit as exit_request:
        # argparse exits with 0 after --help and --version, and with 2 for a usage error.
        code = exit_request.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        return 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    run = run_grad if args.command == "grad" else _extra_commands()[args.command].run
    try:
        return run(args)
    except BrokenPipeError:
        # The reader stopped early (as in "gpuflow grad ... | head"), so write nothing more.
        sys.stdout = open(os.devnull, "w")
        return 1
    except OSError as error:
        print(f"{PROGRAM} {args.command}: error: cannot write the output: {error}",
              file=sys.stderr)
        return 1
    except gpuflow.AnomalyError as error:
        print(f"{PROGRAM} {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except (CommandError, ExpressionError, backends.BackendUnavailableError) as error:
        print(f"{PROGRAM} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
