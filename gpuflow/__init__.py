"""gpuflow: dataflow-graph automatic differentiation for batches of arrays on NumPy and CuPy."""

from gpuflow import backends
from gpuflow.anomaly import AnomalyError, detect_anomaly
from gpuflow.api import GradientCheckError, check_grad, grad, trace, value_and_grad
from gpuflow.backends import get_backend
from gpuflow.compile import compile  # noqa: A004
from gpuflow.engine import GraphFreedError
from gpuflow.graph import Graph
from gpuflow.ops import *  # noqa: F403
from gpuflow.ops import __all__ as _ops_all
from gpuflow.tensor import Tensor, enable_grad, no_grad

__version__ = "0.1.0"

__all__ = [
    "AnomalyError",
    "Graph",
    "GradientCheckError",
    "GraphFreedError",
    "Tensor",
    "backends",
    "check_grad",
    "compile",
    "detect_anomaly",
    "enable_grad",
    "get_backend",
    "grad",
    "no_grad",
    "trace",
    "value_and_grad",
    *_ops_all,
]
