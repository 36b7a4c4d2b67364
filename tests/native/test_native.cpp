// Native tests of the C++ core without Python, so the kernels and layers can run under
// AddressSanitizer + UndefinedBehaviorSanitizer (cmake -DCNNKIT_SANITIZE=ON -DCNNKIT_NATIVE_TESTS=ON).
// Each check compares against a direct double-precision loop; prints "N passed, M failed".
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/rng.h"
#include "core/runtime.h"
#include "cpu/conv_winograd.h"
#include "cpu/kernel_set.h"
#include "cpu/kernels.h"
#include "nn/layer.h"
#include "nn/net.h"

using namespace cnnkit;

namespace {

int g_pass = 0, g_fail = 0;

void check(bool ok, const std::string& what) {
    if (ok) {
        ++g_pass;
    } else {
        ++g_fail;
        std::printf("FAILED: %s\n", what.c_str());
    }
}

bool close(double a, double b, double tol) { return std::fabs(a - b) <= tol * (1 + std::fabs(b)); }

std::vector<float> randn(size_t n, std::mt19937& gen) {
    std::normal_distribution<float> d;
    std::vector<float> v(n);
    for (float& e : v) e = d(gen);
    return v;
}

// ---- GEMM ---------------------------------------------------------------------------------

void test_gemm(std::mt19937& gen) {
    // the last three straddle the AVX-512 tile (14 x 32) and its masked column tails
    const int64_t shapes[][3] = {{1, 1, 1},   {7, 13, 5},   {6, 784, 25}, {17, 33, 65},
                                 {130, 70, 300}, {15, 31, 40}, {29, 65, 3}, {141, 97, 390}};
    for (auto& s : shapes) {
        for (int ta = 0; ta < 2; ++ta)
            for (int tb = 0; tb < 2; ++tb) {
                const int64_t M = s[0], N = s[1], K = s[2];
                auto A = randn(M * K, gen), B = randn(K * N, gen), C = randn(M * N, gen);
                auto bias = randn(N, gen);
                auto C0 = C;
                const bool with_bias = (ta + tb) % 2 == 1;  // the fused bias on half the cases
                cpu::sgemm(ta, tb, M, N, K, 0.5f, A.data(), ta ? M : K, B.data(), tb ? K : N, 2.f,
                           C.data(), N, with_bias ? bias.data() : nullptr);
                bool ok = true;
                for (int64_t i = 0; i < M && ok; ++i)
                    for (int64_t j = 0; j < N && ok; ++j) {
                        double acc = 0;
                        for (int64_t k = 0; k < K; ++k)
                            acc += double(ta ? A[k * M + i] : A[i * K + k]) *
                                   (tb ? B[j * K + k] : B[k * N + j]);
                        ok = close(C[i * N + j],
                                   0.5 * acc + 2.0 * C0[i * N + j] + (with_bias ? bias[j] : 0.0),
                                   1e-4 * std::sqrt(K));
                    }
                check(ok, str_cat("sgemm ", M, "x", N, "x", K, " ta=", ta, " tb=", tb,
                                  with_bias ? " bias" : "", " kernels=",
                                  cpu::kernel_set_name(cpu::kernel_set())));
            }
    }
}

// ---- convolution --------------------------------------------------------------------------

void test_conv(std::mt19937& gen) {
    struct C { int64_t N, C, H, W, K, R, S, st, pad, dil, groups; };
    // First: the conv scratch only grows, so an over-read is visible to the sanitizer only
    // while the buffer still has this case's exact size (flat tiles reading deep into the
    // zero tail past the padded image).
    const C cases[] = {{2, 1, 4, 1, 3, 3, 5, 1, 6, 3, 1},
                       {2, 1, 28, 28, 6, 5, 5, 1, 2, 1, 1}, {3, 6, 14, 14, 16, 5, 5, 1, 0, 1, 1},
                       {2, 4, 9, 7, 6, 3, 2, 2, 1, 2, 2}, {2, 4, 8, 8, 8, 3, 3, 1, 1, 1, 4},
                       {2, 5, 6, 6, 7, 1, 1, 1, 0, 1, 1}, {50, 3, 12, 12, 4, 3, 3, 1, 1, 1, 1},
                       // direct path, flat tiles whose last taps read far into the zero tail
                       {2, 3, 9, 5, 7, 5, 5, 1, 4, 2, 1},
                       // direct path, row tiles with a partial last tile per row
                       {2, 3, 7, 19, 13, 3, 5, 1, 2, 2, 1},
                       // the AVX-512 tiles: rows of 40 (a masked 8-column tile), 25 channels
                       // (12 + 12 + 1 rows; 32-column weight-gradient tiles), 153 taps (12-tap
                       // weight-gradient tiles, the last one partial)
                       {2, 3, 10, 40, 25, 3, 3, 1, 1, 1, 1},
                       {3, 17, 6, 6, 20, 3, 3, 1, 1, 1, 1}};
    auto run = [&](const C& c, const std::string& path) {
        ConvGeom g{};
        g.N = c.N; g.C = c.C; g.H = c.H; g.W = c.W; g.K = c.K; g.R = c.R; g.S = c.S;
        g.stride_h = g.stride_w = c.st; g.pad_h = g.pad_w = c.pad; g.dil_h = g.dil_w = c.dil;
        g.groups = c.groups;
        g.P = conv_out_size(c.H, c.R, c.st, c.pad, c.dil);
        g.Q = conv_out_size(c.W, c.S, c.st, c.pad, c.dil);
        const int64_t Cg = c.C / c.groups, Kg = c.K / c.groups;
        auto x = randn(g.N * g.C * g.H * g.W, gen), w = randn(g.K * Cg * g.R * g.S, gen),
             b = randn(g.K, gen), dy = randn(g.N * g.K * g.P * g.Q, gen);
        std::vector<float> y(dy.size()), dx(x.size()), dw(w.size(), 0.f), db(g.K, 0.f);
        std::vector<float> ws(std::max<int64_t>(1, cpu::conv2d_workspace_floats(g)));
        cpu::conv2d_forward(y.data(), x.data(), w.data(), b.data(), g, ws.data());
        cpu::conv2d_backward_input(dx.data(), dy.data(), w.data(), g, ws.data());
        cpu::conv2d_backward_weight(dw.data(), db.data(), dy.data(), x.data(), g, ws.data());
        std::vector<double> ry(y.size()), rdx(x.size(), 0.0), rdw(w.size(), 0.0);
        for (int64_t n = 0; n < g.N; ++n)
            for (int64_t k = 0; k < g.K; ++k)
                for (int64_t p = 0; p < g.P; ++p)
                    for (int64_t q = 0; q < g.Q; ++q) {
                        const int64_t yi = ((n * g.K + k) * g.P + p) * g.Q + q;
                        double acc = b[k];
                        for (int64_t cc = 0; cc < Cg; ++cc)
                            for (int64_t r = 0; r < g.R; ++r)
                                for (int64_t s = 0; s < g.S; ++s) {
                                    int64_t h = p * c.st - c.pad + r * c.dil;
                                    int64_t ww = q * c.st - c.pad + s * c.dil;
                                    if (h < 0 || h >= g.H || ww < 0 || ww >= g.W) continue;
                                    int64_t ci = (k / Kg) * Cg + cc;
                                    int64_t xi = ((n * g.C + ci) * g.H + h) * g.W + ww;
                                    int64_t wi = ((k * Cg + cc) * g.R + r) * g.S + s;
                                    acc += double(w[wi]) * x[xi];
                                    rdx[xi] += double(w[wi]) * dy[yi];
                                    rdw[wi] += double(x[xi]) * dy[yi];
                                }
                        ry[yi] = acc;
                    }
        bool oky = true, okx = true, okw = true;
        for (size_t i = 0; i < y.size(); ++i) oky = oky && close(y[i], ry[i], 1e-4);
        for (size_t i = 0; i < x.size(); ++i) okx = okx && close(dx[i], rdx[i], 1e-4);
        for (size_t i = 0; i < w.size(); ++i) okw = okw && close(dw[i], rdw[i], 1e-3);
        std::string tag = str_cat("conv ", path, "N=", c.N, " C=", c.C, " K=", c.K, " H=", c.H,
                                  " W=", c.W, " groups=", c.groups);
        check(oky, tag + " forward");
        check(okx, tag + " backward-input");
        check(okw, tag + " backward-weight");
    };
    for (const C& c : cases) run(c, "");
    // Winograd F(2x2, 3x3), forced on (the AVX-512 and AVX2 sets; direct on the generic one):
    // tile rows of 16 tiles (mode 1, two images a block), of 8 and of 4 (modes 2 and 3), and
    // of 7 (through the planes), with partial vectors and odd output sizes
    const C wcases[] = {{3, 16, 32, 32, 16, 3, 3, 1, 1, 1, 1}, {2, 20, 16, 15, 24, 3, 3, 1, 1, 1, 1},
                        {5, 16, 8, 7, 17, 3, 3, 1, 1, 1, 1}, {2, 16, 15, 16, 16, 3, 3, 1, 0, 1, 1},
                        {1, 18, 9, 36, 16, 3, 3, 1, 2, 1, 1}};
    cpu::conv_winograd::set_enabled(true);
    for (const C& c : wcases) run(c, "winograd ");
    cpu::conv_winograd::set_default();
}

// ---- pooling, activations, norm, dropout, loss, optimizers ---------------------------------

void test_small_kernels(std::mt19937& gen) {
    PoolGeom g{2, 3, 7, 7, 3, 3, 0, 0, 2, 2, 1, 1, true};
    g.P = pool_out_size(7, 3, 2, 1, true);
    g.Q = g.P;
    auto x = randn(2 * 3 * 49, gen);
    std::vector<float> y(2 * 3 * g.P * g.Q), dx(x.size());
    std::vector<int32_t> arg(y.size());
    cpu::maxpool2d_forward(y.data(), arg.data(), x.data(), g);
    bool ok = true;
    for (size_t i = 0; i < y.size(); ++i) ok = ok && arg[i] >= 0 && arg[i] < 49;
    check(ok, "maxpool argmax in range");
    auto dy = randn(y.size(), gen);
    cpu::maxpool2d_backward(dx.data(), dy.data(), arg.data(), g);
    double sdx = 0, sdy = 0;
    for (float v : dx) sdx += v;
    for (float v : dy) sdy += v;
    check(close(sdx, sdy, 1e-4), "maxpool backward conserves the gradient sum");
    cpu::avgpool2d_forward(y.data(), x.data(), g);
    cpu::avgpool2d_backward(dx.data(), dy.data(), g);
    check(std::isfinite(dx[0]), "avgpool runs");

    auto a = randn(1000, gen);
    std::vector<float> b(1000), d(1000);
    for (int act = 0; act <= 4; ++act) {
        cpu::activation_forward(b.data(), a.data(), 1000, cpu::Act(act), 0.1f);
        cpu::activation_backward(d.data(), a.data(), a.data(), b.data(), 1000, cpu::Act(act), 0.1f);
        check(std::isfinite(b[999]) && std::isfinite(d[999]), str_cat("activation ", act));
    }
    std::vector<float> mask(1000);
    cpu::dropout_forward(b.data(), mask.data(), a.data(), 1000, 0.25f, 7, 1);
    int kept = 0;
    for (float m : mask) kept += m != 0.f;
    check(kept > 700 && kept < 800, "dropout keeps about 1-p");

    const int64_t N = 4, C = 3, HW = 5;
    auto xb = randn(N * C * HW, gen);
    std::vector<float> yb(xb.size()), mean(C), invstd(C), rm(C, 0.f), rv(C, 1.f), gamma(C, 1.f),
        beta(C, 0.f), dxb(xb.size()), dg(C, 0.f), dbt(C, 0.f);
    cpu::batchnorm_forward_train(yb.data(), mean.data(), invstd.data(), rm.data(), rv.data(),
                                 xb.data(), gamma.data(), beta.data(), N, C, HW, 0.1f, 1e-5f);
    double s = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t i = 0; i < HW; ++i) s += yb[(n * C + 0) * HW + i];
    check(std::fabs(s) < 1e-4, "batchnorm output has zero mean");
    cpu::batchnorm_backward(dxb.data(), dg.data(), dbt.data(), yb.data(), xb.data(), mean.data(),
                            invstd.data(), gamma.data(), N, C, HW);
    check(std::isfinite(dxb[0]), "batchnorm backward runs");

    std::vector<float> logits = randn(8 * 5, gen), dl(40);
    std::vector<int64_t> labels = {0, 1, 2, 3, 4, 0, 1, 2};
    int64_t correct = -1;
    double loss = cpu::softmax_cross_entropy(dl.data(), &correct, logits.data(), labels.data(), 8, 5);
    double rowsum = 0;
    for (int c = 0; c < 5; ++c) rowsum += dl[c];
    check(loss > 0 && correct >= 0 && correct <= 8 && std::fabs(rowsum) < 1e-6,
          "softmax cross-entropy");

    auto w = randn(100, gen), gr = randn(100, gen);
    // each optimizer its own zeroed state (a momentum buffer can go negative; Adagrad's sum of
    // squares must not)
    auto zeros = [] { return std::vector<float>(100, 0.f); };
    auto s1 = zeros(), s2 = zeros();
    cpu::sgd_step(w.data(), s1.data(), gr.data(), 100, 0.1f, 0.9f, 0.f, 1e-4f, true, true);
    s1 = zeros();
    cpu::adam_step(w.data(), s1.data(), s2.data(), gr.data(), 100, 1e-3f, 0.9f, 0.999f, 1e-8f,
                   0.01f, true, 1);
    s1 = zeros();
    cpu::adagrad_step(w.data(), s1.data(), gr.data(), 100, 0.01f, 0.f, 0.f, 1e-10f, 1);
    s1 = zeros();
    s2 = zeros();
    cpu::rmsprop_step(w.data(), s1.data(), s2.data(), gr.data(), 100, 0.01f, 0.99f, 1e-8f, 0.f,
                      0.9f);
    check(std::isfinite(w[0]), "optimizer steps");
}

// ---- a LeNet-5 Net: train steps reduce the loss on a fixed batch ---------------------------

void test_net_training() {
    using namespace nn;
    std::vector<LayerPtr> layers = {
        make_conv2d(1, 6, 5, 5, 1, 1, 2, 2, 1, 1, 1, true), make_activation("ReLU", 0),
        make_maxpool2d(2, 2, 2, 2, 0, 0, false), make_conv2d(6, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1, true),
        make_activation("ReLU", 0), make_maxpool2d(2, 2, 2, 2, 0, 0, false), make_flatten(),
        make_linear(400, 120, true), make_batchnorm2d(1, 1e-5f, 0.1f, true, true)};
    layers.pop_back();  // (BatchNorm2d on (N,120) would be a shape error; tested below)
    layers.push_back(make_dropout(0.1f));
    layers.push_back(make_activation("Tanh", 0));
    layers.push_back(make_linear(120, 10, true));
    for (size_t i = 0; i < layers.size(); ++i) layers[i]->reset_parameters(100 + i);
    Net net(layers);
    net.set_loss(LossKind::CrossEntropy);
    OptimizerConfig oc;
    oc.kind = "adam";
    oc.lr = 1e-3f;
    net.set_optimizer(std::make_shared<Optimizer>(oc));
    Tensor x({16, 1, 28, 28});
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = philox_uniform(1, 2, i);
    std::vector<int64_t> labels(16);
    for (int i = 0; i < 16; ++i) labels[i] = i % 10;
    double first = net.train_step(x, labels.data(), nullptr).loss, last = first;
    for (int s = 0; s < 30; ++s) last = net.train_step(x, labels.data(), nullptr).loss;
    check(last < 0.75 * first, str_cat("LeNet train steps reduce the loss: ", first, " -> ", last));
    Tensor small({3, 1, 28, 28});
    small.fill(0.5f);
    check(net.forward(small, false).size(0) == 3, "smaller batch reuses the arena");
    bool threw = false;
    try {
        Tensor bad({2, 3, 28, 28});
        net.forward(bad, false);
    } catch (const ValueError&) {
        threw = true;
    }
    check(threw, "wrong channel count throws ValueError");
    threw = false;
    try {
        std::vector<int64_t> badl(16, 10);
        net.train_step(x, badl.data(), nullptr);
    } catch (const ValueError&) {
        threw = true;
    }
    check(threw, "label out of range throws ValueError");
}

// The gradient reducer with buckets reduced by the Net's thread during the backward: the same
// parameters, bitwise, as one reduction after it; a throwing reducer leaves the Net usable.
void test_bucketed_reducer() {
    using namespace nn;
    auto build = [] {
        std::vector<LayerPtr> layers = {
            make_conv2d(1, 6, 5, 5, 1, 1, 2, 2, 1, 1, 1, true), make_activation("ReLU", 0),
            make_maxpool2d(2, 2, 2, 2, 0, 0, false), make_conv2d(6, 16, 5, 5, 1, 1, 0, 0, 1, 1, 1, true),
            make_activation("ReLU", 0), make_maxpool2d(2, 2, 2, 2, 0, 0, false), make_flatten(),
            make_linear(400, 120, true), make_activation("Tanh", 0), make_linear(120, 10, true)};
        for (size_t i = 0; i < layers.size(); ++i) layers[i]->reset_parameters(200 + i);
        auto net = std::make_unique<Net>(layers);
        net->set_loss(LossKind::CrossEntropy);
        OptimizerConfig oc;
        oc.kind = "sgd";
        oc.lr = 0.05f;
        oc.momentum = 0.9f;
        net->set_optimizer(std::make_shared<Optimizer>(oc));
        return net;
    };
    Tensor x({8, 1, 28, 28});
    for (int64_t i = 0; i < x.numel(); ++i) x.data()[i] = philox_uniform(3, 4, i);
    std::vector<int64_t> labels(8);
    for (int i = 0; i < 8; ++i) labels[i] = (3 * i) % 10;
    auto twice = [](float* g, int64_t n) {
        for (int64_t i = 0; i < n; ++i) g[i] *= 2.f;
    };
    auto ref = build(), net = build();
    ref->set_grad_reducer(twice, 0.5f, 0);
    net->set_grad_reducer(twice, 0.5f, 1);
    check(net->grad_buckets(1).size() == 4, "one bucket per layer with parameters");
    for (int s = 0; s < 5; ++s) {
        ref->train_step(x, labels.data(), nullptr);
        net->train_step(x, labels.data(), nullptr);
    }
    const Tensor &a = ref->flat_params(), &b = net->flat_params();
    bool same = true;
    for (int64_t i = 0; i < a.numel(); ++i) same = same && a.data()[i] == b.data()[i];
    check(same, "bucketed reduction equals one reduction, bitwise");
    int calls = 0;
    net->set_grad_reducer(
        [&calls](float*, int64_t) {
            if (++calls == 2) throw RuntimeError("reducer failed");
        },
        1.f, 1);
    bool threw = false;
    try {
        net->train_step(x, labels.data(), nullptr);
    } catch (const RuntimeError&) {
        threw = true;
    }
    check(threw && calls == 2, "a reducer error stops the calls and leaves train_step");
    bool zero = true;
    for (int64_t i = 0; i < net->flat_grads().numel(); ++i) zero = zero && net->flat_grads().data()[i] == 0.f;
    check(zero, "after a reducer error the gradients are zero");
    net->set_grad_reducer(twice, 0.5f, 1);
    ref->train_step(x, labels.data(), nullptr);
    net->train_step(x, labels.data(), nullptr);
    same = true;
    for (int64_t i = 0; i < a.numel(); ++i) same = same && a.data()[i] == b.data()[i];
    check(same, "the step after a reducer error is an ordinary one");
}

}  // namespace

int main() {
    std::mt19937 gen(42);
    // every kernel set this CPU supports (cpu/kernel_set.h), each at 1 and 2 threads
    for (const std::string& set : cpu::available_kernel_sets()) {
        cpu::set_kernel_set(set);
        std::printf("kernel set %s\n", set.c_str());
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            test_gemm(gen);
            test_conv(gen);
            test_small_kernels(gen);
            test_net_training();
            test_bucketed_reducer();
        }
    }
    cpu::set_kernel_set("auto");
    std::printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail == 0 ? 0 : 1;
}
