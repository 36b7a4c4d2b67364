// Max and average pooling on the CPU (PyTorch semantics: padding, ceil mode, count_include_pad).
// The 2x2 / stride 2 / no padding case has AVX2 bodies in eltwise_avx2.cpp.
#include <algorithm>
#include <cstring>
#include <limits>

#include "core/runtime.h"
#include "cpu/kernel_set.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

// ---- interface to eltwise_avx2.cpp (compiled with -mavx2 -mfma) ------------------------------

namespace eltwise_avx2 {
bool compiled();
void maxpool2x2_forward_plane(float* y, int32_t* argmax, const float* x, int64_t W, int64_t P,
                              int64_t Q);
bool maxpool2x2_backward_plane(float* dx, const float* dy, const int32_t* argmax, int64_t H,
                               int64_t W, int64_t P, int64_t Q);
void avgpool2x2_forward_plane(float* y, const float* x, int64_t W, int64_t P, int64_t Q);
void avgpool2x2_backward_plane(float* dx, const float* dy, int64_t H, int64_t W, int64_t P,
                               int64_t Q);
}  // namespace eltwise_avx2

namespace {

// Elements a call touches below which OpenMP fork/join costs more than the loop itself.
constexpr int64_t kParallelMin = 1 << 16;

// AVX2 bodies for the "avx2" and "avx512" kernel sets (cpu/kernel_set.h).
bool use_avx2() { return use_avx2_or_better(); }

// 2x2 windows at stride 2 inside the input: they tile it without overlap, so every input pixel
// belongs to at most one window and backward can write dx instead of scattering into it.
bool is_2x2_stride2(const PoolGeom& g) {
    return g.kh == 2 && g.kw == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 &&
           g.pad_w == 0 && 2 * g.P <= g.H && 2 * g.Q <= g.W;
}

// The 2x2 case without window bookkeeping (same tie and NaN rules as the general loop: the
// first maximum in row-major window order wins).
void maxpool2x2_forward_plane(float* yc, int32_t* ac, const float* xc, const PoolGeom& g) {
    for (int64_t p = 0; p < g.P; ++p) {
        const float* r0 = xc + 2 * p * g.W;
        const float* r1 = r0 + g.W;
        for (int64_t q = 0; q < g.Q; ++q) {
            const int64_t i0 = 2 * p * g.W + 2 * q;
            float best = r0[2 * q];
            int64_t arg = i0;
            const float c1 = r0[2 * q + 1], c2 = r1[2 * q], c3 = r1[2 * q + 1];
            if (c1 > best || (c1 != c1 && best == best)) { best = c1; arg = i0 + 1; }
            if (c2 > best || (c2 != c2 && best == best)) { best = c2; arg = i0 + g.W; }
            if (c3 > best || (c3 != c3 && best == best)) { best = c3; arg = i0 + g.W + 1; }
            yc[p * g.Q + q] = best;
            ac[p * g.Q + q] = static_cast<int32_t>(arg);
        }
    }
}

void maxpool2x2_forward(float* y, int32_t* argmax, const float* x, const PoolGeom& g) {
    const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
    const bool avx2 = use_avx2();
#pragma omp parallel for schedule(static) if (g.N * g.C * HW > kParallelMin)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
        if (avx2)
            eltwise_avx2::maxpool2x2_forward_plane(y + nc * PQ, argmax + nc * PQ, x + nc * HW,
                                                   g.W, g.P, g.Q);
        else
            maxpool2x2_forward_plane(y + nc * PQ, argmax + nc * PQ, x + nc * HW, g);
    }
}

// dx (H,W) = 0, then dy scattered onto the argmax of each output (windows may overlap).
void maxpool_backward_plane(float* dxc, const float* dyc, const int32_t* ac, int64_t HW,
                            int64_t PQ) {
    std::memset(dxc, 0, sizeof(float) * HW);
    for (int64_t i = 0; i < PQ; ++i) {
        int32_t a = ac[i];
        if (a >= 0) dxc[a] += dyc[i];
    }
}

}  // namespace

// x is (N,C,H,W), y and argmax are (N,C,P,Q).
void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolGeom& g) {
    const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
    if (is_2x2_stride2(g)) return maxpool2x2_forward(y, argmax, x, g);
#pragma omp parallel for schedule(static) if (g.N * g.C * PQ * g.kh * g.kw > kParallelMin)
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
    // The direct write trusts each argmax to lie in its own window (it does when it comes from
    // maxpool2d_forward); a plane where one does not is redone by scattering.
    const bool direct = is_2x2_stride2(g) && g.Q >= 8 && use_avx2();
#pragma omp parallel for schedule(static) if (g.N * g.C * (HW + PQ) > kParallelMin)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
        if (direct && eltwise_avx2::maxpool2x2_backward_plane(dx + nc * HW, dy + nc * PQ,
                                                              argmax + nc * PQ, g.H, g.W, g.P,
                                                              g.Q))
            continue;
        maxpool_backward_plane(dx + nc * HW, dy + nc * PQ, argmax + nc * PQ, HW, PQ);
    }
}

// x is (N,C,H,W), y is (N,C,P,Q).
void avgpool2d_forward(float* y, const float* x, const PoolGeom& g) {
    const int64_t HW = g.H * g.W, PQ = g.P * g.Q;
    if (is_2x2_stride2(g) && use_avx2()) {
#pragma omp parallel for schedule(static) if (g.N * g.C * HW > kParallelMin)
        for (int64_t nc = 0; nc < g.N * g.C; ++nc)
            eltwise_avx2::avgpool2x2_forward_plane(y + nc * PQ, x + nc * HW, g.W, g.P, g.Q);
        return;
    }
#pragma omp parallel for schedule(static) if (g.N * g.C * PQ * g.kh * g.kw > kParallelMin)
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
    if (is_2x2_stride2(g) && use_avx2()) {
#pragma omp parallel for schedule(static) if (g.N * g.C * HW > kParallelMin)
        for (int64_t nc = 0; nc < g.N * g.C; ++nc)
            eltwise_avx2::avgpool2x2_backward_plane(dx + nc * HW, dy + nc * PQ, g.H, g.W, g.P,
                                                    g.Q);
        return;
    }
#pragma omp parallel for schedule(static) if (g.N * g.C * (HW + PQ * g.kh * g.kw) > kParallelMin)
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
