// Net: flat parameter storage, activation/workspace arenas, forward/backward and the fused
// train step (forward, loss, backward, optimizer update) with no allocation in steady state.
#include "nn/net.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <limits>
#include <mutex>

#include <omp.h>

#include "core/runtime.h"
#include "cpu/conv_direct.h"
#include "cpu/kernels.h"
#include "ops/ops.h"

namespace cnnkit {
namespace nn {

namespace {
constexpr int64_t kAlign = 16;  // floats: every parameter starts on a 64-byte boundary
int64_t round_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
}  // namespace

// ---- construction ---------------------------------------------------------------------------

Net::Net(std::vector<LayerPtr> layers) : layers_(std::move(layers)) {
    for (size_t i = 0; i < layers_.size(); ++i) inputs_.push_back({static_cast<int64_t>(i)});
    init({});
}

Net::Net(std::vector<LayerPtr> layers, std::vector<std::vector<int64_t>> inputs,
         std::vector<std::string> names, int64_t output)
    : layers_(std::move(layers)), inputs_(std::move(inputs)) {
    const int64_t L = static_cast<int64_t>(layers_.size());
    CNN_CHECK_ARG(static_cast<int64_t>(inputs_.size()) == L && (names.empty() ||
                  static_cast<int64_t>(names.size()) == L),
                  "Model: one input list (and one name) per node");
    CNN_CHECK_ARG(L > 0 && output == L, "Model: the output must be the last node's value");
    std::vector<int64_t> uses(L + 1, 0);
    for (int64_t i = 0; i < L; ++i) {
        CNN_CHECK_ARG(layers_[i] != nullptr, "Model: node ", i, " is None");
        const auto& in = inputs_[i];
        const int ar = layers_[i]->arity();
        CNN_CHECK_ARG(ar == 1 ? in.size() == 1 : in.size() >= 2, layers_[i]->type(), " (node ", i,
                      "): takes ", ar == 1 ? "one input" : "two or more inputs", ", got ",
                      in.size());
        for (int64_t v : in) {
            CNN_CHECK_ARG(v >= 0 && v <= i, "Model: node ", i, " reads value ", v,
                          ", which is not computed before it");
            ++uses[v];
        }
    }
    for (int64_t v = 0; v < L; ++v)
        CNN_CHECK_ARG(uses[v] > 0, "Model: ", v == 0 ? std::string("the input") :
                      str_cat("the output of node ", v - 1), " is never used");
    init(std::move(names));
}

void Net::init(std::vector<std::string> names) {
    names_ = names;
    const size_t L = layers_.size();
    output_ = static_cast<int64_t>(L);
    chain_ = true;
    for (size_t i = 0; i < L; ++i)
        chain_ = chain_ && inputs_[i].size() == 1 && inputs_[i][0] == static_cast<int64_t>(i);
    int64_t np = 0, nb = 0;
    for (size_t i = 0; i < L; ++i) {
        CNN_CHECK_ARG(layers_[i] != nullptr, "Sequential: layer ", i, " is None");
        const std::string prefix = names.empty() || names[i].empty() ? std::to_string(i) : names[i];
        if (names.empty())
            layers_[i]->set_index(static_cast<int64_t>(i));
        else
            layers_[i]->set_name(prefix);
        for (const ParamSpec& s : layers_[i]->param_specs()) {
            param_index_.push_back({str_cat(prefix, ".", s.name), {np, s.shape}});
            num_params_ = add_size(num_params_, shape_numel(s.shape), "Sequential: parameters");
            np = add_size(np, round_up(shape_numel(s.shape)), "Sequential: parameters");
        }
        for (const ParamSpec& s : layers_[i]->buffer_specs()) {
            buffer_index_.push_back({str_cat(prefix, ".", s.name), {nb, s.shape}});
            nb = add_size(nb, round_up(shape_numel(s.shape)), "Sequential: buffers");
        }
    }
    // relu_fused_[i]: node i runs the ReLU that alone reads its output (chains: node i + 1)
    relu_fused_.assign(L, 0);
    fused_relu_.assign(L, -1);
    std::vector<int64_t> consumers(L + 1, 0), only(L + 1, -1);
    for (size_t j = 0; j < L; ++j)
        for (int64_t v : inputs_[j]) {
            ++consumers[v];
            only[v] = static_cast<int64_t>(j);
        }
    for (size_t i = 0; i < L; ++i) {
        const int64_t v = static_cast<int64_t>(i) + 1, j = only[v];
        if (v == output_ || consumers[v] != 1 || !layers_[i]->fuses_relu()) continue;
        if (layers_[j]->type() != "ReLU" || inputs_[j].size() != 1) continue;
        if (chain_ && j != static_cast<int64_t>(i) + 1) continue;
        relu_fused_[i] = 1;
        fused_relu_[i] = j;
    }
    params_ = Tensor::zeros({np});
    grads_ = Tensor::zeros({np});
    buffers_ = Tensor::zeros({nb});
    size_t pi = 0, bi = 0;
    for (auto& l : layers_) {
        std::vector<Tensor> p, g, b;
        for (size_t k = 0; k < l->param_specs().size(); ++k, ++pi) {
            const auto& e = param_index_[pi].second;
            p.push_back(params_.view(e.second, e.first));
            g.push_back(grads_.view(e.second, e.first));
        }
        for (size_t k = 0; k < l->buffer_specs().size(); ++k, ++bi) {
            const auto& e = buffer_index_[bi].second;
            b.push_back(buffers_.view(e.second, e.first));
        }
        l->bind(p, g, b);
    }
}

void Net::to(Device device) {
    if (device == params_.device()) return;
    Tensor p = params_.to(device), g = grads_.to(device), b = buffers_.to(device);
    params_ = p;
    grads_ = g;
    buffers_ = b;
    size_t pi = 0, bi = 0;
    for (auto& l : layers_) {
        std::vector<Tensor> pv, gv, bv;
        for (size_t k = 0; k < l->param_specs().size(); ++k, ++pi) {
            const auto& e = param_index_[pi].second;
            pv.push_back(params_.view(e.second, e.first));
            gv.push_back(grads_.view(e.second, e.first));
        }
        for (size_t k = 0; k < l->buffer_specs().size(); ++k, ++bi) {
            const auto& e = buffer_index_[bi].second;
            bv.push_back(buffers_.view(e.second, e.first));
        }
        l->bind(pv, gv, bv);
    }
    arena_n_ = 0;  // re-allocate activations on the new device
    plan_valid_ = false;
    replicas_.clear();
    act_store_.clear();
    pool_.clear();
    grad_pool_.clear();
    scratch_ = Tensor();
    arena_sample_.clear();
    have_forward_ = false;
    if (opt_) {
        for (Tensor& s : opt_->state()) s = s.to(device);
    }
}

Net& Net::eval_replica(size_t t) {
    CNN_CHECK(t >= 1, "eval_replica: thread 0 runs the Net itself");
    if (replicas_.size() < t) replicas_.resize(t);
    std::unique_ptr<Net>& r = replicas_[t - 1];
    if (r && r->params_.data() == params_.data() && r->buffers_.data() == buffers_.data() &&
        r->device() == device())
        return *r;
    // The same layers from their types and arguments; then their parameters, gradients and
    // buffers become this Net's own tensors (no copy: a replica never writes them).
    std::vector<LayerPtr> layers;
    for (const LayerPtr& l : layers_) layers.push_back(make_layer(l->type(), l->args()));
    r = std::make_unique<Net>(std::move(layers), inputs_, names_, output_);
    r->params_ = params_;
    r->grads_ = grads_;
    r->buffers_ = buffers_;
    for (size_t i = 0; i < layers_.size(); ++i) {
        r->layers_[i]->params() = layers_[i]->params();
        r->layers_[i]->grads() = layers_[i]->grads();
        r->layers_[i]->buffers() = layers_[i]->buffers();
    }
    return *r;
}

std::vector<std::pair<std::string, Tensor>> Net::named_params() {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& e : param_index_) out.push_back({e.first, params_.view(e.second.second, e.second.first)});
    return out;
}

std::vector<std::pair<std::string, Tensor>> Net::named_grads() {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& e : param_index_) out.push_back({e.first, grads_.view(e.second.second, e.second.first)});
    return out;
}

std::vector<std::pair<std::string, Tensor>> Net::named_buffers() {
    std::vector<std::pair<std::string, Tensor>> out;
    for (auto& e : buffer_index_)
        out.push_back({e.first, buffers_.view(e.second.second, e.second.first)});
    return out;
}

// ---- shapes and arenas ----------------------------------------------------------------------

std::vector<Shape> Net::shapes(const Shape& in) const {
    std::vector<Shape> s{in};
    CNN_CHECK_ARG(!in.empty() && in[0] > 0, "Sequential: expected a non-empty batch, got input ",
                  shape_str(in));
    checked_numel(in, "Sequential: input");
    for (size_t i = 0; i < layers_.size(); ++i) {
        const auto& l = layers_[i];
        if (inputs_[i].size() == 1) {
            s.push_back(l->output_shape(s[inputs_[i][0]]));
        } else {
            std::vector<Shape> ins;
            for (int64_t v : inputs_[i]) ins.push_back(s[v]);
            s.push_back(l->output_shape_n(ins));
        }
        checked_bytes(checked_numel(s.back(), str_cat(l->label(), ": output")), sizeof(float),
                      str_cat(l->label(), ": output of shape ", shape_str(s.back())));
    }
    return s;
}

void Net::ensure_arena(const std::vector<Shape>& shapes) {
    const int64_t N = shapes[0][0];
    Shape sample(shapes[0].begin() + 1, shapes[0].end());
    const Device dev = device();
    if (sample != arena_sample_ || N > arena_n_ || act_store_.size() != shapes.size()) {
        // Allocate for this batch size; later batches of the same or smaller N reuse it.
        const int64_t cap = std::max(N, sample == arena_sample_ ? arena_n_ : int64_t(0));
        act_store_.clear();
        int64_t max_act = 0;
        for (size_t i = 0; i < shapes.size(); ++i) {
            const int64_t per = shape_numel(shapes[i]) / N;
            const int64_t total = mul_size(per, cap, "Sequential: activation buffer");
            max_act = std::max(max_act, total);
            // a view layer's output aliases its input: no storage of its own
            if (i > 0 && aliases_input(i - 1))
                act_store_.push_back(Tensor());
            else
                act_store_.emplace_back(Shape{total}, dev);
        }
        grad_store_[0] = Tensor({max_act}, dev);
        grad_store_[1] = Tensor({max_act}, dev);
        arena_sample_ = sample;
        arena_n_ = cap;
    }
    int64_t ws = 0;
    for (size_t i = 0; i < layers_.size(); ++i)
        ws = std::max(ws, layers_[i]->workspace_floats(shapes[i]));
    if (ws > 0 && (!ws_store_.defined() || ws_store_.capacity() < ws || ws_store_.device() != dev))
        ws_store_ = Tensor({ws}, dev);
    acts_.resize(shapes.size());
    for (size_t i = 0; i < shapes.size(); ++i)
        acts_[i] = act_store_[i].defined() ? act_store_[i].view(shapes[i]) : acts_[i - 1].reshape(shapes[i]);
    act_shapes_ = shapes;
    plan_valid_ = true;
}

// ---- forward / backward ---------------------------------------------------------------------

namespace {
std::atomic<int64_t>& chunk_kb() {
    static std::atomic<int64_t> kb{[] {
        const char* e = std::getenv("CNNKIT_EVAL_CHUNK_KB");
        if (!e || !*e) return int64_t(512);
        char* end = nullptr;
        const long long v = std::strtoll(e, &end, 10);
        return end && *end == 0 && v >= 0 ? static_cast<int64_t>(v) : int64_t(512);
    }()};
    return kb;
}
constexpr int64_t kMinEvalChunk = 8;  // images (see eval_chunk)
}  // namespace

void Net::set_eval_chunk_kb(int64_t kb) {
    CNN_CHECK_ARG(kb >= 0, "set_eval_chunk_kb: expected kilobytes >= 0, got ", kb);
    chunk_kb().store(kb);
}
int64_t Net::eval_chunk_kb() { return chunk_kb().load(); }

int64_t Net::eval_chunk(const std::vector<Shape>& shapes, bool training, bool inference) const {
    const int64_t kb = eval_chunk_kb();
    if (training || kb == 0 || device() != Device::CPU || (chain_ && !inference)) return 0;
    const int64_t N = shapes[0][0];
    if (N < 2) return 0;
    for (const LayerPtr& l : layers_)
        if (!l->eval_per_sample()) return 0;
    int64_t per_image = 1;  // floats of the largest value, per image
    for (const Shape& s : shapes) per_image = std::max(per_image, shape_numel(s) / N);
    // At least kMinEvalChunk images: the GEMM takes up to 4 rows (a Linear layer at batch 1-4) as
    // dot products, which sum in another order than its tiles, so a smaller chunk would not
    // give one pass's bits; and each chunk packs every layer's weights again.
    const int64_t m = std::max<int64_t>(kMinEvalChunk, kb * 256 / per_image);
    return N / m >= 2 ? m : 0;
}

Tensor Net::forward_to_host(const Tensor& x, bool training, bool inference) {
    const size_t L = layers_.size();
    last_chunks_ = 1;
    // The cheap conditions of eval_chunk first: no shape inference per call where no chunk
    // can run (training, a chain's plain forward, chunks off).
    if (!training && device() == Device::CPU && x.device() == Device::CPU && x.dim() > 0 &&
        x.shape()[0] > 1 && eval_chunk_kb() > 0 && (!chain_ || inference)) {
        const std::vector<Shape> full = shapes(x.shape());  // every shape checked up front
        const int64_t m = eval_chunk(full, training, inference);
        if (m > 0) {
            const int64_t N = x.shape()[0];
            const int threads = omp_in_parallel() ? 1 : get_num_threads();
            int64_t chunks = N / m;  // each of at least m images
            // With a team, a multiple of the threads where the chunks stay >= kMinEvalChunk
            // images (smaller than the cache budget asks, which costs nothing), so that the
            // threads finish together.
            if (threads > 1 && chunks % threads != 0) {
                const int64_t even = (chunks + threads - 1) / threads * threads;
                if (N / even >= kMinEvalChunk) chunks = even;
            }
            const int team = static_cast<int>(std::min<int64_t>(threads, chunks));
            const int64_t in_per = x.numel() / N, out_per = shape_numel(full[L]) / N;
            Tensor out = host_buffer(full[L]);
            std::vector<Net*> nets{this};
            for (int t = 1; t < team; ++t) nets.push_back(&eval_replica(static_cast<size_t>(t)));
            // Chunk c: images [first(c), first(c + 1)), sizes as even as possible (they differ
            // by at most one image: two arena plans).
            auto first = [&](int64_t c) { return c * (N / chunks) + std::min(c, N % chunks); };
            auto run_chunk = [&](Net& net, int64_t c) {
                const int64_t n0 = first(c), nb = first(c + 1) - n0;
                Shape xs = x.shape(), ys = full[L];
                xs[0] = ys[0] = nb;
                Tensor y = net.forward(x.view(xs, n0 * in_per), false);
                out.view(ys, n0 * out_per).copy_from(y);
            };
            if (team <= 1) {
                // The parameters cannot change between the chunks: convolutions pack their
                // weights once for all of them.
                cpu::conv_direct::PackReuse reuse(N);
                for (int64_t c = 0; c < chunks; ++c) run_chunk(*this, c);
            } else {
                // Thread 0 runs chunk 0 on this Net (whose state then records an eval forward,
                // as after one pass); the rest go to whichever thread is free.
                std::atomic<int64_t> next{1};
                std::exception_ptr error;
                std::mutex error_mu;
#pragma omp parallel num_threads(team)
                {
                    const int t = omp_get_thread_num();
                    try {
                        cpu::conv_direct::PackReuse reuse(N);  // one per thread
                        if (t == 0) run_chunk(*this, 0);
                        for (int64_t c = next++; c < chunks; c = next++) run_chunk(*nets[t], c);
                    } catch (...) {
                        std::lock_guard<std::mutex> lock(error_mu);
                        if (!error) error = std::current_exception();
                        next = chunks;  // the others stop after their current chunk
                    }
                }
                if (error) std::rethrow_exception(error);
            }
            last_chunks_ = chunks;
            return out;
        }
    }
    const bool direct = chain_ && L > 0 && device() == Device::CPU && x.device() == Device::CPU &&
                        !aliases_input(L - 1) && !layers_[L - 1]->backward_reads_output();
    if (!direct) {
        Tensor y = forward(x, training);
        Tensor out = host_buffer(y.shape());
        out.copy_from(y);
        return out;
    }
    if (!planned_for(x.shape())) ensure_arena(shapes(x.shape()));
    Tensor out = host_buffer(act_shapes_[L]);
    // The last layer writes into `out`; the arena's view comes back afterwards (also when a
    // layer throws), so the Net never keeps the caller's buffer. Backward then passes the
    // stale arena view as that layer's y, which its backward does not read.
    struct Restore {
        Tensor& slot;
        Tensor view;
        ~Restore() { slot = view; }
    } restore{acts_[L], acts_[L]};
    acts_[L] = out;
    forward(x, training);
    return out;
}

Tensor Net::host_buffer(const Shape& s) {
    const int64_t n = shape_numel(s);
    if (!host_out_.defined() || !host_out_.sole_owner() || host_out_.capacity() < n)
        host_out_ = Tensor({std::max<int64_t>(n, 1)}, Device::CPU);
    return host_out_.view(s);
}

Tensor Net::forward(const Tensor& x, bool training) {
    if (!chain_) return forward_graph(x, training);
    // The shapes and the arena of the last call serve again for the same input shape (the
    // common case: every batch but the last of an epoch, every call of a served model).
    if (!planned_for(x.shape())) ensure_arena(shapes(x.shape()));
    acts_[0].copy_from(x);
    Workspace ws{ws_store_.defined() ? ws_store_.data() : nullptr,
                 ws_store_.defined() ? ws_store_.capacity() : 0};
    if (training) ++rng_counter_;
    // Eval on the CPU: Conv2d -> BatchNorm2d folded as in graph models (see plan_graph); the
    // BatchNorm's backward refuses after an eval forward, so the convolution's own output,
    // which is then not written, is never read.
    const size_t L = layers_.size();
    const bool fold = !training && device() == Device::CPU && fold_batchnorm();
    fold_.assign(L, -1);
    for (size_t i = 0; i < L; ++i) {
        if (aliases_input(i)) continue;  // a view, or a ReLU run by the layer before it
        layers_[i]->set_rng(rng_seed_, (static_cast<uint64_t>(i) << 40) ^ rng_counter_);
        if (fold && i + 1 < L && foldable(i, i + 1, act_shapes_[i + 1])) {
            fold_[i] = static_cast<int64_t>(i + 1);
            const int64_t ch = act_shapes_[i + 1][1];
            float* scale = fold_scratch(i, ch);
            float* shift = scale + round_up(ch);
            layers_[i + 1]->eval_affine(scale, shift);
            layers_[i]->forward_affine(acts_[i], acts_[i + 2], scale, shift,
                                       relu_fused_[i + 1] != 0, shift + round_up(ch), ws);
            ++i;  // the BatchNorm (a ReLU it fuses aliases its output and is skipped next)
            continue;
        }
        if (relu_fused_[i])
            layers_[i]->forward_relu(acts_[i], acts_[i + 1], training, ws);
        else
            layers_[i]->forward(acts_[i], acts_[i + 1], training, ws);
    }
    have_forward_ = true;
    last_training_ = training;
    return acts_.back();
}

Tensor Net::backward(const Tensor& dy, bool need_dx) {
    if (!chain_) return backward_graph(dy, need_dx);
    CNN_CHECK_ARG(have_forward_, "Sequential.backward: call forward first");
    CNN_CHECK_ARG(dy.shape() == act_shapes_.back(), "Sequential.backward: expected a gradient of ",
                  "shape ", shape_str(act_shapes_.back()), " (the last output), got ",
                  shape_str(dy.shape()));
    Workspace ws{ws_store_.defined() ? ws_store_.data() : nullptr,
                 ws_store_.defined() ? ws_store_.capacity() : 0};
    const size_t L = layers_.size();
    int cur = 0;
    Tensor d = grad_store_[cur].view(act_shapes_[L]);
    if (d.data() != dy.data()) d.copy_from(dy);
    for (size_t ii = L; ii-- > 0;) {
        const bool want_dx = ii > 0 || need_dx;
        if (layers_[ii]->is_view()) {
            d = d.reshape(act_shapes_[ii]);
            grads_done(ii);
            continue;
        }
        Tensor dx;
        if (want_dx) dx = grad_store_[1 - cur].view(act_shapes_[ii]);
        layers_[ii]->backward(acts_[ii], acts_[ii + 1], d, want_dx ? &dx : nullptr, ws);
        grads_done(ii);  // layer ii's parameter gradients are final (its backward runs once)
        if (!want_dx) return Tensor();
        d = dx;
        cur = 1 - cur;
    }
    return d;
}

// ---- losses and steps -----------------------------------------------------------------------

double Net::loss_forward_backward(const Tensor& out, const int64_t* labels, const Tensor* target,
                                  Tensor* dout, int64_t* correct) {
    if (loss_ == LossKind::CrossEntropy) {
        CNN_CHECK_ARG(labels != nullptr, "cross_entropy: integer class labels are required");
        CNN_CHECK_ARG(out.dim() == 2, "cross_entropy: expected the model output to be (N, classes), got ",
                      shape_str(out.shape()));
        const int64_t N = out.size(0), C = out.size(1);
        for (int64_t n = 0; n < N; ++n)
            CNN_CHECK_ARG(labels[n] >= 0 && labels[n] < C, "cross_entropy: label ", labels[n],
                          " at index ", n, " is out of range [0, ", C, ")");
        return ops::softmax_cross_entropy(dout, correct, out, labels);
    }
    if (loss_ == LossKind::MSE) {
        CNN_CHECK_ARG(target != nullptr, "mse: a float target is required");
        CNN_CHECK_ARG(target->shape() == out.shape(), "mse: expected a target of shape ",
                      shape_str(out.shape()), ", got ", shape_str(target->shape()));
        if (target->device() != out.device()) {
            Tensor t = target->to(out.device());
            return ops::mse_loss(dout, out, t);
        }
        return ops::mse_loss(dout, out, *target);
    }
    throw ValueError("no loss set: compile the model with a loss first");
}

StepResult Net::train_step(const Tensor& x, const int64_t* labels, const Tensor* target) {
    CNN_CHECK_ARG(opt_ != nullptr, "train_step: no optimizer set");
    Tensor out = forward(x, true);
    const size_t L = layers_.size();
    Tensor dout = grad_store_[0].view(act_shapes_[L]);
    StepResult r;
    r.loss = loss_forward_backward(out, labels, target, &dout, &r.correct);
    const bool finite = std::isfinite(r.loss);
    if (!finite && !reducer_) return r;  // caller reports divergence; no update applied
    if (reducer_) {
        // Data-parallel. A non-finite loss still joins the all-reduce (the other processes
        // wait in it), with NaN gradients, which makes every process refuse this update below.
        try {
            backward_reduced(dout, finite);
        } catch (...) {
            grads_.fill(0.f);  // no update: the next step starts from zero gradients
            throw;
        }
    } else {
        backward(dout, false);
    }
    // A finite loss can still overflow the update (huge lr or gradients): keep the previous
    // parameters and refuse the step, reported to the caller as an infinite loss. On every
    // device: the backup and the check stay on the parameters' device.
    if (!backup_.defined() || backup_.numel() != params_.numel() ||
        backup_.device() != params_.device())
        backup_ = Tensor(params_.shape(), params_.device());
    backup_.copy_from(params_);
    opt_->step(params_, grads_);
    if (!ops::all_finite(params_)) {
        params_.copy_from(backup_);
        r.loss = std::numeric_limits<double>::infinity();
    }
    return r;
}

void Net::set_grad_reducer(GradReducer fn, float scale, int64_t bucket_bytes, bool on_device,
                           GradReducerWait wait) {
    CNN_CHECK_ARG(bucket_bytes >= 0, "set_grad_reducer: bucket_bytes must be >= 0, got ",
                  bucket_bytes);
    CNN_CHECK_ARG(!fn || !on_device || wait,
                  "set_grad_reducer: a device reducer needs its wait function");
    reducer_ = std::move(fn);
    reduce_scale_ = scale;
    reducer_on_device_ = reducer_ && on_device;
    reducer_wait_ = reducer_on_device_ ? std::move(wait) : GradReducerWait();
    bucket_bytes_ = reducer_ ? bucket_bytes : 0;
    std::vector<GradBucketer::Bucket> plan = grad_buckets(bucket_bytes_);
    stager_.reset();
    if (plan.size() > 1) {
        // on_device: the buckets are queued from the step's thread (no thread is started)
        if (!bucketer_) bucketer_ = std::make_unique<GradBucketer>();
        bucketer_->set_plan(std::move(plan));
    } else {
        bucketer_.reset();  // one bucket: reduced after the backward, on this thread
    }
}

// Where each node's gradients start in the flat buffer: parameters are laid out node by
// node in node order, so node i owns [starts[i], starts[i + 1]) (its parameters and their
// alignment padding). A layer object at two nodes (refused by the Python API) would write
// its gradients from both visits: one range, no overlap.
std::vector<int64_t> Net::grad_node_starts() const {
    const size_t L = layers_.size();
    std::vector<int64_t> s(L + 1, 0);
    size_t pi = 0;
    int64_t at = 0;
    for (size_t i = 0; i < L; ++i) {
        s[i] = at;
        for (size_t k = 0; k < layers_[i]->param_specs().size(); ++k, ++pi) {
            const auto& e = param_index_[pi].second;
            at = e.first + round_up(shape_numel(e.second));
        }
    }
    s[L] = grads_.numel();
    std::vector<const Layer*> seen;
    for (const auto& l : layers_) seen.push_back(l.get());
    std::sort(seen.begin(), seen.end());
    if (std::adjacent_find(seen.begin(), seen.end()) != seen.end())
        std::fill(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(L), int64_t(0));
    return s;
}

std::vector<GradBucketer::Bucket> Net::grad_buckets(int64_t bucket_bytes) const {
    return GradBucketer::plan(grad_node_starts(), bucket_bytes);
}

void Net::backward_reduced(const Tensor& dout, bool finite) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (reducer_on_device_) {
        backward_device_reduced(dout, finite);
        return;
    }
    const bool host = grads_.device() == Device::CPU;
    CudaHostStager* stager = bucketer_ && !host ? host_stager() : nullptr;
    if (!bucketer_ || (!host && !stager)) {
        if (finite)
            backward(dout, false);
        else
            grads_.fill(nan);
        reduce_grads();
        return;
    }
    // Overlapped: the buckets go to the reducer thread as the backward completes them (the
    // same buckets in the same order on every process, NaN ones included). CUDA gradients
    // reach the reducer through their page-locked host copy, each bucket copied as soon as
    // the backward has queued it.
    if (!finite) grads_.fill(nan);
    bucketer_->begin(host ? grads_.data() : pinned_.get(), &reducer_, reduce_scale_, stager);
    try {
        if (finite) {
            live_ = bucketer_.get();
            backward(dout, false);
            live_ = nullptr;
        }
        bucketer_->finish();  // the rest, then waits for all; rethrows the reducer's error
        if (stager) stager->join();  // the update follows the reduced buckets' uploads
    } catch (...) {
        live_ = nullptr;
        bucketer_->abandon();  // the thread is idle before the error leaves the step
        if (stager) stager->quiesce();  // and no copy still runs when the caller zeroes them
        throw;
    }
}

float* Net::pinned_grads() {
    const int64_t n = grads_.numel();
    if (pinned_floats_ != n) {
        pinned_.reset(static_cast<float*>(
            cuda::malloc_pinned(static_cast<size_t>(n) * sizeof(float))));
        pinned_floats_ = n;  // also when none was had: not asked again every step
    }
    return pinned_.get();
}

CudaHostStager* Net::host_stager() {
    float* host = pinned_grads();
    if (!host) return nullptr;  // pageable memory would copy synchronously: no overlap
    const int slots = static_cast<int>(bucketer_->buckets().size());
    if (!stager_ || stager_->slots() < slots) stager_ = std::make_unique<CudaHostStager>(slots);
    stager_->set_buffers(host, grads_.data());
    return stager_.get();
}

void Net::backward_device_reduced(const Tensor& dout, bool finite) {
    if (grads_.device() == Device::CPU)
        throw RuntimeError("the gradient reducer works on CUDA gradients, but this model's "
                           "parameters are on the CPU (set it after moving the model)");
    if (!finite) grads_.fill(std::numeric_limits<float>::quiet_NaN());
    if (!bucketer_) {
        if (finite) backward(dout, false);
        reducer_(grads_.data(), grads_.numel());
    } else {
        // Overlapped on the device: each bucket's sum is queued (on the reducer's stream, after
        // the backward's kernels so far) as soon as the backward has queued its gradients.
        bucketer_->begin_inline(grads_.data(), &reducer_);
        try {
            if (finite) {
                live_ = bucketer_.get();
                backward(dout, false);
                live_ = nullptr;
            }
            bucketer_->finish();  // queues the rest
        } catch (...) {
            live_ = nullptr;
            // The sums already queued stay queued (every process queues the same ones): wait
            // for them, or for the reducer to give up, before the error leaves the step.
            try {
                reducer_wait_();
            } catch (...) {
            }
            throw;
        }
    }
    reducer_wait_();
    if (reduce_scale_ != 1.f) ops::scale_(grads_, reduce_scale_);
}

void Net::reduce_grads() {
    const int64_t n = grads_.numel();
    const bool host = grads_.device() == Device::CPU;
    float* g = grads_.data();
    const size_t bytes = static_cast<size_t>(n) * sizeof(float);
    if (!host) {
        // CUDA: the gradients cross to the host for the MPI all-reduce (Horovod's path without
        // NCCL) through a page-locked buffer kept for the run: the device->host copy lands in
        // it directly and the copy back skips the staging buffers. Pageable memory when no
        // page-locked memory can be had.
        if (float* pinned = pinned_grads()) {
            g = pinned;
            cuda::memcpy(g, grads_.data(), bytes, 1);
        } else {
            if (!reduce_host_.defined() || reduce_host_.numel() != n) reduce_host_ = Tensor({n});
            reduce_host_.copy_from(grads_);
            g = reduce_host_.data();
        }
    }
    reducer_(g, n);
    if (reduce_scale_ != 1.f) cpu::scale(g, reduce_scale_, n);
    if (host) return;
    // Asynchronous from the page-locked buffer: the next step's device->host copy into it
    // waits for the stream, so it cannot overwrite the buffer before this copy has read it.
    if (pinned_)
        cuda::upload_pinned(grads_.data(), g, bytes);
    else
        grads_.copy_from(reduce_host_);
}

StepResult Net::eval_step(const Tensor& x, const int64_t* labels, const Tensor* target) {
    Tensor out = forward(x, false);
    StepResult r;
    r.loss = loss_forward_backward(out, labels, target, nullptr, &r.correct);
    return r;
}

}  // namespace nn
}  // namespace cnnkit
