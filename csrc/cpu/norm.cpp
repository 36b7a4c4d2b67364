// BatchNorm2d on the CPU: per-channel batch statistics (double accumulation in a fixed order),
// running statistics with momentum, eval mode, affine scale/shift.
#include <cmath>
#include <cstdint>

#include "cpu/kernel_set.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

namespace eltwise_avx2 {  // eltwise_avx2.cpp
bool compiled();
void scale_shift(float* y, const float* x, int64_t n, float s, float t, bool relu);
}  // namespace eltwise_avx2

namespace norm_generic {
#include "cpu/norm_impl.h"
}  // namespace norm_generic

namespace norm_avx2 {  // norm_avx2.cpp: the same loops built for AVX2
bool compiled();
double channel_sum(const float* x0, int64_t N, int64_t C, int64_t HW);
double channel_sq(const float* x0, double m, int64_t N, int64_t C, int64_t HW);
void channel_grad_sums(const float* x0, const float* dy0, float mean, float invstd, int64_t N,
                       int64_t C, int64_t HW, double* sdy, double* sdyx);
void dx_plane(float* dxc, const float* dyc, const float* xc, int64_t HW, float k, float mean,
              float invstd, float mdy, float mdyx);
}  // namespace norm_avx2

namespace {

bool avx2() { return use_avx2_or_better() && norm_avx2::compiled(); }

// y = x * a + b over n floats, then ReLU (v > 0 ? v : +0) when relu.
inline void scale_shift(float* y, const float* x, int64_t n, float a, float b, bool relu) {
    if (use_avx2_or_better() && eltwise_avx2::compiled())
        return eltwise_avx2::scale_shift(y, x, n, a, b, relu);
    if (relu) {
        for (int64_t i = 0; i < n; ++i) {
            const float v = x[i] * a + b;
            y[i] = v > 0.f ? v : 0.f;
        }
    } else {
        for (int64_t i = 0; i < n; ++i) y[i] = x[i] * a + b;
    }
}

// Channel c's sums over its N planes (x0 = x + c * HW, planes C * HW apart): of x, of
// (x - m)^2, and of dy and dy * xhat in one pass (norm_impl.h). Shared by the fused kernels and
// SyncBatchNorm's pieces, so both take the same terms in the same order.
double channel_sum(const float* x0, int64_t N, int64_t C, int64_t HW) {
    return avx2() ? norm_avx2::channel_sum(x0, N, C, HW) : norm_generic::channel_sum(x0, N, C, HW);
}

double channel_sq(const float* x0, double m, int64_t N, int64_t C, int64_t HW) {
    return avx2() ? norm_avx2::channel_sq(x0, m, N, C, HW)
                  : norm_generic::channel_sq(x0, m, N, C, HW);
}

void channel_grad_sums(const float* x0, const float* dy0, float mean, float invstd, int64_t N,
                       int64_t C, int64_t HW, double* sdy, double* sdyx) {
    if (avx2()) return norm_avx2::channel_grad_sums(x0, dy0, mean, invstd, N, C, HW, sdy, sdyx);
    norm_generic::channel_grad_sums(x0, dy0, mean, invstd, N, C, HW, sdy, sdyx);
}

void dx_plane(float* dxc, const float* dyc, const float* xc, int64_t HW, float k, float mean,
              float invstd, float mdy, float mdyx) {
    if (avx2()) return norm_avx2::dx_plane(dxc, dyc, xc, HW, k, mean, invstd, mdy, mdyx);
    norm_generic::dx_plane(dxc, dyc, xc, HW, k, mean, invstd, mdy, mdyx);
}

}  // namespace

// x, y are (N,C,HW); gamma/beta (C) or null; save_mean/save_invstd (C) written.
void batchnorm_forward_train(float* y, float* save_mean, float* save_invstd, float* running_mean,
                             float* running_var, const float* x, const float* gamma,
                             const float* beta, int64_t N, int64_t C, int64_t HW, float momentum,
                             float eps, bool relu) {
    const int64_t M = N * HW;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        const float* x0 = x + c * HW;
        const double mean = channel_sum(x0, N, C, HW) / static_cast<double>(M);
        const double ss = channel_sq(x0, mean, N, C, HW);
        const double var = ss / static_cast<double>(M);
        const float invstd = static_cast<float>(1.0 / std::sqrt(var + eps));
        save_mean[c] = static_cast<float>(mean);
        save_invstd[c] = invstd;
        if (running_mean) {
            double unbiased = M > 1 ? ss / static_cast<double>(M - 1) : var;
            running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mean);
            running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
        const float a = (gamma ? gamma[c] : 1.f) * invstd;
        const float bsh = (beta ? beta[c] : 0.f) - static_cast<float>(mean) * a;
        for (int64_t n = 0; n < N; ++n) {
            const float* xc = x + (n * C + c) * HW;
            float* yc = y + (n * C + c) * HW;
            scale_shift(yc, xc, HW, a, bsh, relu);
        }
    }
}

void batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, int64_t N,
                            int64_t C, int64_t HW, float eps, bool relu) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
            const float invstd = 1.f / std::sqrt(running_var[c] + eps);
            const float a = (gamma ? gamma[c] : 1.f) * invstd;
            const float bsh = (beta ? beta[c] : 0.f) - running_mean[c] * a;
            const float* xc = x + (n * C + c) * HW;
            float* yc = y + (n * C + c) * HW;
            scale_shift(yc, xc, HW, a, bsh, relu);
        }
    }
}

// dy, x are (N,C,HW); dx overwritten; dgamma, dbeta (C) accumulated (skipped when null).
void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* save_mean, const float* save_invstd, const float* gamma,
                        int64_t N, int64_t C, int64_t HW) {
    const int64_t M = N * HW;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        const float mean = save_mean[c], invstd = save_invstd[c];
        const float* x0 = x + c * HW;
        const float* dy0 = dy + c * HW;
        double sdy, sdyx;  // both sums in one pass over dy and x
        channel_grad_sums(x0, dy0, mean, invstd, N, C, HW, &sdy, &sdyx);
        if (dgamma) dgamma[c] += static_cast<float>(sdyx);
        if (dbeta) dbeta[c] += static_cast<float>(sdy);
        if (!dx) continue;
        const float g = gamma ? gamma[c] : 1.f;
        const float k = g * invstd;
        const float mdy = static_cast<float>(sdy / M), mdyx = static_cast<float>(sdyx / M);
        for (int64_t n = 0; n < N; ++n) {
            const float* xc = x + (n * C + c) * HW;
            const float* dyc = dy + (n * C + c) * HW;
            float* dxc = dx + (n * C + c) * HW;
            dx_plane(dxc, dyc, xc, HW, k, mean, invstd, mdy, mdyx);
        }
    }
}

// ---- the pieces of a training BatchNorm whose statistics span several processes ------------
// (SyncBatchNorm: the caller sums each piece's output over the processes between the calls).
// Each sum takes its terms in the order batchnorm_forward_train / batchnorm_backward take
// them, so with one process the pieces give those kernels' bits.

void batchnorm_channel_sums(double* out, const float* x, const double* center, int64_t N,
                            int64_t C, int64_t HW) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        const float* x0 = x + c * HW;
        out[c] = center ? channel_sq(x0, center[c], N, C, HW) : channel_sum(x0, N, C, HW);
    }
}

void batchnorm_apply(float* y, const float* x, const float* gamma, const float* beta,
                     const float* mean, const float* invstd, int64_t N, int64_t C, int64_t HW,
                     bool relu) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
            const float a = (gamma ? gamma[c] : 1.f) * invstd[c];
            const float bsh = (beta ? beta[c] : 0.f) - mean[c] * a;
            scale_shift(y + (n * C + c) * HW, x + (n * C + c) * HW, HW, a, bsh, relu);
        }
    }
}

void batchnorm_backward_sums(double* out, float* dgamma, float* dbeta, const float* dy,
                             const float* x, const float* save_mean, const float* save_invstd,
                             int64_t N, int64_t C, int64_t HW) {
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        const float mean = save_mean[c], invstd = save_invstd[c];
        const float* x0 = x + c * HW;
        const float* dy0 = dy + c * HW;
        double sdy, sdyx;
        channel_grad_sums(x0, dy0, mean, invstd, N, C, HW, &sdy, &sdyx);
        if (dgamma) dgamma[c] += static_cast<float>(sdyx);
        if (dbeta) dbeta[c] += static_cast<float>(sdy);
        out[c] = sdy;
        out[C + c] = sdyx;
    }
}

void batchnorm_backward_apply(float* dx, const float* dy, const float* x, const float* save_mean,
                              const float* save_invstd, const float* gamma, const float* coef,
                              int64_t N, int64_t C, int64_t HW) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
            const float mean = save_mean[c], invstd = save_invstd[c];
            const float k = (gamma ? gamma[c] : 1.f) * invstd;
            const float mdy = coef[c], mdyx = coef[C + c];
            const float* xc = x + (n * C + c) * HW;
            const float* dyc = dy + (n * C + c) * HW;
            float* dxc = dx + (n * C + c) * HW;
            dx_plane(dxc, dyc, xc, HW, k, mean, invstd, mdy, mdyx);
        }
    }
}

}  // namespace cpu
}  // namespace cnnkit
