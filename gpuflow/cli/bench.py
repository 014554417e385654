"""The ``gpuflow bench`` subcommand: time gpuflow beside hand-written array code."""

from __future__ import annotations

import json
import os
import sys

from gpuflow import backends, bench
from gpuflow.cli import CommandError
from gpuflow.cli.files import check_output_folder, write_atomic

NAME = "bench"
HELP = "time gpuflow's gradients beside hand-written array code and the copy bandwidth"
DESCRIPTION = f"""\
Time each workload's implementations on each backend and size, and print a table.
Workloads: {", ".join(f"{name} ({workload.description})"
                      for name, workload in bench.WORKLOADS.items())}.
Implementations: baseline (the formulas written by hand with the backend's array
functions) and eager (gpuflow.value_and_grad). Each is called --warmup times, the
first result is checked against the baseline's, and the median of --repeat timed
runs is reported. CuPy is timed with CUDA events, the CPU with time.perf_counter.
A copy of an array of the same size gives the reference bandwidth: a workload's
GB/s counts its inputs read once and its outputs written once, and "of copy" is
that bandwidth as a fraction of the copy's."""

EPILOG = """\
examples:
  gpuflow bench
  gpuflow bench --size 100000 --repeat 3
  gpuflow bench --backend auto --workload sigmoid --size 1e6 1e7 1e8 --json gpu.json
  gpuflow bench --size 1e4 1e5 1e6 --plot bench.png

exit status: 0 on success, 1 when an implementation's result differs from the
baseline's, 2 for invalid input or a missing backend or package (one line on stderr)."""

# The largest accepted --size, which limits one float64 array to 8 GB.
MAX_SIZE = 10**9


def add_arguments(parser) -> None:
    """Add the arguments of ``gpuflow bench`` to ``parser``."""
    parser.add_argument(
        "--backend",
        metavar="NAME,...",
        default="numpy",
        help=f"backends separated by commas, from {', '.join(backends.BACKEND_NAMES)}; auto "
        "picks cupy when a CUDA device is present (default numpy)",
    )
    parser.add_argument(
        "--workload",
        metavar="NAME,...",
        default=",".join(bench.WORKLOADS),
        help=f"workloads separated by commas, from {', '.join(bench.WORKLOADS)} "
        "(default all)",
    )
    parser.add_argument(
        "--size",
        metavar="N",
        nargs="+",
        action="extend",
        help="elements per array, one or more, such as 100000 or 1e6 "
        "(default 100000 1000000)",
    )
    parser.add_argument(
        "--repeat",
        metavar="N",
        type=int,
        default=bench.DEFAULT_REPEAT,
        help=f"timed runs per measurement, whose median is reported "
        f"(default {bench.DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--warmup",
        metavar="N",
        type=int,
        default=bench.DEFAULT_WARMUP,
        help=f"untimed calls before the timed runs, at least 1 (default {bench.DEFAULT_WARMUP})",
    )
    parser.add_argument(
        "--dtype",
        choices=bench.DTYPES,
        default=bench.DEFAULT_DTYPE,
        help=f"the dtype of the arrays (default {bench.DEFAULT_DTYPE})",
    )
    parser.add_argument(
        "--json",
        metavar="FILE",
        help="write every figure, the machine, the versions and the date to FILE as JSON",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw time and bandwidth against size (log-log) to FILE.png; needs matplotlib "
        "(pip install 'gpuflow[plot]')",
    )


def _split_names(text: str, option: str, known, kind: str) -> list[str]:
    names = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            raise CommandError(
                f"invalid {option} {text!r}: empty name; list {kind}s separated by commas, "
                f"for example {option} {','.join(list(known)[:2])}"
            )
        if name not in known:
            raise CommandError(
                f"unknown {kind} {part.strip()!r} in {option} {text}; choose from "
                f"{', '.join(known)}"
            )
        if name not in names:
            names.append(name)
    return names


def parse_size(text: str) -> int:
    """Parse a --size value: a positive integer, written as 100000, 100_000 or 1e5."""
    try:
        number = float(text.replace("_", ""))
    except ValueError:
        number = None
    if number is None or not number.is_integer() or not 1 <= number <= MAX_SIZE:
        raise CommandError(
            f"invalid --size {text!r}: expected a whole number of elements from 1 to "
            f"{MAX_SIZE:.0e}; write for example --size 100000 or --size 1e6"
        )
    return int(number)


def _sizes(values) -> list[int]:
    if not values:
        return list(bench.DEFAULT_SIZES)
    sizes = []
    for value in values:
        for part in value.split(","):
            size = parse_size(part.strip())
            if size not in sizes:
                sizes.append(size)
    return sizes


MAX_REPEAT = 1000

# The largest number of batch-sized arrays one workload keeps alive at once (the
# quadratic's inputs, gradients and intermediates), used by the memory estimate.
ARRAYS_PER_WORKLOAD = 16


def _check_counts(args) -> None:
    if not 1 <= args.repeat <= MAX_REPEAT:
        raise CommandError(
            f"invalid --repeat {args.repeat}: it must be from 1 to {MAX_REPEAT}; pass for "
            "example --repeat 5"
        )
    if args.warmup < 1:
        raise CommandError(
            f"invalid --warmup {args.warmup}: at least one warm-up call checks the result; "
            "pass --warmup 1"
        )


def check_memory(sizes, dtype_name: str) -> None:
    """Raise CommandError when the largest size would not fit in the machine's free memory."""
    import numpy

    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return  # No estimate of free memory on this platform; let NumPy report it.
    needed = max(sizes) * numpy.dtype(dtype_name).itemsize * ARRAYS_PER_WORKLOAD
    if needed > available:
        raise CommandError(
            f"--size {max(sizes):.0f} needs about {needed / 2**30:.1f} GiB, more than the "
            f"{available / 2**30:.1f} GiB of free memory; pass a smaller --size"
        )


def _check_files(args) -> None:
    if args.json is not None and args.plot is not None and (
        os.path.abspath(args.json) == os.path.abspath(args.plot)
    ):
        raise CommandError(
            f"--json and --plot both name {args.json}; give each its own file, for example "
            "--json bench.json --plot bench.png"
        )
    if args.json is not None:
        check_output_folder(args.json, "--json")
    if args.plot is not None:
        if not args.plot.lower().endswith(".png"):
            raise CommandError(
                f"--plot {args.plot} must name a .png file; write for example --plot bench.png"
            )
        check_output_folder(args.plot, "--plot")
        try:
            bench.check_plotting()
        except bench.PlotUnavailableError as error:
            raise CommandError(str(error)) from None


def _progress_printer():
    # Progress lines only help a person watching, so they go to a terminal only.
    if not sys.stderr.isatty():
        return None

    def show(measurement) -> None:
        print(f"gpuflow bench: {bench.format_progress(measurement)}", file=sys.stderr, flush=True)

    return show


def run(args) -> int:
    """Run ``gpuflow bench`` with parsed arguments and return the exit status."""
    backend_names = _split_names(args.backend, "--backend", backends.BACKEND_NAMES, "backend")
    workload_names = _split_names(args.workload, "--workload", list(bench.WORKLOADS),
                                  "workload")
    sizes = _sizes(args.size)
    _check_counts(args)
    check_memory(sizes, args.dtype)
    _check_files(args)
    try:
        report = bench.run_benchmarks(
            backend_names, workload_names, sizes, repeat=args.repeat, warmup=args.warmup,
            dtype=args.dtype, progress=_progress_printer(),
        )
    except bench.BenchmarkError as error:
        print(f"gpuflow bench: error: {error}", file=sys.stderr)
        return 1
    except MemoryError:
        raise CommandError(
            f"out of memory with arrays of up to {max(sizes)} elements; choose smaller --size "
            "values"
        ) from None
    print(bench.format_table(report))
    if args.json is not None:
        # allow_nan=False guarantees valid JSON: missing figures are null.
        text = json.dumps(report.to_json(), indent=2, allow_nan=False) + "\n"
        write_atomic(args.json, text.encode("utf-8"), "--json")
    if args.plot is not None:
        write_atomic(args.plot, bench.plot(report), "--plot")
    return 0
