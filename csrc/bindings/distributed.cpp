// Bindings for data-parallel training: the Net's gradient reducer, a Python callable (the
// all-reduce of cnnkit.distributed, on mpi4py) that train_step calls before the update with a
// numpy view of the flat gradient buffer, or of each bucket of it (overlapped with the
// backward, from the Net's communication thread). The step runs without the GIL; the reducer
// takes it for its call only.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <memory>
#include <mutex>

#include "core/common.h"
#include "nn/collective.h"
#include "nn/net.h"

namespace py = pybind11;
using namespace cnnkit;

void bind_distributed(py::module_& m) {
    m.def(
        "set_grad_reducer",
        [](nn::Net& net, py::object fn, float scale, int64_t bucket_bytes) {
            std::lock_guard<std::mutex> lock(net.mutex());
            if (fn.is_none()) {
                net.set_grad_reducer({}, 1.f);
                return;
            }
            CNN_CHECK_ARG(PyCallable_Check(fn.ptr()), "set_grad_reducer: fn must be callable");
            CNN_CHECK_ARG(std::isfinite(scale) && scale > 0.f,
                          "set_grad_reducer: scale must be a positive number, got ", scale);
            CNN_CHECK_ARG(bucket_bytes >= 0, "set_grad_reducer: bucket_bytes must be >= 0, got ",
                          bucket_bytes);
            // Kept while the Net uses it; released with the GIL held.
            std::shared_ptr<py::object> keep(new py::object(std::move(fn)), [](py::object* o) {
                py::gil_scoped_acquire gil;
                delete o;
            });
            net.set_grad_reducer(
                [keep](float* g, int64_t n) {
                    py::gil_scoped_acquire gil;
                    // A thread keeps its Python thread state between calls: the Net's reducer
                    // thread gets one on its first bucket instead of one per bucket (12 vs 20
                    // us a bucket measured), kept until the process ends.
                    static thread_local bool kept = false;
                    if (!kept) {
                        gil.inc_ref();
                        kept = true;
                    }
                    // A view of the gradients or of one bucket (no copy), valid for this call.
                    py::array_t<float> view({static_cast<py::ssize_t>(n)},
                                            {static_cast<py::ssize_t>(sizeof(float))}, g,
                                            py::capsule(g, [](void*) {}));
                    (*keep)(view);
                },
                scale, bucket_bytes);
        },
        py::arg("net"), py::arg("fn"), py::arg("scale") = 1.f, py::arg("bucket_bytes") = 0,
        "Set (or, with None, clear) the gradient all-reduce train_step calls: fn(grads) must "
        "sum a float32 slice of the flat gradient buffer over every process, in place; the "
        "result is then multiplied by scale. bucket_bytes = 0: one call on the whole buffer "
        "after the backward. bucket_bytes > 0 (CPU models): one call per bucket of "
        "grad_buckets(net, bucket_bytes), in that order, from a communication thread while "
        "the backward goes on. fn runs while the Net is locked: it must not call the Net.");
    m.def(
        "set_stats_reducer",
        [](py::object fn) {
            if (fn.is_none()) {
                nn::set_stats_reducer({});
                return;
            }
            CNN_CHECK_ARG(PyCallable_Check(fn.ptr()), "set_stats_reducer: fn must be callable");
            // Process-wide: still set when the interpreter ends (cnnkit.distributed also
            // clears it at exit); after Python's finalization the object is left alone.
            std::shared_ptr<py::object> keep(new py::object(std::move(fn)), [](py::object* o) {
                if (!Py_IsInitialized()) return;
                py::gil_scoped_acquire gil;
                delete o;
            });
            nn::set_stats_reducer([keep](double* d, int64_t n) {
                py::gil_scoped_acquire gil;
                py::array_t<double> view({static_cast<py::ssize_t>(n)},
                                         {static_cast<py::ssize_t>(sizeof(double))}, d,
                                         py::capsule(d, [](void*) {}));
                (*keep)(view);
            });
        },
        py::arg("fn"),
        "Set (or, with None, clear) the process-wide collective SyncBatchNorm sums its "
        "statistics with while training: fn(a) must sum the float64 array a over every "
        "process of the job, in place. Unset, SyncBatchNorm is BatchNorm.");
    m.def("has_stats_reducer", [] { return nn::has_stats_reducer(); });
    m.def("has_grad_reducer", [](nn::Net& net) { return net.has_grad_reducer(); },
          py::arg("net"));
    m.def("grad_bucket_bytes", [](nn::Net& net) { return net.grad_bucket_bytes(); },
          py::arg("net"));
    m.def(
        "grad_buckets",
        [](nn::Net& net, int64_t bucket_bytes) {
            CNN_CHECK_ARG(bucket_bytes >= 0, "grad_buckets: bucket_bytes must be >= 0, got ",
                          bucket_bytes);
            py::list out;
            for (const auto& b : net.grad_buckets(bucket_bytes))
                out.append(py::make_tuple(b.offset, b.size));
            return out;
        },
        py::arg("net"), py::arg("bucket_bytes"),
        "The (offset, size) in floats of each bucket set_grad_reducer(..., bucket_bytes) "
        "reduces, in the order it reduces them (from the end of the flat buffer to its "
        "start): cut at layer boundaries, every bucket at least bucket_bytes but the last.");
}
