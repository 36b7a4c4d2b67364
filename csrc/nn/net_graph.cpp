// Net for graphs that are not a chain (residual and branching models): forward in topological
// order with activation storage planned from liveness, backward with gradients summed where a
// value feeds several nodes. Chains (Sequential) keep the code in net.cpp.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>

#include "nn/net.h"
#include "ops/ops.h"

namespace cnnkit {
namespace nn {

namespace {
std::atomic<bool>& fold_flag() {
    static std::atomic<bool> on{[] {
        const char* e = std::getenv("CNNKIT_FOLD_BATCHNORM");
        return !(e && e[0] == '0' && e[1] == 0);
    }()};
    return on;
}
}  // namespace

void Net::set_fold_batchnorm(bool on) { fold_flag().store(on); }
bool Net::fold_batchnorm() { return fold_flag().load(); }

namespace {
int64_t align16(int64_t n) { return (n + 15) / 16 * 16; }
}  // namespace

bool Net::foldable(size_t i, size_t j, const Shape& s) const {
    const int64_t ch = layers_[j]->affine_channels();
    return ch > 0 && layers_[i]->fold_floats() > 0 && s.size() == 4 && s[1] == ch;
}

float* Net::fold_scratch(size_t i, int64_t ch) {
    const int64_t need = 2 * align16(ch) + layers_[i]->fold_floats();
    if (!fold_store_.defined() || fold_store_.capacity() < need) fold_store_ = Tensor({need});
    return fold_store_.data();
}

// Storage of every value for input shape shapes[0]. Views (Flatten, Identity) and a ReLU fused
// into the node before it share their input's storage (root_), as does a BatchNorm folded into
// the convolution before it (eval on the CPU). Training keeps every value for backward; eval
// reuses a buffer once no later node reads it (greedy, best fit).
void Net::plan_graph(const std::vector<Shape>& shapes, bool training) {
    const size_t L = layers_.size();
    const Device dev = device();
    const bool fold = !training && dev == Device::CPU && fold_batchnorm();
    if (shapes == act_shapes_ && training == plan_training_ && fold == plan_fold_ &&
        !acts_.empty() && acts_[0].device() == dev)
        return;
    root_.assign(L + 1, 0);
    skip_.assign(L, 0);
    // Conv2d -> BatchNorm2d, the BatchNorm the convolution's only reader (eval, running
    // statistics): y = scale * conv(x) + shift is the convolution with its weights and bias
    // scaled, as inference engines fold it; a ReLU fused into the BatchNorm comes along. The
    // rounding differs from the two passes by float32 rounding of the products only. Eval
    // forwards never run backward (backward_graph refuses), so the convolution's own output
    // is not needed.
    fold_.assign(L, -1);
    std::vector<int64_t> folded_by(L, -1);  // BatchNorm node -> the convolution that runs it
    if (fold) {
        std::vector<int64_t> readers(L + 1, 0);
        for (size_t j = 0; j < L; ++j)
            for (int64_t u : inputs_[j]) ++readers[u];
        for (size_t j = 0; j < L; ++j) {
            if (inputs_[j].size() != 1) continue;
            const int64_t u = inputs_[j][0];  // BatchNorm j reads value u, node u - 1's output
            if (u == 0 || u == output_ || readers[u] != 1) continue;
            const int64_t i = u - 1;
            if (!foldable(static_cast<size_t>(i), j, shapes[u])) continue;
            fold_[i] = static_cast<int64_t>(j);
            folded_by[j] = i;
            fold_scratch(static_cast<size_t>(i), shapes[u][1]);
        }
    }
    plan_fold_ = fold;
    // In node order, so that a view of a fused ReLU's output (ReLU -> Flatten) finds the
    // storage the ReLU writes into: every root is final before a later node reads it.
    std::vector<int64_t> fused_by(L, -1);  // ReLU node -> the node that runs it
    for (size_t i = 0; i < L; ++i)
        if (fused_relu_[i] >= 0) fused_by[fused_relu_[i]] = static_cast<int64_t>(i);
    for (size_t i = 0; i < L; ++i) {
        const int64_t v = static_cast<int64_t>(i) + 1;
        root_[v] = v;
        if (folded_by[i] >= 0) {
            root_[v] = root_[folded_by[i] + 1];
            skip_[i] = 1;
        } else if (fused_by[i] >= 0) {
            root_[v] = root_[fused_by[i] + 1];
            skip_[i] = 1;
        } else if (layers_[i]->is_view()) {
            root_[v] = root_[inputs_[i][0]];
            skip_[i] = 1;
        }
    }
    // last node that reads each root's storage (the output lives to the end)
    std::vector<int64_t> last(L + 1, -1);
    for (size_t j = 0; j < L; ++j)
        for (int64_t v : inputs_[j]) last[root_[v]] = std::max<int64_t>(last[root_[v]], j);
    for (size_t j = 0; j < L; ++j)  // a view/fused value read later extends its root's life
        if (skip_[j]) last[root_[j + 1]] = std::max(last[root_[j + 1]], last[j + 1]);
    last[root_[L]] = static_cast<int64_t>(L);

    std::vector<int64_t> size;  // floats per buffer
    std::vector<char> busy;
    buf_of_.assign(L + 1, -1);
    auto take = [&](int64_t root) {
        const int64_t need = shape_numel(shapes[root]);
        // the smallest free buffer that fits, else the largest free one (grown)
        int64_t fit = -1, grow = -1;
        for (size_t b = 0; b < size.size(); ++b) {
            if (busy[b]) continue;
            const int64_t bb = static_cast<int64_t>(b);
            if (size[b] >= need && (fit < 0 || size[b] < size[fit])) fit = bb;
            if (grow < 0 || size[b] > size[grow]) grow = bb;
        }
        int64_t best = fit >= 0 ? fit : grow;
        if (training || best < 0) {
            best = static_cast<int64_t>(size.size());
            size.push_back(need);
            busy.push_back(1);
        } else {
            size[best] = std::max(size[best], need);
            busy[best] = 1;
        }
        buf_of_[root] = best;
    };
    take(0);
    for (size_t i = 0; i < L; ++i) {
        const int64_t v = static_cast<int64_t>(i) + 1;
        if (root_[v] == v) take(v);
        for (int64_t r = 0; r <= static_cast<int64_t>(L); ++r)  // free what node i read last
            if (root_[r] == r && buf_of_[r] >= 0 && last[r] == static_cast<int64_t>(i))
                busy[buf_of_[r]] = 0;
    }
    if (pool_.size() < size.size()) pool_.resize(size.size());
    act_bytes_ = 0;
    for (size_t b = 0; b < size.size(); ++b) {
        if (!pool_[b].defined() || pool_[b].capacity() < size[b] || pool_[b].device() != dev)
            pool_[b] = Tensor({size[b]}, dev);
        act_bytes_ = add_size(act_bytes_, mul_size(size[b], 4, "Model: activations"),
                              "Model: activations");
    }
    acts_.assign(L + 1, Tensor());
    for (size_t v = 0; v <= L; ++v) acts_[v] = pool_[buf_of_[root_[v]]].view(shapes[v]);
    int64_t ws = 0;
    for (size_t i = 0; i < L; ++i)
        if (inputs_[i].size() == 1)
            ws = std::max(ws, layers_[i]->workspace_floats(shapes[inputs_[i][0]]));
    if (ws > 0 && (!ws_store_.defined() || ws_store_.capacity() < ws || ws_store_.device() != dev))
        ws_store_ = Tensor({ws}, dev);
    const int64_t out_n = shape_numel(shapes[L]);
    if (!grad_store_[0].defined() || grad_store_[0].capacity() < out_n ||
        grad_store_[0].device() != dev)
        grad_store_[0] = Tensor({out_n}, dev);
    act_shapes_ = shapes;
    plan_training_ = training;
    plan_valid_ = true;
}

Tensor Net::forward_graph(const Tensor& x, bool training) {
    const bool fold = !training && device() == Device::CPU && fold_batchnorm();
    if (!planned_for(x.shape()) || training != plan_training_ || fold != plan_fold_)
        plan_graph(shapes(x.shape()), training);
    acts_[0].copy_from(x);
    Workspace ws{ws_store_.defined() ? ws_store_.data() : nullptr,
                 ws_store_.defined() ? ws_store_.capacity() : 0};
    if (training) ++rng_counter_;
    std::vector<Tensor> xs;
    for (size_t i = 0; i < layers_.size(); ++i) {
        if (skip_[i]) continue;  // a view, or a ReLU run by the node before it
        layers_[i]->set_rng(rng_seed_, (static_cast<uint64_t>(i) << 40) ^ rng_counter_);
        xs.clear();
        for (int64_t v : inputs_[i]) xs.push_back(acts_[v]);
        if (fold_[i] >= 0) {  // Conv2d -> BatchNorm (-> ReLU) in the convolution's pass
            const int64_t j = fold_[i], ch = act_shapes_[i + 1][1];
            float* scale = fold_scratch(i, ch);
            float* shift = scale + align16(ch);
            layers_[j]->eval_affine(scale, shift);
            layers_[i]->forward_affine(xs[0], acts_[i + 1], scale, shift, fused_relu_[j] >= 0,
                                       shift + align16(ch), ws);
        } else if (fused_relu_[i] >= 0 && xs.size() > 1)
            layers_[i]->forward_relu_n(xs, acts_[i + 1], training, ws);
        else if (fused_relu_[i] >= 0)
            layers_[i]->forward_relu(xs[0], acts_[i + 1], training, ws);
        else
            layers_[i]->forward_n(xs, acts_[i + 1], training, ws);
    }
    have_forward_ = true;
    last_training_ = training;
    return acts_.back();
}

// The gradient of value v is live from the backward of its last consumer (the first to add
// to it; the output's from the start) through the backward of its producer, node v - 1,
// which reads it; the input's (v = 0) to the end. Backward visits nodes from the last, so at
// step t = L - 1 - i it runs node i. Values whose live ranges do not meet share a buffer
// (greedy, by start; a buffer's size is the largest value it holds): a chain's gradients then
// take two buffers and a residual network's a handful, not one per value. Returns the buffer
// of each value (-1: none) and each buffer's size in `need`.
std::vector<int64_t> Net::plan_grad_buffers(bool need_dx, std::vector<int64_t>* need) const {
    const int64_t L = static_cast<int64_t>(layers_.size());
    std::vector<int64_t> start(L + 1, std::numeric_limits<int64_t>::max()), end(L + 1);
    start[L] = -1;
    for (int64_t i = 0; i < L; ++i)
        for (int64_t u : inputs_[i]) start[u] = std::min(start[u], L - 1 - i);
    for (int64_t v = 1; v <= L; ++v) end[v] = L - v;  // node v - 1 runs at step L - v
    end[0] = std::numeric_limits<int64_t>::max();
    std::vector<int64_t> order;
    for (int64_t v = need_dx ? 0 : 1; v <= L; ++v)
        if (start[v] != std::numeric_limits<int64_t>::max()) order.push_back(v);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return start[a] < start[b]; });
    std::vector<int64_t> buf(L + 1, -1), free_after;  // free_after[b]: last step b is in use
    need->clear();
    for (int64_t v : order) {
        const int64_t n = shape_numel(act_shapes_[v]);
        int64_t pick = -1;
        for (size_t b = 0; b < free_after.size(); ++b) {  // the free buffer closest in size
            if (free_after[b] >= start[v]) continue;
            if (pick < 0 || std::llabs((*need)[b] - n) < std::llabs((*need)[pick] - n))
                pick = static_cast<int64_t>(b);
        }
        if (pick < 0) {
            pick = static_cast<int64_t>(free_after.size());
            free_after.push_back(0);
            need->push_back(0);
        }
        buf[v] = pick;
        free_after[pick] = end[v];
        (*need)[pick] = std::max((*need)[pick], n);
    }
    // a value nothing flows back to (no consumer) still gets a view: the last buffer, unused
    if (need->empty()) need->push_back(1);
    for (int64_t v = need_dx ? 0 : 1; v <= L; ++v)
        if (buf[v] < 0) {
            buf[v] = static_cast<int64_t>(need->size()) - 1;
            (*need)[buf[v]] = std::max((*need)[buf[v]], shape_numel(act_shapes_[v]));
        }
    return buf;
}

Tensor Net::backward_graph(const Tensor& dy, bool need_dx) {
    CNN_CHECK_ARG(have_forward_, "Model.backward: call forward first");
    CNN_CHECK_ARG(last_training_, "Model.backward: the last forward was in eval mode, which "
                  "reuses activation memory; call forward(x, training=True) before backward");
    const size_t L = layers_.size();
    CNN_CHECK_ARG(dy.shape() == act_shapes_[L], "Model.backward: expected a gradient of shape ",
                  shape_str(act_shapes_[L]), " (the last output), got ", shape_str(dy.shape()));
    const Device dev = device();
    // Gradient buffers shared between values whose gradients are never live at once (see
    // plan_grad_buffers), the input's its own when asked for, and a scratch slot per input of
    // the widest node for contributions summed into a value that already has one.
    int64_t widest = 1, biggest = 1;
    for (size_t i = 0; i < L; ++i) widest = std::max<int64_t>(widest, inputs_[i].size());
    std::vector<int64_t> need;
    const std::vector<int64_t> buf = plan_grad_buffers(need_dx, &need);
    if (grad_pool_.size() < need.size()) grad_pool_.resize(need.size());
    for (size_t b = 0; b < need.size(); ++b)
        if (!grad_pool_[b].defined() || grad_pool_[b].capacity() < need[b] ||
            grad_pool_[b].device() != dev)
            grad_pool_[b] = Tensor({need[b]}, dev);
    gvals_.assign(L + 1, Tensor());
    for (size_t v = need_dx ? 0 : 1; v <= L; ++v) {
        biggest = std::max(biggest, shape_numel(act_shapes_[v]));
        gvals_[v] = grad_pool_[buf[v]].view(act_shapes_[v]);
    }
    const int64_t scratch = mul_size(widest, biggest, "Model: gradient scratch");
    if (!scratch_.defined() || scratch_.capacity() < scratch || scratch_.device() != dev)
        scratch_ = Tensor({scratch}, dev);
    Workspace ws{ws_store_.defined() ? ws_store_.data() : nullptr,
                 ws_store_.defined() ? ws_store_.capacity() : 0};
    std::vector<char> has(L + 1, 0);
    if (gvals_[L].data() != dy.data()) gvals_[L].copy_from(dy);
    has[L] = 1;
    std::vector<Tensor> xs, dx;
    std::vector<Tensor*> dxs;
    std::vector<char> acc;
    for (size_t ii = L; ii-- > 0;) {
        const int64_t v = static_cast<int64_t>(ii) + 1;
        if (!has[v]) {  // nothing flows back through this node (its gradients stay zero)
            grads_done(ii);
            continue;
        }
        const auto& in = inputs_[ii];
        xs.clear();
        dx.assign(in.size(), Tensor());
        dxs.assign(in.size(), nullptr);
        acc.assign(in.size(), 0);
        for (size_t k = 0; k < in.size(); ++k) {
            const int64_t u = in[k];
            xs.push_back(acts_[u]);
            if (u == 0 && !need_dx) continue;
            bool taken = has[u];
            for (size_t k2 = 0; k2 < k; ++k2) taken = taken || in[k2] == u;
            if (taken) {
                dx[k] = scratch_.view(act_shapes_[u], static_cast<int64_t>(k) * biggest);
                acc[k] = 1;
            } else {
                dx[k] = gvals_[u];
            }
            dxs[k] = &dx[k];
        }
        // gvals_[v] is complete: every consumer of value v is a later node, visited before.
        // This node's parameter gradients are final after this call (a layer sits at one
        // node, so its backward runs once per step).
        layers_[ii]->backward_n(xs, acts_[v], gvals_[v], dxs, ws);
        grads_done(ii);
        for (size_t k = 0; k < in.size(); ++k) {
            if (!dxs[k]) continue;
            if (acc[k]) ops::add_into(gvals_[in[k]], dx[k]);
            has[in[k]] = 1;
        }
    }
    if (!need_dx) return Tensor();
    if (!has[0]) gvals_[0].fill(0.f);
    return gvals_[0];
}

}  // namespace nn
}  // namespace cnnkit
