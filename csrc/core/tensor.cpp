// Tensor and Storage: aligned CPU allocation, CUDA allocation through core/runtime.h.
#include "core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/runtime.h"

#ifdef CNNKIT_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace cnnkit {

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

// ---- Storage ------------------------------------------------------------------------------

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
    CNN_CHECK_ARG(bytes <= static_cast<size_t>(kMaxBytes), "cannot allocate ", bytes, " bytes");
    size_t n = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
    if (device == Device::CPU) {
        ptr_ = std::aligned_alloc(64, n);
        if (!ptr_)
            throw OutOfMemory(str_cat("out of memory: could not allocate ", n,
                                      " bytes on the CPU"));
    } else {
        ptr_ = cuda::malloc_device(n);
    }
}

Storage::Storage(void* borrowed, size_t bytes)
    : ptr_(borrowed), bytes_(bytes), device_(Device::CPU), owned_(false) {}

Storage::~Storage() {
    if (!ptr_ || !owned_) return;
    if (device_ == Device::CPU) {
        std::free(ptr_);
    } else {
        try {
            cuda::free_device(ptr_);
        } catch (...) {
        }
    }
}

// ---- Tensor -------------------------------------------------------------------------------

Tensor::Tensor(const Shape& shape, Device device) : shape_(shape) {
    const int64_t bytes = checked_bytes(checked_numel(shape, "tensor"), sizeof(float),
                                        str_cat("tensor of shape ", shape_str(shape)));
    storage_ = std::make_shared<Storage>(static_cast<size_t>(bytes), device);
}

Tensor Tensor::borrow(float* data, const Shape& shape) {
    Tensor t;
    for (int64_t d : shape) CNN_CHECK_ARG(d >= 0, "negative dimension in shape ", shape_str(shape));
    t.shape_ = shape;
    t.storage_ = std::make_shared<Storage>(static_cast<void*>(data),
                                           static_cast<size_t>(t.numel()) * sizeof(float));
    return t;
}

Tensor Tensor::zeros(const Shape& shape, Device device) {
    Tensor t(shape, device);
    t.fill(0.f);
    return t;
}

Tensor Tensor::full(const Shape& shape, float value) {
    Tensor t(shape, Device::CPU);
    t.fill(value);
    return t;
}

int64_t Tensor::capacity() const {
    if (!storage_) return 0;
    return static_cast<int64_t>(storage_->bytes() / sizeof(float)) - offset_;
}

Tensor Tensor::view(const Shape& shape, int64_t offset) const {
    CNN_CHECK(defined(), "view of an undefined tensor");
    CNN_CHECK(offset >= 0 && offset + shape_numel(shape) <= capacity(), "view ", shape_str(shape),
              " at offset ", offset, " exceeds storage of ", capacity(), " floats");
    Tensor t;
    t.storage_ = storage_;
    t.offset_ = offset_ + offset;
    t.shape_ = shape;
    return t;
}

Tensor Tensor::reshape(const Shape& shape) const {
    CNN_CHECK(shape_numel(shape) == numel(), "cannot reshape ", shape_str(shape_), " to ",
              shape_str(shape));
    return view(shape, 0);
}

Tensor Tensor::to(Device device) const {
    Tensor t(shape_, device);
    t.copy_from(*this);
    return t;
}

Tensor Tensor::clone() const { return to(device()); }

void Tensor::copy_from(const Tensor& src) {
    CNN_CHECK(src.numel() == numel(), "copy_from: ", shape_str(src.shape()), " into ",
              shape_str(shape_));
    size_t bytes = static_cast<size_t>(numel()) * sizeof(float);
    if (bytes == 0) return;
    Device a = src.device(), b = device();
    if (a == Device::CPU && b == Device::CPU) {
        std::memcpy(data(), src.data(), bytes);
    } else if (a == Device::CPU) {
        cuda::memcpy(data(), src.data(), bytes, 0);
    } else if (b == Device::CPU) {
        cuda::memcpy(data(), src.data(), bytes, 1);
    } else {
        cuda::memcpy(data(), src.data(), bytes, 2);
    }
}

void Tensor::fill(float v) {
    if (device() == Device::CUDA) {
        // +0.0 is all-zero bytes; any other value (-0.0, NaN: a diverged data-parallel step)
        // takes a kernel
        if (v == 0.f && !std::signbit(v)) {
            cuda::memset_zero(data(), static_cast<size_t>(numel()) * sizeof(float));
        } else {
#ifdef CNNKIT_WITH_CUDA
            cuda::fill(data(), v, numel());
#else
            throw RuntimeError("cnnkit was built without CUDA (no nvcc at build time)");
#endif
        }
        return;
    }
    float* p = data();
    int64_t n = numel();
    for (int64_t i = 0; i < n; ++i) p[i] = v;
}

}  // namespace cnnkit
