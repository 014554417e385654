"""Test helpers for the fused CUDA kernels: NumPy references, comparisons and builds.

The kernels' per-element formulas live in ``kernels/include/gpuflow/*.cuh`` as templates that
a host C++ compiler also accepts. ``build_formula_library`` compiles them into a shared library
that ``FormulaLibrary`` calls through ctypes, so the formulas are checked against NumPy on
machines without a GPU. ``nvrtc_compile`` compiles a kernel source with NVRTC through the
``cuda-bindings`` package, which needs no device. The ``check_*`` functions compare the
outputs of either the host library or the CuPy wrappers with NumPy references.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# Inputs that stress the formulas: signed zeros, the float32 cancellation zone of
# y * (1 - y) (x > ~17), 37.43 where the float32 partial is 5.55e-17, subnormal results
# (+-100 in float32), underflow to zero (+-1000), huge magnitudes, infinities and NaN.
EDGE_VALUES = (
    0.0,
    -0.0,
    1.0,
    -1.0,
    20.0,
    -20.0,
    37.43,
    -37.43,
    100.0,
    -100.0,
    1000.0,
    -1000.0,
    1e30,
    -1e30,
    np.inf,
    -np.inf,
    np.nan,
)

# At most this many mismatching elements are described in a report.
MAX_REPORTED = 10


# Inputs and references.


def sample(rng, size: int, dtype, low: float, high: float, shift: int = 0) -> np.ndarray:
    """Return ``size`` uniform values in [low, high) with EDGE_VALUES (rolled by shift) first."""
    values = rng.uniform(low, high, size).astype(dtype)
    edges = np.roll(np.array(EDGE_VALUES, dtype=dtype), shift)
    count = min(size, edges.size)
    values[:count] = edges[:count]
    return values


def reference_sigmoid(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return sigmoid(x) and sigmoid(x) * sigmoid(-x) in np.longdouble.

    The partial uses the division form e / (1 + e)**2 with e = exp(-|x|), an independent
    formula from the kernels' e * r * r. np.longdouble is 80-bit extended on x86-64 Linux and
    the same as float64 on some platforms (Windows, macOS on arm64).
    """
    wide = np.asarray(x).astype(np.longdouble)
    with np.errstate(over="ignore", invalid="ignore"):
        value = 1 / (1 + np.exp(-wide))
        e = np.exp(-np.abs(wide))
        partial = e / (1 + e) ** 2
    return value, partial


def find_mismatches(
    label: str,
    got,
    want,
    *,
    rtol: float,
    atol: float,
    inputs: dict[str, np.ndarray],
    scale=None,
) -> list[str]:
    """Describe the elements where ``got`` differs from the reference ``want``.

    A finite element matches when |got - want| <= atol + rtol * scale, where scale defaults to
    |want|. NaN must meet NaN and an infinity must meet the same infinity. Returns an empty
    list when everything matches, else one line per mismatch (at most MAX_REPORTED) that
    shows the index, both values and the inputs there, and a final count.
    """
    got = np.asarray(got)
    want = np.asarray(want)
    if got.shape != want.shape:
        return [f"{label}: shape {got.shape}, expected {want.shape}"]
    wide_got = got.astype(np.longdouble)
    wide_want = want.astype(np.longdouble)
    if scale is None:
        scale = np.abs(wide_want)
    nan_got = np.isnan(wide_got)
    nan_want = np.isnan(wide_want)
    infinite = np.isinf(wide_got) | np.isinf(wide_want)
    finite = ~(nan_got | nan_want | infinite)
    bad = nan_got != nan_want
    bad |= infinite & ~nan_want & (wide_got != wide_want)
    with np.errstate(invalid="ignore"):
        error = np.abs(wide_got - wide_want)
        bad |= finite & ~(error <= atol + rtol * np.asarray(scale, dtype=np.longdouble))

    indices = np.flatnonzero(bad)
    lines = []
    for index in indices[:MAX_REPORTED]:
        input_values = ", ".join(f"{name}={values.flat[index]}" for name, values in inputs.items())
        lines.append(
            f"{label}[{index}]: got {got.flat[index]}, expected {want.flat[index]} "
            f"(inputs {input_values})"
        )
    if indices.size:
        lines.append(
            f"{label}: {indices.size} of {got.size} elements differ "
            f"(rtol {rtol:.3g}, atol {atol:.3g})"
        )
    return lines


def _dtype_problems(dtype, outputs: dict) -> list[str]:
    return [
        f"{name}: dtype {np.asarray(value).dtype}, expected {np.dtype(dtype)}"
        for name, value in outputs.items()
        if np.asarray(value).dtype != dtype
    ]


def sigmoid_tolerances(dtype) -> tuple[float, float]:
    """Return (rtol, atol) for the sigmoid value and partial in ``dtype``.

    rtol is 8 ulp: exp (up to 2 ulp in CUDA's expf, 1 ulp in exp), the reciprocal and two
    products each round once. atol is 8 of the smallest subnormals, for results in the
    subnormal range (|x| from about 87 to 103 in float32), where precision thins out.
    """
    info = np.finfo(dtype)
    return 8 * float(info.eps), 8 * float(info.smallest_subnormal)


def check_sigmoid_forward(x, y, p) -> list[str]:
    """Compare y and p from a fused sigmoid forward pass with NumPy and list mismatches."""
    x = np.asarray(x)
    problems = _dtype_problems(x.dtype, {"y": y, "p": p})
    rtol, atol = sigmoid_tolerances(x.dtype)
    value, partial = reference_sigmoid(x)
    inputs = {"x": x}
    problems += find_mismatches("y", y, value, rtol=rtol, atol=atol, inputs=inputs)
    problems += find_mismatches("p", p, partial, rtol=rtol, atol=atol, inputs=inputs)
    return problems


def check_sigmoid_backward(gy, p, gx) -> list[str]:
    """Compare gx with NumPy's gy * p, which a single rounded product must match exactly."""
    gy = np.asarray(gy)
    p = np.asarray(p)
    problems = _dtype_problems(gy.dtype, {"gx": gx})
    with np.errstate(all="ignore"):
        want = gy * p
    inputs = {"gy": gy, "p": p}
    problems += find_mismatches("gx", gx, want, rtol=0.0, atol=0.0, inputs=inputs)
    return problems


def check_multiply_add_forward(a, b, c, out, *, fused_rounding: bool) -> list[str]:
    """Compare out with NumPy's a * b + c.

    With ``fused_rounding`` False (the host build, compiled with -ffp-contract=off) the match
    must be exact. With it True (device code, where a * b + c becomes one fused
    multiply-add) each element may differ by up to 2 * eps * (|a * b| + |c|): the fused
    result is within eps / 2 of that scale from the exact value, and NumPy's is within
    1.5 * eps.
    """
    a, b, c = np.asarray(a), np.asarray(b), np.asarray(c)
    problems = _dtype_problems(a.dtype, {"out": out})
    with np.errstate(all="ignore"):
        want = a * b + c
        scale = np.abs(a.astype(np.longdouble) * b) + np.abs(c.astype(np.longdouble))
    inputs = {"a": a, "b": b, "c": c}
    if fused_rounding:
        info = np.finfo(a.dtype)
        rtol, atol = 2 * float(info.eps), float(info.smallest_subnormal)
    else:
        rtol, atol = 0.0, 0.0
    problems += find_mismatches("out", out, want, rtol=rtol, atol=atol, inputs=inputs, scale=scale)
    return problems


def check_multiply_add_backward(g, a, b, ga, gb, gc) -> list[str]:
    """Compare ga, gb and gc with NumPy's g * b, g * a and g, which must match exactly."""
    g, a, b = np.asarray(g), np.asarray(a), np.asarray(b)
    problems = _dtype_problems(g.dtype, {"ga": ga, "gb": gb, "gc": gc})
    with np.errstate(all="ignore"):
        wants = {"ga": (ga, g * b), "gb": (gb, g * a), "gc": (gc, g.copy())}
    inputs = {"g": g, "a": a, "b": b}
    for label, (got, want) in wants.items():
        problems += find_mismatches(label, got, want, rtol=0.0, atol=0.0, inputs=inputs)
    return problems


# Host build of the formula headers.

# Exports one loop per formula and dtype. The headers' inline templates are the code under
# test. The loops only apply them element by element, as the kernels' scalar path does.
HOST_SOURCE = r"""
#include <stddef.h>

#include "gpuflow/multiply_add.cuh"
#include "gpuflow/sigmoid.cuh"

#define GPUFLOW_EXPORT extern "C" __attribute__((visibility("default")))

template <typename T>
static void sigmoid_forward_loop(const T* x, T* y, T* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        gpuflow::sigmoid_with_partial(x[i], y[i], p[i]);
    }
}

template <typename T>
static void sigmoid_backward_loop(const T* gy, const T* p, T* gx, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        gx[i] = gpuflow::sigmoid_backward(gy[i], p[i]);
    }
}

template <typename T>
static void multiply_add_forward_loop(const T* a, const T* b, const T* c, T* out, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        out[i] = gpuflow::multiply_add(a[i], b[i], c[i]);
    }
}

template <typename T>
static void multiply_add_backward_loop(const T* g, const T* a, const T* b, T* ga, T* gb,
                                       T* gc, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        gpuflow::multiply_add_backward(g[i], a[i], b[i], ga[i], gb[i], gc[i]);
    }
}

GPUFLOW_EXPORT void host_sigmoid_forward_f32(const float* x, float* y, float* p, size_t n) {
    sigmoid_forward_loop(x, y, p, n);
}

GPUFLOW_EXPORT void host_sigmoid_forward_f64(const double* x, double* y, double* p,
                                             size_t n) {
    sigmoid_forward_loop(x, y, p, n);
}

GPUFLOW_EXPORT void host_sigmoid_backward_f32(const float* gy, const float* p, float* gx,
                                              size_t n) {
    sigmoid_backward_loop(gy, p, gx, n);
}

GPUFLOW_EXPORT void host_sigmoid_backward_f64(const double* gy, const double* p, double* gx,
                                              size_t n) {
    sigmoid_backward_loop(gy, p, gx, n);
}

GPUFLOW_EXPORT void host_multiply_add_forward_f32(const float* a, const float* b,
                                                  const float* c, float* out, size_t n) {
    multiply_add_forward_loop(a, b, c, out, n);
}

GPUFLOW_EXPORT void host_multiply_add_forward_f64(const double* a, const double* b,
                                                  const double* c, double* out, size_t n) {
    multiply_add_forward_loop(a, b, c, out, n);
}

GPUFLOW_EXPORT void host_multiply_add_backward_f32(const float* g, const float* a,
                                                   const float* b, float* ga, float* gb,
                                                   float* gc, size_t n) {
    multiply_add_backward_loop(g, a, b, ga, gb, gc, n);
}

GPUFLOW_EXPORT void host_multiply_add_backward_f64(const double* g, const double* a,
                                                   const double* b, double* ga, double* gb,
                                                   double* gc, size_t n) {
    multiply_add_backward_loop(g, a, b, ga, gb, gc, n);
}
"""

# -ffp-contract=off keeps a * b + c as two roundings, as NumPy computes it, on targets where
# GCC would otherwise emit a fused multiply-add (aarch64, x86-64 with -mfma).
# -fvisibility=hidden keeps the headers' inline functions private to each library, so a
# second library built from changed headers cannot bind to the first one's copies.
HOST_FLAGS = (
    "-std=c++11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-ffp-contract=off",
    "-fvisibility=hidden",
    "-fPIC",
    "-shared",
)

_SUFFIXES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


class HostBuildError(RuntimeError):
    """Raised when the host C++ compiler rejects the formula headers."""


def find_host_compiler() -> str | None:
    """Return the host C++ compiler: $CXX, else g++, c++ or clang++ on PATH, else None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def build_formula_library(include_dir: Path, build_dir: Path) -> FormulaLibrary:
    """Compile the headers under ``include_dir`` into a shared library in ``build_dir``."""
    compiler = find_host_compiler()
    if compiler is None:
        raise HostBuildError("no host C++ compiler found (set CXX or install g++)")
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / "gpuflow_formulas.cpp"
    source.write_text(HOST_SOURCE, encoding="utf-8")
    suffix = ".dll" if sys.platform == "win32" else ".so"
    library = build_dir / f"gpuflow_formulas{suffix}"
    command = [compiler, *HOST_FLAGS, f"-I{include_dir}", "-o", str(library), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0 or result.stderr.strip():
        raise HostBuildError(
            f"building the formula headers failed (exit code {result.returncode}) with "
            f"{' '.join(command)}:\n{result.stderr}"
        )
    return FormulaLibrary(ctypes.CDLL(str(library)))


def _pointer(array: np.ndarray):
    return array.ctypes.data_as(ctypes.c_void_p)


class FormulaLibrary:
    """The host build of the formula headers, called with NumPy arrays.

    Its methods take and return the same arguments as the CuPy wrappers in
    gpuflow.backends.cuda_kernels, so the ``check_*`` functions apply to both.
    """

    def __init__(self, library: ctypes.CDLL):
        self._library = library

    def _call(self, name: str, inputs: list[np.ndarray], output_count: int) -> list:
        dtype = inputs[0].dtype
        function = getattr(self._library, f"host_{name}_{_SUFFIXES[dtype]}")
        function.restype = None
        function.argtypes = [ctypes.c_void_p] * (len(inputs) + output_count) + [ctypes.c_size_t]
        contiguous = [np.ascontiguousarray(array) for array in inputs]
        outputs = [np.empty_like(contiguous[0]) for _ in range(output_count)]
        pointers = [_pointer(array) for array in contiguous + outputs]
        function(*pointers, contiguous[0].size)
        return outputs

    def sigmoid_forward(self, x):
        y, p = self._call("sigmoid_forward", [x], 2)
        return y, p

    def sigmoid_backward(self, gy, p):
        (gx,) = self._call("sigmoid_backward", [gy, p], 1)
        return gx

    def multiply_add_forward(self, a, b, c):
        (out,) = self._call("multiply_add_forward", [a, b, c], 1)
        return out

    def multiply_add_backward(self, g, a, b):
        ga, gb, gc = self._call("multiply_add_backward", [g, a, b], 3)
        return ga, gb, gc


# NVRTC through cuda-bindings.

# (sys.platform, platform.machine()) pairs with cuda-bindings and nvidia-cuda-nvrtc wheels,
# the same set as the environment markers of the test extra in pyproject.toml.
NVRTC_WHEEL_PLATFORMS = {("linux", "x86_64"), ("linux", "aarch64"), ("win32", "AMD64")}

NVRTC_INSTALL_HINT = (
    "install the test extra (pip install -e '.[test]'), which brings cuda-bindings and the "
    "NVRTC runtime wheel nvidia-cuda-nvrtc"
)


def import_nvrtc():
    """Import cuda.bindings.nvrtc and check that libnvrtc loads, failing the test if not.

    cuda-bindings finds libnvrtc in the nvidia-cuda-nvrtc wheel (site-packages/nvidia/cu13/lib)
    through cuda-pathfinder, so no library path needs setting. On platforms without those
    wheels, where the test extra leaves them out, the test is skipped.
    """
    target = (sys.platform, platform.machine())
    if target not in NVRTC_WHEEL_PLATFORMS:
        pytest.skip(f"no NVRTC wheels for {target[0]} on {target[1]}")
    try:
        from cuda.bindings import nvrtc
    except ImportError as error:
        pytest.fail(f"cuda.bindings.nvrtc failed to import ({error}); {NVRTC_INSTALL_HINT}")
    try:
        result, major, minor = nvrtc.nvrtcVersion()
    except Exception as error:  # cuda-pathfinder raises its own error types for a missing .so
        pytest.fail(
            f"libnvrtc failed to load ({type(error).__name__}: {error}); {NVRTC_INSTALL_HINT}"
        )
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        pytest.fail(f"nvrtcVersion failed with {result}; {NVRTC_INSTALL_HINT}")
    return nvrtc


@dataclass
class NvrtcResult:
    """The outcome of one NVRTC compile."""

    succeeded: bool
    status: str
    log: str
    ptx: str
    cubin_size: int


def _checked(nvrtc, returned, call: str):
    status, *values = returned
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{call} failed with {status}")
    return values[0] if len(values) == 1 else values


def nvrtc_compile(source: str, filename: str, options) -> NvrtcResult:
    """Compile CUDA ``source`` with NVRTC and return its status, log, PTX and cubin size.

    The cubin size is 0 for a virtual architecture (compute_XX), which yields PTX only.
    """
    nvrtc = import_nvrtc()
    program = _checked(
        nvrtc,
        nvrtc.nvrtcCreateProgram(source.encode(), filename.encode(), 0, [], []),
        "nvrtcCreateProgram",
    )
    try:
        encoded = [option.encode() for option in options]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        log_size = _checked(nvrtc, nvrtc.nvrtcGetProgramLogSize(program), "GetProgramLogSize")
        log = b" " * log_size
        _checked(nvrtc, nvrtc.nvrtcGetProgramLog(program, log), "nvrtcGetProgramLog")
        succeeded = status == nvrtc.nvrtcResult.NVRTC_SUCCESS
        ptx = ""
        cubin_size = 0
        if succeeded:
            ptx_size = _checked(nvrtc, nvrtc.nvrtcGetPTXSize(program), "nvrtcGetPTXSize")
            ptx_bytes = b" " * ptx_size
            _checked(nvrtc, nvrtc.nvrtcGetPTX(program, ptx_bytes), "nvrtcGetPTX")
            ptx = ptx_bytes.rstrip(b"\0").decode()
            cubin_size = _checked(nvrtc, nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
        return NvrtcResult(
            succeeded=succeeded,
            status=str(status),
            log=log.rstrip(b"\0").decode(errors="replace").strip(),
            ptx=ptx,
            cubin_size=cubin_size,
        )
    finally:
        nvrtc.nvrtcDestroyProgram(program)


# Devices.


def require_cupy_device():
    """Return CuPy, or skip the test when CuPy or a CUDA device is missing."""
    from gpuflow.backends.base import BackendUnavailableError
    from gpuflow.backends.cupy_backend import import_cupy

    try:
        return import_cupy()
    except BackendUnavailableError as error:
        pytest.skip(f"needs CuPy and a CUDA device: {error}")
