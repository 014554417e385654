"""Fused CUDA kernels for the CuPy backend: source lookup, compile options and launch wrappers.

The CUDA sources live in ``kernels/`` (one fused kernel a file, shared per-element formulas in
``kernels/include/gpuflow/``). A wheel ships that folder as ``gpuflow/kernels``, and an editable
install reads it from the repository beside the package.

Each wrapper takes same-shape C-contiguous CuPy arrays of float32 or float64 on the current
device, compiles its kernel with ``cupy.RawModule`` the first time it meets a (dtype, device)
pair, and launches it on the current stream. Other inputs raise ValueError, and the caller
falls back to unfused CuPy expressions. CuPy is imported on the first call, so this module
imports on machines without CuPy.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import threading
import time
from pathlib import Path

import numpy

logger = logging.getLogger(__name__)

__all__ = [
    "KERNEL_NAMES",
    "compile_options",
    "include_directory",
    "kernel_directory",
    "kernel_directory_candidates",
    "kernel_source",
    "multiply_add_backward",
    "multiply_add_forward",
    "sigmoid_backward",
    "sigmoid_forward",
]

KERNEL_NAMES = (
    "sigmoid_forward",
    "sigmoid_backward",
    "multiply_add_forward",
    "multiply_add_backward",
)

# Entry-point suffix of each supported dtype: kernel NAME has extern "C" entry points
# gpuflow_NAME_f32 and gpuflow_NAME_f64.
DTYPE_SUFFIXES = {"float32": "f32", "float64": "f64"}

# Elements per 16-byte vector access in the kernels (float4, double2). The grid is sized so
# each thread gets one vector on the aligned path for small arrays.
_VECTOR_WIDTHS = {"float32": 4, "float64": 2}

BLOCK_SIZE = 256

# Cap on resident blocks per multiprocessor used to size the grid. The grid-stride loop covers
# the rest of the array, so past this cap more blocks would only add scheduling work.
# NOTE: 8 blocks of 256 threads fill the 2048 threads of an sm_80 / sm_90 multiprocessor; the
# value is not tuned by measurement.
BLOCKS_PER_MULTIPROCESSOR = 8

# The unfused CuPy code a caller runs instead when a wrapper rejects its operands.
_FALLBACKS = {
    "sigmoid_forward": (
        "e = cupy.exp(-cupy.abs(x)), r = 1 / (1 + e), y = cupy.where(x >= 0, r, e * r) "
        "and p = e * r * r"
    ),
    "sigmoid_backward": "gx = gy * p",
    "multiply_add_forward": "out = a * b + c",
    "multiply_add_backward": "ga = g * b, gb = g * a and gc = g",
}


# Locating the sources.


def kernel_directory_candidates() -> tuple[Path | None, Path]:
    """Return the places searched for the kernel sources, in lookup order.

    The first is ``gpuflow/kernels`` inside the installed package (a wheel), or None when the
    package is not on a file system (a zip import). The second is the repository's
    ``kernels/`` folder beside the package, which an editable install uses.
    """
    packaged = importlib.resources.files("gpuflow").joinpath("kernels")
    packaged_path = packaged if isinstance(packaged, Path) else None
    repository_path = Path(__file__).resolve().parents[2] / "kernels"
    return packaged_path, repository_path


def kernel_directory() -> Path:
    """Return the folder that contains the ``.cu`` sources and ``include/gpuflow``.

    Raises FileNotFoundError naming every place searched when none has the sources.
    """
    candidates = kernel_directory_candidates()
    for candidate in candidates:
        if candidate is not None and (candidate / "include" / "gpuflow").is_dir():
            return candidate
    searched = ", ".join(
        "gpuflow/kernels in the installed package (not on a file system)"
        if candidate is None
        else str(candidate)
        for candidate in candidates
    )
    raise FileNotFoundError(
        f"gpuflow's CUDA kernel sources were not found; searched {searched}. "
        "Reinstall gpuflow from a wheel or sdist, which ship them as gpuflow/kernels, or "
        "use an editable install of a full repository checkout, which has them in kernels/."
    )


def include_directory() -> Path:
    """Return the folder passed to the compiler with -I (it contains ``gpuflow/*.cuh``)."""
    return kernel_directory() / "include"


def kernel_source(name: str) -> str:
    """Return the CUDA source text of the fused kernel ``name`` (one of KERNEL_NAMES)."""
    if name not in KERNEL_NAMES:
        raise ValueError(
            f"unknown fused kernel {name!r}; expected one of {', '.join(KERNEL_NAMES)}"
        )
    path = kernel_directory() / f"{name}.cu"
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"the source of fused kernel {name!r} is missing: {path} does not exist; "
            "reinstall gpuflow or restore the file from the repository"
        ) from error


def _headers_digest(include: Path) -> str:
    digest = hashlib.sha256()
    for header in sorted(include.rglob("*.cuh")):
        digest.update(header.relative_to(include).as_posix().encode())
        digest.update(b"\0")
        digest.update(header.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def compile_options() -> tuple[str, ...]:
    """Return the NVRTC options for every fused kernel, without the target architecture.

    The -D option carries a digest of the headers. CuPy's on-disk compile cache keys on the
    source text and the options, but not on files reached through -I, so without the digest a
    changed header would reuse a stale binary.
    """
    include = include_directory()
    return (f"-I{include}", f"-DGPUFLOW_KERNEL_HEADERS_SHA256={_headers_digest(include)}")


# Compiling and launching.

_cupy_module = None
_compile_lock = threading.Lock()
_functions: dict[tuple[str, str, int], object] = {}
_multiprocessor_counts: dict[int, int] = {}


def _cupy():
    """Import CuPy on first use, raising BackendUnavailableError without CuPy or a device."""
    global _cupy_module
    if _cupy_module is None:
        from gpuflow.backends.cupy_backend import import_cupy

        _cupy_module = import_cupy()
    return _cupy_module


def _kernel_function(cupy, name: str, dtype_name: str, device_id: int):
    """Return the compiled entry point for (kernel, dtype, device), compiling it once."""
    key = (name, dtype_name, device_id)
    function = _functions.get(key)
    if function is not None:
        return function
    with _compile_lock:
        function = _functions.get(key)
        if function is None:
            entry_point = f"gpuflow_{name}_{DTYPE_SUFFIXES[dtype_name]}"
            started = time.perf_counter()
            module = cupy.RawModule(code=kernel_source(name), options=compile_options())
            function = module.get_function(entry_point)
            # CuPy compiles on get_function, or loads the binary from its on-disk cache.
            logger.debug(
                "compiled CUDA kernel %s for device %d in %.3f s (CuPy's on-disk cache may "
                "have served it without running NVRTC)",
                entry_point,
                device_id,
                time.perf_counter() - started,
            )
            _functions[key] = function
    return function


def _grid_size(cupy, device_id: int, n: int, dtype_name: str) -> int:
    count = _multiprocessor_counts.get(device_id)
    if count is None:
        count = cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]
        _multiprocessor_counts[device_id] = count
    vectors = -(-n // _VECTOR_WIDTHS[dtype_name])
    blocks_needed = -(-vectors // BLOCK_SIZE)
    return max(1, min(blocks_needed, count * BLOCKS_PER_MULTIPROCESSOR))


def _launch(cupy, name: str, operands, outputs) -> None:
    """Launch kernel ``name`` on the current stream over the operands and outputs."""
    first = operands[0]
    dtype_name = first.dtype.name
    device_id = first.device.id
    function = _kernel_function(cupy, name, dtype_name, device_id)
    blocks = _grid_size(cupy, device_id, first.size, dtype_name)
    # RawKernel launches on the current stream; numpy.uint64 matches the kernels' size_t n.
    function((blocks,), (BLOCK_SIZE,), (*operands, *outputs, numpy.uint64(first.size)))


def _check_operands(cupy, name: str, operands: dict) -> None:
    """Raise TypeError or ValueError unless the operands suit fused kernel ``name``."""
    fallback = _FALLBACKS[name]
    for label, array in operands.items():
        if not isinstance(array, cupy.ndarray):
            raise TypeError(
                f"fused kernel {name}: operand {label} is a {type(array).__module__}."
                f"{type(array).__qualname__}, not a cupy.ndarray; pass CuPy arrays or use "
                f"the unfused code {fallback}"
            )

    dtypes = {label: array.dtype.name for label, array in operands.items()}
    if len(set(dtypes.values())) != 1 or next(iter(dtypes.values())) not in DTYPE_SUFFIXES:
        listed = ", ".join(f"{label}: {dtype}" for label, dtype in dtypes.items())
        raise ValueError(
            f"fused kernel {name} takes float32 or float64 operands of one dtype, got "
            f"({listed}); use the unfused CuPy code {fallback} instead"
        )

    shapes = {label: array.shape for label, array in operands.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{label}: {shape}" for label, shape in shapes.items())
        raise ValueError(
            f"fused kernel {name} takes same-shape operands only, got shapes ({listed}); "
            f"broadcast operands need the unfused CuPy code {fallback}"
        )

    for label, array in operands.items():
        if not array.flags.c_contiguous:
            raise ValueError(
                f"fused kernel {name} takes C-contiguous operands only, but {label} "
                f"(shape {array.shape}, strides {array.strides}) is not; pass "
                f"cupy.ascontiguousarray({label}) or use the unfused CuPy code {fallback}"
            )

    current = cupy.cuda.runtime.getDevice()
    for label, array in operands.items():
        if array.device.id != current:
            raise ValueError(
                f"fused kernel {name}: operand {label} is on device {array.device.id} but the "
                f"current device is {current}; copy it over or select its device with "
                f"cupy.cuda.Device({array.device.id})"
            )


def _allocate_outputs(cupy, name: str, like, count: int) -> list:
    """Allocate ``count`` arrays shaped like ``like`` from CuPy's memory pool."""
    try:
        return [cupy.empty(like.shape, dtype=like.dtype) for _ in range(count)]
    except cupy.cuda.memory.OutOfMemoryError as error:
        free_bytes, total_bytes = cupy.cuda.runtime.memGetInfo()
        requested = count * like.nbytes
        raise MemoryError(
            f"fused kernel {name}: out of device memory while allocating {count} output "
            f"arrays of {like.nbytes} bytes ({requested} bytes requested) on device "
            f"{like.device.id}, which has {free_bytes} bytes free of {total_bytes}; free "
            "unused arrays (and cupy.get_default_memory_pool().free_all_blocks()) or process "
            "a smaller batch"
        ) from error


def _run(name: str, operands: dict, output_count: int) -> list:
    cupy = _cupy()
    _check_operands(cupy, name, operands)
    arrays = list(operands.values())
    outputs = _allocate_outputs(cupy, name, arrays[0], output_count)
    if arrays[0].size > 0:
        _launch(cupy, name, arrays, outputs)
    return outputs


def sigmoid_forward(x):
    """Compute ``(y, p)`` with y = sigmoid(x) and p = sigmoid(x) * sigmoid(-x) in one pass.

    ``p`` is the local partial dy/dx, computed without the cancellation of y * (1 - y).
    """
    y, p = _run("sigmoid_forward", {"x": x}, 2)
    return y, p


def sigmoid_backward(gy, p):
    """Compute the input gradient gx = gy * p from the partial saved by sigmoid_forward."""
    (gx,) = _run("sigmoid_backward", {"gy": gy, "p": p}, 1)
    return gx


def multiply_add_forward(a, b, c):
    """Compute a * b + c in one pass (the device may round it once, as a fused multiply-add)."""
    (out,) = _run("multiply_add_forward", {"a": a, "b": b, "c": c}, 1)
    return out


def multiply_add_backward(g, a, b):
    """Compute ``(ga, gb, gc) = (g * b, g * a, g)`` in one pass over g, a and b."""
    ga, gb, gc = _run("multiply_add_backward", {"g": g, "a": a, "b": b}, 3)
    return ga, gb, gc
