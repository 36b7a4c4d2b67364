// Device-level ops on Tensors: the ONLY place that switches on tensor.device(). Layers call
// these; each forwards to the cpu:: (or, once built, cuda::) kernel of the same name.
#pragma once

#include "core/geometry.h"
#include "core/tensor.h"
#include "cpu/kernels.h"

namespace cnnkit {
namespace ops {

using cpu::Act;

void conv2d_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b,
                    const ConvGeom& g, float* ws);
void conv2d_backward_input(Tensor& dx, const Tensor& dy, const Tensor& w, const ConvGeom& g,
                           float* ws);
void conv2d_backward_weight(Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
                            const ConvGeom& g, float* ws);

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
                             const Tensor* gamma, const Tensor* beta, float momentum, float eps);
void batchnorm_forward_eval(Tensor& y, const Tensor& x, const Tensor* gamma, const Tensor* beta,
                            const Tensor& running_mean, const Tensor& running_var, float eps);
void batchnorm_backward(Tensor* dx, Tensor* dgamma, Tensor* dbeta, const Tensor& dy,
                        const Tensor& x, const Tensor& save_mean, const Tensor& save_invstd,
                        const Tensor* gamma);

void dropout_forward(Tensor& y, Tensor& mask, const Tensor& x, float p, uint64_t seed,
                     uint64_t stream);
void dropout_backward(Tensor& dx, const Tensor& dy, const Tensor& mask);

// logits (N,C) and labels (N) on the host; dlogits (N,C) or null. Returns the mean loss.
double softmax_cross_entropy(Tensor* dlogits, int64_t* correct, const Tensor& logits,
                             const int64_t* labels);
double mse_loss(Tensor* dpred, const Tensor& pred, const Tensor& target);

}  // namespace ops
}  // namespace cnnkit
