// Device dispatch for every op: checks that an op's tensors share one device, then calls the
// cpu:: or cuda:: kernel of the same name. A build without CUDA cannot make CUDA tensors, but
// should one reach an op it gets a clear RuntimeError, never a crash.
#include "ops/ops.h"

#include "core/runtime.h"

#ifdef CNNKIT_WITH_CUDA
#include "cuda/kernels.h"
#define CNN_ON_CUDA(call) call
#else
#define CNN_ON_CUDA(call) \
    throw ::cnnkit::RuntimeError("cnnkit was built without CUDA (no nvcc at build time)")
#endif

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
    return d;
}

float* ptr(Tensor* t) { return t && t->defined() ? t->data() : nullptr; }
const float* cptr(const Tensor* t) { return t && t->defined() ? t->data() : nullptr; }

}  // namespace

// ---- convolution ----------------------------------------------------------------------------

int64_t conv2d_workspace_floats(const ConvGeom& g, Device device) {
    if (device == Device::CUDA) {
        int64_t n = 0;
        CNN_ON_CUDA(n = cuda::conv2d_workspace_floats(g));
        return n;
    }
    return cpu::conv2d_workspace_floats(g);
}

void conv2d_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b,
                    const ConvGeom& g, float* ws, bool relu) {
    if (common_device("conv2d_forward", {&y, &x, &w, b}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::conv2d_forward(y.data(), x.data(), w.data(), cptr(b), g, ws));
        if (relu) CNN_ON_CUDA(cuda::activation_forward(y.data(), y.data(), y.numel(), Act::ReLU, 0.f));
    } else {
        cpu::conv2d_forward(y.data(), x.data(), w.data(), cptr(b), g, ws, relu);
    }
}

void conv2d_backward_input(Tensor& dx, const Tensor& dy, const Tensor& w, const ConvGeom& g,
                           float* ws) {
    if (common_device("conv2d_backward_input", {&dx, &dy, &w}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::conv2d_backward_input(dx.data(), dy.data(), w.data(), g, ws));
    } else {
        cpu::conv2d_backward_input(dx.data(), dy.data(), w.data(), g, ws);
    }
}

void conv2d_backward_weight(Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
                            const ConvGeom& g, float* ws) {
    if (common_device("conv2d_backward_weight", {&dw, db, &dy, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::conv2d_backward_weight(dw.data(), ptr(db), dy.data(), x.data(), g, ws));
    } else {
        cpu::conv2d_backward_weight(dw.data(), ptr(db), dy.data(), x.data(), g, ws);
    }
}

// ---- pooling --------------------------------------------------------------------------------

void maxpool2d_forward(Tensor& y, int32_t* argmax, const Tensor& x, const PoolGeom& g) {
    if (common_device("maxpool2d_forward", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::maxpool2d_forward(y.data(), argmax, x.data(), g));
    } else {
        cpu::maxpool2d_forward(y.data(), argmax, x.data(), g);
    }
}

void maxpool2d_backward(Tensor& dx, const Tensor& dy, const int32_t* argmax, const PoolGeom& g) {
    if (common_device("maxpool2d_backward", {&dx, &dy}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::maxpool2d_backward(dx.data(), dy.data(), argmax, g));
    } else {
        cpu::maxpool2d_backward(dx.data(), dy.data(), argmax, g);
    }
}

void avgpool2d_forward(Tensor& y, const Tensor& x, const PoolGeom& g) {
    if (common_device("avgpool2d_forward", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::avgpool2d_forward(y.data(), x.data(), g));
    } else {
        cpu::avgpool2d_forward(y.data(), x.data(), g);
    }
}

void avgpool2d_backward(Tensor& dx, const Tensor& dy, const PoolGeom& g) {
    if (common_device("avgpool2d_backward", {&dx, &dy}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::avgpool2d_backward(dx.data(), dy.data(), g));
    } else {
        cpu::avgpool2d_backward(dx.data(), dy.data(), g);
    }
}

// ---- activations / linear -------------------------------------------------------------------

void activation_forward(Tensor& y, const Tensor& x, Act act, float alpha) {
    if (common_device("activation_forward", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::activation_forward(y.data(), x.data(), x.numel(), act, alpha));
    } else {
        cpu::activation_forward(y.data(), x.data(), x.numel(), act, alpha);
    }
}

void activation_backward(Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& y, Act act,
                         float alpha) {
    if (common_device("activation_backward", {&dx, &dy, &x, &y}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::activation_backward(dx.data(), dy.data(), cptr(&x), cptr(&y),
                                              dy.numel(), act, alpha));
    } else {
        cpu::activation_backward(dx.data(), dy.data(), cptr(&x), cptr(&y), dy.numel(), act,
                                 alpha);
    }
}

void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
    if (common_device("linear_forward", {&y, &x, &w, b}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::linear_forward(y.data(), x.data(), w.data(), cptr(b), x.size(0),
                                         w.size(1), w.size(0)));
    } else {
        cpu::linear_forward(y.data(), x.data(), w.data(), cptr(b), x.size(0), w.size(1),
                            w.size(0));
    }
}

void linear_backward(Tensor* dx, Tensor& dw, Tensor* db, const Tensor& dy, const Tensor& x,
                     const Tensor& w) {
    if (common_device("linear_backward", {dx, &dw, db, &dy, &x, &w}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::linear_backward(ptr(dx), dw.data(), ptr(db), dy.data(), x.data(),
                                          w.data(), x.size(0), w.size(1), w.size(0)));
    } else {
        cpu::linear_backward(ptr(dx), dw.data(), ptr(db), dy.data(), x.data(), w.data(),
                             x.size(0), w.size(1), w.size(0));
    }
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
                             const Tensor* gamma, const Tensor* beta, float momentum, float eps,
                             bool relu) {
    if (common_device("batchnorm_forward", {&y, &save_mean, &save_invstd, running_mean,
                                            running_var, &x, gamma, beta}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::batchnorm_forward_train(
            y.data(), save_mean.data(), save_invstd.data(), ptr(running_mean), ptr(running_var),
            x.data(), cptr(gamma), cptr(beta), x.size(0), x.size(1), spatial(x), momentum, eps));
        if (relu) activation_forward(y, y, cpu::Act::ReLU, 0.f);
    } else {
        cpu::batchnorm_forward_train(y.data(), save_mean.data(), save_invstd.data(),
                                     ptr(running_mean), ptr(running_var), x.data(), cptr(gamma),
                                     cptr(beta), x.size(0), x.size(1), spatial(x), momentum, eps,
                                     relu);
    }
}

void batchnorm_forward_eval(Tensor& y, const Tensor& x, const Tensor* gamma, const Tensor* beta,
                            const Tensor& running_mean, const Tensor& running_var, float eps,
                            bool relu) {
    if (common_device("batchnorm_forward", {&y, &x, gamma, beta, &running_mean,
                                            &running_var}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::batchnorm_forward_eval(y.data(), x.data(), cptr(gamma), cptr(beta),
                                                 running_mean.data(), running_var.data(),
                                                 x.size(0), x.size(1), spatial(x), eps));
        if (relu) activation_forward(y, y, cpu::Act::ReLU, 0.f);
    } else {
        cpu::batchnorm_forward_eval(y.data(), x.data(), cptr(gamma), cptr(beta),
                                    running_mean.data(), running_var.data(), x.size(0), x.size(1),
                                    spatial(x), eps, relu);
    }
}

void batchnorm_backward(Tensor* dx, Tensor* dgamma, Tensor* dbeta, const Tensor& dy,
                        const Tensor& x, const Tensor& save_mean, const Tensor& save_invstd,
                        const Tensor* gamma) {
    if (common_device("batchnorm_backward", {dx, dgamma, dbeta, &dy, &x, &save_mean,
                                             &save_invstd, gamma}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::batchnorm_backward(ptr(dx), ptr(dgamma), ptr(dbeta), dy.data(),
                                             x.data(), save_mean.data(), save_invstd.data(),
                                             cptr(gamma), x.size(0), x.size(1), spatial(x)));
    } else {
        cpu::batchnorm_backward(ptr(dx), ptr(dgamma), ptr(dbeta), dy.data(), x.data(),
                                save_mean.data(), save_invstd.data(), cptr(gamma), x.size(0),
                                x.size(1), spatial(x));
    }
}

void batchnorm_channel_sums(double* out, const Tensor& x, const double* center) {
    if (x.device() == Device::CUDA) {
        CNN_ON_CUDA(cuda::batchnorm_channel_sums(out, x.data(), center, x.size(0), x.size(1),
                                                 spatial(x)));
    } else {
        cpu::batchnorm_channel_sums(out, x.data(), center, x.size(0), x.size(1), spatial(x));
    }
}

void batchnorm_apply(Tensor& y, const Tensor& x, const Tensor* gamma, const Tensor* beta,
                     const Tensor& mean, const Tensor& invstd, bool relu) {
    if (common_device("batchnorm_forward", {&y, &x, gamma, beta, &mean, &invstd}) ==
        Device::CUDA) {
        CNN_ON_CUDA(cuda::batchnorm_apply(y.data(), x.data(), cptr(gamma), cptr(beta),
                                          mean.data(), invstd.data(), x.size(0), x.size(1),
                                          spatial(x)));
        if (relu) activation_forward(y, y, cpu::Act::ReLU, 0.f);
    } else {
        cpu::batchnorm_apply(y.data(), x.data(), cptr(gamma), cptr(beta), mean.data(),
                             invstd.data(), x.size(0), x.size(1), spatial(x), relu);
    }
}

void batchnorm_backward_sums(double* out, Tensor* dgamma, Tensor* dbeta, const Tensor& dy,
                             const Tensor& x, const Tensor& save_mean, const Tensor& save_invstd) {
    if (common_device("batchnorm_backward", {dgamma, dbeta, &dy, &x, &save_mean,
                                             &save_invstd}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::batchnorm_backward_sums(out, ptr(dgamma), ptr(dbeta), dy.data(),
                                                  x.data(), save_mean.data(), save_invstd.data(),
                                                  x.size(0), x.size(1), spatial(x)));
    } else {
        cpu::batchnorm_backward_sums(out, ptr(dgamma), ptr(dbeta), dy.data(), x.data(),
                                     save_mean.data(), save_invstd.data(), x.size(0), x.size(1),
                                     spatial(x));
    }
}

void batchnorm_backward_apply(Tensor& dx, const Tensor& dy, const Tensor& x,
                              const Tensor& save_mean, const Tensor& save_invstd,
                              const Tensor* gamma, const Tensor& coef) {
    if (common_device("batchnorm_backward", {&dx, &dy, &x, &save_mean, &save_invstd, gamma,
                                             &coef}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::batchnorm_backward_apply(dx.data(), dy.data(), x.data(),
                                                   save_mean.data(), save_invstd.data(),
                                                   cptr(gamma), coef.data(), x.size(0),
                                                   x.size(1), spatial(x)));
    } else {
        cpu::batchnorm_backward_apply(dx.data(), dy.data(), x.data(), save_mean.data(),
                                      save_invstd.data(), cptr(gamma), coef.data(), x.size(0),
                                      x.size(1), spatial(x));
    }
}

void channel_bias_forward(Tensor& y, const Tensor& b) {
    CNN_CHECK(y.dim() >= 2 && b.numel() == y.size(1), "channel_bias_forward: bias ",
              shape_str(b.shape()), " for ", shape_str(y.shape()));
    if (common_device("channel_bias_forward", {&y, &b}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::channel_bias_forward(y.data(), b.data(), y.size(0), y.size(1),
                                               spatial(y)));
    } else {
        cpu::channel_bias_forward(y.data(), b.data(), y.size(0), y.size(1), spatial(y));
    }
}

void channel_bias_backward(Tensor& db, const Tensor& dy) {
    CNN_CHECK(dy.dim() >= 2 && db.numel() == dy.size(1), "channel_bias_backward: bias ",
              shape_str(db.shape()), " for ", shape_str(dy.shape()));
    if (common_device("channel_bias_backward", {&db, &dy}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::channel_bias_backward(db.data(), dy.data(), dy.size(0), dy.size(1),
                                                spatial(dy)));
    } else {
        cpu::channel_bias_backward(db.data(), dy.data(), dy.size(0), dy.size(1), spatial(dy));
    }
}

void add_into(Tensor& y, const Tensor& x) {
    CNN_CHECK(y.numel() == x.numel(), "add_into: ", shape_str(y.shape()), " += ",
              shape_str(x.shape()));
    if (common_device("add_into", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::add_into(y.data(), x.data(), y.numel()));
    } else {
        cpu::add_into(y.data(), x.data(), y.numel());
    }
}

void scale_(Tensor& t, float s) {
    const int64_t n = t.numel();
    float* p = t.data();
    if (t.device() == Device::CUDA) {
        CNN_ON_CUDA(cuda::scale(p, s, n));
        return;
    }
    cpu::scale(p, s, n);
}

void add2(Tensor& y, const Tensor& a, const Tensor& b, bool relu) {
    CNN_CHECK(y.numel() == a.numel() && y.numel() == b.numel(), "add2: ", shape_str(y.shape()),
              " = ", shape_str(a.shape()), " + ", shape_str(b.shape()));
    if (common_device("add2", {&y, &a, &b}) == Device::CUDA) {
        y.copy_from(a);
        add_into(y, b);
        if (relu) activation_forward(y, y, cpu::Act::ReLU, 0.f);
    } else {
        cpu::add2(y.data(), a.data(), b.data(), y.numel(), relu);
    }
}

namespace {
// (outer, this tensor's extent along dim, inner) of x and the extent along dim of the whole
int64_t prod(const Shape& s, size_t a, size_t b) {
    int64_t p = 1;
    for (size_t i = a; i < b; ++i) p *= s[i];
    return p;
}
void concat_copy(Tensor& dst, const Tensor& src, const Tensor& part, const Tensor& whole,
                 int64_t dim, int64_t offset, bool forward) {
    const Shape& ps = part.shape();
    const Shape& ws = whole.shape();
    const size_t d = static_cast<size_t>(dim);
    const int64_t outer = prod(ps, 0, d), inner = prod(ps, d + 1, ps.size());
    const int64_t len = ps[d] * inner, wlen = ws[d] * inner, off = offset * inner;
    float* out = dst.data() + (forward ? off : 0);
    const float* in = src.data() + (forward ? 0 : off);
    const int64_t dst_stride = forward ? wlen : len, src_stride = forward ? len : wlen;
    if (common_device("concat", {&dst, &src}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::copy_blocks(out, in, outer, len, dst_stride, src_stride));
    } else {
        cpu::copy_blocks(out, in, outer, len, dst_stride, src_stride);
    }
}
}  // namespace

void concat_forward(Tensor& y, const Tensor& x, int64_t dim, int64_t offset) {
    concat_copy(y, x, x, y, dim, offset, true);
}

void concat_backward(Tensor& dx, const Tensor& dy, int64_t dim, int64_t offset) {
    concat_copy(dx, dy, dx, dy, dim, offset, false);
}

void dropout_forward(Tensor& y, Tensor& mask, const Tensor& x, float p, uint64_t seed,
                     uint64_t stream) {
    if (common_device("dropout_forward", {&y, &mask, &x}) == Device::CUDA) {
        CNN_ON_CUDA(
            cuda::dropout_forward(y.data(), mask.data(), x.data(), x.numel(), p, seed, stream));
    } else {
        cpu::dropout_forward(y.data(), mask.data(), x.data(), x.numel(), p, seed, stream);
    }
}

void dropout_backward(Tensor& dx, const Tensor& dy, const Tensor& mask) {
    if (common_device("dropout_backward", {&dx, &dy, &mask}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::dropout_backward(dx.data(), dy.data(), mask.data(), dy.numel()));
    } else {
        cpu::dropout_backward(dx.data(), dy.data(), mask.data(), dy.numel());
    }
}

void dropout2d_forward(Tensor& y, Tensor& mask, const Tensor& x, float p, uint64_t seed,
                       uint64_t stream) {
    const int64_t NC = x.size(0) * x.size(1), HW = spatial(x);
    CNN_CHECK(mask.numel() == NC, "dropout2d_forward: mask has the wrong size");
    if (common_device("dropout2d_forward", {&y, &mask, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::dropout2d_forward(y.data(), mask.data(), x.data(), NC, HW, p, seed,
                                            stream));
    } else {
        cpu::dropout2d_forward(y.data(), mask.data(), x.data(), NC, HW, p, seed, stream);
    }
}

void dropout2d_backward(Tensor& dx, const Tensor& dy, const Tensor& mask) {
    const int64_t NC = dy.size(0) * dy.size(1), HW = spatial(dy);
    if (common_device("dropout2d_backward", {&dx, &dy, &mask}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::dropout2d_backward(dx.data(), dy.data(), mask.data(), NC, HW));
    } else {
        cpu::dropout2d_backward(dx.data(), dy.data(), mask.data(), NC, HW);
    }
}

// ---- softmax, adaptive pooling, upsampling ----------------------------------------------------

namespace {
// (outer, C, inner) of x around axis dim.
void split_axis(const Tensor& x, int64_t dim, int64_t& outer, int64_t& C, int64_t& inner) {
    outer = 1;
    inner = 1;
    for (int64_t i = 0; i < dim; ++i) outer *= x.size(i);
    C = x.size(dim);
    for (int64_t i = dim + 1; i < x.dim(); ++i) inner *= x.size(i);
}
}  // namespace

void softmax_forward(Tensor& y, const Tensor& x, int64_t dim) {
    int64_t o, C, in;
    split_axis(x, dim, o, C, in);
    if (common_device("softmax_forward", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::softmax_forward(y.data(), x.data(), o, C, in));
    } else {
        cpu::softmax_forward(y.data(), x.data(), o, C, in);
    }
}

void softmax_backward(Tensor& dx, const Tensor& dy, const Tensor& y, int64_t dim) {
    int64_t o, C, in;
    split_axis(y, dim, o, C, in);
    if (common_device("softmax_backward", {&dx, &dy, &y}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::softmax_backward(dx.data(), dy.data(), y.data(), o, C, in));
    } else {
        cpu::softmax_backward(dx.data(), dy.data(), y.data(), o, C, in);
    }
}

void adaptive_avgpool2d_forward(Tensor& y, const Tensor& x) {
    const int64_t NC = x.size(0) * x.size(1);
    if (common_device("adaptive_avgpool2d_forward", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::adaptive_avgpool2d_forward(y.data(), x.data(), NC, x.size(2), x.size(3),
                                                     y.size(2), y.size(3)));
    } else {
        cpu::adaptive_avgpool2d_forward(y.data(), x.data(), NC, x.size(2), x.size(3), y.size(2),
                                        y.size(3));
    }
}

void adaptive_avgpool2d_backward(Tensor& dx, const Tensor& dy) {
    const int64_t NC = dx.size(0) * dx.size(1);
    if (common_device("adaptive_avgpool2d_backward", {&dx, &dy}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::adaptive_avgpool2d_backward(dx.data(), dy.data(), NC, dx.size(2),
                                                      dx.size(3), dy.size(2), dy.size(3)));
    } else {
        cpu::adaptive_avgpool2d_backward(dx.data(), dy.data(), NC, dx.size(2), dx.size(3),
                                         dy.size(2), dy.size(3));
    }
}

void adaptive_maxpool2d_forward(Tensor& y, int32_t* argmax, const Tensor& x) {
    const int64_t NC = x.size(0) * x.size(1);
    if (common_device("adaptive_maxpool2d_forward", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::adaptive_maxpool2d_forward(y.data(), argmax, x.data(), NC, x.size(2),
                                                     x.size(3), y.size(2), y.size(3)));
    } else {
        cpu::adaptive_maxpool2d_forward(y.data(), argmax, x.data(), NC, x.size(2), x.size(3),
                                        y.size(2), y.size(3));
    }
}

void adaptive_maxpool2d_backward(Tensor& dx, const Tensor& dy, const int32_t* argmax) {
    const int64_t NC = dx.size(0) * dx.size(1);
    if (common_device("adaptive_maxpool2d_backward", {&dx, &dy}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::adaptive_maxpool2d_backward(dx.data(), dy.data(), argmax, NC, dx.size(2),
                                                      dx.size(3), dy.size(2), dy.size(3)));
    } else {
        cpu::adaptive_maxpool2d_backward(dx.data(), dy.data(), argmax, NC, dx.size(2), dx.size(3),
                                         dy.size(2), dy.size(3));
    }
}

void upsample_nearest2d_forward(Tensor& y, const Tensor& x, float sh, float sw) {
    const int64_t NC = x.size(0) * x.size(1);
    if (common_device("upsample_nearest2d_forward", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::upsample_nearest2d_forward(y.data(), x.data(), NC, x.size(2), x.size(3),
                                                     y.size(2), y.size(3), sh, sw));
    } else {
        cpu::upsample_nearest2d_forward(y.data(), x.data(), NC, x.size(2), x.size(3), y.size(2),
                                        y.size(3), sh, sw);
    }
}

void upsample_nearest2d_backward(Tensor& dx, const Tensor& dy, float sh, float sw) {
    const int64_t NC = dx.size(0) * dx.size(1);
    if (common_device("upsample_nearest2d_backward", {&dx, &dy}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::upsample_nearest2d_backward(dx.data(), dy.data(), NC, dx.size(2),
                                                      dx.size(3), dy.size(2), dy.size(3), sh, sw));
    } else {
        cpu::upsample_nearest2d_backward(dx.data(), dy.data(), NC, dx.size(2), dx.size(3),
                                         dy.size(2), dy.size(3), sh, sw);
    }
}

void upsample_bilinear2d_forward(Tensor& y, const Tensor& x, float sh, float sw,
                                 bool align_corners) {
    const int64_t NC = x.size(0) * x.size(1);
    if (common_device("upsample_bilinear2d_forward", {&y, &x}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::upsample_bilinear2d_forward(y.data(), x.data(), NC, x.size(2),
                                                      x.size(3), y.size(2), y.size(3), sh, sw,
                                                      align_corners));
    } else {
        cpu::upsample_bilinear2d_forward(y.data(), x.data(), NC, x.size(2), x.size(3), y.size(2),
                                         y.size(3), sh, sw, align_corners);
    }
}

void upsample_bilinear2d_backward(Tensor& dx, const Tensor& dy, float sh, float sw,
                                  bool align_corners) {
    const int64_t NC = dx.size(0) * dx.size(1);
    if (common_device("upsample_bilinear2d_backward", {&dx, &dy}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::upsample_bilinear2d_backward(dx.data(), dy.data(), NC, dx.size(2),
                                                       dx.size(3), dy.size(2), dy.size(3), sh,
                                                       sw, align_corners));
    } else {
        cpu::upsample_bilinear2d_backward(dx.data(), dy.data(), NC, dx.size(2), dx.size(3),
                                          dy.size(2), dy.size(3), sh, sw, align_corners);
    }
}

// ---- losses ---------------------------------------------------------------------------------

double softmax_cross_entropy(Tensor* dlogits, int64_t* correct, const Tensor& logits,
                             const int64_t* labels) {
    const int64_t N = logits.size(0), C = logits.size(1);
    if (common_device("softmax_cross_entropy", {dlogits, &logits}) == Device::CUDA) {
        double loss = 0.0;
        // The labels come from the host: copy them up (through the pinned staging buffers) into
        // a block from the caching allocator; int64 labels fill two floats each.
        Tensor dev_labels({2 * N}, Device::CUDA);
        cuda::memcpy(dev_labels.data(), labels, static_cast<size_t>(N) * sizeof(int64_t), 0);
        CNN_ON_CUDA(loss = cuda::softmax_cross_entropy(
                        ptr(dlogits), correct, logits.data(),
                        reinterpret_cast<const int64_t*>(dev_labels.data()), N, C));
        return loss;
    }
    return cpu::softmax_cross_entropy(ptr(dlogits), correct, logits.data(), labels, N, C);
}

double mse_loss(Tensor* dpred, const Tensor& pred, const Tensor& target) {
    if (common_device("mse_loss", {dpred, &pred, &target}) == Device::CUDA) {
        double loss = 0.0;
        CNN_ON_CUDA(loss = cuda::mse_loss(ptr(dpred), pred.data(), target.data(), pred.numel()));
        return loss;
    }
    return cpu::mse_loss(ptr(dpred), pred.data(), target.data(), pred.numel());
}

// ---- optimizer updates ----------------------------------------------------------------------

bool all_finite(const Tensor& t) {
    int64_t bad = 0;
    if (t.device() == Device::CUDA) {
        CNN_ON_CUDA(bad = cuda::count_nonfinite(t.data(), t.numel()));
    } else {
        bad = cpu::count_nonfinite(t.data(), t.numel());
    }
    return bad == 0;
}

void sgd_step(Tensor& w, Tensor& buf, const Tensor& g, float lr, float momentum, float dampening,
              float weight_decay, bool nesterov, bool first_step) {
    if (common_device("sgd_step", {&w, &buf, &g}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::sgd_step(w.data(), buf.data(), g.data(), w.numel(), lr, momentum,
                                   dampening, weight_decay, nesterov, first_step));
    } else {
        cpu::sgd_step(w.data(), buf.data(), g.data(), w.numel(), lr, momentum, dampening,
                      weight_decay, nesterov, first_step);
    }
}

void adam_step(Tensor& w, Tensor& m, Tensor& v, const Tensor& g, float lr, float beta1,
               float beta2, float eps, float weight_decay, bool decoupled, int64_t step) {
    if (common_device("adam_step", {&w, &m, &v, &g}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::adam_step(w.data(), m.data(), v.data(), g.data(), w.numel(), lr, beta1,
                                    beta2, eps, weight_decay, decoupled, step));
    } else {
        cpu::adam_step(w.data(), m.data(), v.data(), g.data(), w.numel(), lr, beta1, beta2, eps,
                       weight_decay, decoupled, step);
    }
}

void adagrad_step(Tensor& w, Tensor& sum, const Tensor& g, float lr, float lr_decay,
                  float weight_decay, float eps, int64_t step) {
    if (common_device("adagrad_step", {&w, &sum, &g}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::adagrad_step(w.data(), sum.data(), g.data(), w.numel(), lr, lr_decay,
                                       weight_decay, eps, step));
    } else {
        cpu::adagrad_step(w.data(), sum.data(), g.data(), w.numel(), lr, lr_decay, weight_decay,
                          eps, step);
    }
}

void rmsprop_step(Tensor& w, Tensor& sq, Tensor& buf, const Tensor& g, float lr, float alpha,
                  float eps, float weight_decay, float momentum) {
    if (common_device("rmsprop_step", {&w, &sq, &buf, &g}) == Device::CUDA) {
        CNN_ON_CUDA(cuda::rmsprop_step(w.data(), sq.data(), buf.data(), g.data(), w.numel(), lr,
                                       alpha, eps, weight_decay, momentum));
    } else {
        cpu::rmsprop_step(w.data(), sq.data(), buf.data(), g.data(), w.numel(), lr, alpha, eps,
                          weight_decay, momentum);
    }
}

}  // namespace ops
}  // namespace cnnkit
