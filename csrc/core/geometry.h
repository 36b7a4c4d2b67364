// Window/offset arithmetic shared by the CPU and CUDA kernels (plain inline without nvcc, so
// the CPU tests exercise the same index math the GPU runs).
#pragma once

#include <cstdint>

#include "core/common.h"

namespace cnnkit {

// Convolution geometry. x is (N,C,H,W), w is (K,C/groups,R,S), y is (N,K,P,Q).
struct ConvGeom {
    int64_t N, C, H, W;
    int64_t K, R, S;
    int64_t P, Q;
    int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
    int64_t groups;
};

// Output extent of a convolution along one axis (PyTorch semantics); <= 0 means "too small".
CNN_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
    int64_t span = in + 2 * pad - dil * (k - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
}

// Pooling geometry. x is (N,C,H,W), y is (N,C,P,Q).
struct PoolGeom {
    int64_t N, C, H, W;
    int64_t kh, kw, P, Q;
    int64_t stride_h, stride_w, pad_h, pad_w;
    bool count_include_pad;
};

// Output extent of a pooling window along one axis (PyTorch: floor or ceil mode; in ceil mode
// the last window must start inside the input or left padding).
CNN_HD int64_t pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, bool ceil_mode) {
    int64_t span = in + 2 * pad - k;
    if (span < 0) return 0;
    int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
    if (ceil_mode && (out - 1) * stride >= in + pad) --out;
    return out;
}

// Average-pool divisor for output (p,q): window clipped to the padded input when counting
// padding, or to the real input otherwise.
CNN_HD int64_t avgpool_divisor(const PoolGeom& g, int64_t p, int64_t q) {
    int64_t h0 = p * g.stride_h - g.pad_h, w0 = q * g.stride_w - g.pad_w;
    int64_t h1 = h0 + g.kh, w1 = w0 + g.kw;
    if (h1 > g.H + g.pad_h) h1 = g.H + g.pad_h;
    if (w1 > g.W + g.pad_w) w1 = g.W + g.pad_w;
    if (g.count_include_pad) return (h1 - h0) * (w1 - w0);
    if (h0 < 0) h0 = 0;
    if (w0 < 0) w0 = 0;
    if (h1 > g.H) h1 = g.H;
    if (w1 > g.W) w1 = g.W;
    int64_t d = (h1 - h0) * (w1 - w0);
    return d > 0 ? d : 1;
}

}  // namespace cnnkit
