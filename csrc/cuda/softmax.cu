// Softmax over one axis on the GPU (the twin of cpu/softmax.cpp): one thread per
// (outer, inner) column, the same loops in the same order as the CPU.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

__global__ void softmax_forward_kernel(float* y, const float* __restrict__ x, int64_t outer,
                                       int64_t C, int64_t inner) {
    CNN_GRID_LOOP(t, outer * inner) {
        const int64_t base = (t / inner) * C * inner + t % inner;
        float m = x[base];
        for (int64_t c = 1; c < C; ++c) m = fmaxf(m, x[base + c * inner]);
        float s = 0.f;
        for (int64_t c = 0; c < C; ++c) {
            const float e = expf(x[base + c * inner] - m);
            y[base + c * inner] = e;
            s += e;
        }
        const float inv = 1.f / s;
        for (int64_t c = 0; c < C; ++c) y[base + c * inner] *= inv;
    }
}

__global__ void softmax_backward_kernel(float* dx, const float* dy, const float* __restrict__ y,
                                        int64_t outer, int64_t C, int64_t inner) {
    CNN_GRID_LOOP(t, outer * inner) {
        const int64_t base = (t / inner) * C * inner + t % inner;
        float dot = 0.f;
        for (int64_t c = 0; c < C; ++c) dot += dy[base + c * inner] * y[base + c * inner];
        for (int64_t c = 0; c < C; ++c)
            dx[base + c * inner] = y[base + c * inner] * (dy[base + c * inner] - dot);
    }
}

}  // namespace

// x, y are (outer, C, inner).
void softmax_forward(float* y, const float* x, int64_t outer, int64_t C, int64_t inner) {
    CNN_LAUNCH(dim3(grid_for(outer * inner, kBlock)), dim3(kBlock), softmax_forward_kernel, y, x,
               outer, C, inner);
}

// dx = y * (dy - sum_c dy*y), overwritten.
void softmax_backward(float* dx, const float* dy, const float* y, int64_t outer, int64_t C,
                      int64_t inner) {
    CNN_LAUNCH(dim3(grid_for(outer * inner, kBlock)), dim3(kBlock), softmax_backward_kernel, dx,
               dy, y, outer, C, inner);
}

}  // namespace cuda
}  // namespace cnnkit
