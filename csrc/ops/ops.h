// Device-level ops on Tensors: the ONLY place that switches on tensor.device(). Layers and the
// optimizer call these; each forwards to the cpu:: or cuda:: kernel of the same name (CUDA
// tensors in a build without CUDA get a clear RuntimeError).
#pragma once

#include "core/geometry.h"
#include "core/tensor.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace ops {

using cpu::Act;

// Scratch floats the conv kernels of `device` need for geometry g (the Net's workspace arena).
int64_t conv2d_workspace_floats(const ConvGeom& g, Device device);
// relu: y = max(conv + b, 0) (one fused pass on the CPU direct path, a second pass elsewhere).
void conv2d_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b,
                    const ConvGeom& g, float* ws, bool relu = false);
void conv2d_backward_input(Tensor& dx, const Tensor& dy, const Tensor& w, const ConvGeom& g,
                           float* ws);
void conv2d_backward_weight(Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
                            const ConvGeom& g, float* ws);
// Per-channel bias of y (N,C,...): y += b[c]; db (C) += dy summed over all but the C axis.
void channel_bias_forward(Tensor& y, const Tensor& b);
void channel_bias_backward(Tensor& db, const Tensor& dy);

// argmax (N,C,P,Q) int32 lives on the tensors' device.
void maxpool2d_forward(Tensor& y, int32_t* argmax, const Tensor& x, const PoolGeom& g);
void maxpool2d_backward(Tensor& dx, const Tensor& dy, const int32_t* argmax, const PoolGeom& g);
void avgpool2d_forward(Tensor& y, const Tensor& x, const PoolGeom& g);
void avgpool2d_backward(Tensor& dx, const Tensor& dy, const PoolGeom& g);

void activation_forward(Tensor& y, const Tensor& x, Act act, float alpha);
void activation_backward(Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& y, Act act,
                         float alpha);

void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b);
void linear_backward(Tensor* dx, Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
                     const Tensor& w);

void batchnorm_forward_train(Tensor& y, Tensor& save_mean, Tensor& save_invstd,
                             Tensor* running_mean, Tensor* running_var, const Tensor& x,
                             const Tensor* gamma, const Tensor* beta, float momentum, float eps,
                             bool relu = false);
// relu: y = max(bn(x), 0) (fused in the CPU kernel's pass; a second pass on CUDA).
void batchnorm_forward_eval(Tensor& y, const Tensor& x, const Tensor* gamma, const Tensor* beta,
                            const Tensor& running_mean, const Tensor& running_var, float eps,
                            bool relu = false);
void batchnorm_backward(Tensor* dx, Tensor* dgamma, Tensor* dbeta, const Tensor& dy,
                        const Tensor& x, const Tensor& save_mean, const Tensor& save_invstd,
                        const Tensor* gamma);
// SyncBatchNorm's pieces (cpu::batchnorm_channel_sums and the rest): the double sums come
// back in host memory (out: C, or 2C for the backward), center is host memory too.
void batchnorm_channel_sums(double* out, const Tensor& x, const double* center);
void batchnorm_apply(Tensor& y, const Tensor& x, const Tensor* gamma, const Tensor* beta,
                     const Tensor& mean, const Tensor& invstd, bool relu);
void batchnorm_backward_sums(double* out, Tensor* dgamma, Tensor* dbeta, const Tensor& dy,
                             const Tensor& x, const Tensor& save_mean, const Tensor& save_invstd);
void batchnorm_backward_apply(Tensor& dx, const Tensor& dy, const Tensor& x,
                              const Tensor& save_mean, const Tensor& save_invstd,
                              const Tensor* gamma, const Tensor& coef);

// y += x (same numel, same device).
void add_into(Tensor& y, const Tensor& x);
// t *= s, element by element (one float multiply each: the same bits on every device).
void scale_(Tensor& t, float s);
// y = a + b, then ReLU when relu (one pass on the CPU; copy, add and ReLU passes on CUDA).
void add2(Tensor& y, const Tensor& a, const Tensor& b, bool relu);
// Concatenation along dim `dim` of NCHW-like tensors: x is one input, placed at `offset`
// along that dim of y (forward), or its gradient slab taken from dy (backward).
void concat_forward(Tensor& y, const Tensor& x, int64_t dim, int64_t offset);
void concat_backward(Tensor& dx, const Tensor& dy, int64_t dim, int64_t offset);

void dropout_forward(Tensor& y, Tensor& mask, const Tensor& x, float p, uint64_t seed,
                     uint64_t stream);
void dropout_backward(Tensor& dx, const Tensor& dy, const Tensor& mask);
// Dropout2d: x (N,C,...), mask (N*C): one keep/drop per channel.
void dropout2d_forward(Tensor& y, Tensor& mask, const Tensor& x, float p, uint64_t seed,
                       uint64_t stream);
void dropout2d_backward(Tensor& dx, const Tensor& dy, const Tensor& mask);

// Softmax over axis `dim` (0 <= dim < x.dim()); backward from the forward output y.
void softmax_forward(Tensor& y, const Tensor& x, int64_t dim);
void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y, int64_t dim);

// x, dx (N,C,H,W); y, dy (N,C,P,Q): sizes from the tensors. argmax (N,C,P,Q) int32 on their device.
void adaptive_avgpool2d_forward(Tensor& y, const Tensor& x);
void adaptive_avgpool2d_backward(Tensor& dx, const Tensor& dy);
void adaptive_maxpool2d_forward(Tensor& y, int32_t* argmax, const Tensor& x);
void adaptive_maxpool2d_backward(Tensor& dx, const Tensor& dy, const int32_t* argmax);

// sh, sw: float(1/scale_factor) per axis (cpu/kernels.h).
void upsample_nearest2d_forward(Tensor& y, const Tensor& x, float sh, float sw);
void upsample_nearest2d_backward(Tensor& dx, const Tensor& dy, float sh, float sw);
// sh, sw: PyTorch's bilinear scales per axis (cpu/kernels.h).
void upsample_bilinear2d_forward(Tensor& y, const Tensor& x, float sh, float sw,
                                 bool align_corners);
void upsample_bilinear2d_backward(Tensor& dx, const Tensor& dy, float sh, float sw,
                                  bool align_corners);

// logits (N,C) and dlogits (N,C) or null on one device; labels (N) on the host (copied to the
// GPU for CUDA tensors). Returns the mean loss; *correct gets the argmax hits.
double softmax_cross_entropy(Tensor* dlogits, int64_t* correct, const Tensor& logits,
                             const int64_t* labels);
double mse_loss(Tensor* dpred, const Tensor& pred, const Tensor& target);

// ---- optimizer updates over flat buffers (w, state, g on one device) -------------------------
// True when every element of t is finite (on t's device; only the count crosses).
bool all_finite(const Tensor& t);
void sgd_step(Tensor& w, Tensor& buf, const Tensor& g, float lr, float momentum, float dampening,
              float weight_decay, bool nesterov, bool first_step);
void adam_step(Tensor& w, Tensor& m, Tensor& v, const Tensor& g, float lr, float beta1,
               float beta2, float eps, float weight_decay, bool decoupled, int64_t step);
void adagrad_step(Tensor& w, Tensor& sum, const Tensor& g, float lr, float lr_decay,
                  float weight_decay, float eps, int64_t step);
void rmsprop_step(Tensor& w, Tensor& sq, Tensor& buf, const Tensor& g, float lr, float alpha,
                  float eps, float weight_decay, float momentum);

}  // namespace ops
}  // namespace cnnkit
