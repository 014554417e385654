#pragma once
// Per-element sigmoid formulas, shared by sigmoid_forward.cu, sigmoid_backward.cu and the host
// build in tests/kernel_host.py.

#include "gpuflow/common.cuh"

namespace gpuflow {

// Computes value = sigmoid(x) = 1 / (1 + exp(-x)) and partial = d value / dx
// = sigmoid(x) * sigmoid(-x).
//
// With e = exp(-|x|) in [0, 1] and r = 1 / (1 + e) in [0.5, 1], nothing overflows for any x,
// including |x| = 1e30 and +-inf (e is then 0, so value is 1 or 0 and partial is 0); a NaN
// input gives NaN outputs. The partial is e * r * r rather than value * (1 - value): for
// x > ~17 in float32 (> ~37 in float64) value rounds to 1 and 1 - value cancels to 0, while
// e * r * r keeps the true tail, for example 5.55e-17 at x = 37.43 in float32.
template <typename T>
GPUFLOW_HD inline void sigmoid_with_partial(T x, T& value, T& partial) {
    const T e = exp_of(-abs_of(x));
    const T r = T(1) / (T(1) + e);
    value = x >= T(0) ? r : e * r;
    partial = e * r * r;
}

// Returns the input gradient gy * partial from the partial saved by the forward pass.
template <typename T>
GPUFLOW_HD inline T sigmoid_backward(T gy, T partial) {
    return gy * partial;
}

}  // namespace gpuflow
