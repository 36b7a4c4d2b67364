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
#include "cuda/nccl.h"
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
        "after the backward. bucket_bytes > 0: one call per bucket of "
        "grad_buckets(net, bucket_bytes), in that order, from a communication thread while "
        "the backward goes on. fn runs while the Net is locked: it must not call the Net.");
    // ---- NCCL (CUDA models): see csrc/cuda/nccl.h --------------------------------------
    m.def("nccl_load", &nccl::load, py::arg("path"),
          "Open the NCCL library at `path` (once per process) and return its version code.");
    m.def("nccl_loaded", &nccl::loaded);
    m.def("nccl_unique_id", [] { return py::bytes(nccl::unique_id()); },
          "ncclGetUniqueId: 128 bytes rank 0 makes and broadcasts to every rank.");
    py::class_<nccl::Comm, std::shared_ptr<nccl::Comm>>(m, "NcclComm")
        .def(py::init([](py::bytes id, int nranks, int rank) {
                 std::string s = id;  // copied with the GIL held
                 py::gil_scoped_release release;  // collective: waits for every rank
                 return std::make_shared<nccl::Comm>(s, nranks, rank);
             }),
             py::arg("unique_id"), py::arg("nranks"), py::arg("rank"))
        .def_property_readonly("nranks", &nccl::Comm::nranks)
        .def_property_readonly("rank", &nccl::Comm::rank)
        .def_property_readonly("aborted", &nccl::Comm::aborted)
        .def(
            "all_reduce_sum",
            [](nccl::Comm& c, int64_t device_ptr, int64_t n, double timeout) {
                py::gil_scoped_release release;
                c.all_reduce_sum(reinterpret_cast<float*>(device_ptr), n, timeout);
            },
            py::arg("device_ptr"), py::arg("n"), py::arg("timeout"),
            "Testing aid: sum n float32 at a device address in place over every rank.");
    m.def(
        "set_grad_reducer_nccl",
        [](nn::Net& net, std::shared_ptr<nccl::Comm> comm, float scale, double timeout,
           int64_t bucket_bytes) {
            CNN_CHECK_ARG(comm != nullptr, "set_grad_reducer_nccl: no communicator");
            CNN_CHECK_ARG(std::isfinite(scale) && scale > 0.f,
                          "set_grad_reducer_nccl: scale must be a positive number, got ", scale);
            CNN_CHECK_ARG(timeout > 0, "set_grad_reducer_nccl: timeout must be > 0 s, got ",
                          timeout);
            CNN_CHECK_ARG(bucket_bytes >= 0,
                          "set_grad_reducer_nccl: bucket_bytes must be >= 0, got ", bucket_bytes);
            CNN_CHECK_ARG(net.flat_params().device() == Device::CUDA,
                          "set_grad_reducer_nccl: the model's parameters are on the CPU; move "
                          "it to CUDA first");
            py::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(net.mutex());
            // No Python in the step: the sums are queued and waited for on the step's thread,
            // without the GIL.
            net.set_grad_reducer([comm](float* g, int64_t n) { comm->queue_sum(g, n); }, scale,
                                 bucket_bytes, /*on_device=*/true,
                                 [comm, timeout] { comm->wait_queued(timeout); });
        },
        py::arg("net"), py::arg("comm"), py::arg("scale") = 1.f, py::arg("timeout") = 300.0,
        py::arg("bucket_bytes") = 0,
        "Set the gradient all-reduce of a CUDA model to an NCCL sum over `comm`, on the "
        "device, then multiplied by scale there. bucket_bytes = 0: one sum after the "
        "backward; > 0: one per bucket of grad_buckets(net, bucket_bytes), queued as the "
        "backward completes it, on the communicator's stream beside the backward's kernels. "
        "timeout: seconds the step may wait for the other processes before it aborts the "
        "communicator and raises. "
        "Clear it with set_grad_reducer(net, None).");
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
