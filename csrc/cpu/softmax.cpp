// Softmax over one axis on the CPU (the Softmax layer): x viewed as (outer, C, inner), each
// (outer, inner) column normalised over C after subtracting its max (stable for large inputs).
#include <algorithm>
#include <cmath>

#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

// x, y are (outer, C, inner).
void softmax_forward(float* y, const float* x, int64_t outer, int64_t C, int64_t inner) {
#pragma omp parallel for schedule(static) if (outer * C * inner > (1 << 15))
    for (int64_t t = 0; t < outer * inner; ++t) {
        const int64_t o = t / inner, k = t % inner;
        const float* xs = x + o * C * inner + k;
        float* ys = y + o * C * inner + k;
        float m = xs[0];
        for (int64_t c = 1; c < C; ++c) m = std::max(m, xs[c * inner]);
        float s = 0.f;
        for (int64_t c = 0; c < C; ++c) {
            const float e = std::exp(xs[c * inner] - m);
            ys[c * inner] = e;
            s += e;
        }
        const float inv = 1.f / s;
        for (int64_t c = 0; c < C; ++c) ys[c * inner] *= inv;
    }
}

// dx = y * (dy - sum_c dy*y), per (outer, inner) column; dx overwritten.
void softmax_backward(float* dx, const float* dy, const float* y, int64_t outer, int64_t C,
                      int64_t inner) {
#pragma omp parallel for schedule(static) if (outer * C * inner > (1 << 15))
    for (int64_t t = 0; t < outer * inner; ++t) {
        const int64_t base = (t / inner) * C * inner + t % inner;
        float dot = 0.f;
        for (int64_t c = 0; c < C; ++c) dot += dy[base + c * inner] * y[base + c * inner];
        for (int64_t c = 0; c < C; ++c)
            dx[base + c * inner] = y[base + c * inner] * (dy[base + c * inner] - dot);
    }
}

}  // namespace cpu
}  // namespace cnnkit
