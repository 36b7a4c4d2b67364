// Conv2d on the CPU. Depthwise convolutions (one input channel per group) use direct loops;
// stride-1 single-group layers use the implicit-GEMM kernels of conv_direct.cpp (no column
// matrix); 1x1 stride-1 layers are one GEMM per image; everything else (strides, groups) is
// im2col batched over a chunk of images + one GEMM per group, with backward by GEMM + col2im
// (input) and GEMM with the column matrix (weight). The per-channel bias kernels (the conv bias
// gradient, ConvTranspose2d's bias) are at the end.
#include <algorithm>
#include <cstring>

#include "cpu/conv_direct.h"
#include "cpu/conv_winograd.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

namespace {

// Column-matrix budget per chunk of images (floats); chunking depends only on the geometry, so
// results do not depend on the thread count.
constexpr int64_t kColBudget = int64_t(1) << 22;

bool is_pointwise(const ConvGeom& g) {
    return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 &&
           g.pad_w == 0 && g.groups == 1;
}

bool is_depthwise(const ConvGeom& g) { return g.groups > 1 && g.C == g.groups; }

int64_t images_per_chunk(const ConvGeom& g) {
    int64_t per_image = g.C * g.R * g.S * g.P * g.Q;
    int64_t nb = per_image > 0 ? kColBudget / per_image : g.N;
    return std::max<int64_t>(1, std::min<int64_t>(nb, g.N));
}

// x images [n0, n0+nb) -> col (C*R*S, nb*P*Q).
void im2col_chunk(float* col, const float* x, const ConvGeom& g, int64_t n0, int64_t nb) {
    const int64_t PQ = g.P * g.Q, ldc = nb * PQ, HW = g.H * g.W;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t i = 0; i < nb; ++i) {
        for (int64_t c = 0; c < g.C; ++c) {
            im2col(col + c * g.R * g.S * ldc + i * PQ, ldc, x + ((n0 + i) * g.C + c) * HW, 1, g.H,
                   g.W, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h,
                   g.dil_w);
        }
    }
}

// dy images [n0, n0+nb) (nb,K,PQ) -> t (K, nb*PQ).
void gather_dy(float* t, const float* dy, const ConvGeom& g, int64_t n0, int64_t nb) {
    const int64_t PQ = g.P * g.Q;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t k = 0; k < g.K; ++k)
        for (int64_t i = 0; i < nb; ++i)
            std::memcpy(t + k * nb * PQ + i * PQ, dy + ((n0 + i) * g.K + k) * PQ,
                        sizeof(float) * PQ);
}

// ---- depthwise (C == groups): direct loops ------------------------------------------------

void depthwise_forward(float* y, const float* x, const float* w, const float* b,
                       const ConvGeom& g) {
    const int64_t mult = g.K / g.C;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t k = 0; k < g.K; ++k) {
            const float* xc = x + (n * g.C + k / mult) * g.H * g.W;
            const float* wk = w + k * g.R * g.S;
            float* yk = y + (n * g.K + k) * g.P * g.Q;
            float bias = b ? b[k] : 0.f;
            for (int64_t p = 0; p < g.P; ++p) {
                for (int64_t q = 0; q < g.Q; ++q) {
                    float acc = bias;
                    for (int64_t r = 0; r < g.R; ++r) {
                        int64_t h = p * g.stride_h - g.pad_h + r * g.dil_h;
                        if (h < 0 || h >= g.H) continue;
                        for (int64_t s = 0; s < g.S; ++s) {
                            int64_t ww = q * g.stride_w - g.pad_w + s * g.dil_w;
                            if (ww < 0 || ww >= g.W) continue;
                            acc += wk[r * g.S + s] * xc[h * g.W + ww];
                        }
                    }
                    yk[p * g.Q + q] = acc;
                }
            }
        }
    }
}

void depthwise_backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g) {
    const int64_t mult = g.K / g.C;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t c = 0; c < g.C; ++c) {
            float* dxc = dx + (n * g.C + c) * g.H * g.W;
            std::memset(dxc, 0, sizeof(float) * g.H * g.W);
            for (int64_t k = c * mult; k < (c + 1) * mult; ++k) {
                const float* wk = w + k * g.R * g.S;
                const float* dyk = dy + (n * g.K + k) * g.P * g.Q;
                for (int64_t p = 0; p < g.P; ++p) {
                    for (int64_t q = 0; q < g.Q; ++q) {
                        float d = dyk[p * g.Q + q];
                        for (int64_t r = 0; r < g.R; ++r) {
                            int64_t h = p * g.stride_h - g.pad_h + r * g.dil_h;
                            if (h < 0 || h >= g.H) continue;
                            for (int64_t s = 0; s < g.S; ++s) {
                                int64_t ww = q * g.stride_w - g.pad_w + s * g.dil_w;
                                if (ww < 0 || ww >= g.W) continue;
                                dxc[h * g.W + ww] += d * wk[r * g.S + s];
                            }
                        }
                    }
                }
            }
        }
    }
}

void depthwise_backward_weight(float* dw, float* db, const float* dy, const float* x,
                               const ConvGeom& g) {
    const int64_t mult = g.K / g.C;
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < g.K; ++k) {
        float* dwk = dw + k * g.R * g.S;
        double bsum = 0.0;
        for (int64_t n = 0; n < g.N; ++n) {
            const float* xc = x + (n * g.C + k / mult) * g.H * g.W;
            const float* dyk = dy + (n * g.K + k) * g.P * g.Q;
            for (int64_t p = 0; p < g.P; ++p) {
                for (int64_t q = 0; q < g.Q; ++q) {
                    float d = dyk[p * g.Q + q];
                    bsum += d;
                    for (int64_t r = 0; r < g.R; ++r) {
                        int64_t h = p * g.stride_h - g.pad_h + r * g.dil_h;
                        if (h < 0 || h >= g.H) continue;
                        for (int64_t s = 0; s < g.S; ++s) {
                            int64_t ww = q * g.stride_w - g.pad_w + s * g.dil_w;
                            if (ww < 0 || ww >= g.W) continue;
                            dwk[r * g.S + s] += d * xc[h * g.W + ww];
                        }
                    }
                }
            }
        }
        if (db) db[k] += static_cast<float>(bsum);
    }
}

}  // namespace

// ---- public entry points --------------------------------------------------------------------

int64_t conv2d_workspace_floats(const ConvGeom& g) {
    if (is_pointwise(g) || is_depthwise(g)) return 0;
    int64_t n = std::max(conv_direct::workspace_floats(g), conv_winograd::workspace_floats(g));
    if (!conv_direct::applicable_forward(g) || !conv_direct::applicable_backward_input(g) ||
        !conv_direct::applicable_backward_weight(g)) {
        const int64_t cols = images_per_chunk(g) * g.P * g.Q;
        n = std::max(n, g.C * g.R * g.S * cols + g.K * cols);
    }
    return n;
}

namespace {

// Every forward path but the direct one (which fuses ReLU itself).
void forward_unfused(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
                     float* ws) {
    const int64_t PQ = g.P * g.Q;
    if (is_depthwise(g)) return depthwise_forward(y, x, w, b, g);
    if (is_pointwise(g)) {
        for (int64_t n = 0; n < g.N; ++n)
            sgemm(false, false, g.K, PQ, g.C, 1.f, w, g.C, x + n * g.C * PQ, PQ, 0.f,
                  y + n * g.K * PQ, PQ);
    } else {
        const int64_t Kg = g.K / g.groups, CRSg = g.C / g.groups * g.R * g.S;
        const int64_t nb_max = images_per_chunk(g);
        for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
            const int64_t nb = std::min(nb_max, g.N - n0), ldc = nb * PQ;
            float* col = ws;
            float* t = ws + g.C * g.R * g.S * ldc;
            im2col_chunk(col, x, g, n0, nb);
            float* out = nb == 1 ? y + n0 * g.K * PQ : t;  // one image: write y directly
            for (int64_t gi = 0; gi < g.groups; ++gi)
                sgemm(false, false, Kg, ldc, CRSg, 1.f, w + gi * Kg * CRSg, CRSg,
                      col + gi * CRSg * ldc, ldc, 0.f, out + gi * Kg * ldc, ldc);
            if (nb > 1) {
                // scatter (K, nb*PQ) -> (nb, K, PQ), adding the bias on the way
#pragma omp parallel for collapse(2) schedule(static)
                for (int64_t i = 0; i < nb; ++i)
                    for (int64_t k = 0; k < g.K; ++k) {
                        float* dst = y + ((n0 + i) * g.K + k) * PQ;
                        const float* src = t + k * ldc + i * PQ;
                        const float bk = b ? b[k] : 0.f;
                        for (int64_t j = 0; j < PQ; ++j) dst[j] = src[j] + bk;
                    }
            } else if (b) {
                float* yn = y + n0 * g.K * PQ;
                for (int64_t k = 0; k < g.K; ++k)
                    for (int64_t j = 0; j < PQ; ++j) yn[k * PQ + j] += b[k];
            }
        }
        return;
    }
    if (b) {
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t n = 0; n < g.N; ++n)
            for (int64_t k = 0; k < g.K; ++k) {
                float* yk = y + (n * g.K + k) * PQ;
                const float bk = b[k];
                for (int64_t i = 0; i < PQ; ++i) yk[i] += bk;
            }
    }
}

}  // namespace

// x is (N,C,H,W), w is (K,C/groups,R,S), b is (K) or null, y is (N,K,P,Q).
void conv2d_forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
                    float* ws, bool relu) {
    if (conv_winograd::use_forward(g)) return conv_winograd::forward(y, x, w, b, g, ws, relu);
    if (conv_direct::applicable_forward(g)) return conv_direct::forward(y, x, w, b, g, ws, relu);
    forward_unfused(y, x, w, b, g, ws);
    if (relu) activation_forward(y, y, g.N * g.K * g.P * g.Q, Act::ReLU, 0.f);
}

void conv2d_forward_scaled(float* y, const float* x, const float* w, const float* wscale,
                           const float* b, const ConvGeom& g, float* ws, bool relu, float* wfold) {
    if (conv_winograd::use_forward(g))
        return conv_winograd::forward(y, x, w, b, g, ws, relu, wscale);
    if (conv_direct::applicable_forward(g))
        return conv_direct::forward(y, x, w, b, g, ws, relu, wscale);
    const int64_t per = g.C / g.groups * g.R * g.S;
    for (int64_t k = 0; k < g.K; ++k) {
        const float a = wscale[k];
        for (int64_t j = 0; j < per; ++j) wfold[k * per + j] = w[k * per + j] * a;
    }
    conv2d_forward(y, x, wfold, b, g, ws, relu);
}

// dy is (N,K,P,Q), w is (K,C/groups,R,S), dx is (N,C,H,W) (overwritten).
void conv2d_backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g,
                           float* ws) {
    const int64_t PQ = g.P * g.Q, HW = g.H * g.W;
    if (is_depthwise(g)) return depthwise_backward_input(dx, dy, w, g);
    if (conv_winograd::use_backward_input(g))
        return conv_winograd::backward_input(dx, dy, w, g, ws);
    if (conv_direct::applicable_backward_input(g))
        return conv_direct::backward_input(dx, dy, w, g, ws);
    if (is_pointwise(g)) {
        for (int64_t n = 0; n < g.N; ++n)
            sgemm(true, false, g.C, HW, g.K, 1.f, w, g.C, dy + n * g.K * PQ, PQ, 0.f,
                  dx + n * g.C * HW, HW);
        return;
    }
    const int64_t Kg = g.K / g.groups, CRSg = g.C / g.groups * g.R * g.S;
    const int64_t nb_max = images_per_chunk(g);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
        const int64_t nb = std::min(nb_max, g.N - n0), ldc = nb * PQ;
        float* col = ws;
        float* t = ws + g.C * g.R * g.S * ldc;
        const float* d = dy + n0 * g.K * PQ;
        if (nb > 1) {
            gather_dy(t, dy, g, n0, nb);
            d = t;
        }
        for (int64_t gi = 0; gi < g.groups; ++gi)
            sgemm(true, false, CRSg, ldc, Kg, 1.f, w + gi * Kg * CRSg, CRSg, d + gi * Kg * ldc,
                  ldc, 0.f, col + gi * CRSg * ldc, ldc);
#pragma omp parallel for collapse(2) schedule(static)
        for (int64_t i = 0; i < nb; ++i)
            for (int64_t c = 0; c < g.C; ++c)
                col2im(dx + ((n0 + i) * g.C + c) * HW, col + c * g.R * g.S * ldc + i * PQ, ldc, 1,
                       g.H, g.W, g.R, g.S, g.P, g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
                       g.dil_h, g.dil_w);
    }
}

// dy is (N,K,P,Q), x is (N,C,H,W); dw (K,C/groups,R,S) and db (K, or null) accumulated.
void conv2d_backward_weight(float* dw, float* db, const float* dy, const float* x,
                            const ConvGeom& g, float* ws) {
    const int64_t PQ = g.P * g.Q;
    if (is_depthwise(g)) return depthwise_backward_weight(dw, db, dy, x, g);
    if (db) channel_bias_backward(db, dy, g.N, g.K, PQ);
    if (conv_winograd::use_backward_weight(g)) return conv_winograd::backward_weight(dw, dy, x, g);
    if (conv_direct::applicable_backward_weight(g))
        return conv_direct::backward_weight(dw, dy, x, g, ws);
    if (is_pointwise(g)) {
        for (int64_t n = 0; n < g.N; ++n)
            sgemm(false, true, g.K, g.C, PQ, 1.f, dy + n * g.K * PQ, PQ, x + n * g.C * PQ, PQ,
                  1.f, dw, g.C);
        return;
    }
    const int64_t Kg = g.K / g.groups, CRSg = g.C / g.groups * g.R * g.S;
    const int64_t nb_max = images_per_chunk(g);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
        const int64_t nb = std::min(nb_max, g.N - n0), ldc = nb * PQ;
        float* col = ws;
        float* t = ws + g.C * g.R * g.S * ldc;
        im2col_chunk(col, x, g, n0, nb);
        const float* d = dy + n0 * g.K * PQ;
        if (nb > 1) {
            gather_dy(t, dy, g, n0, nb);
            d = t;
        }
        for (int64_t gi = 0; gi < g.groups; ++gi)
            sgemm(false, true, Kg, CRSg, ldc, 1.f, d + gi * Kg * ldc, ldc, col + gi * CRSg * ldc,
                  ldc, 1.f, dw + gi * Kg * CRSg, CRSg);
    }
}

// y is (N,C,HW): y += b[c].
void channel_bias_forward(float* y, const float* b, int64_t N, int64_t C, int64_t HW) {
#pragma omp parallel for collapse(2) schedule(static) if (double(N) * C * HW > 65536)
    for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c) {
            float* yc = y + (n * C + c) * HW;
            const float bc = b[c];
            for (int64_t i = 0; i < HW; ++i) yc[i] += bc;
        }
}

// dy is (N,C,HW); db (C) accumulated: per image eight float partial sums, images summed in
// double, in a fixed order (no dependence on the thread count).
void channel_bias_backward(float* db, const float* dy, int64_t N, int64_t C, int64_t HW) {
#pragma omp parallel for schedule(static) if (double(N) * C * HW > 65536)
    for (int64_t c = 0; c < C; ++c) {
        double s = 0.0;
        for (int64_t n = 0; n < N; ++n) {
            const float* dyc = dy + (n * C + c) * HW;
            // eight independent partial sums (vectorizes; a single one is a serial chain)
            float lane[8] = {};
            int64_t i = 0;
            for (; i + 8 <= HW; i += 8)
                for (int l = 0; l < 8; ++l) lane[l] += dyc[i + l];
            float part = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                         ((lane[4] + lane[5]) + (lane[6] + lane[7]));
            for (; i < HW; ++i) part += dyc[i];
            s += part;
        }
        db[c] += static_cast<float>(s);
    }
}

}  // namespace cpu
}  // namespace cnnkit
