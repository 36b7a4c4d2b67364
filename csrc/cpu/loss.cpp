// Losses on the CPU: softmax cross-entropy from logits (numerically stable, mean over the
// batch) and mean squared error. Sums run in a fixed order (double), so they are deterministic.
#include <cmath>

#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

// logits, dlogits are (N,C); labels (N) in [0,C).
double softmax_cross_entropy(float* dlogits, int64_t* correct, const float* logits,
                             const int64_t* labels, int64_t N, int64_t C) {
    double total = 0.0;
    int64_t ncorrect = 0;
    const float invN = 1.f / static_cast<float>(N);
    for (int64_t n = 0; n < N; ++n) {
        const float* z = logits + n * C;
        float zmax = z[0];
        int64_t arg = 0;
        for (int64_t c = 1; c < C; ++c)
            if (z[c] > zmax) {
                zmax = z[c];
                arg = c;
            }
        double sum = 0.0;
        for (int64_t c = 0; c < C; ++c) sum += std::exp(static_cast<double>(z[c] - zmax));
        const double lse = std::log(sum) + zmax;
        const int64_t y = labels[n];
        total += lse - z[y];
        ncorrect += arg == y;
        if (dlogits) {
            float* d = dlogits + n * C;
            for (int64_t c = 0; c < C; ++c)
                d[c] = static_cast<float>(std::exp(static_cast<double>(z[c]) - lse)) * invN;
            d[y] -= invN;
        }
    }
    if (correct) *correct = ncorrect;
    return total / static_cast<double>(N);
}

// pred, target, dpred are (n).
double mse_loss(float* dpred, const float* pred, const float* target, int64_t n) {
    double total = 0.0;
    const float k = 2.f / static_cast<float>(n);
    for (int64_t i = 0; i < n; ++i) {
        const float d = pred[i] - target[i];
        total += static_cast<double>(d) * d;
        if (dpred) dpred[i] = k * d;
    }
    return total / static_cast<double>(n);
}

}  // namespace cpu
}  // namespace cnnkit
