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

// 1x1, stride 1, no padding, one group: the convolution is a plain GEMM per image.
CNN_HD bool conv_is_pointwise(const ConvGeom& g) {
    return g.R == 1 && g.S == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_h == 0 &&
           g.pad_w == 0 && g.groups == 1;
}

// One input channel per group (depthwise, possibly with a channel multiplier).
CNN_HD bool conv_is_depthwise(const ConvGeom& g) { return g.groups > 1 && g.C == g.groups; }

// Input coordinate read by output o through tap k along one axis (may fall in the padding).
template <typename I>
CNN_HD I conv_in_coord(I o, I k, I stride, I pad, I dil) {
    return o * stride - pad + k * dil;
}

// The output o (in [0, out)) that reads input coordinate x through tap k, if there is one:
// the inverse of conv_in_coord, used by the gather form of col2im and depthwise backward.
template <typename I>
CNN_HD bool conv_out_of_tap(I x, I k, I stride, I pad, I dil, I out, I& o) {
    I t = x + pad - k * dil;
    if (t < 0 || t % stride != 0) return false;
    o = t / stride;
    return o < out;
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

// Outputs [o0, o1) whose window [o*stride - pad, o*stride - pad + k) covers input coordinate
// x along one axis (empty when o0 >= o1): the gather form of pooling backward.
CNN_HD void pool_windows_covering(int64_t x, int64_t k, int64_t stride, int64_t pad, int64_t out,
                                  int64_t& o0, int64_t& o1) {
    // o*stride <= x + pad  and  o*stride > x + pad - k
    int64_t hi = x + pad;          // >= 0: last o with o*stride <= hi
    int64_t lo = x + pad - k + 1;  // first o with o*stride >= lo
    o0 = lo <= 0 ? 0 : (lo + stride - 1) / stride;
    o1 = hi / stride + 1;
    if (o1 > out) o1 = out;
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
