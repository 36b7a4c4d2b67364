// Producer: transformed batches made on demand or ahead by one background thread, handed to
// the consumer (the native train loop) in batch order through a small ring of slots.
#include "data/prefetch.h"

#include <algorithm>
#include <cstring>

namespace cnnkit {
namespace data {

Producer::Producer(const Source& src, int64_t batch_size, bool drop_last, Pipeline pipe,
                   uint64_t seed, int depth)
    : src_(src), bs_(batch_size), drop_last_(drop_last), pipe_(std::move(pipe)), seed_(seed),
      depth_(depth) {
    CNN_CHECK_ARG(depth_ >= 0 && depth_ <= 64, "prefetch must be in [0, 64], got ", depth_);
    CNN_CHECK_ARG(bs_ >= 1 && src_.n >= 1, "prefetch: empty data set or batch");
    row_ = shape_numel(src_.sample);
    trow_ = src_.targets ? shape_numel(src_.target_sample) : 0;
    count_ = src_.n;
    out_sample_ = pipe_.empty() ? src_.sample : pipe_.out_shape(src_.sample);
    const int64_t cap = std::min(bs_, src_.n);
    Shape xs{cap};
    xs.insert(xs.end(), out_sample_.begin(), out_sample_.end());
    checked_bytes(checked_numel(xs, "prefetch batch"), sizeof(float), "prefetch batch");
    const int nslots = depth_ == 0 ? 1 : depth_ + 1;
    slots_.resize(static_cast<size_t>(nslots));
    for (Slot& s : slots_) {
        s.x = Tensor(xs);
        if (src_.targets) {
            Shape ts{cap};
            ts.insert(ts.end(), src_.target_sample.begin(), src_.target_sample.end());
            s.t = Tensor(ts);
        } else {
            s.labels.resize(static_cast<size_t>(cap));
        }
        s.ids.resize(static_cast<size_t>(cap));
    }
}

Producer::~Producer() { stop(); }

int64_t Producer::num_batches() const {
    return drop_last_ ? count_ / bs_ : (count_ + bs_ - 1) / bs_;
}

void Producer::stop() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
        ++gen_;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = false;
    running_ = false;
    expect_ = -1;
    ready_.clear();
    free_.clear();
}

void Producer::set_epoch(int64_t epoch) {
    CNN_CHECK_ARG(epoch >= 0, "prefetch: epoch must be >= 0, got ", epoch);
    stop();
    epoch_ = epoch;
}

void Producer::set_order(const std::vector<int64_t>& order) {
    stop();
    order_ = order;
    count_ = order_.empty() ? src_.n : static_cast<int64_t>(order_.size());
}

void Producer::produce(Slot& s, int64_t b, bool parallel) const {
    const int64_t start = b * bs_;
    const int64_t B = std::min(bs_, count_ - start);
    int64_t* ids = s.ids.data();
    if (order_.empty()) {
        for (int64_t i = 0; i < B; ++i) ids[i] = start + i;
    } else {
        std::memcpy(ids, order_.data() + start, sizeof(int64_t) * static_cast<size_t>(B));
    }
    pipe_.run(s.x.data(), src_.x, src_.x_u8, src_.sample, ids, ids, B, seed_, epoch_, parallel);
    if (src_.targets)
        gather_rows(s.t.data(), src_.targets, ids, B, trow_, sizeof(float));
    else
        gather_rows(s.labels.data(), src_.labels, ids, B, 1, sizeof(int64_t));
    s.batch = b;
    s.n = B;
}

// Prepares batches next_, next_+1, ... into free slots until the epoch's last batch, a stop,
// or an error, then exits; a batch made for a stale generation goes back to the free slots.
void Producer::worker() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
        cv_.wait(lock, [&] { return stop_ || next_ >= num_batches() || !free_.empty(); });
        if (stop_ || next_ >= num_batches()) break;  // stopped, or the epoch is prepared
        const int s = free_.back();
        free_.pop_back();
        const int64_t b = next_++;
        const uint64_t g = gen_;
        lock.unlock();
        std::exception_ptr err;
        try {
            produce(slots_[static_cast<size_t>(s)], b, false);
        } catch (...) {
            err = std::current_exception();
        }
        lock.lock();
        if (g != gen_) {
            free_.push_back(s);
            continue;
        }
        if (err) error_ = err;
        ready_.push_back(s);
        cv_.notify_all();
        if (err) break;
    }
    running_ = false;
    cv_.notify_all();
}

void Producer::restart_locked(int64_t b) {
    ++gen_;
    ready_.clear();
    free_.clear();
    for (int i = 0; i < static_cast<int>(slots_.size()); ++i)
        if (i != held_) free_.push_back(i);
    next_ = b;
    expect_ = b;
}

int64_t Producer::take(int64_t b, Tensor& x, int64_t* labels, Tensor& targets) {
    CNN_CHECK_ARG(b >= 0 && b < num_batches(), "prefetch: batch ", b, " out of range (",
                  num_batches(), " batches)");
    int s;
    if (depth_ == 0) {
        s = 0;
        produce(slots_[0], b, true);
    } else {
        std::unique_lock<std::mutex> lock(mu_);
        // the consumer is done with the slot of the previous batch: the worker may refill it
        if (held_ >= 0 && expect_ >= 0) free_.push_back(held_);
        held_ = -1;
        if (b != expect_ || (!running_ && ready_.empty())) {
            lock.unlock();
            stop();  // a stale worker finishes its batch and exits
            lock.lock();
            restart_locked(b);
            running_ = true;
            thread_ = std::thread([this] { worker(); });
        }
        cv_.notify_all();
        cv_.wait(lock, [&] { return !ready_.empty() || (!running_ && ready_.empty()); });
        if (ready_.empty()) throw RuntimeError("prefetch: the background thread stopped");
        s = ready_.front();
        ready_.erase(ready_.begin());
        if (error_) {
            std::exception_ptr e = error_;
            error_ = nullptr;
            free_.push_back(s);
            expect_ = -1;
            std::rethrow_exception(e);
        }
        held_ = s;
        expect_ = b + 1;
        cv_.notify_all();
    }
    Slot& sl = slots_[static_cast<size_t>(s)];
    const int64_t B = sl.n;
    Shape xs{B};
    xs.insert(xs.end(), out_sample_.begin(), out_sample_.end());
    x = sl.x.view(xs);
    if (src_.targets) {
        Shape ts{B};
        ts.insert(ts.end(), src_.target_sample.begin(), src_.target_sample.end());
        targets = sl.t.view(ts);
    } else {
        std::memcpy(labels, sl.labels.data(), sizeof(int64_t) * static_cast<size_t>(B));
    }
    return B;
}

}  // namespace data
}  // namespace cnnkit
