// Adaptive average and max pooling on the GPU (the twin of cpu/adaptive_pool.cpp): one thread
// per output element forward, one per input pixel backward (a gather over the covering bins in
// bin order, core/resample.h), so results match the CPU's and no atomics are needed.
#include "core/resample.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

__global__ void adaptive_avg_forward_kernel(float* __restrict__ y, const float* __restrict__ x,
                                            int64_t NC, int64_t H, int64_t W, int64_t P,
                                            int64_t Q) {
    CNN_GRID_LOOP(o, NC * P * Q) {
        const int64_t j = o % Q, i = (o / Q) % P, nc = o / (P * Q);
        const int64_t h0 = adaptive_start(i, H, P), h1 = adaptive_end(i, H, P);
        const int64_t w0 = adaptive_start(j, W, Q), w1 = adaptive_end(j, W, Q);
        const float* xp = x + nc * H * W;
        float s = 0.f;
        for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) s += xp[h * W + w];
        y[o] = s / static_cast<float>((h1 - h0) * (w1 - w0));
    }
}

__global__ void adaptive_avg_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                             int64_t NC, int64_t H, int64_t W, int64_t P,
                                             int64_t Q) {
    CNN_GRID_LOOP(e, NC * H * W) {
        const int64_t w = e % W, h = (e / W) % H, nc = e / (H * W);
        const int64_t i0 = adaptive_first_bin(h, H, P), i1 = adaptive_last_bin(h, H, P);
        const int64_t j0 = adaptive_first_bin(w, W, Q), j1 = adaptive_last_bin(w, W, Q);
        const float* dp = dy + nc * P * Q;
        float s = 0.f;
        for (int64_t i = i0; i <= i1; ++i) {
            const int64_t ah = adaptive_end(i, H, P) - adaptive_start(i, H, P);
            for (int64_t j = j0; j <= j1; ++j) {
                const int64_t aw = adaptive_end(j, W, Q) - adaptive_start(j, W, Q);
                s += dp[i * Q + j] / static_cast<float>(ah * aw);
            }
        }
        dx[e] = s;
    }
}

__global__ void adaptive_max_forward_kernel(float* __restrict__ y, int32_t* __restrict__ argmax,
                                            const float* __restrict__ x, int64_t NC, int64_t H,
                                            int64_t W, int64_t P, int64_t Q) {
    CNN_GRID_LOOP(o, NC * P * Q) {
        const int64_t j = o % Q, i = (o / Q) % P, nc = o / (P * Q);
        const int64_t h0 = adaptive_start(i, H, P), h1 = adaptive_end(i, H, P);
        const int64_t w0 = adaptive_start(j, W, Q), w1 = adaptive_end(j, W, Q);
        const float* xp = x + nc * H * W;
        int64_t best = h0 * W + w0;
        float m = -INFINITY;
        for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) {
                const float v = xp[h * W + w];
                if (v > m || v != v) {  // PyTorch's rule: a NaN propagates
                    m = v;
                    best = h * W + w;
                }
            }
        y[o] = m;
        argmax[o] = static_cast<int32_t>(best);
    }
}

__global__ void adaptive_max_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                             const int32_t* __restrict__ argmax, int64_t NC,
                                             int64_t H, int64_t W, int64_t P, int64_t Q) {
    CNN_GRID_LOOP(e, NC * H * W) {
        const int64_t w = e % W, h = (e / W) % H, nc = e / (H * W);
        const int64_t i0 = adaptive_first_bin(h, H, P), i1 = adaptive_last_bin(h, H, P);
        const int64_t j0 = adaptive_first_bin(w, W, Q), j1 = adaptive_last_bin(w, W, Q);
        const float* dp = dy + nc * P * Q;
        const int32_t* ap = argmax + nc * P * Q;
        const int64_t me = h * W + w;
        float s = 0.f;
        for (int64_t i = i0; i <= i1; ++i)
            for (int64_t j = j0; j <= j1; ++j)
                if (ap[i * Q + j] == me) s += dp[i * Q + j];
        dx[e] = s;
    }
}

}  // namespace

// x is (NC,H,W), y is (NC,P,Q).
void adaptive_avgpool2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                int64_t P, int64_t Q) {
    CNN_LAUNCH(dim3(grid_for(NC * P * Q, kBlock)), dim3(kBlock), adaptive_avg_forward_kernel, y, x,
               NC, H, W, P, Q);
}

void adaptive_avgpool2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q) {
    CNN_LAUNCH(dim3(grid_for(NC * H * W, kBlock)), dim3(kBlock), adaptive_avg_backward_kernel, dx,
               dy, NC, H, W, P, Q);
}

void adaptive_maxpool2d_forward(float* y, int32_t* argmax, const float* x, int64_t NC, int64_t H,
                                int64_t W, int64_t P, int64_t Q) {
    CNN_LAUNCH(dim3(grid_for(NC * P * Q, kBlock)), dim3(kBlock), adaptive_max_forward_kernel, y,
               argmax, x, NC, H, W, P, Q);
}

void adaptive_maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, int64_t NC,
                                 int64_t H, int64_t W, int64_t P, int64_t Q) {
    CNN_LAUNCH(dim3(grid_for(NC * H * W, kBlock)), dim3(kBlock), adaptive_max_backward_kernel, dx,
               dy, argmax, NC, H, W, P, Q);
}

}  // namespace cuda
}  // namespace cnnkit
