"""The pytest plugin of gpuflow, loaded through the ``pytest11`` entry point ``gpuflow``.

- The ``gpuflow_backend`` fixture runs a test once per backend available here
  (NumPy always, CuPy with a CUDA device, array_api_strict when installed),
  with the backend names as test ids, and gives the gpuflow Backend object.
  The CuPy case carries the ``gpu`` marker, so ``-m "not gpu"`` deselects it.
- The ``gpu`` marker skips a test, with the reason and the install hint, when
  CuPy or a CUDA device is missing.
- ``--gpuflow-backends=numpy,array_api_strict`` chooses the fixture's backends.
  An unknown or unavailable name is a usage error.
"""

from __future__ import annotations

import pytest

from gpuflow import backends
from gpuflow.testing.parity import KNOWN_BACKENDS, available_backends, unavailable_reason

_GPU_MARKER = "gpu: needs a CUDA device and CuPy (skipped otherwise)"
_OPTION = "--gpuflow-backends"
_SELECTED = pytest.StashKey[tuple]()


def pytest_addoption(parser):
    group = parser.getgroup("gpuflow")
    group.addoption(
        _OPTION,
        dest="gpuflow_backends",
        metavar="NAME,...",
        default=None,
        help="backends that the gpuflow_backend fixture runs each test on, separated by "
        f"commas, from {', '.join(KNOWN_BACKENDS)} (default: every one available here)",
    )


def selected_backends(text: str | None) -> tuple[str, ...]:
    """Return the backend names of ``--gpuflow-backends``, or every available one for None.

    Raises pytest.UsageError for an empty list, an unknown name or a backend
    that cannot run here.
    """
    if text is None:
        return available_backends()
    names = []
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            raise pytest.UsageError(
                f"{_OPTION}={text!r} contains an empty name; list backend names separated "
                f"by commas, choosing from {', '.join(KNOWN_BACKENDS)}"
            )
        if name not in KNOWN_BACKENDS:
            raise pytest.UsageError(
                f"{_OPTION}: unknown backend {name!r}; choose from {', '.join(KNOWN_BACKENDS)}"
            )
        reason = unavailable_reason(name)
        if reason is not None:
            raise pytest.UsageError(
                f"{_OPTION}: backend {name} is not available here: {reason}. "
                f"Available here: {', '.join(available_backends())}"
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def pytest_configure(config):
    declared = config.getini("markers")
    if not any(line.split(":", 1)[0].strip() == "gpu" for line in declared):
        config.addinivalue_line("markers", _GPU_MARKER)
    # An explicit list is checked now, so that a wrong name stops the run before collection.
    # The default list is found when a test first uses the fixture, because probing for a
    # CUDA device takes time that runs without the fixture need not spend.
    text = config.getoption("gpuflow_backends")
    if text is not None:
        config.stash[_SELECTED] = selected_backends(text)


def pytest_generate_tests(metafunc):
    if "gpuflow_backend" not in metafunc.fixturenames:
        return
    config = metafunc.config
    if _SELECTED not in config.stash:
        config.stash[_SELECTED] = available_backends()
    parameters = []
    for name in config.stash[_SELECTED]:
        # NOTE: the cupy case has only run here without a device, where it is never added.
        marks = [pytest.mark.gpu] if name == "cupy" else []
        parameters.append(pytest.param(name, id=name, marks=marks))
    metafunc.parametrize("gpuflow_backend", parameters, indirect=True)


@pytest.fixture
def gpuflow_backend(request):
    """Return the gpuflow Backend of this test case, one case per backend of --gpuflow-backends."""
    return backends.get_backend(request.param)


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    reason = unavailable_reason("cupy")
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs CuPy and a CUDA device: {reason}")
    for item in marked:
        item.add_marker(skip)
