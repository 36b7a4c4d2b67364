// Dropout and Dropout2d on the CPU: the keep mask comes from the counter-based Philox RNG, so the same
// (seed, stream) gives the same mask on any thread count and on the GPU.
#include "core/rng.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

// x, y, mask are (n).
void dropout_forward(float* y, float* mask, const float* x, int64_t n, float p, uint64_t seed,
                     uint64_t stream) {
    const float scale = p < 1.f ? 1.f / (1.f - p) : 0.f;
#pragma omp parallel for schedule(static) if (n > (1 << 15))
    for (int64_t b = 0; b < (n + 3) / 4; ++b) {
        Philox4 r = philox4x32(seed, stream, static_cast<uint64_t>(b));
        for (int64_t j = 0; j < 4 && b * 4 + j < n; ++j) {
            int64_t i = b * 4 + j;
            float m = u32_to_unit(r.v[j]) >= p ? scale : 0.f;
            mask[i] = m;
            y[i] = x[i] * m;
        }
    }
}

void dropout_backward(float* dx, const float* dy, const float* mask, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * mask[i];
}

// Dropout2d: x, y are (NC, HW); mask (NC) is dropout_forward's mask over NC elements, so one
// draw decides a whole channel.
void dropout2d_forward(float* y, float* mask, const float* x, int64_t NC, int64_t HW, float p,
                       uint64_t seed, uint64_t stream) {
    const float scale = p < 1.f ? 1.f / (1.f - p) : 0.f;
    for (int64_t b = 0; b < (NC + 3) / 4; ++b) {
        Philox4 r = philox4x32(seed, stream, static_cast<uint64_t>(b));
        for (int64_t j = 0; j < 4 && b * 4 + j < NC; ++j)
            mask[b * 4 + j] = u32_to_unit(r.v[j]) >= p ? scale : 0.f;
    }
    dropout2d_backward(y, x, mask, NC, HW);
}

// dx = dy * mask[channel]; also the forward's multiply.
void dropout2d_backward(float* dx, const float* dy, const float* mask, int64_t NC, int64_t HW) {
#pragma omp parallel for schedule(static) if (NC * HW > (1 << 15))
    for (int64_t c = 0; c < NC; ++c)
        for (int64_t i = 0; i < HW; ++i) dx[c * HW + i] = dy[c * HW + i] * mask[c];
}

}  // namespace cpu
}  // namespace cnnkit
