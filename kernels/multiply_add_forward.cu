// Fused multiply-add forward pass: out = a * b + c in one pass.
//
// Inputs:   a, b, c, n elements each. Inputs may alias each other (for example a * a + c).
// Outputs:  out[i] = a[i] * b[i] + c[i], n elements.
// Dtypes:   float32 (gpuflow_multiply_add_forward_f32) or float64
//           (gpuflow_multiply_add_forward_f64), one dtype for all four arrays.
// Layout:   same-shape C-contiguous arrays; out must not overlap an input. Broadcast operands
//           are not supported here: the caller runs unfused code for them.
// Launch:   1-D grid of 1-D blocks of any size; a grid-stride loop covers all n elements.
//           When a, b, c and out are 16-byte aligned, each step handles one float4 or
//           double2, and a scalar loop then handles the last n % 4 (float) or n % 2
//           (double) elements. Otherwise the scalar loop handles every element.
// Formula:  gpuflow::multiply_add in include/gpuflow/multiply_add.cuh. The compiler contracts
//           it into one fused multiply-add (NVRTC's default --fmad=true), so a result may
//           differ from NumPy's by about one rounding of a * b.
// NumPy reference it must match (to within eps * (|a * b| + |c|) per element):
//   out = a * b + c

#include "gpuflow/multiply_add.cuh"
#include "gpuflow/vector_access.cuh"

namespace {

template <typename T>
__device__ void multiply_add_forward(const T* __restrict__ a, const T* __restrict__ b,
                                     const T* __restrict__ c, T* __restrict__ out, size_t n) {
    const size_t start = gpuflow::grid_start();
    const size_t stride = gpuflow::grid_stride();
    size_t scalar_begin = 0;

    if (gpuflow::is_aligned_16(a) && gpuflow::is_aligned_16(b) && gpuflow::is_aligned_16(c) &&
        gpuflow::is_aligned_16(out)) {
        const int width = gpuflow::Vector<T>::width;
        const size_t vector_count = n / width;
        for (size_t k = start; k < vector_count; k += stride) {
            T as[width];
            T bs[width];
            T cs[width];
            T outs[width];
            gpuflow::load_vector(a, k, as);
            gpuflow::load_vector(b, k, bs);
            gpuflow::load_vector(c, k, cs);
#pragma unroll
            for (int j = 0; j < width; ++j) {
                outs[j] = gpuflow::multiply_add(as[j], bs[j], cs[j]);
            }
            gpuflow::store_vector(out, k, outs);
        }
        scalar_begin = vector_count * width;
    }

    for (size_t i = scalar_begin + start; i < n; i += stride) {
        out[i] = gpuflow::multiply_add(a[i], b[i], c[i]);
    }
}

}  // namespace

extern "C" __global__ void gpuflow_multiply_add_forward_f32(const float* __restrict__ a,
                                                            const float* __restrict__ b,
                                                            const float* __restrict__ c,
                                                            float* __restrict__ out, size_t n) {
    multiply_add_forward<float>(a, b, c, out, n);
}

extern "C" __global__ void gpuflow_multiply_add_forward_f64(const double* __restrict__ a,
                                                            const double* __restrict__ b,
                                                            const double* __restrict__ c,
                                                            double* __restrict__ out, size_t n) {
    multiply_add_forward<double>(a, b, c, out, n);
}
