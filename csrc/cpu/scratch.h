// Grow-only, 64-byte aligned float scratch for one thread (packing panels, padded images):
// no allocation in the steady state, and sized to 64 bytes past the request only, so the
// sanitizer builds see reads past what a kernel asked for.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <new>

namespace cnnkit {
namespace cpu {

class ScratchBuffer {
  public:
    ScratchBuffer() = default;
    ScratchBuffer(const ScratchBuffer&) = delete;
    ScratchBuffer& operator=(const ScratchBuffer&) = delete;
    ~ScratchBuffer() { std::free(ptr_); }

    // At least `floats` floats; the old contents are lost when it grows. Throws bad_alloc.
    float* get(int64_t floats) {
        const size_t bytes = (static_cast<size_t>(floats > 0 ? floats : 1) * 4 + 63) / 64 * 64;
        if (bytes > cap_) {
            std::free(ptr_);
            ptr_ = static_cast<float*>(std::aligned_alloc(64, bytes));
            cap_ = ptr_ ? bytes : 0;
            if (!ptr_) throw std::bad_alloc();
        }
        return ptr_;
    }

  private:
    float* ptr_ = nullptr;
    size_t cap_ = 0;
};

}  // namespace cpu
}  // namespace cnnkit
