// CPU kernels (OpenMP; AVX2/FMA where it pays). Raw pointers and sizes: outputs first, then
// const inputs, then sizes. The same functions exist in cnnkit::cuda with the same signatures.
#pragma once

#include <cstdint>

#include "core/geometry.h"
#include "cpu/gemm.h"

namespace cnnkit {
namespace cpu {

// ---- im2col / col2im --------------------------------------------------------------------
// x is one image (C,H,W); col is (C*R*S, P*Q) with row stride ldc (>= P*Q, so several images
// can sit side by side in one column matrix). Out-of-image taps read as zero.
void im2col(float* col, int64_t ldc, const float* x, int64_t C, int64_t H, int64_t W, int64_t R,
            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw);
// Inverse scatter-add: dx (C,H,W) = sum of col entries landing on each pixel (dx overwritten).
void col2im(float* dx, const float* col, int64_t ldc, int64_t C, int64_t H, int64_t W, int64_t R,
            int64_t S, int64_t P, int64_t Q, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
            int64_t dh, int64_t dw);

// ---- convolution ------------------------------------------------------------------------
// Scratch floats the three conv kernels need for geometry g (caller provides `ws`).
int64_t conv2d_workspace_floats(const ConvGeom& g);
// x is (N,C,H,W), w is (K,C/groups,R,S), b is (K) or null, y is (N,K,P,Q).
// relu: y = max(conv + b, 0), fused into the output pass where the kernel allows (CPU only).
void conv2d_forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
                    float* ws, bool relu = false);
// conv2d_forward with output channel k's weights times wscale[k] (a BatchNorm folded into the
// convolution): the direct path scales them as it packs them, the others copy the scaled
// weights into wfold (K * C/groups * R * S floats) first; the same bits either way.
void conv2d_forward_scaled(float* y, const float* x, const float* w, const float* wscale,
                           const float* b, const ConvGeom& g, float* ws, bool relu, float* wfold);
// dy is (N,K,P,Q), w is (K,C/groups,R,S), dx is (N,C,H,W) (overwritten).
void conv2d_backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g,
                           float* ws);
// dy is (N,K,P,Q), x is (N,C,H,W); dw (K,C/groups,R,S) and db (K, or null) are ACCUMULATED.
void conv2d_backward_weight(float* dw, float* db, const float* dy, const float* x,
                            const ConvGeom& g, float* ws);
// Per-channel bias of an (N,C,HW) activation: y += b[c] (forward), db[c] += sum over n and
// the HW positions of dy (backward, accumulated; conv2d_backward_weight's db).
void channel_bias_forward(float* y, const float* b, int64_t N, int64_t C, int64_t HW);
void channel_bias_backward(float* db, const float* dy, int64_t N, int64_t C, int64_t HW);

// ---- pooling ----------------------------------------------------------------------------
// x is (N,C,H,W), y is (N,C,P,Q); argmax (N,C,P,Q) holds the flat h*W+w index of each max
// (-1 when the window covers only padding).
void maxpool2d_forward(float* y, int32_t* argmax, const float* x, const PoolGeom& g);
void maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, const PoolGeom& g);
void avgpool2d_forward(float* y, const float* x, const PoolGeom& g);
void avgpool2d_backward(float* dx, const float* dy, const PoolGeom& g);

// ---- activations ------------------------------------------------------------------------
// ELU uses alpha; GELU is the exact erf form, GELUTanh torch's approximate="tanh".
enum class Act {
    Identity = 0, ReLU = 1, LeakyReLU = 2, Sigmoid = 3, Tanh = 4,
    ELU = 5, SiLU = 6, GELU = 7, GELUTanh = 8, ReLU6 = 9, Hardswish = 10
};
// y, x are (n); y may alias x.
void activation_forward(float* y, const float* x, int64_t n, Act act, float alpha);
// dx = dy * f'(.) using x (ReLU/LeakyReLU and the new ones) or y (Sigmoid/Tanh); dx may alias dy.
void activation_backward(float* dx, const float* dy, const float* x, const float* y, int64_t n,
                         Act act, float alpha);

// ---- softmax (softmax.cpp) ----------------------------------------------------------------
// x, y are (outer, C, inner): softmax over C for each (outer, inner), max-subtracted.
void softmax_forward(float* y, const float* x, int64_t outer, int64_t C, int64_t inner);
// dx = y * (dy - sum_c dy*y) (overwritten); y is the forward output.
void softmax_backward(float* dx, const float* dy, const float* y, int64_t outer, int64_t C,
                      int64_t inner);

// ---- adaptive pooling (adaptive_pool.cpp) -------------------------------------------------
// x is (NC,H,W), y is (NC,P,Q); bin (i,j) covers rows [floor(iH/P), ceil((i+1)H/P)) and the
// same for columns (PyTorch). argmax (NC,P,Q) holds the flat h*W+w index of each max.
void adaptive_avgpool2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                int64_t P, int64_t Q);
// dx (NC,H,W) overwritten: each pixel gathers dy/area of the bins that cover it.
void adaptive_avgpool2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q);
void adaptive_maxpool2d_forward(float* y, int32_t* argmax, const float* x, int64_t NC, int64_t H,
                                int64_t W, int64_t P, int64_t Q);
// dx (NC,H,W) overwritten: each pixel gathers dy of the bins whose argmax it is.
void adaptive_maxpool2d_backward(float* dx, const float* dy, const int32_t* argmax, int64_t NC,
                                 int64_t H, int64_t W, int64_t P, int64_t Q);

// ---- nearest upsampling (upsample.cpp) ----------------------------------------------------
// x is (NC,H,W), y is (NC,P,Q); source row of output row p is min(floor(p*sh), H-1) with
// sh = float(1/scale_factor) (PyTorch's nearest), columns alike.
void upsample_nearest2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                int64_t P, int64_t Q, float sh, float sw);
// dx (NC,H,W) overwritten: each pixel gathers the dy entries copied from it.
void upsample_nearest2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q, float sh, float sw);

// ---- bilinear upsampling (upsample.cpp) ---------------------------------------------------
// x is (NC,H,W), y is (NC,P,Q): PyTorch's upsample_bilinear2d. sh, sw: its scales,
// (H-1)/(P-1) (0 when P == 1) with align_corners, else float(1/scale_factor) or H/P; the taps
// are linear_tap (core/resample.h).
void upsample_bilinear2d_forward(float* y, const float* x, int64_t NC, int64_t H, int64_t W,
                                 int64_t P, int64_t Q, float sh, float sw, bool align_corners);
// dx (NC,H,W) overwritten: each pixel gathers the dy entries that read it, times their weights.
void upsample_bilinear2d_backward(float* dx, const float* dy, int64_t NC, int64_t H, int64_t W,
                                  int64_t P, int64_t Q, float sh, float sw, bool align_corners);

// ---- linear -----------------------------------------------------------------------------
// x is (N,I), w is (O,I), b is (O) or null, y is (N,O).
void linear_forward(float* y, const float* x, const float* w, const float* b, int64_t N,
                    int64_t I, int64_t O);
// dx (N,I) overwritten (skipped when null); dw (O,I), db (O) accumulated.
void linear_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                     const float* w, int64_t N, int64_t I, int64_t O);

// ---- batch normalisation ----------------------------------------------------------------
// x, y are (N,C,HW). Training: batch statistics; saves mean and 1/sqrt(var+eps) per channel,
// updates running stats with momentum (unbiased variance, as PyTorch). relu: y = max(bn(x), 0) in
// the same pass (v > 0 ? v : +0, as the ReLU kernels; the Net fuses BatchNorm -> ReLU this way).
void batchnorm_forward_train(float* y, float* save_mean, float* save_invstd, float* running_mean,
                             float* running_var, const float* x, const float* gamma,
                             const float* beta, int64_t N, int64_t C, int64_t HW, float momentum,
                             float eps, bool relu = false);
void batchnorm_forward_eval(float* y, const float* x, const float* gamma, const float* beta,
                            const float* running_mean, const float* running_var, int64_t N,
                            int64_t C, int64_t HW, float eps, bool relu = false);
// dx overwritten; dgamma, dbeta accumulated.
void batchnorm_backward(float* dx, float* dgamma, float* dbeta, const float* dy, const float* x,
                        const float* save_mean, const float* save_invstd, const float* gamma,
                        int64_t N, int64_t C, int64_t HW);
// The same training BatchNorm in pieces, for statistics summed over several processes between
// them (SyncBatchNorm). Each sum runs in the order of the kernels above, so with one process
// the pieces give their bits. out[c] = sum of x over channel c, or of (x - center[c])^2 when
// center is given (double).
void batchnorm_channel_sums(double* out, const float* x, const double* center, int64_t N,
                            int64_t C, int64_t HW);
// y = x * a + b (then ReLU), a = gamma * invstd, b = beta - mean * a per channel.
void batchnorm_apply(float* y, const float* x, const float* gamma, const float* beta,
                     const float* mean, const float* invstd, int64_t N, int64_t C, int64_t HW,
                     bool relu);
// out[c] = sum of dy, out[C + c] = sum of dy * xhat (double); dgamma += the second, dbeta +=
// the first (when not null).
void batchnorm_backward_sums(double* out, float* dgamma, float* dbeta, const float* dy,
                             const float* x, const float* save_mean, const float* save_invstd,
                             int64_t N, int64_t C, int64_t HW);
// dx = gamma * invstd * (dy - coef[c] - xhat * coef[C + c]), dx overwritten.
void batchnorm_backward_apply(float* dx, const float* dy, const float* x, const float* save_mean,
                              const float* save_invstd, const float* gamma, const float* coef,
                              int64_t N, int64_t C, int64_t HW);

// ---- merging activations (merge.*): graph nodes Add and Concat ------------------------------
// y (n) += x (n).
void add_into(float* y, const float* x, int64_t n);
// y (n) *= s.
void scale(float* y, float s, int64_t n);
// y = a + b (then ReLU when relu), n floats.
void add2(float* y, const float* a, const float* b, int64_t n, bool relu);
// dst[o * dst_stride + j] = src[o * src_stride + j] for o < outer, j < len.
void copy_blocks(float* dst, const float* src, int64_t outer, int64_t len, int64_t dst_stride,
                 int64_t src_stride);

// ---- dropout ----------------------------------------------------------------------------
// mask[i] = 1/(1-p) when kept else 0, from philox(seed, stream, i); y = x * mask.
void dropout_forward(float* y, float* mask, const float* x, int64_t n, float p, uint64_t seed,
                     uint64_t stream);
void dropout_backward(float* dx, const float* dy, const float* mask, int64_t n);
// Whole channels: x, y are (NC, HW), mask (NC) drawn as dropout_forward's over NC elements.
void dropout2d_forward(float* y, float* mask, const float* x, int64_t NC, int64_t HW, float p,
                       uint64_t seed, uint64_t stream);
void dropout2d_backward(float* dx, const float* dy, const float* mask, int64_t NC, int64_t HW);

// ---- losses -----------------------------------------------------------------------------
// logits (N,C), labels (N) in [0,C). Returns mean loss; *correct = count of argmax == label.
// dlogits (N,C) = (softmax - onehot) / N (skipped when null).
double softmax_cross_entropy(float* dlogits, int64_t* correct, const float* logits,
                             const int64_t* labels, int64_t N, int64_t C);
// pred, target (n); mean over all n elements; dpred = 2 (pred - target) / n (skipped when null).
double mse_loss(float* dpred, const float* pred, const float* target, int64_t n);

// ---- optimizer updates over flat buffers (PyTorch update rules) ---------------------------
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

}  // namespace cpu
}  // namespace cnnkit
