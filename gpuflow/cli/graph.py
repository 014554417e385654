"""The ``gpuflow graph`` subcommand: draw the dataflow graph of an expression.

The expression is traced once with the given values, and the graph goes out as
Graphviz DOT text (stdout by default), or as SVG or PNG rendered by Graphviz.
"""

from __future__ import annotations

import os
import sys

import numpy

import gpuflow
from gpuflow import backends, viz
from gpuflow.cli import CommandError
from gpuflow.cli.files import check_output_folder, write_atomic
from gpuflow.cli.inputs import add_input_arguments, cast_inputs, collect_inputs, match_inputs
from gpuflow.cli.parser import parse_expression

NAME = "graph"
HELP = "draw the dataflow graph of an expression with its values and partial derivatives"
DESCRIPTION = """\
Trace EXPR once with the given input values and draw its dataflow graph, left to
right: one node per input and per operation, and a node "out" for the output,
which the backward pass seeds with 1. Each edge shows the value it carries and,
below it, the local partial derivative of the consumer with respect to that
input, from the consumer's gradient rule. For array values the edges show the
shape, dtype, min, mean and max, and the partial is that of the sum of the
consumer's output. --path-to NAME highlights every path from the output back to
NAME and writes the gradient as the sum over the paths of the products of the
partials along each path."""

EPILOG = """\
examples:
  gpuflow graph "a*x**2 + b*x + c" x=3 a=2 b=1 c=4 --path-to x
  gpuflow graph "a*x**2 + b*x + c" x=3 a=2 b=1 c=4 --path-to x --output quadratic.svg
  gpuflow graph "sum(sigmoid(w * x))" --random x=1000 w=1000 | dot -Tpng -o graph.png

inputs:
  Values are required, because the graph is traced by evaluating EXPR. Give
  them as for gpuflow grad: NAME=VALUE arguments first, then --inputs and
  --random, which take every argument that follows them.

output:
  DOT text goes to stdout unless --output is given. The format is --format, or
  else the --output suffix (.dot or .gv, .svg, .png), or else dot. SVG and PNG
  need Graphviz's dot program and the graphviz Python package
  (pip install 'gpuflow[graph]'); DOT text needs neither.

exit status: 0 on success, 2 for invalid input or missing Graphviz (one line on stderr)."""

# Output file suffixes and the formats they imply.
SUFFIX_FORMATS = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}


def add_arguments(parser) -> None:
    """Add the arguments of ``gpuflow graph`` to ``parser``."""
    add_input_arguments(parser, "the expression to draw")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random generator of --random (default 0)"
    )
    parser.add_argument(
        "--path-to",
        metavar="NAME",
        help="highlight every path from the output back to the input NAME and write the "
        "gradient as a sum over those paths",
    )
    parser.add_argument(
        "--format",
        choices=viz.FORMATS,
        help="the output format (default: from the --output suffix, else dot)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write the drawing to FILE (replaced atomically) in place of stdout",
    )
    parser.add_argument(
        "--backend",
        choices=backends.BACKEND_NAMES,
        default="numpy",
        help="the array backend that traces the expression (default numpy)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="the floating-point type that numeric inputs are cast to (default float64)",
    )


def choose_format(format_option: str | None, output: str | None) -> str:
    """Return the output format: --format, else the one the --output suffix implies, else dot."""
    if output is None:
        return format_option or viz.DOT_FORMAT
    suffix = os.path.splitext(output)[1].lower()
    implied = SUFFIX_FORMATS.get(suffix)
    if format_option is None:
        if implied is None:
            raise CommandError(
                f"cannot tell the format of --output {output} from its suffix "
                f"{suffix or '(none)'}; name a .dot, .gv, .svg or .png file, or pass --format"
            )
        return implied
    if implied is not None and implied != format_option:
        raise CommandError(
            f"--output {output} has the suffix {suffix}, which means {implied}, but --format is "
            f"{format_option}; make them agree, for example --output graph.{format_option}"
        )
    return format_option


def _check_output(path: str, input_paths) -> None:
    check_output_folder(path, "--output")
    if not os.path.exists(path):
        return
    for input_path in input_paths:
        if os.path.exists(input_path) and os.path.samefile(path, input_path):
            raise CommandError(
                f"--output {path} is the input file {input_path}, which gpuflow does not "
                "overwrite; choose another output file"
            )


def _check_path_to(name: str | None, inputs) -> None:
    if name is None:
        return
    by_name = {item.name: item for item in inputs}
    item = by_name.get(name)
    if item is None:
        raise CommandError(
            f"--path-to {name} is not an input of the expression; use one of "
            f"{', '.join(by_name)}"
        )
    if not numpy.issubdtype(item.array.dtype, numpy.floating):
        raise CommandError(
            f"--path-to {name} has dtype {item.array.dtype} (from {item.source}), and only "
            "floating-point inputs have gradients; choose a floating-point input"
        )


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if ";" not in text:
        text += "; check the expression and the shapes of its inputs"
    return text


def trace_expression(expression, inputs, backend):
    """Trace ``expression`` on ``inputs`` with ``backend`` and return the Graph.

    Errors of the engine (shape mismatches, invalid indices) become CommandError.
    """
    names = [item.name for item in inputs]
    function = expression.function(names)
    try:
        with backend.errstate():
            return gpuflow.trace(function, *[item.array for item in inputs], backend=backend)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as error:
        raise CommandError(_one_line(error)) from None
    except MemoryError:
        raise CommandError(
            "out of memory while evaluating the expression; use smaller inputs"
        ) from None


def _write_stdout(data: bytes, output_format: str) -> None:
    if output_format == "png" and sys.stdout.isatty():
        raise CommandError(
            "PNG output is binary and stdout is a terminal; pass --output FILE.png or "
            "redirect stdout to a file"
        )
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def run(args) -> int:
    """Run ``gpuflow graph`` with parsed arguments and return the exit status."""
    expression = parse_expression(args.expression)
    output_format = choose_format(args.format, args.output)
    if args.output is not None:
        _check_output(args.output, args.inputs)
    if output_format in viz.RENDERED_FORMATS:
        # Fail before the work when Graphviz is missing.
        try:
            viz.check_renderer()
        except viz.RenderError as error:
            raise CommandError(str(error)) from None
    inputs = collect_inputs(args.assignments, args.inputs, args.random, args.seed)
    inputs = match_inputs(expression, cast_inputs(inputs, numpy.dtype(args.dtype)))
    if not inputs:
        raise CommandError(
            f"{args.expression!r} has no inputs, so there is no graph to draw; use an input "
            "name, for example x * pi with x=1"
        )
    _check_path_to(args.path_to, inputs)
    backend = backends.get_backend(args.backend)
    graph = trace_expression(expression, inputs, backend)
    if args.path_to is not None and args.path_to not in graph.tensors:
        # The graph holds only what the output was computed from.
        raise CommandError(
            f"--path-to {args.path_to}: the output does not depend on {args.path_to} through "
            "any differentiable operation, so its gradient is 0 and there is no path to "
            "draw; choose another input"
        )

    text = viz.to_dot(graph, path_to=args.path_to)
    if output_format == viz.DOT_FORMAT:
        data = text.encode("utf-8")
    else:
        try:
            data = viz.render(text, output_format)
        except viz.RenderError as error:
            raise CommandError(str(error)) from None
    if args.output is None:
        _write_stdout(data, output_format)
    else:
        write_atomic(args.output, data, "--output")
    return 0
