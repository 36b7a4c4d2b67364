// Losses on the GPU (the twins of cpu/loss.cpp): softmax cross-entropy from logits (stable,
// mean over the batch) and mean squared error. Per-row / per-block partial sums in double, then
// one fixed-shape tree: deterministic. Only the two scalars (loss, correct) come back.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kRowBlock = 32;     // threads per row of logits
constexpr int kReduceBlock = 256;
constexpr int64_t kMseMaxBlocks = 256;

struct LossOut {
    double loss;
    long long correct;
};

// One block per row n: max/argmax (first maximum, as the CPU), log-sum-exp in double, the row's
// loss and hit, and dlogits[n] = (softmax - onehot) / N when dlogits is given.
__global__ void __launch_bounds__(kRowBlock)
    softmax_ce_rows_kernel(float* __restrict__ dlogits, double* __restrict__ row_loss,
                           int* __restrict__ row_hit, const float* __restrict__ logits,
                           const int64_t* __restrict__ labels, int64_t N, int64_t C, float invN) {
    __shared__ float sbest[kRowBlock];
    __shared__ int64_t sarg[kRowBlock];
    __shared__ double ssum[kRowBlock];
    const int tid = threadIdx.x;
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float* z = logits + n * C;
        float best = 0.f;
        int64_t arg = -1;
        for (int64_t c = tid; c < C; c += kRowBlock)
            if (arg < 0 || z[c] > best) {
                best = z[c];
                arg = c;
            }
        sbest[tid] = best;
        sarg[tid] = arg;
        __syncthreads();
        for (int s = kRowBlock / 2; s > 0; s >>= 1) {
            if (tid < s) {
                const float b2 = sbest[tid + s];
                const int64_t a2 = sarg[tid + s];
                const int64_t a1 = sarg[tid];
                if (a2 >= 0 && (a1 < 0 || b2 > sbest[tid] || (b2 == sbest[tid] && a2 < a1))) {
                    sbest[tid] = b2;
                    sarg[tid] = a2;
                }
            }
            __syncthreads();
        }
        const float zmax = sbest[0];
        const int64_t zarg = sarg[0];
        double sum = 0.0;
        for (int64_t c = tid; c < C; c += kRowBlock) sum += exp(static_cast<double>(z[c] - zmax));
        sum = block_sum<kRowBlock>(sum, ssum);
        const double lse = log(sum) + zmax;
        const int64_t y = labels[n];
        if (tid == 0) {
            row_loss[n] = lse - z[y];
            row_hit[n] = zarg == y ? 1 : 0;
        }
        if (dlogits) {
            float* d = dlogits + n * C;
            for (int64_t c = tid; c < C; c += kRowBlock) {
                // __fmul_rn: never fused with the subtraction, so the rounding is the CPU's
                float v = __fmul_rn(static_cast<float>(exp(static_cast<double>(z[c]) - lse)), invN);
                if (c == y) v -= invN;
                d[c] = v;
            }
        }
        __syncthreads();  // sbest/sarg are rewritten for the next row
    }
}

// out = (sum of row_loss, sum of row_hit) over N rows, one block, fixed tree.
__global__ void __launch_bounds__(kReduceBlock)
    sum_rows_kernel(LossOut* out, const double* __restrict__ row_loss,
                    const int* __restrict__ row_hit, int64_t N) {
    __shared__ double sm[kReduceBlock];
    __shared__ long long si[kReduceBlock];
    double s = 0.0;
    long long h = 0;
    for (int64_t n = threadIdx.x; n < N; n += kReduceBlock) {
        s += row_loss[n];
        h += row_hit[n];
    }
    s = block_sum<kReduceBlock>(s, sm);
    h = block_sum<kReduceBlock>(h, si);
    if (threadIdx.x == 0) {
        out->loss = s;
        out->correct = h;
    }
}

// Per-block partial sums of (pred - target)^2 (double); dpred = k * (pred - target).
__global__ void __launch_bounds__(kReduceBlock)
    mse_partial_kernel(float* __restrict__ dpred, double* __restrict__ partial,
                       const float* __restrict__ pred, const float* __restrict__ target, int64_t n,
                       float k) {
    __shared__ double sm[kReduceBlock];
    double s = 0.0;
    CNN_GRID_LOOP(i, n) {
        const float d = pred[i] - target[i];
        s += static_cast<double>(d) * d;
        if (dpred) dpred[i] = k * d;
    }
    s = block_sum<kReduceBlock>(s, sm);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(kReduceBlock)
    sum_partials_kernel(LossOut* out, const double* __restrict__ partial, int64_t G) {
    __shared__ double sm[kReduceBlock];
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < G; i += kReduceBlock) s += partial[i];
    s = block_sum<kReduceBlock>(s, sm);
    if (threadIdx.x == 0) {
        out->loss = s;
        out->correct = 0;
    }
}

LossOut fetch(const DeviceBuffer& out) {
    LossOut host;
    cuda::memcpy(&host, out.as<void>(), sizeof(LossOut), 1);  // waits for the stream
    return host;
}

}  // namespace

// logits, dlogits are (N,C); labels (N) in [0,C) on the device.
double softmax_cross_entropy(float* dlogits, int64_t* correct, const float* logits,
                             const int64_t* labels, int64_t N, int64_t C) {
    DeviceBuffer row_loss(static_cast<size_t>(N) * sizeof(double));
    DeviceBuffer row_hit(static_cast<size_t>(N) * sizeof(int));
    DeviceBuffer out(sizeof(LossOut));
    const float invN = 1.f / static_cast<float>(N);
    CNN_LAUNCH(dim3(static_cast<unsigned>(std::min<int64_t>(N, max_grid()))), dim3(kRowBlock),
               softmax_ce_rows_kernel, dlogits, row_loss.as<double>(), row_hit.as<int>(), logits,
               labels, N, C, invN);
    CNN_LAUNCH(dim3(1), dim3(kReduceBlock), sum_rows_kernel, out.as<LossOut>(),
               row_loss.as<const double>(), row_hit.as<const int>(), N);
    const LossOut r = fetch(out);
    if (correct) *correct = r.correct;
    return r.loss / static_cast<double>(N);
}

// pred, target, dpred are (n).
double mse_loss(float* dpred, const float* pred, const float* target, int64_t n) {
    // the grid depends on n only (not on the GPU), so the partial sums are always the same
    const int64_t G = std::min<int64_t>(kMseMaxBlocks, ceil_div(n, kReduceBlock));
    DeviceBuffer partial(static_cast<size_t>(G) * sizeof(double));
    DeviceBuffer out(sizeof(LossOut));
    const float k = 2.f / static_cast<float>(n);
    CNN_LAUNCH(dim3(static_cast<unsigned>(G)), dim3(kReduceBlock), mse_partial_kernel, dpred,
               partial.as<double>(), pred, target, n, k);
    CNN_LAUNCH(dim3(1), dim3(kReduceBlock), sum_partials_kernel, out.as<LossOut>(),
               partial.as<const double>(), G);
    return fetch(out).loss / static_cast<double>(n);
}

}  // namespace cuda
}  // namespace cnnkit
