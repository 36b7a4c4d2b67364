// 2-D upsampling on the CPU: nearest (PyTorch's "nearest": source index
// min(floor(p * float(1/scale)), H-1)) and bilinear (PyTorch's upsample_bilinear2d), the index
// math in core/resample.h. Backward gathers per input pixel, as the CUDA twins do.
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

// x is (NC,H,W), y is (NC,P,Q): y = l0h (l0w x[h0,w0] + l1w x[h0,w1]) + l1h (l0w x[h1,w0] + ...).
void upsample_bilinear2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q, float sh, float sw, bool align_corners) {
#pragma omp parallel for schedule(static) if (NC * P * Q > (1 << 15))
    for (int64_t nc = 0; nc < NC; ++nc)
        for (int64_t p = 0; p < P; ++p) {
            const LinearTap th = linear_tap(p, sh, align_corners, H, P);
            const float* x0 = x + (nc * H + th.i0) * W;
            const float* x1 = x + (nc * H + th.i1) * W;
            float* yr = y + (nc * P + p) * Q;
            for (int64_t q = 0; q < Q; ++q) {
                const LinearTap tw = linear_tap(q, sw, align_corners, W, Q);
                yr[q] = th.l0 * (tw.l0 * x0[tw.i0] + tw.l1 * x0[tw.i1]) +
                        th.l1 * (tw.l0 * x1[tw.i0] + tw.l1 * x1[tw.i1]);
            }
        }
}

// dy is (NC,P,Q); dx (NC,H,W) overwritten: dx[h,w] = sum over the outputs (p,q) reading it of
// weight_h(p) * weight_w(q) * dy[p,q], rows outer, in increasing p and q.
void upsample_bilinear2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                  int64_t P, int64_t Q, float sh, float sw, bool align_corners) {
#pragma omp parallel for schedule(static) if (NC * P * Q > (1 << 15))
    for (int64_t nc = 0; nc < NC; ++nc)
        for (int64_t h = 0; h < H; ++h) {
            int64_t p0, p1;
            linear_outputs_reading(h, sh, align_corners, H, P, p0, p1);
            for (int64_t w = 0; w < W; ++w) {
                int64_t q0, q1;
                linear_outputs_reading(w, sw, align_corners, W, Q, q0, q1);
                float s = 0.f;
                for (int64_t p = p0; p < p1; ++p) {
                    const float wh = linear_weight(linear_tap(p, sh, align_corners, H, P), h);
                    if (wh == 0.f) continue;
                    const float* dyr = dy + (nc * P + p) * Q;
                    float row = 0.f;
                    for (int64_t q = q0; q < q1; ++q) {
                        const float ww = linear_weight(linear_tap(q, sw, align_corners, W, Q), w);
                        if (ww != 0.f) row += ww * dyr[q];
                    }
                    s += wh * row;
                }
                dx[(nc * H + h) * W + w] = s;
            }
        }
}

}  // namespace cpu
}  // namespace cnnkit
