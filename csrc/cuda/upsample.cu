// Nearest and bilinear 2-D upsampling on the GPU (the twin of cpu/upsample.cpp): one thread per
// output element forward, one per input pixel backward (a gather in the CPU's order, no atomics,
// core/resample.h), so the results are the CPU's bit for bit.
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

__global__ void upsample_bilinear_forward_kernel(float* __restrict__ y,
                                                 const float* __restrict__ x, int64_t NC,
                                                 int64_t H, int64_t W, int64_t P, int64_t Q,
                                                 float sh, float sw, bool align_corners) {
    CNN_GRID_LOOP(o, NC * P * Q) {
        const int64_t q = o % Q, p = (o / Q) % P, nc = o / (P * Q);
        const LinearTap th = linear_tap(p, sh, align_corners, H, P);
        const LinearTap tw = linear_tap(q, sw, align_corners, W, Q);
        const float* x0 = x + (nc * H + th.i0) * W;
        const float* x1 = x + (nc * H + th.i1) * W;
        y[o] = th.l0 * (tw.l0 * x0[tw.i0] + tw.l1 * x0[tw.i1]) +
               th.l1 * (tw.l0 * x1[tw.i0] + tw.l1 * x1[tw.i1]);
    }
}

__global__ void upsample_bilinear_backward_kernel(float* __restrict__ dx,
                                                  const float* __restrict__ dy, int64_t NC,
                                                  int64_t H, int64_t W, int64_t P, int64_t Q,
                                                  float sh, float sw, bool align_corners) {
    CNN_GRID_LOOP(e, NC * H * W) {
        const int64_t w = e % W, h = (e / W) % H, nc = e / (H * W);
        int64_t p0, p1, q0, q1;
        linear_outputs_reading(h, sh, align_corners, H, P, p0, p1);
        linear_outputs_reading(w, sw, align_corners, W, Q, q0, q1);
        float s = 0.f;
        for (int64_t p = p0; p < p1; ++p) {
            const float wh = linear_weight(linear_tap(p, sh, align_corners, H, P), h);
            if (wh == 0.f) continue;
            const float* dyr = dy + (nc * P + p) * Q;
            float row = 0.f;
            for (int64_t q = q0; q < q1; ++q) {
                const float ww = linear_weight(linear_tap(q, sw, align_corners, W, Q), w);
                if (ww != 0.f) row += ww * dyr[q];
            }
            s += wh * row;
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

void upsample_bilinear2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q, float sh, float sw, bool align_corners) {
    CNN_LAUNCH(dim3(grid_for(NC * P * Q, kBlock)), dim3(kBlock), upsample_bilinear_forward_kernel,
               y, x, NC, H, W, P, Q, sh, sw, align_corners);
}

void upsample_bilinear2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                  int64_t P, int64_t Q, float sh, float sw, bool align_corners) {
    CNN_LAUNCH(dim3(grid_for(NC * H * W, kBlock)), dim3(kBlock),
               upsample_bilinear_backward_kernel, dx, dy, NC, H, W, P, Q, sh, sw, align_corners);
}

}  // namespace cuda
}  // namespace cnnkit
