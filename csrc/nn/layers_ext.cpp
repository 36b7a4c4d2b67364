// Layers of the PyTorch zoo beyond the first eleven: the activations ELU, SiLU, GELU, ReLU6,
// Hardswish (the activation kernel family), Identity, Softmax, AdaptiveAvgPool2d,
// AdaptiveMaxPool2d, Dropout2d and Upsample (nearest, bilinear); BatchNorm1d shares BatchNorm2d's class
// in layers.cpp. Each is a class plus its schema; docs/architecture.md says how to add one.
#include <cmath>
#include <limits>

#include "nn/activation_layer.h"
#include "nn/layer.h"
#include "nn/schema.h"
#include "ops/ops.h"

namespace cnnkit {
namespace nn {

namespace {

// ---- Identity ---------------------------------------------------------------------------------

class Identity : public ViewLayer {
  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.empty()) shape_error("(N, ...)", in);
        return in;
    }
};

// ---- Softmax ----------------------------------------------------------------------------------

class Softmax : public Layer {
  public:
    explicit Softmax(const Args& a) : dim_(arg_int(a, "dim")) {}
    std::string config() const override { return str_cat("dim=", dim_); }

  protected:
    int64_t axis(const Shape& in) const {
        const int64_t r = static_cast<int64_t>(in.size());
        if (r < 1 || dim_ < -r || dim_ >= r)
            throw ValueError(str_cat(label(), ": dim ", dim_, " is out of range for input of shape ",
                                     shape_str(in), " (", r, " dimensions)"));
        return dim_ < 0 ? dim_ + r : dim_;
    }
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() < 2) shape_error("(N, C, ...)", in);
        axis(in);
        return in;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        ops::softmax_forward(y, x, axis(x.shape()));
    }
    void backward_impl(const Tensor&, const Tensor& y, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (dx) ops::softmax_backward(*dx, dy, y, axis(y.shape()));
    }

  private:
    int64_t dim_;
};

// ---- adaptive pooling -------------------------------------------------------------------------

class AdaptivePool2d : public Layer {
  public:
    AdaptivePool2d(bool is_max, const Args& a)
        : max_(is_max), oh_(arg_pair(a, "output_size").first),
          ow_(arg_pair(a, "output_size").second) {}
    std::string config() const override {
        auto v = [](int64_t o) { return o == 0 ? std::string("None") : std::to_string(o); };
        return str_cat("output_size=(", v(oh_), ", ", v(ow_), ")");
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() != 4) shape_error("(N, C, H, W)", in);
        if (in[2] < 1 || in[3] < 1)
            throw ValueError(str_cat(label(), ": input spatial size (", in[2], ", ", in[3],
                                     ") must be at least 1, got input ", shape_str(in)));
        // argmax indices are int32 (as MaxPool2d's); the bin-edge products i*H fit in int64
        if (max_ && mul_size(in[2], in[3], label()) > std::numeric_limits<int32_t>::max())
            throw ValueError(str_cat(label(), ": input plane ", in[2], " x ", in[3],
                                     " has more than 2^31 - 1 elements"));
        const int64_t P = oh_ == 0 ? in[2] : oh_, Q = ow_ == 0 ? in[3] : ow_;
        mul_size(P, in[2], label());
        mul_size(Q, in[3], label());
        Shape out{in[0], in[1], P, Q};
        checked_numel(out, str_cat(label(), ": output"));
        return out;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        if (max_) {
            if (!argmax_.defined() || argmax_.capacity() < y.numel() ||
                argmax_.device() != x.device())
                argmax_ = Tensor({y.numel()}, x.device());
            ops::adaptive_maxpool2d_forward(y, argmax_ptr(), x);
        } else {
            ops::adaptive_avgpool2d_forward(y, x);
        }
    }
    void backward_impl(const Tensor&, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (!dx) return;
        if (max_)
            ops::adaptive_maxpool2d_backward(*dx, dy, argmax_ptr());
        else
            ops::adaptive_avgpool2d_backward(*dx, dy);
    }

  private:
    bool max_;
    int64_t oh_, ow_;  // 0: the input's size (PyTorch's None)
    int32_t* argmax_ptr() const { return reinterpret_cast<int32_t*>(argmax_.data()); }
    Tensor argmax_;  // int32 indices in float32 storage, kept for backward
};

// ---- Dropout2d --------------------------------------------------------------------------------

class Dropout2d : public Layer {
  public:
    explicit Dropout2d(const Args& a) : p_(static_cast<float>(arg_float(a, "p"))) {}
    std::string config() const override { return str_cat("p=", p_); }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() != 4) shape_error("(N, C, H, W)", in);
        return in;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool training, const Workspace&) override {
        if (!training || p_ == 0.f) {
            if (y.data() != x.data()) y.copy_from(x);
            return;
        }
        const int64_t NC = x.size(0) * x.size(1);
        if (!mask_.defined() || mask_.capacity() < NC || mask_.device() != x.device())
            mask_ = Tensor({NC}, x.device());
        Tensor m = mask_.view({NC});
        ops::dropout2d_forward(y, m, x, p_, rng_seed_, rng_stream_);
    }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (!dx) return;
        if (!last_training_ || p_ == 0.f) {
            if (dx->data() != dy.data()) dx->copy_from(dy);
            return;
        }
        ops::dropout2d_backward(*dx, dy, mask_.view({x.size(0) * x.size(1)}));
    }

  private:
    float p_;
    Tensor mask_;  // (N*C): 0 or 1/(1-p) per channel
};

// ---- Upsample ---------------------------------------------------------------------------------

class Upsample : public Layer {
  public:
    explicit Upsample(const Args& a)
        : bilinear_(arg_str(a, "mode") == "bilinear"),
          align_(!a.at("align_corners").none && arg_bool(a, "align_corners")) {
        const Arg& size = a.at("size");
        if (!size.none) {
            oh_ = size.i[0];
            ow_ = size.i[1];
        } else {
            scale_ = arg_float(a, "scale_factor");
        }
    }
    std::string config() const override {
        const std::string what = oh_ > 0 ? str_cat("size=(", oh_, ", ", ow_, ")")
                                         : str_cat("scale_factor=", scale_);
        if (!bilinear_) return oh_ > 0 ? what : what + ", mode='nearest'";
        return str_cat(what, ", mode='bilinear'", align_ ? ", align_corners=True" : "");
    }

  protected:
    // Output extent along an axis of `in` (PyTorch: floor(in * scale_factor)).
    int64_t out_size(int64_t in, int64_t fixed) const {
        if (fixed > 0) return fixed;
        const double o = std::floor(static_cast<double>(in) * scale_);
        if (!(o < 4.0e18))
            throw ValueError(str_cat(label(), ": output size ", in, " x ", scale_,
                                     " does not fit in a 64-bit size"));
        return static_cast<int64_t>(o);
    }
    // float(1/scale_factor) given a scale, else in/out (PyTorch's nearest).
    float src_scale(int64_t in, int64_t out) const {
        return oh_ > 0 ? static_cast<float>(in) / static_cast<float>(out)
                       : static_cast<float>(1.0 / scale_);
    }
    // PyTorch's bilinear scale (area_pixel_compute_scale): (in-1)/(out-1) with align_corners.
    float linear_scale(int64_t in, int64_t out) const {
        if (!align_) return src_scale(in, out);
        return out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f;
    }
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() != 4) shape_error("(N, C, H, W)", in);
        const int64_t P = out_size(in[2], oh_), Q = out_size(in[3], ow_);
        if (P < 1 || Q < 1 || in[2] < 1 || in[3] < 1)
            throw ValueError(str_cat(label(), ": input ", shape_str(in), " gives an empty output (",
                                     P, ", ", Q, ")"));
        Shape out{in[0], in[1], P, Q};
        checked_numel(out, str_cat(label(), ": output"));
        return out;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        if (bilinear_)
            return ops::upsample_bilinear2d_forward(y, x, linear_scale(x.size(2), y.size(2)),
                                                    linear_scale(x.size(3), y.size(3)), align_);
        ops::upsample_nearest2d_forward(y, x, src_scale(x.size(2), y.size(2)),
                                        src_scale(x.size(3), y.size(3)));
    }
    void backward_impl(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (!dx) return;
        if (bilinear_)
            return ops::upsample_bilinear2d_backward(*dx, dy, linear_scale(x.size(2), y.size(2)),
                                                     linear_scale(x.size(3), y.size(3)), align_);
        ops::upsample_nearest2d_backward(*dx, dy, src_scale(x.size(2), y.size(2)),
                                         src_scale(x.size(3), y.size(3)));
    }

  private:
    bool bilinear_, align_;    // mode="bilinear"; align_corners (None is False)
    int64_t oh_ = 0, ow_ = 0;  // size, when given
    double scale_ = 0;         // scale_factor, otherwise
};

}  // namespace

// ---- schemas ----------------------------------------------------------------------------------

LayerSchema schema_ELU() {
    LayerSchema s("ELU");
    s.args = {float_arg("alpha", 1.0, -3.4e38, 3.4e38)};
    s.make = [](const Args& a) {
        const float alpha = static_cast<float>(arg_float(a, "alpha"));
        return std::make_shared<Activation>(cpu::Act::ELU, alpha, str_cat("alpha=", alpha));
    };
    return s;
}

LayerSchema schema_SiLU() { return activation_schema("SiLU", cpu::Act::SiLU); }
LayerSchema schema_ReLU6() { return activation_schema("ReLU6", cpu::Act::ReLU6); }
LayerSchema schema_Hardswish() { return activation_schema("Hardswish", cpu::Act::Hardswish); }

LayerSchema schema_GELU() {
    LayerSchema s("GELU");
    s.args = {choice_arg("approximate", "none", {"none", "tanh"})};
    s.make = [](const Args& a) {
        const bool tanh = arg_str(a, "approximate") == "tanh";
        return std::make_shared<Activation>(tanh ? cpu::Act::GELUTanh : cpu::Act::GELU, 0.f,
                                                tanh ? "approximate='tanh'" : "");
    };
    return s;
}

LayerSchema schema_Identity() {
    LayerSchema s("Identity");
    s.make = [](const Args&) { return std::make_shared<Identity>(); };
    return s;
}

LayerSchema schema_Softmax() {
    LayerSchema s("Softmax");
    s.args = {int_arg("dim", 1, -64, 63)};
    s.make = [](const Args& a) { return std::make_shared<Softmax>(a); };
    return s;
}

// output_size: an int or a pair; 0 in either entry (None in Python) keeps the input's size.
LayerSchema schema_AdaptiveAvgPool2d() {
    LayerSchema s("AdaptiveAvgPool2d");
    s.args = {pair_req("output_size", 0)};
    s.make = [](const Args& a) { return std::make_shared<AdaptivePool2d>(false, a); };
    return s;
}

LayerSchema schema_AdaptiveMaxPool2d() {
    LayerSchema s("AdaptiveMaxPool2d");
    s.args = {pair_req("output_size", 0)};
    s.make = [](const Args& a) { return std::make_shared<AdaptivePool2d>(true, a); };
    return s;
}

LayerSchema schema_Dropout2d() {
    LayerSchema s("Dropout2d");
    s.args = {float_arg("p", 0.5, 0.0, 1.0, false, true)};
    s.make = [](const Args& a) { return std::make_shared<Dropout2d>(a); };
    return s;
}

// Upsample(size=None, scale_factor=None, mode="nearest", align_corners=None): exactly one of size,
// scale_factor; align_corners only with mode="bilinear" (None there means False, as in PyTorch).
// Files written before align_corners existed load with it None.
LayerSchema schema_Upsample() {
    LayerSchema s("Upsample");
    ArgSpec size = pair_arg("size", 1, 1);
    size.nullable = true;
    ArgSpec scale = float_arg("scale_factor", 1.0, 0.0, 1.0e6, true);
    scale.nullable = true;
    ArgSpec align = bool_arg("align_corners", false);
    align.nullable = true;
    s.args = {size, scale, choice_arg("mode", "nearest", {"nearest", "bilinear"}), align};
    s.normalize = [](Args& a) {
        const bool has_size = !a["size"].none, has_scale = !a["scale_factor"].none;
        CNN_CHECK_ARG(has_size != has_scale, "Upsample: give exactly one of size and scale_factor",
                      has_size ? " (both were given)" : " (neither was given)");
        CNN_CHECK_ARG(a["align_corners"].none || a["mode"].s == "bilinear",
                      "Upsample: align_corners can only be set with mode='bilinear', got mode='",
                      a["mode"].s, "'");
    };
    s.make = [](const Args& a) { return std::make_shared<Upsample>(a); };
    return s;
}

}  // namespace nn
}  // namespace cnnkit
