// Max and average pooling on the GPU (the twins of cpu/pool.cpp, PyTorch semantics: padding,
// ceil mode, count_include_pad). Forward: one thread per output, window scanned in the CPU's
// order. Backward: a gather, one thread per input pixel summing the windows that cover it in
// the CPU's (p, q) order, so there are no atomics and the results match the CPU bit for bit.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

__global__ void maxpool_forward_kernel(float* __restrict__ y, int32_t* __restrict__ argmax,
                                       const float* __restrict__ x, PoolGeom g) {
    CNN_GRID_LOOP(idx, g.N * g.C * g.P * g.Q) {
        const int64_t q = idx % g.Q, p = (idx / g.Q) % g.P, nc = idx / (g.P * g.Q);
        const float* xc = x + nc * g.H * g.W;
        int64_t h0 = p * g.stride_h - g.pad_h, w0 = q * g.stride_w - g.pad_w;
        const int64_t h1 = h0 + g.kh < g.H ? h0 + g.kh : g.H;
        const int64_t w1 = w0 + g.kw < g.W ? w0 + g.kw : g.W;
        if (h0 < 0) h0 = 0;
        if (w0 < 0) w0 = 0;
        float best = -INFINITY;
        int32_t arg = -1;
        for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) {
                const float v = xc[h * g.W + w];
                // first maximum wins; NaN propagates (as PyTorch and the CPU kernel)
                if (v > best || (v != v && best == best) || arg < 0) {
                    best = v;
                    arg = static_cast<int32_t>(h * g.W + w);
                }
            }
        y[idx] = best;
        argmax[idx] = arg;
    }
}

__global__ void maxpool_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                        const int32_t* __restrict__ argmax, PoolGeom g) {
    CNN_GRID_LOOP(idx, g.N * g.C * g.H * g.W) {
        const int64_t w = idx % g.W, h = (idx / g.W) % g.H, nc = idx / (g.H * g.W);
        const int32_t me = static_cast<int32_t>(h * g.W + w);
        int64_t p0, p1, q0, q1;
        pool_windows_covering(h, g.kh, g.stride_h, g.pad_h, g.P, p0, p1);
        pool_windows_covering(w, g.kw, g.stride_w, g.pad_w, g.Q, q0, q1);
        const int64_t base = nc * g.P * g.Q;
        float sum = 0.f;
        for (int64_t p = p0; p < p1; ++p)
            for (int64_t q = q0; q < q1; ++q)
                if (argmax[base + p * g.Q + q] == me) sum += dy[base + p * g.Q + q];
        dx[idx] = sum;
    }
}

__global__ void avgpool_forward_kernel(float* __restrict__ y, const float* __restrict__ x,
                                       PoolGeom g) {
    CNN_GRID_LOOP(idx, g.N * g.C * g.P * g.Q) {
        const int64_t q = idx % g.Q, p = (idx / g.Q) % g.P, nc = idx / (g.P * g.Q);
        const float* xc = x + nc * g.H * g.W;
        int64_t h0 = p * g.stride_h - g.pad_h, w0 = q * g.stride_w - g.pad_w;
        const int64_t h1 = h0 + g.kh < g.H ? h0 + g.kh : g.H;
        const int64_t w1 = w0 + g.kw < g.W ? w0 + g.kw : g.W;
        if (h0 < 0) h0 = 0;
        if (w0 < 0) w0 = 0;
        float s = 0.f;
        for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) s += xc[h * g.W + w];
        y[idx] = s / static_cast<float>(avgpool_divisor(g, p, q));
    }
}

__global__ void avgpool_backward_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                        PoolGeom g) {
    CNN_GRID_LOOP(idx, g.N * g.C * g.H * g.W) {
        const int64_t w = idx % g.W, h = (idx / g.W) % g.H, nc = idx / (g.H * g.W);
        int64_t p0, p1, q0, q1;
        pool_windows_covering(h, g.kh, g.stride_h, g.pad_h, g.P, p0, p1);
        pool_windows_covering(w, g.kw, g.stride_w, g.pad_w, g.Q, q0, q1);
        const float* dyc = dy + nc * g.P * g.Q;
        float sum = 0.f;
        for (int64_t p = p0; p < p1; ++p)
            for (int64_t q = q0; q < q1; ++q)
                sum += dyc[p * g.Q + q] / static_cast<float>(avgpool_divisor(g, p, q));
        dx[idx] = sum;
    }
}

}  // namespace

// x is (N,C,H,W), y and argmax are (N,C,P,Q).
void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolGeom& g) {
    CNN_LAUNCH(dim3(grid_for(g.N * g.C * g.P * g.Q, kBlock)), dim3(kBlock),
               maxpool_forward_kernel, y, argmax, x, g);
}

// dy, argmax are (N,C,P,Q); dx is (N,C,H,W), overwritten.
void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolGeom& g) {
    CNN_LAUNCH(dim3(grid_for(g.N * g.C * g.H * g.W, kBlock)), dim3(kBlock),
               maxpool_backward_kernel, dx, dy, argmax, g);
}

// x is (N,C,H,W), y is (N,C,P,Q).
void avgpool2d_forward(float* y, const float* x, const PoolGeom& g) {
    CNN_LAUNCH(dim3(grid_for(g.N * g.C * g.P * g.Q, kBlock)), dim3(kBlock),
               avgpool_forward_kernel, y, x, g);
}

// dy is (N,C,P,Q); dx is (N,C,H,W), overwritten.
void avgpool2d_backward(float* dx, const float* dy, const PoolGeom& g) {
    CNN_LAUNCH(dim3(grid_for(g.N * g.C * g.H * g.W, kBlock)), dim3(kBlock),
               avgpool_backward_kernel, dx, dy, g);
}

}  // namespace cuda
}  // namespace cnnkit
