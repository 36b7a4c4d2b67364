// ConvTranspose2d (PyTorch's arguments, weight layout and numerics) on the convolution kernels:
// its forward is a convolution's input gradient, its input gradient a convolution's forward and
// its weight gradient a convolution's weight gradient with the roles of input and output swapped.
#include "nn/layer.h"
#include "nn/schema.h"
#include "ops/ops.h"

namespace cnnkit {
namespace nn {

namespace {

// Output extent along one axis, exactly (PyTorch):
// (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1.
__int128 transposed_extent(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t out_pad,
                           int64_t dil) {
    return ((__int128)in - 1) * stride - 2 * (__int128)pad + (__int128)dil * ((__int128)k - 1) +
           out_pad + 1;
}

// ---- ConvTranspose2d ------------------------------------------------------------------------
//
// In convolution terms (ConvGeom) the roles are swapped: the convolution's input is this
// layer's output y (N, out_channels, H, W) and the convolution's output is this layer's input
// x (N, in_channels, P, Q); the weight (in_channels, out_channels/groups, kh, kw) is exactly the
// convolution's (K, C/groups, R, S). Forward is conv2d_backward_input, backward-input is
// conv2d_forward and the weight gradient is conv2d_backward_weight with dy and x exchanged.
//
// A convolution over H rows has conv_out_size(H) = P + output_padding / stride outputs, which
// is more than P when output_padding >= stride (allowed when it is below the dilation): then x
// is zero-padded at the bottom/right to that extent (the extra outputs read only y's last rows,
// which no input pixel reaches, and contribute nothing), and the input gradient is computed at
// that extent and cropped.

class ConvTranspose2d : public Layer {
  public:
    explicit ConvTranspose2d(const Args& a)
        : Ci_(arg_int(a, "in_channels")), Co_(arg_int(a, "out_channels")),
          R_(arg_pair(a, "kernel_size").first), S_(arg_pair(a, "kernel_size").second),
          sh_(arg_pair(a, "stride").first), sw_(arg_pair(a, "stride").second),
          ph_(arg_pair(a, "padding").first), pw_(arg_pair(a, "padding").second),
          oph_(arg_pair(a, "output_padding").first), opw_(arg_pair(a, "output_padding").second),
          dh_(arg_pair(a, "dilation").first), dw_(arg_pair(a, "dilation").second),
          groups_(arg_int(a, "groups")), bias_(arg_bool(a, "bias")) {}
    std::string config() const override {
        return str_cat(Ci_, ", ", Co_, ", kernel_size=(", R_, ", ", S_, "), stride=(", sh_, ", ",
                       sw_, "), padding=(", ph_, ", ", pw_, ")",
                       oph_ != 0 || opw_ != 0
                           ? str_cat(", output_padding=(", oph_, ", ", opw_, ")")
                           : "",
                       groups_ != 1 ? str_cat(", groups=", groups_) : "",
                       bias_ ? "" : ", bias=False",
                       dh_ != 1 || dw_ != 1 ? str_cat(", dilation=(", dh_, ", ", dw_, ")") : "");
    }
    // The convolution whose input gradient this layer's forward is; in = (N, Ci, P, Q) checked.
    ConvGeom geom(const Shape& in) const {
        ConvGeom g;
        g.N = in[0]; g.C = Co_; g.K = Ci_; g.R = R_; g.S = S_;
        g.H = static_cast<int64_t>(transposed_extent(in[2], R_, sh_, ph_, oph_, dh_));
        g.W = static_cast<int64_t>(transposed_extent(in[3], S_, sw_, pw_, opw_, dw_));
        g.stride_h = sh_; g.stride_w = sw_; g.pad_h = ph_; g.pad_w = pw_;
        g.dil_h = dh_; g.dil_w = dw_; g.groups = groups_;
        g.P = conv_out_size(g.H, R_, sh_, ph_, dh_);  // in[2] + oph_ / sh_
        g.Q = conv_out_size(g.W, S_, sw_, pw_, dw_);
        return g;
    }
    int64_t workspace_floats(const Shape& in) const override {
        return ops::conv2d_workspace_floats(geom(in), params_[0].device());
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.size() != 4 || in[1] != Ci_) shape_error(str_cat("(N, ", Ci_, ", H, W)"), in);
        if (in[2] < 1 || in[3] < 1)
            shape_error(str_cat("(N, ", Ci_, ", H, W) with H, W >= 1"), in);
        const __int128 H = transposed_extent(in[2], R_, sh_, ph_, oph_, dh_);
        const __int128 W = transposed_extent(in[3], S_, sw_, pw_, opw_, dw_);
        if (H > kMaxBytes || W > kMaxBytes)
            throw ValueError(str_cat(label(), ": input spatial size (", in[2], ", ", in[3],
                                     ") gives an output size that does not fit in a 64-bit size"));
        if (H < 1 || W < 1)
            throw ValueError(str_cat(
                label(), ": input spatial size (", in[2], ", ", in[3], ") gives an output of (",
                static_cast<int64_t>(H), ", ", static_cast<int64_t>(W),
                "), which is too small: output = (input - 1) * stride - 2 * padding + "
                "dilation * (kernel_size - 1) + output_padding + 1"));
        check_extent(static_cast<int64_t>(H), R_, ph_, dh_);
        check_extent(static_cast<int64_t>(W), S_, pw_, dw_);
        Shape out{in[0], Co_, static_cast<int64_t>(H), static_cast<int64_t>(W)};
        checked_numel(out, str_cat(label(), ": output"));
        return out;
    }
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace& ws) override {
        const ConvGeom g = geom(x.shape());
        ops::conv2d_backward_input(y, conv_output(x, g), params_[0], g, ws.data);
        if (bias_) ops::channel_bias_forward(y, params_[1]);
    }
    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace& ws) override {
        const ConvGeom g = geom(x.shape());
        if (bias_) ops::channel_bias_backward(grads_[1], dy);
        ops::conv2d_backward_weight(grads_[0], nullptr, conv_output(x, g), dy, g, ws.data);
        if (!dx) return;
        if (!extended(x, g)) return ops::conv2d_forward(*dx, dy, params_[0], nullptr, g, ws.data);
        Tensor full = scratch(big_, {g.N, g.K, g.P, g.Q}, x.device());
        ops::conv2d_forward(full, dy, params_[0], nullptr, g, ws.data);
        if (g.P != x.size(2) && g.Q != x.size(3)) {  // crop rows, then columns
            Tensor rows = scratch(mid_, {g.N, g.K, x.size(2), g.Q}, x.device());
            ops::concat_backward(rows, full, 2, 0);
            ops::concat_backward(*dx, rows, 3, 0);
        } else {
            ops::concat_backward(*dx, full, g.P != x.size(2) ? 2 : 3, 0);
        }
    }

  private:
    // Whether the convolution has more outputs than x has pixels (output_padding >= stride).
    static bool extended(const Tensor& x, const ConvGeom& g) {
        return g.P != x.size(2) || g.Q != x.size(3);
    }
    // x as the convolution's (N, K, P, Q) output: itself, or zero-padded at the bottom/right.
    Tensor conv_output(const Tensor& x, const ConvGeom& g) {
        if (!extended(x, g)) return x;
        Tensor src = x;
        if (g.Q != x.size(3)) {  // columns first, then rows
            Tensor cols = scratch(mid_, {g.N, g.K, x.size(2), g.Q}, x.device());
            cols.fill(0.f);
            ops::concat_forward(cols, x, 3, 0);
            src = cols;
        }
        if (g.P == x.size(2)) return src;
        Tensor full = scratch(big_, {g.N, g.K, g.P, g.Q}, x.device());
        full.fill(0.f);
        ops::concat_forward(full, src, 2, 0);
        return full;
    }
    // A view of `buf` with shape s on device d, (re)allocated when too small.
    Tensor scratch(Tensor& buf, const Shape& s, Device d) const {
        const int64_t n = checked_numel(s, str_cat(label(), ": scratch"));
        if (!buf.defined() || buf.capacity() < n || buf.device() != d) buf = Tensor({n}, d);
        return buf.view(s);
    }

    int64_t Ci_, Co_, R_, S_, sh_, sw_, ph_, pw_, oph_, opw_, dh_, dw_, groups_;
    bool bias_;
    Tensor big_, mid_;  // x zero-padded / the input gradient before cropping (extended only)
};

}  // namespace

// ---- schema ---------------------------------------------------------------------------------

// ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
// groups=1, bias=True, dilation=1), PyTorch's order.
LayerSchema schema_ConvTranspose2d() {
    LayerSchema s("ConvTranspose2d");
    s.args = {int_req("in_channels", 1),      int_req("out_channels", 1),
              pair_req("kernel_size", 1),     pair_arg("stride", 1, 1),
              pair_arg("padding", 0, 0),      pair_arg("output_padding", 0, 0),
              int_arg("groups", 1, 1),        bool_arg("bias", true),
              pair_arg("dilation", 1, 1)};
    s.normalize = [](Args& a) {
        const int64_t C = arg_int(a, "in_channels"), K = arg_int(a, "out_channels"),
                      g = arg_int(a, "groups");
        CNN_CHECK_ARG(C % g == 0 && K % g == 0, "ConvTranspose2d: in_channels (", C,
                      ") and out_channels (", K, ") must both be divisible by groups (", g, ")");
        auto op = arg_pair(a, "output_padding"), st = arg_pair(a, "stride"),
             d = arg_pair(a, "dilation");
        CNN_CHECK_ARG((op.first < st.first || op.first < d.first) &&
                          (op.second < st.second || op.second < d.second),
                      "ConvTranspose2d: output_padding (", op.first, ", ", op.second,
                      ") must be smaller than either stride (", st.first, ", ", st.second,
                      ") or dilation (", d.first, ", ", d.second, ") along each axis");
    };
    s.params = [](const Args& a) {
        const int64_t C = arg_int(a, "in_channels"), K = arg_int(a, "out_channels"),
                      g = arg_int(a, "groups");
        auto k = arg_pair(a, "kernel_size");
        // PyTorch's fan-in of a transposed convolution's weight: its dimension 1 times the taps
        const int64_t fan_in = mul_size(mul_size(K / g, k.first, "ConvTranspose2d: fan-in"),
                                        k.second, "ConvTranspose2d: fan-in");
        std::vector<ParamSpec> p{{"weight", {C, K / g, k.first, k.second}, Init::KaimingUniform,
                                  fan_in}};
        if (arg_bool(a, "bias")) p.push_back({"bias", {K}, Init::FanInUniform, fan_in});
        return p;
    };
    s.make = [](const Args& a) { return std::make_shared<ConvTranspose2d>(a); };
    return s;
}

}  // namespace nn
}  // namespace cnnkit
