// Layer interface: public forward/backward are non-virtual and validate; virtual *_impl compute.
// Parameters are views into the owning Net's flat buffers; backward ACCUMULATES parameter
// gradients (the optimizer step zeroes them).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/args.h"

namespace cnnkit {
namespace nn {

enum class Init { KaimingUniform, FanInUniform, Ones, Zeros };

struct ParamSpec {
    std::string name;  // "weight", "bias", "running_mean", ...
    Shape shape;
    Init init;
    int64_t fan_in;  // for the uniform initialisers
};

// Scratch memory handed to a layer for one call (im2col columns and the like).
struct LayerSchema;

struct Workspace {
    float* data = nullptr;
    int64_t floats = 0;
};

class Layer {
  public:
    virtual ~Layer() = default;

    // Type name as the user wrote it ("Conv2d") and the position-based name set by the Net
    // ("3"), used in every error message.
    std::string type() const;
    std::string label() const;
    void set_index(int64_t i) { index_ = i; }

    // Output shape for input shape `in`; throws ValueError naming the layer and both shapes.
    Shape output_shape(const Shape& in) const { return output_shape_impl(in); }
    virtual int64_t workspace_floats(const Shape& in) const { return 0; }
    // True when y is x reshaped (Flatten): the Net aliases instead of calling forward.
    virtual bool is_view() const { return false; }
    // False when backward never reads y (its y argument unused): then the Net may write this
    // layer's output straight into a caller's buffer that it does not keep (Net::forward).
    virtual bool backward_reads_output() const { return true; }
    // Short description of the configuration, for summary() and errors.
    virtual std::string config() const { return ""; }

    // y must already have output_shape(x.shape()).
    void forward(const Tensor& x, Tensor& y, bool training, const Workspace& ws);
    // forward, then ReLU in place: what the Net runs for a layer directly followed by ReLU
    // when fuses_relu() (the ReLU layer's output then aliases this layer's output, and its
    // backward, x > 0 ? dy : 0, reads the rectified values, which are > 0 exactly where the
    // pre-activation values were).
    void forward_relu(const Tensor& x, Tensor& y, bool training, const Workspace& ws);
    virtual bool fuses_relu() const { return false; }
    // False when an eval forward mixes the images of a batch (BatchNorm without running
    // statistics, layers written in Python, which may): the Net then never splits one (see
    // Net::forward_to_host).
    virtual bool eval_per_sample() const { return true; }
    // Eval-mode BatchNorm folded into the convolution before it (graph models on the CPU, see
    // Net::plan_graph). affine_channels() > 0 when this layer's eval forward of a 4-D input is
    // y = x * scale[c] + shift[c] per channel c; eval_affine, called in place of that forward
    // (and recorded as one: a backward after it refuses as after the forward), writes scale
    // and shift, rounded as that forward rounds them.
    virtual int64_t affine_channels() const { return 0; }
    virtual void eval_affine(float* scale, float* shift);
    // fold_floats() > 0 when this layer can take such an affine into its weights (Conv2d on
    // the CPU): forward_affine computes scale * layer(x) + shift per output channel, then ReLU
    // when relu, in the layer's own output pass; `fold` holds fold_floats() floats.
    virtual int64_t fold_floats() const { return 0; }
    void forward_affine(const Tensor& x, Tensor& y, const float* scale, const float* shift,
                        bool relu, float* fold, const Workspace& ws);
    // x, y: this layer's input and output from the last forward; dx null when not needed.
    void backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx,
                  const Workspace& ws);

    // The schema this layer was built from (nn/schema.h) and its complete arguments; called
    // once by make_layer, which then allocates the parameters from the schema's shapes.
    void set_schema(const LayerSchema* schema, const Args& args);
    const LayerSchema& schema() const;
    const Args& args() const { return args_; }
    // Graph nodes with several inputs (Add, Concat): arity() is 1 for ordinary layers, 0 for
    // "two or more". The _n forms take every input; for one-input layers they are forward,
    // backward and output_shape.
    virtual int arity() const { return 1; }
    Shape output_shape_n(const std::vector<Shape>& in) const;
    void forward_n(const std::vector<Tensor>& xs, Tensor& y, bool training, const Workspace& ws);
    // forward_n then ReLU (see forward_relu), for a multi-input node that fuses_relu().
    void forward_relu_n(const std::vector<Tensor>& xs, Tensor& y, bool training,
                        const Workspace& ws);
    // dxs[k] null: that input needs no gradient.
    void backward_n(const std::vector<Tensor>& xs, const Tensor& y, const Tensor& dy,
                    const std::vector<Tensor*>& dxs, const Workspace& ws);
    // Name used in error messages instead of "layer i" (a graph node's dotted path).
    void set_name(const std::string& name) { name_ = name; }

    // Parameters (trainable) and buffers (running statistics), in state_dict order: the
    // schema's shapes for this layer's arguments.
    std::vector<ParamSpec> param_specs() const;
    std::vector<ParamSpec> buffer_specs() const;
    std::vector<Tensor>& params() { return params_; }
    std::vector<Tensor>& grads() { return grads_; }
    std::vector<Tensor>& buffers() { return buffers_; }
    // Point parameters/gradients/buffers at new storage, copying current values over.
    void bind(const std::vector<Tensor>& params, const std::vector<Tensor>& grads,
              const std::vector<Tensor>& buffers);
    // Fresh values from the specs with the counter-based RNG keyed by seed.
    void reset_parameters(uint64_t seed);

    // Dropout's RNG stream for this forward (set by the Net each training step).
    void set_rng(uint64_t seed, uint64_t stream) {
        rng_seed_ = seed;
        rng_stream_ = stream;
    }

  protected:
    virtual Shape output_shape_impl(const Shape& in) const = 0;
    virtual void forward_impl(const Tensor& x, Tensor& y, bool training, const Workspace& ws) = 0;
    virtual void backward_impl(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor* dx,
                               const Workspace& ws) = 0;
    virtual Shape output_shape_n_impl(const std::vector<Shape>& in) const;
    virtual void forward_n_impl(const std::vector<Tensor>& xs, Tensor& y, bool training,
                                const Workspace& ws);
    // Default: forward_n_impl then a separate ReLU pass over y.
    virtual void forward_relu_n_impl(const std::vector<Tensor>& xs, Tensor& y, bool training,
                                     const Workspace& ws);
    virtual void backward_n_impl(const std::vector<Tensor>& xs, const Tensor& y, const Tensor& dy,
                                 const std::vector<Tensor*>& dxs, const Workspace& ws);
    virtual void forward_affine_impl(const Tensor& x, Tensor& y, const float* scale,
                                     const float* shift, bool relu, float* fold,
                                     const Workspace& ws);
    // Default: forward_impl then a separate ReLU pass over y.
    virtual void forward_relu_impl(const Tensor& x, Tensor& y, bool training,
                                   const Workspace& ws);
    // Shared by forward and forward_relu: y and the workspace fit x; records `training`.
    void check_forward(const Tensor& x, const Tensor& y, bool training, const Workspace& ws);
    // The same for the multi-input forms: y fits output_shape_n of the inputs.
    void check_forward_n(const std::vector<Tensor>& xs, const Tensor& y, bool training);
    // Throws ValueError "<Type> (layer i): <what>: expected <e>, got <shape>".
    [[noreturn]] void shape_error(const std::string& expected, const Shape& got) const;
    // ValueError when a window over a padded axis has extents that do not fit in 64 bits.
    void check_extent(int64_t in, int64_t k, int64_t pad, int64_t dil) const;
    void init_storage();  // allocate standalone params/grads/buffers from the specs

    std::vector<Tensor> params_, grads_, buffers_;
    const LayerSchema* schema_ = nullptr;
    Args args_;
    int64_t index_ = -1;
    std::string name_;
    uint64_t rng_seed_ = 0, rng_stream_ = 0;
    bool last_training_ = false;
};

// A layer whose output is its input reshaped (Flatten, Identity): the Net aliases the storage
// and skips forward; called on their own, forward and backward copy.
class ViewLayer : public Layer {
  public:
    bool is_view() const override { return true; }

  protected:
    void forward_impl(const Tensor& x, Tensor& y, bool, const Workspace&) override {
        if (y.data() != x.data()) y.copy_from(x);
    }
    void backward_impl(const Tensor&, const Tensor&, const Tensor& dy, Tensor* dx,
                       const Workspace&) override {
        if (dx && dx->data() != dy.data()) dx->copy_from(dy);
    }
};

using LayerPtr = std::shared_ptr<Layer>;

// ---- factories ------------------------------------------------------------------------------
// Every layer is built by nn::make_layer(type, args) (nn/schema.h). These typed shortcuts are
// for native code (benchmarks, native tests) and go through it.

LayerPtr make_layer(const std::string& type, const Args& given);
LayerPtr make_conv2d(int64_t in_channels, int64_t out_channels, int64_t kh, int64_t kw,
                     int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                     int64_t groups, bool bias);
LayerPtr make_maxpool2d(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        bool ceil_mode);
LayerPtr make_avgpool2d(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        bool ceil_mode, bool count_include_pad);
LayerPtr make_activation(const std::string& kind, float negative_slope);
LayerPtr make_linear(int64_t in_features, int64_t out_features, bool bias);
LayerPtr make_flatten();
LayerPtr make_dropout(float p);
LayerPtr make_batchnorm2d(int64_t num_features, float eps, float momentum, bool affine,
                          bool track_running_stats);

}  // namespace nn
}  // namespace cnnkit
