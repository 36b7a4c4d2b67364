// CPU-only builds: the CUDA runtime entry points exist but report no GPU / throw.
#include "core/common.h"
#include "core/runtime.h"
#include "cuda/nccl.h"

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
GradStaging::GradStaging(int) { throw RuntimeError(kNoCuda); }
GradStaging::~GradStaging() {}
int GradStaging::slots() const { return 0; }
void GradStaging::download(int, void*, const void*, size_t) { throw RuntimeError(kNoCuda); }
void GradStaging::wait(int) { throw RuntimeError(kNoCuda); }
void GradStaging::upload(void*, const void*, size_t) { throw RuntimeError(kNoCuda); }
void GradStaging::join() { throw RuntimeError(kNoCuda); }
void GradStaging::quiesce() noexcept {}
MemoryStats memory_stats() { return MemoryStats(); }
void empty_cache() {}
std::vector<double> time_ms(const std::function<void()>&, int) { throw RuntimeError(kNoCuda); }
void set_device(int) { throw RuntimeError(kNoCuda); }
int current_device() { return -1; }

}  // namespace cuda

namespace nccl {

int load(const std::string&) { throw RuntimeError(cuda::kNoCuda); }
bool loaded() { return false; }
std::string unique_id() { throw RuntimeError(cuda::kNoCuda); }
Comm::Comm(const std::string&, int, int) { throw RuntimeError(cuda::kNoCuda); }
Comm::~Comm() {}
void Comm::abort_comm() {}
void Comm::all_reduce_sum(float*, int64_t, double) { throw RuntimeError(cuda::kNoCuda); }
void Comm::queue_sum(float*, int64_t) { throw RuntimeError(cuda::kNoCuda); }
void Comm::wait_queued(double) { throw RuntimeError(cuda::kNoCuda); }

}  // namespace nccl
}  // namespace cnnkit
