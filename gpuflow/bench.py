"""Benchmarks of gpuflow beside hand-written array code, against the copy bandwidth.

Each workload computes a value and its gradients on arrays of one size:

* ``sigmoid``: the value and gradient of ``sum(sigmoid(x))``;
* ``quadratic``: the value and the four gradients of ``sum(a*x**2 + b*x + c)``.

Each workload has implementations, listed in ``IMPLEMENTATIONS``: ``baseline``
(the formulas written by hand with the backend's array functions) and
``eager`` (``gpuflow.value_and_grad``). Every implementation is called for
warm-up, its result is checked against the baseline's, and then it is timed
``repeat`` times. The reported time is the median of those runs. CuPy is timed
with CUDA events on the current stream, and the CPU backends with
``time.perf_counter``.

A copy of an array of the same size, timed in the same way, gives the
bandwidth that the backend reaches in practice. A workload's bandwidth counts
its inputs read once and its outputs written once, divided by the median time,
and is reported as a fraction of the copy bandwidth. Temporaries are not
counted, so the fraction shows how far an implementation is from one pass
over memory.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import io
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy

import gpuflow
from gpuflow import backends

DEFAULT_SIZES = (10**5, 10**6)
DEFAULT_REPEAT = 5
DEFAULT_WARMUP = 1
DEFAULT_DTYPE = "float32"
DTYPES = ("float32", "float64")

# The implementation that the others are compared with.
BASELINE = "baseline"


class BenchmarkError(RuntimeError):
    """Raised when an implementation gives a result that differs from the baseline's."""


class PlotUnavailableError(RuntimeError):
    """Raised by ``plot`` when matplotlib is missing."""


# The hand-written baselines. ``xp`` is a gpuflow backend, which has the array namespace's
# functions, so one formula serves NumPy, CuPy and Array API namespaces alike.


def sigmoid_baseline(xp, x):
    """Return ``sum(sigmoid(x))`` and its gradient, with the stable formula of the kernels."""
    e = xp.exp(-xp.abs(x))
    r = 1 / (1 + e)
    value = xp.sum(xp.where(x >= 0, r, e * r))
    return value, e * r * r


def quadratic_baseline(xp, x, a, b, c):
    """Return ``sum(a*x**2 + b*x + c)`` and its gradients with respect to x, a, b and c."""
    x2 = x * x
    value = xp.sum(a * x2 + b * x + c)
    return value, (2 * a * x + b, x2, xp.copy(x), xp.ones_like(c))


def _quadratic(x, a, b, c):
    return gpuflow.sum(a * x**2 + b * x + c)


_sigmoid_eager = gpuflow.value_and_grad(lambda x: gpuflow.sum(gpuflow.sigmoid(x)))
_quadratic_eager = gpuflow.value_and_grad(_quadratic, (0, 1, 2, 3))


@dataclass(frozen=True)
class Workload:
    """A benchmarked computation: how many full-size arrays it reads and writes."""

    name: str
    description: str
    input_count: int
    # Full-size gradient arrays written, besides the 0-d value.
    output_count: int

    def moved_bytes(self, size: int, itemsize: int) -> int:
        """Return the bytes of the inputs read once and of the outputs written once.

        The outputs are the gradients and the 0-d value.
        """
        return (self.input_count + self.output_count) * size * itemsize + itemsize


WORKLOADS = {
    "sigmoid": Workload("sigmoid", "value and gradient of sum(sigmoid(x))", 1, 1),
    "quadratic": Workload(
        "quadratic", "value and 4 gradients of sum(a*x**2 + b*x + c)", 4, 4
    ),
}

# The implementations of each workload, by name, baseline first. Each entry takes a
# backend and returns a function of the workload's input arrays that returns the value and
# the gradient (or a tuple of gradients). A compiled mode of gpuflow would add a "compiled"
# entry to each workload here, and the command and the report would pick it up.
IMPLEMENTATIONS = {
    "sigmoid": {
        BASELINE: lambda backend: lambda x: sigmoid_baseline(backend, x),
        "eager": lambda backend: _sigmoid_eager,
    },
    "quadratic": {
        BASELINE: lambda backend: lambda x, a, b, c: quadratic_baseline(backend, x, a, b, c),
        "eager": lambda backend: _quadratic_eager,
    },
}

COPY = "copy"


@dataclass
class Measurement:
    """The timings of one implementation of one workload at one size, and figures from them."""

    backend: str
    workload: str
    implementation: str
    size: int
    dtype: str
    times_s: list[float]
    median_s: float
    moved_bytes: int
    # None when the median is 0, below the clock's resolution.
    bandwidth_bytes_per_s: float | None
    fraction_of_copy: float | None = None
    ratio_to_baseline: float | None = None


@dataclass
class Report:
    """Every measurement of one run, with the settings, the machine and the versions."""

    settings: dict
    measurements: list[Measurement] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    devices: dict = field(default_factory=dict)
    date: str = ""

    def to_json(self) -> dict:
        """Return the report as a dict of JSON types."""
        return {
            "date": self.date,
            "machine": self.machine,
            "devices": self.devices,
            "versions": self.versions,
            "settings": self.settings,
            "results": [asdict(measurement) for measurement in self.measurements],
        }


# Timing.


def timer_name(backend) -> str:
    """Return the name of the clock that times ``backend``."""
    return "cupy.cuda.Event" if backend.name == "cupy" else "time.perf_counter"


def _time_runs(backend, function, arguments, repeat: int) -> list[float]:
    """Return the duration in seconds of each of ``repeat`` calls of ``function``."""
    times = []
    if backend.name == "cupy":
        # NOTE: written from CuPy's documented Event API and not yet run on a CUDA device.
        import cupy

        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        for _ in range(repeat):
            backend.synchronize()
            start.record()
            function(*arguments)
            end.record()
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        return times
    for _ in range(repeat):
        backend.synchronize()
        started = time.perf_counter()
        function(*arguments)
        backend.synchronize()
        times.append(time.perf_counter() - started)
    return times


def _as_list(result) -> list:
    value, gradients = result
    if not isinstance(gradients, (tuple, list)):
        gradients = [gradients]
    return [value, *gradients]


def _check_result(backend, result, reference, label: str, dtype: str) -> None:
    """Raise BenchmarkError unless ``result`` matches the baseline's ``reference``."""
    # The value is a sum over the whole array, which may be added in another order.
    value_tolerance, gradient_tolerance = (1e-3, 1e-5) if dtype == "float32" else (1e-9, 1e-12)
    pairs = zip(_as_list(result), _as_list(reference))
    for position, (found, expected) in enumerate(pairs):
        found = numpy.asarray(backend.to_numpy(found))
        expected = numpy.asarray(backend.to_numpy(expected))
        tolerance = value_tolerance if position == 0 else gradient_tolerance
        quantity = "the value" if position == 0 else f"gradient {position}"
        if found.shape != expected.shape:
            raise BenchmarkError(
                f"{label}: {quantity} has shape {found.shape} but the baseline's has shape "
                f"{expected.shape}; fix the implementation before timing it"
            )
        if not numpy.allclose(found, expected, rtol=tolerance, atol=tolerance):
            error = float(numpy.max(numpy.abs(found.astype(float) - expected.astype(float))))
            raise BenchmarkError(
                f"{label}: {quantity} differs from the baseline's by up to {error:.3g}, above the "
                f"tolerance {tolerance:g}; fix the implementation before timing it"
            )


def _inputs(backend, size: int, dtype: str, count: int) -> list:
    generator = numpy.random.default_rng(0)
    return [
        backend.from_numpy(generator.standard_normal(size).astype(dtype)) for _ in range(count)
    ]


def _measure(backend, workload, implementation, size, dtype, function, arguments, repeat,
             moved_bytes) -> Measurement:
    times = _time_runs(backend, function, arguments, repeat)
    median = statistics.median(times)
    bandwidth = moved_bytes / median if median > 0 else None
    return Measurement(
        backend.name, workload, implementation, size, dtype, times, median, moved_bytes,
        bandwidth,
    )


def run_benchmarks(backend_names, workload_names, sizes, repeat=DEFAULT_REPEAT,
                   warmup=DEFAULT_WARMUP, dtype=DEFAULT_DTYPE, progress=None) -> Report:
    """Time every implementation of ``workload_names`` at each size on each backend.

    ``backend_names`` are names for ``gpuflow.get_backend``, ``auto`` included.
    A backend named twice (``auto`` and ``numpy`` on a CPU machine) runs once.
    ``progress``, when given, is called with each Measurement as it is made.
    Raises BenchmarkError when an implementation's result differs from the
    baseline's, and BackendUnavailableError for a missing backend.
    """
    if repeat < 1 or warmup < 1:
        raise ValueError(f"repeat and warmup must be at least 1, got {repeat} and {warmup}")
    chosen = []
    for name in backend_names:
        backend = backends.get_backend(name)
        if backend not in chosen:
            chosen.append(backend)
    report = Report(
        settings={
            "backends": [backend.name for backend in chosen],
            "workloads": list(workload_names),
            "sizes": list(sizes),
            "repeat": repeat,
            "warmup": warmup,
            "dtype": dtype,
            "timers": {backend.name: timer_name(backend) for backend in chosen},
        },
        machine=machine_description(),
        versions=versions(),
        devices={backend.name: device_description(backend) for backend in chosen},
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    itemsize = numpy.dtype(dtype).itemsize
    for backend in chosen:
        for size in sizes:
            report.measurements.extend(
                _run_size(backend, workload_names, size, repeat, warmup, dtype, itemsize,
                          progress)
            )
    return report


def _run_size(backend, workload_names, size, repeat, warmup, dtype, itemsize, progress):
    measurements = []
    arrays = _inputs(backend, size, dtype, max(WORKLOADS[name].input_count
                                               for name in workload_names))
    for _ in range(warmup):
        backend.copy(arrays[0])
    copy = _measure(backend, COPY, COPY, size, dtype, backend.copy, arrays[:1], repeat,
                    2 * size * itemsize)
    copy.fraction_of_copy = 1.0
    measurements.append(copy)
    if progress is not None:
        progress(copy)
    for name in workload_names:
        workload = WORKLOADS[name]
        arguments = arrays[: workload.input_count]
        moved = workload.moved_bytes(size, itemsize)
        reference = None
        baseline_median = None
        for implementation, factory in IMPLEMENTATIONS[name].items():
            function = factory(backend)
            # The first warm-up call's result is checked against the baseline's.
            with backend.errstate():
                result = function(*arguments)
                for _ in range(warmup - 1):
                    function(*arguments)
                if reference is None:
                    reference = result
                else:
                    label = f"{backend.name} {name} {implementation} at size {size}"
                    _check_result(backend, result, reference, label, dtype)
                del result
                measurement = _measure(backend, name, implementation, size, dtype, function,
                                       arguments, repeat, moved)
            if measurement.bandwidth_bytes_per_s and copy.bandwidth_bytes_per_s:
                measurement.fraction_of_copy = (
                    measurement.bandwidth_bytes_per_s / copy.bandwidth_bytes_per_s
                )
            if baseline_median is None:
                baseline_median = measurement.median_s
            if baseline_median > 0:
                measurement.ratio_to_baseline = measurement.median_s / baseline_median
            measurements.append(measurement)
            if progress is not None:
                progress(measurement)
    return measurements


# The machine and the versions.


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description() -> dict:
    """Return the platform, the CPU model and the number of CPU cores the OS reports."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }


def _cupy_version() -> str | None:
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return cupy.__version__
    for distribution in ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    """Return the versions of Python, NumPy, CuPy (None when not installed) and gpuflow."""
    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "cupy": _cupy_version(),
        "gpuflow": gpuflow.__version__,
    }


def device_description(backend) -> dict:
    """Return the device a backend runs on: the GPU's name and memory for CuPy."""
    if backend.name != "cupy":
        return {"kind": "cpu", "name": _cpu_model()}
    import cupy

    device = cupy.cuda.Device()
    properties = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = properties["name"]
    return {
        "kind": "cuda",
        "name": name.decode() if isinstance(name, bytes) else name,
        "device_id": device.id,
        "total_memory_bytes": properties["totalGlobalMem"],
    }


# The table and the plot.


def _format_optional(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def _gigabytes(bandwidth: float | None) -> float | None:
    return None if bandwidth is None else bandwidth / 1e9


_TABLE_HEADER = ("backend", "workload", "implementation", "size", "median ms", "GB/s",
                 "of copy", "vs baseline")
# The first columns contain text and align left, and the others numbers, which align right.
_TEXT_COLUMNS = 3


def _table_cells(item: Measurement) -> tuple:
    return (
        item.backend,
        item.workload,
        item.implementation,
        str(item.size),
        f"{item.median_s * 1e3:.4g}",
        _format_optional(_gigabytes(item.bandwidth_bytes_per_s), ".3g"),
        _format_optional(item.fraction_of_copy, ".2f"),
        _format_optional(item.ratio_to_baseline, ".2f"),
    )


def _align(rows) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if column < _TEXT_COLUMNS else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def format_table(report: Report) -> str:
    """Format the measurements as an aligned text table, one row per measurement, and notes."""
    lines = _align([_TABLE_HEADER, *(_table_cells(item) for item in report.measurements)])
    settings = report.settings
    warmup = "warm-up call" if settings["warmup"] == 1 else "warm-up calls"
    lines.extend([
        "",
        f"median of {settings['repeat']} runs after {settings['warmup']} {warmup}, "
        f"{settings['dtype']} arrays",
        "GB/s: bytes of the inputs read once and the outputs written once, per median time",
        "of copy: GB/s over the copy's GB/s; vs baseline: median time over the baseline's",
    ])
    return "\n".join(lines)


def format_progress(item: Measurement) -> str:
    """Format one measurement as a progress line."""
    return (
        f"{item.backend} {item.workload} {item.implementation} size {item.size}: "
        f"median {item.median_s * 1e3:.4g} ms over {len(item.times_s)} runs"
    )


def check_plotting() -> None:
    """Raise PlotUnavailableError unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise PlotUnavailableError(
            f"--plot needs matplotlib, which failed to import ({error}); install it with "
            "pip install 'gpuflow[plot]'"
        ) from None


def plot(report: Report) -> bytes:
    """Draw the median time and the bandwidth against size, log-log, and return PNG bytes."""
    check_plotting()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    time_axes, bandwidth_axes = figure.subplots(1, 2)
    series = {}
    for item in report.measurements:
        key = (item.backend, item.workload, item.implementation)
        series.setdefault(key, []).append(item)
    for (backend, workload, implementation), items in series.items():
        items.sort(key=lambda item: item.size)
        sizes = [item.size for item in items]
        label = (f"{backend} copy" if workload == COPY
                 else f"{backend} {workload} {implementation}")
        style = dict(marker="o", linestyle="--" if workload == COPY else "-", label=label)
        time_axes.plot(sizes, [item.median_s for item in items], **style)
        bandwidth_axes.plot(
            sizes, [_gigabytes(item.bandwidth_bytes_per_s) or numpy.nan for item in items],
            **style,
        )
    for axes, ylabel in ((time_axes, "median time (s)"), (bandwidth_axes, "bandwidth (GB/s)")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("elements per array")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="both", alpha=0.3)
    time_axes.set_title("median time")
    bandwidth_axes.set_title("inputs read + outputs written / median time")
    bandwidth_axes.legend(fontsize="small")
    settings = report.settings
    figure.suptitle(
        f"gpuflow bench: {settings['dtype']}, median of {settings['repeat']} runs"
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
