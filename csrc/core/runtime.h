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
