// The element-wise activation layer shared by every activation type (ReLU, LeakyReLU, Sigmoid,
// Tanh in layers.cpp; ELU, SiLU, GELU, ReLU6, Hardswish in layers_ext.cpp): one class over the
// activation kernel family (cpu::Act), and the schema of an activation without arguments.
#pragma once

#include <memory>
#include <string>

#include "nn/layer.h"
#include "nn/schema.h"
#include "ops/ops.h"

namespace cnnkit {
namespace nn {

class Activation : public Layer {
  public:
    Activation(cpu::Act act, float alpha, std::string config = "")
        : act_(act), alpha_(alpha), config_(std::move(config)) {}
    std::string config() const override { return config_; }

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
    std::string config_;
};

inline LayerSchema activation_schema(const char* type, cpu::Act act) {
    LayerSchema s(type);
    s.make = [act](const Args&) { return std::make_shared<Activation>(act, 0.f); };
    return s;
}

}  // namespace nn
}  // namespace cnnkit
