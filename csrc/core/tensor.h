// Tensor: float32, contiguous, row-major (NCHW for images), int64 shape, reference-counted
// storage that knows its device. Copies between devices are explicit (to(Device)).
#pragma once

#include <memory>

#include "core/common.h"

namespace cnnkit {

enum class Device { CPU = 0, CUDA = 1 };

const char* device_name(Device d);

// A block of memory on one device. CPU blocks are 64-byte aligned.
class Storage {
  public:
    Storage(size_t bytes, Device device);
    // Borrowed CPU memory (not freed here): the owner keeps it alive while tensors use it.
    Storage(void* borrowed, size_t bytes);
    ~Storage();
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;

    void* data() const { return ptr_; }
    size_t bytes() const { return bytes_; }
    Device device() const { return device_; }

  private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
    Device device_;
    bool owned_ = true;
};

class Tensor {
  public:
    Tensor() = default;
    // New uninitialised tensor.
    Tensor(const Shape& shape, Device device = Device::CPU);

    static Tensor zeros(const Shape& shape, Device device = Device::CPU);
    static Tensor full(const Shape& shape, float value);  // CPU only
    // A CPU tensor over memory someone else owns (e.g. a numpy array for the length of one
    // call); no copy. The memory must outlive the tensor and every view of it.
    static Tensor borrow(float* data, const Shape& shape);

    bool defined() const { return storage_ != nullptr; }
    // True when no other tensor (no view, no array that adopted one) shares this storage.
    bool sole_owner() const { return storage_ && storage_.use_count() == 1; }
    const Shape& shape() const { return shape_; }
    int64_t dim() const { return static_cast<int64_t>(shape_.size()); }
    int64_t size(int64_t i) const { return shape_.at(i < 0 ? i + dim() : i); }
    int64_t numel() const { return shape_numel(shape_); }
    Device device() const { return storage_ ? storage_->device() : Device::CPU; }

    float* data() const { return static_cast<float*>(storage_->data()) + offset_; }

    // A tensor of another shape sharing this storage (same numel, or a prefix when
    // `allow_smaller`): used for flat parameter buffers and reusable activation arenas.
    Tensor view(const Shape& shape, int64_t offset = 0) const;
    Tensor reshape(const Shape& shape) const;  // same numel, shares storage

    Tensor to(Device device) const;  // always copies
    Tensor clone() const;
    void copy_from(const Tensor& src);  // same numel, any devices
    void fill(float v);

    // Capacity of the underlying storage in floats, counted from this tensor's offset.
    int64_t capacity() const;

  private:
    std::shared_ptr<Storage> storage_;
    int64_t offset_ = 0;
    Shape shape_;
};

}  // namespace cnnkit
