"""Anomaly mode names the node that first makes a NaN or an infinity."""

from __future__ import annotations

import numpy as np
import pytest

import gpuflow as gf

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_log_of_zero_names_operation():
    x = np.array([1.0, 0.0, 2.0])
    with gf.detect_anomaly(), pytest.raises(gf.AnomalyError) as raised:
        gf.grad(lambda t: gf.sum(gf.log(t)))(x)
    message = str(raised.value)
    assert message.startswith("detect_anomaly: log produced -inf at index (1,)")
    assert "shapes (3,)" in message
    assert "test_anomaly.py:" in message


def test_sqrt_of_negative_names_operation():
    with gf.detect_anomaly(), pytest.raises(gf.AnomalyError, match="sqrt produced nan"):
        gf.grad(lambda t: gf.sum(gf.sqrt(t - 2.0)))(np.array([3.0, 1.0]))


def test_backward_infinity_names_rule():
    with gf.detect_anomaly(), pytest.raises(gf.AnomalyError) as raised:
        gf.grad(lambda t: gf.sum(gf.sqrt(t)))(np.array([4.0, 0.0]))
    message = str(raised.value)
    assert "the gradient of sqrt with respect to its input 0 (shape (2,)) is inf" in message
    assert "test_anomaly.py:" in message


def test_non_finite_inputs_are_not_blamed():
    # An infinity that comes in is passed on; only a node that makes one is reported.
    with gf.detect_anomaly():
        value = gf.grad(lambda t: gf.sum(t * 2.0))(np.array([np.inf, 1.0]))
    np.testing.assert_array_equal(value, [2.0, 2.0])


def test_anomaly_mode_off_returns_non_finite():
    gradient = gf.grad(lambda t: gf.sum(gf.sqrt(t)))(np.array([4.0, 0.0]))
    assert gradient[0] == 0.25
    assert np.isinf(gradient[1])


def test_anomaly_mode_is_restored():
    with gf.detect_anomaly():
        pass
    assert not gf.tensor.state.anomaly


def test_expression_position_is_reported():
    from gpuflow.anomaly import expression_position

    with gf.detect_anomaly(), expression_position("column 5 of the expression"):
        with pytest.raises(gf.AnomalyError, match="at column 5 of the expression"):
            gf.log(gf.Tensor(np.zeros(1)))
