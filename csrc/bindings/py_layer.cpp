// Layers written in Python (cnnkit.Layer subclasses defining forward and backward): PyLayer is
// the native layer that runs one as a node of a Net. The step runs without the GIL; PyLayer
// takes it for its own calls only, and its parameters live in the Net's flat buffers like
// any other layer's. The checks of what Python returns live in cnnkit/_py_layer.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "bindings/convert.h"
#include "nn/layer.h"
#include "nn/schema.h"

namespace py = pybind11;
using namespace cnnkit;
using namespace cnnkit::bindings;

namespace {

// A numpy array over a CPU tensor's memory (no copy) that keeps the storage alive, so a view
// the Python code keeps never dangles (its values may be overwritten by the next step).
py::array tensor_view(const Tensor& t, bool writeable) {
    CNN_CHECK(t.device() == Device::CPU, "tensor_view: CPU tensors only");
    std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
    auto* owner = new Tensor(t);
    py::capsule keep(owner, [](void* p) { delete static_cast<Tensor*>(p); });
    py::array_t<float> a(shape, owner->data(), keep);
    if (!writeable) a.attr("setflags")(py::arg("write") = false);
    return a;
}

// ---- PyLayer ---------------------------------------------------------------------------------

// A node computed by Python: forward/backward/output_shape call the Python layer's _ck_*
// methods (cnnkit/_py_layer.py) with numpy views of the tensors. On a CUDA model the tensors
// are staged through host copies. The layer is held by a weak reference: the Python object
// owns this native layer (its `_native`), and a strong reference would be a cycle the garbage
// collector cannot see.
class PyLayer : public nn::Layer {
  public:
    PyLayer(const py::object& layer, const std::string& type,
            const std::vector<std::pair<std::string, FArray>>& params, bool own_shape)
        : own_schema_(type), own_shape_(own_shape) {
        ref_ = std::shared_ptr<py::object>(new py::object(py::weakref(layer)), [](py::object* o) {
            py::gil_scoped_acquire gil;
            delete o;
        });
        std::vector<nn::ParamSpec> specs;
        for (const auto& p : params) {
            Shape s = shape_of(p.second);
            CNN_CHECK_ARG(!s.empty(), type, ": parameter '", p.first, "' needs at least one axis");
            checked_bytes(checked_numel(s, str_cat(type, ": ", p.first)), sizeof(float),
                          str_cat(type, ": parameter '", p.first, "'"));
            specs.push_back({p.first, s, nn::Init::Zeros, 0});
        }
        own_schema_.params = [specs](const nn::Args&) { return specs; };
        set_schema(&own_schema_, {});
        for (size_t i = 0; i < params.size(); ++i) params_[i].copy_from(to_tensor(params[i].second));
    }

    // Python code may mix the images of a batch: eval forwards are never split around it.
    bool eval_per_sample() const override { return false; }

    // The parameter as numpy: a view on a CPU model, a read-only copy on a CUDA one.
    py::array param(size_t i) {
        CNN_CHECK_ARG(i < params_.size(), label(), ": no parameter ", i);
        if (params_[i].device() == Device::CPU) return tensor_view(params_[i], true);
        return tensor_view(params_[i].to(Device::CPU), false);
    }

  protected:
    Shape output_shape_impl(const Shape& in) const override {
        if (in.empty()) shape_error("(N, ...)", in);
        if (!own_shape_) return in;
        {
            std::lock_guard<std::mutex> lock(cache_mu_);  // never held while taking the GIL
            if (have_cache_ && cache_in_ == in) return cache_out_;
        }
        Shape out;
        {
            py::gil_scoped_acquire gil;
            out = target().attr("_ck_output_shape")(label(), in).cast<Shape>();
        }
        std::lock_guard<std::mutex> lock(cache_mu_);
        cache_in_ = in;
        cache_out_ = out;
        have_cache_ = true;
        return out;
    }

    void forward_impl(const Tensor& x, Tensor& y, bool training, const nn::Workspace&) override {
        const bool host = x.device() == Device::CPU;
        Tensor hx = host ? x : x.to(Device::CPU);
        Tensor hy = host ? y : Tensor(y.shape());
        {
            py::gil_scoped_acquire gil;
            target().attr("_ck_forward")(label(), tensor_view(hx, false), training,
                                         tensor_view(hy, true));
        }
        if (!host) y.copy_from(hy);
    }

    void backward_impl(const Tensor& x, const Tensor&, const Tensor& dy, Tensor* dx,
                       const nn::Workspace&) override {
        if (!dx && grads_.empty()) return;  // nothing to compute
        const bool host = dy.device() == Device::CPU;
        Tensor hdy = host ? dy : dy.to(Device::CPU);
        Tensor hdx;
        if (dx) hdx = host ? *dx : Tensor(dx->shape());
        std::vector<Tensor> hg;  // gradients accumulate into these (host copies on CUDA)
        for (Tensor& g : grads_) hg.push_back(host ? g : g.to(Device::CPU));
        {
            py::gil_scoped_acquire gil;
            py::list gl;
            for (const Tensor& g : hg) gl.append(tensor_view(g, true));
            target().attr("_ck_backward")(label(), x.shape(), tensor_view(hdy, false),
                                          dx ? py::object(tensor_view(hdx, true)) : py::none(),
                                          gl);
        }
        if (!host) {
            if (dx) dx->copy_from(hdx);
            for (size_t i = 0; i < grads_.size(); ++i) grads_[i].copy_from(hg[i]);
        }
    }

  private:
    // The Python layer (GIL held); RuntimeError once it no longer exists.
    py::object target() const {
        py::object o = (*ref_)();
        if (o.is_none())
            throw RuntimeError(str_cat(label(), ": the Python layer object no longer exists ",
                                       "(keep the layer, or the model holding it, alive)"));
        return o;
    }

    nn::LayerSchema own_schema_;  // type name and parameter shapes; no arguments, no factory
    std::shared_ptr<py::object> ref_;
    bool own_shape_;
    mutable std::mutex cache_mu_;  // the last output_shape answer
    mutable bool have_cache_ = false;
    mutable Shape cache_in_, cache_out_;
};

}  // namespace

void bind_py_layer(py::module_& m) {
    py::class_<PyLayer, nn::Layer, std::shared_ptr<PyLayer>>(m, "PyLayer")
        .def(py::init<const py::object&, const std::string&,
                      const std::vector<std::pair<std::string, FArray>>&, bool>(),
             py::arg("layer"), py::arg("type"), py::arg("params"), py::arg("own_output_shape"),
             "The native node of a layer written in Python: `layer` (held weakly) provides "
             "_ck_forward, _ck_backward and, with own_output_shape, _ck_output_shape; params "
             "[(name, initial array)] in state_dict order.")
        .def("param", &PyLayer::param, py::arg("index"),
             "Parameter `index` as numpy: a view on a CPU model, a read-only copy on CUDA.")
        .def_property_readonly("label", &PyLayer::label);
}
