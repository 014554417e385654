// Fused sigmoid forward pass: the value and its local partial derivative in one pass over x.
//
// Inputs:   x, n elements.
// Outputs:  y[i] = sigmoid(x[i]) and p[i] = sigmoid(x[i]) * sigmoid(-x[i]) = dy/dx at x[i],
//           n elements each. The backward pass (sigmoid_backward.cu) reads p back.
// Dtypes:   float32 (gpuflow_sigmoid_forward_f32) or float64 (gpuflow_sigmoid_forward_f64),
//           one dtype for all three arrays.
// Layout:   same-shape C-contiguous arrays; y and p must not overlap x or each other.
// Launch:   1-D grid of 1-D blocks of any size; a grid-stride loop covers all n elements.
//           When x, y and p are 16-byte aligned, each step handles one float4 or
//           double2, and a scalar loop then handles the last n % 4 (float) or n % 2
//           (double) elements. Otherwise the scalar loop handles every element.
// Formula:  gpuflow::sigmoid_with_partial in include/gpuflow/sigmoid.cuh, with e = exp(-|x|),
//           r = 1 / (1 + e): y = x >= 0 ? r : e * r, p = e * r * r.
// NumPy reference it must match (evaluated in float64 or wider, compared at the input dtype):
//   y = 1 / (1 + np.exp(-x))
//   p = np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))) ** 2

#include "gpuflow/sigmoid.cuh"
#include "gpuflow/vector_access.cuh"

namespace {

template <typename T>
__device__ void sigmoid_forward(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ p,
                                size_t n) {
    const size_t start = gpuflow::grid_start();
    const size_t stride = gpuflow::grid_stride();
    size_t scalar_begin = 0;

    if (gpuflow::is_aligned_16(x) && gpuflow::is_aligned_16(y) && gpuflow::is_aligned_16(p)) {
        const int width = gpuflow::Vector<T>::width;
        const size_t vector_count = n / width;
        for (size_t k = start; k < vector_count; k += stride) {
            T xs[width];
            T ys[width];
            T ps[width];
            gpuflow::load_vector(x, k, xs);
#pragma unroll
            for (int j = 0; j < width; ++j) {
                gpuflow::sigmoid_with_partial(xs[j], ys[j], ps[j]);
            }
            gpuflow::store_vector(y, k, ys);
            gpuflow::store_vector(p, k, ps);
        }
        scalar_begin = vector_count * width;
    }

    for (size_t i = scalar_begin + start; i < n; i += stride) {
        gpuflow::sigmoid_with_partial(x[i], y[i], p[i]);
    }
}

}  // namespace

extern "C" __global__ void gpuflow_sigmoid_forward_f32(const float* __restrict__ x,
                                                       float* __restrict__ y,
                                                       float* __restrict__ p, size_t n) {
    sigmoid_forward<float>(x, y, p, n);
}

extern "C" __global__ void gpuflow_sigmoid_forward_f64(const double* __restrict__ x,
                                                       double* __restrict__ y,
                                                       double* __restrict__ p, size_t n) {
    sigmoid_forward<double>(x, y, p, n);
}
