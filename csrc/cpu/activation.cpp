// Element-wise activations on the CPU: ReLU, LeakyReLU, Sigmoid, Tanh, ELU, SiLU, GELU (exact and
// tanh), ReLU6, Hardswish (forward and backward).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/runtime.h"
#include "cpu/kernel_set.h"
#include "cpu/act_math.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

// ---- interface to eltwise_avx2.cpp (compiled with -mavx2 -mfma) ------------------------------

namespace eltwise_avx2 {
bool compiled();
void relu_forward(float* y, const float* x, int64_t n);
void leaky_relu_forward(float* y, const float* x, int64_t n, float alpha);
void relu_backward(float* dx, const float* dy, const float* x, int64_t n);
void leaky_relu_backward(float* dx, const float* dy, const float* x, int64_t n, float alpha);
}  // namespace eltwise_avx2

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // below this, threads cost more than they save
// ReLU-family work is a few cycles per cache line, so fork/join needs a larger region to pay.
constexpr int64_t kParallelMinCheap = 1 << 17;
constexpr int64_t kBlock = 1 << 13;  // elements per OpenMP work item of the ReLU family

// AVX2 bodies for the "avx2" and "avx512" kernel sets (cpu/kernel_set.h).
bool use_avx2() { return use_avx2_or_better(); }

// fn(i, m) over [0, n) in blocks of kBlock; every element is independent, so the split does not
// change any result.
template <typename Fn>
void for_blocks(int64_t n, Fn fn) {
    const int64_t nb = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > kParallelMinCheap)
    for (int64_t b = 0; b < nb; ++b) fn(b * kBlock, std::min(kBlock, n - b * kBlock));
}

// c ? a : b on the bits. GCC moves a multiply in `c ? a : alpha * a` into a branch (it may
// trap) and then cannot vectorise the loop; a bitwise select keeps it branch-free.
inline float select_bits(bool c, float a, float b) {
    uint32_t ua, ub;
    std::memcpy(&ua, &a, sizeof ua);
    std::memcpy(&ub, &b, sizeof ub);
    const uint32_t m = c ? ~0u : 0u;
    const uint32_t r = (ua & m) | (ub & ~m);
    float f;
    std::memcpy(&f, &r, sizeof f);
    return f;
}

// Portable bodies, written so that GCC vectorises them (every operand is loaded
// unconditionally); the results are those of the branchy form.
void relu_forward(float* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        y[i] = v > 0.f ? v : 0.f;
    }
}
void leaky_relu_forward(float* y, const float* x, int64_t n, float alpha) {
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        y[i] = select_bits(v > 0.f, v, alpha * v);
    }
}
void relu_backward(float* dx, const float* dy, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const float g = dy[i];
        dx[i] = x[i] > 0.f ? g : 0.f;
    }
}
void leaky_relu_backward(float* dx, const float* dy, const float* x, int64_t n, float alpha) {
    for (int64_t i = 0; i < n; ++i) dx[i] = select_bits(x[i] > 0.f, dy[i], alpha * dy[i]);
}

}  // namespace

// y, x are (n); y may alias x.
void activation_forward(float* y, const float* x, int64_t n, Act act, float alpha) {
    const bool avx2 = use_avx2();
    switch (act) {
        case Act::Identity:
            if (y != x)
                for (int64_t i = 0; i < n; ++i) y[i] = x[i];
            break;
        case Act::ReLU:
            for_blocks(n, [&](int64_t i, int64_t m) {
                if (avx2)
                    eltwise_avx2::relu_forward(y + i, x + i, m);
                else
                    relu_forward(y + i, x + i, m);
            });
            break;
        case Act::LeakyReLU:
            for_blocks(n, [&](int64_t i, int64_t m) {
                if (avx2)
                    eltwise_avx2::leaky_relu_forward(y + i, x + i, m, alpha);
                else
                    leaky_relu_forward(y + i, x + i, m, alpha);
            });
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
        case Act::ELU:
        case Act::SiLU:
        case Act::GELU:
        case Act::GELUTanh:
        case Act::ReLU6:
        case Act::Hardswish:
#pragma omp parallel for schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) y[i] = act_value(act, x[i], alpha);
            break;
    }
}

// dx = dy * f'(.), from x (ReLU family) or y (Sigmoid/Tanh); dx may alias dy.
void activation_backward(float* dx, const float* dy, const float* x, const float* y, int64_t n,
                         Act act, float alpha) {
    const bool avx2 = use_avx2();
    switch (act) {
        case Act::Identity:
            if (dx != dy)
                for (int64_t i = 0; i < n; ++i) dx[i] = dy[i];
            break;
        case Act::ReLU:
            for_blocks(n, [&](int64_t i, int64_t m) {
                if (avx2)
                    eltwise_avx2::relu_backward(dx + i, dy + i, x + i, m);
                else
                    relu_backward(dx + i, dy + i, x + i, m);
            });
            break;
        case Act::LeakyReLU:
            for_blocks(n, [&](int64_t i, int64_t m) {
                if (avx2)
                    eltwise_avx2::leaky_relu_backward(dx + i, dy + i, x + i, m, alpha);
                else
                    leaky_relu_backward(dx + i, dy + i, x + i, m, alpha);
            });
            break;
        case Act::Sigmoid:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * y[i] * (1.f - y[i]);
            break;
        case Act::Tanh:
#pragma omp parallel for simd schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (1.f - y[i] * y[i]);
            break;
        case Act::ELU:
        case Act::SiLU:
        case Act::GELU:
        case Act::GELUTanh:
        case Act::ReLU6:
        case Act::Hardswish:
#pragma omp parallel for schedule(static) if (n > kParallelMin)
            for (int64_t i = 0; i < n; ++i) dx[i] = act_grad(act, dy[i], x[i], alpha);
            break;
    }
}

// ---- linear -----------------------------------------------------------------------------------

// x is (N,I), w is (O,I), b is (O) or null, y is (N,O).
void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t N,
                    int64_t I, int64_t O) {
    // The bias is added in the GEMM's write-back (same bits as a pass over y afterwards).
    sgemm(false, true, N, O, I, 1.f, x, I, w, I, 0.f, y, O, b);
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
