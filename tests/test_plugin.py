"""Tests of the gpuflow pytest plugin, each running pytest on a small user project."""

from __future__ import annotations

import pytest

from gpuflow.testing import unavailable_reason

# pytester's in-process runs remove the modules that a run imported, but gpuflow keeps
# its backend objects. Importing array_api_strict here keeps one copy of it for all runs.
pytest.importorskip("array_api_strict")

pytest_plugins = ["pytester"]

HAS_DEVICE = unavailable_reason("cupy") is None
needs_no_device = pytest.mark.skipif(HAS_DEVICE, reason="a CUDA device is present here")

USER_OPERATIONS = '''
import gpuflow as gf


def _cube_forward(xp, x):
    return x * x * x


cube = gf.define_op("cube", _cube_forward, lambda g, out, x: (3 * x * x * g,))
wrong_cube = gf.define_op("wrong_cube", _cube_forward, lambda g, out, x: (2 * x * x * g,))
'''

PARITY_TESTS = '''
import numpy as np

import gpuflow as gf
from gpuflow.testing import assert_parity
from user_ops import cube


def test_parity(gpuflow_backend):
    x = np.linspace(-2.0, 2.0, 11)
    assert_parity(lambda t: gf.sum(cube(t) * gf.sigmoid(t)), x,
                  backends=["numpy", gpuflow_backend.name])


def test_backend_object(gpuflow_backend, request):
    assert isinstance(gpuflow_backend, gf.backends.Backend)
    assert request.node.callspec.id == gpuflow_backend.name
'''

GPU_TEST = '''
import pytest


@pytest.mark.gpu
def test_on_device():
    raise AssertionError("a gpu test ran without a device")
'''

WRONG_GRADIENT_TEST = '''
import numpy as np

import gpuflow as gf
from gpuflow.testing import check_grads
from user_ops import wrong_cube


def test_wrong_cube():
    check_grads(lambda x: gf.sum(wrong_cube(x)), np.array([0.5, 1.0, 2.0]))
'''


@pytest.fixture
def project(pytester):
    pytester.makepyfile(user_ops=USER_OPERATIONS)
    pytester.syspathinsert()
    return pytester


def test_fixture_runs_both(project):
    project.makepyfile(test_parity=PARITY_TESTS)
    result = project.runpytest("-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([
        "*test_parity[[]numpy[]] PASSED*",
        "*test_parity[[]array_api_strict[]] PASSED*",
    ])


def test_option_narrows(project):
    project.makepyfile(test_parity=PARITY_TESTS)
    result = project.runpytest("-v", "--gpuflow-backends=array_api_strict")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_parity[[]array_api_strict[]] PASSED*"])
    result.stdout.no_fnmatch_line("*[[]numpy[]]*")


def test_option_repeated_name(project):
    project.makepyfile(test_parity=PARITY_TESTS)
    result = project.runpytest("--gpuflow-backends=numpy, numpy")
    result.assert_outcomes(passed=2)


def test_option_unknown_name(project):
    project.makepyfile(test_parity=PARITY_TESTS)
    result = project.runpytest("--gpuflow-backends=numpy,torch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*--gpuflow-backends: unknown backend 'torch'; "
        "choose from numpy, cupy, array_api_strict*",
    ])


def test_option_empty_name(project):
    result = project.runpytest("--gpuflow-backends=numpy,")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*contains an empty name*"])


@needs_no_device
def test_option_unavailable_cupy(project):
    result = project.runpytest("--gpuflow-backends=cupy")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*--gpuflow-backends: backend cupy is not available here*",
    ])
    assert "pip install 'gpuflow[cuda12]'" in result.stderr.str()
    result.stderr.fnmatch_lines(["*Available here: numpy*"])


@needs_no_device
def test_marker_skips_with_reason(project):
    project.makepyfile(test_device=GPU_TEST)
    result = project.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*needs CuPy and a CUDA device: *"])
    assert "pip install 'gpuflow[cuda12]'" in result.stdout.str()


def test_marker_registered(project):
    project.makepyfile(test_device=GPU_TEST)
    result = project.runpytest("--strict-markers", "--collect-only")
    assert result.ret == pytest.ExitCode.OK
    markers = project.runpytest("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.gpu: needs a CUDA device and CuPy*"])


def test_marker_not_repeated(project):
    project.makeini('[pytest]\nmarkers =\n    gpu: declared by the project\n')
    result = project.runpytest("--markers")
    gpu_lines = [line for line in result.outlines if line.startswith("@pytest.mark.gpu:")]
    assert gpu_lines == ["@pytest.mark.gpu: declared by the project"]


def test_wrong_gradient_fails(project):
    project.makepyfile(test_wrong=WRONG_GRADIENT_TEST)
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*GradientCheckError: check_grads: at order 1, the derivative with respect to x*",
    ])
    result.stdout.fnmatch_lines(["*by central finite differences*"])
