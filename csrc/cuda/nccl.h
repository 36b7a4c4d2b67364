// NCCL for the data-parallel gradient all-reduce of CUDA models: the gradients are summed on
// the GPUs, on a stream of the communicator's that follows cnnkit's, instead of crossing to the
// host for MPI.
//
// cnnkit does not link NCCL: the library is opened at run time (dlopen) from the path the
// caller gives (cnnkit.distributed finds the nvidia-nccl wheel's libnccl.so.2, or the system's),
// and the few entry points used are declared here after NCCL's C ABI (nccl.h of NCCL 2.x:
// ncclUniqueId is 128 bytes passed by value, results and enums are ints). So every CUDA build
// has the path, whether or not NCCL was installed when it was built, and a machine without
// NCCL simply does not use it. When CMake finds nccl.h (CNNKIT_NCCL_ROOT, NCCL_HOME or the
// nvidia-nccl wheel of the building Python), nccl.cu checks these declarations against it.
//
// Build without CUDA (stub.cpp): every call throws RuntimeError "built without CUDA".
#pragma once

#include <cstdint>
#include <string>

namespace cnnkit {
namespace nccl {

constexpr int kUniqueIdBytes = 128;

// Opens the NCCL shared library at `path` (once per process: a second call with another path
// returns the version of the one already open) and returns its version code (e.g. 23203 for
// 2.32.3). Throws RuntimeError naming the path and dlerror(), or the missing entry point.
int load(const std::string& path);
bool loaded();

// ncclGetUniqueId: the 128 bytes rank 0 makes and every rank passes to Comm (broadcast them
// over MPI). Needs load().
std::string unique_id();

// One communicator of `nranks` processes, this one being `rank`, on the CUDA device this
// process uses (cuda::set_device before; one device per process). The constructor is
// collective: it returns when every rank has joined (ncclCommInitRank).
class Comm {
public:
    Comm(const std::string& id, int nranks, int rank);
    ~Comm();
    Comm(const Comm&) = delete;
    Comm& operator=(const Comm&) = delete;

    // Sums the n floats at device pointer `dev` over every rank, in place, and waits for it:
    // queue_sum, then wait_queued.
    void all_reduce_sum(float* dev, int64_t n, double timeout_s);
    // Queues that sum on the communicator's own stream, after everything queued on cnnkit's
    // stream so far, and returns (the gradient buckets of an overlapped backward: the sums
    // run beside the backward's kernels). Every rank must queue the same sums in the same
    // order.
    void queue_sum(float* dev, int64_t n);
    // Waits for every sum queued: polls their completion and the communicator's asynchronous
    // error until done or `timeout_s` seconds have passed, then makes cnnkit's stream wait
    // for them (the update reads the sums). On a timeout or an NCCL error the communicator
    // is aborted (ncclCommAbort: nothing of it is used again) and RuntimeError says which.
    void wait_queued(double timeout_s);

    int nranks() const { return nranks_; }
    int rank() const { return rank_; }
    bool aborted() const { return aborted_; }

private:
    void* comm_ = nullptr;
    void* stream_ = nullptr;  // cudaStream_t of the sums, made on the first queue_sum
    void* ready_ = nullptr;   // cudaEvent_t on cnnkit's stream: what a sum waits for
    void* done_ = nullptr;    // cudaEvent_t on stream_: the sums queued so far
    int nranks_ = 0, rank_ = 0;
    int64_t queued_ = 0;      // sums queued since the last wait_queued
    bool aborted_ = false;
    void abort_comm();
};

}  // namespace nccl
}  // namespace cnnkit
