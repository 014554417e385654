#pragma once
// Portability layer shared by the CUDA kernels and by the host C++ build that tests the
// per-element formulas against NumPy on machines without a GPU.
//
// GPUFLOW_HD marks a function for both sides when a CUDA compiler (nvcc or NVRTC, which both
// define __CUDACC__) reads the file, and expands to nothing for a host C++ compiler.

#ifdef __CUDACC__
#define GPUFLOW_HD __host__ __device__
#else
#define GPUFLOW_HD
#include <math.h>
#include <stddef.h>
#endif

namespace gpuflow {

// Overloads that pick the single- or double-precision math function from the element type,
// so a formula templated on T never promotes float to double.
GPUFLOW_HD inline float exp_of(float x) { return expf(x); }
GPUFLOW_HD inline double exp_of(double x) { return exp(x); }
GPUFLOW_HD inline float abs_of(float x) { return fabsf(x); }
GPUFLOW_HD inline double abs_of(double x) { return fabs(x); }

}  // namespace gpuflow
