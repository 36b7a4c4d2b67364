// AVX2/FMA parts of the single-precision GEMM: the 6x16 micro-kernel (and its 1-5 row forms) and
// the packing routines (same panel layouts and contracts as the portable ones in gemm.cpp).
// Compiled with -mavx2 -mfma; gemm.cpp only calls in here after cpu_has_avx2_fma().
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "cpu/avx2_util.h"
#define CNNKIT_GEMM_HAVE_AVX2 1
#endif

namespace cnnkit {
namespace cpu {
namespace gemm_avx2 {

// Whether this file was built with AVX2/FMA (CMake adds the flags on x86-64 only).
bool compiled() {
#ifdef CNNKIT_GEMM_HAVE_AVX2
    return true;
#else
    return false;
#endif
}

#ifdef CNNKIT_GEMM_HAVE_AVX2

constexpr int kMR = 6;   // micro-tile rows; must match gemm.cpp
constexpr int kNR = 16;  // micro-tile columns; must match gemm.cpp

// ---- micro-kernel ---------------------------------------------------------------------------

// c[0:M, 0:16] = alpha * (a-panel . b-panel) + beta * c; beta == 0 means c is not read.
// a: kc x 6 (6 floats per k, rows past M ignored); b: kc rows of 16 floats, ldb apart (16 when
// packed). Fewer rows compute only those rows, with the same per-element arithmetic.
// bias (16 floats) is added after alpha/beta when not null.
template <int M>
void ukernel_mx16(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                  int64_t ldc, float alpha, float beta, const float* bias) {
    // Two 1-D accumulator arrays with fully unrolled loops stay in registers (as in the direct
    // conv's fwd_tile); a 2-D array did not.
    __m256 acc0[M], acc1[M];
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) {
        acc0[i] = acc1[i] = _mm256_setzero_ps();
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + kNR - 1), _MM_HINT_T0);
    }
    // A plain loop: GCC schedules it well (12 FMAs to 8 loads for M = 6, no spills); manual
    // unrolling measured slower.
    for (int64_t k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
        for (int i = 0; i < M; ++i) {
            const __m256 av = _mm256_broadcast_ss(a + i);
            acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
        }
        a += kMR;
        b += ldb;
    }

    const __m256 va = _mm256_set1_ps(alpha);
    const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) {
        float* ci = c + i * ldc;
        __m256 r0 = acc0[i], r1 = acc1[i];
        if (beta != 0.f) {
            r0 = _mm256_fmadd_ps(va, r0, _mm256_mul_ps(vb, _mm256_loadu_ps(ci)));
            r1 = _mm256_fmadd_ps(va, r1, _mm256_mul_ps(vb, _mm256_loadu_ps(ci + 8)));
        } else {
            r0 = _mm256_mul_ps(va, r0);
            r1 = _mm256_mul_ps(va, r1);
        }
        if (bias) {
            r0 = _mm256_add_ps(r0, _mm256_loadu_ps(bias));
            r1 = _mm256_add_ps(r1, _mm256_loadu_ps(bias + 8));
        }
        _mm256_storeu_ps(ci, r0);
        _mm256_storeu_ps(ci + 8, r1);
    }
}

// Rows m in [1, 6] of a full-width tile (n is always 16: gemm.cpp runs partial tiles on a
// scratch tile).
void ukernel_rows(int m, int, int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                  int64_t ldc, float alpha, float beta, const float* bias) {
    avx2::dispatch_rows6(m, [&](auto rows) {
        ukernel_mx16<decltype(rows)::value>(kc, a, b, ldb, c, ldc, alpha, beta, bias);
    });
}

// ---- packing --------------------------------------------------------------------------------

// Mask for _mm256_maskload_ps: lanes [0, n) set (n clamped to [0, 8]); masked-off lanes read
// as zero and are never touched in memory.
inline __m256i lane_mask(int64_t n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 0 ? 0 : n > 8 ? 8 : n)),
                              idx);
}

// Gathers `rows` (<= 8) strided rows, depth [0, kc), into dst[k * dst_stride + 0..width):
// dst column i = source row i, columns rows..width are zero. width is 6 or 8.
inline void pack_rows_transposed(const float* src, int64_t ld, int rows, int64_t kc, float* dst,
                                 int64_t dst_stride, int width) {
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i)
            r[i] = i < rows ? _mm256_loadu_ps(src + i * ld + k) : _mm256_setzero_ps();
        avx2::transpose8(r);
        for (int t = 0; t < 8; ++t) {
            float* d = dst + (k + t) * dst_stride;
            if (width == 8) {
                _mm256_storeu_ps(d, r[t]);
            } else {
                _mm_storeu_ps(d, _mm256_castps256_ps128(r[t]));
                _mm_storel_epi64(reinterpret_cast<__m128i*>(d + 4),
                                 _mm_castps_si128(_mm256_extractf128_ps(r[t], 1)));
            }
        }
    }
    for (; k < kc; ++k)
        for (int i = 0; i < width; ++i) dst[k * dst_stride + i] = i < rows ? src[i * ld + k] : 0.f;
}

// Rows [i0, i0+mc) x depth [k0, k0+kc) of op(A) into MR-row panels (kc x MR each, k-major);
// rows past mc are zero. Panel p starts at out + p * MR * kc.
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
            int64_t kc, float* out) {
    if (!trans) {
        for (int64_t ip = 0; ip < mc; ip += kMR) {
            const int rows = static_cast<int>(mc - ip < kMR ? mc - ip : kMR);
            pack_rows_transposed(A + (i0 + ip) * lda + k0, lda, rows, kc, out + ip * kc, kMR,
                                 kMR);
        }
        return;
    }
    // op(A) rows are contiguous in each A row k: walk k outermost so each line is read once.
    const int64_t full = mc / kMR * kMR;
    const __m256i tail_mask = lane_mask(mc - full);
    for (int64_t k = 0; k < kc; ++k) {
        const float* src = A + (k0 + k) * lda + i0;
        float* dst = out + k * kMR;
        for (int64_t ip = 0; ip < full; ip += kMR) {
            float* d = dst + ip * kc;
            _mm_storeu_ps(d, _mm_loadu_ps(src + ip));
            const __m128i tail = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + ip + 4));
            _mm_storel_epi64(reinterpret_cast<__m128i*>(d + 4), tail);
        }
        if (full < mc) {
            const __m256 r = _mm256_maskload_ps(src + full, tail_mask);
            float* d = dst + full * kc;
            _mm_storeu_ps(d, _mm256_castps256_ps128(r));
            _mm_storel_epi64(reinterpret_cast<__m128i*>(d + 4),
                             _mm_castps_si128(_mm256_extractf128_ps(r, 1)));
        }
    }
}

// Depth [k0, k0+kc) x columns [j0, j0+nc) of op(B) into NR-column panels (kc x NR each);
// columns past nc are zero. Panel p starts at out + p * NR * kc.
void pack_b(bool trans, const float* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0,
            int64_t kc, float* out) {
    if (trans) {
        for (int64_t jp = 0; jp < nc; jp += kNR) {
            const int64_t n = nc - jp < kNR ? nc - jp : kNR;
            const float* src = B + (j0 + jp) * ldb + k0;
            float* dst = out + jp * kc;
            // Two halves of 8 B rows each (op(B) columns jp..jp+7 and jp+8..jp+15).
            const int lo = static_cast<int>(n < 8 ? n : 8), hi = static_cast<int>(n - lo);
            pack_rows_transposed(src, ldb, lo, kc, dst, kNR, 8);
            pack_rows_transposed(hi > 0 ? src + 8 * ldb : src, ldb, hi, kc, dst + 8, kNR, 8);
        }
        return;
    }
    const int64_t full = nc / kNR * kNR;
    const __m256i tail_lo = lane_mask(nc - full), tail_hi = lane_mask(nc - full - 8);
    for (int64_t k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * ldb + j0;
        float* dst = out + k * kNR;
        for (int64_t jp = 0; jp < full; jp += kNR) {
            float* d = dst + jp * kc;
            _mm256_storeu_ps(d, _mm256_loadu_ps(src + jp));
            _mm256_storeu_ps(d + 8, _mm256_loadu_ps(src + jp + 8));
        }
        if (full < nc) {
            float* d = dst + full * kc;
            _mm256_storeu_ps(d, _mm256_maskload_ps(src + full, tail_lo));
            _mm256_storeu_ps(d + 8, _mm256_maskload_ps(src + full + 8, tail_hi));
        }
    }
}

// ---- skinny A . B^T (a few rows of A, B stored N x K) -------------------------------------

namespace {

inline float epilogue(float d, float alpha, float beta, const float* c, const float* bias,
                      int64_t j) {
    float r = alpha * d;
    if (beta != 0.f) r += beta * *c;
    if (bias) r += bias[j];
    return r;
}

// The 8 lanes summed by a fixed tree: (0+4, 1+5, 2+6, 3+7), then pairs, then the last two.
inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline __m256i tail_mask(int64_t r) {
    alignas(32) static const int32_t lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                   0,  0,  0,  0,  0,  0,  0,  0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 8 - r));
}

template <int M, int NB>
void dots(int64_t j, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc, const float* bias) {
    __m256 acc[M * NB];
#pragma GCC unroll 16
    for (int t = 0; t < M * NB; ++t) acc[t] = _mm256_setzero_ps();
    const float* b = B + j * ldb;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 bv[NB];
#pragma GCC unroll 4
        for (int q = 0; q < NB; ++q) bv[q] = _mm256_loadu_ps(b + q * ldb + k);
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
            const __m256 av = _mm256_loadu_ps(A + i * lda + k);
#pragma GCC unroll 4
            for (int q = 0; q < NB; ++q) acc[i * NB + q] = _mm256_fmadd_ps(av, bv[q], acc[i * NB + q]);
        }
    }
    if (k < K) {
        const __m256i mk = tail_mask(K - k);
        __m256 bv[NB];
#pragma GCC unroll 4
        for (int q = 0; q < NB; ++q) bv[q] = _mm256_maskload_ps(b + q * ldb + k, mk);
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
            const __m256 av = _mm256_maskload_ps(A + i * lda + k, mk);
#pragma GCC unroll 4
            for (int q = 0; q < NB; ++q) acc[i * NB + q] = _mm256_fmadd_ps(av, bv[q], acc[i * NB + q]);
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
        for (int q = 0; q < NB; ++q) {
            float* c = C + i * ldc + j + q;
            *c = epilogue(hsum8(acc[i * NB + q]), alpha, beta, c, bias, j + q);
        }
}

template <int M>
void rows_nt_m(int64_t j0, int64_t j1, int64_t K, float alpha, const float* A, int64_t lda,
               const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
               const float* bias) {
    int64_t j = j0;
    for (; j + 2 <= j1; j += 2) dots<M, 2>(j, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
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

#else  // !CNNKIT_GEMM_HAVE_AVX2: never called (compiled() is false), but must link.

void ukernel_rows(int, int, int64_t, const float*, const float*, int64_t, float*, int64_t, float,
                  float, const float*) {}
void pack_a(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
void pack_b(bool, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*) {}
void rows_nt(int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*, int64_t,
             float, float*, int64_t, const float*) {}

#endif

}  // namespace gemm_avx2
}  // namespace cpu
}  // namespace cnnkit
