// Process-wide runtime facts: OpenMP thread count, CPU features, CUDA availability,
// and the device memory primitives the CUDA build provides (stub.cpp throws without CUDA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace cnnkit {

void set_num_threads(int n);
int get_num_threads();

bool cpu_has_avx2_fma();
bool cpu_has_avx512();  // AVX-512 F, BW, VL and DQ (and AVX2/FMA), with OS support
std::string cpu_features();
bool cpu_is_intel();  // CPUID vendor GenuineIntel (the direct convolution's tile table)

bool built_with_cuda();

namespace cuda {
bool available();        // built with CUDA and at least one device present
int device_count();
std::string device_name(int index);
// The CUDA device this process uses (default 0; one device per process). Every thread that
// calls into CUDA through cnnkit is switched to it. Must be called before cnnkit first uses
// CUDA (its stream, a device buffer): moving to another device afterwards throws, since
// the tensors already made live on the first one. Data-parallel jobs give each local rank
// its own device (cnnkit.distributed.init).
void set_device(int index);
int current_device();  // -1 in a build without CUDA
void* malloc_device(size_t bytes);
void free_device(void* p);
// kind: 0 host->device, 1 device->host, 2 device->device. All copies run in order on cnnkit's
// one CUDA stream; host->device goes through pinned staging buffers (the source may be reused
// as soon as this returns), device->host waits for the stream (the data is there on return).
void memcpy(void* dst, const void* src, size_t bytes, int kind);
void memset_zero(void* p, size_t bytes);
// Page-locked host memory (cudaHostAlloc) for buffers that cross to and from the device every
// step, as the data-parallel gradient staging does: device->host copies land in it directly
// and host->device copies from it skip the staging buffers. nullptr when none can be had (or
// in a build without CUDA); free_pinned(nullptr) does nothing.
void* malloc_pinned(size_t bytes);
void free_pinned(void* p);
// host->device from page-locked memory (malloc_pinned), queued on cnnkit's stream without a
// staging copy: `src` must not change until the stream has passed this copy (the next
// device->host memcpy, which waits for the stream, or synchronize()).
void upload_pinned(void* dst, const void* src, size_t bytes);
// Wait until every kernel and copy cnnkit has queued has finished (and surface its errors).
void synchronize();

// The copies of a data-parallel step whose gradient all-reduce overlaps the backward on a
// CUDA model (Net's gradient buckets, staged through page-locked host memory for MPI). Two
// copy streams beside cnnkit's: each bucket's device->host copy is queued on one as soon as
// the backward has queued that bucket's last gradient kernel, so it runs while the backward
// goes on; the reduced bucket's host->device copy goes on the other; join() makes cnnkit's
// stream wait for the uploads before the update. Slots name the buckets of one step (one
// event each), so the reducer thread waits for its bucket and not the later ones.
// download() runs on the step's thread; wait() and upload() on the reducer thread.
class GradStaging {
  public:
    explicit GradStaging(int slots);
    ~GradStaging();
    GradStaging(const GradStaging&) = delete;
    GradStaging& operator=(const GradStaging&) = delete;
    int slots() const;
    // device->host into page-locked `host`, after everything queued on cnnkit's stream so far
    void download(int slot, void* host, const void* dev, size_t bytes);
    void wait(int slot);  // blocks until slot's download has landed in host memory
    // host->device from page-locked memory: `host` must not change before join() returns
    void upload(void* dev, const void* host, size_t bytes);
    void join();  // cnnkit's stream waits for every upload queued so far
    // Waits for every copy queued on the two streams and drops their errors (a failed step:
    // nothing still reads or writes the buffers afterwards).
    void quiesce() noexcept;

  private:
    struct Impl;
    Impl* impl_ = nullptr;
};

// The caching device allocator: freed blocks are kept in size-bucketed free lists and reused
// instead of cudaFree/cudaMalloc every step.
struct MemoryStats {
    int64_t in_use_bytes = 0;       // handed out and not yet freed
    int64_t cached_bytes = 0;       // freed, kept for reuse
    int64_t peak_in_use_bytes = 0;
    int64_t device_mallocs = 0;     // cudaMalloc calls so far
    int64_t cache_hits = 0;         // allocations served from the free lists
};
MemoryStats memory_stats();
// Return every cached (free) block to the driver.
void empty_cache();

// Benchmark helper: runs fn `repeats` times, each between two CUDA events on cnnkit's stream;
// returns the milliseconds of each run (the caller warms up first).
std::vector<double> time_ms(const std::function<void()>& fn, int repeats);
}  // namespace cuda

}  // namespace cnnkit
