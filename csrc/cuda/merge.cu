// Merging several activations into one (graph nodes Add and Concat) on the GPU: the twins of
// cpu/merge.cpp, one grid-stride element-wise kernel each.
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

__global__ void add_into_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
    CNN_GRID_LOOP(i, n) { y[i] += x[i]; }
}

__global__ void scale_kernel(float* __restrict__ y, float s, int64_t n) {
    CNN_GRID_LOOP(i, n) { y[i] = __fmul_rn(y[i], s); }
}

__global__ void fill_kernel(float* __restrict__ y, float v, int64_t n) {
    CNN_GRID_LOOP(i, n) { y[i] = v; }
}

__global__ void copy_blocks_kernel(float* __restrict__ dst, const float* __restrict__ src,
                                   int64_t outer, int64_t len, int64_t dst_stride,
                                   int64_t src_stride) {
    CNN_GRID_LOOP(i, outer * len) {
        const int64_t o = i / len, j = i - o * len;
        dst[o * dst_stride + j] = src[o * src_stride + j];
    }
}

}  // namespace

// y, x are (n).
void add_into(float* y, const float* x, int64_t n) {
    if (n == 0) return;
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), add_into_kernel, y, x, n);
}

void scale(float* y, float s, int64_t n) {
    if (n == 0) return;
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), scale_kernel, y, s, n);
}

void fill(float* y, float v, int64_t n) {
    if (n == 0) return;
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), fill_kernel, y, v, n);
}

// dst rows of dst_stride, src rows of src_stride; `len` elements of each of `outer` rows.
void copy_blocks(float* dst, const float* src, int64_t outer, int64_t len, int64_t dst_stride,
                 int64_t src_stride) {
    if (outer * len == 0) return;
    CNN_LAUNCH(dim3(grid_for(outer * len, kBlock)), dim3(kBlock), copy_blocks_kernel, dst, src,
               outer, len, dst_stride, src_stride);
}

}  // namespace cuda
}  // namespace cnnkit
