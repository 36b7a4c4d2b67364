// CPU-only builds: the CUDA runtime entry points exist but report no GPU / throw.
#include "core/common.h"
#include "core/runtime.h"

namespace cnnkit {
namespace cuda {

static const char* kNoCuda = "cnnkit was built without CUDA (no nvcc at build time)";

bool available() { return false; }
int device_count() { return 0; }
std::string device_name(int) { throw RuntimeError(kNoCuda); }
void* malloc_device(size_t) { throw RuntimeError(kNoCuda); }
void free_device(void*) { throw RuntimeError(kNoCuda); }
void memcpy(void*, const void*, size_t, int) { throw RuntimeError(kNoCuda); }
void memset_zero(void*, size_t) { throw RuntimeError(kNoCuda); }
void* malloc_pinned(size_t) { return nullptr; }
void free_pinned(void*) {}
void upload_pinned(void*, const void*, size_t) { throw RuntimeError(kNoCuda); }
void synchronize() { throw RuntimeError(kNoCuda); }
MemoryStats memory_stats() { return MemoryStats(); }
void empty_cache() {}
std::vector<double> time_ms(const std::function<void()>&, int) { throw RuntimeError(kNoCuda); }

}  // namespace cuda
}  // namespace cnnkit
