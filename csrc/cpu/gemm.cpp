// Placeholder naive GEMM (replaced by the packed BLIS-style kernel).
#include "cpu/gemm.h"

namespace cnnkit {
namespace cpu {

static bool g_force_generic = false;

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
#pragma omp parallel for if (M * N * K > 100000)
    for (int64_t i = 0; i < M; ++i) {
        for (int64_t j = 0; j < N; ++j) {
            float acc = 0.f;
            for (int64_t k = 0; k < K; ++k) {
                float a = trans_a ? A[k * lda + i] : A[i * lda + k];
                float b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
                acc += a * b;
            }
            float c = beta == 0.f ? 0.f : beta * C[i * ldc + j];
            C[i * ldc + j] = alpha * acc + c;
        }
    }
}

const char* sgemm_kernel_name() { return "generic"; }
void sgemm_force_generic(bool force) { g_force_generic = force; }

}  // namespace cpu
}  // namespace cnnkit
