// Helpers shared by the binding files (module.cpp, testing.cpp): numpy <-> Tensor conversion,
// device names, the CUDA guard of the kernel-level bindings, timing, loss targets and the Net
// lock. Included by csrc/bindings/ only (it includes pybind11).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "core/runtime.h"
#include "core/tensor.h"
#include "nn/net.h"

namespace cnnkit {
namespace bindings {

namespace py = pybind11;

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

inline Shape shape_of(const py::array& a) {
    Shape s;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s.push_back(a.shape(i));
    return s;
}

inline Tensor to_tensor(const FArray& a) {
    Tensor t(shape_of(a));
    if (t.numel()) std::memcpy(t.data(), a.data(), sizeof(float) * t.numel());
    return t;
}

inline Device parse_device(const std::string& d) {
    if (d == "cpu") return Device::CPU;
    if (d == "cuda" || d == "cuda:0") return Device::CUDA;
    throw ValueError(str_cat("unknown device '", d, "' (expected 'cpu' or 'cuda')"));
}

// For the kernel-level CUDA bindings (tests and benchmarks): a clear error without a GPU.
inline void require_cuda(const char* what) {
    if (!built_with_cuda())
        throw RuntimeError(str_cat(what, ": cnnkit was built without CUDA (no nvcc at build time)"));
    if (!cuda::available())
        throw RuntimeError(str_cat(what, ": CUDA requested but no CUDA device is available"));
}

// Milliseconds of each of `repeats` runs of fn after one warm-up run: CUDA events on the GPU,
// steady_clock on the CPU.
inline std::vector<double> time_runs(Device d, int repeats, const std::function<void()>& fn) {
    CNN_CHECK_ARG(repeats >= 1, "repeats must be >= 1, got ", repeats);
    fn();
    if (d == Device::CUDA) return cuda::time_ms(fn, repeats);
    std::vector<double> out;
    for (int r = 0; r < repeats; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        fn();
        auto t1 = std::chrono::steady_clock::now();
        out.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    return out;
}

// Labels (int64) for cross-entropy or float targets for MSE, checked against the batch size.
struct Targets {
    LArray labels;
    Tensor target;
    bool has_labels = false, has_target = false;
};

inline Targets make_targets(nn::Net& net, const py::array& y, int64_t N) {
    Targets t;
    if (net.loss() == nn::LossKind::MSE) {
        t.target = to_tensor(FArray::ensure(y));
        t.has_target = true;
        CNN_CHECK_ARG(t.target.dim() >= 1 && t.target.size(0) == N, "mse: expected ", N,
                      " targets, got shape ", shape_str(t.target.shape()));
    } else {
        t.labels = LArray::ensure(y);
        CNN_CHECK_ARG(t.labels && t.labels.ndim() == 1 && t.labels.shape(0) == N,
                      "cross_entropy: expected labels of shape (", N, ",), got ",
                      shape_str(shape_of(y)));
        t.has_labels = true;
    }
    return t;
}

// Lock order: never wait for the GIL while holding a Net's mutex. NetLock releases the GIL
// first, then locks; its destructor unlocks, then re-acquires the GIL. The body must not touch
// Python objects.
struct NetLock {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock;
    explicit NetLock(nn::Net& n) : lock(n.mutex()) {}
};

}  // namespace bindings
}  // namespace cnnkit
