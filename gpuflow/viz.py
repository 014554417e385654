"""Drawings of dataflow graphs: Graphviz DOT text, and SVG or PNG rendered by Graphviz.

``to_dot`` builds DOT text in pure Python. Inputs and operations are nodes laid
out left to right, and one more node per output, ``out``, is the output that the
backward pass seeds with ones. When the graph has its traced values
(``Graph.tensors``), every edge label shows the value that flows along the edge
and, below it, the local partial derivative of the consumer with respect to
that input.

The partial comes from the consumer's own gradient rule, called with a seed of
ones on plain arrays, ``op.vjp(ones, out, *inputs, **params)``, and summed back
to the input's shape as the backward pass does. For 0-d values that is exactly
the partial derivative. For arrays it is the gradient of the sum of the
consumer's output, which the label shows as ``∂sum(%1)/∂x``.

With ``path_to``, the edges of every path from the output back to that input
are highlighted. A caption writes the gradient as the chain rule gives it: the
sum over the paths of the product of the partials along each path.

``render`` turns DOT text into SVG or PNG with the ``graphviz`` Python package
(the ``graph`` extra) and Graphviz's ``dot`` program.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass

import numpy

from gpuflow.engine import fit_to_input
from gpuflow.tensor import is_floating, raw_mode

DOT_FORMAT = "dot"
RENDERED_FORMATS = ("svg", "png")
FORMATS = (DOT_FORMAT, *RENDERED_FORMATS)

# With more paths than this, the caption gives the number of paths and the total only.
MAX_PATH_TERMS = 8

HIGHLIGHT_COLOR = "#d62728"
_DIMMED_COLOR = "#a0a0a0"
_EDGE_COLOR = "#505050"

MISSING_DOT_MESSAGE = (
    "Graphviz's dot program was not found on PATH, and SVG and PNG need it; install "
    "Graphviz with apt-get install graphviz (Debian, Ubuntu), brew install graphviz (macOS) "
    "or conda install -c conda-forge graphviz, or write DOT text with --format dot, "
    "which needs neither dot nor the graphviz package"
)


class RenderError(RuntimeError):
    """Raised when Graphviz is missing or fails to render DOT text."""


@dataclass
class _Edge:
    """One edge of the drawing: a value flowing from its producer into a consumer."""

    source: str
    target: str
    label: str
    highlighted: bool


# Text.


def quote(text: str) -> str:
    """Return ``text`` as a DOT double-quoted string that Graphviz displays literally.

    Backslashes and double quotes are escaped for DOT, line breaks become DOT's
    ``\\n`` and other control characters become spaces. Graphviz replaces HTML
    entities such as ``&lt;`` in labels, so ``&`` is written as ``&amp;``.
    """
    characters = []
    for character in text:
        if character == "\\":
            characters.append("\\\\")
        elif character == '"':
            characters.append('\\"')
        elif character == "&":
            characters.append("&amp;")
        elif character == "\n":
            characters.append("\\n")
        elif ord(character) < 0x20 or ord(character) == 0x7F:
            characters.append(" ")
        else:
            characters.append(character)
    return '"' + "".join(characters) + '"'


def format_number(value) -> str:
    """Format a Python or NumPy scalar compactly, with 4 significant digits for floats."""
    if isinstance(value, (bool, numpy.bool_)):
        return str(bool(value))
    if isinstance(value, (int, numpy.integer)):
        return str(int(value))
    if isinstance(value, (complex, numpy.complexfloating)):
        return f"{complex(value):.4g}"
    return f"{float(value):.4g}"


def _type_text(array) -> str:
    dtype = getattr(array.dtype, "name", None) or str(array.dtype).rsplit(".", 1)[-1]
    return f"{dtype}{list(array.shape)}"


def format_value(array) -> str:
    """Format an array for a label: the number for a 0-d array, else its type and a summary.

    ``array`` is a NumPy array on the host, and ``summarize`` describes the summary.
    """
    array = numpy.asarray(array)
    if array.ndim == 0:
        return format_number(array[()])
    summary = summarize(array)
    return f"{_type_text(array)} {summary}" if summary else _type_text(array)


def summarize(array) -> str:
    """Summarize the elements of a NumPy array in a few words.

    A real array gives its min, mean and max, a boolean array the count of true
    elements, a one-element array its number and an empty array "empty". Other
    dtypes give an empty string.
    """
    array = numpy.asarray(array)
    if array.size == 0:
        return "empty"
    if array.size == 1:
        return format_number(array.reshape(-1)[0])
    if array.dtype == numpy.bool_:
        return f"{int(numpy.count_nonzero(array))} true"
    if array.dtype.kind not in "iuf":
        return ""
    with numpy.errstate(all="ignore"):
        low, mean, high = array.min(), array.mean(dtype=numpy.float64), array.max()
    return f"min {format_number(low)}, mean {format_number(mean)}, max {format_number(high)}"


def _format_parameters(params: dict) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in params.items() if value is not None)


# The values and partial derivatives of a traced graph.


def _host(tensor_or_array, backend):
    return numpy.asarray(backend.to_numpy(tensor_or_array))


def _call_rule(tensor, seed):
    """Call the gradient rule of ``tensor``'s node with ``seed`` on plain arrays.

    Return one gradient per input, each summed back to its input's shape, or
    None where the rule gives none or the input is not floating point.
    """
    node = tensor.node
    backend = tensor.backend
    with raw_mode(backend), backend.errstate():
        results = node.op.vjp(seed, tensor.data, *[parent.data for parent in node.inputs],
                              **node.params)
        if not isinstance(results, (tuple, list)):
            results = (results,)
        if len(results) != len(node.inputs):
            raise ValueError(
                f"the gradient rule of {node.op.name!r} returned {len(results)} gradients for "
                f"{len(node.inputs)} inputs; return one per input, None where there is none"
            )
        fitted = []
        for parent, gradient in zip(node.inputs, results):
            if gradient is None or not is_floating(backend, parent.dtype):
                fitted.append(None)
            else:
                fitted.append(fit_to_input(gradient, tuple(parent.data.shape), parent.dtype))
    return fitted


def _local_partials(graph) -> dict:
    """Return the ones-seeded gradient of each node's rule, by (consumer label, input position)."""
    partials = {}
    for record in graph.nodes:
        tensor = graph.tensors[record.output]
        if tensor.node is None or tensor.node.freed:
            continue
        backend = tensor.backend
        if not is_floating(backend, tensor.dtype):
            continue
        seed = backend.ones(tuple(tensor.data.shape), dtype=tensor.dtype)
        for position, partial in enumerate(_call_rule(tensor, seed)):
            partials[(record.output, position)] = partial
    return partials


def _gradient_edges(graph, name: str, partials, have_values: bool) -> tuple[set, set]:
    """Return the labels that depend on ``name`` and the edges that carry its gradient.

    An edge is ``(consumer label, input position)``. Where values are known, an
    edge whose rule gives no gradient carries none and is left out.
    """
    reached = {name}
    edges = set()
    for record in graph.nodes:
        for position, source in enumerate(record.inputs):
            if source not in reached:
                continue
            if have_values and partials.get((record.output, position)) is None:
                continue
            edges.add((record.output, position))
        if any((record.output, position) in edges for position in range(len(record.inputs))):
            reached.add(record.output)
    return reached, edges


# The caption: the gradient as a sum over paths.


def _count_paths(graph, name: str, edges: set) -> dict:
    counts = {name: 1}
    for record in graph.nodes:
        total = sum(
            counts.get(source, 0)
            for position, source in enumerate(record.inputs)
            if (record.output, position) in edges
        )
        if total:
            counts[record.output] = total
    return counts


def _scalar_partial(graph, partials, edge) -> float:
    backend = graph.tensors[edge[0]].backend
    return _host(partials[edge], backend).reshape(-1)[0].item()


def _sum_of_path_products(graph, name: str, edges: set, partials) -> dict:
    """Return, for each label, the sum over paths from ``name`` of the products of partials.

    One pass in topological order gives the sum without listing the paths,
    whose number can grow exponentially with the depth of the graph.
    """
    sums = {name: 1.0}
    for record in graph.nodes:
        total, found = 0.0, False
        for position, source in enumerate(record.inputs):
            edge = (record.output, position)
            if edge in edges and source in sums:
                total += sums[source] * _scalar_partial(graph, partials, edge)
                found = True
        if found:
            sums[record.output] = total
    return sums


def _path_factors(graph, name: str, edges: set, partials, output: str) -> list[list[float]]:
    """Return each path from ``name`` to ``output`` as its partials, from the output backwards."""
    paths = {name: [[]]}
    for record in graph.nodes:
        extended = []
        for position, source in enumerate(record.inputs):
            if (record.output, position) not in edges or source not in paths:
                continue
            factor = _scalar_partial(graph, partials, (record.output, position))
            extended.extend(path + [factor] for path in paths[source])
        if extended:
            paths[record.output] = extended
    return [list(reversed(path)) for path in paths.get(output, [])]


def _format_factor(factor) -> str:
    text = format_number(factor)
    return f"({text})" if text.startswith("-") else text


def _format_term(factors) -> str:
    # Factors of exactly 1 (adds, the seed) are left out, as in the written chain rule.
    factor_texts = [_format_factor(factor) for factor in factors if factor != 1]
    return "*".join(factor_texts) if factor_texts else "1"


def _gradient_by_rules(graph, name: str, edges: set, output: str):
    """Propagate ones from ``output`` back to ``name`` along ``edges`` with the nodes' rules."""
    tensor = graph.tensors[output]
    backend = tensor.backend
    gradients = {output: backend.ones(tuple(tensor.data.shape), dtype=tensor.dtype)}
    for record in reversed(graph.nodes):
        seed = gradients.pop(record.output, None)
        if seed is None:
            continue
        results = _call_rule(graph.tensors[record.output], seed)
        for position, (source, gradient) in enumerate(zip(record.inputs, results)):
            if (record.output, position) not in edges or gradient is None:
                continue
            previous = gradients.get(source)
            gradients[source] = gradient if previous is None else previous + gradient
    return gradients.get(name)


def _caption_line(graph, name, output, sink, reached, edges, partials, have_values) -> str:
    tensor = graph.tensors.get(output)
    scalar_output = tensor is not None and tensor.size == 1
    numerator = f"d {sink}" if scalar_output or not have_values else f"d sum({sink})"
    head = f"{numerator} / d {name}"
    if output not in reached:
        return f"{head} = 0 (no path from {sink} back to {name})"
    count = _count_paths(graph, name, edges).get(output, 1)
    paths_text = "1 path" if count == 1 else f"{count} paths"
    if not have_values:
        return f"{head}: {paths_text} from {sink} back to {name} highlighted"
    scalar_edges = all(partials[edge].size == 1 for edge in edges)
    if scalar_output and scalar_edges and graph.tensors[name].size == 1:
        if count > MAX_PATH_TERMS:
            total = _sum_of_path_products(graph, name, edges, partials).get(output, 0.0)
            return (
                f"{head} = sum over {count} paths of the products of the partials "
                f"= {format_number(total)}"
            )
        paths = _path_factors(graph, name, edges, partials, output)
        expansion = " + ".join(_format_term(factors) for factors in paths)
        total = format_number(sum(math.prod(factors) for factors in paths))
        return f"{head} = {total}" if expansion == total else f"{head} = {expansion} = {total}"
    gradient = _gradient_by_rules(graph, name, edges, output)
    summary = format_value(_host(gradient, graph.tensors[name].backend))
    return f"{head}, summed over {paths_text}: {summary}"


# The DOT text.


def _unique_name(base: str, used_names: set) -> str:
    name, number = base, 1
    while name in used_names:
        name = f"{base}{number}"
        number += 1
    used_names.add(name)
    return name


def _attributes(**attributes) -> str:
    parts = [
        f"{key}={quote(str(value))}" for key, value in attributes.items() if value is not None
    ]
    return f" [{', '.join(parts)}]" if parts else ""


def _partial_text(consumer: str, source: str, partial, consumer_tensor, backend) -> str:
    if consumer_tensor.size == 1:
        symbol = f"∂{consumer}/∂{source}"
    else:
        symbol = f"∂sum({consumer})/∂{source}"
    if partial is None:
        return f"{symbol}: no gradient"
    host = _host(partial, backend)
    # The partial has its input's shape and dtype, which the value line shows.
    return f"{symbol} = {format_value(host)}" if host.ndim == 0 else f"{symbol}: {summarize(host)}"


def _edge_label(graph, record, position, partials, have_values) -> str:
    source = record.inputs[position]
    if not have_values:
        producer = graph.tensors.get(source)
        return _type_text(producer.data) if producer is not None else ""
    producer = graph.tensors[source]
    value_text = _named_value(source, producer)
    consumer = graph.tensors[record.output]
    if (record.output, position) not in partials:
        return value_text
    partial = partials[(record.output, position)]
    return value_text + "\n" + _partial_text(
        record.output, source, partial, consumer, consumer.backend
    )


def _named_value(label: str, tensor) -> str:
    host = _host(tensor.data, tensor.backend)
    if host.ndim == 0:
        return f"{label} = {format_value(host)}"
    summary = summarize(host)
    return f"{label}: {_type_text(host)}" + (f"\n{summary}" if summary else "")


def _seed_label(label: str, tensor, have_values: bool) -> str:
    if not have_values or tensor is None:
        return "seed ones"
    value_text = _named_value(label, tensor)
    return value_text + "\n" + ("seed 1" if tensor.size == 1 else "seed ones")


def to_dot(graph, path_to: str | None = None, values: bool = True) -> str:
    """Return Graphviz DOT text that draws ``graph`` left to right.

    ``values`` shows the traced values and local partial derivatives on the
    edges, when the graph has them (graphs from ``gpuflow.trace`` do, and
    those of ``gpuflow.compile`` do not). With
    ``path_to``, the name of an input, every path from the output back to that
    input is highlighted and a caption gives the gradient as the sum over those
    paths of the products of the partials. Raises ValueError when ``path_to``
    is not an input of the graph.
    """
    input_names = [record.output for record in graph.inputs]
    if path_to is not None and path_to not in input_names:
        raise ValueError(
            f"path_to {path_to!r} is not an input of the graph; use one of "
            f"{', '.join(input_names) or '(none: the graph has no inputs)'}"
        )
    labels = input_names + [record.output for record in graph.nodes]
    have_values = values and all(label in graph.tensors for label in labels) and not any(
        getattr(tensor.data, "is_placeholder", False) for tensor in graph.tensors.values()
    )
    partials = _local_partials(graph) if have_values else {}
    reached, gradient_edges = set(), set()
    if path_to is not None:
        reached, gradient_edges = _gradient_edges(graph, path_to, partials, have_values)

    used_names = set(labels)
    base = "out" if len(graph.outputs) == 1 else "out{}"
    sinks = [_unique_name(base.format(index), used_names) for index in range(len(graph.outputs))]

    lines = [
        "digraph gpuflow {",
        '  graph [rankdir="LR", fontname="Helvetica", fontsize="12", nodesep="0.35", '
        'ranksep="0.7"];',
        '  node [fontname="Helvetica", fontsize="11"];',
        f'  edge [fontname="Helvetica", fontsize="10", color="{_EDGE_COLOR}"];',
    ]
    lines.extend(_node_lines(graph, sinks, reached, have_values, path_to))
    edges = _edges(graph, sinks, partials, reached, gradient_edges, have_values)
    for edge in edges:
        if edge.highlighted:
            style = dict(color=HIGHLIGHT_COLOR, fontcolor=HIGHLIGHT_COLOR, penwidth="2.5")
        elif path_to is not None:
            style = dict(color=_DIMMED_COLOR, fontcolor="#707070")
        else:
            style = {}
        lines.append(
            f"  {quote(edge.source)} -> {quote(edge.target)}"
            f"{_attributes(label=edge.label or None, **style)};"
        )
    if path_to is not None:
        caption = "\n".join(
            _caption_line(graph, path_to, output, sink, reached, gradient_edges, partials,
                          have_values)
            for output, sink in zip(graph.outputs, sinks)
        )
        lines.append(
            f'  label={quote(caption)}; labelloc="t"; fontsize="14"; '
            f"fontcolor={quote(HIGHLIGHT_COLOR)};"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node_lines(graph, sinks, reached, have_values, path_to):
    on_path = dict(color=HIGHLIGHT_COLOR, penwidth="2.5")
    for record in graph.inputs:
        tensor = graph.tensors.get(record.output)
        constant = tensor is not None and not tensor.requires_grad
        label = record.output
        if constant and have_values and tensor.ndim == 0:
            label += " = " + format_value(_host(tensor.data, tensor.backend))
        style = dict(shape="ellipse", style="filled", fillcolor="#e3edf9")
        if constant:
            style = dict(shape="ellipse", style="filled,dashed", fillcolor="#f0f0f0")
        if record.output == path_to:
            style.update(on_path)
        yield f"  {quote(record.output)}{_attributes(label=label, **style)};"
    for record in graph.nodes:
        label = f"{record.output}: {record.op}"
        parameters = _format_parameters(record.params)
        if parameters:
            label += "\n" + parameters
        style = dict(shape="box", style="rounded,filled", fillcolor="#fdf3d8")
        if record.output in reached:
            style.update(on_path)
        yield f"  {quote(record.output)}{_attributes(label=label, **style)};"
    for output, sink in zip(graph.outputs, sinks):
        style = dict(shape="doublecircle", style="filled", fillcolor="#e2f3e6")
        if output in reached:
            style.update(on_path)
        yield f"  {quote(sink)}{_attributes(label=sink, **style)};"


def _edges(graph, sinks, partials, reached, gradient_edges, have_values) -> list[_Edge]:
    edges = []
    for record in graph.nodes:
        for position, source in enumerate(record.inputs):
            edges.append(
                _Edge(
                    source,
                    record.output,
                    _edge_label(graph, record, position, partials, have_values),
                    (record.output, position) in gradient_edges,
                )
            )
    for output, sink in zip(graph.outputs, sinks):
        label = _seed_label(output, graph.tensors.get(output), have_values)
        edges.append(_Edge(output, sink, label, output in reached))
    return edges


# Rendering.


def check_renderer() -> None:
    """Raise RenderError unless the graphviz package imports and ``dot`` is on PATH."""
    try:
        import graphviz  # noqa: F401
    except ImportError as error:
        raise RenderError(
            f"SVG and PNG output needs the graphviz Python package, which failed to import "
            f"({error}); install it with pip install 'gpuflow[graph]', or write DOT text with "
            "--format dot"
        ) from None
    if shutil.which("dot") is None:
        raise RenderError(MISSING_DOT_MESSAGE)


def render(dot_text: str, output_format: str) -> bytes:
    """Render DOT text to ``output_format`` ("svg" or "png") with Graphviz's dot program."""
    if output_format not in RENDERED_FORMATS:
        raise ValueError(
            f"cannot render the format {output_format!r}; use one of "
            f"{', '.join(RENDERED_FORMATS)}"
        )
    check_renderer()
    import graphviz

    try:
        return graphviz.pipe("dot", output_format, dot_text.encode("utf-8"), quiet=True)
    except graphviz.ExecutableNotFound:
        raise RenderError(MISSING_DOT_MESSAGE) from None
    except graphviz.CalledProcessError as error:
        detail = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else ""
        detail = " ".join(detail.split()) or f"exit status {error.returncode}"
        raise RenderError(
            f"Graphviz's dot failed to render {output_format} ({detail}); check the DOT text "
            "with --format dot"
        ) from None
