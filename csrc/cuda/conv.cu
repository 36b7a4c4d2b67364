// Conv2d on the GPU (the twin of cpu/conv.cpp): im2col batched over a chunk of images + one
// GEMM per group; backward by GEMM + col2im (input) and GEMM with the column matrix (weight).
// 1x1 stride-1 convolutions skip im2col; depthwise convolutions use direct kernels. Every
// reduction (bias gradient, depthwise weight gradient) is a fixed-shape block tree: no atomics.
// The per-channel bias kernels (conv bias gradient, ConvTranspose2d's bias) are at the end.
#include "cuda/common.cuh"
#include "cuda/im2col.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;
constexpr int kReduceBlock = 256;
// Column-matrix budget per chunk of images (floats, 64 MiB): larger than the CPU's, because one
// big GEMM fills the GPU better than several; chunking depends only on the geometry.
constexpr int64_t kColBudget = int64_t(1) << 24;

int64_t images_per_chunk(const ConvGeom& g) {
    int64_t per_image = g.C * g.R * g.S * g.P * g.Q;
    int64_t nb = per_image > 0 ? kColBudget / per_image : g.N;
    return std::max<int64_t>(1, std::min<int64_t>(nb, g.N));
}

// ---- layout helpers ---------------------------------------------------------------------------

// dy images [n0, n0+nb) (nb,K,PQ) -> t (K, nb*PQ).
__global__ void gather_dy_kernel(float* __restrict__ t, const float* __restrict__ dy, int64_t K,
                                 int64_t nb, int64_t PQ, int64_t n0) {
    CNN_GRID_LOOP(idx, K * nb * PQ) {
        const int64_t j = idx % PQ, r = idx / PQ;
        const int64_t i = r % nb, k = r / nb;
        t[idx] = dy[((n0 + i) * K + k) * PQ + j];
    }
}

// t (K, nb*PQ) -> y images [n0, n0+nb) (nb,K,PQ), adding b[k] when b is given.
__global__ void scatter_y_kernel(float* __restrict__ y, const float* __restrict__ t,
                                 const float* __restrict__ b, int64_t K, int64_t nb, int64_t PQ,
                                 int64_t n0) {
    CNN_GRID_LOOP(idx, nb * K * PQ) {
        const int64_t j = idx % PQ, r = idx / PQ;
        const int64_t k = r % K, i = r / K;
        const float v = t[k * nb * PQ + i * PQ + j];
        y[(n0 + i) * K * PQ + k * PQ + j] = b ? v + b[k] : v;
    }
}

// y (nimg,K,PQ) += b[k].
__global__ void add_bias_kernel(float* __restrict__ y, const float* __restrict__ b, int64_t nimg,
                                int64_t K, int64_t PQ) {
    CNN_GRID_LOOP(idx, nimg * K * PQ) { y[idx] += b[(idx / PQ) % K]; }
}

// db[k] += sum over n, p, q of dy (N,K,PQ): one block per k, double accumulation, fixed tree.
__global__ void bias_grad_kernel(float* __restrict__ db, const float* __restrict__ dy, int64_t N,
                                 int64_t K, int64_t PQ) {
    __shared__ double sm[kReduceBlock];
    const int64_t k = blockIdx.x;
    double s = 0.0;
    for (int64_t idx = threadIdx.x; idx < N * PQ; idx += kReduceBlock)
        s += dy[((idx / PQ) * K + k) * PQ + idx % PQ];
    s = block_sum<kReduceBlock>(s, sm);
    if (threadIdx.x == 0) db[k] += static_cast<float>(s);
}

// ---- depthwise (C == groups): direct kernels ------------------------------------------------

// One thread per output (n,k,p,q), taps in (r, s) order as on the CPU.
__global__ void depthwise_forward_kernel(float* __restrict__ y, const float* __restrict__ x,
                                         const float* __restrict__ w, const float* __restrict__ b,
                                         ConvGeom g) {
    const int64_t mult = g.K / g.C;
    CNN_GRID_LOOP(idx, g.N * g.K * g.P * g.Q) {
        const int64_t q = idx % g.Q;
        int64_t t = idx / g.Q;
        const int64_t p = t % g.P;
        t /= g.P;
        const int64_t k = t % g.K, n = t / g.K;
        const float* xc = x + (n * g.C + k / mult) * g.H * g.W;
        const float* wk = w + k * g.R * g.S;
        float acc = b ? b[k] : 0.f;
        for (int64_t r = 0; r < g.R; ++r) {
            const int64_t h = conv_in_coord(p, r, g.stride_h, g.pad_h, g.dil_h);
            if (h < 0 || h >= g.H) continue;
            for (int64_t s = 0; s < g.S; ++s) {
                const int64_t ww = conv_in_coord(q, s, g.stride_w, g.pad_w, g.dil_w);
                if (ww < 0 || ww >= g.W) continue;
                acc += wk[r * g.S + s] * xc[h * g.W + ww];
            }
        }
        y[idx] = acc;
    }
}

// One thread per input pixel (n,c,h,w), gathering the outputs that read it (no atomics).
__global__ void depthwise_backward_input_kernel(float* __restrict__ dx,
                                                const float* __restrict__ dy,
                                                const float* __restrict__ w, ConvGeom g) {
    const int64_t mult = g.K / g.C;
    CNN_GRID_LOOP(idx, g.N * g.C * g.H * g.W) {
        const int64_t ww = idx % g.W;
        int64_t t = idx / g.W;
        const int64_t h = t % g.H;
        t /= g.H;
        const int64_t c = t % g.C, n = t / g.C;
        float sum = 0.f;
        for (int64_t k = c * mult; k < (c + 1) * mult; ++k) {
            const float* dyk = dy + (n * g.K + k) * g.P * g.Q;
            const float* wk = w + k * g.R * g.S;
            for (int64_t r = 0; r < g.R; ++r) {
                int64_t p;
                if (!conv_out_of_tap<int64_t>(h, r, g.stride_h, g.pad_h, g.dil_h, g.P, p)) continue;
                for (int64_t s = 0; s < g.S; ++s) {
                    int64_t q;
                    if (!conv_out_of_tap<int64_t>(ww, s, g.stride_w, g.pad_w, g.dil_w, g.Q, q))
                        continue;
                    sum += dyk[p * g.Q + q] * wk[r * g.S + s];
                }
            }
        }
        dx[idx] = sum;
    }
}

// dw[k,r,s] += sum over n, p, q of dy[n,k,p,q] * x[n,k/mult,h,w]: one block per (k,r,s).
__global__ void depthwise_backward_weight_kernel(float* __restrict__ dw,
                                                 const float* __restrict__ dy,
                                                 const float* __restrict__ x, ConvGeom g) {
    __shared__ float sm[kReduceBlock];
    const int64_t mult = g.K / g.C;
    const int64_t krs = blockIdx.x;
    const int64_t s = krs % g.S, r = (krs / g.S) % g.R, k = krs / (g.R * g.S);
    const int64_t PQ = g.P * g.Q;
    float acc = 0.f;
    for (int64_t idx = threadIdx.x; idx < g.N * PQ; idx += kReduceBlock) {
        const int64_t n = idx / PQ, j = idx % PQ;
        const int64_t h = conv_in_coord(j / g.Q, r, g.stride_h, g.pad_h, g.dil_h);
        const int64_t ww = conv_in_coord(j % g.Q, s, g.stride_w, g.pad_w, g.dil_w);
        if (h < 0 || h >= g.H || ww < 0 || ww >= g.W) continue;
        acc += dy[(n * g.K + k) * PQ + j] * x[((n * g.C + k / mult) * g.H + h) * g.W + ww];
    }
    acc = block_sum<kReduceBlock>(acc, sm);
    if (threadIdx.x == 0) dw[krs] += acc;
}

}  // namespace

// ---- public entry points --------------------------------------------------------------------

int64_t conv2d_workspace_floats(const ConvGeom& g) {
    if (conv_is_pointwise(g) || conv_is_depthwise(g)) return 0;
    const int64_t cols = images_per_chunk(g) * g.P * g.Q;
    return g.C * g.R * g.S * cols + g.K * cols;
}

// x is (N,C,H,W), w is (K,C/groups,R,S), b is (K) or null, y is (N,K,P,Q).
void conv2d_forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
                    float* ws) {
    const int64_t PQ = g.P * g.Q, HW = g.H * g.W;
    if (conv_is_depthwise(g)) {
        CNN_LAUNCH(dim3(grid_for(g.N * g.K * PQ, kBlock)), dim3(kBlock), depthwise_forward_kernel,
                   y, x, w, b, g);
        return;
    }
    if (conv_is_pointwise(g)) {
        for (int64_t n = 0; n < g.N; ++n)
            sgemm(false, false, g.K, PQ, g.C, 1.f, w, g.C, x + n * g.C * PQ, PQ, 0.f,
                  y + n * g.K * PQ, PQ);
        if (b)
            CNN_LAUNCH(dim3(grid_for(g.N * g.K * PQ, kBlock)), dim3(kBlock), add_bias_kernel, y,
                       b, g.N, g.K, PQ);
        return;
    }
    const int64_t Kg = g.K / g.groups, CRSg = g.C / g.groups * g.R * g.S;
    const int64_t nb_max = images_per_chunk(g);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
        const int64_t nb = std::min(nb_max, g.N - n0), ldc = nb * PQ;
        float* col = ws;
        float* t = ws + g.C * g.R * g.S * ldc;
        im2col_batched(col, ldc, x + n0 * g.C * HW, nb, g.C * HW, g.C, g.H, g.W, g.R, g.S, g.P,
                       g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w);
        float* out = nb == 1 ? y + n0 * g.K * PQ : t;  // one image: write y directly
        for (int64_t gi = 0; gi < g.groups; ++gi)
            sgemm(false, false, Kg, ldc, CRSg, 1.f, w + gi * Kg * CRSg, CRSg,
                  col + gi * CRSg * ldc, ldc, 0.f, out + gi * Kg * ldc, ldc);
        if (nb > 1) {
            CNN_LAUNCH(dim3(grid_for(nb * g.K * PQ, kBlock)), dim3(kBlock), scatter_y_kernel, y, t,
                       b, g.K, nb, PQ, n0);
        } else if (b) {
            CNN_LAUNCH(dim3(grid_for(g.K * PQ, kBlock)), dim3(kBlock), add_bias_kernel,
                       y + n0 * g.K * PQ, b, int64_t(1), g.K, PQ);
        }
    }
}

// dy is (N,K,P,Q), w is (K,C/groups,R,S), dx is (N,C,H,W) (overwritten).
void conv2d_backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g,
                           float* ws) {
    const int64_t PQ = g.P * g.Q, HW = g.H * g.W;
    if (conv_is_depthwise(g)) {
        CNN_LAUNCH(dim3(grid_for(g.N * g.C * HW, kBlock)), dim3(kBlock),
                   depthwise_backward_input_kernel, dx, dy, w, g);
        return;
    }
    if (conv_is_pointwise(g)) {
        for (int64_t n = 0; n < g.N; ++n)
            sgemm(true, false, g.C, HW, g.K, 1.f, w, g.C, dy + n * g.K * PQ, PQ, 0.f,
                  dx + n * g.C * HW, HW);
        return;
    }
    const int64_t Kg = g.K / g.groups, CRSg = g.C / g.groups * g.R * g.S;
    const int64_t nb_max = images_per_chunk(g);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
        const int64_t nb = std::min(nb_max, g.N - n0), ldc = nb * PQ;
        float* col = ws;
        float* t = ws + g.C * g.R * g.S * ldc;
        const float* d = dy + n0 * g.K * PQ;
        if (nb > 1) {
            CNN_LAUNCH(dim3(grid_for(g.K * nb * PQ, kBlock)), dim3(kBlock), gather_dy_kernel, t,
                       dy, g.K, nb, PQ, n0);
            d = t;
        }
        for (int64_t gi = 0; gi < g.groups; ++gi)
            sgemm(true, false, CRSg, ldc, Kg, 1.f, w + gi * Kg * CRSg, CRSg, d + gi * Kg * ldc,
                  ldc, 0.f, col + gi * CRSg * ldc, ldc);
        col2im_batched(dx + n0 * g.C * HW, g.C * HW, col, ldc, nb, g.C, g.H, g.W, g.R, g.S, g.P,
                       g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w);
    }
}

// dy is (N,K,P,Q), x is (N,C,H,W); dw (K,C/groups,R,S) and db (K, or null) accumulated.
void conv2d_backward_weight(float* dw, float* db, const float* dy, const float* x,
                            const ConvGeom& g, float* ws) {
    const int64_t PQ = g.P * g.Q, HW = g.H * g.W;
    if (db) channel_bias_backward(db, dy, g.N, g.K, PQ);
    if (conv_is_depthwise(g)) {
        CNN_LAUNCH(dim3(static_cast<unsigned>(g.K * g.R * g.S)), dim3(kReduceBlock),
                   depthwise_backward_weight_kernel, dw, dy, x, g);
        return;
    }
    if (conv_is_pointwise(g)) {
        for (int64_t n = 0; n < g.N; ++n)
            sgemm(false, true, g.K, g.C, PQ, 1.f, dy + n * g.K * PQ, PQ, x + n * g.C * PQ, PQ,
                  1.f, dw, g.C);
        return;
    }
    const int64_t Kg = g.K / g.groups, CRSg = g.C / g.groups * g.R * g.S;
    const int64_t nb_max = images_per_chunk(g);
    for (int64_t n0 = 0; n0 < g.N; n0 += nb_max) {
        const int64_t nb = std::min(nb_max, g.N - n0), ldc = nb * PQ;
        float* col = ws;
        float* t = ws + g.C * g.R * g.S * ldc;
        im2col_batched(col, ldc, x + n0 * g.C * HW, nb, g.C * HW, g.C, g.H, g.W, g.R, g.S, g.P,
                       g.Q, g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dil_h, g.dil_w);
        const float* d = dy + n0 * g.K * PQ;
        if (nb > 1) {
            CNN_LAUNCH(dim3(grid_for(g.K * nb * PQ, kBlock)), dim3(kBlock), gather_dy_kernel, t,
                       dy, g.K, nb, PQ, n0);
            d = t;
        }
        for (int64_t gi = 0; gi < g.groups; ++gi)
            sgemm(false, true, Kg, CRSg, ldc, 1.f, d + gi * Kg * ldc, ldc, col + gi * CRSg * ldc,
                  ldc, 1.f, dw + gi * Kg * CRSg, CRSg);
    }
}

// y is (N,C,HW): y += b[c].
void channel_bias_forward(float* y, const float* b, int64_t N, int64_t C, int64_t HW) {
    CNN_LAUNCH(dim3(grid_for(N * C * HW, kBlock)), dim3(kBlock), add_bias_kernel, y, b, N, C, HW);
}

// dy is (N,C,HW); db (C) accumulated: one block per channel, a fixed-order tree.
void channel_bias_backward(float* db, const float* dy, int64_t N, int64_t C, int64_t HW) {
    CNN_LAUNCH(dim3(static_cast<unsigned>(C)), dim3(kReduceBlock), bias_grad_kernel, db, dy, N, C,
               HW);
}

}  // namespace cuda
}  // namespace cnnkit
