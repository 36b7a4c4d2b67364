// Graph nodes that merge several activations: Add (element-wise sum, the residual connection)
// and Concat (along a dimension, the branches of Inception/DenseNet). Both take two or more
// inputs (arity 0) and have no parameters.
#include "nn/layer.h"
#include "nn/schema.h"
#include "ops/ops.h"

namespace cnnkit {
namespace nn {

namespace {

class Merge : public Layer {
  public:
    int arity() const override { return 0; }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        throw ValueError(str_cat(label(), ": takes a list of two or more inputs, got one of shape ",
                                 shape_str(in)));
    }
    void forward_impl(const Tensor&, Tensor&, bool, const Workspace&) override {
        throw ValueError(str_cat(label(), ": takes a list of inputs"));
    }
    void backward_impl(const Tensor&, const Tensor&, const Tensor&, Tensor*,
                       const Workspace&) override {
        throw ValueError(str_cat(label(), ": takes a list of inputs"));
    }
    std::string shapes_str(const std::vector<Shape>& in) const {
        std::string s;
        for (const Shape& x : in) s += (s.empty() ? "" : ", ") + shape_str(x);
        return "[" + s + "]";
    }
};

// y = x0 + x1 + ...; every input has the same shape. dx_k = dy.
class Add : public Merge {
  protected:
    Shape output_shape_n_impl(const std::vector<Shape>& in) const override {
        for (const Shape& s : in)
            if (s != in[0])
                throw ValueError(str_cat(label(), ": inputs must all have the same shape, got ",
                                         shapes_str(in)));
        return in[0];
    }
    void forward_n_impl(const std::vector<Tensor>& xs, Tensor& y, bool, const Workspace&) override {
        sum(xs, y, false);
    }
    // Add -> ReLU (a residual block's end) in one pass for two inputs; backward never reads y.
    bool fuses_relu() const override { return true; }
    void forward_relu_n_impl(const std::vector<Tensor>& xs, Tensor& y, bool,
                             const Workspace&) override {
        sum(xs, y, true);
    }
    static void sum(const std::vector<Tensor>& xs, Tensor& y, bool relu) {
        if (xs.size() == 2) return ops::add2(y, xs[0], xs[1], relu);
        y.copy_from(xs[0]);
        for (size_t k = 1; k < xs.size(); ++k) ops::add_into(y, xs[k]);
        if (relu) ops::activation_forward(y, y, cpu::Act::ReLU, 0.f);
    }
    void backward_n_impl(const std::vector<Tensor>&, const Tensor&, const Tensor& dy,
                         const std::vector<Tensor*>& dxs, const Workspace&) override {
        for (Tensor* dx : dxs)
            if (dx) dx->copy_from(dy);
    }
};

// Concatenation along dim (1: channels); the other dimensions must agree.
class Concat : public Merge {
  public:
    explicit Concat(const Args& a) : dim_(arg_int(a, "dim")) {}

  protected:
    Shape output_shape_n_impl(const std::vector<Shape>& in) const override {
        Shape out = in[0];
        const size_t d = static_cast<size_t>(dim_);
        for (const Shape& s : in) {
            bool ok = s.size() == in[0].size() && d < s.size();
            for (size_t i = 0; ok && i < s.size(); ++i) ok = i == d || s[i] == in[0][i];
            if (!ok)
                throw ValueError(str_cat(label(), ": inputs must have ", d + 1,
                                         " or more dimensions and agree on all but dim ", dim_,
                                         ", got ", shapes_str(in)));
        }
        out[d] = 0;
        for (const Shape& s : in) out[d] = add_size(out[d], s[d], label());
        return out;
    }
    void forward_n_impl(const std::vector<Tensor>& xs, Tensor& y, bool, const Workspace&) override {
        int64_t off = 0;
        for (const Tensor& x : xs) {
            ops::concat_forward(y, x, dim_, off);
            off += x.size(dim_);
        }
    }
    void backward_n_impl(const std::vector<Tensor>& xs, const Tensor&, const Tensor& dy,
                         const std::vector<Tensor*>& dxs, const Workspace&) override {
        int64_t off = 0;
        for (size_t k = 0; k < xs.size(); ++k) {
            if (dxs[k]) ops::concat_backward(*dxs[k], dy, dim_, off);
            off += xs[k].size(dim_);
        }
    }

  private:
    int64_t dim_;
};

}  // namespace

LayerSchema schema_Add() {
    LayerSchema s("Add");
    s.make = [](const Args&) { return std::make_shared<Add>(); };
    return s;
}

LayerSchema schema_Concat() {
    LayerSchema s("Concat");
    s.args = {int_arg("dim", 1, 1, 7)};
    s.make = [](const Args& a) { return std::make_shared<Concat>(a); };
    return s;
}

}  // namespace nn
}  // namespace cnnkit
