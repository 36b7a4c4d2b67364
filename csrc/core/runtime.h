// Process-wide runtime facts: OpenMP thread count, CPU features, CUDA availability,
// and the device memory primitives the CUDA build provides (stub.cpp throws without CUDA).
#pragma once

#include <cstddef>
#include <string>

namespace cnnkit {

void set_num_threads(int n);
int get_num_threads();

bool cpu_has_avx2_fma();
std::string cpu_features();

bool built_with_cuda();

namespace cuda {
bool available();        // built with CUDA and at least one device present
int device_count();
std::string device_name(int index);
void* malloc_device(size_t bytes);
void free_device(void* p);
// kind: 0 host->device, 1 device->host, 2 device->device
void memcpy(void* dst, const void* src, size_t bytes, int kind);
void memset_zero(void* p, size_t bytes);
}  // namespace cuda

}  // namespace cnnkit
