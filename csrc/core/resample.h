// Index math of adaptive pooling and nearest and bilinear upsampling, shared by the CPU and CUDA
// kernels (plain inline without nvcc, so the CPU tests exercise the index math the GPU runs).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/common.h"

namespace cnnkit {

// ---- adaptive pooling: bin i of `out` over an axis of `in` (PyTorch's edges) ------------------
CNN_HD int64_t adaptive_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
CNN_HD int64_t adaptive_end(int64_t i, int64_t in, int64_t out) {
    return ((i + 1) * in + out - 1) / out;
}
// The bins that cover input index h: [adaptive_first_bin, adaptive_last_bin] (both inclusive).
// end(i) > h  <=>  i >= floor(h*out/in);  start(i) <= h  <=>  i <= ceil((h+1)*out/in) - 1.
CNN_HD int64_t adaptive_first_bin(int64_t h, int64_t in, int64_t out) { return (h * out) / in; }
CNN_HD int64_t adaptive_last_bin(int64_t h, int64_t in, int64_t out) {
    const int64_t last = ((h + 1) * out + in - 1) / in - 1;
    return last < out - 1 ? last : out - 1;
}

// ---- nearest upsampling -------------------------------------------------------------------------
// Source index of output index p: min(floor(p * scale), in - 1), scale = float(1/scale_factor)
// (PyTorch's "nearest", single-precision like its kernels).
CNN_HD int64_t nearest_src(int64_t p, float scale, int64_t in) {
    const int64_t s = static_cast<int64_t>(floorf(static_cast<float>(p) * scale));
    return s < in - 1 ? s : in - 1;
}
// The output indices that read input index h lie in [nearest_first, nearest_last); callers check
// nearest_src(p) == h inside it (a safe superset, whatever the float rounding).
CNN_HD int64_t nearest_first(int64_t h, float scale) {
    const int64_t p = static_cast<int64_t>(static_cast<float>(h) / scale) - 2;
    return p > 0 ? p : 0;
}
CNN_HD int64_t nearest_last(int64_t h, float scale, int64_t in, int64_t out) {
    if (h == in - 1) return out;  // the clamp sends every later p here
    const int64_t p = static_cast<int64_t>(static_cast<float>(h + 1) / scale) + 3;
    return p < out ? p : out;
}

// ---- bilinear upsampling (PyTorch's upsample_bilinear2d, single precision like its kernels) ----
// `scale` per axis as PyTorch's area_pixel_compute_scale: (in-1)/(out-1) (0 when out == 1) with
// align_corners, else float(1/scale_factor) given a scale factor, or in/out given a size.
struct LinearTap {
    int64_t i0, i1;  // the two source indices (equal at the last row and when in == out)
    float l0, l1;    // their weights, l0 = 1 - l1
};
// Taps of output index p: source = scale * p (align_corners) or max(scale * (p + 0.5) - 0.5, 0);
// i0 = min(floor(source), in - 1), i1 = i0 + (i0 < in - 1), l1 = clamp(source - i0, 0, 1). An
// axis whose size does not change is copied (PyTorch's CPU kernel does the same).
CNN_HD LinearTap linear_tap(int64_t p, float scale, bool align_corners, int64_t in, int64_t out) {
    LinearTap t;
    if (in == out) {
        t.i0 = t.i1 = p;
        t.l0 = 1.f;
        t.l1 = 0.f;
        return t;
    }
    float src = align_corners ? scale * static_cast<float>(p)
                              : scale * (static_cast<float>(p) + 0.5f) - 0.5f;
    if (!align_corners && src < 0.f) src = 0.f;
    int64_t i0 = static_cast<int64_t>(floorf(src));
    if (i0 > in - 1) i0 = in - 1;
    float l1 = src - static_cast<float>(i0);
    l1 = l1 < 0.f ? 0.f : (l1 > 1.f ? 1.f : l1);
    t.i0 = i0;
    t.i1 = i0 + (i0 < in - 1 ? 1 : 0);
    t.l1 = l1;
    t.l0 = 1.f - l1;
    return t;
}
// Weight with which output index p reads input index h (l0 + l1 where both taps are h).
CNN_HD float linear_weight(const LinearTap& t, int64_t h) {
    return (t.i0 == h ? t.l0 : 0.f) + (t.i1 == h ? t.l1 : 0.f);
}
// The output indices that read input index h lie in [p0, p1); callers weigh each p with
// linear_weight (zero outside the taps): a safe superset of the outputs whose source lies in
// (h - 1, h + 1), computed in double with a margin for the float rounding of the taps.
CNN_HD void linear_outputs_reading(int64_t h, float scale, bool align_corners, int64_t in,
                                   int64_t out, int64_t& p0, int64_t& p1) {
    if (in == out) {
        p0 = h;
        p1 = h + 1;
        return;
    }
    if (!(scale > 0.f)) {  // align_corners with one output: everything reads index 0
        p0 = 0;
        p1 = h == 0 ? out : 0;
        return;
    }
    const double s = scale, off = align_corners ? 0.0 : 0.5;
    const double lo = (static_cast<double>(h) - 1.0 + off) / s - off;  // source h - 1
    const double hi = (static_cast<double>(h) + 1.0 + off) / s - off;  // source h + 1
    const double margin = 2.0 + 1e-5 * (hi > 0 ? hi : 0.0), n = static_cast<double>(out);
    p0 = lo - margin <= 0 ? 0 : (lo - margin < n ? static_cast<int64_t>(lo - margin) : out);
    if (h >= in - 1)
        p1 = out;  // the clamp sends every later p here
    else
        p1 = hi + margin + 1 < n ? static_cast<int64_t>(hi + margin) + 1 : out;
}

}  // namespace cnnkit
