// NCCL for the data-parallel gradient all-reduce of CUDA models: the gradients are summed on
// the GPUs, on cnnkit's stream, instead of crossing to the host for MPI.
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

    // Sums the n floats at device pointer `dev` over every rank, in place, on cnnkit's stream,
    // and waits for it: polls the stream and the communicator's asynchronous error until done
    // or `timeout_s` seconds have passed. On a timeout or an NCCL error the communicator is
    // aborted (ncclCommAbort: nothing of it is used again) and RuntimeError says which.
    void all_reduce_sum(float* dev, int64_t n, double timeout_s);

    int nranks() const { return nranks_; }
    int rank() const { return rank_; }
    bool aborted() const { return aborted_; }

private:
    void* comm_ = nullptr;
    int nranks_ = 0, rank_ = 0;
    bool aborted_ = false;
    void abort_comm();
};

}  // namespace nccl
}  // namespace cnnkit
