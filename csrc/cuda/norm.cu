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

// x, y are (N,C,HW): block c handles channel c.
__global__ void __launch_bounds__(kBlock)
    bn_forward_train_kernel(float* __restrict__ y, float* __restrict__ save_mean,
                            float* __restrict__ save_invstd, float* __restrict__ running_mean,
                            float* __restrict__ running_var, const float* __restrict__ x,
                            const float* __restrict__ gamma, const float* __restrict__ beta,
                            int64_t N, int64_t C, int64_t HW, float momentum, float eps) {
    __shared__ double sm[kBlock];
    const int64_t c = blockIdx.x, M = N * HW;
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < M; j += kBlock) s += x[((j / HW) * C + c) * HW + j % HW];
    const double mean = block_sum<kBlock>(s, sm) / static_cast<double>(M);
    double ss = 0.0;
    for (int64_t j = threadIdx.x; j < M; j += kBlock) {
        const double d = x[((j / HW) * C + c) * HW + j % HW] - mean;
        ss += d * d;
    }
    ss = block_sum<kBlock>(ss, sm);
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
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t j = threadIdx.x; j < M; j += kBlock) {
        const int64_t i = ((j / HW) * C + c) * HW + j % HW;
        sdy += dy[i];
        sdyx += dy[i] * ((x[i] - mean) * invstd);
    }
    sdy = block_sum<kBlock>(sdy, sm);
    sdyx = block_sum<kBlock>(sdyx, sm);
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

}  // namespace cuda
}  // namespace cnnkit
