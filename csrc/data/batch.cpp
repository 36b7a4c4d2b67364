// Native batch gather (permutation, uint8 -> float) and the train/eval loops over a BatchFeed.
#include "data/batch.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>

#include "data/prefetch.h"
#include "nn/net.h"

namespace cnnkit {
namespace data {

// ---- gather kernels ---------------------------------------------------------------------

void gather_rows_u8(float* out, const uint8_t* x, const int64_t* idx, int64_t B, int64_t row) {
    for (int64_t b = 0; b < B; ++b) {
        const uint8_t* src = x + idx[b] * row;
        float* dst = out + b * row;
        for (int64_t i = 0; i < row; ++i) dst[i] = static_cast<float>(src[i]) * kU8Scale;
    }
}

void gather_rows(void* out, const void* x, const int64_t* idx, int64_t B, int64_t row,
                 int64_t bytes) {
    const size_t rb = static_cast<size_t>(row * bytes);
    auto* dst = static_cast<char*>(out);
    const auto* src = static_cast<const char*>(x);
    for (int64_t b = 0; b < B; ++b) std::memcpy(dst + b * rb, src + idx[b] * rb, rb);
}

// ---- BatchFeed ----------------------------------------------------------------------------

BatchFeed::BatchFeed(const Source& src, int64_t batch_size, bool drop_last)
    : src_(src), bs_(batch_size), drop_last_(drop_last) {
    CNN_CHECK_ARG(bs_ >= 1, "BatchFeed: batch_size must be >= 1, got ", bs_);
    CNN_CHECK_ARG(src_.n >= 1 && src_.x != nullptr, "BatchFeed: the data set is empty");
    CNN_CHECK_ARG((src_.labels != nullptr) != (src_.targets != nullptr),
                  "BatchFeed: give labels or targets (one of them)");
    count_ = src_.n;
    row_ = shape_numel(src_.sample);
    trow_ = src_.targets ? shape_numel(src_.target_sample) : 0;
    const int64_t cap = std::min(bs_, src_.n);
    Shape xs{cap};
    xs.insert(xs.end(), src_.sample.begin(), src_.sample.end());
    xbuf_ = Tensor(xs);
    if (src_.targets) {
        Shape ts{cap};
        ts.insert(ts.end(), src_.target_sample.begin(), src_.target_sample.end());
        tbuf_ = Tensor(ts);
    } else {
        labels_.resize(static_cast<size_t>(cap));
    }
    ids_.resize(static_cast<size_t>(cap));
}

BatchFeed::~BatchFeed() = default;

void BatchFeed::set_transform(Pipeline pipe, uint64_t seed, int depth) {
    prod_.reset();
    prod_ = std::make_unique<Producer>(src_, bs_, drop_last_, std::move(pipe), seed, depth);
    prod_->set_order(order_);
}

void BatchFeed::set_order(std::vector<int64_t> order) {
    if (!order.empty()) {
        CNN_CHECK_ARG(static_cast<int64_t>(order.size()) <= src_.n, "BatchFeed: the order has ",
                      order.size(), " entries for ", src_.n, " samples");
        std::vector<char> hit(static_cast<size_t>(src_.n), 0);
        for (int64_t i : order) {
            CNN_CHECK_ARG(i >= 0 && i < src_.n && !hit[static_cast<size_t>(i)],
                          "BatchFeed: the order must be distinct indices in 0..", src_.n - 1);
            hit[static_cast<size_t>(i)] = 1;
        }
    }
    count_ = order.empty() ? src_.n : static_cast<int64_t>(order.size());
    order_ = std::move(order);
    if (prod_) prod_->set_order(order_);
}

int64_t BatchFeed::gather(int64_t b) {
    CNN_CHECK_ARG(b >= 0 && b < num_batches(), "BatchFeed: batch ", b, " out of range (",
                  num_batches(), " batches)");
    if (prod_) return prod_->take(b, xv_, labels_.data(), tv_);
    const int64_t start = b * bs_;
    const int64_t B = std::min(bs_, count_ - start);
    int64_t* ids = ids_.data();
    if (order_.empty()) {
        for (int64_t i = 0; i < B; ++i) ids[i] = start + i;
    } else {
        std::memcpy(ids, order_.data() + start, sizeof(int64_t) * static_cast<size_t>(B));
    }
    if (src_.x_u8)
        gather_rows_u8(xbuf_.data(), static_cast<const uint8_t*>(src_.x), ids, B, row_);
    else
        gather_rows(xbuf_.data(), src_.x, ids, B, row_, sizeof(float));
    Shape xs{B};
    xs.insert(xs.end(), src_.sample.begin(), src_.sample.end());
    xv_ = xbuf_.view(xs);
    if (src_.targets) {
        gather_rows(tbuf_.data(), src_.targets, ids, B, trow_, sizeof(float));
        Shape ts{B};
        ts.insert(ts.end(), src_.target_sample.begin(), src_.target_sample.end());
        tv_ = tbuf_.view(ts);
    } else {
        gather_rows(labels_.data(), src_.labels, ids, B, 1, sizeof(int64_t));
    }
    return B;
}

// ---- loops --------------------------------------------------------------------------------

RunResult train_batches(nn::Net& net, BatchFeed& feed, int64_t first, int64_t count,
                        double max_seconds, Sums& sums) {
    RunResult r;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t b = first; b < first + count && b < feed.num_batches(); ++b) {
        const int64_t n = feed.gather(b);
        nn::StepResult s;
        {
            std::lock_guard<std::mutex> lock(net.mutex());
            s = net.train_step(feed.x(), feed.labels(), feed.targets());
        }
        ++r.done;
        r.last_loss = s.loss;
        r.last_correct = s.correct;
        r.last_n = n;
        if (!std::isfinite(s.loss)) {
            r.diverged = true;
            break;
        }
        sums.seen += n;
        sums.correct += s.correct;
        sums.loss_sum += s.loss * static_cast<double>(n);
        const double dt =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (dt >= max_seconds) break;
    }
    return r;
}

Sums eval_batches(nn::Net& net, BatchFeed& feed) {
    Sums sums;
    for (int64_t b = 0; b < feed.num_batches(); ++b) {
        const int64_t n = feed.gather(b);
        nn::StepResult s;
        {
            std::lock_guard<std::mutex> lock(net.mutex());
            s = net.eval_step(feed.x(), feed.labels(), feed.targets());
        }
        sums.seen += n;
        sums.correct += s.correct;
        sums.loss_sum += s.loss * static_cast<double>(n);
    }
    return sums;
}

}  // namespace data
}  // namespace cnnkit
