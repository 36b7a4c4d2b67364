// Native convolution benchmark: forward, backward-input and backward-weight of typical CNN
// layers through the CPU kernels. Checks a few outputs against a direct loop first, then
// prints one line per layer and pass: median ms and GFLOP/s.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <time.h>

#include "core/runtime.h"
#include "cpu/conv_direct.h"
#include "cpu/conv_winograd.h"
#include "cpu/kernel_set.h"
#include "cpu/kernels.h"

using namespace cnnkit;

namespace {

struct Case {
    const char* name;
    ConvGeom g;
};

ConvGeom make(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t stride,
              int64_t pad, int64_t groups = 1) {
    ConvGeom g{};
    g.N = N; g.C = C; g.H = H; g.W = W; g.K = K; g.R = R; g.S = R;
    g.stride_h = g.stride_w = stride;
    g.pad_h = g.pad_w = pad;
    g.dil_h = g.dil_w = 1;
    g.groups = groups;
    g.P = conv_out_size(H, R, stride, pad, 1);
    g.Q = conv_out_size(W, R, stride, pad, 1);
    return g;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// --cpu-time: the process's CPU time instead of wall time (with one thread, the time the
// kernel actually ran: robust against other processes taking turns on the same cores).
bool g_cpu_time = false;
bool g_min = false;  // --min: the fastest of the repeats instead of their median

double now_ms() {
    if (g_cpu_time) {
        timespec ts;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
    }
    return std::chrono::duration<double, std::milli>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

template <typename F>
double time_ms(F&& f, int repeats) {
    f();  // warm-up
    std::vector<double> t;
    for (int i = 0; i < repeats; ++i) {
        const double t0 = now_ms();
        f();
        t.push_back(now_ms() - t0);
    }
    return g_min ? *std::min_element(t.begin(), t.end()) : median(t);
}

// Direct-loop value of y[n,k,p,q] for the correctness check.
double direct(const ConvGeom& g, const float* x, const float* w, int64_t n, int64_t k, int64_t p,
              int64_t q) {
    const int64_t Cg = g.C / g.groups, gi = k / (g.K / g.groups);
    double acc = 0;
    for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s) {
                int64_t h = p * g.stride_h - g.pad_h + r, ww = q * g.stride_w - g.pad_w + s;
                if (h < 0 || h >= g.H || ww < 0 || ww >= g.W) continue;
                acc += double(w[((k * Cg + c) * g.R + r) * g.S + s]) *
                       x[((n * g.C + gi * Cg + c) * g.H + h) * g.W + ww];
            }
    return acc;
}

// A kernel set name, optionally with "/im2col": the set with strided layers sent to im2col +
// GEMM instead of the direct path (A/B of the strided direct convolution in one process).
// "SET@MRxNR": the set with that AVX-512 tile forced for every layer ("avx2@kpix": the AVX2
// channel-vector tile everywhere; "avx2@12x32", any other name: the AVX2 6 x 16 column tiles
// everywhere); "SET#TABLE" with that
// tile table (t12, t16) for the per-layer choice (A/B of tile shapes).
// SET[/im2col][@TILE][#TABLE][+winograd|+direct]: the stride-1 3x3 layers through Winograd
// or the direct tiles (without either: the default of this machine).
void use_set(std::string spec) {
    static const bool winograd_default = cpu::conv_winograd::enabled();
    bool winograd = winograd_default;
    const size_t plus = spec.find('+');
    if (plus != std::string::npos) {
        const std::string alg = spec.substr(plus + 1);
        if (alg != "winograd" && alg != "direct")
            throw std::invalid_argument("unknown algorithm '" + alg + "' (winograd, direct)");
        winograd = alg == "winograd";
        spec = spec.substr(0, plus);
    }
    cpu::conv_winograd::set_enabled(winograd);
    const size_t hash = spec.find('#');
    cpu::conv_direct::set_tile_table(hash == std::string::npos ? "auto" : spec.substr(hash + 1));
    const std::string base = spec.substr(0, hash);
    const size_t at = base.find('@');
    const std::string name = base.substr(0, at);
    cpu::conv_direct::set_forced_tile(at == std::string::npos ? "" : base.substr(at + 1));
    const size_t slash = name.find('/');
    cpu::set_kernel_set(name.substr(0, slash));
    cpu::conv_direct::set_strided_direct(slash == std::string::npos ||
                                          name.substr(slash + 1) != "im2col");
}

}  // namespace

int main(int argc, char** argv) {
    int repeats = 7, rounds = 1;
    std::string net;  // "resnet20": ResNet-20's convolution shapes instead of the default list
    int64_t batch = 128;
    std::string only;  // run only the layers whose name contains this
    std::vector<std::string> sets;  // kernel sets to alternate (empty: the current one)
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) set_num_threads(std::atoi(argv[++i]));
        else if (a == "--repeats" && i + 1 < argc) repeats = std::atoi(argv[++i]);
        else if (a == "--rounds" && i + 1 < argc) rounds = std::max(1, std::atoi(argv[++i]));
        else if (a == "--net" && i + 1 < argc) net = argv[++i];
        else if (a == "--only" && i + 1 < argc) only = argv[++i];
        else if (a == "--cpu-time") g_cpu_time = true;
        else if (a == "--min") g_min = true;
        else if (a == "--batch" && i + 1 < argc) batch = std::atoll(argv[++i]);
        else if (a == "--kernels" && i + 1 < argc) {
            const std::string list = argv[++i];
            for (size_t p = 0; p <= list.size();) {
                const size_t q = std::min(list.find(',', p), list.size());
                if (q > p) sets.push_back(list.substr(p, q - p));
                p = q + 1;
            }
        } else {
            // --kernels a,b: each layer and pass timed with the kernel sets in turn, `rounds`
            // times alternating; prints each set's median and the median per-round speed-up
            // of the first set over each other one.
            std::printf("usage: bench_conv [--threads N] [--repeats R] [--kernels SET[,SET...]] "
                        "[--rounds N] [--net resnet20 [--batch N]] [--only NAME] [--cpu-time] [--min]\n"
                        "  a set may be written SET/im2col: strided layers through im2col + GEMM,\n"
                        "  or SET@MRxNR: that AVX-512 tile for every layer (12x32, 4x80, 8x48,\n"
                        "  6x64, 16x16, kpix; under avx2: kpix, or any other name for 6x16),\n"
                        "  or SET#TABLE: that tile table (t12, t16), and end in\n"
                        "  +winograd or +direct: stride-1 3x3 layers through Winograd F(2x2, 3x3)\n"
                        "  or the direct tiles (default: this machine's choice)\n");
            return a == "--help" ? 0 : 2;
        }
    }
    try {
        for (const std::string& k : sets) use_set(k);
    } catch (const std::exception& e) {
        std::printf("%s\n", e.what());
        return 2;
    }
    if (sets.empty()) sets.push_back(cpu::kernel_set_name(cpu::kernel_set()));
    std::vector<Case> cases = {
        {"lenet.conv1 b256", make(256, 1, 28, 28, 6, 5, 1, 2)},
        {"lenet.conv2 b256", make(256, 6, 14, 14, 16, 5, 1, 0)},
        {"cifar 64x32x32->64 3x3", make(64, 32, 32, 32, 64, 3, 1, 1)},
        {"cifar 128x3x32x32->32 3x3", make(128, 3, 32, 32, 32, 3, 1, 1)},
        {"pointwise 64x64x16x16->128", make(64, 64, 16, 16, 128, 1, 1, 0)},
        {"depthwise 64x64x16x16 3x3", make(64, 64, 16, 16, 64, 3, 1, 1, 64)},
    };
    if (net == "resnet20") {  // the distinct convolutions of ResNet-20 (CIFAR, 32x32 input)
        const int64_t N = batch;
        cases = {
            {"r20.conv1 3->16 32x32", make(N, 3, 32, 32, 16, 3, 1, 1)},
            {"r20.s1 16->16 32x32", make(N, 16, 32, 32, 16, 3, 1, 1)},
            {"r20.s2 16->32 32x32/2", make(N, 16, 32, 32, 32, 3, 2, 1)},
            {"r20.s1 32->32 16x16", make(N, 32, 16, 16, 32, 3, 1, 1)},
            {"r20.s2 32->64 16x16/2", make(N, 32, 16, 16, 64, 3, 2, 1)},
            {"r20.s1 64->64 8x8", make(N, 64, 8, 8, 64, 3, 1, 1)},
            {"r20.proj 16->32 1x1/2", make(N, 16, 32, 32, 32, 1, 2, 0)},
        };
    } else if (!net.empty()) {
        std::printf("unknown --net %s\n", net.c_str());
        return 2;
    }
    use_set(sets[0]);
    std::printf("threads=%d kernel sets:", get_num_threads());
    for (const std::string& k : sets) std::printf(" %s", k.c_str());
    std::printf(" (cpu [%s])\n", cpu_features().c_str());
    std::printf("%-28s %-10s per kernel set: median ms, GFLOP/s\n", "layer", "pass");
    std::mt19937 gen(1);
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (const Case& c : cases) {
        if (!only.empty() && std::string(c.name).find(only) == std::string::npos) continue;
        const ConvGeom& g = c.g;
        std::vector<float> x(g.N * g.C * g.H * g.W), w(g.K * (g.C / g.groups) * g.R * g.S),
            b(g.K), y(g.N * g.K * g.P * g.Q), dy(y.size()), dx(x.size()), dw(w.size()), db(g.K);
        for (auto* v : {&x, &w, &b, &dy})
            for (float& e : *v) e = dist(gen);
        std::vector<float> ws(std::max<int64_t>(1, cpu::conv2d_workspace_floats(g)));
        for (const std::string& set : sets) {
        use_set(set);
        cpu::conv2d_forward(y.data(), x.data(), w.data(), b.data(), g, ws.data());
        for (int t = 0; t < 5; ++t) {  // spot-check against a direct loop
            int64_t n = t % g.N, k = (7 * t) % g.K, p = (3 * t) % g.P, q = (5 * t) % g.Q;
            double want = direct(g, x.data(), w.data(), n, k, p, q) + b[k];
            double got = y[((n * g.K + k) * g.P + p) * g.Q + q];
            if (std::fabs(got - want) > 1e-3 * (1 + std::fabs(want))) {
                std::printf("CHECK FAILED %s (%s): got %g want %g\n", c.name, set.c_str(), got,
                            want);
                return 1;
            }
        }
        }
        const double flops = 2.0 * g.N * g.K * g.P * g.Q * (g.C / g.groups) * g.R * g.S;
        const char* passes[] = {"forward", "bwd-input", "bwd-weight"};
        for (int pass = 0; pass < 3; ++pass) {
            auto run = [&] {
                if (pass == 0)
                    cpu::conv2d_forward(y.data(), x.data(), w.data(), b.data(), g, ws.data());
                else if (pass == 1)
                    cpu::conv2d_backward_input(dx.data(), dy.data(), w.data(), g, ws.data());
                else
                    cpu::conv2d_backward_weight(dw.data(), db.data(), dy.data(), x.data(), g,
                                                ws.data());
            };
            std::vector<std::vector<double>> ms(sets.size()), speedup(sets.size());
            for (int r = 0; r < rounds; ++r)
                for (size_t k = 0; k < sets.size(); ++k) {
                    use_set(sets[k]);
                    ms[k].push_back(time_ms(run, repeats));
                    if (k > 0) speedup[k].push_back(ms[k].back() / ms[0].back());
                }
            std::printf("%-28s %-10s", c.name, passes[pass]);
            for (size_t k = 0; k < sets.size(); ++k)
                std::printf(" %s %8.3f ms %7.1f GFLOP/s", sets[k].c_str(), median(ms[k]),
                            flops / median(ms[k]) / 1e6);
            for (size_t k = 1; k < sets.size(); ++k)
                std::printf("  %s/%s %.3f", sets[0].c_str(), sets[k].c_str(),
                            median(speedup[k]));
            std::printf("\n");
            std::fflush(stdout);
        }
    }
    return 0;
}
