// The CNN layers: Conv2d, MaxPool2d, AvgPool2d, activations, Linear, Flatten, Dropout,
// BatchNorm2d, BatchNorm1d, SyncBatchNorm. Each validates its input shape and calls the device
// ops.
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "core/rng.h"
#include "nn/activation_layer.h"
#include "nn/collective.h"
#include "nn/layer.h"
#include "nn/schema.h"
#include "cpu/kernels.h"
#include "ops/ops.h"

namespace cnnkit {
namespace nn {

// ---- Layer base -----------------------------------------------------------------------------

std::string Layer::type() const { return schema_ ? schema_->type : std::string("Layer"); }

void Layer::set_schema(const LayerSchema* schema, const Args& args) {
    schema_ = schema;
    args_ = args;
    init_storage();
}

const LayerSchema& Layer::schema() const {
    CNN_CHECK(schema_ != nullptr, "layer built without a schema");
    return *schema_;
}

std::vector<ParamSpec> Layer::param_specs() const {
    return schema_ && schema_->params ? schema_->params(args_) : std::vector<ParamSpec>{};
}

std::vector<ParamSpec> Layer::buffer_specs() const {
    return schema_ && schema_->buffers ? schema_->buffers(args_) : std::vector<ParamSpec>{};
}

std::string Layer::label() const {
    if (!name_.empty()) return str_cat(type(), " (", name_, ")");
    return index_ >= 0 ? str_cat(type(), " (layer ", index_, ")") : type();
}

Shape Layer::output_shape_n(const std::vector<Shape>& in) const {
    if (arity() == 1) {
        CNN_CHECK_ARG(in.size() == 1, label(), ": takes one input, got ", in.size());
        return output_shape(in[0]);
    }
    CNN_CHECK_ARG(in.size() >= 2, label(), ": takes a list of two or more inputs, got ", in.size());
    return output_shape_n_impl(in);
}

Shape Layer::output_shape_n_impl(const std::vector<Shape>& in) const { return output_shape(in[0]); }

void Layer::check_forward_n(const std::vector<Tensor>& xs, const Tensor& y, bool training) {
    std::vector<Shape> shapes;
    for (const Tensor& x : xs) shapes.push_back(x.shape());
    CNN_CHECK(y.shape() == output_shape_n(shapes), label(), ": output buffer ",
              shape_str(y.shape()));
    last_training_ = training;
}

void Layer::forward_n(const std::vector<Tensor>& xs, Tensor& y, bool training,
                      const Workspace& ws) {
    if (arity() == 1) return forward(xs.at(0), y, training, ws);
    check_forward_n(xs, y, training);
    forward_n_impl(xs, y, training, ws);
}

void Layer::forward_relu_n(const std::vector<Tensor>& xs, Tensor& y, bool training,
                           const Workspace& ws) {
    if (arity() == 1) return forward_relu(xs.at(0), y, training, ws);
    check_forward_n(xs, y, training);
    forward_relu_n_impl(xs, y, training, ws);
}

void Layer::forward_n_impl(const std::vector<Tensor>& xs, Tensor& y, bool training,
                           const Workspace& ws) {
    forward_impl(xs[0], y, training, ws);
}

void Layer::forward_relu_n_impl(const std::vector<Tensor>& xs, Tensor& y, bool training,
                                const Workspace& ws) {
    forward_n_impl(xs, y, training, ws);
    ops::activation_forward(y, y, cpu::Act::ReLU, 0.f);
}

void Layer::backward_n(const std::vector<Tensor>& xs, const Tensor& y, const Tensor& dy,
                       const std::vector<Tensor*>& dxs, const Workspace& ws) {
    if (arity() == 1) return backward(xs.at(0), y, dy, dxs.at(0), ws);
    CNN_CHECK_ARG(dy.shape() == y.shape(), label(), ": gradient of shape ", shape_str(dy.shape()),
                  " does not match the output shape ", shape_str(y.shape()));
    CNN_CHECK(dxs.size() == xs.size(), label(), ": one gradient per input");
    backward_n_impl(xs, y, dy, dxs, ws);
}

void Layer::backward_n_impl(const std::vector<Tensor>& xs, const Tensor& y, const Tensor& dy,
                            const std::vector<Tensor*>& dxs, const Workspace& ws) {
    backward_impl(xs[0], y, dy, dxs[0], ws);
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

void Layer::eval_affine(float*, float*) {
    throw ValueError(str_cat(label(), ": not a per-channel affine in eval mode"));
}

void Layer::forward_affine(const Tensor& x, Tensor& y, const float* scale, const float* shift,
                           bool relu, float* fold, const Workspace& ws) {
    check_forward(x, y, false, ws);
    forward_affine_impl(x, y, scale, shift, relu, fold, ws);
}

void Layer::forward_affine_impl(const Tensor&, Tensor&, const float*, const float*, bool, float*,
                                const Workspace&) {
    throw ValueError(str_cat(label(), ": cannot fold a following BatchNorm"));
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

int64_t round_up16(int64_t n) { return (n + 15) / 16 * 16; }

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

// A window of k taps dilated by `dil` over an axis of `in` padded by `pad` on both sides: the
// padded extent and the window must fit comfortably in int64 (so every index the kernels
// compute does), else the output shape is not computable.
void Layer::check_extent(int64_t in, int64_t k, int64_t pad, int64_t dil) const {
    const __int128 padded = (__int128)in + 2 * (__int128)pad;
    const __int128 window = (__int128)dil * ((__int128)k - 1) + 1;
    if (padded > kMaxBytes || window > kMaxBytes)
        throw ValueError(str_cat(label(), ": input extent ", in, " with padding ", pad,
                                 " and window ", k, " (dilation ", dil,
                                 ") gives sizes that do not fit in a 64-bit size"));
}

// ---- Conv2d ---------------------------------------------------------------------------------

class Conv2d : public Layer {
  public:
    explicit Conv2d(const Args& a)
        : C_(arg_int(a, "in_channels")), K_(arg_int(a, "out_channels")),
          R_(arg_pair(a, "kernel_size").first), S_(arg_pair(a, "kernel_size").second),
          sh_(arg_pair(a, "stride").first), sw_(arg_pair(a, "stride").second),
          ph_(arg_pair(a, "padding").first), pw_(arg_pair(a, "padding").second),
          dh_(arg_pair(a, "dilation").first), dw_(arg_pair(a, "dilation").second),
          groups_(arg_int(a, "groups")), bias_(arg_bool(a, "bias")) {}
    std::string config() const override {
        return str_cat(C_, ", ", K_, ", kernel_size=(", R_, ", ", S_, "), stride=(", sh_, ", ",
                       sw_, "), padding=(", ph_, ", ", pw_, ")",
                       dh_ != 1 || dw_ != 1 ? str_cat(", dilation=(", dh_, ", ", dw_, ")") : "",
                       groups_ != 1 ? str_cat(", groups=", groups_) : "",
                       bias_ ? "" : ", bias=False");
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
        check_extent(in[2], R_, ph_, dh_);
        check_extent(in[3], S_, pw_, dw_);
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
    // Folded weights (K, C/groups, R, S) then the folded bias (K), each 16-float aligned.
    int64_t fold_floats() const override {
        if (params_.empty() || params_[0].device() != Device::CPU) return 0;
        return round_up16(params_[0].numel()) + round_up16(K_);
    }
    void forward_affine_impl(const Tensor& x, Tensor& y, const float* scale, const float* shift,
                             bool relu, float* fold, const Workspace& ws) override {
        const Tensor& w = params_[0];
        CNN_CHECK(w.device() == Device::CPU && x.device() == Device::CPU, label(),
                  ": a folded BatchNorm runs on the CPU only");
        float* bf = fold + round_up16(w.numel());
        const float* b0 = bias_ ? params_[1].data() : nullptr;
        for (int64_t k = 0; k < K_; ++k) bf[k] = b0 ? b0[k] * scale[k] + shift[k] : shift[k];
        cpu::conv2d_forward_scaled(y.data(), x.data(), w.data(), scale, bf, geom(x.shape()),
                                   ws.data, relu, fold);
    }
    bool backward_reads_output() const override { return false; }
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
    Pool2d(bool is_max, const Args& a)
        : max_(is_max), kh_(arg_pair(a, "kernel_size").first),
          kw_(arg_pair(a, "kernel_size").second), sh_(arg_pair(a, "stride").first),
          sw_(arg_pair(a, "stride").second), ph_(arg_pair(a, "padding").first),
          pw_(arg_pair(a, "padding").second), ceil_(arg_bool(a, "ceil_mode")),
          cip_(is_max || arg_bool(a, "count_include_pad")) {}
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
        check_extent(in[2], kh_, ph_, 1);
        check_extent(in[3], kw_, pw_, 1);
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
    bool backward_reads_output() const override { return false; }
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

// ---- activations: nn/activation_layer.h ---------------------------------------------------

// ---- Linear ---------------------------------------------------------------------------------

class Linear : public Layer {
  public:
    explicit Linear(const Args& a)
        : I_(arg_int(a, "in_features")), O_(arg_int(a, "out_features")),
          bias_(arg_bool(a, "bias")) {}
    std::string config() const override {
        return str_cat("in_features=", I_, ", out_features=", O_, bias_ ? "" : ", bias=False");
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() != 2 || in[1] != I_) shape_error(str_cat("(N, ", I_, ")"), in);
        return {in[0], O_};
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        ops::linear_forward(y, x, params_[0], bias_ ? &params_[1] : nullptr);
    }
    bool backward_reads_output() const override { return false; }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        ops::linear_backward(dx, grads_[0], bias_ ? &grads_[1] : nullptr, dy, x, params_[0]);
    }

  private:
    int64_t I_, O_;
    bool bias_;
};

// ---- Flatten --------------------------------------------------------------------------------

class Flatten : public ViewLayer {
  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() < 2) shape_error("(N, ...) with at least 2 dimensions", in);
        const int64_t f = checked_numel(Shape(in.begin() + 1, in.end()), label());
        return {in[0], f};
    }
};

// ---- Dropout --------------------------------------------------------------------------------

class Dropout : public Layer {
  public:
    explicit Dropout(const Args& a) : p_(static_cast<float>(arg_float(a, "p"))) {}
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
    bool backward_reads_output() const override { return false; }
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

// ---- BatchNorm2d, BatchNorm1d -----------------------------------------------------------------

// Per-channel batch normalisation; the kernels take the spatial extent as the product of the
// dimensions after C, so BatchNorm1d ((N, C) or (N, C, L)) runs the same code as BatchNorm2d.
// ---- the statistics collective of SyncBatchNorm (nn/collective.h) ---------------------------

namespace {
std::mutex g_stats_mutex;
std::shared_ptr<const StatsReducer> g_stats_reducer;  // null: no job of several processes
}  // namespace

void set_stats_reducer(StatsReducer fn) {
    std::shared_ptr<const StatsReducer> p;
    if (fn) p = std::make_shared<const StatsReducer>(std::move(fn));
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    g_stats_reducer.swap(p);  // the old one is released outside the lock, below
    (void)0;
}

bool has_stats_reducer() {
    std::lock_guard<std::mutex> lock(g_stats_mutex);
    return static_cast<bool>(g_stats_reducer);
}

bool reduce_stats(double* data, int64_t n) {
    std::shared_ptr<const StatsReducer> fn;
    {
        std::lock_guard<std::mutex> lock(g_stats_mutex);
        fn = g_stats_reducer;
    }
    if (!fn) return false;
    (*fn)(data, n);
    return true;
}

// BatchNorm1d (dims 1), BatchNorm2d (dims 2) and SyncBatchNorm (dims 0: (N, C, ...) of 2 to 5
// dimensions; batch statistics summed over every process of a data-parallel job while
// training, when cnnkit.distributed has set the statistics collective; BatchNorm otherwise).
class BatchNorm : public Layer {
  public:
    BatchNorm(int dims, const Args& a)
        : dims_(dims), C_(arg_int(a, "num_features")), eps_(static_cast<float>(arg_float(a, "eps"))),
          momentum_(static_cast<float>(arg_float(a, "momentum"))), affine_(arg_bool(a, "affine")),
          track_(arg_bool(a, "track_running_stats")), save_mean_({C_}), save_invstd_({C_}) {}
    std::string config() const override {
        return str_cat(C_, ", eps=", eps_, ", momentum=", momentum_,
                       affine_ ? "" : ", affine=False");
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (dims_ == 2)
            expect_nchw(*this, in, C_, "C", [this](const std::string& e, const Shape& s) { shape_error(e, s); });
        else if (dims_ == 1 && ((in.size() != 2 && in.size() != 3) || in[1] != C_))
            shape_error(str_cat("(N, ", C_, ") or (N, ", C_, ", L)"), in);
        else if (dims_ == 0 && (in.size() < 2 || in.size() > 5 || in[1] != C_))
            shape_error(str_cat("(N, ", C_, ", ...) with 2 to 5 dimensions"), in);
        return in;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool training, const Workspace&) override {
        run(x, y, training, false);
    }
    // In eval mode with running statistics: y = x * a + b per channel, a = gamma / sqrt(var +
    // eps) and b = beta - mean * a, as batchnorm_forward_eval computes them.
    bool eval_per_sample() const override { return track_; }
    int64_t affine_channels() const override {
        if (!track_ || dims_ == 1 || buffers_.empty() || buffers_[0].device() != Device::CPU)
            return 0;
        return C_;
    }
    void eval_affine(float* scale, float* shift) override {
        last_training_ = false;
        batch_stats_ = false;  // as after run(): the backward refuses
        synced_count_ = 0;
        const float* mean = buffers_[0].data();
        const float* var = buffers_[1].data();
        const float* gamma = affine_ ? params_[0].data() : nullptr;
        const float* beta = affine_ ? params_[1].data() : nullptr;
        for (int64_t c = 0; c < C_; ++c) {
            const float invstd = 1.f / std::sqrt(var[c] + eps_);
            const float a = (gamma ? gamma[c] : 1.f) * invstd;
            scale[c] = a;
            shift[c] = (beta ? beta[c] : 0.f) - mean[c] * a;
        }
    }
    // BatchNorm -> ReLU in one pass (backward reads x and the saved statistics, never y).
    bool fuses_relu() const override { return true; }
    void forward_relu_impl(const Tensor& x, Tensor& y, bool training, const Workspace&) override {
        run(x, y, training, true);
    }
    void run(const Tensor& x, Tensor& y, bool training, bool relu) {
        const Tensor* gamma = affine_ ? &params_[0] : nullptr;
        const Tensor* beta = affine_ ? &params_[1] : nullptr;
        if (save_mean_.device() != x.device()) {
            save_mean_ = Tensor({C_}, x.device());
            save_invstd_ = Tensor({C_}, x.device());
        }
        synced_count_ = 0;
        if (training || !track_) {
            CNN_CHECK_ARG(x.numel() / C_ > 1, label(),
                          ": expected more than 1 value per channel when training, got input ",
                          shape_str(x.shape()));
            if (dims_ == 0 && training && has_stats_reducer()) {
                run_synced(x, y, gamma, beta, relu);
            } else {
                ops::batchnorm_forward_train(y, save_mean_, save_invstd_,
                                             track_ && training ? &buffers_[0] : nullptr,
                                             track_ && training ? &buffers_[1] : nullptr, x,
                                             gamma, beta, momentum_, eps_, relu);
            }
            batch_stats_ = true;
        } else {
            ops::batchnorm_forward_eval(y, x, gamma, beta, buffers_[0], buffers_[1], eps_, relu);
            batch_stats_ = false;
        }
    }
    // The statistics of the whole job's batch: each process's per-channel sums (and its
    // element count) summed over the processes, then the sums of squares about that mean
    // (two passes, as batchnorm_forward_train; with one process the same bits). The host
    // buffers are kept between steps (C-sized: the running statistics of a CUDA model come
    // to the host and back, two small copies).
    void run_synced(const Tensor& x, Tensor& y, const Tensor* gamma, const Tensor* beta,
                    bool relu) {
        const int64_t C = C_;
        sync_buffers(x.device());
        double* sums = dstats_.data();       // C sums, then the count
        double* mean = sums + C + 1;         // C
        double* sq = mean + C;               // C
        ops::batchnorm_channel_sums(sums, x, nullptr);
        sums[C] = static_cast<double>(x.numel() / C);
        reduce_stats(sums, C + 1);
        const double M = sums[C];
        CNN_CHECK_ARG(M > 1, label(), ": expected more than 1 value per channel over the "
                      "processes when training, got ", M);
        for (int64_t c = 0; c < C; ++c) mean[c] = sums[c] / M;
        ops::batchnorm_channel_sums(sq, x, mean);
        reduce_stats(sq, C);
        Tensor hm = host_stats_.view({C}), hi = host_stats_.view({C}, C);
        Tensor hrm = host_stats_.view({C}, 2 * C), hrv = host_stats_.view({C}, 3 * C);
        if (track_) {
            hrm.copy_from(buffers_[0]);
            hrv.copy_from(buffers_[1]);
        }
        for (int64_t c = 0; c < C; ++c) {
            const double var = sq[c] / M;
            hm.data()[c] = static_cast<float>(mean[c]);
            hi.data()[c] = static_cast<float>(1.0 / std::sqrt(var + eps_));
            if (track_) {
                const double unbiased = sq[c] / (M - 1);
                float& rm = hrm.data()[c];
                float& rv = hrv.data()[c];
                rm = static_cast<float>((1.0 - momentum_) * rm + momentum_ * mean[c]);
                rv = static_cast<float>((1.0 - momentum_) * rv + momentum_ * unbiased);
            }
        }
        save_mean_.copy_from(hm);
        save_invstd_.copy_from(hi);
        if (track_) {
            buffers_[0].copy_from(hrm);
            buffers_[1].copy_from(hrv);
        }
        ops::batchnorm_apply(y, x, gamma, beta, save_mean_, save_invstd_, relu);
        synced_count_ = M;
    }
    // SyncBatchNorm's reused buffers: 3C + 1 doubles, 4C host floats and, on a GPU, the 2C
    // backward coefficients on the device.
    void sync_buffers(Device dev) {
        const int64_t C = C_;
        if (static_cast<int64_t>(dstats_.size()) != 3 * C + 1) dstats_.assign(3 * C + 1, 0.0);
        if (!host_stats_.defined()) host_stats_ = Tensor({4 * C});
        if (dev != Device::CPU && (!coef_dev_.defined() || coef_dev_.device() != dev))
            coef_dev_ = Tensor({2 * C}, dev);
    }
    bool backward_reads_output() const override { return false; }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        CNN_CHECK_ARG(batch_stats_, label(),
                      ": backward after an eval-mode forward is not supported; call forward "
                      "with training=True first");
        Tensor* dgamma = affine_ ? &grads_[0] : nullptr;
        Tensor* dbeta = affine_ ? &grads_[1] : nullptr;
        const Tensor* gamma = affine_ ? &params_[0] : nullptr;
        if (synced_count_ == 0) {
            ops::batchnorm_backward(dx, dgamma, dbeta, dy, x, save_mean_, save_invstd_, gamma);
            return;
        }
        // The gradient of the job's loss through statistics over every process: the sums of
        // dy and dy * xhat over the processes (each process's dgamma / dbeta stay its own
        // share; the gradient all-reduce sums them with the other parameters' gradients).
        const int64_t C = C_;
        sync_buffers(x.device());
        double* sums = dstats_.data();  // 2C of the 3C + 1
        ops::batchnorm_backward_sums(sums, dgamma, dbeta, dy, x, save_mean_, save_invstd_);
        reduce_stats(sums, 2 * C);  // every process takes part, dx wanted or not
        if (!dx) return;
        Tensor coef = host_stats_.view({2 * C});
        for (int64_t i = 0; i < 2 * C; ++i)
            coef.data()[i] = static_cast<float>(sums[i] / synced_count_);
        if (x.device() != Device::CPU) {
            coef_dev_.copy_from(coef);
            coef = coef_dev_;
        }
        ops::batchnorm_backward_apply(*dx, dy, x, save_mean_, save_invstd_, gamma, coef);
    }

  private:
    int dims_;
    int64_t C_;
    float eps_, momentum_;
    bool affine_, track_;
    Tensor save_mean_, save_invstd_;
    bool batch_stats_ = false;
    double synced_count_ = 0;  // > 0: the last forward used the job's statistics (its count)
    std::vector<double> dstats_;      // SyncBatchNorm's sums (sync_buffers)
    Tensor host_stats_, coef_dev_;    // its host floats, its device coefficients
};

// ---- schemas ---------------------------------------------------------------------------------

namespace {

// Pooling windows: padding at most half the window (PyTorch), stride defaulting to the window.
void normalize_pool(const char* type, Args& a) {
    auto k = arg_pair(a, "kernel_size");
    if (a["stride"].none) a["stride"] = Arg::pair(k.first, k.second);
    auto p = arg_pair(a, "padding");
    CNN_CHECK_ARG(2 * p.first <= k.first && 2 * p.second <= k.second, type,
                  ": padding must be between 0 and half the kernel size, got (", p.first, ", ",
                  p.second, ") for kernel (", k.first, ", ", k.second, ")");
    mul_size(k.first, k.second, str_cat(type, ": kernel_size"));  // the average's divisor
}

std::vector<ArgSpec> pool_args() {
    ArgSpec stride = pair_arg("stride", 1, 1);
    stride.nullable = true;
    return {pair_req("kernel_size", 1), stride, pair_arg("padding", 0, 0),
            bool_arg("ceil_mode", false)};
}


Args one(const char* name, Arg v) { return Args{{name, v}}; }

}  // namespace

LayerSchema schema_Conv2d() {
    LayerSchema s("Conv2d");
    ArgSpec padding = pair_arg("padding", 0, 0);
    padding.choices = {"same", "valid"};
    s.args = {int_req("in_channels", 1), int_req("out_channels", 1), pair_req("kernel_size", 1),
              pair_arg("stride", 1, 1), padding, pair_arg("dilation", 1, 1),
              int_arg("groups", 1, 1), bool_arg("bias", true)};
    s.normalize = [](Args& a) {
        const int64_t C = arg_int(a, "in_channels"), K = arg_int(a, "out_channels"),
                      g = arg_int(a, "groups");
        CNN_CHECK_ARG(C % g == 0 && K % g == 0, "Conv2d: in_channels (", C,
                      ") and out_channels (", K, ") must both be divisible by groups (", g, ")");
        // padding="valid" is no padding; "same" keeps H and W (PyTorch: stride 1 only), saved
        // as the symmetric padding it amounts to
        const std::string mode = a["padding"].s;
        if (mode == "valid") a["padding"] = Arg::pair(0, 0);
        if (mode != "same") return;
        auto st = arg_pair(a, "stride"), k = arg_pair(a, "kernel_size"), d = arg_pair(a, "dilation");
        CNN_CHECK_ARG(st.first == 1 && st.second == 1,
                      "Conv2d: padding='same' needs stride 1 (as in PyTorch), got (", st.first,
                      ", ", st.second, ")");
        const int64_t th = mul_size(d.first, k.first - 1, "Conv2d: padding"),
                      tw = mul_size(d.second, k.second - 1, "Conv2d: padding");
        CNN_CHECK_ARG(th % 2 == 0 && tw % 2 == 0, "Conv2d: padding='same' with kernel (",
                      k.first, ", ", k.second, ") and dilation (", d.first, ", ", d.second,
                      ") needs uneven padding, which cnnkit does not support; use an odd kernel");
        a["padding"] = Arg::pair(th / 2, tw / 2);
    };
    s.params = [](const Args& a) {
        const int64_t C = arg_int(a, "in_channels"), K = arg_int(a, "out_channels"),
                      g = arg_int(a, "groups");
        auto k = arg_pair(a, "kernel_size");
        const int64_t fan_in =
            mul_size(mul_size(C / g, k.first, "Conv2d: fan-in"), k.second, "Conv2d: fan-in");
        std::vector<ParamSpec> p{{"weight", {K, C / g, k.first, k.second}, Init::KaimingUniform,
                                  fan_in}};
        if (arg_bool(a, "bias")) p.push_back({"bias", {K}, Init::FanInUniform, fan_in});
        return p;
    };
    s.make = [](const Args& a) { return std::make_shared<Conv2d>(a); };
    return s;
}

LayerSchema schema_MaxPool2d() {
    LayerSchema s("MaxPool2d");
    s.args = pool_args();
    s.normalize = [](Args& a) { normalize_pool("MaxPool2d", a); };
    s.make = [](const Args& a) { return std::make_shared<Pool2d>(true, a); };
    return s;
}

LayerSchema schema_AvgPool2d() {
    LayerSchema s("AvgPool2d");
    s.args = pool_args();
    s.args.push_back(bool_arg("count_include_pad", true));
    s.normalize = [](Args& a) { normalize_pool("AvgPool2d", a); };
    s.make = [](const Args& a) { return std::make_shared<Pool2d>(false, a); };
    return s;
}

LayerSchema schema_ReLU() { return activation_schema("ReLU", cpu::Act::ReLU); }
LayerSchema schema_Sigmoid() { return activation_schema("Sigmoid", cpu::Act::Sigmoid); }
LayerSchema schema_Tanh() { return activation_schema("Tanh", cpu::Act::Tanh); }

LayerSchema schema_LeakyReLU() {
    LayerSchema s("LeakyReLU");
    s.args = {float_arg("negative_slope", 0.01, -3.4e38, 3.4e38)};
    s.make = [](const Args& a) {
        const float slope = static_cast<float>(arg_float(a, "negative_slope"));
        return std::make_shared<Activation>(cpu::Act::LeakyReLU, slope,
                                            str_cat("negative_slope=", slope));
    };
    return s;
}

LayerSchema schema_Linear() {
    LayerSchema s("Linear");
    s.args = {int_req("in_features", 1), int_req("out_features", 1), bool_arg("bias", true)};
    s.params = [](const Args& a) {
        const int64_t I = arg_int(a, "in_features"), O = arg_int(a, "out_features");
        std::vector<ParamSpec> p{{"weight", {O, I}, Init::KaimingUniform, I}};
        if (arg_bool(a, "bias")) p.push_back({"bias", {O}, Init::FanInUniform, I});
        return p;
    };
    s.make = [](const Args& a) { return std::make_shared<Linear>(a); };
    return s;
}

LayerSchema schema_Flatten() {
    LayerSchema s("Flatten");
    s.make = [](const Args&) { return std::make_shared<Flatten>(); };
    return s;
}

LayerSchema schema_Dropout() {
    LayerSchema s("Dropout");
    s.args = {float_arg("p", 0.5, 0.0, 1.0, false, true)};
    s.make = [](const Args& a) { return std::make_shared<Dropout>(a); };
    return s;
}

namespace {
LayerSchema batchnorm_schema(const char* type, int dims) {
    LayerSchema s(type);
    s.args = {int_req("num_features", 1), float_arg("eps", 1e-5, 0.0, 3.4e38, true),
              float_arg("momentum", 0.1, 0.0, 1.0), bool_arg("affine", true),
              bool_arg("track_running_stats", true)};
    s.params = [](const Args& a) {
        const int64_t C = arg_int(a, "num_features");
        if (!arg_bool(a, "affine")) return std::vector<ParamSpec>{};
        return std::vector<ParamSpec>{{"weight", {C}, Init::Ones, 0},
                                      {"bias", {C}, Init::Zeros, 0}};
    };
    s.buffers = [](const Args& a) {
        const int64_t C = arg_int(a, "num_features");
        if (!arg_bool(a, "track_running_stats")) return std::vector<ParamSpec>{};
        return std::vector<ParamSpec>{{"running_mean", {C}, Init::Zeros, 0},
                                      {"running_var", {C}, Init::Ones, 0}};
    };
    s.make = [dims](const Args& a) { return std::make_shared<BatchNorm>(dims, a); };
    return s;
}
}  // namespace

LayerSchema schema_BatchNorm2d() { return batchnorm_schema("BatchNorm2d", 2); }
LayerSchema schema_BatchNorm1d() { return batchnorm_schema("BatchNorm1d", 1); }
LayerSchema schema_SyncBatchNorm() { return batchnorm_schema("SyncBatchNorm", 0); }

// ---- typed shortcuts for native code ----------------------------------------------------------

LayerPtr make_conv2d(int64_t C, int64_t K, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                     int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, bool bias) {
    return make_layer("Conv2d", {{"in_channels", Arg::integer(C)}, {"out_channels", Arg::integer(K)},
                                 {"kernel_size", Arg::pair(kh, kw)}, {"stride", Arg::pair(sh, sw)},
                                 {"padding", Arg::pair(ph, pw)}, {"dilation", Arg::pair(dh, dw)},
                                 {"groups", Arg::integer(groups)}, {"bias", Arg::boolean(bias)}});
}

LayerPtr make_maxpool2d(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        bool ceil_mode) {
    return make_layer("MaxPool2d", {{"kernel_size", Arg::pair(kh, kw)}, {"stride", Arg::pair(sh, sw)},
                                    {"padding", Arg::pair(ph, pw)},
                                    {"ceil_mode", Arg::boolean(ceil_mode)}});
}

LayerPtr make_avgpool2d(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        bool ceil_mode, bool count_include_pad) {
    return make_layer("AvgPool2d", {{"kernel_size", Arg::pair(kh, kw)}, {"stride", Arg::pair(sh, sw)},
                                    {"padding", Arg::pair(ph, pw)},
                                    {"ceil_mode", Arg::boolean(ceil_mode)},
                                    {"count_include_pad", Arg::boolean(count_include_pad)}});
}

LayerPtr make_activation(const std::string& kind, float negative_slope) {
    if (kind == "LeakyReLU") return make_layer(kind, one("negative_slope", Arg::number(negative_slope)));
    return make_layer(kind, {});
}

LayerPtr make_linear(int64_t in_features, int64_t out_features, bool bias) {
    return make_layer("Linear", {{"in_features", Arg::integer(in_features)},
                                 {"out_features", Arg::integer(out_features)},
                                 {"bias", Arg::boolean(bias)}});
}

LayerPtr make_flatten() { return make_layer("Flatten", {}); }

LayerPtr make_dropout(float p) { return make_layer("Dropout", one("p", Arg::number(p))); }

LayerPtr make_batchnorm2d(int64_t num_features, float eps, float momentum, bool affine,
                          bool track_running_stats) {
    return make_layer("BatchNorm2d", {{"num_features", Arg::integer(num_features)},
                                      {"eps", Arg::number(eps)}, {"momentum", Arg::number(momentum)},
                                      {"affine", Arg::boolean(affine)},
                                      {"track_running_stats", Arg::boolean(track_running_stats)}});
}

}  // namespace nn
}  // namespace cnnkit
