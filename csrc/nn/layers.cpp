// The CNN layers: Conv2d, MaxPool2d, AvgPool2d, activations, Linear, Flatten, Dropout,
// BatchNorm2d. Each validates its input shape and calls the device ops.
#include <cmath>
#include <functional>

#include "core/rng.h"
#include "nn/layer.h"
#include "ops/ops.h"

namespace cnnkit {
namespace nn {

// ---- Layer base -----------------------------------------------------------------------------

std::string Layer::label() const {
    return index_ >= 0 ? str_cat(type(), " (layer ", index_, ")") : type();
}

void Layer::shape_error(const std::string& expected, const Shape& got) const {
    throw ValueError(str_cat(label(), ": expected input of shape ", expected, ", got ",
                             shape_str(got)));
}

void Layer::check_forward(const Tensor& x, const Tensor& y, bool training,
                          const Workspace& ws) {
    Shape out = output_shape(x.shape());
    CNN_CHECK(y.shape() == out, label(), ": output buffer ", shape_str(y.shape()), " != ",
              shape_str(out));
    CNN_CHECK(ws.floats >= workspace_floats(x.shape()), label(), ": workspace too small");
    last_training_ = training;
}

void Layer::forward(const Tensor& x, Tensor& y, bool training, const Workspace& ws) {
    check_forward(x, y, training, ws);
    forward_impl(x, y, training, ws);
}

void Layer::forward_relu(const Tensor& x, Tensor& y, bool training, const Workspace& ws) {
    check_forward(x, y, training, ws);
    forward_relu_impl(x, y, training, ws);
}

void Layer::forward_relu_impl(const Tensor& x, Tensor& y, bool training, const Workspace& ws) {
    forward_impl(x, y, training, ws);
    ops::activation_forward(y, y, cpu::Act::ReLU, 0.f);
}

void Layer::backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx,
                     const Workspace& ws) {
    CNN_CHECK_ARG(dy.shape() == y.shape(), label(), ": gradient of shape ", shape_str(dy.shape()),
                  " does not match the output shape ", shape_str(y.shape()));
    if (dx) CNN_CHECK(dx->shape() == x.shape(), label(), ": dx buffer has the wrong shape");
    backward_impl(x, y, dy, dx, ws);
}

void Layer::init_storage() {
    params_.clear();
    grads_.clear();
    buffers_.clear();
    for (const ParamSpec& s : param_specs()) {
        params_.emplace_back(s.shape);
        grads_.push_back(Tensor::zeros(s.shape));
    }
    for (const ParamSpec& s : buffer_specs()) buffers_.emplace_back(s.shape);
    reset_parameters(0);
}

void Layer::bind(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
                 const std::vector<Tensor>& buffers) {
    CNN_CHECK(params.size() == params_.size() && grads.size() == grads_.size() &&
                  buffers.size() == buffers_.size(),
              label(), ": bind with the wrong number of tensors");
    for (size_t i = 0; i < params.size(); ++i) {
        Tensor p = params[i], g = grads[i];
        p.copy_from(params_[i]);
        g.copy_from(grads_[i]);
        params_[i] = p;
        grads_[i] = g;
    }
    for (size_t i = 0; i < buffers.size(); ++i) {
        Tensor b = buffers[i];
        b.copy_from(buffers_[i]);
        buffers_[i] = b;
    }
}

void Layer::reset_parameters(uint64_t seed) {
    auto fill = [&](Tensor& t, const ParamSpec& s, uint64_t stream) {
        Tensor host = t.device() == Device::CPU ? t : Tensor(t.shape());
        float* p = host.data();
        const int64_t n = host.numel();
        if (s.init == Init::Ones || s.init == Init::Zeros) {
            host.fill(s.init == Init::Ones ? 1.f : 0.f);
        } else {
            // PyTorch defaults: kaiming_uniform_(a=sqrt(5)) for weights and U(-1/sqrt(fan_in),
            // 1/sqrt(fan_in)) for biases both reduce to bound = 1/sqrt(fan_in).
            const float bound = s.fan_in > 0 ? 1.f / std::sqrt(static_cast<float>(s.fan_in)) : 0.f;
            for (int64_t i = 0; i < n; ++i)
                p[i] = (2.f * philox_uniform(seed, stream, static_cast<uint64_t>(i)) - 1.f) * bound;
        }
        if (t.device() != Device::CPU) t.copy_from(host);
    };
    std::vector<ParamSpec> ps = param_specs(), bs = buffer_specs();
    for (size_t i = 0; i < ps.size(); ++i) fill(params_[i], ps[i], i);
    for (size_t i = 0; i < bs.size(); ++i) fill(buffers_[i], bs[i], 1000 + i);
}

namespace {

// Checks an NCHW input's rank and channel count; returns (N,C,H,W).
void expect_nchw(const Layer& l, const Shape& in, int64_t channels, const char* cname,
                 const std::function<void(const std::string&, const Shape&)>& fail) {
    (void)l;
    if (in.size() != 4 || (channels > 0 && in[1] != channels))
        fail(str_cat("(N, ", channels > 0 ? std::to_string(channels) : std::string(cname),
                     ", H, W)"),
             in);
}

}  // namespace

// ---- Conv2d ---------------------------------------------------------------------------------

class Conv2d : public Layer {
  public:
    Conv2d(int64_t C, int64_t K, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
           int64_t pw, int64_t dh, int64_t dw, int64_t groups, bool bias)
        : C_(C), K_(K), R_(kh), S_(kw), sh_(sh), sw_(sw), ph_(ph), pw_(pw), dh_(dh), dw_(dw),
          groups_(groups), bias_(bias) {
        init_storage();
    }
    std::string type() const override { return "Conv2d"; }
    std::string config() const override {
        return str_cat(C_, ", ", K_, ", kernel_size=(", R_, ", ", S_, "), stride=(", sh_, ", ",
                       sw_, "), padding=(", ph_, ", ", pw_, ")",
                       dh_ != 1 || dw_ != 1 ? str_cat(", dilation=(", dh_, ", ", dw_, ")") : "",
                       groups_ != 1 ? str_cat(", groups=", groups_) : "",
                       bias_ ? "" : ", bias=False");
    }
    std::vector<ParamSpec> param_specs() const override {
        const int64_t fan_in = C_ / groups_ * R_ * S_;
        std::vector<ParamSpec> s{{"weight", {K_, C_ / groups_, R_, S_}, Init::KaimingUniform, fan_in}};
        if (bias_) s.push_back({"bias", {K_}, Init::FanInUniform, fan_in});
        return s;
    }
    ConvGeom geom(const Shape& in) const {
        ConvGeom g;
        g.N = in[0]; g.C = C_; g.H = in[2]; g.W = in[3];
        g.K = K_; g.R = R_; g.S = S_;
        g.stride_h = sh_; g.stride_w = sw_; g.pad_h = ph_; g.pad_w = pw_;
        g.dil_h = dh_; g.dil_w = dw_; g.groups = groups_;
        g.P = conv_out_size(g.H, R_, sh_, ph_, dh_);
        g.Q = conv_out_size(g.W, S_, sw_, pw_, dw_);
        return g;
    }
    int64_t workspace_floats(const Shape& in) const override {
        // the kernels of the device the weights live on (the CUDA ones chunk differently)
        return ops::conv2d_workspace_floats(geom(in), params_[0].device());
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        expect_nchw(*this, in, C_, "C", [this](const std::string& e, const Shape& s) { shape_error(e, s); });
        ConvGeom g = geom(in);
        if (g.P <= 0 || g.Q <= 0)
            throw ValueError(str_cat(label(), ": input spatial size (", in[2], ", ", in[3],
                                     ") is smaller than the dilated kernel (",
                                     dh_ * (R_ - 1) + 1, ", ", dw_ * (S_ - 1) + 1,
                                     ") with padding (", ph_, ", ", pw_, ")"));
        return {in[0], K_, g.P, g.Q};
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace& ws) override {
        ops::conv2d_forward(y, x, params_[0], bias_ ? &params_[1] : nullptr, geom(x.shape()),
                            ws.data);
    }
    bool fuses_relu() const override { return true; }
    void forward_relu_impl(const Tensor& x, Tensor& y, bool, const Workspace& ws) override {
        ops::conv2d_forward(y, x, params_[0], bias_ ? &params_[1] : nullptr, geom(x.shape()),
                            ws.data, true);
    }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace& ws) override {
        ConvGeom g = geom(x.shape());
        ops::conv2d_backward_weight(grads_[0], bias_ ? &grads_[1] : nullptr, dy, x, g, ws.data);
        if (dx) ops::conv2d_backward_input(*dx, dy, params_[0], g, ws.data);
    }

  private:
    int64_t C_, K_, R_, S_, sh_, sw_, ph_, pw_, dh_, dw_, groups_;
    bool bias_;
};

// ---- pooling --------------------------------------------------------------------------------

class Pool2d : public Layer {
  public:
    Pool2d(bool is_max, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
           bool ceil_mode, bool count_include_pad)
        : max_(is_max), kh_(kh), kw_(kw), sh_(sh), sw_(sw), ph_(ph), pw_(pw), ceil_(ceil_mode),
          cip_(count_include_pad) {}
    std::string type() const override { return max_ ? "MaxPool2d" : "AvgPool2d"; }
    std::string config() const override {
        return str_cat("kernel_size=(", kh_, ", ", kw_, "), stride=(", sh_, ", ", sw_,
                       "), padding=(", ph_, ", ", pw_, ")", ceil_ ? ", ceil_mode=True" : "");
    }
    PoolGeom geom(const Shape& in) const {
        PoolGeom g;
        g.N = in[0]; g.C = in[1]; g.H = in[2]; g.W = in[3];
        g.kh = kh_; g.kw = kw_; g.stride_h = sh_; g.stride_w = sw_; g.pad_h = ph_; g.pad_w = pw_;
        g.count_include_pad = cip_;
        g.P = pool_out_size(g.H, kh_, sh_, ph_, ceil_);
        g.Q = pool_out_size(g.W, kw_, sw_, pw_, ceil_);
        return g;
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        expect_nchw(*this, in, 0, "C", [this](const std::string& e, const Shape& s) { shape_error(e, s); });
        PoolGeom g = geom(in);
        if (g.P <= 0 || g.Q <= 0)
            throw ValueError(str_cat(label(), ": input spatial size (", in[2], ", ", in[3],
                                     ") is smaller than the window (", kh_, ", ", kw_,
                                     ") with padding (", ph_, ", ", pw_, ")"));
        return {in[0], in[1], g.P, g.Q};
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        PoolGeom g = geom(x.shape());
        if (max_) {
            // argmax indices (int32, 4 bytes like a float) live on the input's device
            if (!argmax_.defined() || argmax_.capacity() < y.numel() ||
                argmax_.device() != x.device())
                argmax_ = Tensor({y.numel()}, x.device());
            ops::maxpool2d_forward(y, argmax_ptr(), x, g);
        } else {
            ops::avgpool2d_forward(y, x, g);
        }
    }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (!dx) return;
        PoolGeom g = geom(x.shape());
        if (max_)
            ops::maxpool2d_backward(*dx, dy, argmax_ptr(), g);
        else
            ops::avgpool2d_backward(*dx, dy, g);
    }

  private:
    bool max_;
    int64_t kh_, kw_, sh_, sw_, ph_, pw_;
    bool ceil_, cip_;
    int32_t* argmax_ptr() const { return reinterpret_cast<int32_t*>(argmax_.data()); }
    Tensor argmax_;  // int32 indices in float32 storage, kept for backward
};

// ---- activations ----------------------------------------------------------------------------

class Activation : public Layer {
  public:
    Activation(cpu::Act act, float alpha, std::string name)
        : act_(act), alpha_(alpha), name_(std::move(name)) {}
    std::string type() const override { return name_; }
    std::string config() const override {
        return act_ == cpu::Act::LeakyReLU ? str_cat("negative_slope=", alpha_) : "";
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.empty() || in[0] < 0) shape_error("(N, ...)", in);
        return in;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        ops::activation_forward(y, x, act_, alpha_);
    }
    void backward_impl(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (dx) ops::activation_backward(*dx, dy, x, y, act_, alpha_);
    }

  private:
    cpu::Act act_;
    float alpha_;
    std::string name_;
};

// ---- Linear ---------------------------------------------------------------------------------

class Linear : public Layer {
  public:
    Linear(int64_t in, int64_t out, bool bias) : I_(in), O_(out), bias_(bias) { init_storage(); }
    std::string type() const override { return "Linear"; }
    std::string config() const override {
        return str_cat("in_features=", I_, ", out_features=", O_, bias_ ? "" : ", bias=False");
    }
    std::vector<ParamSpec> param_specs() const override {
        std::vector<ParamSpec> s{{"weight", {O_, I_}, Init::KaimingUniform, I_}};
        if (bias_) s.push_back({"bias", {O_}, Init::FanInUniform, I_});
        return s;
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() != 2 || in[1] != I_) shape_error(str_cat("(N, ", I_, ")"), in);
        return {in[0], O_};
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        ops::linear_forward(y, x, params_[0], bias_ ? &params_[1] : nullptr);
    }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        ops::linear_backward(dx, grads_[0], bias_ ? &grads_[1] : nullptr, dy, x, params_[0]);
    }

  private:
    int64_t I_, O_;
    bool bias_;
};

// ---- Flatten --------------------------------------------------------------------------------

class Flatten : public Layer {
  public:
    std::string type() const override { return "Flatten"; }
    bool is_view() const override { return true; }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() < 2) shape_error("(N, ...) with at least 2 dimensions", in);
        int64_t f = 1;
        for (size_t i = 1; i < in.size(); ++i) f *= in[i];
        return {in[0], f};
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        if (y.data() != x.data()) y.copy_from(x);
    }
    void backward_impl(const Tensor&, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (dx && dx->data() != dy.data()) dx->copy_from(dy);
    }
};

// ---- Dropout --------------------------------------------------------------------------------

class Dropout : public Layer {
  public:
    explicit Dropout(float p) : p_(p) {}
    std::string type() const override { return "Dropout"; }
    std::string config() const override { return str_cat("p=", p_); }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.empty()) shape_error("(N, ...)", in);
        return in;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool training, const Workspace&) override {
        if (!training || p_ == 0.f) {
            if (y.data() != x.data()) y.copy_from(x);
            return;
        }
        if (!mask_.defined() || mask_.capacity() < x.numel() || mask_.device() != x.device())
            mask_ = Tensor(x.shape(), x.device());
        Tensor m = mask_.view(x.shape());
        ops::dropout_forward(y, m, x, p_, rng_seed_, rng_stream_);
    }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (!dx) return;
        if (!last_training_ || p_ == 0.f) {
            if (dx->data() != dy.data()) dx->copy_from(dy);
            return;
        }
        ops::dropout_backward(*dx, dy, mask_.view(x.shape()));
    }

  private:
    float p_;
    Tensor mask_;
};

// ---- BatchNorm2d ----------------------------------------------------------------------------

class BatchNorm2d : public Layer {
  public:
    BatchNorm2d(int64_t C, float eps, float momentum, bool affine, bool track)
        : C_(C), eps_(eps), momentum_(momentum), affine_(affine), track_(track),
          save_mean_({C}), save_invstd_({C}) {
        init_storage();
    }
    std::string type() const override { return "BatchNorm2d"; }
    std::string config() const override {
        return str_cat(C_, ", eps=", eps_, ", momentum=", momentum_,
                       affine_ ? "" : ", affine=False");
    }
    std::vector<ParamSpec> param_specs() const override {
        if (!affine_) return {};
        return {{"weight", {C_}, Init::Ones, 0}, {"bias", {C_}, Init::Zeros, 0}};
    }
    std::vector<ParamSpec> buffer_specs() const override {
        if (!track_) return {};
        return {{"running_mean", {C_}, Init::Zeros, 0}, {"running_var", {C_}, Init::Ones, 0}};
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        expect_nchw(*this, in, C_, "C", [this](const std::string& e, const Shape& s) { shape_error(e, s); });
        return in;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool training, const Workspace&) override {
        const Tensor* gamma = affine_ ? &params_[0] : nullptr;
        const Tensor* beta = affine_ ? &params_[1] : nullptr;
        if (save_mean_.device() != x.device()) {
            save_mean_ = Tensor({C_}, x.device());
            save_invstd_ = Tensor({C_}, x.device());
        }
        if (training || !track_) {
            CNN_CHECK_ARG(x.size(0) * x.size(2) * x.size(3) > 1, label(),
                          ": expected more than 1 value per channel when training, got input ",
                          shape_str(x.shape()));
            ops::batchnorm_forward_train(y, save_mean_, save_invstd_,
                                         track_ && training ? &buffers_[0] : nullptr,
                                         track_ && training ? &buffers_[1] : nullptr, x, gamma,
                                         beta, momentum_, eps_);
            batch_stats_ = true;
        } else {
            ops::batchnorm_forward_eval(y, x, gamma, beta, buffers_[0], buffers_[1], eps_);
            batch_stats_ = false;
        }
    }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        CNN_CHECK_ARG(batch_stats_, label(),
                      ": backward after an eval-mode forward is not supported; call forward "
                      "with training=True first");
        ops::batchnorm_backward(dx, affine_ ? &grads_[0] : nullptr,
                                affine_ ? &grads_[1] : nullptr, dy, x, save_mean_, save_invstd_,
                                affine_ ? &params_[0] : nullptr);
    }

  private:
    int64_t C_;
    float eps_, momentum_;
    bool affine_, track_;
    Tensor save_mean_, save_invstd_;
    bool batch_stats_ = false;
};

// ---- factories ------------------------------------------------------------------------------

LayerPtr make_conv2d(int64_t C, int64_t K, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                     int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, bool bias) {
    CNN_CHECK_ARG(C > 0 && K > 0, "Conv2d: in_channels and out_channels must be positive, got ",
                  C, " and ", K);
    CNN_CHECK_ARG(kh > 0 && kw > 0, "Conv2d: kernel_size must be positive, got (", kh, ", ", kw, ")");
    CNN_CHECK_ARG(sh > 0 && sw > 0, "Conv2d: stride must be positive, got (", sh, ", ", sw, ")");
    CNN_CHECK_ARG(ph >= 0 && pw >= 0, "Conv2d: padding must be >= 0, got (", ph, ", ", pw, ")");
    CNN_CHECK_ARG(dh > 0 && dw > 0, "Conv2d: dilation must be positive, got (", dh, ", ", dw, ")");
    CNN_CHECK_ARG(groups > 0 && C % groups == 0 && K % groups == 0,
                  "Conv2d: in_channels (", C, ") and out_channels (", K,
                  ") must both be divisible by groups (", groups, ")");
    return std::make_shared<Conv2d>(C, K, kh, kw, sh, sw, ph, pw, dh, dw, groups, bias);
}

static void check_pool(const char* name, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw) {
    CNN_CHECK_ARG(kh > 0 && kw > 0, name, ": kernel_size must be positive, got (", kh, ", ", kw, ")");
    CNN_CHECK_ARG(sh > 0 && sw > 0, name, ": stride must be positive, got (", sh, ", ", sw, ")");
    CNN_CHECK_ARG(ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw, name,
                  ": padding must be between 0 and half the kernel size, got (", ph, ", ", pw,
                  ") for kernel (", kh, ", ", kw, ")");
}

LayerPtr make_maxpool2d(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        bool ceil_mode) {
    check_pool("MaxPool2d", kh, kw, sh, sw, ph, pw);
    return std::make_shared<Pool2d>(true, kh, kw, sh, sw, ph, pw, ceil_mode, true);
}

LayerPtr make_avgpool2d(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        bool ceil_mode, bool count_include_pad) {
    check_pool("AvgPool2d", kh, kw, sh, sw, ph, pw);
    return std::make_shared<Pool2d>(false, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad);
}

LayerPtr make_activation(const std::string& kind, float negative_slope) {
    if (kind == "ReLU") return std::make_shared<Activation>(cpu::Act::ReLU, 0.f, kind);
    if (kind == "LeakyReLU") {
        CNN_CHECK_ARG(std::isfinite(negative_slope), "LeakyReLU: negative_slope must be finite");
        return std::make_shared<Activation>(cpu::Act::LeakyReLU, negative_slope, kind);
    }
    if (kind == "Sigmoid") return std::make_shared<Activation>(cpu::Act::Sigmoid, 0.f, kind);
    if (kind == "Tanh") return std::make_shared<Activation>(cpu::Act::Tanh, 0.f, kind);
    throw ValueError(str_cat("unknown activation '", kind,
                             "' (expected ReLU, LeakyReLU, Sigmoid or Tanh)"));
}

LayerPtr make_linear(int64_t in_features, int64_t out_features, bool bias) {
    CNN_CHECK_ARG(in_features > 0 && out_features > 0,
                  "Linear: in_features and out_features must be positive, got ", in_features,
                  " and ", out_features);
    return std::make_shared<Linear>(in_features, out_features, bias);
}

LayerPtr make_flatten() { return std::make_shared<Flatten>(); }

LayerPtr make_dropout(float p) {
    CNN_CHECK_ARG(p >= 0.f && p < 1.f, "Dropout: p must be in [0, 1), got ", p);
    return std::make_shared<Dropout>(p);
}

LayerPtr make_batchnorm2d(int64_t num_features, float eps, float momentum, bool affine,
                          bool track_running_stats) {
    CNN_CHECK_ARG(num_features > 0, "BatchNorm2d: num_features must be positive, got ",
                  num_features);
    CNN_CHECK_ARG(eps > 0.f, "BatchNorm2d: eps must be positive, got ", eps);
    CNN_CHECK_ARG(momentum >= 0.f && momentum <= 1.f, "BatchNorm2d: momentum must be in [0, 1], got ",
                  momentum);
    return std::make_shared<BatchNorm2d>(num_features, eps, momentum, affine, track_running_stats);
}

}  // namespace nn
}  // namespace cnnkit
