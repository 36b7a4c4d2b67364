// BatchNorm2d on the GPU (the twin of cpu/norm.cpp): one block per channel; the per-channel
// sums accumulate in double per thread and combine in a fixed-shape tree, so statistics and
// gradients are bit-identical run to run. Running statistics with momentum (unbiased
// variance, as PyTorch); eval mode is element-wise.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

// Channel c's sums over the block (every thread its strided share, then block_sum's fixed
// tree): of x, or of (x - center)^2; and of dy and dy * xhat. Shared by the fused kernels and
// SyncBatchNorm's pieces, so both take the same terms in the same order.
__device__ double channel_sum(const float* __restrict__ x, int64_t c, int64_t N, int64_t C,
                              int64_t HW, bool centered, double center, double* sm) {
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < N * HW; j += kBlock) {
        const float v = x[((j / HW) * C + c) * HW + j % HW];
        if (centered) {
            const double d = v - center;
            s += d * d;
        } else {
            s += v;
        }
    }
    return block_sum<kBlock>(s, sm);
}

__device__ void channel_grad_sums(const float* __restrict__ dy, const float* __restrict__ x,
                                  int64_t c, int64_t N, int64_t C, int64_t HW, float mean,
                                  float invstd, double* sm, double* sdy_out, double* sdyx_out) {
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t j = threadIdx.x; j < N * HW; j += kBlock) {
        const int64_t i = ((j / HW) * C + c) * HW + j % HW;
        sdy += dy[i];
        sdyx += dy[i] * ((x[i] - mean) * invstd);
    }
    *sdy_out = block_sum<kBlock>(sdy, sm);
    *sdyx_out = block_sum<kBlock>(sdyx, sm);
}

// x, y are (N,C,HW): block c handles channel c.
__global__ void __launch_bounds__(kBlock)
    bn_forward_train_kernel(float* __restrict__ y, float* __restrict__ save_mean,
                            float* __restrict__ save_invstd, float* __restrict__ running_mean,
                            float* __restrict__ running_var, const float* __restrict__ x,
                            const float* __restrict__ gamma, const float* __restrict__ beta,
                            int64_t N, int64_t C, int64_t HW, float momentum, float eps) {
    __shared__ double sm[kBlock];
    const int64_t c = blockIdx.x, M = N * HW;
    const double mean = channel_sum(x, c, N, C, HW, false, 0.0, sm) / static_cast<double>(M);
    const double ss = channel_sum(x, c, N, C, HW, true, mean, sm);
    const double var = ss / static_cast<double>(M);
    const float invstd = static_cast<float>(1.0 / sqrt(var + eps));
    if (threadIdx.x == 0) {
        save_mean[c] = static_cast<float>(mean);
        save_invstd[c] = invstd;
        if (running_mean) {
            const double unbiased = M > 1 ? ss / static_cast<double>(M - 1) : var;
            running_mean[c] =
                static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mean);
            running_var[c] =
                static_cast<float>((1.0 - momentum) * running_var[c] + momentum * unbiased);
        }
    }
    const float a = (gamma ? gamma[c] : 1.f) * invstd;
    const float bsh = (beta ? beta[c] : 0.f) - static_cast<float>(mean) * a;
    for (int64_t j = threadIdx.x; j < M; j += kBlock) {
        const int64_t i = ((j / HW) * C + c) * HW + j % HW;
        y[i] = x[i] * a + bsh;
    }
}

__global__ void bn_forward_eval_kernel(float* __restrict__ y, const float* __restrict__ x,
                                       const float* __restrict__ gamma,
                                       const float* __restrict__ beta,
                                       const float* __restrict__ running_mean,
                                       const float* __restrict__ running_var, int64_t N, int64_t C,
                                       int64_t HW, float eps) {
    CNN_GRID_LOOP(i, N * C * HW) {
        const int64_t c = (i / HW) % C;
        const float invstd = 1.f / sqrtf(running_var[c] + eps);
        const float a = (gamma ? gamma[c] : 1.f) * invstd;
        const float bsh = (beta ? beta[c] : 0.f) - running_mean[c] * a;
        y[i] = x[i] * a + bsh;
    }
}

// dy, x are (N,C,HW); dx overwritten (when given); dgamma, dbeta accumulated (when given).
__global__ void __launch_bounds__(kBlock)
    bn_backward_kernel(float* __restrict__ dx, float* __restrict__ dgamma,
                       float* __restrict__ dbeta, const float* __restrict__ dy,
                       const float* __restrict__ x, const float* __restrict__ save_mean,
                       const float* __restrict__ save_invstd, const float* __restrict__ gamma,
                       int64_t N, int64_t C, int64_t HW) {
    __shared__ double sm[kBlock];
    const int64_t c = blockIdx.x, M = N * HW;
    const float mean = save_mean[c], invstd = save_invstd[c];
    double sdy, sdyx;
    channel_grad_sums(dy, x, c, N, C, HW, mean, invstd, sm, &sdy, &sdyx);
    if (threadIdx.x == 0) {
        if (dgamma) dgamma[c] += static_cast<float>(sdyx);
        if (dbeta) dbeta[c] += static_cast<float>(sdy);
    }
    if (!dx) return;
    const float k = (gamma ? gamma[c] : 1.f) * invstd;
    const float mdy = static_cast<float>(sdy / M), mdyx = static_cast<float>(sdyx / M);
    for (int64_t j = threadIdx.x; j < M; j += kBlock) {
        const int64_t i = ((j / HW) * C + c) * HW + j % HW;
        const float xhat = (x[i] - mean) * invstd;
        dx[i] = k * (dy[i] - mdy - xhat * mdyx);
    }
}

// ---- the pieces of SyncBatchNorm's training pass (each sum as the kernels above take it) ----

// out[c] = sum over channel c of x, or of (x - center[c])^2 when center is given.
__global__ void __launch_bounds__(kBlock)
    bn_channel_sums_kernel(double* __restrict__ out, const float* __restrict__ x,
                           const double* __restrict__ center, int64_t N, int64_t C, int64_t HW) {
    __shared__ double sm[kBlock];
    const int64_t c = blockIdx.x;
    const double s = channel_sum(x, c, N, C, HW, center != nullptr, center ? center[c] : 0.0, sm);
    if (threadIdx.x == 0) out[c] = s;
}

__global__ void bn_apply_kernel(float* __restrict__ y, const float* __restrict__ x,
                                const float* __restrict__ gamma, const float* __restrict__ beta,
                                const float* __restrict__ mean, const float* __restrict__ invstd,
                                int64_t N, int64_t C, int64_t HW) {
    CNN_GRID_LOOP(i, N * C * HW) {
        const int64_t c = (i / HW) % C;
        const float a = (gamma ? gamma[c] : 1.f) * invstd[c];
        const float bsh = (beta ? beta[c] : 0.f) - mean[c] * a;
        y[i] = x[i] * a + bsh;
    }
}

__global__ void __launch_bounds__(kBlock)
    bn_backward_sums_kernel(double* __restrict__ out, float* __restrict__ dgamma,
                            float* __restrict__ dbeta, const float* __restrict__ dy,
                            const float* __restrict__ x, const float* __restrict__ save_mean,
                            const float* __restrict__ save_invstd, int64_t N, int64_t C,
                            int64_t HW) {
    __shared__ double sm[kBlock];
    const int64_t c = blockIdx.x;
    const float mean = save_mean[c], invstd = save_invstd[c];
    double sdy, sdyx;
    channel_grad_sums(dy, x, c, N, C, HW, mean, invstd, sm, &sdy, &sdyx);
    if (threadIdx.x == 0) {
        if (dgamma) dgamma[c] += static_cast<float>(sdyx);
        if (dbeta) dbeta[c] += static_cast<float>(sdy);
        out[c] = sdy;
        out[C + c] = sdyx;
    }
}

__global__ void bn_backward_apply_kernel(float* __restrict__ dx, const float* __restrict__ dy,
                                         const float* __restrict__ x,
                                         const float* __restrict__ save_mean,
                                         const float* __restrict__ save_invstd,
                                         const float* __restrict__ gamma,
                                         const float* __restrict__ coef, int64_t N, int64_t C,
                                         int64_t HW) {
    CNN_GRID_LOOP(i, N * C * HW) {
        const int64_t c = (i / HW) % C;
        const float mean = save_mean[c], invstd = save_invstd[c];
        const float k = (gamma ? gamma[c] : 1.f) * invstd;
        const float xhat = (x[i] - mean) * invstd;
        dx[i] = k * (dy[i] - coef[c] - xhat * coef[C + c]);
    }
}

}  // namespace

void batchnorm_forward_train(float* y, float* save_mean, float* save_invstd, float* running_mean,
                             float* running_var, const float* x, const float* gamma,
                             const float* beta, int64_t N, int64_t C, int64_t HW, float momentum,
                             float eps) {
    CNN_LAUNCH(dim3(static_cast<unsigned>(C)), dim3(kBlock), bn_forward_train_kernel, y,
               save_mean, save_invstd, running_mean, running_var, x, gamma, beta, N, C, HW,
               momentum, eps);
}

void batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, int64_t N,
                            int64_t C, int64_t HW, float eps) {
    CNN_LAUNCH(dim3(grid_for(N * C * HW, kBlock)), dim3(kBlock), bn_forward_eval_kernel, y, x,
               gamma, beta, running_mean, running_var, N, C, HW, eps);
}

void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* save_mean, const float* save_invstd, const float* gamma,
                        int64_t N, int64_t C, int64_t HW) {
    CNN_LAUNCH(dim3(static_cast<unsigned>(C)), dim3(kBlock), bn_backward_kernel, dx, dgamma, dbeta,
               dy, x, save_mean, save_invstd, gamma, N, C, HW);
}

void batchnorm_channel_sums(double* host_out, const float* x, const double* host_center,
                            int64_t N, int64_t C, int64_t HW) {
    const size_t bytes = static_cast<size_t>(C) * sizeof(double);
    DeviceBuffer out(bytes), center(host_center ? bytes : 0);
    if (host_center) memcpy(center.as<double>(), host_center, bytes, 0);
    CNN_LAUNCH(dim3(static_cast<unsigned>(C)), dim3(kBlock), bn_channel_sums_kernel,
               out.as<double>(), x, host_center ? center.as<const double>() : nullptr, N, C, HW);
    memcpy(host_out, out.as<double>(), bytes, 1);
}

void batchnorm_apply(float* y, const float* x, const float* gamma, const float* beta,
                     const float* mean, const float* invstd, int64_t N, int64_t C, int64_t HW) {
    CNN_LAUNCH(dim3(grid_for(N * C * HW, kBlock)), dim3(kBlock), bn_apply_kernel, y, x, gamma,
               beta, mean, invstd, N, C, HW);
}

void batchnorm_backward_sums(double* host_out, float* dgamma, float* dbeta, const float* dy,
                             const float* x, const float* save_mean, const float* save_invstd,
                             int64_t N, int64_t C, int64_t HW) {
    const size_t bytes = 2 * static_cast<size_t>(C) * sizeof(double);
    DeviceBuffer out(bytes);
    CNN_LAUNCH(dim3(static_cast<unsigned>(C)), dim3(kBlock), bn_backward_sums_kernel,
               out.as<double>(), dgamma, dbeta, dy, x, save_mean, save_invstd, N, C, HW);
    memcpy(host_out, out.as<double>(), bytes, 1);
}

void batchnorm_backward_apply(float* dx, const float* dy, const float* x, const float* save_mean,
                              const float* save_invstd, const float* gamma, const float* coef,
                              int64_t N, int64_t C, int64_t HW) {
    CNN_LAUNCH(dim3(grid_for(N * C * HW, kBlock)), dim3(kBlock), bn_backward_apply_kernel, dx,
               dy, x, save_mean, save_invstd, gamma, coef, N, C, HW);
}

}  // namespace cuda
}  // namespace cnnkit
