// Optimizer updates on the CPU over flat parameter/gradient buffers, with PyTorch's update
// rules (torch.optim.SGD, Adam/AdamW, Adagrad, RMSprop; non-centered, no amsgrad).
#include <cmath>
#include <cstring>

#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;
}

// w, buf, g are (n).
void sgd_step(float* w, float* buf, const float* g, int64_t n, float lr, float momentum,
              float dampening, float weight_decay, bool nesterov, bool first_step) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
        float d = g[i];
        if (weight_decay != 0.f) d += weight_decay * w[i];
        if (momentum != 0.f) {
            float b = first_step ? d : momentum * buf[i] + (1.f - dampening) * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        w[i] -= lr * d;
    }
}

// w, m, v, g are (n); step is the 1-based step count after this update.
void adam_step(float* w, float* m, float* v, const float* g, int64_t n, float lr, float beta1,
               float beta2, float eps, float weight_decay, bool decoupled, int64_t step) {
    const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
    const float step_size = static_cast<float>(lr / bc1);
    const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    const float decay = decoupled ? 1.f - lr * weight_decay : 1.f;
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
        float d = g[i];
        if (decoupled) {
            w[i] *= decay;
        } else if (weight_decay != 0.f) {
            d += weight_decay * w[i];
        }
        m[i] = beta1 * m[i] + (1.f - beta1) * d;
        v[i] = beta2 * v[i] + (1.f - beta2) * d * d;
        const float denom = std::sqrt(v[i]) / bc2_sqrt + eps;
        w[i] -= step_size * m[i] / denom;
    }
}

void adagrad_step(float* w, float* sum, const float* g, int64_t n, float lr, float lr_decay,
                  float weight_decay, float eps, int64_t step) {
    const float clr = lr / (1.f + static_cast<float>(step - 1) * lr_decay);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
        float d = g[i];
        if (weight_decay != 0.f) d += weight_decay * w[i];
        sum[i] += d * d;
        w[i] -= clr * d / (std::sqrt(sum[i]) + eps);
    }
}

void rmsprop_step(float* w, float* sq, float* buf, const float* g, int64_t n, float lr,
                  float alpha, float eps, float weight_decay, float momentum) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
        float d = g[i];
        if (weight_decay != 0.f) d += weight_decay * w[i];
        sq[i] = alpha * sq[i] + (1.f - alpha) * d * d;
        const float avg = std::sqrt(sq[i]) + eps;
        if (momentum > 0.f) {
            buf[i] = momentum * buf[i] + d / avg;
            w[i] -= lr * buf[i];
        } else {
            w[i] -= lr * d / avg;
        }
    }
}

// NaN and +-Inf are the floats whose exponent bits are all ones: a test on the bits, which
// vectorises (std::isfinite did not, and this check runs on every input batch).
int64_t count_nonfinite(const float* x, int64_t n) {
    int64_t bad = 0;
#pragma omp parallel for reduction(+ : bad) schedule(static) if (n > (1 << 18))
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, x + i, sizeof u);
        bad += (u & 0x7f800000u) == 0x7f800000u ? 1 : 0;
    }
    return bad;
}

}  // namespace cpu
}  // namespace cnnkit
