// Element-wise activations on the CPU: ReLU, LeakyReLU, Sigmoid, Tanh (forward and backward).
#include <cmath>

#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this, threads cost more than they save
}

// y, x are (n); y may alias x.
void activation_forward(float* y, const float* x, int64_t n, Act act, float alpha) {
    switch (act) {
        case Act::Identity:
            if (y != x)
                for (int64_t i = 0; i < n; ++i) y[i] = x[i];
            break;
        case Act::ReLU:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
            break;
        case Act::LeakyReLU:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : alpha * x[i];
            break;
        case Act::Sigmoid:
#pragma omp parallel for schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) {
                float v = x[i];
                // stable on both tails
                y[i] = v >= 0.f ? 1.f / (1.f + std::exp(-v)) : std::exp(v) / (1.f + std::exp(v));
            }
            break;
        case Act::Tanh:
#pragma omp parallel for schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
            break;
    }
}

// dx = dy * f'(.), from x (ReLU family) or y (Sigmoid/Tanh); dx may alias dy.
void activation_backward(float* dx, const float* dy, const float* x, const float* y, int64_t n,
                         Act act, float alpha) {
    switch (act) {
        case Act::Identity:
            if (dx != dy)
                for (int64_t i = 0; i < n; ++i) dx[i] = dy[i];
            break;
        case Act::ReLU:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : 0.f;
            break;
        case Act::LeakyReLU:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : alpha * dy[i];
            break;
        case Act::Sigmoid:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (1.f - y[i]);
            break;
        case Act::Tanh:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (1.f - y[i] * y[i]);
            break;
    }
}

// ---- linear -----------------------------------------------------------------------------------

// x is (N,I), w is (O,I), b is (O) or null, y is (N,O).
void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t N,
                    int64_t I, int64_t O) {
    sgemm(false, true, N, O, I, 1.f, x, I, w, I, 0.f, y, O);
    if (b) {
#pragma omp parallel for schedule(static) if (N * O > kParallelMin)
        for (int64_t n = 0; n < N; ++n)
            for (int64_t o = 0; o < O; ++o) y[n * O + o] += b[o];
    }
}

// dy is (N,O); dx (N,I) overwritten (skipped when null); dw (O,I), db (O) accumulated.
void linear_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* w, int64_t N, int64_t I, int64_t O) {
    if (dx) sgemm(false, false, N, I, O, 1.f, dy, O, w, I, 0.f, dx, I);
    sgemm(true, false, O, I, N, 1.f, dy, O, x, I, 1.f, dw, I);
    if (db) {
        for (int64_t o = 0; o < O; ++o) {
            float s = 0.f;
            for (int64_t n = 0; n < N; ++n) s += dy[n * O + o];
            db[o] += s;
        }
    }
}

}  // namespace cpu
}  // namespace cnnkit
