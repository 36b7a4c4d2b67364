// Single-precision GEMM on the CPU: C = alpha * op(A) * op(B) + beta * C, row-major.
// Own BLIS-style implementation (packed panels, AVX-512 or AVX2/FMA micro-kernel picked at run
// time by the kernel set, portable fallback); no BLAS library.
#pragma once

#include <cstdint>

namespace cnnkit {
namespace cpu {

// op(A) is (M,K): A is (M,K) with row stride lda, or (K,M) when trans_a.
// op(B) is (K,N): B is (K,N) with row stride ldb, or (N,K) when trans_b.
// C is (M,N) with row stride ldc. beta == 0 means C is not read (may hold NaN).
// bias, when not null, is (N): C[i][j] = (alpha * op(A).op(B) + beta * C)[i][j] + bias[j], the
// add fused in the write-back (with alpha = 1, the bits of a separate pass over C afterwards;
// otherwise the SIMD kernels may fuse alpha's multiply with the add).
// Deterministic: each C element sums over k in the same order whatever the thread count (within
// one kernel set; the sets differ in rounding). With 1-4 rows and B stored N x K (trans_b, not
// trans_a: a Linear layer at batch 1-4) C is computed as dot products straight from A and B,
// without packing; its rounding differs in the last bits from the tiled path's, so such rows
// can differ by an ulp from the same rows computed in a larger batch.
// Uses OpenMP threads (omp_get_max_threads()) when the problem is large enough; safe to call
// from inside a parallel region (then it runs single-threaded).
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc, const float* bias = nullptr);

// Which micro-kernel sgemm uses now: "avx512", "avx2-fma" or "generic" (cpu/kernel_set.h).
const char* sgemm_kernel_name();

// Whether a SIMD kernel set (AVX2 or AVX-512) is in use.
bool cpu_simd_enabled();

// Older switch: true forces the "generic" kernel set, false restores "auto" (kernel_set.h).
void sgemm_force_generic(bool force);

}  // namespace cpu
}  // namespace cnnkit
