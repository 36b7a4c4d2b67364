// Test- and benchmark-only bindings, exposed as the submodule cnnkit._core._testing (not part of
// the API): the raw CPU GEMM with its bias option and the older kernel switch, the GPU GEMM and
// its benchmark, im2col / col2im, and the Net timing hooks. module.cpp calls bind_testing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bindings/convert.h"
#include "core/runtime.h"
#include "core/tensor.h"
#include "cpu/conv_direct.h"
#include "cpu/conv_winograd.h"
#include "cpu/kernels.h"
#include "nn/net.h"
#ifdef CNNKIT_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace py = pybind11;
using namespace cnnkit;
using namespace cnnkit::bindings;

void bind_testing(py::module_& core) {
    py::module_ m = core.def_submodule(
        "_testing", "test and benchmark hooks of the native core (not part of the cnnkit API)");

    // ---- GEMM on the CPU ---------------------------------------------------------------------
    m.def(
        "sgemm",
        [](FArray a, FArray b, bool trans_a, bool trans_b, float alpha, float beta,
           py::object c_obj, py::object bias_obj) {
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
            FArray bias;
            if (!bias_obj.is_none()) {
                bias = FArray::ensure(bias_obj);
                CNN_CHECK_ARG(bias && bias.ndim() == 1 && bias.shape(0) == N,
                              "sgemm: bias must have shape (", N, ",)");
            }
            float* cp = c.mutable_data();
            const float* ap = a.data();
            const float* bp = b.data();
            const float* biasp = bias_obj.is_none() ? nullptr : bias.data();
            const int64_t lda = a.shape(1), ldb = b.shape(1);
            {
                py::gil_scoped_release nogil;
                cpu::sgemm(trans_a, trans_b, M, N, K, alpha, ap, lda, bp, ldb, beta, cp, N, biasp);
            }
            return c;
        },
        py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("alpha") = 1.f, py::arg("beta") = 0.f, py::arg("c") = py::none(),
        py::arg("bias") = py::none());
    // The older kernel switch: true selects the "generic" kernel set, false "auto".
    m.def("sgemm_force_generic", &cpu::sgemm_force_generic, py::arg("force"));
    // The direct convolution's AVX-512 tile: one forced for every layer ("12x32", "4x80",
    // "8x48", "6x64", "16x16"; "" for the per-layer choice) and the table of that choice
    // ("t12", "t16", "auto"): any tile gives the same bits (tests/test_kernels.py).
    m.def("set_conv_tile", &cpu::conv_direct::set_forced_tile, py::arg("name"));
    m.def("set_conv_tile_table", &cpu::conv_direct::set_tile_table, py::arg("name"));
    m.def("conv_tile_table", &cpu::conv_direct::tile_table_name);
    // Winograd F(2x2, 3x3) for stride-1 3x3 layers (CNNKIT_CONV_WINOGRAD at start-up).
    // None: the machine's default (on for AVX-512 on Intel cores).
    m.def(
        "set_conv_winograd",
        [](std::optional<bool> on) {
            if (on) cpu::conv_winograd::set_enabled(*on);
            else cpu::conv_winograd::set_default();
        },
        py::arg("on"));
    m.def("conv_winograd", &cpu::conv_winograd::enabled);
    // Eval forwards of graph models with BatchNorm folded into the Conv2d before it (default
    // on); off runs the two layers as in training, for A/B measurements and tests.
    m.def("set_fold_batchnorm", &nn::Net::set_fold_batchnorm, py::arg("on"));
    m.def("fold_batchnorm", &nn::Net::fold_batchnorm);
    // Eval forwards in chunks of images (nn::Net::forward_to_host): the per-thread budget in
    // KB, 0 for one pass.
    m.def("set_eval_chunk_kb", &nn::Net::set_eval_chunk_kb, py::arg("kb"));
    m.def("eval_chunk_kb", &nn::Net::eval_chunk_kb);
    m.def("packed_weight_reuses", &cpu::conv_direct::pack_reuses,
          "Direct-convolution forwards that reused weight panels packed by an earlier chunk of "
          "the same eval forward (counted since the process started).");

    // ---- GEMM on the GPU (tests and bench/gpu_bench.py) ---------------------------------------
    // Same arguments as sgemm; a, b and c are copied to the device and the result back. c, when
    // given, is uploaded even with beta=0 (so a NaN-poisoned c checks that it is not read).
    // misalign (0..3) shifts every device buffer by that many floats, to exercise the
    // unaligned (no float4) load paths.
    m.def(
        "cuda_sgemm",
        [](FArray a, FArray b, bool trans_a, bool trans_b, float alpha, float beta,
           py::object c_obj, int misalign) {
            require_cuda("cuda_sgemm");
            CNN_CHECK_ARG(a.ndim() == 2 && b.ndim() == 2, "cuda_sgemm: a and b must be 2-D");
            CNN_CHECK_ARG(misalign >= 0 && misalign < 4, "cuda_sgemm: misalign must be 0..3");
            const int64_t M = trans_a ? a.shape(1) : a.shape(0);
            const int64_t K = trans_a ? a.shape(0) : a.shape(1);
            const int64_t Kb = trans_b ? b.shape(1) : b.shape(0);
            const int64_t N = trans_b ? b.shape(0) : b.shape(1);
            CNN_CHECK_ARG(K == Kb, "cuda_sgemm: inner dimensions differ: ", K, " and ", Kb);
            FArray c = c_obj.is_none() ? FArray({M, N}) : FArray::ensure(c_obj);
            CNN_CHECK_ARG(c && c.ndim() == 2 && c.shape(0) == M && c.shape(1) == N,
                          "cuda_sgemm: c must have shape (", M, ", ", N, ")");
            if (c_obj.is_none()) beta = 0.f;
            auto up = [&](const FArray& arr) {
                Tensor t({arr.size() + misalign}, Device::CUDA);
                if (arr.size())
                    cuda::memcpy(t.data() + misalign, arr.data(), sizeof(float) * arr.size(), 0);
                return t;
            };
            Tensor da = up(a), db = up(b), dc = up(c);
            py::array_t<float> out({M, N});
            {
                py::gil_scoped_release nogil;
#ifdef CNNKIT_WITH_CUDA
                cuda::sgemm(trans_a, trans_b, M, N, K, alpha, da.data() + misalign, a.shape(1),
                            db.data() + misalign, b.shape(1), beta, dc.data() + misalign, N);
#endif
                if (M * N > 0)
                    cuda::memcpy(out.mutable_data(), dc.data() + misalign,
                                 sizeof(float) * M * N, 1);
            }
            return out;
        },
        py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("alpha") = 1.f, py::arg("beta") = 0.f, py::arg("c") = py::none(),
        py::arg("misalign") = 0);
    // Median milliseconds of our GEMM on device-resident random (M,K) x (K,N) operands
    // (CUDA events, after a warm-up), for bench/gpu_bench.py.
    m.def(
        "cuda_sgemm_bench",
        [](int64_t M, int64_t N, int64_t K, int repeats, bool trans_a, bool trans_b) {
            require_cuda("cuda_sgemm_bench");
            CNN_CHECK_ARG(M > 0 && N > 0 && K > 0 && repeats > 0,
                          "cuda_sgemm_bench: sizes and repeats must be positive");
            Tensor a({M * K}, Device::CUDA), b({K * N}, Device::CUDA), c({M * N}, Device::CUDA);
            std::mt19937 gen(1234);
            std::uniform_real_distribution<float> dist(-1.f, 1.f);
            for (Tensor* t : {&a, &b}) {
                Tensor h({t->numel()});
                for (int64_t i = 0; i < h.numel(); ++i) h.data()[i] = dist(gen);
                t->copy_from(h);
            }
            std::vector<double> ms;
            {
                py::gil_scoped_release nogil;
                ms = time_runs(Device::CUDA, repeats, [&] {
#ifdef CNNKIT_WITH_CUDA
                    cuda::sgemm(trans_a, trans_b, M, N, K, 1.f, a.data(), trans_a ? M : K,
                                b.data(), trans_b ? K : N, 0.f, c.data(), N);
#endif
                });
            }
            std::sort(ms.begin(), ms.end());
            return ms[ms.size() / 2];
        },
        py::arg("M"), py::arg("N"), py::arg("K"), py::arg("repeats") = 10,
        py::arg("trans_a") = false, py::arg("trans_b") = false);

    // ---- im2col / col2im (for kernel tests) ------------------------------------------------
    m.def(
        "im2col",
        [](FArray x, std::vector<int64_t> k, std::vector<int64_t> s, std::vector<int64_t> p,
           std::vector<int64_t> d, const std::string& device) {
            CNN_CHECK_ARG(x.ndim() == 3, "im2col: expected x of shape (C, H, W), got ",
                          shape_str(shape_of(x)));
            const int64_t C = x.shape(0), H = x.shape(1), W = x.shape(2);
            const int64_t P = conv_out_size(H, k[0], s[0], p[0], d[0]);
            const int64_t Q = conv_out_size(W, k[1], s[1], p[1], d[1]);
            CNN_CHECK_ARG(P > 0 && Q > 0, "im2col: window larger than the padded input");
            py::array_t<float> col({C * k[0] * k[1], P * Q});
            if (parse_device(device) == Device::CUDA) {
                require_cuda("im2col");
                Tensor xd = to_tensor(x).to(Device::CUDA);
                Tensor cd({C * k[0] * k[1] * P * Q}, Device::CUDA);
#ifdef CNNKIT_WITH_CUDA
                cuda::im2col(cd.data(), P * Q, xd.data(), C, H, W, k[0], k[1], P, Q, s[0], s[1],
                             p[0], p[1], d[0], d[1]);
#endif
                cuda::memcpy(col.mutable_data(), cd.data(), sizeof(float) * cd.numel(), 1);
                return col;
            }
            cpu::im2col(col.mutable_data(), P * Q, x.data(), C, H, W, k[0], k[1], P, Q, s[0], s[1],
                        p[0], p[1], d[0], d[1]);
            return col;
        },
        py::arg("x"), py::arg("kernel"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"), py::arg("device") = "cpu");
    m.def(
        "col2im",
        [](FArray col, std::vector<int64_t> shape, std::vector<int64_t> k, std::vector<int64_t> s,
           std::vector<int64_t> p, std::vector<int64_t> d, const std::string& device) {
            const int64_t C = shape[0], H = shape[1], W = shape[2];
            const int64_t P = conv_out_size(H, k[0], s[0], p[0], d[0]);
            const int64_t Q = conv_out_size(W, k[1], s[1], p[1], d[1]);
            CNN_CHECK_ARG(col.ndim() == 2 && col.shape(0) == C * k[0] * k[1] &&
                              col.shape(1) == P * Q,
                          "col2im: expected col of shape (", C * k[0] * k[1], ", ", P * Q,
                          "), got ", shape_str(shape_of(col)));
            py::array_t<float> x({C, H, W});
            if (parse_device(device) == Device::CUDA) {
                require_cuda("col2im");
                Tensor cd = to_tensor(col).to(Device::CUDA);
                Tensor xd({C * H * W}, Device::CUDA);
#ifdef CNNKIT_WITH_CUDA
                cuda::col2im(xd.data(), cd.data(), P * Q, C, H, W, k[0], k[1], P, Q, s[0], s[1],
                             p[0], p[1], d[0], d[1]);
#endif
                cuda::memcpy(x.mutable_data(), xd.data(), sizeof(float) * xd.numel(), 1);
                return x;
            }
            cpu::col2im(x.mutable_data(), col.data(), P * Q, C, H, W, k[0], k[1], P, Q, s[0], s[1],
                        p[0], p[1], d[0], d[1]);
            return x;
        },
        py::arg("col"), py::arg("shape"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("device") = "cpu");

    // ---- Net timing (bench/gpu_bench.py) --------------------------------------------------
    // x (and the targets) are put on the Net's device once, so only the compute is timed; one
    // warm-up run, then the ms of each of `repeats` runs.
    m.def(
        "time_forward",
        [](nn::Net& n, FArray x, int repeats, bool training) {
            Tensor xt = to_tensor(x).to(n.device());
            NetLock lock(n);
            return time_runs(n.device(), repeats, [&] { n.forward(xt, training); });
        },
        py::arg("net"), py::arg("x"), py::arg("repeats") = 10, py::arg("training") = false);
    m.def(
        "time_train_step",
        [](nn::Net& n, FArray x, py::array y, int repeats) {
            Tensor xt = to_tensor(x).to(n.device());
            CNN_CHECK_ARG(xt.dim() >= 1, "time_train_step: x must have a batch dimension");
            Targets t = make_targets(n, y, xt.size(0));
            if (t.has_target) t.target = t.target.to(n.device());
            const int64_t* lp = t.has_labels ? t.labels.data() : nullptr;
            NetLock lock(n);
            return time_runs(n.device(), repeats, [&] {
                n.train_step(xt, lp, t.has_target ? &t.target : nullptr);
            });
        },
        py::arg("net"), py::arg("x"), py::arg("y"), py::arg("repeats") = 10);
}
