// CUDA runtime entry points: device discovery, cnnkit's one stream, the caching device
// allocator, pinned staging for host->device copies, and launch checking. Every call checked;
// failures throw cnnkit::RuntimeError with the call and location (never exit()).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cuda/common.cuh"

namespace cnnkit {
namespace cuda {

// ---- devices --------------------------------------------------------------------------------

int device_count() {
    static const int n = [] {
        int c = 0;
        if (cudaGetDeviceCount(&c) != cudaSuccess) {
            (void)cudaGetLastError();  // clear the "no driver / no device" error
            return 0;
        }
        return c;
    }();
    return n;
}

bool available() { return device_count() > 0; }

std::string device_name(int index) {
    CNN_CHECK_ARG(index >= 0 && index < device_count(), "cuda_device_name: no CUDA device ",
                  index, " (", device_count(), " present)");
    cudaDeviceProp prop;
    CNN_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
    return prop.name;
}

namespace {

std::atomic<int> g_device{0};
std::atomic<bool> g_started{false};  // the stream or a device buffer exists: device fixed

// The CUDA runtime's current device is per host thread: switch this one to cnnkit's device
// the first time it calls into CUDA through cnnkit (and again after set_device).
void bind_thread() {
    thread_local int bound = -1;
    const int d = g_device.load(std::memory_order_relaxed);
    if (bound == d) return;
    CNN_CUDA_CHECK(cudaSetDevice(d));
    bound = d;
}

void require_device() {
    if (!available())
        throw RuntimeError("CUDA requested but no CUDA device is available");
    bind_thread();
}

}  // namespace

void set_device(int index) {
    CNN_CHECK_ARG(index >= 0 && index < device_count(), "cuda_set_device: no CUDA device ",
                  index, " (", device_count(), " present)");
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    if (index == g_device.load()) return;
    if (g_started.load())
        throw RuntimeError(str_cat("cuda_set_device(", index, "): cnnkit already uses CUDA "
                                   "device ", g_device.load(), " in this process; choose the "
                                   "device before the first CUDA tensor or model"));
    g_device.store(index);
}

int current_device() { return g_device.load(); }

// ---- the stream -----------------------------------------------------------------------------

// One stream for all of cnnkit: kernels, copies and the allocator's reuse are ordered on it,
// so a freed block can be handed out again at once. It is a blocking stream, so work other code
// puts on the legacy default stream is still ordered with ours.
cudaStream_t stream() {
    static cudaStream_t s = [] {
        require_device();
        g_started.store(true);
        cudaStream_t st = nullptr;
        CNN_CUDA_CHECK(cudaStreamCreate(&st));
        return st;
    }();
    bind_thread();
    return s;
}

void synchronize() {
    if (!available()) return;
    CNN_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

int64_t max_grid() {
#if defined(CNNKIT_CUDA_EMULATION)
    return ::cuda_emu::max_grid();
#else
    return int64_t(65535) * 4;
#endif
}

void check_launch(const char* what, const char* file, int line) {
    static const bool blocking = [] {
        const char* e = std::getenv("CNNKIT_CUDA_LAUNCH_BLOCKING");
        return e && e[0] == '1';
    }();
    cudaError_t err = cudaGetLastError();
    if (err == cudaSuccess && blocking) err = cudaStreamSynchronize(stream());
    if (err == cudaSuccess) return;
    // the kernel's name: `what` is "kernel<...>, arg, arg": keep up to the first top-level comma
    std::string name(what);
    int depth = 0;
    for (size_t i = 0; i < name.size(); ++i) {
        char c = name[i];
        if (c == '<' || c == '(') ++depth;
        if (c == '>' || c == ')') --depth;
        if (c == ',' && depth == 0) {
            name.resize(i);
            break;
        }
    }
    const char* hint =
        err == cudaErrorNoKernelImageForDevice
            ? "; cnnkit was not compiled for this GPU: reinstall with "
              "-Ccmake.define.CNNKIT_CUDA_ARCHITECTURES=native (or the GPU's compute capability)"
            : "";
    throw RuntimeError(str_cat("CUDA error in kernel launch ", name, ": ", cudaGetErrorName(err),
                               " (", cudaGetErrorString(err), ")", hint, " [", file, ":", line,
                               "]"));
}

// ---- caching allocator ----------------------------------------------------------------------

namespace {

constexpr size_t kSmallLimit = size_t(1) << 20;  // up to 1 MiB: 512-byte buckets
constexpr size_t kSmallRound = 512;
constexpr size_t kLargeRound = size_t(2) << 20;  // above: 2 MiB buckets

size_t bucket_size(size_t bytes) {
    if (bytes == 0) bytes = 1;
    const size_t r = bytes <= kSmallLimit ? kSmallRound : kLargeRound;
    return (bytes + r - 1) / r * r;
}

struct Allocator {
    std::mutex mu;
    std::map<size_t, std::vector<void*>> free_blocks;  // bucket size -> cached blocks
    std::unordered_map<void*, size_t> live;            // handed-out block -> its size
    MemoryStats stats;

    // Caller holds mu. Frees every cached block (after the stream has drained).
    void release_cached() {
        if (free_blocks.empty()) return;
        CNN_CUDA_CHECK(cudaStreamSynchronize(stream()));
        for (auto& e : free_blocks)
            for (void* p : e.second) CNN_CUDA_CHECK(cudaFree(p));
        free_blocks.clear();
        stats.cached_bytes = 0;
    }
};

// Never destroyed: Tensors owned by Python objects may be freed after static destructors ran.
Allocator& allocator() {
    static Allocator* a = new Allocator();
    return *a;
}

// CNNKIT_CUDA_NO_CACHE=1: exact-size cudaMalloc and an immediate cudaFree, so that
// compute-sanitizer sees every buffer's true bounds (bench/gpu_check.sh sets it for memcheck).
bool no_cache() {
    static const bool v = [] {
        const char* e = std::getenv("CNNKIT_CUDA_NO_CACHE");
        return e && e[0] == '1';
    }();
    return v;
}

}  // namespace

void* malloc_device(size_t bytes) {
    require_device();
    g_started.store(true);
    const size_t size = no_cache() ? std::max<size_t>(bytes, 1) : bucket_size(bytes);
    Allocator& a = allocator();
    std::lock_guard<std::mutex> lock(a.mu);
    // Best fit among cached blocks no more than 25% larger than asked (so a big block is not
    // burnt on a small request); blocks are never split.
    auto it = a.free_blocks.lower_bound(size);
    if (!no_cache() && it != a.free_blocks.end() && it->first <= size + size / 4) {
        void* p = it->second.back();
        const size_t got = it->first;
        it->second.pop_back();
        if (it->second.empty()) a.free_blocks.erase(it);
        a.live[p] = got;
        a.stats.cached_bytes -= static_cast<int64_t>(got);
        a.stats.in_use_bytes += static_cast<int64_t>(got);
        a.stats.peak_in_use_bytes = std::max(a.stats.peak_in_use_bytes, a.stats.in_use_bytes);
        ++a.stats.cache_hits;
        return p;
    }
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        a.release_cached();  // give the cache back to the driver and try once more
        err = cudaMalloc(&p, size);
    }
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
        throw RuntimeError(str_cat(
            err == cudaErrorMemoryAllocation ? "CUDA out of memory: " : "CUDA error: ",
            "cudaMalloc of ", size, " bytes (", bytes, " requested) failed: ",
            cudaGetErrorName(err), " (", cudaGetErrorString(err), "); cnnkit holds ",
            a.stats.in_use_bytes, " bytes in use, the device has ", free_b, " of ", total_b,
            " bytes free [", __FILE__, ":", __LINE__, "]"));
    }
    a.live[p] = size;
    a.stats.in_use_bytes += static_cast<int64_t>(size);
    a.stats.peak_in_use_bytes = std::max(a.stats.peak_in_use_bytes, a.stats.in_use_bytes);
    ++a.stats.device_mallocs;
    return p;
}

void free_device(void* p) {
    if (!p) return;
    bind_thread();
    Allocator& a = allocator();
    std::lock_guard<std::mutex> lock(a.mu);
    auto it = a.live.find(p);
    if (it == a.live.end()) {
        // not ours (should not happen): hand it straight back
        CNN_CUDA_CHECK(cudaFree(p));
        return;
    }
    const size_t size = it->second;
    a.live.erase(it);
    a.stats.in_use_bytes -= static_cast<int64_t>(size);
    if (no_cache()) {
        CNN_CUDA_CHECK(cudaFree(p));
        return;
    }
    // Work already queued on the stream may still use the block; anything that gets it next is
    // queued after that work on the same stream, so no synchronisation is needed here.
    a.free_blocks[size].push_back(p);
    a.stats.cached_bytes += static_cast<int64_t>(size);
}

MemoryStats memory_stats() {
    Allocator& a = allocator();
    std::lock_guard<std::mutex> lock(a.mu);
    return a.stats;
}

void empty_cache() {
    if (!available()) return;
    Allocator& a = allocator();
    std::lock_guard<std::mutex> lock(a.mu);
    a.release_cached();
}

// ---- copies ---------------------------------------------------------------------------------

namespace {

// Two pinned buffers used in turn for host->device copies: the host copies into one while the
// other may still be in flight; an event says when a buffer's last copy has finished.
constexpr size_t kStagingMax = size_t(16) << 20;  // larger copies go in pieces

struct Staging {
    std::mutex mu;
    void* host[2] = {nullptr, nullptr};
    size_t cap[2] = {0, 0};
    cudaEvent_t done[2] = {nullptr, nullptr};
    bool pending[2] = {false, false};
    int next = 0;
};

Staging& staging() {
    static Staging* s = new Staging();
    return *s;
}

void upload(void* dst, const void* src, size_t bytes) {
    Staging& st = staging();
    std::lock_guard<std::mutex> lock(st.mu);
    const char* s = static_cast<const char*>(src);
    char* d = static_cast<char*>(dst);
    for (size_t off = 0; off < bytes;) {
        const size_t n = std::min(bytes - off, kStagingMax);
        const int i = st.next;
        st.next ^= 1;
        if (st.pending[i]) {
            CNN_CUDA_CHECK(cudaEventSynchronize(st.done[i]));
            st.pending[i] = false;
        }
        if (!st.done[i]) CNN_CUDA_CHECK(cudaEventCreateWithFlags(&st.done[i], cudaEventDisableTiming));
        if (st.cap[i] < n) {
            if (st.host[i]) CNN_CUDA_CHECK(cudaFreeHost(st.host[i]));
            st.host[i] = nullptr;
            st.cap[i] = 0;
            size_t want = std::max(n, size_t(1) << 20);
            if (cudaHostAlloc(&st.host[i], want, cudaHostAllocDefault) != cudaSuccess) {
                // no pinned memory to be had: copy straight from pageable memory instead
                (void)cudaGetLastError();
                st.host[i] = nullptr;
                CNN_CUDA_CHECK(cudaMemcpyAsync(d + off, s + off, n, cudaMemcpyHostToDevice,
                                               stream()));
                CNN_CUDA_CHECK(cudaStreamSynchronize(stream()));
                off += n;
                continue;
            }
            st.cap[i] = want;
        }
        std::memcpy(st.host[i], s + off, n);
        CNN_CUDA_CHECK(cudaMemcpyAsync(d + off, st.host[i], n, cudaMemcpyHostToDevice, stream()));
        CNN_CUDA_CHECK(cudaEventRecord(st.done[i], stream()));
        st.pending[i] = true;
        off += n;
    }
}

}  // namespace

void memcpy(void* dst, const void* src, size_t bytes, int kind) {
    if (bytes == 0) return;
    require_device();
    if (kind == 0) {
        upload(dst, src, bytes);
    } else if (kind == 1) {
        CNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
        CNN_CUDA_CHECK(cudaStreamSynchronize(stream()));
    } else {
        CNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
    }
}

void* malloc_pinned(size_t bytes) {
    if (!available()) return nullptr;
    bind_thread();
    void* p = nullptr;
    if (cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();  // no page-locked memory to be had: the caller falls back
        return nullptr;
    }
    return p;
}

void free_pinned(void* p) {
    if (p && cudaFreeHost(p) != cudaSuccess) (void)cudaGetLastError();
}

void upload_pinned(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return;
    require_device();
    CNN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
}

// ---- gradient staging of an overlapped data-parallel step --------------------------------

struct GradStaging::Impl {
    cudaStream_t down = nullptr, up = nullptr;  // device->host, host->device
    cudaEvent_t ready = nullptr;                // on cnnkit's stream: a bucket's gradients queued
    cudaEvent_t uploaded = nullptr;             // on `up`: the uploads queued so far
    std::vector<cudaEvent_t> landed;            // on `down`: slot's download done

    ~Impl() {
        for (cudaEvent_t e : landed)
            if (e) (void)cudaEventDestroy(e);
        if (ready) (void)cudaEventDestroy(ready);
        if (uploaded) (void)cudaEventDestroy(uploaded);
        if (down) (void)cudaStreamDestroy(down);
        if (up) (void)cudaStreamDestroy(up);
        (void)cudaGetLastError();
    }
};

GradStaging::GradStaging(int slots) {
    CNN_CHECK_ARG(slots >= 1, "GradStaging: slots must be >= 1, got ", slots);
    (void)stream();  // the device is fixed and this thread bound to it
    impl_ = new Impl();
    try {
        // Non-blocking: they never wait for work other code puts on the legacy default stream.
        CNN_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->down, cudaStreamNonBlocking));
        CNN_CUDA_CHECK(cudaStreamCreateWithFlags(&impl_->up, cudaStreamNonBlocking));
        CNN_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->ready, cudaEventDisableTiming));
        CNN_CUDA_CHECK(cudaEventCreateWithFlags(&impl_->uploaded, cudaEventDisableTiming));
        impl_->landed.assign(static_cast<size_t>(slots), nullptr);
        for (cudaEvent_t& e : impl_->landed)
            CNN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    } catch (...) {
        delete impl_;
        impl_ = nullptr;
        throw;
    }
}

GradStaging::~GradStaging() {
    if (!impl_) return;
    quiesce();
    delete impl_;
}

int GradStaging::slots() const { return static_cast<int>(impl_->landed.size()); }

void GradStaging::download(int slot, void* host, const void* dev, size_t bytes) {
    CNN_CHECK_ARG(slot >= 0 && slot < slots(), "GradStaging: no slot ", slot);
    cudaStream_t s = stream();  // binds this thread to cnnkit's device
    // cudaStreamWaitEvent takes the event's latest record, so one `ready` serves every slot
    CNN_CUDA_CHECK(cudaEventRecord(impl_->ready, s));
    CNN_CUDA_CHECK(cudaStreamWaitEvent(impl_->down, impl_->ready, 0));
    if (bytes)
        CNN_CUDA_CHECK(
            cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, impl_->down));
    CNN_CUDA_CHECK(cudaEventRecord(impl_->landed[static_cast<size_t>(slot)], impl_->down));
}

void GradStaging::wait(int slot) {
    CNN_CHECK_ARG(slot >= 0 && slot < slots(), "GradStaging: no slot ", slot);
    require_device();
    CNN_CUDA_CHECK(cudaEventSynchronize(impl_->landed[static_cast<size_t>(slot)]));
}

void GradStaging::upload(void* dev, const void* host, size_t bytes) {
    require_device();
    if (bytes)
        CNN_CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, impl_->up));
}

void GradStaging::join() {
    cudaStream_t s = stream();
    CNN_CUDA_CHECK(cudaEventRecord(impl_->uploaded, impl_->up));
    CNN_CUDA_CHECK(cudaStreamWaitEvent(s, impl_->uploaded, 0));
}

void GradStaging::quiesce() noexcept {
    if (!impl_) return;
    try {
        require_device();
    } catch (...) {
    }
    (void)cudaStreamSynchronize(impl_->down);
    (void)cudaStreamSynchronize(impl_->up);
    (void)cudaGetLastError();
}

void memset_zero(void* p, size_t bytes) {
    if (bytes == 0) return;
    CNN_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream()));
}

// ---- timing ---------------------------------------------------------------------------------

std::vector<double> time_ms(const std::function<void()>& fn, int repeats) {
    require_device();
    cudaEvent_t start = nullptr, stop = nullptr;
    CNN_CUDA_CHECK(cudaEventCreate(&start));
    CNN_CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<double> out;
    try {
        for (int r = 0; r < repeats; ++r) {
            CNN_CUDA_CHECK(cudaEventRecord(start, stream()));
            fn();
            CNN_CUDA_CHECK(cudaEventRecord(stop, stream()));
            CNN_CUDA_CHECK(cudaEventSynchronize(stop));
            float ms = 0.f;
            CNN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
            out.push_back(ms);
        }
    } catch (...) {
        (void)cudaEventDestroy(start);
        (void)cudaEventDestroy(stop);
        throw;
    }
    CNN_CUDA_CHECK(cudaEventDestroy(start));
    CNN_CUDA_CHECK(cudaEventDestroy(stop));
    return out;
}

}  // namespace cuda
}  // namespace cnnkit
