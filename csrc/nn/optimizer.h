// Optimizers over the Net's flat parameter buffer: one fused update kernel per step, with
// PyTorch's update rules. The step zeroes the gradients afterwards.
#pragma once

#include <string>
#include <vector>

#include "core/tensor.h"

namespace cnnkit {
namespace nn {

struct OptimizerConfig {
    std::string kind = "sgd";  // sgd | adam | adamw | adagrad | rmsprop
    float lr = 0.01f;
    float momentum = 0.f, dampening = 0.f, weight_decay = 0.f;
    bool nesterov = false;
    float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
    float lr_decay = 0.f;  // adagrad
    float alpha = 0.99f;   // rmsprop
};

class Optimizer {
  public:
    explicit Optimizer(const OptimizerConfig& cfg);

    // params and grads are flat (n); state is created on the first step.
    void step(Tensor& params, Tensor& grads);

    OptimizerConfig& config() { return cfg_; }
    int64_t step_count() const { return step_count_; }
    void set_step_count(int64_t s) { step_count_ = s; }
    // Names of the state buffers ("momentum_buffer", "exp_avg", ...) in order.
    std::vector<std::string> state_names() const;
    std::vector<Tensor>& state() { return state_; }
    // Replace state (for loading a checkpoint); sizes must match `n`.
    void set_state(const std::vector<Tensor>& state);
    void ensure_state(int64_t n, Device device);

  private:
    OptimizerConfig cfg_;
    int64_t step_count_ = 0;
    std::vector<Tensor> state_;
};

}  // namespace nn
}  // namespace cnnkit
