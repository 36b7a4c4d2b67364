// GradBucketer: the bucket plan and the communication thread that reduces the buckets of one
// step in order while the backward goes on (see grad_bucketer.h).
#include "nn/grad_bucketer.h"

#include <unistd.h>

#include <limits>
#include <utility>

namespace cnnkit {
namespace nn {

std::vector<GradBucketer::Bucket> GradBucketer::plan(const std::vector<int64_t>& starts,
                                                     int64_t bucket_bytes) {
    std::vector<Bucket> out;
    if (starts.empty()) return out;
    const int64_t L = static_cast<int64_t>(starts.size()) - 1, n = starts[L];
    if (n <= 0) return out;
    if (bucket_bytes > 0) {
        const int64_t want = bucket_bytes / 4 + (bucket_bytes % 4 != 0);  // floats
        int64_t hi = n;
        // Node i's gradients are final once its backward ran; the nodes after it ran before,
        // so [starts[i], n) is final then. The highest node that starts at lo owns float lo
        // (a node without parameters starts where the next one does).
        for (int64_t i = L; i-- > 0;) {
            const int64_t lo = starts[i];
            if (lo > 0 && hi - lo >= want) {
                out.push_back({lo, hi - lo, i});
                hi = lo;
            }
        }
        if (hi > 0) out.push_back({0, hi, 0});
    } else {
        out.push_back({0, n, 0});
    }
    return out;
}

GradBucketer::~GradBucketer() {
    if (!thread_.joinable()) return;
    if (pid_ != static_cast<long>(getpid())) {
        // A forked child holds a copy of the parent's handle, not the thread: leave it be.
        new std::thread(std::move(thread_));
        return;
    }
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    work_cv_.notify_all();
    thread_.join();
}

void GradBucketer::start_thread() {
    const long pid = static_cast<long>(getpid());
    if (thread_.joinable() && pid_ == pid) return;
    if (thread_.joinable()) new std::thread(std::move(thread_));  // the parent's (see above)
    stop_ = false;
    pid_ = pid;
    thread_ = std::thread([this] { worker(); });
}

void GradBucketer::begin(float* base, const Reducer* fn, float scale, Stager* stager) {
    start_thread();
    std::lock_guard<std::mutex> lock(mu_);
    base_ = base;
    fn_ = fn;
    scale_ = scale;
    stager_ = stager;
    inline_ = false;
    issued_ = done_ = 0;
    next_ = 0;
    cancel_ = false;
    error_ = nullptr;
    active_ = true;
}

void GradBucketer::begin_inline(float* base, const Reducer* fn) {
    base_ = base;
    fn_ = fn;
    stager_ = nullptr;
    inline_ = true;
    next_ = 0;
    active_ = false;  // nothing for finish or abandon to wait for
}

void GradBucketer::issue(int64_t i) {
    size_t n = next_;
    while (n < buckets_.size() && buckets_[n].ready_after >= i) ++n;
    if (n == next_) return;
    if (inline_) {
        for (; next_ < n; ++next_) (*fn_)(base_ + buckets_[next_].offset, buckets_[next_].size);
        return;
    }
    if (stager_) {
        // Queue each bucket's copy to the host before the thread may wait for it. After an
        // error here the rest are still handed over (the thread skips them), so finish and
        // abandon see every bucket done and the error is raised as a reducer's.
        for (size_t k = next_; k < n; ++k) {
            bool failed;
            {
                std::lock_guard<std::mutex> lock(mu_);
                failed = error_ != nullptr || cancel_;
            }
            if (failed) break;
            try {
                stager_->issued(k, buckets_[k]);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mu_);
                if (!error_) error_ = std::current_exception();
            }
        }
    }
    next_ = n;
    {
        std::lock_guard<std::mutex> lock(mu_);
        issued_ = n;
    }
    work_cv_.notify_one();
}

void GradBucketer::wait_all(std::unique_lock<std::mutex>& lock) {
    done_cv_.wait(lock, [this] { return done_ == issued_; });
    active_ = false;
}

void GradBucketer::finish() {
    if (inline_) issue(std::numeric_limits<int64_t>::min());
    if (!active_) return;
    issue(std::numeric_limits<int64_t>::min());
    std::exception_ptr err;
    {
        std::unique_lock<std::mutex> lock(mu_);
        wait_all(lock);
        std::swap(err, error_);
    }
    if (err) std::rethrow_exception(err);
}

void GradBucketer::abandon() noexcept {
    std::unique_lock<std::mutex> lock(mu_);
    if (!active_) return;
    cancel_ = true;
    wait_all(lock);
    error_ = nullptr;
}

void GradBucketer::worker() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
        work_cv_.wait(lock, [this] { return stop_ || done_ < issued_; });
        if (done_ == issued_) return;  // stop_, and nothing left (never set during a step)
        const size_t k = done_;
        const Bucket b = buckets_[k];
        const bool skip = cancel_ || error_ != nullptr;  // after an error: no more calls
        float* g = base_ + b.offset;
        const Reducer* fn = fn_;
        const float s = scale_;
        Stager* stager = stager_;
        lock.unlock();
        std::exception_ptr err;
        if (!skip) {
            try {
                if (stager) stager->fetch(k, b);
                (*fn)(g, b.size);
                if (s != 1.f) {
                    const int64_t n = b.size;
#pragma omp simd
                    for (int64_t j = 0; j < n; ++j) g[j] *= s;
                }
                if (stager) stager->done(k, b);
            } catch (...) {
                err = std::current_exception();
            }
        }
        lock.lock();
        if (err && !error_) error_ = std::move(err);
        ++done_;
        if (done_ == issued_) done_cv_.notify_all();
    }
}

void CudaHostStager::issued(size_t k, const GradBucketer::Bucket& b) {
    copies_.download(static_cast<int>(k), host_ + b.offset, dev_ + b.offset,
                     static_cast<size_t>(b.size) * sizeof(float));
}

void CudaHostStager::fetch(size_t k, const GradBucketer::Bucket&) {
    copies_.wait(static_cast<int>(k));
}

void CudaHostStager::done(size_t, const GradBucketer::Bucket& b) {
    copies_.upload(dev_ + b.offset, host_ + b.offset, static_cast<size_t>(b.size) * sizeof(float));
}

}  // namespace nn
}  // namespace cnnkit
