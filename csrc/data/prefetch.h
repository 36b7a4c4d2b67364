// The batches of a BatchFeed with a transform pipeline applied natively and, with a prefetch
// depth, prepared ahead on a background thread (gather + uint8 conversion + augmentation) while
// the current train step runs. The result does not depend on the depth or the thread count.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "core/tensor.h"
#include "data/batch.h"
#include "data/transforms.h"

namespace cnnkit {
namespace data {

class Producer {
  public:
    // Batches of `batch_size` of src (drop_last as the feed's), each sample the pipeline applied
    // to it with its draws keyed by (seed, epoch, the sample's index in src); `depth` batches
    // prepared ahead (0: each one when asked for, OpenMP over its samples).
    Producer(const Source& src, int64_t batch_size, bool drop_last, Pipeline pipe,
             uint64_t seed, int depth);
    ~Producer();  // stops and joins the thread
    Producer(const Producer&) = delete;
    Producer& operator=(const Producer&) = delete;

    // The epoch keying the draws, and the visiting order (empty: 0..n-1); both drop whatever
    // was prepared.
    void set_epoch(int64_t epoch);
    void set_order(const std::vector<int64_t>& order);
    // Batch b (waiting for it, or making it): x is set to a view of its inputs, labels[] (or
    // targets) filled; returns its size. The views stay valid until the next take.
    int64_t take(int64_t b, Tensor& x, int64_t* labels, Tensor& targets);
    // Stops the background thread (it starts again at the next take).
    void stop();
    const Shape& out_sample() const { return out_sample_; }
    int depth() const { return depth_; }

  private:
    struct Slot {
        Tensor x, t;
        std::vector<int64_t> labels, ids;
        int64_t batch = -1, n = 0;
    };
    int64_t num_batches() const;
    void produce(Slot& s, int64_t b, bool parallel) const;
    void worker();
    void restart_locked(int64_t b);

    Source src_;
    int64_t bs_, row_, trow_, count_;
    bool drop_last_;
    Pipeline pipe_;
    uint64_t seed_;
    int64_t epoch_ = 0;
    int depth_;
    Shape out_sample_;
    std::vector<int64_t> order_;

    std::vector<Slot> slots_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::thread thread_;
    bool stop_ = false, running_ = false;
    uint64_t gen_ = 0;            // bumped when prepared batches become stale
    int64_t next_ = 0;            // the next batch the worker prepares
    int64_t expect_ = -1;         // the batch the next take is expected to ask for
    std::vector<int> ready_;      // slots holding batches expect_, expect_+1, ... in order
    std::vector<int> free_;       // slots the worker may fill
    int held_ = -1;               // the slot whose views the consumer holds
    std::exception_ptr error_;
};

}  // namespace data
}  // namespace cnnkit
