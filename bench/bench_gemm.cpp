// Native benchmark of cnnkit::cpu::sgemm: square and conv-like skinny shapes, checked against a
// double-precision reference on sampled entries, then timed (median of repeats).
// Usage: bench_gemm [--threads N] [--repeats R] [--generic] [MxNxK[:op] | N ...]   op: nn|tn|nt
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/runtime.h"
#include "cpu/gemm.h"

namespace {

// ---- problem description --------------------------------------------------------------------

struct Shape {
    int64_t M, N, K;
    bool ta, tb;
};

std::string op_name(const Shape& s) { return std::string(s.ta ? "t" : "n") + (s.tb ? "t" : "n"); }

// "1024" -> 1024^3 nn; "64x4096x288" -> nn; "64x4096x288:tn" -> transposed A.
bool parse_shape(const std::string& arg, Shape* s) {
    std::string dims = arg, op = "nn";
    const size_t colon = arg.find(':');
    if (colon != std::string::npos) {
        dims = arg.substr(0, colon);
        op = arg.substr(colon + 1);
    }
    long long m = 0, n = 0, k = 0;
    if (std::sscanf(dims.c_str(), "%lldx%lldx%lld", &m, &n, &k) != 3) {
        if (std::sscanf(dims.c_str(), "%lld", &m) != 1) return false;
        n = k = m;
    }
    if (m <= 0 || n <= 0 || k <= 0 || op.size() != 2) return false;
    if ((op[0] != 'n' && op[0] != 't') || (op[1] != 'n' && op[1] != 't')) return false;
    *s = Shape{m, n, k, op[0] == 't', op[1] == 't'};
    return true;
}

std::vector<Shape> default_shapes() {
    std::vector<Shape> v;
    for (int64_t n : {256, 512, 1024, 2048}) v.push_back({n, n, n, false, false});
    // im2col convolution: forward (W . col), backward weight (dY . col^T), backward input
    // (W^T . dY), for LeNet-like and VGG-like layers.
    const int64_t conv[][3] = {{6, 784, 25}, {16, 100, 150}, {64, 4096, 288}, {128, 512, 4096}};
    for (const auto& c : conv) {
        v.push_back({c[0], c[1], c[2], false, false});
        v.push_back({c[0], c[2], c[1], false, true});
        v.push_back({c[2], c[1], c[0], true, false});
    }
    return v;
}

// ---- one benchmark --------------------------------------------------------------------------

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Returns false when the sampled check fails.
bool run_one(const Shape& s, int repeats, int threads) {
    const int64_t lda = s.ta ? s.M : s.K, ldb = s.tb ? s.K : s.N;
    std::vector<float> A(s.M * s.K), B(s.K * s.N), C(s.M * s.N);
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> dist(-1.f, 1.f);
    for (float& x : A) x = dist(rng);
    for (float& x : B) x = dist(rng);
    auto call = [&] {
        cnnkit::cpu::sgemm(s.ta, s.tb, s.M, s.N, s.K, 1.f, A.data(), lda, B.data(), ldb, 0.f,
                           C.data(), s.N);
    };

    // Check sampled entries against a double-precision dot product.
    call();
    double worst = 0;
    for (int t = 0; t < 64; ++t) {
        const int64_t i = rng() % s.M, j = rng() % s.N;
        double ref = 0, mag = 0;
        for (int64_t k = 0; k < s.K; ++k) {
            const double a = s.ta ? A[k * lda + i] : A[i * lda + k];
            const double b = s.tb ? B[j * ldb + k] : B[k * ldb + j];
            ref += a * b;
            mag += std::fabs(a * b);
        }
        worst = std::max(worst, std::fabs(ref - C[i * s.N + j]) / (mag + 1e-30));
    }
    const bool ok = worst < 1e-5;

    // Warm up to ~50 ms, then time; at least `repeats` runs, more for tiny shapes (~0.2 s).
    const double flops = 2.0 * s.M * s.N * s.K;
    double t0 = now_s();
    int warm = 0;
    do {
        call();
        ++warm;
    } while (now_s() - t0 < 0.05 && warm < 1000);
    const double per_call = (now_s() - t0) / warm;
    const int runs = std::max(repeats, static_cast<int>(std::min(2000.0, 0.2 / per_call)));
    std::vector<double> times(runs);
    for (double& t : times) {
        const double start = now_s();
        call();
        t = now_s() - start;
    }
    std::sort(times.begin(), times.end());
    const double med = times[runs / 2];
    std::printf("%5lld x %5lld x %5lld  %s  threads %d  %9.3f ms  %7.1f GFLOP/s%s\n",
                static_cast<long long>(s.M), static_cast<long long>(s.N),
                static_cast<long long>(s.K), op_name(s).c_str(), threads, med * 1e3,
                flops / med * 1e-9, ok ? "" : "  CHECK FAILED");
    if (!ok) std::printf("    max relative error %.3g\n", worst);
    std::fflush(stdout);
    return ok;
}

}  // namespace

// ---- main -----------------------------------------------------------------------------------

int main(int argc, char** argv) {
    int threads = omp_get_max_threads(), repeats = 5;
    std::vector<Shape> shapes;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if ((arg == "--threads" || arg == "--repeats") && i + 1 < argc) {
            (arg == "--threads" ? threads : repeats) = std::max(1, std::atoi(argv[++i]));
        } else if (arg == "--generic") {
            cnnkit::cpu::sgemm_force_generic(true);
        } else if (arg == "-h" || arg == "--help") {
            std::printf("usage: %s [--threads N] [--repeats R] [--generic] "
                        "[MxNxK[:nn|tn|nt] | N ...]\n", argv[0]);
            return 0;
        } else {
            Shape s;
            if (!parse_shape(arg, &s)) {
                std::fprintf(stderr, "bad argument: %s (try --help)\n", arg.c_str());
                return 2;
            }
            shapes.push_back(s);
        }
    }
    if (shapes.empty()) shapes = default_shapes();
    cnnkit::set_num_threads(threads);
    std::printf("cnnkit sgemm benchmark: kernel %s, cpu [%s], %d thread(s)\n",
                cnnkit::cpu::sgemm_kernel_name(), cnnkit::cpu_features().c_str(), threads);
    bool ok = true;
    for (const Shape& s : shapes) ok = run_one(s, repeats, threads) && ok;
    return ok ? 0 : 1;
}
