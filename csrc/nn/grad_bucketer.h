// GradBucketer: overlaps the data-parallel gradient reduction with the backward, as DDP and
// Horovod do. The flat gradient buffer is cut, at layer boundaries, into buckets of at least
// `bucket_bytes`; the backward visits the layers last to first, so the part of the buffer
// whose gradients are final grows from the end towards the start, and each bucket is handed
// to a communication thread (which calls the reducer on it, then scales it) as soon as the
// backward has passed its first layer. The cut depends only on the parameter layout and
// bucket_bytes, so every process issues the same reductions in the same order. CUDA gradients
// cross to a page-locked host buffer and back around the reducer, bucket by bucket (Stager).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/runtime.h"

namespace cnnkit {
namespace nn {

class GradBucketer {
  public:
    using Reducer = std::function<void(float* grads, int64_t n)>;
    struct Bucket {
        int64_t offset = 0, size = 0;  // floats of the flat buffer: [offset, offset + size)
        int64_t ready_after = 0;       // node whose backward completes the bucket
    };
    // Gradients that live elsewhere (a CUDA model's): each bucket crosses to the host buffer
    // that begin() is given and back. issued(k) runs on the step's thread when bucket k is
    // handed over (queue its copy to the host), fetch(k) on the communication thread before
    // the reducer sees it (wait for that copy), and done(k) after the reducer and the scale
    // (queue the copy back). Not called for the buckets skipped after an error.
    struct Stager {
        virtual ~Stager() = default;
        virtual void issued(size_t k, const Bucket& b) = 0;
        virtual void fetch(size_t k, const Bucket& b) = 0;
        virtual void done(size_t k, const Bucket& b) = 0;
    };

    // The buckets, in issue order (from the end of the buffer to its start), for a buffer of
    // n floats whose node i owns [starts[i], starts[i + 1]) (starts[0] = 0, starts[L] = n,
    // non-decreasing). Every bucket holds at least ceil(bucket_bytes / 4) floats except the
    // last one issued (the one that starts at 0); bucket_bytes <= 0 gives one bucket.
    static std::vector<Bucket> plan(const std::vector<int64_t>& starts, int64_t bucket_bytes);

    GradBucketer() = default;
    GradBucketer(const GradBucketer&) = delete;
    GradBucketer& operator=(const GradBucketer&) = delete;
    ~GradBucketer();  // stops and joins the thread (idle: no step runs while the Net dies)

    void set_plan(std::vector<Bucket> buckets) { buckets_ = std::move(buckets); }
    const std::vector<Bucket>& buckets() const { return buckets_; }

    // One step: begin, node_done(i) after the backward of node i (i decreasing; nodes without
    // gradients too), then finish, or abandon when the step fails before finish returns.
    // `fn` and `base` must stay valid until finish/abandon returns.
    // With a stager, `base` is the host buffer the buckets are staged in (the reducer's view).
    void begin(float* base, const Reducer* fn, float scale, Stager* stager = nullptr);
    // A step without the thread (a reducer that only queues its work, the NCCL sums on the
    // device): node_done and finish call `fn` on each bucket on the calling thread, in the
    // same order, and its errors propagate from there; no scaling, nothing to wait for.
    void begin_inline(float* base, const Reducer* fn);
    // Hands over every bucket that the backward of nodes >= i completes (main thread only).
    void node_done(int64_t i) {
        if (next_ < buckets_.size() && buckets_[next_].ready_after >= i) issue(i);
    }
    // Hands over the rest, waits for every bucket, then rethrows the first reducer error
    // (or the stager's: an error in issued() ends the hand-over as a reducer error would).
    void finish();
    // Drops the buckets the thread has not started and waits for the one it runs (if any);
    // the step's error is the caller's, so a reducer error is dropped. No-op after finish.
    void abandon() noexcept;

  private:
    void issue(int64_t i);
    void wait_all(std::unique_lock<std::mutex>& lock);
    void worker();
    void start_thread();

    std::vector<Bucket> buckets_;
    size_t next_ = 0;  // main thread: buckets handed over so far

    std::mutex mu_;
    std::condition_variable work_cv_, done_cv_;
    size_t issued_ = 0, done_ = 0;  // guarded by mu_
    bool stop_ = false, cancel_ = false, active_ = false;
    bool inline_ = false;  // this step's buckets go to fn_ on the calling thread
    std::exception_ptr error_;
    float* base_ = nullptr;
    const Reducer* fn_ = nullptr;
    float scale_ = 1.f;
    Stager* stager_ = nullptr;
    std::thread thread_;
    long pid_ = 0;  // process that started thread_ (a forked child starts its own)
};

// The Stager of a CUDA model whose buckets an MPI reducer sums on the host: each bucket goes
// to its slice of a page-locked host buffer and back on cuda::GradStaging's copy streams
// (slot k for bucket k), beside the backward's kernels on cnnkit's stream.
class CudaHostStager final : public GradBucketer::Stager {
  public:
    explicit CudaHostStager(int slots) : copies_(slots) {}
    int slots() const { return copies_.slots(); }
    // The step's buffers: n floats of page-locked host memory and the CUDA gradients.
    void set_buffers(float* host, float* dev) {
        host_ = host;
        dev_ = dev;
    }
    void issued(size_t k, const GradBucketer::Bucket& b) override;
    void fetch(size_t k, const GradBucketer::Bucket& b) override;
    void done(size_t k, const GradBucketer::Bucket& b) override;
    void join() { copies_.join(); }  // cnnkit's stream follows the uploads (before the update)
    void quiesce() noexcept { copies_.quiesce(); }

  private:
    cuda::GradStaging copies_;
    float* host_ = nullptr;
    float* dev_ = nullptr;
};

}  // namespace nn
}  // namespace cnnkit
