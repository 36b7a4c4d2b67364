// Net: a Sequential of layers with flat parameter/gradient/buffer storage, activation arenas
// reused across steps, one workspace arena, a loss, an optimizer, and the fused train step.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "nn/layer.h"
#include "nn/optimizer.h"

namespace cnnkit {
namespace nn {

enum class LossKind { None, CrossEntropy, MSE };

struct StepResult {
    double loss = 0.0;
    int64_t correct = 0;  // cross-entropy only
};

class Net {
  public:
    explicit Net(std::vector<LayerPtr> layers);

    const std::vector<LayerPtr>& layers() const { return layers_; }
    Device device() const { return params_.device(); }
    void to(Device device);

    // Shapes of every activation for input shape `in` (validates; errors name the layer).
    std::vector<Shape> shapes(const Shape& in) const;
    // Per-sample input shape of the last forward ((C, H, W)); empty before the first.
    const Shape& input_shape() const { return arena_sample_; }

    // state_dict order: "<i>.weight", "<i>.bias", "<i>.running_mean", ...
    std::vector<std::pair<std::string, Tensor>> named_params();
    std::vector<std::pair<std::string, Tensor>> named_grads();
    std::vector<std::pair<std::string, Tensor>> named_buffers();
    Tensor& flat_params() { return params_; }
    Tensor& flat_grads() { return grads_; }
    int64_t num_params() const { return num_params_; }
    void zero_grad() { grads_.fill(0.f); }

    // Forward; returns the output (a view into the arena, valid until the next call).
    // `x` may be on the CPU (copied to the Net's device).
    Tensor forward(const Tensor& x, bool training);
    // Backward from dL/d(output) of the last forward; returns dL/dx (arena view) if need_dx.
    Tensor backward(const Tensor& dy, bool need_dx);

    void set_loss(LossKind kind) { loss_ = kind; }
    LossKind loss() const { return loss_; }
    void set_optimizer(std::shared_ptr<Optimizer> opt) { opt_ = std::move(opt); }
    std::shared_ptr<Optimizer> optimizer() const { return opt_; }

    // forward(training) + loss + backward + optimizer step; labels (N) for cross-entropy.
    // A non-finite loss, or an update that would make a parameter non-finite, leaves the
    // parameters unchanged and returns loss = inf/NaN (the caller reports divergence).
    StepResult train_step(const Tensor& x, const int64_t* labels, const Tensor* target);
    // forward(eval) + loss, no gradients.
    StepResult eval_step(const Tensor& x, const int64_t* labels, const Tensor* target);

    // Dropout RNG: seed and a counter advanced once per training forward.
    void set_rng(uint64_t seed, uint64_t counter) {
        rng_seed_ = seed;
        rng_counter_ = counter;
    }
    uint64_t rng_seed() const { return rng_seed_; }
    uint64_t rng_counter() const { return rng_counter_; }

    // Serialises forward/backward/steps: one Net may be used from several Python threads.
    std::mutex& mutex() { return mu_; }

  private:
    void ensure_arena(const std::vector<Shape>& shapes);
    double loss_forward_backward(const Tensor& out, const int64_t* labels, const Tensor* target,
                                 Tensor* dout, int64_t* correct);

    std::vector<LayerPtr> layers_;
    // relu_fused_[i]: layer i+1 is a ReLU computed inside layer i's forward (its output
    // aliases layer i's output); see Layer::forward_relu.
    std::vector<char> relu_fused_;
    bool aliases_input(size_t layer) const {
        return layers_[layer]->is_view() || (layer > 0 && relu_fused_[layer - 1]);
    }
    Tensor params_, grads_, buffers_;
    int64_t num_params_ = 0;
    std::vector<std::pair<std::string, std::pair<int64_t, Shape>>> param_index_, buffer_index_;

    // Activation arena: acts_[i] is layer i's input (acts_[L] the output), sized for arena_n_.
    Shape arena_sample_;
    int64_t arena_n_ = 0;
    std::vector<Tensor> act_store_, acts_;
    std::vector<Shape> act_shapes_;
    Tensor grad_store_[2];
    Tensor ws_store_;
    Tensor backup_;  // parameters before the last update (to refuse an overflowing step)
    bool have_forward_ = false, last_training_ = false;

    LossKind loss_ = LossKind::None;
    std::shared_ptr<Optimizer> opt_;
    uint64_t rng_seed_ = 0, rng_counter_ = 0;
    std::mutex mu_;
};

}  // namespace nn
}  // namespace cnnkit
