// Element-wise activations and the linear layer on the GPU (the twins of cpu/activation.cpp):
// ReLU, LeakyReLU, Sigmoid, Tanh, and ELU, SiLU, GELU, ReLU6, Hardswish (cpu/act_math.h)
// forward/backward; linear = GEMM + bias, and its backward with
// the bias gradient summed per output in batch order (no atomics).
#include "cpu/act_math.h"
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kBlock = 256;

__global__ void activation_forward_kernel(float* y, const float* x, int64_t n, Act act,
                                          float alpha) {
    CNN_GRID_LOOP(i, n) {
        const float v = x[i];
        float r = v;
        switch (act) {
            case Act::Identity: r = v; break;
            case Act::ReLU: r = v > 0.f ? v : 0.f; break;
            case Act::LeakyReLU: r = v > 0.f ? v : alpha * v; break;
            case Act::Sigmoid:  // stable on both tails
                r = v >= 0.f ? 1.f / (1.f + expf(-v)) : expf(v) / (1.f + expf(v));
                break;
            case Act::Tanh: r = tanhf(v); break;
            default: r = act_value(act, v, alpha); break;
        }
        y[i] = r;
    }
}

__global__ void activation_backward_kernel(float* dx, const float* dy, const float* x,
                                           const float* y, int64_t n, Act act, float alpha) {
    CNN_GRID_LOOP(i, n) {
        const float d = dy[i];
        float r = d;
        switch (act) {
            case Act::Identity: r = d; break;
            case Act::ReLU: r = x[i] > 0.f ? d : 0.f; break;
            case Act::LeakyReLU: r = x[i] > 0.f ? d : alpha * d; break;
            case Act::Sigmoid: r = d * y[i] * (1.f - y[i]); break;
            case Act::Tanh: r = d * (1.f - y[i] * y[i]); break;
            default: r = act_grad(act, d, x[i], alpha); break;
        }
        dx[i] = r;
    }
}

// y (N,O) += b[o].
__global__ void add_row_bias_kernel(float* __restrict__ y, const float* __restrict__ b, int64_t N,
                                    int64_t O) {
    CNN_GRID_LOOP(i, N * O) { y[i] += b[i % O]; }
}

// db[o] += sum over n of dy[n,o], in n order (one thread per o: coalesced across o).
__global__ void column_sum_kernel(float* __restrict__ db, const float* __restrict__ dy, int64_t N,
                                  int64_t O) {
    CNN_GRID_LOOP(o, O) {
        float s = 0.f;
        for (int64_t n = 0; n < N; ++n) s += dy[n * O + o];
        db[o] += s;
    }
}

}  // namespace

// y, x are (n); y may alias x.
void activation_forward(float* y, const float* x, int64_t n, Act act, float alpha) {
    if (act == Act::Identity && y == x) return;
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), activation_forward_kernel, y, x, n, act,
               alpha);
}

// dx = dy * f'(.), from x (ReLU family) or y (Sigmoid/Tanh); dx may alias dy.
void activation_backward(float* dx, const float* dy, const float* x, const float* y, int64_t n,
                         Act act, float alpha) {
    if (act == Act::Identity && dx == dy) return;
    CNN_LAUNCH(dim3(grid_for(n, kBlock)), dim3(kBlock), activation_backward_kernel, dx, dy, x, y,
               n, act, alpha);
}

// x is (N,I), w is (O,I), b is (O) or null, y is (N,O).
void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t N,
                    int64_t I, int64_t O) {
    sgemm(false, true, N, O, I, 1.f, x, I, w, I, 0.f, y, O);
    if (b)
        CNN_LAUNCH(dim3(grid_for(N * O, kBlock)), dim3(kBlock), add_row_bias_kernel, y, b, N, O);
}

// dy is (N,O); dx (N,I) overwritten (skipped when null); dw (O,I), db (O) accumulated.
void linear_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* w, int64_t N, int64_t I, int64_t O) {
    if (dx) sgemm(false, false, N, I, O, 1.f, dy, O, w, I, 0.f, dx, I);
    sgemm(true, false, O, I, N, 1.f, dy, O, x, I, 1.f, dw, I);
    if (db)
        CNN_LAUNCH(dim3(grid_for(O, kBlock)), dim3(kBlock), column_sum_kernel, db, dy, N, O);
}

}  // namespace cuda
}  // namespace cnnkit
