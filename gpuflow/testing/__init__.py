"""Test helpers for code built on gpuflow, written to run on machines without a GPU.

- ``assert_parity(f, *args)`` runs ``value_and_grad`` of ``f`` on every
  available backend and compares the results with the first backend's.
- ``check_grads(f, *args, order=1)`` compares reverse mode with central finite
  differences in float64 along random directions, and at order 2 also the
  Hessian-vector products.
- ``gpuflow.testing.pytest_plugin``, which pytest loads through its
  ``pytest11`` entry point, provides the ``gpuflow_backend`` fixture, the ``gpu``
  marker and the ``--gpuflow-backends`` option.

See docs/testing.md for the tolerances and examples.
"""

from gpuflow.api import GradientCheckError
from gpuflow.testing.comparison import TOLERANCES, Comparison, default_tolerance
from gpuflow.testing.gradients import check_grads, compare_gradients
from gpuflow.testing.parity import (
    KNOWN_BACKENDS,
    ParityError,
    assert_parity,
    available_backends,
    compare_backends,
    unavailable_reason,
)

__all__ = [
    "KNOWN_BACKENDS",
    "TOLERANCES",
    "Comparison",
    "GradientCheckError",
    "ParityError",
    "assert_parity",
    "available_backends",
    "check_grads",
    "compare_backends",
    "compare_gradients",
    "default_tolerance",
    "unavailable_reason",
]
