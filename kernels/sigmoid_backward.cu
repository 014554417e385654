// Fused sigmoid backward pass: the input gradient from the partial saved by the forward pass.
//
// Inputs:   gy (gradient of the loss with respect to y = sigmoid(x)) and p (the partial
//           sigmoid(x) * sigmoid(-x) written by sigmoid_forward.cu), n elements each.
// Outputs:  gx[i] = gy[i] * p[i], n elements.
// Dtypes:   float32 (gpuflow_sigmoid_backward_f32) or float64 (gpuflow_sigmoid_backward_f64),
//           one dtype for all three arrays.
// Layout:   same-shape C-contiguous arrays; gx must not overlap gy or p.
// Launch:   1-D grid of 1-D blocks of any size; a grid-stride loop covers all n elements.
//           When gy, p and gx are 16-byte aligned, each step handles one float4 or
//           double2, and a scalar loop then handles the last n % 4 (float) or n % 2
//           (double) elements. Otherwise the scalar loop handles every element.
// Formula:  gpuflow::sigmoid_backward in include/gpuflow/sigmoid.cuh.
// NumPy reference it must match (exactly, since it is one rounded multiplication):
//   gx = gy * p

#include "gpuflow/sigmoid.cuh"
#include "gpuflow/vector_access.cuh"

namespace {

template <typename T>
__device__ void sigmoid_backward(const T* __restrict__ gy, const T* __restrict__ p,
                                 T* __restrict__ gx, size_t n) {
    const size_t start = gpuflow::grid_start();
    const size_t stride = gpuflow::grid_stride();
    size_t scalar_begin = 0;

    if (gpuflow::is_aligned_16(gy) && gpuflow::is_aligned_16(p) && gpuflow::is_aligned_16(gx)) {
        const int width = gpuflow::Vector<T>::width;
        const size_t vector_count = n / width;
        for (size_t k = start; k < vector_count; k += stride) {
            T gys[width];
            T ps[width];
            T gxs[width];
            gpuflow::load_vector(gy, k, gys);
            gpuflow::load_vector(p, k, ps);
#pragma unroll
            for (int j = 0; j < width; ++j) {
                gxs[j] = gpuflow::sigmoid_backward(gys[j], ps[j]);
            }
            gpuflow::store_vector(gx, k, gxs);
        }
        scalar_begin = vector_count * width;
    }

    for (size_t i = scalar_begin + start; i < n; i += stride) {
        gx[i] = gpuflow::sigmoid_backward(gy[i], p[i]);
    }
}

}  // namespace

extern "C" __global__ void gpuflow_sigmoid_backward_f32(const float* __restrict__ gy,
                                                        const float* __restrict__ p,
                                                        float* __restrict__ gx, size_t n) {
    sigmoid_backward<float>(gy, p, gx, n);
}

extern "C" __global__ void gpuflow_sigmoid_backward_f64(const double* __restrict__ gy,
                                                        const double* __restrict__ p,
                                                        double* __restrict__ gx, size_t n) {
    sigmoid_backward<double>(gy, p, gx, n);
}
