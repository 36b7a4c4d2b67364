// Index math of adaptive pooling and nearest upsampling, shared by the CPU and CUDA kernels
// (plain inline without nvcc, so the CPU tests exercise the index math the GPU runs).
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

}  // namespace cnnkit
