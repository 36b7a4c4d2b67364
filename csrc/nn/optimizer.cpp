// Optimizer: validates hyper-parameters, owns the state buffers, calls the update kernels.
#include "nn/optimizer.h"

#include <cmath>

#include "ops/ops.h"

namespace cnnkit {
namespace nn {

Optimizer::Optimizer(const OptimizerConfig& c) : cfg_(c) {
    const std::string& k = c.kind;
    CNN_CHECK_ARG(k == "sgd" || k == "adam" || k == "adamw" || k == "adagrad" || k == "rmsprop",
                  "unknown optimizer '", k, "' (expected sgd, adam, adamw, adagrad or rmsprop)");
    CNN_CHECK_ARG(std::isfinite(c.lr) && c.lr >= 0.f, k, ": lr must be >= 0, got ", c.lr);
    CNN_CHECK_ARG(c.momentum >= 0.f, k, ": momentum must be >= 0, got ", c.momentum);
    CNN_CHECK_ARG(c.weight_decay >= 0.f, k, ": weight_decay must be >= 0, got ", c.weight_decay);
    CNN_CHECK_ARG(c.eps >= 0.f, k, ": eps must be >= 0, got ", c.eps);
    CNN_CHECK_ARG(c.beta1 >= 0.f && c.beta1 < 1.f && c.beta2 >= 0.f && c.beta2 < 1.f, k,
                  ": betas must be in [0, 1), got (", c.beta1, ", ", c.beta2, ")");
    CNN_CHECK_ARG(!c.nesterov || (c.momentum > 0.f && c.dampening == 0.f),
                  "sgd: nesterov momentum requires a momentum and zero dampening");
    CNN_CHECK_ARG(c.alpha >= 0.f, k, ": alpha must be >= 0, got ", c.alpha);
    CNN_CHECK_ARG(c.lr_decay >= 0.f, k, ": lr_decay must be >= 0, got ", c.lr_decay);
}

std::vector<std::string> Optimizer::state_names() const {
    const std::string& k = cfg_.kind;
    if (k == "sgd") return {"momentum_buffer"};
    if (k == "adam" || k == "adamw") return {"exp_avg", "exp_avg_sq"};
    if (k == "adagrad") return {"sum"};
    return {"square_avg", "momentum_buffer"};
}

void Optimizer::ensure_state(int64_t n, Device device) {
    size_t want = state_names().size();
    bool ok = state_.size() == want;
    for (const Tensor& t : state_) ok = ok && t.numel() == n && t.device() == device;
    if (ok) return;
    state_.clear();
    for (size_t i = 0; i < want; ++i) state_.push_back(Tensor::zeros({n}, device));
}

void Optimizer::set_state(const std::vector<Tensor>& state) {
    CNN_CHECK_ARG(state.size() == state_names().size(), cfg_.kind, ": expected ",
                  state_names().size(), " state buffers, got ", state.size());
    state_ = state;
}

void Optimizer::step(Tensor& params, Tensor& grads) {
    const int64_t n = params.numel();
    CNN_CHECK(grads.numel() == n, "optimizer: params and grads differ in size");
    CNN_CHECK_ARG(grads.device() == params.device(), "optimizer: params on ",
                  device_name(params.device()), " but grads on ", device_name(grads.device()));
    ensure_state(n, params.device());
    ++step_count_;
    const OptimizerConfig& c = cfg_;
    // one fused update over the flat buffers, on the parameters' device (ops dispatches)
    if (c.kind == "sgd") {
        ops::sgd_step(params, state_[0], grads, c.lr, c.momentum, c.dampening, c.weight_decay,
                      c.nesterov, step_count_ == 1);
    } else if (c.kind == "adam" || c.kind == "adamw") {
        ops::adam_step(params, state_[0], state_[1], grads, c.lr, c.beta1, c.beta2, c.eps,
                       c.weight_decay, c.kind == "adamw", step_count_);
    } else if (c.kind == "adagrad") {
        ops::adagrad_step(params, state_[0], grads, c.lr, c.lr_decay, c.weight_decay, c.eps,
                          step_count_);
    } else {
        ops::rmsprop_step(params, state_[0], state_[1], grads, c.lr, c.alpha, c.eps,
                          c.weight_decay, c.momentum);
    }
    grads.fill(0.f);
}

}  // namespace nn
}  // namespace cnnkit
