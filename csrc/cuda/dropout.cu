// Dropout and Dropout2d on the GPU (the twin of cpu/dropout.cpp): thread b draws Philox block b of
// (seed, stream) and masks elements 4b..4b+3, exactly the CPU's stream and indexing, so the
// masks are bit-identical to the CPU's for the same (seed, stream).
#include "core/rng.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

__global__ void dropout_forward_kernel(float* y, float* __restrict__ mask, const float* x,
                                       int64_t n, float p,
                                       float scale, uint64_t seed, uint64_t stream) {
    CNN_GRID_LOOP(b, (n + 3) / 4) {
        const Philox4 r = philox4x32(seed, stream, static_cast<uint64_t>(b));
        for (int64_t j = 0; j < 4 && b * 4 + j < n; ++j) {
            const int64_t i = b * 4 + j;
            const float m = u32_to_unit(r.v[j]) >= p ? scale : 0.f;
            mask[i] = m;
            y[i] = x[i] * m;
        }
    }
}

__global__ void dropout_backward_kernel(float* dx, const float* dy, const float* mask, int64_t n) {
    CNN_GRID_LOOP(i, n) { dx[i] = dy[i] * mask[i]; }
}

// mask (NC): Philox block b decides channels 4b..4b+3, as dropout_forward_kernel's elements.
__global__ void dropout2d_mask_kernel(float* __restrict__ mask, int64_t NC, float p, float scale,
                                      uint64_t seed, uint64_t stream) {
    CNN_GRID_LOOP(b, (NC + 3) / 4) {
        const Philox4 r = philox4x32(seed, stream, static_cast<uint64_t>(b));
        for (int64_t j = 0; j < 4 && b * 4 + j < NC; ++j)
            mask[b * 4 + j] = u32_to_unit(r.v[j]) >= p ? scale : 0.f;
    }
}

__global__ void dropout2d_apply_kernel(float* dx, const float* dy, const float* mask, int64_t NC,
                                       int64_t HW) {
    CNN_GRID_LOOP(i, NC * HW) { dx[i] = dy[i] * mask[i / HW]; }
}

}  // namespace

// Dropout2d: x, y (NC,HW), mask (NC).
void dropout2d_forward(float* y, float* mask, const float* x, int64_t NC, int64_t HW, float p,
                       uint64_t seed, uint64_t stream) {
    const float scale = p < 1.f ? 1.f / (1.f - p) : 0.f;
    CNN_LAUNCH(dim3(grid_for((NC + 3) / 4, kBlock)), dim3(kBlock), dropout2d_mask_kernel, mask, NC,
               p, scale, seed, stream);
    dropout2d_backward(y, x, mask, NC, HW);
}

void dropout2d_backward(float* dx, const float* dy, const float* mask, int64_t NC, int64_t HW) {
    if (HW == 0) return;
    CNN_LAUNCH(dim3(grid_for(NC * HW, kBlock)), dim3(kBlock), dropout2d_apply_kernel, dx, dy, mask,
               NC, HW);
}

// x, y, mask are (n).
void dropout_forward(float* y, float* mask, const float* x, int64_t n, float p, uint64_t seed,
                     uint64_t stream) {
    const float scale = p < 1.f ? 1.f / (1.f - p) : 0.f;  // on the host, as the CPU computes it
    CNN_LAUNCH(dim3(grid_for((n + 3) / 4, kBlock)), dim3(kBlock), dropout_forward_kernel, y, mask,
               x, n, p, scale, seed, stream);
}

void dropout_backward(float* dx, const float* dy, const float* mask, int64_t n) {
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), dropout_backward_kernel, dx, dy, mask, n);
}

}  // namespace cuda
}  // namespace cnnkit
