// Max and average pooling on the CPU (PyTorch semantics: padding, ceil mode, count_include_pad).
#include <algorithm>
#include <cstring>
#include <limits>

#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

// x is (N,C,H,W), y and argmax are (N,C,P,Q).
void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolGeom& g) {
    const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
        const float* xc = x + nc * HW;
        for (int64_t p = 0; p < g.P; ++p) {
            int64_t h0 = p * g.stride_h - g.pad_h;
            int64_t h1 = std::min(h0 + g.kh, g.H);
            h0 = std::max<int64_t>(h0, 0);
            for (int64_t q = 0; q < g.Q; ++q) {
                int64_t w0 = q * g.stride_w - g.pad_w;
                int64_t w1 = std::min(w0 + g.kw, g.W);
                w0 = std::max<int64_t>(w0, 0);
                float best = -std::numeric_limits<float>::infinity();
                int32_t arg = -1;
                for (int64_t h = h0; h < h1; ++h)
                    for (int64_t w = w0; w < w1; ++w) {
                        float v = xc[h * g.W + w];
                        // first maximum wins; NaN propagates (as PyTorch)
                        if (v > best || (v != v && best == best) || arg < 0) {
                            best = v;
                            arg = static_cast<int32_t>(h * g.W + w);
                        }
                    }
                y[nc * PQ + p * g.Q + q] = best;
                argmax[nc * PQ + p * g.Q + q] = arg;
            }
        }
    }
}

// dy, argmax are (N,C,P,Q); dx is (N,C,H,W), overwritten.
void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolGeom& g) {
    const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
        float* dxc = dx + nc * HW;
        std::memset(dxc, 0, sizeof(float) * HW);
        for (int64_t i = 0; i < PQ; ++i) {
            int32_t a = argmax[nc * PQ + i];
            if (a >= 0) dxc[a] += dy[nc * PQ + i];
        }
    }
}

// x is (N,C,H,W), y is (N,C,P,Q).
void avgpool2d_forward(float* y, const float* x, const PoolGeom& g) {
    const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
        const float* xc = x + nc * HW;
        for (int64_t p = 0; p < g.P; ++p) {
            int64_t h0 = std::max<int64_t>(p * g.stride_h - g.pad_h, 0);
            int64_t h1 = std::min(p * g.stride_h - g.pad_h + g.kh, g.H);
            for (int64_t q = 0; q < g.Q; ++q) {
                int64_t w0 = std::max<int64_t>(q * g.stride_w - g.pad_w, 0);
                int64_t w1 = std::min(q * g.stride_w - g.pad_w + g.kw, g.W);
                float s = 0.f;
                for (int64_t h = h0; h < h1; ++h)
                    for (int64_t w = w0; w < w1; ++w) s += xc[h * g.W + w];
                y[nc * PQ + p * g.Q + q] = s / static_cast<float>(avgpool_divisor(g, p, q));
            }
        }
    }
}

// dy is (N,C,P,Q); dx is (N,C,H,W), overwritten.
void avgpool2d_backward(float* dx, const float* dy, const PoolGeom& g) {
    const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
        float* dxc = dx + nc * HW;
        std::memset(dxc, 0, sizeof(float) * HW);
        for (int64_t p = 0; p < g.P; ++p) {
            int64_t h0 = std::max<int64_t>(p * g.stride_h - g.pad_h, 0);
            int64_t h1 = std::min(p * g.stride_h - g.pad_h + g.kh, g.H);
            for (int64_t q = 0; q < g.Q; ++q) {
                int64_t w0 = std::max<int64_t>(q * g.stride_w - g.pad_w, 0);
                int64_t w1 = std::min(q * g.stride_w - g.pad_w + g.kw, g.W);
                float d = dy[nc * PQ + p * g.Q + q] / static_cast<float>(avgpool_divisor(g, p, q));
                for (int64_t h = h0; h < h1; ++h)
                    for (int64_t w = w0; w < w1; ++w) dxc[h * g.W + w] += d;
            }
        }
    }
}

}  // namespace cpu
}  // namespace cnnkit
