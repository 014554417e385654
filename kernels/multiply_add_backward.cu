// Fused multiply-add backward pass: all three input gradients of out = a * b + c in one pass,
// reading g, a and b once each.
//
// Inputs:   g (gradient of the loss with respect to out), a and b, n elements each.
//           Inputs may alias each other.
// Outputs:  ga[i] = g[i] * b[i], gb[i] = g[i] * a[i] and gc[i] = g[i], n elements each.
// Dtypes:   float32 (gpuflow_multiply_add_backward_f32) or float64
//           (gpuflow_multiply_add_backward_f64), one dtype for all six arrays.
// Layout:   same-shape C-contiguous arrays; no output may overlap an input or another output.
// Launch:   1-D grid of 1-D blocks of any size; a grid-stride loop covers all n elements.
//           When all six pointers are 16-byte aligned, each step handles one float4 or
//           double2, and a scalar loop then handles the last n % 4 (float) or n % 2
//           (double) elements. Otherwise the scalar loop handles every element.
// Formula:  gpuflow::multiply_add_backward in include/gpuflow/multiply_add.cuh.
// NumPy reference it must match (exactly, since each output is one rounded multiplication
// or a copy):
//   ga = g * b;  gb = g * a;  gc = g.copy()

#include "gpuflow/multiply_add.cuh"
#include "gpuflow/vector_access.cuh"

namespace {

template <typename T>
__device__ void multiply_add_backward(const T* __restrict__ g, const T* __restrict__ a,
                                      const T* __restrict__ b, T* __restrict__ ga,
                                      T* __restrict__ gb, T* __restrict__ gc, size_t n) {
    const size_t start = gpuflow::grid_start();
    const size_t stride = gpuflow::grid_stride();
    size_t scalar_begin = 0;

    const bool inputs_aligned =
        gpuflow::is_aligned_16(g) && gpuflow::is_aligned_16(a) && gpuflow::is_aligned_16(b);
    const bool outputs_aligned =
        gpuflow::is_aligned_16(ga) && gpuflow::is_aligned_16(gb) && gpuflow::is_aligned_16(gc);
    if (inputs_aligned && outputs_aligned) {
        const int width = gpuflow::Vector<T>::width;
        const size_t vector_count = n / width;
        for (size_t k = start; k < vector_count; k += stride) {
            T gs[width];
            T as[width];
            T bs[width];
            T gas[width];
            T gbs[width];
            T gcs[width];
            gpuflow::load_vector(g, k, gs);
            gpuflow::load_vector(a, k, as);
            gpuflow::load_vector(b, k, bs);
#pragma unroll
            for (int j = 0; j < width; ++j) {
                gpuflow::multiply_add_backward(gs[j], as[j], bs[j], gas[j], gbs[j], gcs[j]);
            }
            gpuflow::store_vector(ga, k, gas);
            gpuflow::store_vector(gb, k, gbs);
            gpuflow::store_vector(gc, k, gcs);
        }
        scalar_begin = vector_count * width;
    }

    for (size_t i = scalar_begin + start; i < n; i += stride) {
        gpuflow::multiply_add_backward(g[i], a[i], b[i], ga[i], gb[i], gc[i]);
    }
}

}  // namespace

extern "C" __global__ void gpuflow_multiply_add_backward_f32(
    const float* __restrict__ g, const float* __restrict__ a, const float* __restrict__ b,
    float* __restrict__ ga, float* __restrict__ gb, float* __restrict__ gc, size_t n) {
    multiply_add_backward<float>(g, a, b, ga, gb, gc, n);
}

extern "C" __global__ void gpuflow_multiply_add_backward_f64(
    const double* __restrict__ g, const double* __restrict__ a, const double* __restrict__ b,
    double* __restrict__ ga, double* __restrict__ gb, double* __restrict__ gc, size_t n) {
    multiply_add_backward<double>(g, a, b, ga, gb, gc, n);
}
