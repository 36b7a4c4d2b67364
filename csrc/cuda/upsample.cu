// Nearest-neighbour 2-D upsampling on the GPU (the twin of cpu/upsample.cpp): one thread per
// output element forward, one per input pixel backward (a gather, core/resample.h).
#include "core/resample.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

__global__ void upsample_nearest_forward_kernel(float* __restrict__ y, const float* __restrict__ x,
                                                int64_t NC, int64_t H, int64_t W, int64_t P,
                                                int64_t Q, float sh, float sw) {
    CNN_GRID_LOOP(o, NC * P * Q) {
        const int64_t q = o % Q, p = (o / Q) % P, nc = o / (P * Q);
        y[o] = x[(nc * H + nearest_src(p, sh, H)) * W + nearest_src(q, sw, W)];
    }
}

__global__ void upsample_nearest_backward_kernel(float* __restrict__ dx,
                                                 const float* __restrict__ dy, int64_t NC,
                                                 int64_t H, int64_t W, int64_t P, int64_t Q,
                                                 float sh, float sw) {
    CNN_GRID_LOOP(e, NC * H * W) {
        const int64_t w = e % W, h = (e / W) % H, nc = e / (H * W);
        float s = 0.f;
        for (int64_t p = nearest_first(h, sh); p < nearest_last(h, sh, H, P); ++p) {
            if (nearest_src(p, sh, H) != h) continue;
            for (int64_t q = nearest_first(w, sw); q < nearest_last(w, sw, W, Q); ++q)
                if (nearest_src(q, sw, W) == w) s += dy[(nc * P + p) * Q + q];
        }
        dx[e] = s;
    }
}

}  // namespace

// x is (NC,H,W), y is (NC,P,Q).
void upsample_nearest2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                int64_t P, int64_t Q, float sh, float sw) {
    CNN_LAUNCH(dim3(grid_for(NC * P * Q, kBlock)), dim3(kBlock), upsample_nearest_forward_kernel,
               y, x, NC, H, W, P, Q, sh, sw);
}

void upsample_nearest2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q, float sh, float sw) {
    CNN_LAUNCH(dim3(grid_for(NC * H * W, kBlock)), dim3(kBlock), upsample_nearest_backward_kernel,
               dx, dy, NC, H, W, P, Q, sh, sw);
}

}  // namespace cuda
}  // namespace cnnkit
