"""Results of ``gpuflow grad``: readable text, JSON, and .npz files written atomically."""

from __future__ import annotations

import json
import math
import os
import zipfile

import numpy

from gpuflow.cli import CommandError
from gpuflow.cli.files import write_atomic

# Arrays with more elements than this print as a summary of their first and last elements.
SUMMARY_THRESHOLD = 20
SUMMARY_EDGE_ITEMS = 3


def format_scalar(value) -> str:
    """Format a 0-d array or a NumPy scalar as a plain number, such as 25, 0.5 or 1e-08."""
    scalar = numpy.asarray(value)[()]
    if isinstance(scalar, numpy.bool_):
        return str(bool(scalar))
    if isinstance(scalar, numpy.integer):
        return str(int(scalar))
    number = float(scalar)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    if number.is_integer() and abs(number) < 1e16:
        return str(int(number))
    if 1e-4 <= abs(number) < 1e16:
        return numpy.format_float_positional(scalar, unique=True, trim="-")
    return numpy.format_float_scientific(scalar, unique=True, trim="-")


def format_array(array: numpy.ndarray, label: str) -> str:
    """Format ``label`` and the array: a plain number for 0-d, else a possibly summarised array."""
    if array.ndim == 0:
        return label + format_scalar(array)
    text = numpy.array2string(
        array, threshold=SUMMARY_THRESHOLD, edgeitems=SUMMARY_EDGE_ITEMS, prefix=label
    )
    if array.size > SUMMARY_THRESHOLD:
        text += f"  (shape {array.shape}, {array.size} elements)"
    return label + text


def format_text(value: numpy.ndarray, grads: dict) -> str:
    """Format the value and one line per gradient, as "value: ..." and "grad NAME: ..."."""
    lines = [format_array(value, "value: ")]
    for name, gradient in grads.items():
        lines.append(format_array(gradient, f"grad {name}: "))
    return "\n".join(lines)


def _json_ready(array: numpy.ndarray):
    """Convert an array to nested lists, with NaN and infinities as "nan", "inf" and "-inf"."""
    if array.dtype.kind == "f" and not numpy.isfinite(array).all():
        objects = array.astype(object)
        objects[numpy.isnan(array)] = "nan"
        objects[numpy.isposinf(array)] = "inf"
        objects[numpy.isneginf(array)] = "-inf"
        return objects.tolist()
    return array.tolist()


def format_json(value: numpy.ndarray, grads: dict, backend_name: str, dtype_name: str) -> str:
    """Format the results as one JSON object with the keys value, grad, backend and dtype."""
    document = {
        "value": _json_ready(value),
        "grad": {name: _json_ready(gradient) for name, gradient in grads.items()},
        "backend": backend_name,
        "dtype": dtype_name,
    }
    # allow_nan=False guarantees valid JSON: a non-finite float left over would raise here.
    return json.dumps(document, allow_nan=False)


def check_output_path(path: str, input_paths) -> None:
    """Raise CommandError unless ``path`` ends in .npz and names none of the input files."""
    if not path.lower().endswith(".npz"):
        raise CommandError(
            f"--output {path} must name a .npz file; write for example --output results.npz"
        )
    if not os.path.exists(path):
        return
    if not zipfile.is_zipfile(path):
        raise CommandError(
            f"--output {path} exists and is not an .npz archive, so gpuflow does not "
            "overwrite it; remove it first or choose another output file"
        )
    for input_path in input_paths:
        same = os.path.realpath(path) == os.path.realpath(input_path)
        if not same and os.path.exists(input_path):
            same = os.path.samefile(path, input_path)
        if same:
            raise CommandError(
                f"--output {path} is the input file {input_path}, which gpuflow does not "
                "overwrite; choose another output file"
            )


def write_npz(path: str, value: numpy.ndarray, grads: dict) -> None:
    """Write the keys value and grad_NAME to ``path`` through a temporary file in its folder.

    The temporary file is renamed over ``path`` only once it is complete, so a
    failure leaves no partly written file at ``path``.
    """
    arrays = {"value": value}
    for name, gradient in grads.items():
        arrays[f"grad_{name}"] = gradient
    write_atomic(path, lambda file: numpy.savez(file, **arrays), "--output")


