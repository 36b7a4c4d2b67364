// Adaptive average and max pooling on the CPU: output bin (i, j) covers PyTorch's rows
// [floor(iH/P), ceil((i+1)H/P)) and columns alike (core/resample.h). Backward gathers per input
// pixel over the bins that cover it, in bin order, so no two threads write one element.
#include <cmath>

#include "core/resample.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 14;
}

// x is (NC,H,W), y is (NC,P,Q).
void adaptive_avgpool2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                int64_t P, int64_t Q) {
#pragma omp parallel for schedule(static) if (NC * H * W > kParallelMin)
    for (int64_t nc = 0; nc < NC; ++nc) {
        const float* xp = x + nc * H * W;
        for (int64_t i = 0; i < P; ++i) {
            const int64_t h0 = adaptive_start(i, H, P), h1 = adaptive_end(i, H, P);
            for (int64_t j = 0; j < Q; ++j) {
                const int64_t w0 = adaptive_start(j, W, Q), w1 = adaptive_end(j, W, Q);
                float s = 0.f;
                for (int64_t h = h0; h < h1; ++h)
                    for (int64_t w = w0; w < w1; ++w) s += xp[h * W + w];
                y[(nc * P + i) * Q + j] = s / static_cast<float>((h1 - h0) * (w1 - w0));
            }
        }
    }
}

// dy is (NC,P,Q); dx (NC,H,W) overwritten.
void adaptive_avgpool2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q) {
#pragma omp parallel for schedule(static) if (NC * H * W > kParallelMin)
    for (int64_t nc = 0; nc < NC; ++nc) {
        const float* dp = dy + nc * P * Q;
        for (int64_t h = 0; h < H; ++h) {
            const int64_t i0 = adaptive_first_bin(h, H, P), i1 = adaptive_last_bin(h, H, P);
            for (int64_t w = 0; w < W; ++w) {
                const int64_t j0 = adaptive_first_bin(w, W, Q), j1 = adaptive_last_bin(w, W, Q);
                float s = 0.f;
                for (int64_t i = i0; i <= i1; ++i) {
                    const int64_t ah = adaptive_end(i, H, P) - adaptive_start(i, H, P);
                    for (int64_t j = j0; j <= j1; ++j) {
                        const int64_t aw = adaptive_end(j, W, Q) - adaptive_start(j, W, Q);
                        s += dp[i * Q + j] / static_cast<float>(ah * aw);
                    }
                }
                dx[(nc * H + h) * W + w] = s;
            }
        }
    }
}

// argmax (NC,P,Q): h*W+w of the first maximum of each bin (a NaN propagates, as in PyTorch).
void adaptive_maxpool2d_forward(float* y, int32_t* argmax, const float* x, int64_t NC, int64_t H,
                                int64_t W, int64_t P, int64_t Q) {
#pragma omp parallel for schedule(static) if (NC * H * W > kParallelMin)
    for (int64_t nc = 0; nc < NC; ++nc) {
        const float* xp = x + nc * H * W;
        for (int64_t i = 0; i < P; ++i) {
            const int64_t h0 = adaptive_start(i, H, P), h1 = adaptive_end(i, H, P);
            for (int64_t j = 0; j < Q; ++j) {
                const int64_t w0 = adaptive_start(j, W, Q), w1 = adaptive_end(j, W, Q);
                int64_t best = h0 * W + w0;
                float m = -INFINITY;
                for (int64_t h = h0; h < h1; ++h)
                    for (int64_t w = w0; w < w1; ++w) {
                        const float v = xp[h * W + w];
                        if (v > m || v != v) {  // PyTorch's rule: a NaN propagates
                            m = v;
                            best = h * W + w;
                        }
                    }
                y[(nc * P + i) * Q + j] = m;
                argmax[(nc * P + i) * Q + j] = static_cast<int32_t>(best);
            }
        }
    }
}

// dy, argmax are (NC,P,Q); dx (NC,H,W) overwritten.
void adaptive_maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, int64_t NC,
                                 int64_t H, int64_t W, int64_t P, int64_t Q) {
#pragma omp parallel for schedule(static) if (NC * H * W > kParallelMin)
    for (int64_t nc = 0; nc < NC; ++nc) {
        const float* dp = dy + nc * P * Q;
        const int32_t* ap = argmax + nc * P * Q;
        for (int64_t h = 0; h < H; ++h) {
            const int64_t i0 = adaptive_first_bin(h, H, P), i1 = adaptive_last_bin(h, H, P);
            for (int64_t w = 0; w < W; ++w) {
                const int64_t j0 = adaptive_first_bin(w, W, Q), j1 = adaptive_last_bin(w, W, Q);
                const int64_t me = h * W + w;
                float s = 0.f;
                for (int64_t i = i0; i <= i1; ++i)
                    for (int64_t j = j0; j <= j1; ++j)
                        if (ap[i * Q + j] == me) s += dp[i * Q + j];
                dx[(nc * H + h) * W + w] = s;
            }
        }
    }
}

}  // namespace cpu
}  // namespace cnnkit
