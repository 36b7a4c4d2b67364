// Nearest-neighbour 2-D upsampling on the CPU (PyTorch's "nearest": source index
// min(floor(p * float(1/scale)), H-1), core/resample.h). Backward gathers per input pixel.
#include "core/resample.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

// x is (NC,H,W), y is (NC,P,Q).
void upsample_nearest2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                int64_t P, int64_t Q, float sh, float sw) {
#pragma omp parallel for schedule(static) if (NC * P * Q > (1 << 15))
    for (int64_t nc = 0; nc < NC; ++nc)
        for (int64_t p = 0; p < P; ++p) {
            const float* xr = x + (nc * H + nearest_src(p, sh, H)) * W;
            float* yr = y + (nc * P + p) * Q;
            for (int64_t q = 0; q < Q; ++q) yr[q] = xr[nearest_src(q, sw, W)];
        }
}

// dy is (NC,P,Q); dx (NC,H,W) overwritten.
void upsample_nearest2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q, float sh, float sw) {
#pragma omp parallel for schedule(static) if (NC * P * Q > (1 << 15))
    for (int64_t nc = 0; nc < NC; ++nc)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t w = 0; w < W; ++w) {
                float s = 0.f;
                for (int64_t p = nearest_first(h, sh); p < nearest_last(h, sh, H, P); ++p) {
                    if (nearest_src(p, sh, H) != h) continue;
                    for (int64_t q = nearest_first(w, sw); q < nearest_last(w, sw, W, Q); ++q)
                        if (nearest_src(q, sw, W) == w) s += dy[(nc * P + p) * Q + q];
                }
                dx[(nc * H + h) * W + w] = s;
            }
}

}  // namespace cpu
}  // namespace cnnkit
