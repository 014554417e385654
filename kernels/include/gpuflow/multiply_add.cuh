#pragma once
// Per-element multiply-add formulas, shared by multiply_add_forward.cu,
// multiply_add_backward.cu and the host build in tests/kernel_host.py.

#include "gpuflow/common.cuh"

namespace gpuflow {

// Returns a * b + c. NVRTC and nvcc contract this into one fused multiply-add by default
// (--fmad=true), which rounds once where NumPy rounds a * b and then the sum, so device
// results may differ from NumPy by about one rounding of a * b. The host test build passes
// -ffp-contract=off and so matches NumPy exactly.
template <typename T>
GPUFLOW_HD inline T multiply_add(T a, T b, T c) {
    return a * b + c;
}

// Computes the gradients of out = a * b + c from the output gradient g:
// ga = g * b, gb = g * a and gc = g.
template <typename T>
GPUFLOW_HD inline void multiply_add_backward(T g, T a, T b, T& ga, T& gb, T& gc) {
    ga = g * b;
    gb = g * a;
    gc = g;
}

}  // namespace gpuflow
