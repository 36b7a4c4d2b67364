// Bindings for data-parallel training: the Net's gradient reducer, a Python callable (the
// all-reduce of cnnkit.distributed, on mpi4py) that train_step calls between the backward and
// the update with a numpy view of the flat gradient buffer. The step runs without the GIL;
// the reducer takes it for its call only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <memory>
#include <mutex>

#include "core/common.h"
#include "nn/net.h"

namespace py = pybind11;
using namespace cnnkit;

void bind_distributed(py::module_& m) {
    m.def(
        "set_grad_reducer",
        [](nn::Net& net, py::object fn, float scale) {
            std::lock_guard<std::mutex> lock(net.mutex());
            if (fn.is_none()) {
                net.set_grad_reducer({}, 1.f);
                return;
            }
            CNN_CHECK_ARG(PyCallable_Check(fn.ptr()), "set_grad_reducer: fn must be callable");
            CNN_CHECK_ARG(std::isfinite(scale) && scale > 0.f,
                          "set_grad_reducer: scale must be a positive number, got ", scale);
            // Kept while the Net uses it; released with the GIL held.
            std::shared_ptr<py::object> keep(new py::object(std::move(fn)), [](py::object* o) {
                py::gil_scoped_acquire gil;
                delete o;
            });
            net.set_grad_reducer(
                [keep](float* g, int64_t n) {
                    py::gil_scoped_acquire gil;
                    // A view of the gradients (no copy), valid for this call only.
                    py::array_t<float> view({static_cast<py::ssize_t>(n)},
                                            {static_cast<py::ssize_t>(sizeof(float))}, g,
                                            py::capsule(g, [](void*) {}));
                    (*keep)(view);
                },
                scale);
        },
        py::arg("net"), py::arg("fn"), py::arg("scale") = 1.f,
        "Set (or, with None, clear) the gradient all-reduce train_step calls: fn(grads) must "
        "sum the flat float32 gradient buffer of every process in place; the result is then "
        "multiplied by scale. fn runs while the Net is locked: it must not call the Net.");
    m.def("has_grad_reducer", [](nn::Net& net) { return net.has_grad_reducer(); },
          py::arg("net"));
}
