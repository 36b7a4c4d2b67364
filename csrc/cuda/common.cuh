// Shared by every .cu file: the CUDA error check, the checked kernel launcher on cnnkit's one
// stream, grid sizing for grid-stride loops, aligned vector loads, a deterministic block sum,
// and a scoped device buffer from the caching allocator.
#pragma once

#if defined(CNNKIT_CUDA_EMULATION)
#include "cuda_emu.h"  // tests/cuda_emu: runs these kernels on the CPU (development aid only)
#else
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <utility>

#include "core/common.h"
#include "core/runtime.h"

// Every CUDA runtime call goes through this: a failure throws cnnkit::RuntimeError (Python
// RuntimeError) naming the call, the CUDA error and file:line. Never exit().
#define CNN_CUDA_CHECK(call)                                                                 \
    do {                                                                                     \
        cudaError_t err_ = (call);                                                           \
        if (err_ != cudaSuccess) {                                                           \
            (void)cudaGetLastError(); /* clear a non-sticky error */                         \
            throw ::cnnkit::RuntimeError(::cnnkit::str_cat("CUDA error in ", #call, ": ",    \
                                                           cudaGetErrorName(err_), " (",     \
                                                           cudaGetErrorString(err_), ") [",  \
                                                           __FILE__, ":", __LINE__, "]"));   \
        }                                                                                    \
    } while (0)

// Launch `kernel` on cnnkit's stream and check it:
//   CNN_LAUNCH(grid, block, kernel_name, arg0, arg1, ...);
// (the kernel may be a template specialisation: the commas survive __VA_ARGS__).
#define CNN_LAUNCH(grid, block, ...) \
    ::cnnkit::cuda::launch_kernel(#__VA_ARGS__, __FILE__, __LINE__, grid, block, __VA_ARGS__)

namespace cnnkit {
namespace cuda {

// The one stream every cnnkit kernel and copy runs on (runtime.cu).
cudaStream_t stream();

// After a launch: cudaGetLastError (bad configuration, no kernel image for this GPU, ...), and
// with CNNKIT_CUDA_LAUNCH_BLOCKING=1 in the environment also a stream synchronisation, so an
// asynchronous fault is reported at the launch that caused it. Throws RuntimeError.
void check_launch(const char* what, const char* file, int line);

// Upper bound on grid.x for grid-stride loops (65535 * 4; any value gives the same results).
int64_t max_grid();

template <typename... P, typename... A>
void launch_kernel(const char* what, const char* file, int line, dim3 grid, dim3 block,
                   void (*kernel)(P...), A&&... args) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;  // empty problem: nothing to run
#if defined(CNNKIT_CUDA_EMULATION)
    ::cuda_emu::launch(grid, block, [&] { kernel(args...); });
#else
    kernel<<<grid, block, 0, stream()>>>(std::forward<A>(args)...);
#endif
    check_launch(what, file, line);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for n items at `block` threads each, capped: kernels loop grid-stride.
inline unsigned grid_for(int64_t n, int block) {
    int64_t g = ceil_div(n, block);
    if (g > max_grid()) g = max_grid();
    return static_cast<unsigned>(g < 1 ? 1 : g);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Grid-stride loop over [0, n) (Caffe's CUDA_KERNEL_LOOP).
#define CNN_GRID_LOOP(i, n)                                                                  \
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * static_cast<int64_t>(blockDim.x) +  \
                     static_cast<int64_t>(threadIdx.x);                                      \
         i < (n); i += static_cast<int64_t>(gridDim.x) * static_cast<int64_t>(blockDim.x))

// 16-byte vector load/store; the caller guarantees alignment (checked in emulation).
__device__ __forceinline__ float4 load_float4(const float* p) {
#if defined(CNNKIT_CUDA_EMULATION)
    ::cuda_emu::check_aligned(p, 16);
#endif
    return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ void store_float4(float* p, float4 v) {
#if defined(CNNKIT_CUDA_EMULATION)
    ::cuda_emu::check_aligned(p, 16);
#endif
    *reinterpret_cast<float4*>(p) = v;
}

// Sum of v over the BLOCK threads of a block, returned to every thread: a fixed-shape tree in
// shared memory, so the result is bit-identical run to run (no atomics). Every thread of the
// block must call it; `smem` holds BLOCK elements.
template <int BLOCK, typename T>
__device__ T block_sum(T v, T* smem) {
    static_assert((BLOCK & (BLOCK - 1)) == 0, "BLOCK must be a power of two");
    smem[threadIdx.x] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (static_cast<int>(threadIdx.x) < s) smem[threadIdx.x] += smem[threadIdx.x + s];
        __syncthreads();
    }
    T r = smem[0];
    __syncthreads();  // smem may be reused right after
    return r;
}

// Scratch device memory for one call, from the caching allocator (so a temporary costs no
// cudaMalloc in steady state). Freed blocks are only reused by later work on the same stream.
class DeviceBuffer {
  public:
    explicit DeviceBuffer(size_t bytes) : p_(bytes ? malloc_device(bytes) : nullptr) {}
    ~DeviceBuffer() {
        if (p_) {
            try {
                free_device(p_);
            } catch (...) {
            }
        }
    }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    template <typename T>
    T* as() const {
        return static_cast<T*>(p_);
    }

  private:
    void* p_;
};

}  // namespace cuda
}  // namespace cnnkit
