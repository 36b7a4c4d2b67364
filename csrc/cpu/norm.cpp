// BatchNorm2d on the CPU: per-channel batch statistics (double accumulation in a fixed order),
// running statistics with momentum, eval mode, affine scale/shift.
#include <cmath>

#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {
namespace {

// Sums over a channel's N planes of HW floats in double, in kLanes independent chains (lane l
// takes elements i with i % kLanes == l of each plane, the tail to the first lanes), combined
// in a fixed order: vectorizable without reassociation, and the same at any thread count
// (threads split channels, never a channel's sum). f(i) gives the term for plane offset i.
constexpr int kLanes = 8;

template <class F>
double lane_sum(int64_t N, int64_t plane_stride, int64_t HW, F f) {
    double acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t full = HW - HW % kLanes;
    for (int64_t n = 0; n < N; ++n) {
        const int64_t base = n * plane_stride;
        for (int64_t i = 0; i < full; i += kLanes)
            for (int l = 0; l < kLanes; ++l) acc[l] += f(base + i + l);
        for (int64_t i = full; i < HW; ++i) acc[i - full] += f(base + i);
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace

// x, y are (N,C,HW); gamma/beta (C) or null; save_mean/save_invstd (C) written.
void batchnorm_forward_train(float* y, float* save_mean, float* save_invstd, float* running_mean,
                             float* running_var, const float* x, const float* gamma,
                             const float* beta, int64_t N, int64_t C, int64_t HW, float momentum,
                             float eps) {
    const int64_t M = N * HW;
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
        const float* x0 = x + c * HW;
        const double s =
            lane_sum(N, C * HW, HW, [x0](int64_t i) { return static_cast<double>(x0[i]); });
        const double mean = s / static_cast<double>(M);
        const double ss = lane_sum(N, C * HW, HW, [x0, mean](int64_t i) {
            const double d = x0[i] - mean;
            return d * d;
        });
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
            for (int64_t i = 0; i < HW; ++i) yc[i] = xc[i] * a + bsh;
        }
    }
}

void batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, int64_t N,
                            int64_t C, int64_t HW, float eps) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) {
            const float invstd = 1.f / std::sqrt(running_var[c] + eps);
            const float a = (gamma ? gamma[c] : 1.f) * invstd;
            const float bsh = (beta ? beta[c] : 0.f) - running_mean[c] * a;
            const float* xc = x + (n * C + c) * HW;
            float* yc = y + (n * C + c) * HW;
            for (int64_t i = 0; i < HW; ++i) yc[i] = xc[i] * a + bsh;
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
        const double sdy =
            lane_sum(N, C * HW, HW, [dy0](int64_t i) { return static_cast<double>(dy0[i]); });
        const double sdyx = lane_sum(N, C * HW, HW, [x0, dy0, mean, invstd](int64_t i) {
            return static_cast<double>(dy0[i] * ((x0[i] - mean) * invstd));
        });
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
            for (int64_t i = 0; i < HW; ++i) {
                float xhat = (xc[i] - mean) * invstd;
                dxc[i] = k * (dyc[i] - mdy - xhat * mdyx);
            }
        }
    }
}

}  // namespace cpu
}  // namespace cnnkit
