"""GPU benchmarks: fused CUDA kernels and compiled plans beside unfused CuPy, in one run.

Run on a machine with an NVIDIA GPU (ci/gpu-check does this and writes a report):
    python -m pytest -m gpu benchmarks/test_gpu_bench.py --benchmark-json=gpu.json

Each step runs on 10**8 float32 elements. After warm-up launches, CUDA events time each
launch on the current stream, and the median of those times gives the achieved bandwidth:
the bytes of every operand read once plus every result written once, divided by the median.
extra_info stores that bandwidth and its fraction of a device-to-device copy's bandwidth,
which approximates the memory bandwidth the device reaches in practice. pytest-benchmark's
own statistics time the same calls by wall clock, each followed by a stream synchronize.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import pytest

import gpuflow as gf
from gpuflow.backends import cuda_kernels

pytestmark = pytest.mark.gpu

ELEMENTS = 10**8
ITEM_BYTES = 4  # float32
ARRAY_BYTES = ELEMENTS * ITEM_BYTES
WARMUP_LAUNCHES = 3
TIMED_LAUNCHES = 20


@dataclass(frozen=True)
class Step:
    """One benchmarked step: its operands and results, and its fused and unfused versions."""

    name: str
    operand_count: int
    result_count: int
    # ELEMENTS-sized arrays besides the operands (results and temporaries) alive at once in
    # either version: an upper estimate, used to skip when the device is too small.
    extra_arrays: int
    fused: Callable
    unfused: Callable

    @property
    def moved_bytes(self) -> int:
        return (self.operand_count + self.result_count) * ARRAY_BYTES


def unfused_sigmoid_forward(x):
    # The same stable formula as the fused kernel, one CuPy kernel per operation.
    import cupy

    e = cupy.exp(-cupy.abs(x))
    r = 1 / (1 + e)
    return cupy.where(x >= 0, r, e * r), e * r * r


def unfused_multiply_add_backward(g, a, b):
    # gc is copied so both versions write the same three results.
    return g * b, g * a, g.copy()


STEPS = [
    Step("sigmoid_forward", 1, 2, 6, cuda_kernels.sigmoid_forward, unfused_sigmoid_forward),
    Step("sigmoid_backward", 2, 1, 2, cuda_kernels.sigmoid_backward, lambda gy, p: gy * p),
    Step(
        "multiply_add_forward",
        3,
        1,
        3,
        cuda_kernels.multiply_add_forward,
        lambda a, b, c: a * b + c,
    ),
    Step(
        "multiply_add_backward",
        3,
        3,
        4,
        cuda_kernels.multiply_add_backward,
        unfused_multiply_add_backward,
    ),
]


@pytest.fixture(scope="module")
def cupy():
    from gpuflow.backends.base import BackendUnavailableError
    from gpuflow.backends.cupy_backend import import_cupy

    try:
        return import_cupy()
    except BackendUnavailableError as error:
        pytest.skip(f"needs CuPy and a CUDA device: {error}")


def require_free_memory(cupy, array_count: int) -> None:
    """Skip unless the device has room for ``array_count`` arrays of ELEMENTS float32."""
    cupy.get_default_memory_pool().free_all_blocks()
    free_bytes, _ = cupy.cuda.runtime.memGetInfo()
    needed = array_count * ARRAY_BYTES
    if free_bytes < needed:
        pytest.skip(f"needs {needed} bytes of free device memory, the device has {free_bytes}")


def random_operands(cupy, count: int) -> list:
    generator = cupy.random.default_rng(0)
    return [generator.standard_normal(ELEMENTS, dtype=cupy.float32) for _ in range(count)]


def event_times(cupy, function, *arguments) -> list[float]:
    """Return the seconds of TIMED_LAUNCHES event-timed calls after WARMUP_LAUNCHES."""
    for _ in range(WARMUP_LAUNCHES):
        function(*arguments)
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    times = []
    for _ in range(TIMED_LAUNCHES):
        start = cupy.cuda.Event()
        end = cupy.cuda.Event()
        start.record(stream)
        function(*arguments)
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / 1000)
    return times


def copy_into(cupy, destination, source):
    cupy.copyto(destination, source)


@pytest.fixture(scope="module")
def copy_bandwidth(cupy) -> float:
    """Bytes per second of a device-to-device copy of ELEMENTS float32 (read + write)."""
    require_free_memory(cupy, 2)
    source = random_operands(cupy, 1)[0]
    destination = cupy.empty_like(source)
    median = statistics.median(event_times(cupy, copy_into, cupy, destination, source))
    return 2 * ARRAY_BYTES / median


def measure(benchmark, cupy, function, arguments, moved_bytes: int, copy_bandwidth: float):
    """Store event-timed bandwidth figures in extra_info, then run pytest-benchmark's timing."""
    median = statistics.median(event_times(cupy, function, *arguments))
    bandwidth = moved_bytes / median
    benchmark.extra_info.update(
        {
            "elements": ELEMENTS,
            "dtype": "float32",
            "moved_bytes": moved_bytes,
            "event_median_s": median,
            "bandwidth_bytes_per_s": bandwidth,
            "copy_bandwidth_bytes_per_s": copy_bandwidth,
            "fraction_of_copy_bandwidth": bandwidth / copy_bandwidth,
        }
    )
    stream = cupy.cuda.get_current_stream()

    def call_and_wait():
        function(*arguments)
        stream.synchronize()

    benchmark.pedantic(call_and_wait, rounds=TIMED_LAUNCHES, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="copy")
def test_copy(benchmark, cupy, copy_bandwidth):
    require_free_memory(cupy, 2)
    source = random_operands(cupy, 1)[0]
    destination = cupy.empty_like(source)
    benchmark.extra_info.update({"step": "copy", "implementation": "cupy.copyto"})
    arguments = (cupy, destination, source)
    measure(benchmark, cupy, copy_into, arguments, 2 * ARRAY_BYTES, copy_bandwidth)


@pytest.mark.parametrize("implementation", ["fused", "unfused"])
@pytest.mark.parametrize(
    "step",
    [
        pytest.param(step, id=step.name, marks=pytest.mark.benchmark(group=step.name))
        for step in STEPS
    ],
)
def test_step(benchmark, cupy, copy_bandwidth, step, implementation):
    require_free_memory(cupy, step.operand_count + step.extra_arrays)
    operands = random_operands(cupy, step.operand_count)
    function = step.fused if implementation == "fused" else step.unfused
    benchmark.extra_info.update({"step": step.name, "implementation": implementation})
    measure(benchmark, cupy, function, operands, step.moved_bytes, copy_bandwidth)


# gpuflow.compile on CuPy: the workloads of benchmarks/test_compile_bench.py, compiled (one
# generated kernel per fused region) against eager gpuflow on CuPy. The bytes that must
# move are each input read once and each gradient written once, and the value is one number.


def sigmoid_sum(x):
    return gf.sum(gf.sigmoid(x))


def quadratic(x, a, b, c):
    return gf.sum(a * x**2 + b * x + c)


def root(a, b, c):
    return gf.sum((-b + gf.sqrt(b**2 - 4 * a * c)) / (2 * a))


@dataclass(frozen=True)
class Workload:
    """A compiled workload: its function, inputs and, for the root, the inputs' ranges."""

    name: str
    function: Callable
    argnums: object
    input_count: int
    # ELEMENTS-sized arrays alive at once besides the inputs in the eager version, which
    # keeps more than the compiled one: an upper estimate, used to skip on small devices.
    extra_arrays: int
    ranges: tuple = ()

    @property
    def moved_bytes(self) -> int:
        return 2 * self.input_count * ARRAY_BYTES


WORKLOADS = [
    Workload("compiled_sigmoid", sigmoid_sum, 0, 1, 6),
    Workload("compiled_quadratic", quadratic, (0, 1, 2, 3), 4, 10),
    # b**2 - 4ac >= 17 on these ranges, so the square root stays real.
    Workload("compiled_root", root, (0, 1, 2), 3, 16, ((1.0, 2.0), (5.0, 6.0), (0.5, 1.0))),
]


def workload_operands(cupy, workload: Workload) -> list:
    if not workload.ranges:
        return random_operands(cupy, workload.input_count)
    generator = cupy.random.default_rng(1)
    return [
        generator.random(ELEMENTS, dtype=cupy.float32) * (high - low) + low
        for low, high in workload.ranges
    ]


@pytest.mark.parametrize("implementation", ["compiled", "eager"])
@pytest.mark.parametrize(
    "workload",
    [
        pytest.param(workload, id=workload.name, marks=pytest.mark.benchmark(group=workload.name))
        for workload in WORKLOADS
    ],
)
def test_compiled_workload(benchmark, cupy, copy_bandwidth, workload, implementation):
    require_free_memory(cupy, workload.input_count + workload.extra_arrays)
    operands = workload_operands(cupy, workload)
    if implementation == "compiled":
        function = gf.compile(workload.function, workload.argnums)
    else:
        function = gf.value_and_grad(workload.function, workload.argnums)
    benchmark.extra_info.update({"step": workload.name, "implementation": implementation})
    measure(benchmark, cupy, function, operands, workload.moved_bytes, copy_bandwidth)
