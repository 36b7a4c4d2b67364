// Merging several activations into one (graph nodes Add and Concat) on the CPU: an in-place
// sum and a strided block copy. The CUDA twins are in cuda/merge.cu.
#include <algorithm>
#include <cstring>

#include "cpu/kernel_set.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace cpu {

namespace eltwise_avx2 {  // eltwise_avx2.cpp
bool compiled();
void add2(float* y, const float* a, const float* b, int64_t n, bool relu);
}  // namespace eltwise_avx2

// y (n) += x (n).
void add_into(float* y, const float* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale(float* y, float s, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

// y (n) = a + b, then ReLU (v > 0 ? v : +0, as the ReLU kernels) when relu: a residual Add and
// the ReLU after it in one pass.
void add2(float* y, const float* a, const float* b, int64_t n, bool relu) {
    if (use_avx2_or_better() && eltwise_avx2::compiled()) {
        // blocks of whole cache lines per thread, the same bits as the loops below
        constexpr int64_t kBlock = 1 << 13;
        const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > (1 << 15))
        for (int64_t i = 0; i < blocks; ++i) {
            const int64_t o = i * kBlock;
            eltwise_avx2::add2(y + o, a + o, b + o, std::min(kBlock, n - o), relu);
        }
        return;
    }
    if (relu) {
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
        for (int64_t i = 0; i < n; ++i) {
            const float v = a[i] + b[i];
            y[i] = v > 0.f ? v : 0.f;
        }
    } else {
#pragma omp parallel for simd schedule(static) if (n > (1 << 15))
        for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
    }
}

// dst[o * dst_stride + j] = src[o * src_stride + j] for o < outer, j < len: one input's slab of
// a concatenation (forward) or of its gradient (backward).
void copy_blocks(float* dst, const float* src, int64_t outer, int64_t len, int64_t dst_stride,
                 int64_t src_stride) {
#pragma omp parallel for schedule(static) if (outer * len > (1 << 15))
    for (int64_t o = 0; o < outer; ++o)
        std::memcpy(dst + o * dst_stride, src + o * src_stride, sizeof(float) * len);
}

}  // namespace cpu
}  // namespace cnnkit
