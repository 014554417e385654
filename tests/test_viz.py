"""Tests of the graph drawing: DOT structure, labels, path captions, rendering and the command."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import gpuflow as gf
from gpuflow import viz
from gpuflow.cli import main as cli_main

HAS_DOT = shutil.which("dot") is not None
HAS_GRAPHVIZ_PACKAGE = importlib.util.find_spec("graphviz") is not None
needs_renderer = pytest.mark.skipif(
    not (HAS_DOT and HAS_GRAPHVIZ_PACKAGE),
    reason="rendering needs Graphviz's dot program and the graphviz Python package",
)

QUOTED = r'"((?:[^"\\]|\\.)*)"'
NODE_LINE = re.compile(rf"^\s*{QUOTED}\s*\[(.*)\];$")
EDGE_LINE = re.compile(rf"^\s*{QUOTED} -> {QUOTED}(?:\s*\[(.*)\])?;$")
ATTRIBUTE = re.compile(rf"(\w+)={QUOTED}")


def unquote(text: str) -> str:
    """Undo viz.quote on the inside of a quoted DOT string."""
    result, position = [], 0
    while position < len(text):
        character = text[position]
        if character == "\\":
            following = text[position + 1]
            result.append("\n" if following == "n" else following)
            position += 2
        else:
            result.append(character)
            position += 1
    return "".join(result).replace("&amp;", "&")


def parse_attributes(text: str | None) -> dict:
    return {key: unquote(value) for key, value in ATTRIBUTE.findall(text or "")}


def parse_dot(text: str):
    """Return the nodes (id to attributes), the edges in order, and the graph's caption."""
    nodes, edges, caption = {}, [], None
    for line in text.splitlines():
        edge = EDGE_LINE.match(line)
        if edge:
            source, target, attributes = edge.groups()
            edges.append((unquote(source), unquote(target), parse_attributes(attributes)))
            continue
        node = NODE_LINE.match(line)
        if node and node.group(1) not in ("graph", "node", "edge"):
            nodes[unquote(node.group(1))] = parse_attributes(node.group(2))
            continue
        if line.strip().startswith("label="):
            caption = parse_attributes(line)["label"]
    return nodes, edges, caption


def quadratic(x, a, b, c):
    return a * x**2 + b * x + c


def quadratic_dot(path_to="x", values=True):
    graph = gf.trace(quadratic, 3.0, 2.0, 1.0, 4.0)
    return graph.to_dot(path_to=path_to, values=values)


def edge_labels(edges) -> dict:
    return {(source, target): attributes.get("label") for source, target, attributes in edges}


def highlighted(edges) -> set:
    return {
        (source, target)
        for source, target, attributes in edges
        if attributes.get("color") == viz.HIGHLIGHT_COLOR
    }


def run_gpuflow(*arguments, cwd=None, environment=None):
    return subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", *map(str, arguments)],
        capture_output=True,
        cwd=cwd,
        env=environment,
        timeout=120,
    )


README_GRAPH = ["graph", "a*x**2 + b*x + c", "x=3", "a=2", "b=1", "c=4"]


# The structure of the quadratic.


def test_quadratic_nodes():
    nodes, _, _ = parse_dot(quadratic_dot())
    assert set(nodes) == {"x", "a", "b", "c", "%0", "%1", "%2", "%3", "%4", "out"}
    assert nodes["%0"]["label"] == "%0: power\nexponent=2"
    assert nodes["%1"]["label"] == "%1: multiply"
    assert nodes["%4"]["label"] == "%4: add"
    assert nodes["x"]["shape"] == "ellipse"
    assert nodes["%0"]["shape"] == "box"
    assert nodes["out"]["label"] == "out"


def test_quadratic_left_to_right():
    assert 'rankdir="LR"' in quadratic_dot()


def test_quadratic_edges():
    _, edges, _ = parse_dot(quadratic_dot())
    assert [(source, target) for source, target, _ in edges] == [
        ("x", "%0"),
        ("a", "%1"),
        ("%0", "%1"),
        ("b", "%2"),
        ("x", "%2"),
        ("%1", "%3"),
        ("%2", "%3"),
        ("%3", "%4"),
        ("c", "%4"),
        ("%4", "out"),
    ]


def test_quadratic_value_and_partial_labels():
    _, edges, _ = parse_dot(quadratic_dot())
    labels = edge_labels(edges)
    assert labels[("x", "%0")] == "x = 3\n∂%0/∂x = 6"
    assert labels[("a", "%1")] == "a = 2\n∂%1/∂a = 9"
    assert labels[("%0", "%1")] == "%0 = 9\n∂%1/∂%0 = 2"
    assert labels[("b", "%2")] == "b = 1\n∂%2/∂b = 3"
    assert labels[("x", "%2")] == "x = 3\n∂%2/∂x = 1"
    assert labels[("%1", "%3")] == "%1 = 18\n∂%3/∂%1 = 1"
    assert labels[("%2", "%3")] == "%2 = 3\n∂%3/∂%2 = 1"
    assert labels[("%3", "%4")] == "%3 = 21\n∂%4/∂%3 = 1"
    assert labels[("c", "%4")] == "c = 4\n∂%4/∂c = 1"


def test_quadratic_seed_edge():
    _, edges, _ = parse_dot(quadratic_dot())
    assert edge_labels(edges)[("%4", "out")] == "%4 = 25\nseed 1"


def test_quadratic_highlights_paths_to_x():
    _, edges, _ = parse_dot(quadratic_dot())
    assert highlighted(edges) == {
        ("x", "%0"),
        ("%0", "%1"),
        ("x", "%2"),
        ("%1", "%3"),
        ("%2", "%3"),
        ("%3", "%4"),
        ("%4", "out"),
    }
    widths = {(s, t): attributes.get("penwidth") for s, t, attributes in edges}
    assert widths[("x", "%0")] == "2.5"
    assert widths[("a", "%1")] is None


def test_quadratic_highlights_nodes_on_paths():
    nodes, _, _ = parse_dot(quadratic_dot())
    marked = {name for name, attributes in nodes.items()
              if attributes.get("color") == viz.HIGHLIGHT_COLOR}
    assert marked == {"x", "%0", "%1", "%2", "%3", "%4", "out"}


def test_quadratic_caption_sums_paths():
    _, _, caption = parse_dot(quadratic_dot())
    assert caption == "d out / d x = 2*6 + 1 = 13"
    gradient = gf.grad(quadratic)(3.0, 2.0, 1.0, 4.0)
    assert float(gradient) == 13


@pytest.mark.parametrize(
    "name, caption, path_length",
    [("a", "d out / d a = 9", 4), ("b", "d out / d b = 3", 4), ("c", "d out / d c = 1", 2)],
)
def test_quadratic_caption_single_path(name, caption, path_length):
    _, edges, found = parse_dot(quadratic_dot(path_to=name))
    assert found == caption
    expected = gf.grad(quadratic, "xabc".index(name))(3.0, 2.0, 1.0, 4.0)
    assert float(found.rsplit("= ", 1)[1]) == float(expected)
    assert len(highlighted(edges)) == path_length


def test_no_path_to_no_highlight():
    _, edges, caption = parse_dot(quadratic_dot(path_to=None))
    assert caption is None
    assert highlighted(edges) == set()


# Captions of other graphs.


def parse_total(caption: str) -> float:
    return float(caption.rsplit("= ", 1)[1])


def test_caption_matches_grad_with_repeated_input():
    def function(x, w):
        return x * x * w + gf.exp(x) * x - gf.tanh(w * x)

    arguments = (0.7, -1.3)
    caption = parse_dot(gf.trace(function, *arguments).to_dot(path_to="x"))[2]
    assert caption.count(" + ") >= 3
    assert parse_total(caption) == pytest.approx(float(gf.grad(function)(*arguments)), rel=1e-3)


def test_caption_negative_factor_in_parentheses():
    caption = parse_dot(gf.trace(lambda x: -3.0 * x, 2.0).to_dot(path_to="x"))[2]
    assert caption == "d out / d x = (-3) = -3"


def test_caption_counts_many_paths():
    def doubled(x):
        y = x
        for _ in range(5):
            y = y + y
        return y

    caption = parse_dot(gf.trace(doubled, 1.5).to_dot(path_to="x"))[2]
    assert caption == "d out / d x = sum over 32 paths of the products of the partials = 32"


def test_caption_for_output_without_path():
    graph = gf.trace(lambda x, a: (x * 2.0, a * 3.0), 1.0, 3.0)
    caption = parse_dot(graph.to_dot(path_to="x"))[2]
    assert caption == "d out0 / d x = 2\nd out1 / d x = 0 (no path from out1 back to x)"


def test_path_to_input_outside_graph_raises():
    graph = gf.trace(lambda x, a: a * 2.0, 1.0, 3.0)
    with pytest.raises(ValueError, match="'x' is not an input of the graph"):
        graph.to_dot(path_to="x")


def test_caption_for_array_input():
    x = np.linspace(-1.0, 1.0, 5)

    def function(x):
        return gf.sum(gf.sigmoid(x) * x)

    caption = parse_dot(gf.trace(function, x).to_dot(path_to="x"))[2]
    expected = viz.format_value(gf.grad(function)(x))
    assert caption == f"d out / d x, summed over 2 paths: {expected}"


def test_caption_for_array_output_sums_it():
    x = np.array([1.0, 2.0, 3.0])
    caption = parse_dot(gf.trace(lambda x: x * x, x).to_dot(path_to="x"))[2]
    assert caption == "d sum(out) / d x, summed over 2 paths: float64[3] min 2, mean 4, max 6"


def test_path_to_unknown_name_raises():
    with pytest.raises(ValueError, match="'y' is not an input of the graph; use one of x, a"):
        quadratic_dot(path_to="y")


# Arrays and values.


def test_format_value_cases():
    assert viz.format_value(np.array(13.0)) == "13"
    assert viz.format_value(np.array(0.123456)) == "0.1235"
    assert viz.format_value(np.array(2.5e-9)) == "2.5e-09"
    assert viz.format_value(np.array(True)) == "True"
    assert viz.format_value(np.arange(5.0)) == "float64[5] min 0, mean 2, max 4"
    assert viz.format_value(np.arange(6, dtype=np.int32).reshape(2, 3)) == (
        "int32[2, 3] min 0, mean 2.5, max 5"
    )
    assert viz.format_value(np.array([True, False, True])) == "bool[3] 2 true"
    assert viz.format_value(np.zeros((0, 2), dtype=np.float32)) == "float32[0, 2] empty"
    assert viz.format_value(np.array([7.0])) == "float64[1] 7"
    assert viz.format_value(np.array([np.nan, 1.0])) == "float64[2] min nan, mean nan, max nan"


def test_array_edges_show_summaries():
    x = np.linspace(-1.0, 1.0, 5)
    text = gf.trace(lambda x, w: gf.sum(w * x), x, 0.5).to_dot()
    labels = edge_labels(parse_dot(text)[1])
    assert labels[("x", "%0")] == (
        "x: float64[5]\nmin -1, mean 0, max 1\n∂sum(%0)/∂x: min 0.5, mean 0.5, max 0.5"
    )
    # The partial of a broadcast 0-d input is summed over the elements it met.
    assert labels[("w", "%0")] == "w = 0.5\n∂sum(%0)/∂w = 0"
    assert labels[("%1", "out")].endswith("\nseed 1")


def test_constant_input_is_dashed():
    nodes, edges, _ = parse_dot(gf.trace(lambda x: x * 2.0, 3.0).to_dot())
    constants = [name for name, attributes in nodes.items() if "dashed" in attributes["style"]]
    assert len(constants) == 1
    assert nodes[constants[0]]["label"] == f"{constants[0]} = 2"
    name = constants[0]
    assert edge_labels(edges)[(name, "%0")] == f"{name} = 2\n∂%0/∂{name} = 3"


def test_without_values_shows_types():
    _, edges, caption = parse_dot(quadratic_dot(values=False))
    labels = edge_labels(edges)
    assert labels[("x", "%0")] == "float64[]"
    assert labels[("%4", "out")] == "seed ones"
    assert caption == "d out / d x: 2 paths from out back to x highlighted"


def test_graph_to_dot_matches_viz():
    graph = gf.trace(quadratic, 3.0, 2.0, 1.0, 4.0)
    assert graph.to_dot(path_to="x") == viz.to_dot(graph, path_to="x")


def test_multiple_outputs_get_sinks():
    graph = gf.trace(lambda x: (x * 2.0, x + 1.0), 3.0)
    nodes, edges, caption = parse_dot(graph.to_dot(path_to="x"))
    assert {"out0", "out1"} <= set(nodes)
    assert caption == "d out0 / d x = 2\nd out1 / d x = 1"


# Escaping.


def test_quote_escapes_special_characters():
    assert viz.quote('a"b') == '"a\\"b"'
    assert viz.quote("a\\b") == '"a\\\\b"'
    assert viz.quote("line\nbreak") == '"line\\nbreak"'
    assert viz.quote("a &lt; b") == '"a &amp;lt; b"'
    assert viz.quote("tab\there\x00") == '"tab here "'
    assert viz.quote("<b>{x|y}</b>") == '"<b>{x|y}</b>"'


def svg_texts(svg: bytes) -> list[str]:
    root = ElementTree.fromstring(svg)
    return ["".join(element.itertext()) for element in root.iter(f"{{{SVG_NAMESPACE}}}text")]


SVG_NAMESPACE = "http://www.w3.org/2000/svg"
WEIRD_NAME = 'we"ird\\ <op> &lt; {x}'


def weird_graph():
    weird = gf.define_op(WEIRD_NAME, lambda xp, x: x * 2, lambda g, out, x: (2 * g,))
    return gf.trace(lambda x: weird(x), 1.5)


def test_special_characters_round_trip():
    nodes, _, _ = parse_dot(weird_graph().to_dot())
    assert nodes["%0"]["label"] == f"%0: {WEIRD_NAME}"


@needs_renderer
def test_special_characters_render_literally():
    svg = viz.render(weird_graph().to_dot(), "svg")
    texts = svg_texts(svg)
    assert f"%0: {WEIRD_NAME}" in texts


# Rendering.


@needs_renderer
def test_render_svg():
    svg = viz.render(quadratic_dot(), "svg")
    assert svg.startswith(b"<?xml")
    texts = svg_texts(svg)
    assert "d out / d x = 2*6 + 1 = 13" in texts
    assert "∂%0/∂x = 6" in texts


def test_missing_dot_names_installs(monkeypatch):
    pytest.importorskip("graphviz")
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    with pytest.raises(viz.RenderError) as caught:
        viz.render(quadratic_dot(), "svg")
    message = str(caught.value)
    assert "apt-get install graphviz" in message
    assert "brew install graphviz" in message
    assert "conda install" in message
    assert "--format dot" in message


def test_missing_graphviz_package_names_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(viz.RenderError, match=r"pip install 'gpuflow\[graph\]'"):
        viz.render(quadratic_dot(), "png")


def test_render_rejects_dot_format():
    with pytest.raises(ValueError, match="use one of svg, png"):
        viz.render(quadratic_dot(), "pdf")


# The command.


def test_command_prints_dot():
    completed = run_gpuflow(*README_GRAPH, "--path-to", "x")
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == b""
    text = completed.stdout.decode("utf-8")
    assert text == quadratic_dot()
    assert parse_dot(text)[2] == "d out / d x = 2*6 + 1 = 13"


@needs_renderer
def test_command_writes_svg(tmp_path):
    output = tmp_path / "quadratic.svg"
    completed = run_gpuflow(*README_GRAPH, "--path-to", "x", "--output", output)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == b""
    assert output.read_bytes().startswith(b"<?xml")
    assert b"2*6 + 1 = 13" in output.read_bytes()
    assert os.listdir(tmp_path) == ["quadratic.svg"]


def test_command_writes_dot_file(tmp_path):
    output = tmp_path / "graph.gv"
    output.write_text("old contents")
    completed = run_gpuflow(*README_GRAPH, "--output", output)
    assert completed.returncode == 0, completed.stderr
    assert output.read_text(encoding="utf-8") == quadratic_dot(path_to=None)
    assert os.listdir(tmp_path) == ["graph.gv"]


def test_command_missing_dot_error(monkeypatch, capsys):
    pytest.importorskip("graphviz")
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    status = cli_main.main([*README_GRAPH, "--format", "svg"])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpuflow graph: error: Graphviz's dot program was not found")
    assert "apt-get install graphviz" in lines[0]


def test_command_missing_value_matches_grad(capsys):
    arguments = ["a*x**2 + b*x + c", "x=3", "a=2", "b=1"]
    assert cli_main.main(["graph", *arguments]) == 2
    graph_error = capsys.readouterr().err
    assert cli_main.main(["grad", *arguments]) == 2
    grad_error = capsys.readouterr().err
    assert graph_error.replace("gpuflow graph", "gpuflow grad") == grad_error
    assert "no value for c" in graph_error


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--path-to", "y"], "--path-to y is not an input of the expression"),
        (["--output", "graph.txt"], "cannot tell the format of --output graph.txt"),
        (["--output", "graph.png", "--format", "svg"], "which means png, but --format is svg"),
        (["--output", "missing/graph.dot"], "does not exist"),
    ],
)
def test_command_rejects_invalid_options(arguments, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main.main([*README_GRAPH, *arguments]) == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1
    assert message in error
    assert os.listdir(tmp_path) == []


def test_command_rejects_boolean_path_to(tmp_path, capsys):
    np.savez(tmp_path / "masks.npz", m=np.array([True, False]), x=np.array([1.0, 2.0]))
    status = cli_main.main(
        ["graph", "sum(where(m, x, 0.0))", "--inputs", str(tmp_path / "masks.npz"),
         "--path-to", "m"]
    )
    assert status == 2
    assert "--path-to m has dtype bool" in capsys.readouterr().err


def test_command_path_to_input_outside_graph(capsys):
    status = cli_main.main(["graph", "sum(zeros_like(x)) + a", "x=1,2", "a=3", "--path-to", "x"])
    assert status == 2
    error = capsys.readouterr().err
    assert "the output does not depend on x" in error
    assert len(error.splitlines()) == 1


def test_command_random_inputs_draw_arrays(capsys):
    status = cli_main.main(["graph", "sum(sigmoid(w * x))", "--random", "x=10", "w=10",
                            "--path-to", "w"])
    assert status == 0
    text = capsys.readouterr().out
    caption = parse_dot(text)[2]
    assert caption.startswith("d out / d w, summed over 1 path: float64[10] min ")


def test_format_inferred_from_suffix():
    assert cli_graph().choose_format(None, None) == "dot"
    assert cli_graph().choose_format(None, "a.SVG") == "svg"
    assert cli_graph().choose_format(None, "a.png") == "png"
    assert cli_graph().choose_format(None, "a.gv") == "dot"
    assert cli_graph().choose_format("dot", "a.txt") == "dot"
    assert cli_graph().choose_format("svg", None) == "svg"


def cli_graph():
    from gpuflow.cli import graph

    return graph
