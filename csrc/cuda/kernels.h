// CUDA kernels: the twins of csrc/cpu/kernels.h, same names, same signatures, same contracts,
// in namespace cnnkit::cuda. Every pointer is a device pointer (labels included); the calls
// queue work on cnnkit's stream and return, except the losses, which copy their scalars back.
// Reductions run in a fixed order (no float atomics), so results are bit-identical run to run.
#pragma once

#include <cstdint>

#include "core/geometry.h"
#include "cpu/kernels.h"  // for cpu::Act

namespace cnnkit {
namespace cuda {

using cpu::Act;

// ---- GEMM (gemm.cu) -----------------------------------------------------------------------
// C = alpha * op(A) * op(B) + beta * C, row-major, as cpu::sgemm: op(A) is (M,K) (A is (K,M)
// when trans_a), op(B) is (K,N) (B is (N,K) when trans_b), C is (M,N) with row stride ldc.
// beta == 0 means C is not read. Deterministic: each C element is summed over k in a fixed
// order (split-K partial sums are added in a fixed order too).
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);

// ---- im2col / col2im (im2col.cu) ----------------------------------------------------------
// x is one image (C,H,W); col is (C*R*S, P*Q) with row stride ldc.
void im2col(float* col, int64_t ldc, const float* x, int64_t C, int64_t H, int64_t W, int64_t R,
            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw);
// dx (C,H,W) overwritten: each pixel gathers the col entries that read it (no atomics).
void col2im(float* dx, const float* col, int64_t ldc, int64_t C, int64_t H, int64_t W, int64_t R,
            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw);

// ---- convolution (conv.cu) ----------------------------------------------------------------
int64_t conv2d_workspace_floats(const ConvGeom& g);
// x is (N,C,H,W), w is (K,C/groups,R,S), b is (K) or null, y is (N,K,P,Q).
void conv2d_forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
                    float* ws);
// dy is (N,K,P,Q), w is (K,C/groups,R,S), dx is (N,C,H,W) (overwritten).
void conv2d_backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g,
                           float* ws);
// dy is (N,K,P,Q), x is (N,C,H,W); dw (K,C/groups,R,S) and db (K, or null) are ACCUMULATED.
void conv2d_backward_weight(float* dw, float* db, const float* dy, const float* x,
                            const ConvGeom& g, float* ws);
// Per-channel bias of an (N,C,HW) activation: y += b[c] (forward), db[c] += sum over n and
// the HW positions of dy (backward, accumulated; a fixed-order block sum, no atomics).
void channel_bias_forward(float* y, const float* b, int64_t N, int64_t C, int64_t HW);
void channel_bias_backward(float* db, const float* dy, int64_t N, int64_t C, int64_t HW);

// ---- pooling (pool.cu) --------------------------------------------------------------------
// x is (N,C,H,W), y and argmax (N,C,P,Q); argmax holds h*W+w of each max (-1: only padding).
void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolGeom& g);
void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolGeom& g);
void avgpool2d_forward(float* y, const float* x, const PoolGeom& g);
void avgpool2d_backward(float* dx, const float* dy, const PoolGeom& g);

// ---- activations and linear (activation.cu) -----------------------------------------------
void activation_forward(float* y, const float* x, int64_t n, Act act, float alpha);
void activation_backward(float* dx, const float* dy, const float* x, const float* y, int64_t n,
                         Act act, float alpha);
// x is (N,I), w is (O,I), b is (O) or null, y is (N,O).
void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t N,
                    int64_t I, int64_t O);
// dx (N,I) overwritten (skipped when null); dw (O,I), db (O) accumulated.
void linear_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* w, int64_t N, int64_t I, int64_t O);

// ---- batch normalisation (norm.cu) --------------------------------------------------------
void batchnorm_forward_train(float* y, float* save_mean, float* save_invstd, float* running_mean,
                             float* running_var, const float* x, const float* gamma,
                             const float* beta, int64_t N, int64_t C, int64_t HW, float momentum,
                             float eps);
void batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, int64_t N,
                            int64_t C, int64_t HW, float eps);
void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* save_mean, const float* save_invstd, const float* gamma,
                        int64_t N, int64_t C, int64_t HW);
// SyncBatchNorm's pieces, as cpu:: (no fused ReLU in batchnorm_apply). host_out / host_center
// are host memory: these two copy the C (2C) double sums back, waiting for the stream.
void batchnorm_channel_sums(double* host_out, const float* x, const double* host_center,
                            int64_t N, int64_t C, int64_t HW);
void batchnorm_apply(float* y, const float* x, const float* gamma, const float* beta,
                     const float* mean, const float* invstd, int64_t N, int64_t C, int64_t HW);
void batchnorm_backward_sums(double* host_out, float* dgamma, float* dbeta, const float* dy,
                             const float* x, const float* save_mean, const float* save_invstd,
                             int64_t N, int64_t C, int64_t HW);
void batchnorm_backward_apply(float* dx, const float* dy, const float* x, const float* save_mean,
                              const float* save_invstd, const float* gamma, const float* coef,
                              int64_t N, int64_t C, int64_t HW);

// ---- merging activations (merge.*): graph nodes Add and Concat ------------------------------
// y (n) += x (n).
void add_into(float* y, const float* x, int64_t n);
// y *= s (n elements).
void scale(float* y, float s, int64_t n);
void fill(float* y, float v, int64_t n);  // y[i] = v (Tensor::fill of a value other than 0)
// dst[o * dst_stride + j] = src[o * src_stride + j] for o < outer, j < len.
void copy_blocks(float* dst, const float* src, int64_t outer, int64_t len, int64_t dst_stride,
                 int64_t src_stride);

// ---- dropout (dropout.cu): the same Philox stream and indexing as the CPU ------------------
void dropout_forward(float* y, float* mask, const float* x, int64_t n, float p, uint64_t seed,
                     uint64_t stream);
void dropout_backward(float* dx, const float* dy, const float* mask, int64_t n);

// Dropout2d: x, y (NC,HW), mask (NC): dropout_forward's mask over NC elements.
void dropout2d_forward(float* y, float* mask, const float* x, int64_t NC, int64_t HW, float p,
                       uint64_t seed, uint64_t stream);
void dropout2d_backward(float* dx, const float* dy, const float* mask, int64_t NC, int64_t HW);

// ---- softmax (softmax.cu): x, y, dx, dy are (outer, C, inner) ----------------------------
void softmax_forward(float* y, const float* x, int64_t outer, int64_t C, int64_t inner);
void softmax_backward(float* dx, const float* dy, const float* y, int64_t outer, int64_t C,
                      int64_t inner);

// ---- adaptive pooling (adaptive_pool.cu): x, dx (NC,H,W), y, dy, argmax (NC,P,Q) ----------
void adaptive_avgpool2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                int64_t P, int64_t Q);
void adaptive_avgpool2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q);
void adaptive_maxpool2d_forward(float* y, int32_t* argmax, const float* x, int64_t NC, int64_t H,
                                int64_t W, int64_t P, int64_t Q);
void adaptive_maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, int64_t NC,
                                 int64_t H, int64_t W, int64_t P, int64_t Q);

// ---- nearest upsampling (upsample.cu): x, dx (NC,H,W), y, dy (NC,P,Q) ----------------------
void upsample_nearest2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                int64_t P, int64_t Q, float sh, float sw);
void upsample_nearest2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q, float sh, float sw);
// Bilinear (PyTorch's upsample_bilinear2d): the scales and taps of cpu/kernels.h.
void upsample_bilinear2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q, float sh, float sw, bool align_corners);
void upsample_bilinear2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                  int64_t P, int64_t Q, float sh, float sw, bool align_corners);

// ---- losses (loss.cu): reduced on the device in a fixed order; the scalars are copied back -
// logits (N,C), labels (N) on the device. Returns the mean loss; *correct (host) the hits.
double softmax_cross_entropy(float* dlogits, int64_t* correct, const float* logits,
                             const int64_t* labels, int64_t N, int64_t C);
double mse_loss(float* dpred, const float* pred, const float* target, int64_t n);

// ---- optimizer updates (optim.cu): the formulas of cpu/optim.cpp ---------------------------
// x (n): how many elements are NaN or +-Inf (the train step's guard against a bad update).
int64_t count_nonfinite(const float* x, int64_t n);
void sgd_step(float* w, float* buf, const float* g, int64_t n, float lr, float momentum,
              float dampening, float weight_decay, bool nesterov, bool first_step);
void adam_step(float* w, float* m, float* v, const float* g, int64_t n, float lr, float beta1,
               float beta2, float eps, float weight_decay, bool decoupled, int64_t step);
void adagrad_step(float* w, float* sum, const float* g, int64_t n, float lr, float lr_decay,
                  float weight_decay, float eps, int64_t step);
void rmsprop_step(float* w, float* sq, float* buf, const float* g, int64_t n, float lr,
                  float alpha, float eps, float weight_decay, float momentum);

}  // namespace cuda
}  // namespace cnnkit
