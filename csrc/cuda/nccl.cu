// The NCCL gradient all-reduce (see nccl.h): NCCL opened at run time, its entry points looked up
// once, in-place float32 sums queued on the communicator's stream behind cnnkit's, polled to
// completion under a deadline.
#include "cuda/nccl.h"

#include <dlfcn.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "cuda/common.cuh"

#if defined(CNNKIT_HAVE_NCCL_H) && !defined(CNNKIT_CUDA_EMULATION)
#include <nccl.h>
#endif

namespace cnnkit {
namespace nccl {

namespace {

// NCCL's C ABI (nccl.h, NCCL 2.x), the part cnnkit calls.
struct UniqueId {
    char internal[kUniqueIdBytes];
};
using Result = int;  // ncclResult_t
using CommHandle = void*;  // ncclComm_t (a pointer to NCCL's opaque ncclComm)
constexpr Result kSuccess = 0;
constexpr Result kInProgress = 7;
constexpr int kFloat32 = 7;  // ncclFloat32
constexpr int kSum = 0;      // ncclSum

#if defined(CNNKIT_HAVE_NCCL_H) && !defined(CNNKIT_CUDA_EMULATION)
static_assert(sizeof(UniqueId) == sizeof(ncclUniqueId), "ncclUniqueId is not 128 bytes");
static_assert(kSuccess == ncclSuccess && kInProgress == ncclInProgress, "ncclResult_t moved");
static_assert(kFloat32 == ncclFloat32 && kSum == ncclSum, "NCCL enums moved");
static_assert(sizeof(ncclResult_t) == sizeof(Result), "ncclResult_t is not an int");
#endif

struct Api {
    void* lib = nullptr;
    std::string path;
    int version = 0;
    Result (*get_version)(int*) = nullptr;
    Result (*get_unique_id)(UniqueId*) = nullptr;
    Result (*comm_init_rank)(CommHandle*, int, UniqueId, int) = nullptr;
    Result (*all_reduce)(const void*, void*, size_t, int, int, CommHandle, cudaStream_t) =
        nullptr;
    Result (*comm_destroy)(CommHandle) = nullptr;
    Result (*comm_abort)(CommHandle) = nullptr;
    Result (*comm_get_async_error)(CommHandle, Result*) = nullptr;
    const char* (*get_error_string)(Result) = nullptr;
    const char* (*get_last_error)(CommHandle) = nullptr;  // NCCL >= 2.13; may be missing
};

std::mutex g_mu;
Api* g_api = nullptr;  // set once, never freed (communicators may outlive static destructors)

const Api& api() {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_api) throw RuntimeError("NCCL is not loaded: call nccl.load(path) first");
    return *g_api;
}

std::string describe(const Api& a, Result r, CommHandle comm) {
    std::string s = str_cat("NCCL error ", r);
    if (a.get_error_string) s += str_cat(" (", a.get_error_string(r), ")");
    if (comm && a.get_last_error) {
        const char* last = a.get_last_error(comm);
        if (last && *last) s += str_cat(": ", last);
    }
    return s;
}

}  // namespace

int load(const std::string& path) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_api) return g_api->version;
    CNN_CHECK_ARG(!path.empty(), "nccl.load: empty library path");
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char* e = dlerror();
        throw RuntimeError(str_cat("cannot open the NCCL library ", path, ": ",
                                   e ? e : "unknown error"));
    }
    Api* a = new Api();
    a->lib = lib;
    a->path = path;
    auto sym = [&](const char* name, bool required) -> void* {
        void* p = dlsym(lib, name);
        if (!p && required) {
            dlclose(lib);
            delete a;
            throw RuntimeError(str_cat("the NCCL library ", path, " has no ", name,
                                       " (not NCCL 2.x?)"));
        }
        return p;
    };
    a->get_version = reinterpret_cast<decltype(a->get_version)>(sym("ncclGetVersion", true));
    a->get_unique_id =
        reinterpret_cast<decltype(a->get_unique_id)>(sym("ncclGetUniqueId", true));
    a->comm_init_rank =
        reinterpret_cast<decltype(a->comm_init_rank)>(sym("ncclCommInitRank", true));
    a->all_reduce = reinterpret_cast<decltype(a->all_reduce)>(sym("ncclAllReduce", true));
    a->comm_destroy = reinterpret_cast<decltype(a->comm_destroy)>(sym("ncclCommDestroy", true));
    a->comm_abort = reinterpret_cast<decltype(a->comm_abort)>(sym("ncclCommAbort", true));
    a->comm_get_async_error = reinterpret_cast<decltype(a->comm_get_async_error)>(
        sym("ncclCommGetAsyncError", true));
    a->get_error_string =
        reinterpret_cast<decltype(a->get_error_string)>(sym("ncclGetErrorString", true));
    a->get_last_error =
        reinterpret_cast<decltype(a->get_last_error)>(sym("ncclGetLastError", false));
    Result r = a->get_version(&a->version);
    if (r != kSuccess) {
        const std::string what = describe(*a, r, nullptr);
        dlclose(lib);
        delete a;
        throw RuntimeError(str_cat("ncclGetVersion of ", path, " failed: ", what));
    }
    if (a->version < 21300) {  // 2.13: ncclCommGetAsyncError polling and ncclGetLastError
        const int v = a->version;
        dlclose(lib);
        delete a;
        throw RuntimeError(str_cat("the NCCL library ", path, " is version ", v,
                                   "; cnnkit needs NCCL 2.13 or later"));
    }
    g_api = a;
    return a->version;
}

bool loaded() {
    std::lock_guard<std::mutex> lock(g_mu);
    return g_api != nullptr;
}

std::string unique_id() {
    const Api& a = api();
    UniqueId id;
    std::memset(&id, 0, sizeof(id));
    const Result r = a.get_unique_id(&id);
    if (r != kSuccess) throw RuntimeError(str_cat("ncclGetUniqueId failed: ", describe(a, r, nullptr)));
    return std::string(id.internal, sizeof(id.internal));
}

Comm::Comm(const std::string& id, int nranks, int rank) : nranks_(nranks), rank_(rank) {
    CNN_CHECK_ARG(id.size() == static_cast<size_t>(kUniqueIdBytes),
                  "nccl.Comm: the unique id must be ", kUniqueIdBytes, " bytes, got ",
                  id.size());
    CNN_CHECK_ARG(nranks >= 1 && rank >= 0 && rank < nranks, "nccl.Comm: rank ", rank,
                  " of ", nranks, " processes");
    const Api& a = api();
    (void)cuda::stream();  // on the device this process uses: NCCL binds the current one
    UniqueId uid;
    std::memcpy(uid.internal, id.data(), sizeof(uid.internal));
    CommHandle c = nullptr;
    const Result r = a.comm_init_rank(&c, nranks, uid, rank);
    if (r != kSuccess)
        throw RuntimeError(str_cat("ncclCommInitRank (rank ", rank, " of ", nranks,
                                   ") failed: ", describe(a, r, c)));
    comm_ = c;
}

Comm::~Comm() {
    if (comm_) {
        const Api& a = api();
        // Destroy waits for the communicator's queued work; an aborted one is already gone.
        if (!aborted_) (void)a.comm_destroy(static_cast<CommHandle>(comm_));
        comm_ = nullptr;
    }
    if (done_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(done_));
    if (ready_) (void)cudaEventDestroy(static_cast<cudaEvent_t>(ready_));
    if (stream_) (void)cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
    (void)cudaGetLastError();
}

void Comm::abort_comm() {
    if (!comm_ || aborted_) return;
    aborted_ = true;
    (void)api().comm_abort(static_cast<CommHandle>(comm_));
}

void Comm::all_reduce_sum(float* dev, int64_t n, double timeout_s) {
    queue_sum(dev, n);
    wait_queued(timeout_s);
}

void Comm::queue_sum(float* dev, int64_t n) {
    CNN_CHECK_ARG(n >= 0, "nccl all_reduce_sum: n must be >= 0, got ", n);
    if (aborted_)
        throw RuntimeError("the NCCL communicator was aborted after an earlier error or "
                           "timeout; it cannot be used again");
    if (n == 0) return;
    const Api& a = api();
    CommHandle c = static_cast<CommHandle>(comm_);
    cudaStream_t main = cuda::stream();
    if (!stream_) {
        // Non-blocking: the sums never wait for work on the legacy default stream.
        cudaStream_t st = nullptr;
        CNN_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        stream_ = st;
        cudaEvent_t e = nullptr;
        CNN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        ready_ = e;
        CNN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        done_ = e;
    }
    cudaStream_t s = static_cast<cudaStream_t>(stream_);
    // the sum reads the gradients the kernels queued so far on cnnkit's stream have written
    CNN_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ready_), main));
    CNN_CUDA_CHECK(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(ready_), 0));
    Result r = a.all_reduce(dev, dev, static_cast<size_t>(n), kFloat32, kSum, c, s);
    if (r != kSuccess) {
        const std::string what = describe(a, r, c);
        abort_comm();
        throw RuntimeError(str_cat("ncclAllReduce of ", n, " floats (rank ", rank_, " of ",
                                   nranks_, ") failed: ", what));
    }
    ++queued_;
}

void Comm::wait_queued(double timeout_s) {
    if (queued_ == 0) return;
    queued_ = 0;
    if (aborted_)
        throw RuntimeError("the NCCL communicator was aborted after an earlier error or "
                           "timeout; it cannot be used again");
    const Api& a = api();
    CommHandle c = static_cast<CommHandle>(comm_);
    cudaEvent_t done = static_cast<cudaEvent_t>(done_);
    CNN_CUDA_CHECK(cudaEventRecord(done, static_cast<cudaStream_t>(stream_)));
    // Wait by polling, not cudaStreamSynchronize: a peer that never joins would block that
    // forever, while here the deadline turns it into an error (and the async error of a peer
    // that died, which NCCL reports through the communicator, ends the wait at once).
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto deadline = start + std::chrono::duration_cast<clock::duration>(
                                      std::chrono::duration<double>(timeout_s));
    for (int spin = 0;; ++spin) {
        const cudaError_t q = cudaEventQuery(done);
        if (q != cudaSuccess && q != cudaErrorNotReady) {
            (void)cudaGetLastError();
            abort_comm();
            throw RuntimeError(str_cat("CUDA error while waiting for the NCCL all-reduce: ",
                                       cudaGetErrorName(q), " (", cudaGetErrorString(q), ")"));
        }
        Result async = kSuccess;
        const Result r = a.comm_get_async_error(c, &async);
        if (r != kSuccess || (async != kSuccess && async != kInProgress)) {
            const std::string what = describe(a, r != kSuccess ? r : async, c);
            abort_comm();
            throw RuntimeError(str_cat("the NCCL all-reduce of the gradients failed (rank ",
                                       rank_, " of ", nranks_, "): ", what));
        }
        if (q == cudaSuccess) break;  // done, and no error reported for it
        if (clock::now() > deadline) {
            abort_comm();
            throw RuntimeError(str_cat(
                "the NCCL all-reduce of the gradients (rank ", rank_, " of ", nranks_,
                ") waited more than ", timeout_s,
                " s for the other processes (a peer is stuck or has died)"));
        }
        // a short step is done within microseconds: yield first, then sleep a little
        if (spin < 64)
            std::this_thread::yield();
        else
            std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    // done already, but the stream dependency also keeps the allocator's reuse ordered
    CNN_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), done, 0));
}

}  // namespace nccl
}  // namespace cnnkit
