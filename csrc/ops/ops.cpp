// Device dispatch for every op. CPU kernels are complete; CUDA kernels are added family by
// family (until then a CUDA tensor reaching an op gets a clear error, never a crash).
#include "ops/ops.h"

namespace cnnkit {
namespace ops {

namespace {

// All tensors of one op must live on one device; returns it.
Device common_device(const char* op, std::initializer_list<const Tensor*> ts) {
    Device d = Device::CPU;
    bool first = true;
    for (const Tensor* t : ts) {
        if (!t || !t->defined()) continue;
        if (first) {
            d = t->device();
            first = false;
        } else {
            CNN_CHECK_ARG(t->device() == d, op, ": tensors on different devices (",
                          device_name(d), " and ", device_name(t->device()), ")");
        }
    }
    if (d == Device::CUDA)
        throw RuntimeError(str_cat(op, ": the CUDA kernel is not available in this build"));
    return d;
}

float* ptr(Tensor* t) { return t && t->defined() ? t->data() : nullptr; }
const float* cptr(const Tensor* t) { return t && t->defined() ? t->data() : nullptr; }

}  // namespace

// ---- convolution ----------------------------------------------------------------------------

void conv2d_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b,
                    const ConvGeom& g, float* ws) {
    common_device("conv2d_forward", {&y, &x, &w, b});
    cpu::conv2d_forward(y.data(), x.data(), w.data(), cptr(b), g, ws);
}

void conv2d_backward_input(Tensor& dx, const Tensor& dy, const Tensor& w, const ConvGeom& g,
                           float* ws) {
    common_device("conv2d_backward_input", {&dx, &dy, &w});
    cpu::conv2d_backward_input(dx.data(), dy.data(), w.data(), g, ws);
}

void conv2d_backward_weight(Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
                            const ConvGeom& g, float* ws) {
    common_device("conv2d_backward_weight", {&dw, db, &dy, &x});
    cpu::conv2d_backward_weight(dw.data(), ptr(db), dy.data(), x.data(), g, ws);
}

// ---- pooling --------------------------------------------------------------------------------

void maxpool2d_forward(Tensor& y, int32_t* argmax, const Tensor& x, const PoolGeom& g) {
    common_device("maxpool2d_forward", {&y, &x});
    cpu::maxpool2d_forward(y.data(), argmax, x.data(), g);
}

void maxpool2d_backward(Tensor& dx, const Tensor& dy, const int32_t* argmax, const PoolGeom& g) {
    common_device("maxpool2d_backward", {&dx, &dy});
    cpu::maxpool2d_backward(dx.data(), dy.data(), argmax, g);
}

void avgpool2d_forward(Tensor& y, const Tensor& x, const PoolGeom& g) {
    common_device("avgpool2d_forward", {&y, &x});
    cpu::avgpool2d_forward(y.data(), x.data(), g);
}

void avgpool2d_backward(Tensor& dx, const Tensor& dy, const PoolGeom& g) {
    common_device("avgpool2d_backward", {&dx, &dy});
    cpu::avgpool2d_backward(dx.data(), dy.data(), g);
}

// ---- activations / linear -------------------------------------------------------------------

void activation_forward(Tensor& y, const Tensor& x, Act act, float alpha) {
    common_device("activation_forward", {&y, &x});
    cpu::activation_forward(y.data(), x.data(), x.numel(), act, alpha);
}

void activation_backward(Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& y, Act act,
                         float alpha) {
    common_device("activation_backward", {&dx, &dy, &x, &y});
    cpu::activation_backward(dx.data(), dy.data(), cptr(&x), cptr(&y), dy.numel(), act, alpha);
}

void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
    common_device("linear_forward", {&y, &x, &w, b});
    cpu::linear_forward(y.data(), x.data(), w.data(), cptr(b), x.size(0), w.size(1), w.size(0));
}

void linear_backward(Tensor* dx, Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
                     const Tensor& w) {
    common_device("linear_backward", {dx, &dw, db, &dy, &x, &w});
    cpu::linear_backward(ptr(dx), dw.data(), ptr(db), dy.data(), x.data(), w.data(), x.size(0),
                         w.size(1), w.size(0));
}

// ---- batch norm / dropout -------------------------------------------------------------------

namespace {
int64_t spatial(const Tensor& x) {
    int64_t hw = 1;
    for (int64_t i = 2; i < x.dim(); ++i) hw *= x.size(i);
    return hw;
}
}  // namespace

void batchnorm_forward_train(Tensor& y, Tensor& save_mean, Tensor& save_invstd,
                             Tensor* running_mean, Tensor* running_var, const Tensor& x,
                             const Tensor* gamma, const Tensor* beta, float momentum, float eps) {
    common_device("batchnorm_forward", {&y, &save_mean, &save_invstd, running_mean, running_var,
                                        &x, gamma, beta});
    cpu::batchnorm_forward_train(y.data(), save_mean.data(), save_invstd.data(), ptr(running_mean),
                                 ptr(running_var), x.data(), cptr(gamma), cptr(beta), x.size(0),
                                 x.size(1), spatial(x), momentum, eps);
}

void batchnorm_forward_eval(Tensor& y, const Tensor& x, const Tensor* gamma, const Tensor* beta,
                            const Tensor& running_mean, const Tensor& running_var, float eps) {
    common_device("batchnorm_forward", {&y, &x, gamma, beta, &running_mean, &running_var});
    cpu::batchnorm_forward_eval(y.data(), x.data(), cptr(gamma), cptr(beta), running_mean.data(),
                                running_var.data(), x.size(0), x.size(1), spatial(x), eps);
}

void batchnorm_backward(Tensor* dx, Tensor* dgamma, Tensor* dbeta, const Tensor& dy,
                        const Tensor& x, const Tensor& save_mean, const Tensor& save_invstd,
                        const Tensor* gamma) {
    common_device("batchnorm_backward", {dx, dgamma, dbeta, &dy, &x, &save_mean, &save_invstd,
                                         gamma});
    cpu::batchnorm_backward(ptr(dx), ptr(dgamma), ptr(dbeta), dy.data(), x.data(),
                            save_mean.data(), save_invstd.data(), cptr(gamma), x.size(0),
                            x.size(1), spatial(x));
}

void dropout_forward(Tensor& y, Tensor& mask, const Tensor& x, float p, uint64_t seed,
                     uint64_t stream) {
    common_device("dropout_forward", {&y, &mask, &x});
    cpu::dropout_forward(y.data(), mask.data(), x.data(), x.numel(), p, seed, stream);
}

void dropout_backward(Tensor& dx, const Tensor& dy, const Tensor& mask) {
    common_device("dropout_backward", {&dx, &dy, &mask});
    cpu::dropout_backward(dx.data(), dy.data(), mask.data(), dy.numel());
}

// ---- losses ---------------------------------------------------------------------------------

double softmax_cross_entropy(Tensor* dlogits, int64_t* correct, const Tensor& logits,
                             const int64_t* labels) {
    common_device("softmax_cross_entropy", {dlogits, &logits});
    return cpu::softmax_cross_entropy(ptr(dlogits), correct, logits.data(), labels,
                                      logits.size(0), logits.size(1));
}

double mse_loss(Tensor* dpred, const Tensor& pred, const Tensor& target) {
    common_device("mse_loss", {dpred, &pred, &target});
    return cpu::mse_loss(ptr(dpred), pred.data(), target.data(), pred.numel());
}

}  // namespace ops
}  // namespace cnnkit
