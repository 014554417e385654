"""Checks of the fused CUDA kernels that need no GPU.

Every kernel source must compile with NVRTC (from the cuda-bindings and nvidia-cuda-nvrtc
wheels) without a warning, and the per-element formulas in kernels/include/gpuflow are built
with the host C++ compiler and compared with NumPy. The CuPy wrappers themselves are tested
on a device in test_gpu.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gpuflow.backends import cuda_kernels
from kernel_host import (
    EDGE_VALUES,
    HostBuildError,
    build_formula_library,
    check_multiply_add_backward,
    check_multiply_add_forward,
    check_sigmoid_backward,
    check_sigmoid_forward,
    find_host_compiler,
    nvrtc_compile,
    sample,
)

DTYPES = [np.float32, np.float64]
SUFFIXES = {np.float32: "f32", np.float64: "f64"}

# Real architectures (sm_XX) yield a cubin and PTX, virtual ones (compute_XX) PTX only.
ARCHITECTURES = ["compute_80", "sm_80", "compute_90", "sm_90"]

# -Werror=all-warnings makes NVRTC fail on any warning. A non-empty log fails the test too.
WARNINGS_AS_ERRORS = "-Werror=all-warnings"

# PTX of the 16-byte vector loads the aligned path must produce, per dtype.
VECTOR_LOADS = {
    np.float32: r"ld\.global(\.nc)?\.v4\.f32",
    np.float64: r"ld\.global(\.nc)?\.v2\.f64",
}

SIZE = 4096


@pytest.fixture(scope="module")
def host_compiler():
    compiler = find_host_compiler()
    if compiler is None:
        pytest.skip("no host C++ compiler (g++, c++ or clang++, or $CXX) to build the headers")
    return compiler


@pytest.fixture(scope="module")
def formulas(host_compiler, tmp_path_factory):
    build_dir = tmp_path_factory.mktemp("formulas")
    return build_formula_library(cuda_kernels.include_directory(), build_dir)


def copy_kernels(tmp_path):
    """Copy kernels/ into tmp_path and return the copy's include folder."""
    copy = tmp_path / "kernels"
    shutil.copytree(cuda_kernels.kernel_directory(), copy)
    return copy / "include"


def replace_in_header(include, name: str, original: str, replacement: str) -> None:
    header = include / "gpuflow" / name
    text = header.read_text(encoding="utf-8")
    assert original in text, f"{header} no longer contains {original!r}; update this test"
    header.write_text(text.replace(original, replacement), encoding="utf-8")


# Locating the sources.


def test_kernel_sources_found():
    directory = cuda_kernels.kernel_directory()
    for name in cuda_kernels.KERNEL_NAMES:
        source = cuda_kernels.kernel_source(name)
        assert (directory / f"{name}.cu").is_file()
        assert f"gpuflow_{name}_f32" in source
        assert f"gpuflow_{name}_f64" in source


@pytest.mark.parametrize("name", cuda_kernels.KERNEL_NAMES)
def test_kernel_header_comment(name):
    source = cuda_kernels.kernel_source(name)
    header = source.split("#include", 1)[0]
    for field in ("Inputs:", "Outputs:", "Dtypes:", "Launch:", "NumPy reference"):
        assert field in header, f"{name}.cu header comment lacks {field!r}"


def test_headers_have_pragma_once():
    headers = sorted((cuda_kernels.include_directory() / "gpuflow").glob("*.cuh"))
    assert headers
    for header in headers:
        lines = header.read_text(encoding="utf-8").splitlines()
        assert lines[0] == "#pragma once", f"{header} does not start with #pragma once"


def test_kernel_source_unknown_name():
    with pytest.raises(ValueError, match="unknown fused kernel 'tanh_forward'"):
        cuda_kernels.kernel_source("tanh_forward")


def test_kernel_directory_prefers_package(tmp_path, monkeypatch):
    packaged = tmp_path / "site-packages" / "gpuflow" / "kernels"
    repository = tmp_path / "repository" / "kernels"
    for folder in (packaged, repository):
        (folder / "include" / "gpuflow").mkdir(parents=True)
    monkeypatch.setattr(
        cuda_kernels, "kernel_directory_candidates", lambda: (packaged, repository)
    )
    assert cuda_kernels.kernel_directory() == packaged


def test_kernel_directory_falls_back(tmp_path, monkeypatch):
    packaged = tmp_path / "site-packages" / "gpuflow" / "kernels"
    repository = tmp_path / "repository" / "kernels"
    (repository / "include" / "gpuflow").mkdir(parents=True)
    monkeypatch.setattr(
        cuda_kernels, "kernel_directory_candidates", lambda: (packaged, repository)
    )
    assert cuda_kernels.kernel_directory() == repository


def test_kernel_directory_missing(tmp_path, monkeypatch):
    packaged = tmp_path / "site-packages" / "gpuflow" / "kernels"
    repository = tmp_path / "repository" / "kernels"
    monkeypatch.setattr(
        cuda_kernels, "kernel_directory_candidates", lambda: (packaged, repository)
    )
    with pytest.raises(FileNotFoundError) as raised:
        cuda_kernels.kernel_directory()
    assert str(packaged) in str(raised.value)
    assert str(repository) in str(raised.value)


def test_compile_options_track_headers(tmp_path, monkeypatch):
    include = copy_kernels(tmp_path)
    monkeypatch.setattr(
        cuda_kernels, "kernel_directory_candidates", lambda: (None, include.parent)
    )
    before = cuda_kernels.compile_options()
    assert f"-I{include}" in before
    replace_in_header(include, "sigmoid.cuh", "e * r * r", "e * r * r * T(1)")
    after = cuda_kernels.compile_options()
    assert before != after, "a changed header must change the options CuPy's cache keys on"


def test_module_imports_without_cupy():
    # sys.modules["cupy"] = None makes any "import cupy" raise ImportError.
    script = (
        "import sys\n"
        "sys.modules['cupy'] = None\n"
        "from gpuflow.backends import cuda_kernels\n"
        "from gpuflow.backends.base import BackendUnavailableError\n"
        "try:\n"
        "    cuda_kernels.sigmoid_forward([1.0])\n"
        "except BackendUnavailableError as error:\n"
        "    print('unavailable:', error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "unavailable: the cupy backend needs CuPy" in result.stdout


# NVRTC compiles.


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("name", cuda_kernels.KERNEL_NAMES)
def test_kernel_compiles_with_nvrtc(name, architecture):
    options = [
        *cuda_kernels.compile_options(),
        f"--gpu-architecture={architecture}",
        WARNINGS_AS_ERRORS,
    ]
    result = nvrtc_compile(cuda_kernels.kernel_source(name), f"{name}.cu", options)
    assert result.succeeded, f"NVRTC {result.status} for {name}.cu ({architecture}):\n{result.log}"
    assert result.log == "", f"NVRTC log for {name}.cu ({architecture}):\n{result.log}"
    for dtype in DTYPES:
        entry_point = f"gpuflow_{name}_{SUFFIXES[dtype]}"
        assert re.search(rf"\.entry {entry_point}\b", result.ptx), f"no PTX entry {entry_point}"
        assert re.search(VECTOR_LOADS[dtype], result.ptx), f"no vector load for {entry_point}"
    if architecture.startswith("sm_"):
        assert result.cubin_size > 0


@pytest.mark.parametrize("name", cuda_kernels.KERNEL_NAMES)
def test_kernel_compiles_as_cxx11(name):
    # CuPy may pass its own --std option, so the sources stay within C++11.
    options = [*cuda_kernels.compile_options(), "--gpu-architecture=sm_80", "--std=c++11"]
    result = nvrtc_compile(cuda_kernels.kernel_source(name), f"{name}.cu", options)
    assert result.succeeded, f"NVRTC {result.status} for {name}.cu (C++11):\n{result.log}"
    assert result.log == "", f"NVRTC log for {name}.cu (C++11):\n{result.log}"


def test_nvrtc_check_reports_warning():
    source = 'extern "C" __global__ void k(float* x) { int unused = 0; x[0] = 1.0f; }\n'
    plain = nvrtc_compile(source, "warning.cu", ["--gpu-architecture=sm_80"])
    assert plain.succeeded
    assert "declared but never referenced" in plain.log
    strict = nvrtc_compile(source, "warning.cu", ["--gpu-architecture=sm_80", WARNINGS_AS_ERRORS])
    assert not strict.succeeded


# Host build of the formulas against NumPy.


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_forward_formula(formulas, dtype):
    rng = np.random.default_rng(1)
    x = sample(rng, SIZE, dtype, -60.0, 60.0)
    y, p = formulas.sigmoid_forward(x)
    problems = check_sigmoid_forward(x, y, p)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_forward_edge_values(formulas, dtype):
    x = np.array(EDGE_VALUES, dtype=dtype)
    with np.errstate(all="raise"):
        y, p = formulas.sigmoid_forward(x)
    finite_input = ~np.isnan(x)
    assert not np.isnan(y[finite_input]).any(), f"NaN value for x = {x[np.isnan(y)]}"
    assert not np.isnan(p[finite_input]).any(), f"NaN partial for x = {x[np.isnan(p)]}"
    assert np.isnan(y[~finite_input]).all()
    assert np.isnan(p[~finite_input]).all()
    tail = np.array([37.43, -37.43], dtype=dtype)
    _, tail_partial = formulas.sigmoid_forward(tail)
    expected = np.exp(-37.43)  # 5.55e-17, representable in float32
    np.testing.assert_allclose(tail_partial, [expected, expected], rtol=1e-5)
    problems = check_sigmoid_forward(x, y, p)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_backward_formula(formulas, dtype):
    rng = np.random.default_rng(2)
    gy = sample(rng, SIZE, dtype, -5.0, 5.0)
    _, p = formulas.sigmoid_forward(sample(rng, SIZE, dtype, -40.0, 40.0, shift=3))
    gx = formulas.sigmoid_backward(gy, p)
    problems = check_sigmoid_backward(gy, p, gx)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multiply_add_forward_formula(formulas, dtype):
    rng = np.random.default_rng(3)
    a = sample(rng, SIZE, dtype, -10.0, 10.0)
    b = sample(rng, SIZE, dtype, -10.0, 10.0, shift=5)
    c = sample(rng, SIZE, dtype, -100.0, 100.0, shift=11)
    with np.errstate(all="ignore"):
        out = formulas.multiply_add_forward(a, b, c)
    problems = check_multiply_add_forward(a, b, c, out, fused_rounding=False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multiply_add_backward_formula(formulas, dtype):
    rng = np.random.default_rng(4)
    g = sample(rng, SIZE, dtype, -3.0, 3.0)
    a = sample(rng, SIZE, dtype, -10.0, 10.0, shift=5)
    b = sample(rng, SIZE, dtype, -10.0, 10.0, shift=11)
    with np.errstate(all="ignore"):
        ga, gb, gc = formulas.multiply_add_backward(g, a, b)
    problems = check_multiply_add_backward(g, a, b, ga, gb, gc)
    assert not problems, "\n".join(problems)


# The checks above must be able to fail: build deliberately wrong headers.


@pytest.mark.parametrize("dtype", DTYPES)
def test_cancelling_partial_detected(tmp_path, host_compiler, dtype):
    include = copy_kernels(tmp_path)
    replace_in_header(
        include, "sigmoid.cuh", "partial = e * r * r;", "partial = value * (T(1) - value);"
    )
    wrong = build_formula_library(include, tmp_path / "build")
    x = np.array([0.5, 37.43, -37.43], dtype=dtype)
    y, p = wrong.sigmoid_forward(x)
    problems = check_sigmoid_forward(x, y, p)
    report = "\n".join(problems)
    assert any(line.startswith("p[1]: got 0.0, expected 5.55") for line in problems), report
    assert not any(line.startswith("y[") for line in problems), report


@pytest.mark.parametrize("dtype", DTYPES)
def test_swapped_gradient_detected(tmp_path, host_compiler, dtype):
    include = copy_kernels(tmp_path)
    replace_in_header(
        include,
        "multiply_add.cuh",
        "ga = g * b;\n    gb = g * a;",
        "ga = g * a;\n    gb = g * b;",
    )
    wrong = build_formula_library(include, tmp_path / "build")
    g = np.array([1.0, 2.0], dtype=dtype)
    a = np.array([3.0, 5.0], dtype=dtype)
    b = np.array([7.0, 11.0], dtype=dtype)
    ga, gb, gc = wrong.multiply_add_backward(g, a, b)
    problems = check_multiply_add_backward(g, a, b, ga, gb, gc)
    report = "\n".join(problems)
    assert "ga[0]: got 3.0, expected 7.0 (inputs g=1.0, a=3.0, b=7.0)" in problems, report
    assert "gb[1]: got 22.0, expected 10.0 (inputs g=2.0, a=5.0, b=11.0)" in problems, report
    assert not any(line.startswith("gc") for line in problems), report


def test_broken_header_reports_compiler_output(tmp_path, host_compiler):
    include = copy_kernels(tmp_path)
    replace_in_header(include, "sigmoid.cuh", "const T r =", "const T r == ")
    with pytest.raises(HostBuildError, match="sigmoid.cuh"):
        build_formula_library(include, tmp_path / "build")
