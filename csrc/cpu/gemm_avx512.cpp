// AVX-512 parts of the single-precision GEMM: a 14x32 micro-kernel (28 zmm accumulators, with
// 1-13 row forms and masked stores for partial tiles) and its packing routines (the panel layouts
// of gemm.cpp with MR = 14, NR = 32). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq
// -mfma; gemm.cpp only calls in here when the kernel set is "avx512" (after the CPUID check).
#include <cstdint>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__)
#include <immintrin.h>

#include "cpu/avx2_util.h"
#define CNNKIT_GEMM_HAVE_AVX512 1
#endif

// Tile shape (rows x 16*NV columns). 14x32 measured best of 14x32, 12x32, 8x48 and 6x64 on
// Zen 5 (docs/performance.md); the others stay selectable at build time for re-measuring.
#ifndef CNNKIT_GEMM512_MR
#define CNNKIT_GEMM512_MR 14
#endif
#ifndef CNNKIT_GEMM512_NV
#define CNNKIT_GEMM512_NV 2
#endif

namespace cnnkit {
namespace cpu {
namespace gemm_avx512 {

constexpr int kMR = CNNKIT_GEMM512_MR;
constexpr int kNV = CNNKIT_GEMM512_NV;
constexpr int kNR = 16 * kNV;
static_assert(kMR >= 1 && kMR <= 16 && kNV >= 1 && kNV <= 4 && kMR * kNV <= 28,
              "the tile's accumulators must fit in the 32 zmm registers");

bool compiled() {
#ifdef CNNKIT_GEMM_HAVE_AVX512
    return true;
#else
    return false;
#endif
}

int mr() { return kMR; }
int nr() { return kNR; }

#ifdef CNNKIT_GEMM_HAVE_AVX512

namespace {

// ---- micro-kernel ---------------------------------------------------------------------------

// Lanes [0, n - 16v) of vector v of a row (n clamped to the vector).
inline __mmask16 col_mask(int n, int v) {
    const int r = n - 16 * v;
    return r >= 16 ? __mmask16(0xFFFF) : r <= 0 ? __mmask16(0) : __mmask16((1u << r) - 1);
}

// c[0:M, 0:n] = alpha * (a-panel . b-panel) + beta * c (+ bias[0:n]); beta == 0: c not read.
// a: kc x MR (MR floats per k, rows past M ignored); b: kc rows of NR floats, ldb apart (NR when
// packed; columns past n are zero or ignored). Columns past n are neither read nor written.
template <int M>
void ukernel_m(int n, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
               int64_t ldc, float alpha, float beta, const float* bias) {
    // One 1-D accumulator array, loops fully unrolled: it stays in registers.
    __m512 acc[M * kNV];
#pragma GCC unroll 28
    for (int i = 0; i < M * kNV; ++i) acc[i] = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    for (int64_t k = 0; k < kc; ++k) {
        __m512 bv[kNV];
#pragma GCC unroll 4
        for (int v = 0; v < kNV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i) {
            const __m512 av = _mm512_set1_ps(a[i]);
#pragma GCC unroll 4
            for (int v = 0; v < kNV; ++v)
                acc[i * kNV + v] = _mm512_fmadd_ps(av, bv[v], acc[i * kNV + v]);
        }
        a += kMR;
        b += ldb;
    }

    __mmask16 mk[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v) mk[v] = col_mask(n, v);
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    __m512 bs[kNV];
#pragma GCC unroll 4
    for (int v = 0; v < kNV; ++v)
        bs[v] = bias ? _mm512_maskz_loadu_ps(mk[v], bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
        float* ci = c + i * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < kNV; ++v) {
            __m512 r = acc[i * kNV + v];
            if (beta != 0.f)
                r = _mm512_fmadd_ps(va, r,
                                    _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(mk[v], ci + 16 * v)));
            else
                r = _mm512_mul_ps(va, r);
            if (bias) r = _mm512_add_ps(r, bs[v]);
            _mm512_mask_storeu_ps(ci + 16 * v, mk[v], r);
        }
    }
}

// Calls ukernel_m<m> for m in [1, M].
template <int M>
inline void dispatch(int m, int n, int64_t kc, const float* a, const float* b, int64_t ldb,
                     float* c, int64_t ldc, float alpha, float beta, const float* bias) {
    if constexpr (M == 1) {
        ukernel_m<1>(n, kc, a, b, ldb, c, ldc, alpha, beta, bias);
    } else {
        if (m >= M) return ukernel_m<M>(n, kc, a, b, ldb, c, ldc, alpha, beta, bias);
        dispatch<M - 1>(m, n, kc, a, b, ldb, c, ldc, alpha, beta, bias);
    }
}

// ---- packing --------------------------------------------------------------------------------

inline __mmask8 mask8(int64_t n) {
    return n >= 8 ? __mmask8(0xFF) : n <= 0 ? __mmask8(0) : __mmask8((1u << n) - 1);
}
inline __mmask16 mask16(int64_t n) {
    return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// Gathers `rows` (<= 8) strided source rows, depth [0, kc), into dst[k * dst_stride + 0..width):
// dst column i = source row i; columns rows..width are zero (width <= 8). 8x8 register
// transposes, masked loads for the last kc % 8 and masked stores for width < 8.
inline void pack_rows_transposed(const float* src, int64_t ld, int rows, int64_t kc, float* dst,
                                 int64_t dst_stride, int width) {
    const __mmask8 wmask = mask8(width);
    for (int64_t k = 0; k < kc; k += 8) {
        const __mmask8 kmask = mask8(kc - k);
        __m256 r[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i)
            r[i] = i < rows ? _mm256_maskz_loadu_ps(kmask, src + i * ld + k) : _mm256_setzero_ps();
        avx2::transpose8(r);
        const int64_t kn = kc - k < 8 ? kc - k : 8;
        for (int64_t t = 0; t < kn; ++t) _mm256_mask_storeu_ps(dst + (k + t) * dst_stride, wmask, r[t]);
    }
}

}  // namespace

// Rows m in [1, MR], columns n in [1, NR] of a tile.
void ukernel_rows(int m, int n, int64_t kc, const float* a, const float* b, int64_t ldb,
                  float* c, int64_t ldc, float alpha, float beta, const float* bias) {
    dispatch<kMR>(m, n, kc, a, b, ldb, c, ldc, alpha, beta, bias);
}

// Rows [i0, i0+mc) x depth [k0, k0+kc) of op(A) into MR-row panels (kc x MR each, k-major);
// rows past mc are zero. Panel p starts at out + p * MR * kc.
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
            int64_t kc, float* out) {
    if (!trans) {
        for (int64_t ip = 0; ip < mc; ip += kMR) {
            const int64_t m = mc - ip < kMR ? mc - ip : kMR;
            for (int g = 0; g < kMR; g += 8) {
                const int rows = static_cast<int>(m - g < 0 ? 0 : m - g < 8 ? m - g : 8);
                pack_rows_transposed(A + (i0 + ip + (rows > 0 ? g : 0)) * lda + k0, lda, rows, kc,
                                     out + ip * kc + g, kMR, kMR - g < 8 ? kMR - g : 8);
            }
        }
        return;
    }
    // op(A) rows are contiguous in each A row k: walk k outermost so each line is read once.
    const __mmask16 store = mask16(kMR);
    for (int64_t k = 0; k < kc; ++k) {
        const float* src = A + (k0 + k) * lda + i0;
        float* dst = out + k * kMR;
        for (int64_t ip = 0; ip < mc; ip += kMR)
            _mm512_mask_storeu_ps(dst + ip * kc, store,
                                  _mm512_maskz_loadu_ps(mask16(mc - ip < kMR ? mc - ip : kMR),
                                                        src + ip));
    }
}

// Depth [k0, k0+kc) x columns [j0, j0+nc) of op(B) into NR-column panels (kc x NR each);
// columns past nc are zero. Panel p starts at out + p * NR * kc.
void pack_b(bool trans, const float* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0,
            int64_t kc, float* out) {
    if (trans) {
        for (int64_t jp = 0; jp < nc; jp += kNR) {
            const int64_t n = nc - jp < kNR ? nc - jp : kNR;
            for (int g = 0; g < kNR; g += 8) {
                const int rows = static_cast<int>(n - g < 0 ? 0 : n - g < 8 ? n - g : 8);
                pack_rows_transposed(B + (j0 + jp + (rows > 0 ? g : 0)) * ldb + k0, ldb, rows,
                                     kc, out + jp * kc + g, kNR, 8);
            }
        }
        return;
    }
    const int64_t full = nc / kNR * kNR;
    for (int64_t k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * ldb + j0;
        float* dst = out + k * kNR;
        for (int64_t jp = 0; jp < full; jp += kNR) {
            float* d = dst + jp * kc;
#pragma GCC unroll 4
            for (int v = 0; v < kNV; ++v)
                _mm512_storeu_ps(d + 16 * v, _mm512_loadu_ps(src + jp + 16 * v));
        }
        if (full < nc) {
            float* d = dst + full * kc;
#pragma GCC unroll 4
            for (int v = 0; v < kNV; ++v)
                _mm512_storeu_ps(d + 16 * v,
                                 _mm512_maskz_loadu_ps(mask16(nc - full - 16 * v),
                                                       src + full + 16 * v));
        }
    }
}

// ---- skinny A . B^T (a few rows of A, B stored N x K) -------------------------------------

namespace {

// c = alpha * d (+ beta * c) (+ bias), the write-back of every GEMM path.
inline float epilogue(float d, float alpha, float beta, const float* c, const float* bias,
                      int64_t j) {
    float r = alpha * d;
    if (beta != 0.f) r += beta * *c;
    if (bias) r += bias[j];
    return r;
}

// The 16 lanes summed by a fixed tree (lanes i and i + 8, then i + 4, i + 2, i + 1), from memory:
// once per dot product, and free of GCC 12's -Wuninitialized in the shuffle intrinsics.
inline float hsum16(__m512 v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; ++i) t[i] += t[i + w];
    return t[0];
}

// Rows 0..M-1 of A against NB rows of B (j .. j+NB-1): M x NB dot products of length K, each
// summed in 16 lanes over K in order, then across the lanes by a fixed tree.
template <int M, int NB>
void dots(int64_t j, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc, const float* bias) {
    __m512 acc[M * NB];
#pragma GCC unroll 16
    for (int t = 0; t < M * NB; ++t) acc[t] = _mm512_setzero_ps();
    const float* b = B + j * ldb;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 bv[NB];
#pragma GCC unroll 4
        for (int q = 0; q < NB; ++q) bv[q] = _mm512_loadu_ps(b + q * ldb + k);
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
            const __m512 av = _mm512_loadu_ps(A + i * lda + k);
#pragma GCC unroll 4
            for (int q = 0; q < NB; ++q) acc[i * NB + q] = _mm512_fmadd_ps(av, bv[q], acc[i * NB + q]);
        }
    }
    if (k < K) {
        const __mmask16 mk = static_cast<__mmask16>((1u << (K - k)) - 1);
        __m512 bv[NB];
#pragma GCC unroll 4
        for (int q = 0; q < NB; ++q) bv[q] = _mm512_maskz_loadu_ps(mk, b + q * ldb + k);
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
            const __m512 av = _mm512_maskz_loadu_ps(mk, A + i * lda + k);
#pragma GCC unroll 4
            for (int q = 0; q < NB; ++q) acc[i * NB + q] = _mm512_fmadd_ps(av, bv[q], acc[i * NB + q]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
        for (int q = 0; q < NB; ++q) {
            float* c = C + i * ldc + j + q;
            *c = epilogue(hsum16(acc[i * NB + q]), alpha, beta, c, bias, j + q);
        }
}

template <int M>
void rows_nt_m(int64_t j0, int64_t j1, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
               const float* bias) {
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) dots<M, 4>(j, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
    for (; j < j1; ++j) dots<M, 1>(j, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
}

}  // namespace

void rows_nt(int m, int64_t j0, int64_t j1, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const float* bias) {
    switch (m) {
        case 1: return rows_nt_m<1>(j0, j1, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
        case 2: return rows_nt_m<2>(j0, j1, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
        case 3: return rows_nt_m<3>(j0, j1, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
        default: return rows_nt_m<4>(j0, j1, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
    }
}

#else  // !CNNKIT_GEMM_HAVE_AVX512: never called (compiled() is false), but must link.

void ukernel_rows(int, int, int64_t, const float*, const float*, int64_t, float*, int64_t, float,
                  float, const float*) {}
void pack_a(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
void pack_b(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
void rows_nt(int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
             float, float*, int64_t, const float*) {}

#endif

}  // namespace gemm_avx512
}  // namespace cpu
}  // namespace cnnkit
