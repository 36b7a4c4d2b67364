// Net: a Sequential of layers with flat parameter/gradient/buffer storage, activation arenas
// reused across steps, one workspace arena, a loss, an optimizer, and the fused train step.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/runtime.h"
#include "nn/grad_bucketer.h"
#include "nn/layer.h"
#include "nn/optimizer.h"

namespace cnnkit {
namespace nn {

enum class LossKind { None, CrossEntropy, MSE };

struct StepResult {
    double loss = 0.0;
    int64_t correct = 0;  // cross-entropy only
};

// A model: layers as the nodes of a DAG in topological order. Value 0 is the input, node i
// computes value i + 1 from the values inputs[i] (ids <= i); value `output` is the result.
// Sequential is the chain inputs[i] = {i}, run by the chain code (ping-pong gradients); any
// other graph by the graph code (net_graph.cpp). Parameter names are "<names[i]>.<param>".
class Net {
  public:
    explicit Net(std::vector<LayerPtr> layers);
    Net(std::vector<LayerPtr> layers, std::vector<std::vector<int64_t>> inputs,
        std::vector<std::string> names, int64_t output);
    bool is_chain() const { return chain_; }
    const std::vector<std::vector<int64_t>>& node_inputs() const { return inputs_; }
    // Bytes of activation storage the last forward's plan uses (graphs: planned from
    // liveness in eval mode; every value kept when training, for backward).
    int64_t activation_bytes() const { return act_bytes_; }
    // (convolution, BatchNorm) node pairs the last graph plan folds (eval on the CPU).
    std::vector<std::pair<int64_t, int64_t>> folded_pairs() const {
        std::vector<std::pair<int64_t, int64_t>> out;
        for (size_t i = 0; i < fold_.size(); ++i)
            if (fold_[i] >= 0) out.push_back({static_cast<int64_t>(i), fold_[i]});
        return out;
    }

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
    // Forward with the output in a CPU tensor the caller keeps (handed to numpy): the buffer
    // of the last such call again when nobody else holds it any more (no allocation, no page
    // faults), else a new one. A CPU chain whose last layer's backward does not read its
    // output writes it there directly; otherwise the arena's output is copied in.
    //
    // Eval forwards of many images on the CPU run in chunks of a few images whose largest
    // activation fits in the core's L2 (a chunk's values then stay in cache from the layer
    // that writes them to the one that reads them: ResNet-20 at batch 256 ran 1.10x faster in
    // chunks of 8), with the same bits as one pass (each image's values depend on that image
    // alone). Graph models always (their backward refuses after an eval forward), chains when
    // `inference` (predict: no backward follows); never around a layer that mixes images.
    // With T > 1 threads the chunks are shared out among them, each thread running whole
    // chunks through every layer on its own: thread 0 on this Net, thread t on an eval
    // replica (same layers, its own arena, the parameters and buffers shared), so there is
    // no barrier per layer and a chunk stays in one core's cache.
    Tensor forward_to_host(const Tensor& x, bool training, bool inference = false);
    // Fewest images per chunk for such a forward (0: one pass): the budget, CNNKIT_EVAL_CHUNK_KB
    // (default 512), over the largest value's bytes per image, and at least 8;
    // set_eval_chunk_kb(0) turns chunks off.
    int64_t eval_chunk(const std::vector<Shape>& shapes, bool training, bool inference) const;
    static void set_eval_chunk_kb(int64_t kb);
    static int64_t eval_chunk_kb();
    // Chunks the last forward_to_host ran in (1: one pass).
    int64_t last_eval_chunks() const { return last_chunks_; }
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

    // Data-parallel training: train_step calls `fn` before the update on the flat gradient
    // buffer in host memory; it must sum the gradients of every process in place (an MPI
    // all-reduce). They are then multiplied by `scale` (1 / number of processes). With
    // bucket_bytes = 0, one call on the whole buffer after the backward. With bucket_bytes > 0
    // the buffer is cut at layer boundaries into buckets of at least that many bytes
    // (grad_buckets), and `fn` is called on each from a communication thread, in a fixed
    // order, as soon as the backward has completed it, overlapping the reduction with the
    // rest of the backward; train_step waits for every bucket before the update. CUDA
    // gradients are staged through page-locked host memory: bucket by bucket on copy streams
    // beside the backward (cuda::GradStaging), or in one copy after it when there are no
    // buckets or no page-locked memory. A step whose loss is not finite still takes part,
    // with NaN gradients (the same buckets), so that every process refuses the same update.
    // An error from `fn` leaves the parameters unchanged and the gradients zero, and is
    // rethrown by train_step once the thread is idle. An empty `fn` switches it off.
    //
    // With on_device (CUDA models, the NCCL all-reduce), `fn` gets device pointers instead
    // and only queues the in-place sum, after the work queued on cnnkit's stream; `wait`
    // then waits for every sum queued (throwing on an error or timeout) and orders cnnkit's
    // stream after them; the scaling runs on the device and nothing crosses to the host.
    // With buckets, the sums are queued from the step's thread as the backward completes
    // each bucket (no communication thread), and waited for once before the update.
    using GradReducer = std::function<void(float* grads, int64_t n)>;
    using GradReducerWait = std::function<void()>;
    void set_grad_reducer(GradReducer fn, float scale, int64_t bucket_bytes = 0,
                          bool on_device = false, GradReducerWait wait = {});
    bool grad_reducer_on_device() const { return reducer_on_device_; }
    bool has_grad_reducer() const { return static_cast<bool>(reducer_); }
    int64_t grad_bucket_bytes() const { return bucket_bytes_; }
    // The buckets train_step reduces for `bucket_bytes`, in issue order (from the end of the
    // flat buffer to its start); they depend only on the layers' parameter shapes.
    std::vector<GradBucketer::Bucket> grad_buckets(int64_t bucket_bytes) const;

    // Dropout RNG: seed and a counter advanced once per training forward.
    void set_rng(uint64_t seed, uint64_t counter) {
        rng_seed_ = seed;
        rng_counter_ = counter;
    }
    uint64_t rng_seed() const { return rng_seed_; }
    uint64_t rng_counter() const { return rng_counter_; }

    // Serialises forward/backward/steps: one Net may be used from several Python threads.
    std::mutex& mutex() { return mu_; }

    // Whether eval forwards of graph models fold BatchNorm into the convolution before it (on
    // by default; CNNKIT_FOLD_BATCHNORM=0 at start-up, or this, turns it off for A/B runs).
    static void set_fold_batchnorm(bool on);
    static bool fold_batchnorm();

  private:
    void init(std::vector<std::string> names);
    // Eval replica t (1-based: thread t of a chunked forward_to_host), built on first use
    // and again after the parameters moved (to(), a new storage).
    Net& eval_replica(size_t t);
    void bind_storage();
    void ensure_arena(const std::vector<Shape>& shapes);
    // Whether the activation arena is laid out for an input of shape `in` on the Net's device.
    bool planned_for(const Shape& in) const {
        return plan_valid_ && act_shapes_[0] == in && acts_[0].device() == params_.device();
    }
    // the graph forms (net_graph.cpp)
    void plan_graph(const std::vector<Shape>& shapes, bool training);
    Tensor forward_graph(const Tensor& x, bool training);
    Tensor backward_graph(const Tensor& dy, bool need_dx);
    std::vector<int64_t> plan_grad_buffers(bool need_dx, std::vector<int64_t>* need) const;
    double loss_forward_backward(const Tensor& out, const int64_t* labels, const Tensor* target,
                                 Tensor* dout, int64_t* correct);

    std::vector<LayerPtr> layers_;
    // relu_fused_[i]: layer i+1 is a ReLU computed inside layer i's forward (its output
    // aliases layer i's output); see Layer::forward_relu.
    std::vector<char> relu_fused_;
    std::vector<int64_t> fused_relu_;  // node -> the ReLU node it runs, or -1
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
    Tensor host_out_;  // forward_to_host's last output buffer (see there)
    std::vector<std::string> names_;  // as given to the constructor (for replicas)
    std::vector<std::unique_ptr<Net>> replicas_;  // eval replicas (see forward_to_host)
    int64_t last_chunks_ = 1;
    Tensor host_buffer(const Shape& s);
    std::vector<Shape> act_shapes_;
    Tensor grad_store_[2];
    Tensor ws_store_;
    Tensor backup_;  // parameters before the last update (to refuse an overflowing step)
    bool have_forward_ = false, last_training_ = false;
    bool plan_valid_ = false;  // acts_/act_shapes_ describe a usable arena (see planned_for)

    // graph structure and its storage plan (unused for chains)
    std::vector<std::vector<int64_t>> inputs_;
    int64_t output_ = 0;
    bool chain_ = true;
    std::vector<int64_t> root_;    // value -> the value whose storage it uses (views, fused ReLU)
    std::vector<char> skip_;       // node computed by another (fused ReLU) or a view
    std::vector<int64_t> buf_of_;  // value (root) -> pool buffer
    std::vector<Tensor> pool_, grad_pool_;
    std::vector<Tensor> gvals_;    // gradient of each value (backward_graph)
    Tensor scratch_;
    bool plan_training_ = false;
    // Eval plans on the CPU: fold_[i] is the BatchNorm node whose affine node i (a Conv2d, its
    // sole reader) computes in its own output pass, or -1; the BatchNorm is skipped and its
    // output shares the convolution's storage. fold_store_ holds the folded weights, scale
    // and shift of one node at a time.
    std::vector<int64_t> fold_;
    Tensor fold_store_;
    // Whether node i can take BatchNorm node j's eval affine (j reads value i + 1, of shape s).
    bool foldable(size_t i, size_t j, const Shape& s) const;
    // Scratch for folding into node i, `ch` channels: scale (ch, 16-float aligned), shift,
    // then the layer's fold_floats(); grown on first use.
    float* fold_scratch(size_t i, int64_t ch);
    bool plan_fold_ = false;
    int64_t act_bytes_ = 0;

    void reduce_grads();
    // backward (finite loss) or NaN gradients, and the reduction, bucketed when planned
    void backward_reduced(const Tensor& dout, bool finite);
    // the backward of node i is done: hands the buckets it completes to the reducer thread
    // (or, on_device, queues their sums)
    void grads_done(size_t i) {
        if (live_) live_->node_done(static_cast<int64_t>(i));
    }
    void backward_device_reduced(const Tensor& dout, bool finite);
    float* pinned_grads();  // the page-locked host copy of the gradients, or nullptr
    CudaHostStager* host_stager();  // for the buckets of CUDA gradients, or nullptr
    std::vector<int64_t> grad_node_starts() const;
    GradReducer reducer_;
    float reduce_scale_ = 1.f;
    bool reducer_on_device_ = false;
    Tensor reduce_host_;  // host copy of CUDA gradients for the reducer (no pinned memory)
    struct PinnedFree {
        void operator()(float* p) const { cuda::free_pinned(p); }
    };
    std::unique_ptr<float, PinnedFree> pinned_;  // page-locked host copy of CUDA gradients
    int64_t pinned_floats_ = -1;
    int64_t bucket_bytes_ = 0;
    std::unique_ptr<GradBucketer> bucketer_;  // when the plan has more than one bucket
    GradBucketer* live_ = nullptr;            // set during an overlapped backward
    std::unique_ptr<CudaHostStager> stager_;  // CUDA gradients in buckets: their copies
    GradReducerWait reducer_wait_;            // on_device: waits for the queued sums

    LossKind loss_ = LossKind::None;
    std::shared_ptr<Optimizer> opt_;
    uint64_t rng_seed_ = 0, rng_counter_ = 0;
    std::mutex mu_;
};

}  // namespace nn
}  // namespace cnnkit
