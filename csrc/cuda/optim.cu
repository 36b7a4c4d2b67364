// Optimizer updates on the GPU over the flat parameter/gradient buffers (the twins of
// cpu/optim.cpp): the same formulas, written the same way, one fused element-wise kernel each.
// Step-dependent scalars (bias corrections, decayed lr) are computed on the host as on the CPU.
#include <algorithm>
#include <cmath>

#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

__global__ void sgd_kernel(float* __restrict__ w, float* __restrict__ buf,
                           const float* __restrict__ g, int64_t n, float lr, float momentum,
                           float dampening, float weight_decay, bool nesterov, bool first_step) {
    CNN_GRID_LOOP(i, n) {
        float d = g[i];
        if (weight_decay != 0.f) d += weight_decay * w[i];
        if (momentum != 0.f) {
            const float b = first_step ? d : momentum * buf[i] + (1.f - dampening) * d;
            buf[i] = b;
            d = nesterov ? d + momentum * b : b;
        }
        w[i] -= lr * d;
    }
}

__global__ void adam_kernel(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v,
                            const float* __restrict__ g, int64_t n, float beta1, float beta2,
                            float eps, float weight_decay, bool decoupled, float step_size,
                            float bc2_sqrt, float decay) {
    CNN_GRID_LOOP(i, n) {
        float d = g[i];
        if (decoupled) {
            w[i] *= decay;
        } else if (weight_decay != 0.f) {
            d += weight_decay * w[i];
        }
        m[i] = beta1 * m[i] + (1.f - beta1) * d;
        v[i] = beta2 * v[i] + (1.f - beta2) * d * d;
        const float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        w[i] -= step_size * m[i] / denom;
    }
}

__global__ void adagrad_kernel(float* __restrict__ w, float* __restrict__ sum,
                               const float* __restrict__ g, int64_t n, float clr,
                               float weight_decay, float eps) {
    CNN_GRID_LOOP(i, n) {
        float d = g[i];
        if (weight_decay != 0.f) d += weight_decay * w[i];
        sum[i] += d * d;
        w[i] -= clr * d / (sqrtf(sum[i]) + eps);
    }
}

__global__ void rmsprop_kernel(float* __restrict__ w, float* __restrict__ sq,
                               float* __restrict__ buf, const float* __restrict__ g, int64_t n,
                               float lr, float alpha, float eps, float weight_decay,
                               float momentum) {
    CNN_GRID_LOOP(i, n) {
        float d = g[i];
        if (weight_decay != 0.f) d += weight_decay * w[i];
        sq[i] = alpha * sq[i] + (1.f - alpha) * d * d;
        const float avg = sqrtf(sq[i]) + eps;
        if (momentum > 0.f) {
            buf[i] = momentum * buf[i] + d / avg;
            w[i] -= lr * buf[i];
        } else {
            w[i] -= lr * d / avg;
        }
    }
}

constexpr int kCountBlock = 256;
constexpr int64_t kCountMaxBlocks = 256;

// Per-block counts of non-finite elements (as doubles: exact far beyond any buffer size), then
// one block sums them: a fixed-shape reduction, as loss.cu's.
__global__ void __launch_bounds__(kCountBlock)
    count_nonfinite_kernel(double* __restrict__ partial, const float* __restrict__ x, int64_t n) {
    __shared__ double sm[kCountBlock];
    double c = 0.0;
    CNN_GRID_LOOP(i, n) {
        const float v = x[i];
        c += v - v == 0.f ? 0.0 : 1.0;  // NaN - NaN and Inf - Inf are NaN: false exactly then
    }
    c = block_sum<kCountBlock>(c, sm);
    if (threadIdx.x == 0) partial[blockIdx.x] = c;
}

__global__ void __launch_bounds__(kCountBlock)
    sum_counts_kernel(double* __restrict__ out, const double* __restrict__ partial, int64_t G) {
    __shared__ double sm[kCountBlock];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < G; i += kCountBlock) s += partial[i];
    s = block_sum<kCountBlock>(s, sm);
    if (threadIdx.x == 0) *out = s;
}

}  // namespace

// w, buf, g are (n).
void sgd_step(float* w, float* buf, const float* g, int64_t n, float lr, float momentum,
              float dampening, float weight_decay, bool nesterov, bool first_step) {
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), sgd_kernel, w, buf, g, n, lr, momentum,
               dampening, weight_decay, nesterov, first_step);
}

// w, m, v, g are (n); step is the 1-based step count after this update.
void adam_step(float* w, float* m, float* v, const float* g, int64_t n, float lr, float beta1,
               float beta2, float eps, float weight_decay, bool decoupled, int64_t step) {
    const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
    const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
    const float step_size = static_cast<float>(lr / bc1);
    const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    const float decay = decoupled ? 1.f - lr * weight_decay : 1.f;
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), adam_kernel, w, m, v, g, n, beta1, beta2,
               eps, weight_decay, decoupled, step_size, bc2_sqrt, decay);
}

void adagrad_step(float* w, float* sum, const float* g, int64_t n, float lr, float lr_decay,
                  float weight_decay, float eps, int64_t step) {
    const float clr = lr / (1.f + static_cast<float>(step - 1) * lr_decay);
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), adagrad_kernel, w, sum, g, n, clr,
               weight_decay, eps);
}

void rmsprop_step(float* w, float* sq, float* buf, const float* g, int64_t n, float lr,
                  float alpha, float eps, float weight_decay, float momentum) {
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), rmsprop_kernel, w, sq, buf, g, n, lr,
               alpha, eps, weight_decay, momentum);
}

// x (n) on the device; only the count comes back.
int64_t count_nonfinite(const float* x, int64_t n) {
    if (n == 0) return 0;
    const int64_t G = std::min<int64_t>(kCountMaxBlocks, ceil_div(n, kCountBlock));
    DeviceBuffer partial(static_cast<size_t>(G) * sizeof(double));
    DeviceBuffer out(sizeof(double));
    CNN_LAUNCH(dim3(static_cast<unsigned>(G)), dim3(kCountBlock), count_nonfinite_kernel,
               partial.as<double>(), x, n);
    CNN_LAUNCH(dim3(1), dim3(kCountBlock), sum_counts_kernel, out.as<double>(),
               partial.as<const double>(), G);
    double host = 0;
    cuda::memcpy(&host, out.as<void>(), sizeof(double), 1);  // waits for the stream
    return static_cast<int64_t>(host);
}

}  // namespace cuda
}  // namespace cnnkit
