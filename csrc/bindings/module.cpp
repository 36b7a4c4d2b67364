// pybind11 bindings: the ONLY file that includes pybind11. Converts numpy <-> Tensor, maps
// cnnkit errors to Python exceptions, and releases the GIL around compute.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "core/runtime.h"
#include "core/tensor.h"
#include "cpu/kernels.h"
#include "nn/layer.h"
#include "nn/net.h"

namespace py = pybind11;
using namespace cnnkit;

#ifndef CNNKIT_VERSION
#define CNNKIT_VERSION "0.0.0"
#endif

namespace {

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

Shape shape_of(const py::array& a) {
    Shape s;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s.push_back(a.shape(i));
    return s;
}

Tensor to_tensor(const FArray& a) {
    Tensor t(shape_of(a));
    if (t.numel()) std::memcpy(t.data(), a.data(), sizeof(float) * t.numel());
    return t;
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

Device parse_device(const std::string& d) {
    if (d == "cpu") return Device::CPU;
    if (d == "cuda" || d == "cuda:0") return Device::CUDA;
    throw ValueError(str_cat("unknown device '", d, "' (expected 'cpu' or 'cuda')"));
}

nn::LossKind parse_loss(const std::string& s) {
    if (s == "cross_entropy") return nn::LossKind::CrossEntropy;
    if (s == "mse") return nn::LossKind::MSE;
    if (s == "none") return nn::LossKind::None;
    throw ValueError(str_cat("unknown loss '", s, "' (expected 'cross_entropy' or 'mse')"));
}

// Labels (int64) for cross-entropy or float targets for MSE, checked against the batch size.
struct Targets {
    LArray labels;
    Tensor target;
    bool has_labels = false, has_target = false;
};

Targets make_targets(nn::Net& net, const py::array& y, int64_t N) {
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

py::dict named_to_dict(const std::vector<std::pair<std::string, Tensor>>& v) {
    py::dict d;
    for (auto& e : v) d[py::str(e.first)] = to_numpy(e.second);
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
        }
    });

    // ---- runtime --------------------------------------------------------------------------
    m.def("set_num_threads", &set_num_threads, py::arg("n"));
    m.def("get_num_threads", &get_num_threads);
    m.def("cpu_features", &cpu_features);
    m.def("cpu_has_avx2_fma", &cpu_has_avx2_fma);
    m.def("built_with_cuda", &built_with_cuda);
    m.def("cuda_available", &cuda::available);
    m.def("cuda_device_count", &cuda::device_count);
    m.def("cuda_device_name", &cuda::device_name, py::arg("index") = 0);

    // ---- GEMM (for tests and benchmarks) ---------------------------------------------------
    m.def(
        "sgemm",
        [](FArray a, FArray b, bool trans_a, bool trans_b, float alpha, float beta,
           py::object c_obj) {
            CNN_CHECK_ARG(a.ndim() == 2 && b.ndim() == 2, "sgemm: a and b must be 2-D, got ",
                          shape_str(shape_of(a)), " and ", shape_str(shape_of(b)));
            const int64_t M = trans_a ? a.shape(1) : a.shape(0);
            const int64_t K = trans_a ? a.shape(0) : a.shape(1);
            const int64_t Kb = trans_b ? b.shape(1) : b.shape(0);
            const int64_t N = trans_b ? b.shape(0) : b.shape(1);
            CNN_CHECK_ARG(K == Kb, "sgemm: inner dimensions differ: op(a) is (", M, ", ", K,
                          "), op(b) is (", Kb, ", ", N, ")");
            py::array_t<float> c;
            if (c_obj.is_none()) {
                c = py::array_t<float>({M, N});
                beta = 0.f;
            } else {
                c = py::cast<py::array_t<float>>(c_obj);
                CNN_CHECK_ARG(c.ndim() == 2 && c.shape(0) == M && c.shape(1) == N &&
                                  (c.flags() & py::array::c_style),
                              "sgemm: c must be a C-contiguous float32 array of shape (", M, ", ",
                              N, ")");
            }
            float* cp = c.mutable_data();
            const float* ap = a.data();
            const float* bp = b.data();
            const int64_t lda = a.shape(1), ldb = b.shape(1);
            {
                py::gil_scoped_release nogil;
                cpu::sgemm(trans_a, trans_b, M, N, K, alpha, ap, lda, bp, ldb, beta, cp, N);
            }
            return c;
        },
        py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("alpha") = 1.f, py::arg("beta") = 0.f, py::arg("c") = py::none());
    m.def("sgemm_kernel_name", &cpu::sgemm_kernel_name);
    m.def("sgemm_force_generic", &cpu::sgemm_force_generic, py::arg("force"));

    // ---- im2col / col2im (for kernel tests) ------------------------------------------------
    m.def(
        "im2col",
        [](FArray x, std::vector<int64_t> k, std::vector<int64_t> s, std::vector<int64_t> p,
           std::vector<int64_t> d) {
            CNN_CHECK_ARG(x.ndim() == 3, "im2col: expected x of shape (C, H, W), got ",
                          shape_str(shape_of(x)));
            const int64_t C = x.shape(0), H = x.shape(1), W = x.shape(2);
            const int64_t P = conv_out_size(H, k[0], s[0], p[0], d[0]);
            const int64_t Q = conv_out_size(W, k[1], s[1], p[1], d[1]);
            CNN_CHECK_ARG(P > 0 && Q > 0, "im2col: window larger than the padded input");
            py::array_t<float> col({C * k[0] * k[1], P * Q});
            cpu::im2col(col.mutable_data(), P * Q, x.data(), C, H, W, k[0], k[1], P, Q, s[0], s[1],
                        p[0], p[1], d[0], d[1]);
            return col;
        },
        py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"));
    m.def(
        "col2im",
        [](FArray col, std::vector<int64_t> shape, std::vector<int64_t> k, std::vector<int64_t> s,
           std::vector<int64_t> p, std::vector<int64_t> d) {
            const int64_t C = shape[0], H = shape[1], W = shape[2];
            const int64_t P = conv_out_size(H, k[0], s[0], p[0], d[0]);
            const int64_t Q = conv_out_size(W, k[1], s[1], p[1], d[1]);
            CNN_CHECK_ARG(col.ndim() == 2 && col.shape(0) == C * k[0] * k[1] &&
                              col.shape(1) == P * Q,
                          "col2im: expected col of shape (", C * k[0] * k[1], ", ", P * Q,
                          "), got ", shape_str(shape_of(col)));
            py::array_t<float> x({C, H, W});
            cpu::col2im(x.mutable_data(), col.data(), P * Q, C, H, W, k[0], k[1], P, Q, s[0], s[1],
                        p[0], p[1], d[0], d[1]);
            return x;
        },
        py::arg("col"), py::arg("shape"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"));

    // ---- losses (standalone; the Net calls the same kernels) --------------------------------
    m.def(
        "softmax_cross_entropy",
        [](FArray logits, LArray labels) {
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
            double loss = cpu::softmax_cross_entropy(d.mutable_data(), &correct, logits.data(), lp,
                                                     N, C);
            return py::make_tuple(loss, correct, d);
        },
        py::arg("logits"), py::arg("labels"));
    m.def(
        "mse_loss",
        [](FArray pred, FArray target) {
            CNN_CHECK_ARG(shape_of(pred) == shape_of(target) && pred.size() > 0,
                          "MSELoss: expected target of shape ", shape_str(shape_of(pred)),
                          ", got ", shape_str(shape_of(target)));
            std::vector<py::ssize_t> shape(pred.shape(), pred.shape() + pred.ndim());
            py::array_t<float> d(shape);
            double loss = cpu::mse_loss(d.mutable_data(), pred.data(), target.data(), pred.size());
            return py::make_tuple(loss, d);
        },
        py::arg("pred"), py::arg("target"));

    // ---- layers ---------------------------------------------------------------------------
    py::class_<nn::Layer, nn::LayerPtr>(m, "Layer")
        .def_property_readonly("type", &nn::Layer::type)
        .def("config", &nn::Layer::config)
        .def("output_shape", &nn::Layer::output_shape)
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

    m.def("conv2d", &nn::make_conv2d, py::arg("in_channels"), py::arg("out_channels"),
          py::arg("kh"), py::arg("kw"), py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"),
          py::arg("dh"), py::arg("dw"), py::arg("groups"), py::arg("bias"));
    m.def("maxpool2d", &nn::make_maxpool2d, py::arg("kh"), py::arg("kw"), py::arg("sh"),
          py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("ceil_mode"));
    m.def("avgpool2d", &nn::make_avgpool2d, py::arg("kh"), py::arg("kw"), py::arg("sh"),
          py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("ceil_mode"),
          py::arg("count_include_pad"));
    m.def("activation", &nn::make_activation, py::arg("kind"), py::arg("negative_slope") = 0.f);
    m.def("linear", &nn::make_linear, py::arg("in_features"), py::arg("out_features"),
          py::arg("bias"));
    m.def("flatten", &nn::make_flatten);
    m.def("dropout", &nn::make_dropout, py::arg("p"));
    m.def("batchnorm2d", &nn::make_batchnorm2d, py::arg("num_features"), py::arg("eps"),
          py::arg("momentum"), py::arg("affine"), py::arg("track_running_stats"));

    // ---- Net ------------------------------------------------------------------------------
    py::class_<nn::Net, std::shared_ptr<nn::Net>>(m, "Net")
        .def(py::init<std::vector<nn::LayerPtr>>(), py::arg("layers"))
        .def_property_readonly("num_params", &nn::Net::num_params)
        .def_property_readonly("device",
                               [](nn::Net& n) { return std::string(device_name(n.device())); })
        .def("to", [](nn::Net& n, const std::string& d) {
            std::lock_guard<std::mutex> lock(n.mutex());
            n.to(parse_device(d));
        })
        .def("shapes", &nn::Net::shapes, py::arg("input_shape"))
        .def("state_dict",
             [](nn::Net& n) {
                 py::dict d = named_to_dict(n.named_params());
                 for (auto item : named_to_dict(n.named_buffers())) d[item.first] = item.second;
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
        .def("grad_dict", [](nn::Net& n) { return named_to_dict(n.named_grads()); })
        .def("set_tensor",
             [](nn::Net& n, const std::string& name, FArray value) {
                 std::lock_guard<std::mutex> lock(n.mutex());
                 auto all = n.named_params();
                 for (auto& b : n.named_buffers()) all.push_back(b);
                 for (auto& e : all) {
                     if (e.first != name) continue;
                     CNN_CHECK_ARG(shape_of(value) == e.second.shape(), "load_state_dict: '", name,
                                   "' expects shape ", shape_str(e.second.shape()), ", got ",
                                   shape_str(shape_of(value)));
                     e.second.copy_from(to_tensor(value));
                     return;
                 }
                 throw ValueError(str_cat("load_state_dict: unexpected key '", name, "'"));
             })
        .def("flat_params", [](nn::Net& n) { return to_numpy(n.flat_params()); })
        .def("set_flat_params",
             [](nn::Net& n, FArray v) {
                 std::lock_guard<std::mutex> lock(n.mutex());
                 CNN_CHECK_ARG(v.ndim() == 1 && v.shape(0) == n.flat_params().numel(),
                               "set_flat_params: wrong size");
                 n.flat_params().copy_from(to_tensor(v));
             })
        .def("zero_grad", [](nn::Net& n) {
            std::lock_guard<std::mutex> lock(n.mutex());
            n.zero_grad();
        })
        .def(
            "forward",
            [](nn::Net& n, FArray x, bool training) {
                Tensor xt = to_tensor(x);
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(n.mutex());
                Tensor y = n.forward(xt, training);
                py::gil_scoped_acquire gil;
                return to_numpy(y);
            },
            py::arg("x"), py::arg("training") = false)
        .def(
            "backward",
            [](nn::Net& n, FArray dy, bool need_dx) -> py::object {
                Tensor d = to_tensor(dy);
                py::gil_scoped_release nogil;
                std::lock_guard<std::mutex> lock(n.mutex());
                Tensor dx = n.backward(d, need_dx);
                py::gil_scoped_acquire gil;
                if (!need_dx) return py::none();
                return to_numpy(dx);
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
                std::lock_guard<std::mutex> lock(n.mutex());
                n.set_optimizer(std::make_shared<nn::Optimizer>(c));
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
                 py::dict d;
                 d["step"] = opt->step_count();
                 auto names = opt->state_names();
                 auto& st = opt->state();
                 for (size_t i = 0; i < st.size() && i < names.size(); ++i)
                     d[py::str(names[i])] = to_numpy(st[i]);
                 return d;
             })
        .def("set_optimizer_state",
             [](nn::Net& n, int64_t step, std::vector<FArray> state) {
                 CNN_CHECK_ARG(n.optimizer(), "set_optimizer_state: no optimizer set");
                 std::lock_guard<std::mutex> lock(n.mutex());
                 auto opt = n.optimizer();
                 std::vector<Tensor> ts;
                 for (auto& a : state) {
                     CNN_CHECK_ARG(a.ndim() == 1 && a.shape(0) == n.flat_params().numel(),
                                   "optimizer state: expected buffers of ",
                                   n.flat_params().numel(), " floats, got ",
                                   shape_str(shape_of(a)));
                     ts.push_back(to_tensor(a).to(n.device()));
                 }
                 if (!ts.empty()) opt->set_state(ts);
                 opt->set_step_count(step);
             })
        .def(
            "train_step",
            [](nn::Net& n, FArray x, py::array y) {
                Tensor xt = to_tensor(x);
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
                Tensor xt = to_tensor(x);
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
}
