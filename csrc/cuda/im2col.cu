// im2col / col2im on the GPU (the twins of cpu/im2col.cpp): one thread per column entry for
// im2col; col2im is a gather, one thread per input pixel summing the entries that read it in
// the CPU's (r, s) order, so there are no atomics and the sums match the CPU bit for bit.
// 32-bit index arithmetic whenever every index fits (it does for all but huge chunks).
#include "cuda/common.cuh"
#include "cuda/im2col.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

template <typename I>
__global__ void im2col_kernel(float* __restrict__ col, I ldc, const float* __restrict__ x, I nb,
                              I img_stride, I C, I H, I W, I R, I S, I P, I Q, I sh, I sw, I ph,
                              I pw, I dh, I dw, I total) {
    const I step = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
    for (I idx = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) +
                 static_cast<I>(threadIdx.x);
         idx < total; idx += step) {
        const I q = idx % Q;
        I t = idx / Q;
        const I p = t % P;
        t /= P;
        const I i = t % nb;
        t /= nb;
        const I s = t % S;
        t /= S;
        const I r = t % R;
        const I c = t / R;
        const I h = conv_in_coord<I>(p, r, sh, ph, dh);
        const I w = conv_in_coord<I>(q, s, sw, pw, dw);
        const float v =
            (h >= 0 && h < H && w >= 0 && w < W) ? x[i * img_stride + (c * H + h) * W + w] : 0.f;
        col[((c * R + r) * S + s) * ldc + i * P * Q + p * Q + q] = v;
    }
}

template <typename I>
__global__ void col2im_kernel(float* __restrict__ dx, I img_stride, const float* __restrict__ col,
                              I ldc, I nb, I C, I H, I W, I R, I S, I P, I Q, I sh, I sw, I ph,
                              I pw, I dh, I dw, I total) {
    const I step = static_cast<I>(gridDim.x) * static_cast<I>(blockDim.x);
    for (I idx = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) +
                 static_cast<I>(threadIdx.x);
         idx < total; idx += step) {
        const I w = idx % W;
        I t = idx / W;
        const I h = t % H;
        t /= H;
        const I c = t % C;
        const I i = t / C;
        float sum = 0.f;
        for (I r = 0; r < R; ++r) {
            I p;
            if (!conv_out_of_tap<I>(h, r, sh, ph, dh, P, p)) continue;
            for (I s = 0; s < S; ++s) {
                I q;
                if (!conv_out_of_tap<I>(w, s, sw, pw, dw, Q, q)) continue;
                sum += col[((c * R + r) * S + s) * ldc + i * P * Q + p * Q + q];
            }
        }
        dx[i * img_stride + (c * H + h) * W + w] = sum;
    }
}

// True when every index the kernels form (and the grid-stride step past the end) fits in int32.
bool fits_int32(int64_t total, int64_t col_extent, int64_t img_extent) {
    const int64_t limit = (int64_t(1) << 31) - 1 - max_grid() * kBlock;
    return total < limit && col_extent < limit && img_extent < limit;
}

}  // namespace

void im2col_batched(float* col, int64_t ldc, const float* x, int64_t nb, int64_t img_stride,
                    int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t P, int64_t Q,
                    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
    const int64_t total = C * R * S * nb * P * Q;
    if (total == 0) return;
    const dim3 grid(grid_for(total, kBlock)), block(kBlock);
    if (fits_int32(total, C * R * S * ldc, nb * img_stride)) {
        using I = int32_t;
        CNN_LAUNCH(grid, block, im2col_kernel<I>, col, I(ldc), x, I(nb), I(img_stride), I(C), I(H),
                   I(W), I(R), I(S), I(P), I(Q), I(sh), I(sw), I(ph), I(pw), I(dh), I(dw),
                   I(total));
    } else {
        CNN_LAUNCH(grid, block, im2col_kernel<int64_t>, col, ldc, x, nb, img_stride, C, H, W, R, S,
                   P, Q, sh, sw, ph, pw, dh, dw, total);
    }
}

void col2im_batched(float* dx, int64_t img_stride, const float* col, int64_t ldc, int64_t nb,
                    int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t P, int64_t Q,
                    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
    const int64_t total = nb * C * H * W;
    if (total == 0) return;
    const dim3 grid(grid_for(total, kBlock)), block(kBlock);
    if (fits_int32(total, C * R * S * ldc, nb * img_stride)) {
        using I = int32_t;
        CNN_LAUNCH(grid, block, col2im_kernel<I>, dx, I(img_stride), col, I(ldc), I(nb), I(C),
                   I(H), I(W), I(R), I(S), I(P), I(Q), I(sh), I(sw), I(ph), I(pw), I(dh), I(dw),
                   I(total));
    } else {
        CNN_LAUNCH(grid, block, col2im_kernel<int64_t>, dx, img_stride, col, ldc, nb, C, H, W, R,
                   S, P, Q, sh, sw, ph, pw, dh, dw, total);
    }
}

// x is (C,H,W); col is (C*R*S, P*Q) with row stride ldc.
void im2col(float* col, int64_t ldc, const float* x, int64_t C, int64_t H, int64_t W, int64_t R,
            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw) {
    im2col_batched(col, ldc, x, 1, C * H * W, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw);
}

// col is (C*R*S, P*Q) with row stride ldc; dx is (C,H,W), overwritten.
void col2im(float* dx, const float* col, int64_t ldc, int64_t C, int64_t H, int64_t W, int64_t R,
            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw) {
    col2im_batched(dx, C * H * W, col, ldc, 1, C, H, W, R, S, P, Q, sh, sw, ph, pw, dh, dw);
}

}  // namespace cuda
}  // namespace cnnkit
