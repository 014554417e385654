#pragma once
// Device-side helpers for the elementwise kernels: grid-stride indexing, the 16-byte alignment
// test and vector loads and stores (a float4 contains 4 floats, a double2 contains 2 doubles).
// The host test build does not include this file.

#include "gpuflow/common.cuh"

#ifdef __CUDACC__

namespace gpuflow {

// The vector type used for 16-byte loads and stores of T, and how many elements it contains.
template <typename T>
struct Vector;

template <>
struct Vector<float> {
    typedef float4 type;
    static const int width = 4;
};

template <>
struct Vector<double> {
    typedef double2 type;
    static const int width = 2;
};

// Index of this thread's first element and the step between its elements in a grid-stride
// loop. Both are size_t so arrays of more than 2**31 elements are covered.
__device__ inline size_t grid_start() {
    return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ inline size_t grid_stride() {
    return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// True when pointer is a multiple of 16 bytes, as float4 and double2 accesses require.
__device__ inline bool is_aligned_16(const void* pointer) {
    return (reinterpret_cast<size_t>(pointer) & 15) == 0;
}

// Load or store the vector at vector index k (elements k * width to k * width + width - 1).
__device__ inline void load_vector(const float* base, size_t k, float (&out)[4]) {
    const float4 v = reinterpret_cast<const float4*>(base)[k];
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}

__device__ inline void load_vector(const double* base, size_t k, double (&out)[2]) {
    const double2 v = reinterpret_cast<const double2*>(base)[k];
    out[0] = v.x;
    out[1] = v.y;
}

__device__ inline void store_vector(float* base, size_t k, const float (&in)[4]) {
    float4 v;
    v.x = in[0];
    v.y = in[1];
    v.z = in[2];
    v.w = in[3];
    reinterpret_cast<float4*>(base)[k] = v;
}

__device__ inline void store_vector(double* base, size_t k, const double (&in)[2]) {
    double2 v;
    v.x = in[0];
    v.y = in[1];
    reinterpret_cast<double2*>(base)[k] = v;
}

}  // namespace gpuflow

#endif  // __CUDACC__
