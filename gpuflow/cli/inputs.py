"""Input arrays of ``gpuflow grad``: NAME=VALUE arguments, .npz and .npy files, random arrays.

Every function here raises CommandError with a one-line "<problem>; <fix>"
message for invalid input, and never runs code from a file: files are read
with ``allow_pickle=False``.
"""

from __future__ import annotations

import dataclasses
import keyword
import os
import zipfile

import numpy

from gpuflow.cli import CommandError

# Every .npy file begins with these bytes (the NumPy format's magic string).
_NPY_MAGIC = b"\x93NUMPY"

# Array kinds that can be inputs: boolean, signed and unsigned integer, floating point.
_NUMERIC_KINDS = "biuf"


@dataclasses.dataclass
class Input:
    """An input array with the command-line argument or file it came from."""

    name: str
    array: numpy.ndarray
    source: str


def check_name(name: str, source: str) -> None:
    """Raise CommandError unless ``name`` can be an input name of an expression."""
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise CommandError(
            f"invalid input name {name!r} in {source}; use a letter followed by letters, "
            "digits or underscores, for example x or x_2"
        )


def parse_assignment(text: str) -> Input:
    """Parse NAME=VALUE, where VALUE is a number or a comma-separated list of numbers.

    A list, including a single number with a trailing comma such as ``x=3,``,
    gives a 1-d array, and a single number gives a 0-d array.
    """
    name, separator, value_text = text.partition("=")
    if not separator:
        raise CommandError(
            f"invalid input {text!r}: expected NAME=VALUE; write for example x=3 or x=1,2,3"
        )
    name = name.strip()
    check_name(name, repr(text))
    parts = value_text.split(",")
    is_list = len(parts) > 1
    if is_list and parts[-1].strip() == "":
        parts = parts[:-1]
    numbers = []
    for part in parts:
        try:
            numbers.append(float(part))
        except ValueError:
            raise CommandError(
                f"invalid value {part.strip()!r} in {text!r}: not a number; write numbers "
                "separated by commas, for example x=1,2.5,3"
            ) from None
    array = numpy.array(numbers if is_list else numbers[0], dtype=numpy.float64)
    return Input(name, array, text)


def parse_random_spec(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse NAME=SHAPE for --random, where SHAPE is sizes joined by x, such as 100x3."""
    name, separator, shape_text = text.partition("=")
    source = f"--random {text}"
    if not separator:
        raise CommandError(
            f"invalid {source}: expected NAME=SHAPE; write for example x=1000 or x=100x3"
        )
    name = name.strip()
    check_name(name, source)
    sizes = shape_text.strip().lower().split("x")
    if not all(size.strip().isdigit() for size in sizes):
        raise CommandError(
            f"invalid shape {shape_text!r} in {source}; write sizes separated by x, "
            "for example x=1000 or x=100x3"
        )
    return name, tuple(int(size) for size in sizes)


def random_inputs(specs, seed: int) -> list[Input]:
    """Draw standard normal arrays for NAME=SHAPE specs, in order, from one generator.

    The same seed and the same specs in the same order give the same arrays.
    """
    if not specs:
        return []
    if seed < 0:
        raise CommandError(
            f"invalid --seed {seed}: the seed must not be negative; pass for example --seed 0"
        )
    generator = numpy.random.default_rng(seed)
    inputs = []
    for text in specs:
        name, shape = parse_random_spec(text)
        try:
            array = generator.standard_normal(shape)
        except (MemoryError, ValueError) as error:
            raise CommandError(
                f"cannot create --random {text} (shape {shape}): {error}; choose a smaller shape"
            ) from None
        inputs.append(Input(name, array, f"--random {text}"))
    return inputs


def load_file(path: str, mmap_mode: str | None = None) -> list[Input]:
    """Load the arrays of a .npz file (one input per key) or a .npy file (named by its stem).

    ``mmap_mode`` is passed to numpy.load for .npy files, which are then memory-mapped.
    """
    _check_readable(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npz", ".npy"):
        raise CommandError(
            f"unsupported input file {path}: expected a .npz or .npy file; save the arrays "
            "with numpy.savez or numpy.save"
        )
    if suffix == ".npy":
        return [_load_npy(path, mmap_mode)]
    return _load_npz(path)


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        hint = ""
        if "=" in path:
            hint = " (NAME=VALUE arguments go before --inputs, whose list takes what follows)"
        raise CommandError(f"input file not found: {path}; check the path{hint}")
    if os.path.isdir(path):
        raise CommandError(f"input file {path} is a folder; pass a .npz or .npy file")
    if not os.access(path, os.R_OK):
        raise CommandError(f"cannot read input file {path}: permission denied; check its mode")


def _load_npy(path: str, mmap_mode: str | None = None) -> Input:
    stem = os.path.splitext(os.path.basename(path))[0]
    if not stem.isidentifier() or keyword.iskeyword(stem) or stem.startswith("_"):
        raise CommandError(
            f"the file name {os.path.basename(path)} does not give a valid input name; rename "
            "it to NAME.npy, with NAME a letter followed by letters, digits or underscores"
        )
    with open(path, "rb") as file:
        magic = file.read(len(_NPY_MAGIC))
    if magic != _NPY_MAGIC:
        raise CommandError(
            f"{path} is not a valid .npy file (it lacks the NumPy header); "
            "save it with numpy.save"
        )
    try:
        array = numpy.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as error:
        raise _read_error(path, stem, error) from None
    except (EOFError, OSError) as error:
        raise _malformed(path, error) from None
    except MemoryError:
        raise _too_large(path, stem) from None
    return Input(stem, _check_dtype(array, stem, path), path)


def _load_npz(path: str) -> list[Input]:
    if not zipfile.is_zipfile(path):
        raise CommandError(
            f"{path} is not a valid .npz file (it is not a zip archive); "
            "save it with numpy.savez"
        )
    inputs = []
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                check_name(key, path)
                try:
                    array = archive[key]
                except ValueError as error:
                    raise _read_error(path, key, error) from None
                except MemoryError:
                    raise _too_large(path, key) from None
                if not isinstance(array, numpy.ndarray):
                    raise CommandError(
                        f"member {key} of {path} is not a .npy array; save the file with "
                        "numpy.savez"
                    )
                inputs.append(Input(key, _check_dtype(array, key, path), path))
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as error:
        raise _malformed(path, error) from None
    if not inputs:
        raise CommandError(f"{path} contains no arrays; save at least one with numpy.savez")
    return inputs


def _read_error(path: str, name: str, error: ValueError) -> CommandError:
    if "allow_pickle" in str(error) or "pickle" in str(error):
        return CommandError(
            f"{name} in {path} is an object array, which cannot be loaded without pickle "
            "(gpuflow loads files with allow_pickle=False); save a numeric array, for example "
            "numpy.asarray(values, dtype=float)"
        )
    return _malformed(path, error)


def _too_large(path: str, name: str) -> CommandError:
    return CommandError(
        f"{name} in {path} is larger than the memory available; use a smaller array, or "
        "pass a .npy file with --chunk-size so that it is memory-mapped"
    )


def _malformed(path: str, error: Exception) -> CommandError:
    detail = " ".join(str(error).split()) or type(error).__name__
    return CommandError(
        f"malformed input file {path}: {detail}; save it again with numpy.savez or numpy.save"
    )


def _check_dtype(array: numpy.ndarray, name: str, path: str) -> numpy.ndarray:
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise CommandError(
            f"{name} in {path} has dtype {array.dtype}, which is not a real number type; "
            "save a boolean, integer or floating-point array"
        )
    return array


def collect_inputs(assignments, files, random_specs, seed: int,
                   mmap_mode: str | None = None) -> list[Input]:
    """Gather the inputs in command-line order: NAME=VALUE arguments, files, random arrays.

    ``mmap_mode`` memory-maps .npy files (see ``load_file``).
    """
    inputs = [parse_assignment(text) for text in assignments]
    for path in files:
        inputs.extend(load_file(path, mmap_mode))
    inputs.extend(random_inputs(random_specs, seed))
    seen = {}
    for item in inputs:
        first = seen.get(item.name)
        if first is not None:
            raise CommandError(
                f"input {item.name} is given twice ({first.source} and {item.source}); "
                "give each input once"
            )
        seen[item.name] = item
    return inputs


def cast_inputs(inputs, dtype) -> list[Input]:
    """Cast numeric inputs to ``dtype`` and keep boolean ones, which serve as masks."""
    cast = []
    for item in inputs:
        array = item.array
        if array.dtype != numpy.bool_:
            with numpy.errstate(over="ignore"):
                converted = array.astype(dtype, copy=False)
            if numpy.isfinite(array).all() and not numpy.isfinite(converted).all():
                raise CommandError(
                    f"input {item.name} has values too large for {numpy.dtype(dtype).name} "
                    f"(largest magnitude {numpy.abs(array).max():g}); use --dtype float64"
                )
            array = converted
        cast.append(Input(item.name, array, item.source))
    return cast


def match_inputs(expression, inputs) -> list[Input]:
    """Return the inputs in command-line order after checking them against the expression.

    Every input name of the expression needs a value, and every input must be
    used, because an unused one is most likely a misspelled name.
    """
    by_name = {item.name: item for item in inputs}
    names = expression.input_names(by_name)
    unused = [item for item in inputs if item.name not in names]
    missing = [name for name in names if name not in by_name]
    if missing:
        typo = ""
        if unused:
            listed = ", ".join(item.name for item in unused)
            typo = f" (the expression does not use the given {listed}: check the spelling)"
        raise CommandError(
            f"no value for {', '.join(missing)}; give each as NAME=VALUE, in a file with "
            f"--inputs or with --random NAME=SHAPE{typo}"
        )
    if unused:
        listed = ", ".join(f"{item.name} (from {item.source})" for item in unused)
        verb = "is" if len(unused) == 1 else "are"
        used = ", ".join(names) or "no inputs"
        raise CommandError(
            f"input {listed} {verb} not used by the expression, which uses {used}; "
            "remove it or correct its spelling"
        )
    return [item for item in inputs if item.name in names]


def add_input_arguments(parser, expression_help: str) -> None:
    """Add EXPR, NAME=VALUE, --inputs and --random, shared by the subcommands, to ``parser``."""
    parser.add_argument("expression", metavar="EXPR", help=expression_help)
    parser.add_argument(
        "assignments",
        metavar="NAME=VALUE",
        nargs="*",
        help="an input: a number (0-d array) or numbers separated by commas (1-d array)",
    )
    parser.add_argument(
        "--inputs",
        metavar="FILE",
        nargs="+",
        action="extend",
        default=[],
        help="a .npz file (one input per key) or a .npy file (input named by the file stem)",
    )
    parser.add_argument(
        "--random",
        metavar="NAME=SHAPE",
        nargs="+",
        action="extend",
        default=[],
        help="a standard normal input of SHAPE, sizes joined by x: x=1000 or X=100x3",
    )
