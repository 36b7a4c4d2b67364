// Bindings of the native batch feed (data/batch.h): Trainer.fit hands it the whole data set
// once per fit and then runs many batches per call with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "data/batch.h"
#include "data/prefetch.h"
#include "nn/net.h"

namespace py = pybind11;
using namespace cnnkit;

namespace {

Shape shape_from(const py::array& a, py::ssize_t from) {
    Shape s;
    for (py::ssize_t i = from; i < a.ndim(); ++i) s.push_back(a.shape(i));
    return s;
}

bool c_contiguous(const py::array& a) {
    return (a.flags() & py::array::c_style) != 0;
}

// The arrays stay referenced here for as long as the native feed points into them.
struct PyBatchFeed {
    py::array x, y;
    std::unique_ptr<data::BatchFeed> feed;
    std::mutex mu;  // one call at a time uses the buffers
    bool has_targets = false;

    PyBatchFeed(py::array x_, py::array y_, int64_t batch_size, bool drop_last)
        : x(std::move(x_)), y(std::move(y_)) {
        data::Source src;
        const bool u8 = x.dtype().is(py::dtype::of<uint8_t>());
        CNN_CHECK_ARG((u8 || x.dtype().is(py::dtype::of<float>())) && c_contiguous(x) &&
                          x.ndim() >= 2,
                      "BatchFeed: x must be a C-contiguous uint8 or float32 array (N, ...)");
        src.x = x.data();
        src.x_u8 = u8;
        src.n = x.shape(0);
        src.sample = shape_from(x, 1);
        CNN_CHECK_ARG(y.ndim() >= 1 && y.shape(0) == src.n && c_contiguous(y),
                      "BatchFeed: y must be a C-contiguous array with one row per sample");
        if (y.dtype().is(py::dtype::of<int64_t>())) {
            CNN_CHECK_ARG(y.ndim() == 1, "BatchFeed: labels must be (N,)");
            src.labels = static_cast<const int64_t*>(y.data());
        } else {
            CNN_CHECK_ARG(y.dtype().is(py::dtype::of<float>()),
                          "BatchFeed: y must be int64 labels or float32 targets");
            src.targets = static_cast<const float*>(y.data());
            src.target_sample = shape_from(y, 1);
            has_targets = true;
        }
        feed = std::make_unique<data::BatchFeed>(src, batch_size, drop_last);
    }

    void check_loss(nn::Net& net) const {
        const bool mse = net.loss() == nn::LossKind::MSE;
        CNN_CHECK_ARG(mse == has_targets, "BatchFeed: the Net's loss takes ",
                      mse ? "float targets" : "int64 labels", ", the feed holds ",
                      has_targets ? "float targets" : "int64 labels");
    }
};

}  // namespace

void bind_data(py::module_& m) {
    py::class_<PyBatchFeed>(m, "BatchFeed",
                            "Batches of a whole data set gathered natively into reusable "
                            "float32 buffers (uint8 scaled to [0, 1] as cnnkit.data.as_input "
                            "does), in the order given by set_order.")
        .def(py::init<py::array, py::array, int64_t, bool>(), py::arg("x"), py::arg("y"),
             py::arg("batch_size"), py::arg("drop_last") = false)
        .def_property_readonly("num_batches",
                               [](PyBatchFeed& f) { return f.feed->num_batches(); })
        .def(
            "set_order",
            [](PyBatchFeed& f, py::object order) {
                std::vector<int64_t> v;
                if (!order.is_none()) {
                    auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::
                        ensure(order);
                    CNN_CHECK_ARG(a && a.ndim() == 1, "BatchFeed.set_order: expected (N,) ints");
                    v.assign(a.data(), a.data() + a.shape(0));
                }
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(f.mu);
                f.feed->set_order(std::move(v));
            },
            py::arg("order"))
        .def(
            "gather",
            [](PyBatchFeed& f, int64_t b) {
                // copies of the batch buffers (for tests and inspection)
                std::lock_guard<std::mutex> lock(f.mu);
                const int64_t n = f.feed->gather(b);
                const Tensor& xt = f.feed->x();
                std::vector<py::ssize_t> xs(xt.shape().begin(), xt.shape().end());
                py::array_t<float> xo(xs);
                std::memcpy(xo.mutable_data(), xt.data(), sizeof(float) * xt.numel());
                py::array yo;
                if (const Tensor* t = f.feed->targets()) {
                    std::vector<py::ssize_t> ts(t->shape().begin(), t->shape().end());
                    py::array_t<float> a(ts);
                    std::memcpy(a.mutable_data(), t->data(), sizeof(float) * t->numel());
                    yo = a;
                } else {
                    py::array_t<int64_t> a(n);
                    std::memcpy(a.mutable_data(), f.feed->labels(), sizeof(int64_t) * n);
                    yo = a;
                }
                return py::make_tuple(xo, yo);
            },
            py::arg("b"))
        .def(
            "train",
            [](PyBatchFeed& f, nn::Net& net, int64_t first, int64_t count, double max_seconds,
               int64_t seen, int64_t correct, double loss_sum) {
                f.check_loss(net);
                data::Sums sums{seen, correct, loss_sum};
                data::RunResult r;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> lock(f.mu);
                    r = data::train_batches(net, *f.feed, first, count, max_seconds, sums);
                }
                return py::make_tuple(r.done, sums.seen, sums.correct, sums.loss_sum,
                                      r.last_loss, r.last_correct, r.last_n, r.diverged);
            },
            py::arg("net"), py::arg("first"), py::arg("count"),
            py::arg("max_seconds") = std::numeric_limits<double>::infinity(),
            py::arg("seen") = 0, py::arg("correct") = 0, py::arg("loss_sum") = 0.0,
            "Train steps on batches first, first+1, ... (at most count; the run ends after the "
            "batch that passes max_seconds, or at a non-finite loss, whose update is not "
            "applied). seen/correct/loss_sum are continued (loss_sum += loss * n per batch). "
            "Returns (done, seen, correct, loss_sum, last_loss, last_correct, last_n, "
            "diverged).")
        // ---- transforms and prefetch (data/prefetch.h) ----
        .def(
            "set_transform",
            [](PyBatchFeed& f, const data::Pipeline& pipe, uint64_t seed, int prefetch) {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(f.mu);
                f.feed->set_transform(pipe, seed, prefetch);
            },
            py::arg("pipeline"), py::arg("seed"), py::arg("prefetch"),
            "Apply `pipeline` to every gathered sample (draws keyed by seed, the epoch of "
            "set_epoch and the sample's index) and prepare `prefetch` batches ahead on a "
            "background thread (0: none).")
        .def(
            "set_epoch",
            [](PyBatchFeed& f, int64_t epoch) {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(f.mu);
                if (f.feed->producer()) f.feed->producer()->set_epoch(epoch);
            },
            py::arg("epoch"), "The epoch keying the transform's draws (drops prepared batches).")
        .def(
            "close",
            [](PyBatchFeed& f) {
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(f.mu);
                if (f.feed->producer()) f.feed->producer()->stop();
            },
            "Stop the prefetch thread (it starts again with the next batch asked for).")
        .def(
            "evaluate",
            [](PyBatchFeed& f, nn::Net& net) {
                f.check_loss(net);
                data::Sums sums;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> lock(f.mu);
                    sums = data::eval_batches(net, *f.feed);
                }
                return py::make_tuple(sums.seen, sums.correct, sums.loss_sum);
            },
            py::arg("net"),
            "Net.eval_step over every batch in order; returns (seen, correct, loss_sum).");
}
