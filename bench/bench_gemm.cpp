// Native benchmark of cnnkit::cpu::sgemm: square and conv-like skinny shapes, checked against a
// double-precision reference on sampled entries, then timed (median of repeats).
// Usage: bench_gemm [--threads N] [--repeats R] [--kernels SET[,SET...]] [--generic] [--blas LIB]
//        [MxNxK[:op] | N ...]      op: nn|tn|nt
// --kernels avx512,avx2 times the kernel sets (cpu/kernel_set.h) against each other in
// alternating batches in this process and prints the median of the per-round speed-ups of the
// first set over each other one; a single set just selects it (--generic = --kernels generic).
// --blas LIB loads a CBLAS library (e.g. numpy's bundled OpenBLAS, libscipy_openblas64_*.so)
// and times it against ours in alternating batches in this process: a drift in machine speed
// then hits both alike, and the median of the per-pair ratios cancels most of it. Leave
// OMP_PROC_BIND unset with --blas: a bound main thread pins OpenBLAS's threads to its core.
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/runtime.h"
#include "cpu/gemm.h"
#include "cpu/kernel_set.h"

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

// ---- an external CBLAS, loaded at run time ---------------------------------------------------

// cblas_sgemm with 32-bit (LP64) or 64-bit (ILP64, symbols ending in 64_) integers.
using Sgemm32 = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                         const float*, int64_t, float, float*, int64_t);
using SetThreads = void (*)(int);

struct Blas {
    Sgemm32 sgemm32 = nullptr;
    Sgemm64 sgemm64 = nullptr;
    std::string symbol;

    bool loaded() const { return sgemm32 || sgemm64; }
    // Row-major C = op(A) op(B) (alpha 1, beta 0).
    void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
               const float* B, int64_t ldb, float* C) const {
        constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
        const int opa = ta ? kTrans : kNoTrans, opb = tb ? kTrans : kNoTrans;
        if (sgemm64)
            sgemm64(kRowMajor, opa, opb, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, N);
        else
            sgemm32(kRowMajor, opa, opb, static_cast<int>(M), static_cast<int>(N),
                    static_cast<int>(K), 1.f, A, static_cast<int>(lda), B, static_cast<int>(ldb),
                    0.f, C, static_cast<int>(N));
    }
};

bool load_blas(const char* path, int threads, Blas* blas) {
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        std::fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        return false;
    }
    for (const char* name : {"cblas_sgemm", "scipy_cblas_sgemm64_", "cblas_sgemm64_"}) {
        void* f = dlsym(lib, name);
        if (!f) continue;
        blas->symbol = name;
        const bool ilp64 = blas->symbol.size() > 3 &&
                           blas->symbol.compare(blas->symbol.size() - 3, 3, "64_") == 0;
        if (ilp64)
            blas->sgemm64 = reinterpret_cast<Sgemm64>(f);
        else
            blas->sgemm32 = reinterpret_cast<Sgemm32>(f);
        break;
    }
    if (!blas->loaded()) {
        std::fprintf(stderr, "%s has no cblas_sgemm\n", path);
        return false;
    }
    for (const char* name : {"openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                             "openblas_set_num_threads64_"}) {
        if (void* f = dlsym(lib, name)) {
            reinterpret_cast<SetThreads>(f)(threads);
            break;
        }
    }
    return true;
}

// ---- one benchmark --------------------------------------------------------------------------

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Seconds per call over a batch of at least `seconds`, after an idle pause (OpenBLAS's and
// OpenMP's idle threads spin for a while after a call and would take the cores from the other
// library's batch) and one untimed call.
template <typename F>
double timed_batch(F&& call, double seconds) {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    call();
    const double t0 = now_s();
    int64_t n = 0;
    double elapsed = 0;
    do {
        call();
        ++n;
        elapsed = now_s() - t0;
    } while (elapsed < seconds);
    return elapsed / n;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Returns false when the sampled check fails. With several kernel sets, the check runs for
// each, then the sets are timed in alternating batches.
bool run_one(const Shape& s, int repeats, int threads, const Blas& blas,
             const std::vector<std::string>& sets) {
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
    double worst = 0;
    for (size_t set = 0; set < std::max<size_t>(1, sets.size()); ++set) {
    if (!sets.empty()) cnnkit::cpu::set_kernel_set(sets[set]);
    call();
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
    }
    const bool ok = worst < 1e-5;

    const double flops = 2.0 * s.M * s.N * s.K;
    if (sets.size() > 1) {
        // Alternating batches of ~0.3 s, one per set per round.
        std::vector<std::vector<double>> t(sets.size()), speedup(sets.size());
        for (int r = 0; r < repeats; ++r)
            for (size_t k = 0; k < sets.size(); ++k) {
                cnnkit::cpu::set_kernel_set(sets[k]);
                t[k].push_back(timed_batch(call, 0.3));
                if (k > 0) speedup[k].push_back(t[k].back() / t[0].back());
            }
        std::printf("%5lld x %5lld x %5lld  %s  threads %d ", static_cast<long long>(s.M),
                    static_cast<long long>(s.N), static_cast<long long>(s.K), op_name(s).c_str(),
                    threads);
        for (size_t k = 0; k < sets.size(); ++k)
            std::printf(" %s %7.1f", sets[k].c_str(), flops / median(t[k]) * 1e-9);
        std::printf(" GFLOP/s ");
        for (size_t k = 1; k < sets.size(); ++k)
            std::printf(" %s/%s %.3f", sets[0].c_str(), sets[k].c_str(), median(speedup[k]));
        std::printf("  (median of %d rounds)%s\n", repeats, ok ? "" : "  CHECK FAILED");
        std::fflush(stdout);
        cnnkit::cpu::set_kernel_set(sets[0]);
        return ok;
    }
    if (blas.loaded()) {
        // Alternating batches of ~0.3 s: ours, theirs, ours, ...
        std::vector<float> C2(C.size());
        auto theirs = [&] { blas.sgemm(s.ta, s.tb, s.M, s.N, s.K, A.data(), lda, B.data(), ldb,
                                       C2.data()); };
        std::vector<double> t_ours, t_blas, ratio;
        for (int r = 0; r < repeats; ++r) {
            t_ours.push_back(timed_batch(call, 0.3));
            t_blas.push_back(timed_batch(theirs, 0.3));
            ratio.push_back(t_blas.back() / t_ours.back());
        }
        double diff = 0, mag = 0;
        for (size_t i = 0; i < C.size(); ++i) {
            diff = std::max(diff, double(std::fabs(C[i] - C2[i])));
            mag = std::max(mag, double(std::fabs(C2[i])));
        }
        std::printf("%5lld x %5lld x %5lld  %s  threads %d  ours %7.1f  blas %7.1f GFLOP/s  "
                    "ratio %.3f  (median of %d paired; max rel diff %.1e)%s\n",
                    static_cast<long long>(s.M), static_cast<long long>(s.N),
                    static_cast<long long>(s.K), op_name(s).c_str(), threads,
                    flops / median(t_ours) * 1e-9, flops / median(t_blas) * 1e-9,
                    median(ratio), repeats, diff / (mag + 1e-30), ok ? "" : "  CHECK FAILED");
        std::fflush(stdout);
        return ok;
    }

    // Warm up to ~50 ms, then time; at least `repeats` runs, more for tiny shapes (~0.2 s).
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
    const char* blas_path = nullptr;
    std::vector<Shape> shapes;
    std::vector<std::string> sets;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if ((arg == "--threads" || arg == "--repeats") && i + 1 < argc) {
            (arg == "--threads" ? threads : repeats) = std::max(1, std::atoi(argv[++i]));
        } else if (arg == "--blas" && i + 1 < argc) {
            blas_path = argv[++i];
        } else if (arg == "--generic") {
            sets = {"generic"};
        } else if (arg == "--kernels" && i + 1 < argc) {
            sets.clear();
            std::string list = argv[++i];
            for (size_t p = 0; p <= list.size();) {
                const size_t q = std::min(list.find(',', p), list.size());
                if (q > p) sets.push_back(list.substr(p, q - p));
                p = q + 1;
            }
        } else if (arg == "-h" || arg == "--help") {
            std::printf("usage: %s [--threads N] [--repeats R] [--kernels SET[,SET...]] "
                        "[--generic] [--blas LIB] "
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
    try {
        for (const std::string& k : sets) cnnkit::cpu::set_kernel_set(k);
        if (!sets.empty()) cnnkit::cpu::set_kernel_set(sets[0]);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
    // The BLAS first: its thread pool starts before any OpenMP region of ours.
    Blas blas;
    if (blas_path && !load_blas(blas_path, threads, &blas)) return 2;
    cnnkit::set_num_threads(threads);
    std::printf("cnnkit sgemm benchmark: kernel %s, cpu [%s], %d thread(s)\n",
                cnnkit::cpu::sgemm_kernel_name(), cnnkit::cpu_features().c_str(), threads);
    bool ok = true;
    if (blas.loaded()) std::printf("against %s from %s\n", blas.symbol.c_str(), blas_path);
    for (const Shape& s : shapes) ok = run_one(s, repeats, threads, blas, sets) && ok;
    return ok ? 0 : 1;
}
