// CUDA runtime entry points: device discovery and memory. Every call checked; failures throw
// cnnkit::RuntimeError with the call and location (never exit()).
#include <cuda_runtime.h>

#include "core/common.h"
#include "core/runtime.h"

#define CNN_CUDA_CHECK(call)                                                                 \
    do {                                                                                     \
        cudaError_t err_ = (call);                                                           \
        if (err_ != cudaSuccess)                                                             \
            throw ::cnnkit::RuntimeError(::cnnkit::str_cat("CUDA error in ", #call, ": ",    \
                                                           cudaGetErrorString(err_), " [",   \
                                                           __FILE__, ":", __LINE__, "]"));   \
    } while (0)

namespace cnnkit {
namespace cuda {

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

bool available() { return device_count() > 0; }

std::string device_name(int index) {
    cudaDeviceProp prop;
    CNN_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
    return prop.name;
}

void* malloc_device(size_t bytes) {
    CNN_CHECK(available(), "CUDA requested but no CUDA device is available");
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        cudaGetLastError();
        throw RuntimeError(str_cat("CUDA out of memory: cudaMalloc of ", bytes,
                                   " bytes failed: ", cudaGetErrorString(err)));
    }
    return p;
}

void free_device(void* p) { CNN_CUDA_CHECK(cudaFree(p)); }

void memcpy(void* dst, const void* src, size_t bytes, int kind) {
    cudaMemcpyKind k = kind == 0 ? cudaMemcpyHostToDevice
                     : kind == 1 ? cudaMemcpyDeviceToHost
                                 : cudaMemcpyDeviceToDevice;
    CNN_CUDA_CHECK(cudaMemcpy(dst, src, bytes, k));
}

void memset_zero(void* p, size_t bytes) { CNN_CUDA_CHECK(cudaMemset(p, 0, bytes)); }

}  // namespace cuda
}  // namespace cnnkit
