// Single-precision GEMM on the CPU: C = alpha * op(A) * op(B) + beta * C, row-major.
// Own BLIS-style implementation (packed panels, AVX2/FMA micro-kernel picked at run time,
// portable fallback); no BLAS library.
#pragma once

#include <cstdint>

namespace cnnkit {
namespace cpu {

// op(A) is (M,K): A is (M,K) with row stride lda, or (K,M) when trans_a.
// op(B) is (K,N): B is (K,N) with row stride ldb, or (N,K) when trans_b.
// C is (M,N) with row stride ldc. beta == 0 means C is not read (may hold NaN).
// Deterministic: each C element sums over k in the same order whatever the thread count.
// Uses OpenMP threads (omp_get_max_threads()) when the problem is large enough; safe to call
// from inside a parallel region (then it runs single-threaded).
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);

// Which micro-kernel sgemm uses on this machine: "avx2-fma" or "generic".
const char* sgemm_kernel_name();

// Whether the AVX2/FMA micro-kernels are in use (CPU support, built with them, not forced off);
// the direct convolution kernels follow the same switch.
bool cpu_simd_enabled();

// Force the portable kernel (for tests comparing the two paths); false restores auto-select.
void sgemm_force_generic(bool force);

}  // namespace cpu
}  // namespace cnnkit
