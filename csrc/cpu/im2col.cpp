// im2col / col2im on the CPU: unfold an image's sliding windows into a column matrix (and fold
// gradients back), with stride, padding and dilation per axis (PyTorch semantics).
#include <cstring>

#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

// x is (C,H,W); col is (C*R*S, P*Q) with row stride ldc.
void im2col(float* col, int64_t ldc, const float* x, int64_t C, int64_t H, int64_t W, int64_t R,
            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw) {
    for (int64_t c = 0; c < C; ++c) {
        const float* xc = x + c * H * W;
        for (int64_t r = 0; r < R; ++r) {
            for (int64_t s = 0; s < S; ++s) {
                float* row = col + ((c * R + r) * S + s) * ldc;
                int64_t wo = s * dw - pw;
                // q range with 0 <= q*sw + wo < W
                int64_t q0 = wo >= 0 ? 0 : (-wo + sw - 1) / sw;
                int64_t q1 = W - wo <= 0 ? 0 : (W - wo + sw - 1) / sw;
                if (q1 > Q) q1 = Q;
                if (q0 > q1) q0 = q1;
                for (int64_t p = 0; p < P; ++p) {
                    int64_t h = p * sh - ph + r * dh;
                    float* dst = row + p * Q;
                    if (h < 0 || h >= H) {
                        std::memset(dst, 0, sizeof(float) * Q);
                        continue;
                    }
                    const float* src = xc + h * W + wo;
                    for (int64_t q = 0; q < q0; ++q) dst[q] = 0.f;
                    if (sw == 1) {
                        std::memcpy(dst + q0, src + q0, sizeof(float) * (q1 - q0));
                    } else {
                        for (int64_t q = q0; q < q1; ++q) dst[q] = src[q * sw];
                    }
                    for (int64_t q = q1; q < Q; ++q) dst[q] = 0.f;
                }
            }
        }
    }
}

// col is (C*R*S, P*Q) with row stride ldc; dx is (C,H,W), overwritten.
void col2im(float* dx, const float* col, int64_t ldc, int64_t C, int64_t H, int64_t W, int64_t R,
            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw) {
    std::memset(dx, 0, sizeof(float) * C * H * W);
    for (int64_t c = 0; c < C; ++c) {
        float* xc = dx + c * H * W;
        for (int64_t r = 0; r < R; ++r) {
            for (int64_t s = 0; s < S; ++s) {
                const float* row = col + ((c * R + r) * S + s) * ldc;
                int64_t wo = s * dw - pw;
                int64_t q0 = wo >= 0 ? 0 : (-wo + sw - 1) / sw;
                int64_t q1 = W - wo <= 0 ? 0 : (W - wo + sw - 1) / sw;
                if (q1 > Q) q1 = Q;
                for (int64_t p = 0; p < P; ++p) {
                    int64_t h = p * sh - ph + r * dh;
                    if (h < 0 || h >= H) continue;
                    const float* src = row + p * Q;
                    float* dst = xc + h * W + wo;
                    if (sw == 1) {
                        for (int64_t q = q0; q < q1; ++q) dst[q] += src[q];
                    } else {
                        for (int64_t q = q0; q < q1; ++q) dst[q * sw] += src[q];
                    }
                }
            }
        }
    }
}

}  // namespace cpu
}  // namespace cnnkit
