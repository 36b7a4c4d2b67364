// Thread control and CPU feature detection.
#include "core/runtime.h"

#include <omp.h>

#include "core/common.h"

namespace cnnkit {

void set_num_threads(int n) {
    CNN_CHECK_ARG(n >= 1, "set_num_threads: n must be >= 1, got ", n);
    omp_set_num_threads(n);
}

int get_num_threads() { return omp_get_max_threads(); }

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(_M_X64)
    static const bool ok = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }();
    return ok;
#else
    return false;
#endif
}

// AVX-512 Foundation, Byte/Word, Vector Length and Doubleword/Quadword: what the AVX-512 kernel
// set is compiled for. __builtin_cpu_supports also checks that the OS saves the zmm state.
bool cpu_has_avx512() {
#if defined(__x86_64__) || defined(_M_X64)
    static const bool ok = [] {
        __builtin_cpu_init();
        return cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq");
    }();
    return ok;
#else
    return false;
#endif
}

bool cpu_is_intel() {
#if defined(__x86_64__) || defined(_M_X64)
    static const bool ok = [] {
        __builtin_cpu_init();
        return __builtin_cpu_is("intel") != 0;
    }();
    return ok;
#else
    return false;
#endif
}

std::string cpu_features() {
    std::string s;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) s += "sse4.2 ";
    if (__builtin_cpu_supports("avx")) s += "avx ";
    if (__builtin_cpu_supports("avx2")) s += "avx2 ";
    if (__builtin_cpu_supports("fma")) s += "fma ";
    if (__builtin_cpu_supports("avx512f")) s += "avx512f ";
    if (__builtin_cpu_supports("avx512bw")) s += "avx512bw ";
    if (__builtin_cpu_supports("avx512vl")) s += "avx512vl ";
    if (__builtin_cpu_supports("avx512dq")) s += "avx512dq ";
#endif
    if (!s.empty()) s.pop_back();
    return s;
}

bool built_with_cuda() {
#ifdef CNNKIT_WITH_CUDA
    return true;
#else
    return false;
#endif
}

}  // namespace cnnkit
