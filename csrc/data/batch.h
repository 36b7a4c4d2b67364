// Native batch gather and the batch loop behind Trainer.fit: rows of a whole data set (uint8
// or float32) picked by a permutation into reusable float32 buffers, and runs of train steps
// over them, so that Python makes one call per many batches and touches no batch.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "data/transforms.h"

namespace cnnkit {
namespace nn {
class Net;
}

namespace data {

class Producer;  // data/prefetch.h

// The scale of uint8 images, as cnnkit.data.as_input applies it: float(u) * float32(1/255).
constexpr float kU8Scale = static_cast<float>(1.0 / 255.0);

// x is (N, row) uint8, idx is (B,) in [0, N), out is (B, row): out[b] = float(x[idx[b]]) * kU8Scale
void gather_rows_u8(float* out, const uint8_t* x, const int64_t* idx, int64_t B, int64_t row);
// x is (N, row) of `bytes`-byte elements, out is (B, row): out[b] = x[idx[b]]
void gather_rows(void* out, const void* x, const int64_t* idx, int64_t B, int64_t row,
                 int64_t bytes);

// A data set held by the caller (pointers stay valid while the feed is used).
struct Source {
    const void* x = nullptr;  // (n, sample...) uint8 or float32
    bool x_u8 = false;
    Shape sample;             // per-sample input shape
    int64_t n = 0;
    const int64_t* labels = nullptr;  // (n,) class indices (cross-entropy), or
    const float* targets = nullptr;   // (n, target_sample...) (mse)
    Shape target_sample;
};

// Running sums of an epoch, continued batch by batch in the order Python used to add them
// (loss_sum += loss * n in double), so the logs are bit-identical to a per-batch loop.
struct Sums {
    int64_t seen = 0, correct = 0;
    double loss_sum = 0.0;
};

// What a run of train steps did: `done` batches, the last one's loss, correct count and size;
// `diverged` when the last one's loss was not finite (that update was not applied, and it is
// not in the sums).
struct RunResult {
    int64_t done = 0;
    double last_loss = 0.0;
    int64_t last_correct = 0, last_n = 0;
    bool diverged = false;
};

// Batches of `batch_size` samples of `src` in the order `order` (identity when empty); the
// last batch may be smaller (or is dropped with drop_last). The buffers are allocated once and
// reused for every batch.
class BatchFeed {
  public:
    BatchFeed(const Source& src, int64_t batch_size, bool drop_last);
    ~BatchFeed();
    // The visiting order: distinct indices in [0, n) (checked) -- a permutation of all of
    // them, or a subset (one process's shard in data-parallel training) -- or empty for
    // 0, 1, ..., n-1. The epoch has as many samples as the order has entries.
    void set_order(std::vector<int64_t> order);
    int64_t num_batches() const { return drop_last_ ? count_ / bs_ : (count_ + bs_ - 1) / bs_; }
    int64_t num_samples() const { return count_; }
    int64_t batch_size() const { return bs_; }
    // Gathers batch b into the buffers; returns its size. x()/labels()/targets() are views of
    // the buffers valid until the next gather.
    int64_t gather(int64_t b);
    const Tensor& x() const { return xv_; }
    const int64_t* labels() const { return src_.labels ? labels_.data() : nullptr; }
    const Tensor* targets() const { return src_.targets ? &tv_ : nullptr; }
    // Transforms and prefetch (data/prefetch.h): gather(b) then returns batch b with `pipe`
    // applied to each sample (draws keyed by seed, the producer's epoch and the sample's index),
    // `depth` batches prepared ahead on a thread; the order follows set_order.
    void set_transform(Pipeline pipe, uint64_t seed, int depth);
    Producer* producer() const { return prod_.get(); }

  private:
    Source src_;
    int64_t bs_, row_, trow_;
    bool drop_last_;
    std::vector<int64_t> order_, ids_;
    int64_t count_ = 0;  // samples per epoch: order_.size(), or n when order_ is empty
    Tensor xbuf_, tbuf_, xv_, tv_;
    std::vector<int64_t> labels_;
    std::unique_ptr<Producer> prod_;
};

// Train steps on batches first, first+1, ... (at most `count`, stopping after the batch that
// ends past `max_seconds`, or at a non-finite loss), each gather + Net::train_step under the
// Net's lock, the lock released between steps so that other threads can evaluate.
RunResult train_batches(nn::Net& net, BatchFeed& feed, int64_t first, int64_t count,
                        double max_seconds, Sums& sums);
// Net::eval_step over every batch, in order.
Sums eval_batches(nn::Net& net, BatchFeed& feed);

}  // namespace data
}  // namespace cnnkit
