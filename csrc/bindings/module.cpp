// pybind11 bindings: the ONLY file that includes pybind11. Converts numpy <-> Tensor, maps
// cnnkit errors to Python exceptions, and releases the GIL around compute.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
#include <cstring>

#include "bindings/convert.h"
#include "core/runtime.h"
#include "core/tensor.h"
#include "cpu/kernel_set.h"
#include "cpu/kernels.h"
#include "nn/layer.h"
#include "nn/net.h"
#include "nn/schema.h"
#include "ops/ops.h"
#ifdef CNNKIT_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace py = pybind11;
using namespace cnnkit;
using namespace cnnkit::bindings;

void bind_data(py::module_& m);  // bindings/data.cpp
void bind_testing(py::module_& m);  // bindings/testing.cpp: the cnnkit._core._testing submodule
void bind_distributed(py::module_& m);  // bindings/distributed.cpp
void bind_transforms(py::module_& m);  // bindings/transforms.cpp
void bind_py_layer(py::module_& m);  // bindings/py_layer.cpp: layers written in Python

#ifndef CNNKIT_VERSION
#define CNNKIT_VERSION "0.0.0"
#endif

namespace {

// The array's memory for the length of one call, without a copy (inputs of forward, backward
// and the steps, which the Net copies into its own arena anyway).
Tensor borrow_tensor(const FArray& a) {
    return Tensor::borrow(const_cast<float*>(a.data()), shape_of(a));
}

// Hands a CPU tensor to numpy without copying: the array keeps the storage alive.
py::array_t<float> adopt_numpy(Tensor t) {
    CNN_CHECK(t.device() == Device::CPU, "adopt_numpy: CPU tensors only");
    std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
    auto* owner = new Tensor(std::move(t));
    py::capsule free_when_done(owner, [](void* p) { delete static_cast<Tensor*>(p); });
    return py::array_t<float>(shape, owner->data(), free_when_done);
}

py::array_t<float> to_numpy(const Tensor& t) {
    std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
    py::array_t<float> out(shape);
    if (t.numel() == 0) return out;
    if (t.device() == Device::CPU) {
        std::memcpy(out.mutable_data(), t.data(), sizeof(float) * t.numel());
    } else {
        Tensor host = t.to(Device::CPU);
        std::memcpy(out.mutable_data(), host.data(), sizeof(float) * t.numel());
    }
    return out;
}

nn::LossKind parse_loss(const std::string& s) {
    if (s == "cross_entropy") return nn::LossKind::CrossEntropy;
    if (s == "mse") return nn::LossKind::MSE;
    if (s == "none") return nn::LossKind::None;
    throw ValueError(str_cat("unknown loss '", s, "' (expected 'cross_entropy' or 'mse')"));
}

// Host copies of named tensors taken under the Net's lock (then converted with the GIL held).
std::vector<std::pair<std::string, Tensor>> snapshot(
    nn::Net& n, std::vector<std::pair<std::string, Tensor>> (nn::Net::*get)()) {
    NetLock lock(n);
    auto v = (n.*get)();
    for (auto& e : v) e.second = e.second.to(Device::CPU);
    return v;
}

py::dict named_to_dict(const std::vector<std::pair<std::string, Tensor>>& v) {
    py::dict d;
    for (auto& e : v) d[py::str(e.first)] = to_numpy(e.second);
    return d;
}

}  // namespace

// ---- layer arguments: Python values <-> nn::Arg, checked against the schema ----------------

namespace {

std::string short_repr(const py::handle& v) {
    std::string r = py::repr(v).cast<std::string>();
    return r.size() > 60 ? r.substr(0, 57) + "..." : r;
}

bool is_bool(const py::handle& v) {
    if (PyBool_Check(v.ptr())) return true;
    // numpy.bool_ without importing numpy here
    return std::string(Py_TYPE(v.ptr())->tp_name) == "numpy.bool";
}

bool is_intlike(const py::handle& v) {
    return !is_bool(v) && !PyFloat_Check(v.ptr()) && PyIndex_Check(v.ptr());
}

// An int of any Python size -> int64; `ok` false when it does not fit.
int64_t to_int64(const py::handle& v, bool& ok) {
    py::object idx = py::reinterpret_steal<py::object>(PyNumber_Index(v.ptr()));
    if (!idx) throw py::error_already_set();
    int overflow = 0;
    long long r = PyLong_AsLongLongAndOverflow(idx.ptr(), &overflow);
    ok = overflow == 0;
    return ok ? static_cast<int64_t>(r) : 0;
}

nn::Arg arg_from_py(const nn::LayerSchema& sc, const nn::ArgSpec& spec, const py::handle& v) {
    const std::string where = str_cat(sc.type, ": ", spec.name);
    auto range_fail = [&]() -> nn::Arg {
        throw ValueError(str_cat(where, " is out of range, got ", short_repr(v)));
    };
    if (v.is_none()) {
        if (spec.nullable) return nn::Arg::null(spec.kind);
        throw ValueError(str_cat(where, " must not be None"));
    }
    bool ok = true;
    switch (spec.kind) {
        case nn::ArgKind::Int: {
            if (!is_intlike(v)) throw ValueError(str_cat(where, " must be an int, got ", short_repr(v)));
            int64_t x = to_int64(v, ok);
            return ok ? nn::Arg::integer(x) : range_fail();
        }
        case nn::ArgKind::Pair: {
            if (py::isinstance<py::str>(v) && !spec.choices.empty()) {
                nn::Arg a = nn::Arg::pair(0, 0);
                a.s = v.cast<std::string>();
                return a;
            }
            if (is_intlike(v)) {
                int64_t x = to_int64(v, ok);
                return ok ? nn::Arg::pair(x, x) : range_fail();
            }
            if ((py::isinstance<py::tuple>(v) || py::isinstance<py::list>(v)) && py::len(v) == 2) {
                py::sequence seq = py::reinterpret_borrow<py::sequence>(v);
                if (is_intlike(seq[0]) && is_intlike(seq[1])) {
                    bool ok2 = true;
                    int64_t a = to_int64(seq[0], ok), b = to_int64(seq[1], ok2);
                    return ok && ok2 ? nn::Arg::pair(a, b) : range_fail();
                }
            }
            std::string strs;
            for (const auto& c : spec.choices) strs += (strs.empty() ? " or '" : ", '") + c + "'";
            throw ValueError(str_cat(where, " must be an int or a pair of ints", strs, ", got ",
                                     short_repr(v)));
        }
        case nn::ArgKind::Float: {
            const bool number = !is_bool(v) && !py::isinstance<py::str>(v) &&
                                !py::isinstance<py::bytes>(v) && !PyComplex_Check(v.ptr()) &&
                                (PyFloat_Check(v.ptr()) || PyIndex_Check(v.ptr()) ||
                                 (Py_TYPE(v.ptr())->tp_as_number &&
                                  Py_TYPE(v.ptr())->tp_as_number->nb_float));
            double x = 0;
            if (number) {
                PyObject* f = PyNumber_Float(v.ptr());
                if (!f) {
                    PyErr_Clear();
                } else {
                    x = PyFloat_AsDouble(f);
                    Py_DECREF(f);
                }
            }
            if (!number || !std::isfinite(x))
                throw ValueError(str_cat(where, " must be a number, got ", short_repr(v)));
            return nn::Arg::number(x);
        }
        case nn::ArgKind::Bool:
            if (!is_bool(v)) throw ValueError(str_cat(where, " must be True or False, got ", short_repr(v)));
            return nn::Arg::boolean(PyObject_IsTrue(v.ptr()) == 1);
        case nn::ArgKind::Choice:
            if (!py::isinstance<py::str>(v))
                throw ValueError(str_cat(where, " must be a string, got ", short_repr(v)));
            return nn::Arg::choice(v.cast<std::string>());
    }
    throw ValueError(where);
}

nn::Args args_from_py(const nn::LayerSchema& sc, const py::dict& given) {
    nn::Args out;
    for (auto item : given) {
        if (!py::isinstance<py::str>(item.first))
            throw ValueError(str_cat(sc.type, ": argument names must be strings, got ",
                                     short_repr(item.first)));
        const std::string name = item.first.cast<std::string>();
        const nn::ArgSpec* spec = nullptr;
        for (const nn::ArgSpec& a : sc.args)
            if (a.name == name) spec = &a;
        if (!spec) {
            out[name] = nn::Arg();  // complete_args names it as unknown
            continue;
        }
        out[name] = arg_from_py(sc, *spec, item.second);
    }
    return out;
}

py::object arg_to_py(const nn::Arg& a) {
    if (a.none) return py::none();
    switch (a.kind) {
        case nn::ArgKind::Int: return py::int_(a.i[0]);
        case nn::ArgKind::Pair:
            if (!a.s.empty()) return py::str(a.s);
            return py::make_tuple(a.i[0], a.i[1]);
        case nn::ArgKind::Float: return py::float_(a.f);
        case nn::ArgKind::Bool: return py::bool_(a.i[0] != 0);
        case nn::ArgKind::Choice: return py::str(a.s);
    }
    return py::none();
}

// In the schema's argument order (the order get_config() and the files list them).
py::dict args_to_py(const nn::LayerSchema& sc, const nn::Args& args) {
    py::dict d;
    for (const nn::ArgSpec& spec : sc.args) {
        auto it = args.find(spec.name);
        if (it != args.end()) d[py::str(spec.name)] = arg_to_py(it->second);
    }
    return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "cnnkit native core (C++/OpenMP CPU kernels, optional CUDA)";
    m.attr("__version__") = CNNKIT_VERSION;

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const ValueError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const RuntimeError& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        } catch (const OutOfMemory& e) {
            PyErr_SetString(PyExc_MemoryError, e.what());
        }
    });

    // ---- runtime --------------------------------------------------------------------------
    m.def("set_num_threads", &set_num_threads, py::arg("n"));
    m.def(
        "count_nonfinite",
        [](const py::array_t<float, py::array::c_style>& a) {
            const float* p = a.data();
            const int64_t n = static_cast<int64_t>(a.size());
            py::gil_scoped_release nogil;
            return cpu::count_nonfinite(p, n);
        },
        py::arg("a"),
        "The number of NaN and +-Inf entries of a C-contiguous float32 array, in one pass "
        "(the input check of forward, predict and fit).");
    m.def("get_num_threads", &get_num_threads);
    m.def("cpu_features", &cpu_features);
    m.def("cpu_has_avx2_fma", &cpu_has_avx2_fma);
    m.def("cpu_has_avx512", &cpu_has_avx512);
    // The CPU kernel set (cpu/kernel_set.h): GEMM, convolution, pooling and element-wise.
    m.def("set_cpu_kernels", &cpu::set_kernel_set, py::arg("name"));
    m.def("get_cpu_kernels", [] { return std::string(cpu::kernel_set_name(cpu::kernel_set())); });
    m.def("requested_cpu_kernels", &cpu::requested_kernel_set);
    m.def("available_cpu_kernels", &cpu::available_kernel_sets);
    m.def("built_with_cuda", &built_with_cuda);
    m.def("cuda_available", &cuda::available);
    m.def("cuda_device_count", &cuda::device_count);
    m.def("cuda_device_name", &cuda::device_name, py::arg("index") = 0);
    m.def("cuda_set_device", &cuda::set_device, py::arg("index"),
          "Use CUDA device `index` in this process (before its first CUDA tensor or model).");
    m.def("cuda_current_device", &cuda::current_device);
    m.def("cuda_synchronize", [] {
        require_cuda("cuda_synchronize");
        py::gil_scoped_release nogil;
        cuda::synchronize();
    });
    m.def("cuda_memory_stats", [] {
        cuda::MemoryStats st = cuda::memory_stats();
        py::dict d;
        d["in_use_bytes"] = st.in_use_bytes;
        d["cached_bytes"] = st.cached_bytes;
        d["peak_in_use_bytes"] = st.peak_in_use_bytes;
        d["device_mallocs"] = st.device_mallocs;
        d["cache_hits"] = st.cache_hits;
        return d;
    });
    m.def("cuda_empty_cache", [] {
        py::gil_scoped_release nogil;
        cuda::empty_cache();
    });

    // ---- GEMM kernel name (the raw GEMM and the other test hooks: bindings/testing.cpp) -----
    m.def("sgemm_kernel_name", &cpu::sgemm_kernel_name);

    // ---- the probabilities of Model.predict ------------------------------------------------
    m.def(
        "softmax_rows",
        [](FArray logits) {
            CNN_CHECK_ARG(logits.ndim() == 2, "softmax_rows: expected logits of shape (N, C), got ",
                          shape_str(shape_of(logits)));
            const int64_t N = logits.shape(0), C = logits.shape(1);
            py::array_t<float> out({N, C});
            const float* z = logits.data();
            float* y = out.mutable_data();
            py::gil_scoped_release nogil;
            // Each row in double after subtracting its max (NaN when the row holds a NaN or
            // +inf, as numpy's float64 softmax gives), rounded to float32 once at the end.
            std::vector<double> e(static_cast<size_t>(C));
            for (int64_t n = 0; n < N; ++n) {
                const float* zr = z + n * C;
                double mx = -std::numeric_limits<double>::infinity();
                bool nan = false;
                for (int64_t c = 0; c < C; ++c) {
                    nan |= std::isnan(zr[c]);
                    mx = std::max(mx, static_cast<double>(zr[c]));
                }
                if (nan) mx = std::numeric_limits<double>::quiet_NaN();
                double s = 0.0;
                for (int64_t c = 0; c < C; ++c) s += (e[c] = std::exp(zr[c] - mx));
                for (int64_t c = 0; c < C; ++c) y[n * C + c] = static_cast<float>(e[c] / s);
            }
            return out;
        },
        py::arg("logits"),
        "Row-wise softmax of (N, C) float32 logits, computed in double (Model.predict).");

    // ---- losses (standalone; the Net calls the same kernels) --------------------------------
    m.def(
        "softmax_cross_entropy",
        [](FArray logits, LArray labels, const std::string& device) {
            CNN_CHECK_ARG(logits.ndim() == 2 && logits.shape(0) > 0 && logits.shape(1) > 0,
                          "CrossEntropyLoss: expected logits of shape (N, C), got ",
                          shape_str(shape_of(logits)));
            const int64_t N = logits.shape(0), C = logits.shape(1);
            CNN_CHECK_ARG(labels.ndim() == 1 && labels.shape(0) == N,
                          "CrossEntropyLoss: expected labels of shape (", N, ",), got ",
                          shape_str(shape_of(labels)));
            const int64_t* lp = labels.data();
            for (int64_t n = 0; n < N; ++n)
                CNN_CHECK_ARG(lp[n] >= 0 && lp[n] < C, "CrossEntropyLoss: label ", lp[n],
                              " at index ", n, " is out of range [0, ", C, ")");
            py::array_t<float> d({N, C});
            int64_t correct = 0;
            double loss = 0.0;
            if (parse_device(device) == Device::CUDA) {
                require_cuda("softmax_cross_entropy");
                Tensor z = to_tensor(logits).to(Device::CUDA);
                Tensor dz({N, C}, Device::CUDA);
                loss = ops::softmax_cross_entropy(&dz, &correct, z, lp);
                cuda::memcpy(d.mutable_data(), dz.data(), sizeof(float) * N * C, 1);
            } else {
                loss = cpu::softmax_cross_entropy(d.mutable_data(), &correct, logits.data(), lp, N,
                                                  C);
            }
            return py::make_tuple(loss, correct, d);
        },
        py::arg("logits"), py::arg("labels"), py::arg("device") = "cpu");
    m.def(
        "mse_loss",
        [](FArray pred, FArray target, const std::string& device) {
            CNN_CHECK_ARG(shape_of(pred) == shape_of(target) && pred.size() > 0,
                          "MSELoss: expected target of shape ", shape_str(shape_of(pred)),
                          ", got ", shape_str(shape_of(target)));
            std::vector<py::ssize_t> shape(pred.shape(), pred.shape() + pred.ndim());
            py::array_t<float> d(shape);
            double loss = 0.0;
            if (parse_device(device) == Device::CUDA) {
                require_cuda("mse_loss");
                Tensor pt = to_tensor(pred).to(Device::CUDA), tt = to_tensor(target).to(Device::CUDA);
                Tensor dp(pt.shape(), Device::CUDA);
                loss = ops::mse_loss(&dp, pt, tt);
                cuda::memcpy(d.mutable_data(), dp.data(), sizeof(float) * dp.numel(), 1);
            } else {
                loss = cpu::mse_loss(d.mutable_data(), pred.data(), target.data(), pred.size());
            }
            return py::make_tuple(loss, d);
        },
        py::arg("pred"), py::arg("target"), py::arg("device") = "cpu");

    // ---- layers ---------------------------------------------------------------------------
    py::class_<nn::Layer, nn::LayerPtr>(m, "Layer")
        .def_property_readonly("type", &nn::Layer::type)
        .def("config", &nn::Layer::config)
        .def("args", [](nn::Layer& l) { return args_to_py(l.schema(), l.args()); })
        .def("output_shape", &nn::Layer::output_shape)
        .def("output_shape_n", &nn::Layer::output_shape_n)
        .def_property_readonly("arity", &nn::Layer::arity)
        .def("reset_parameters", &nn::Layer::reset_parameters, py::arg("seed"))
        .def("param_names",
             [](nn::Layer& l) {
                 std::vector<std::string> n;
                 for (auto& s : l.param_specs()) n.push_back(s.name);
                 return n;
             })
        .def("buffer_names", [](nn::Layer& l) {
            std::vector<std::string> n;
            for (auto& s : l.buffer_specs()) n.push_back(s.name);
            return n;
        });

    // The layer schema, generically: every layer is built by make_layer(type, {arg: value}).
    m.def("layer_schemas", [] {
        py::list out;
        for (const nn::LayerSchema& sc : nn::layer_schemas()) {
            py::list args;
            for (const nn::ArgSpec& a : sc.args) {
                py::dict d;
                d["name"] = a.name;
                d["kind"] = nn::arg_kind_name(a.kind);
                d["required"] = a.required;
                d["nullable"] = a.nullable;
                d["default"] = a.required ? py::none()
                               : a.nullable ? py::none()
                                            : arg_to_py(a.def);
                d["range"] = py::make_tuple(a.lo, a.hi, a.lo_open, a.hi_open);
                d["choices"] = a.choices;
                args.append(d);
            }
            py::dict d;
            d["type"] = sc.type;
            d["args"] = args;
            out.append(d);
        }
        return out;
    });
    m.def(
        "make_layer",
        [](const std::string& type, const py::dict& given) {
            return nn::make_layer(type, args_from_py(nn::layer_schema(type), given));
        },
        py::arg("type"), py::arg("args"));
    // Complete arguments and parameter/buffer shapes for a configuration, sizes checked,
    // nothing allocated: what the file loader sizes and validates files with.
    m.def(
        "layer_state_specs",
        [](const std::string& type, const py::dict& given) {
            const nn::LayerSchema& sc = nn::layer_schema(type);
            nn::Args args = nn::complete_args(sc, args_from_py(sc, given));
            int64_t total = 0;
            std::vector<nn::ParamSpec> specs = nn::checked_state_specs(sc, args, &total);
            py::list shapes;
            for (const nn::ParamSpec& p : specs) shapes.append(py::make_tuple(p.name, p.shape));
            return py::make_tuple(args_to_py(sc, args), shapes, total);
        },
        py::arg("type"), py::arg("args"));

    // ---- Net ------------------------------------------------------------------------------
    py::class_<nn::Net, std::shared_ptr<nn::Net>>(m, "Net")
        .def(py::init<std::vector<nn::LayerPtr>>(), py::arg("layers"))
        .def(py::init<std::vector<nn::LayerPtr>, std::vector<std::vector<int64_t>>,
                      std::vector<std::string>, int64_t>(),
             py::arg("layers"), py::arg("inputs"), py::arg("names"), py::arg("output"))
        .def_property_readonly("is_chain", &nn::Net::is_chain)
        .def("activation_bytes", &nn::Net::activation_bytes)
        .def("folded_pairs", &nn::Net::folded_pairs)
        .def("last_eval_chunks", &nn::Net::last_eval_chunks)
        .def_property_readonly("num_params", &nn::Net::num_params)
        .def_property_readonly("device",
                               [](nn::Net& n) { return std::string(device_name(n.device())); })
        .def("to", [](nn::Net& n, const std::string& d) {
            Device dev = parse_device(d);
            NetLock lock(n);
            n.to(dev);
        })
        .def("shapes", &nn::Net::shapes, py::arg("input_shape"))
        .def("input_shape", &nn::Net::input_shape)
        .def("state_dict",
             [](nn::Net& n) {
                 py::dict d = named_to_dict(snapshot(n, &nn::Net::named_params));
                 for (auto item : named_to_dict(snapshot(n, &nn::Net::named_buffers)))
                     d[item.first] = item.second;
                 return d;
             })
        .def("param_names",
             [](nn::Net& n) {
                 std::vector<std::string> v;
                 for (auto& e : n.named_params()) v.push_back(e.first);
                 return v;
             })
        .def("buffer_names",
             [](nn::Net& n) {
                 std::vector<std::string> v;
                 for (auto& e : n.named_buffers()) v.push_back(e.first);
                 return v;
             })
        .def("grad_dict",
             [](nn::Net& n) { return named_to_dict(snapshot(n, &nn::Net::named_grads)); })
        .def("set_tensor",
             [](nn::Net& n, const std::string& name, FArray value) {
                 Tensor v = to_tensor(value);
                 NetLock lock(n);
                 auto all = n.named_params();
                 for (auto& b : n.named_buffers()) all.push_back(b);
                 for (auto& e : all) {
                     if (e.first != name) continue;
                     CNN_CHECK_ARG(v.shape() == e.second.shape(), "load_state_dict: '", name,
                                   "' expects shape ", shape_str(e.second.shape()), ", got ",
                                   shape_str(v.shape()));
                     e.second.copy_from(v);
                     return;
                 }
                 throw ValueError(str_cat("load_state_dict: unexpected key '", name, "'"));
             })
        .def("flat_params",
             [](nn::Net& n) {
                 Tensor host;
                 {
                     NetLock lock(n);
                     host = n.flat_params().to(Device::CPU);
                 }
                 return to_numpy(host);
             })
        .def("set_flat_params",
             [](nn::Net& n, FArray v) {
                 Tensor t = to_tensor(v);
                 NetLock lock(n);
                 CNN_CHECK_ARG(t.dim() == 1 && t.numel() == n.flat_params().numel(),
                               "set_flat_params: wrong size");
                 n.flat_params().copy_from(t);
             })
        .def("zero_grad", [](nn::Net& n) {
            NetLock lock(n);
            n.zero_grad();
        })
        .def(
            "forward",
            [](nn::Net& n, FArray x, bool training, bool inference) {
                Tensor xt = borrow_tensor(x), y;
                {
                    NetLock lock(n);
                    // no copy for most last layers; inference: no backward follows
                    y = n.forward_to_host(xt, training, inference);
                }
                return adopt_numpy(std::move(y));
            },
            py::arg("x"), py::arg("training") = false, py::arg("inference") = false)
        .def(
            "backward",
            [](nn::Net& n, FArray dy, bool need_dx) -> py::object {
                Tensor d = borrow_tensor(dy), dx;
                {
                    NetLock lock(n);
                    dx = n.backward(d, need_dx);
                    if (need_dx) dx = dx.to(Device::CPU);
                }
                if (!need_dx) return py::none();
                return adopt_numpy(std::move(dx));
            },
            py::arg("dy"), py::arg("need_dx") = true)
        .def("set_loss", [](nn::Net& n, const std::string& s) { n.set_loss(parse_loss(s)); })
        .def(
            "set_optimizer",
            [](nn::Net& n, const std::string& kind, py::dict h) {
                nn::OptimizerConfig c;
                c.kind = kind;
                auto get = [&](const char* k, float& dst) {
                    if (h.contains(k)) dst = h[k].cast<float>();
                };
                get("lr", c.lr);
                get("momentum", c.momentum);
                get("dampening", c.dampening);
                get("weight_decay", c.weight_decay);
                get("beta1", c.beta1);
                get("beta2", c.beta2);
                get("eps", c.eps);
                get("lr_decay", c.lr_decay);
                get("alpha", c.alpha);
                if (h.contains("nesterov")) c.nesterov = h["nesterov"].cast<bool>();
                for (auto item : h) {
                    std::string k = item.first.cast<std::string>();
                    static const char* known[] = {"lr", "momentum", "dampening", "weight_decay",
                                                  "beta1", "beta2", "eps", "lr_decay", "alpha",
                                                  "nesterov"};
                    bool ok = false;
                    for (const char* kk : known) ok = ok || k == kk;
                    CNN_CHECK_ARG(ok, kind, ": unknown hyper-parameter '", k, "'");
                }
                auto opt = std::make_shared<nn::Optimizer>(c);
                NetLock lock(n);
                n.set_optimizer(opt);
            },
            py::arg("kind"), py::arg("hyper"))
        .def("optimizer_step",
             [](nn::Net& n) {
                 CNN_CHECK_ARG(n.optimizer(), "optimizer step: no optimizer set");
                 py::gil_scoped_release nogil;
                 std::lock_guard<std::mutex> lock(n.mutex());
                 n.optimizer()->step(n.flat_params(), n.flat_grads());
             })
        .def("optimizer_state_names",
             [](nn::Net& n) {
                 CNN_CHECK_ARG(n.optimizer(), "optimizer_state_names: no optimizer set");
                 return n.optimizer()->state_names();
             })
        .def("has_optimizer", [](nn::Net& n) { return n.optimizer() != nullptr; })
        .def("set_lr",
             [](nn::Net& n, float lr) {
                 CNN_CHECK_ARG(n.optimizer(), "set_lr: no optimizer set");
                 CNN_CHECK_ARG(lr >= 0.f, "set_lr: lr must be >= 0, got ", lr);
                 n.optimizer()->config().lr = lr;
             })
        .def("get_lr",
             [](nn::Net& n) {
                 CNN_CHECK_ARG(n.optimizer(), "get_lr: no optimizer set");
                 return n.optimizer()->config().lr;
             })
        .def("optimizer_state",
             [](nn::Net& n) {
                 CNN_CHECK_ARG(n.optimizer(), "optimizer_state: no optimizer set");
                 auto opt = n.optimizer();
                 int64_t step = 0;
                 std::vector<std::string> names;
                 std::vector<Tensor> st;
                 {
                     NetLock lock(n);
                     step = opt->step_count();
                     names = opt->state_names();
                     for (const Tensor& t : opt->state()) st.push_back(t.to(Device::CPU));
                 }
                 py::dict d;
                 d["step"] = step;
                 for (size_t i = 0; i < st.size() && i < names.size(); ++i)
                     d[py::str(names[i])] = to_numpy(st[i]);
                 return d;
             })
        .def("set_optimizer_state",
             [](nn::Net& n, int64_t step, std::vector<FArray> state) {
                 CNN_CHECK_ARG(n.optimizer(), "set_optimizer_state: no optimizer set");
                 std::vector<Tensor> host;
                 for (auto& a : state) host.push_back(to_tensor(a));
                 NetLock lock(n);
                 auto opt = n.optimizer();
                 std::vector<Tensor> ts;
                 for (auto& a : host) {
                     CNN_CHECK_ARG(a.dim() == 1 && a.numel() == n.flat_params().numel(),
                                   "optimizer state: expected buffers of ",
                                   n.flat_params().numel(), " floats, got ",
                                   shape_str(a.shape()));
                     ts.push_back(a.to(n.device()));
                 }
                 if (!ts.empty()) opt->set_state(ts);
                 opt->set_step_count(step);
             })
        .def(
            "train_step",
            [](nn::Net& n, FArray x, py::array y) {
                Tensor xt = borrow_tensor(x);
                CNN_CHECK_ARG(xt.dim() >= 1, "train_step: x must have a batch dimension");
                Targets t = make_targets(n, y, xt.size(0));
                const int64_t* lp = t.has_labels ? t.labels.data() : nullptr;
                nn::StepResult r;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> lock(n.mutex());
                    r = n.train_step(xt, lp, t.has_target ? &t.target : nullptr);
                }
                return py::make_tuple(r.loss, r.correct);
            },
            py::arg("x"), py::arg("y"))
        .def(
            "eval_step",
            [](nn::Net& n, FArray x, py::array y) {
                Tensor xt = borrow_tensor(x);
                CNN_CHECK_ARG(xt.dim() >= 1, "eval_step: x must have a batch dimension");
                Targets t = make_targets(n, y, xt.size(0));
                const int64_t* lp = t.has_labels ? t.labels.data() : nullptr;
                nn::StepResult r;
                {
                    py::gil_scoped_release nogil;
                    std::lock_guard<std::mutex> lock(n.mutex());
                    r = n.eval_step(xt, lp, t.has_target ? &t.target : nullptr);
                }
                return py::make_tuple(r.loss, r.correct);
            },
            py::arg("x"), py::arg("y"))
        .def("rng_state", [](nn::Net& n) { return py::make_tuple(n.rng_seed(), n.rng_counter()); })
        .def("set_rng", &nn::Net::set_rng, py::arg("seed"), py::arg("counter"));

    // ---- native batch feed (bindings/data.cpp) ----
    bind_data(m);

    // ---- test and benchmark hooks: cnnkit._core._testing (bindings/testing.cpp) ----
    bind_testing(m);
    bind_distributed(m);
    bind_transforms(m);
    bind_py_layer(m);
}
