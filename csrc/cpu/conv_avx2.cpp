// AVX2/FMA micro-kernels of the direct convolution (contracts in conv_direct.h). Compiled with
// -mavx2 -mfma; conv_direct.cpp only calls in here after cpu_has_avx2_fma().
#include <cstdint>

#include "cpu/conv_direct.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "cpu/avx2_util.h"
#define CNNKIT_CONV_HAVE_AVX2 1
#endif

namespace cnnkit {
namespace cpu {
namespace conv_avx2 {

bool compiled() {
#ifdef CNNKIT_CONV_HAVE_AVX2
    return true;
#else
    return false;
#endif
}

#ifdef CNNKIT_CONV_HAVE_AVX2

// M (<= 6) output channels x 16 output columns; B row k is the 16 floats at x + off[k]. The
// A panel keeps its 6-float stride whatever M is (rows past M are never read).
template <int M>
void fwd_tile(int64_t kc, const float* a, const float* x, const int32_t* off, float* c,
              int64_t ldc, const float* bias, bool relu) {
    __m256 acc0[M], acc1[M];
    for (int i = 0; i < M; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const float* b = x + off[k];
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
        for (int i = 0; i < M; ++i) {
            const __m256 av = _mm256_broadcast_ss(a + i);
            acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
            acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
        }
        a += 6;
    }
    // Same arithmetic as the portable epilogue: one add for the bias, then max(v, 0), which
    // (like v > 0 ? v : 0) maps NaN and -0 to +0.
    const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) {
        __m256 r0 = acc0[i], r1 = acc1[i];
        if (bias) {
            const __m256 bv = _mm256_set1_ps(bias[i]);
            r0 = _mm256_add_ps(r0, bv);
            r1 = _mm256_add_ps(r1, bv);
        }
        if (relu) {
            r0 = _mm256_max_ps(r0, zero);
            r1 = _mm256_max_ps(r1, zero);
        }
        _mm256_storeu_ps(c + i * ldc, r0);
        _mm256_storeu_ps(c + i * ldc + 8, r1);
    }
}

void fwd_6x16(int rows, int64_t kc, const float* a, const float* x, const int32_t* off,
              float* c, int64_t ldc, const float* bias, bool relu) {
    avx2::dispatch_rows6(rows, [&](auto m) {
        fwd_tile<decltype(m)::value>(kc, a, x, off, c, ldc, bias, relu);
    });
}

// 6 taps (rows of dw^T) x 8*NV output channels; the A element of row i at depth j is
// x[off[i] + j], B is a (kc, 8*NV) slice of dy^T, ldb apart.
template <int NV>
void wgt_tile(int64_t kc, const float* x, const int32_t* off, const float* b, int64_t ldb,
              float* c, int64_t ldc) {
    const float* xi[6];
    __m256 acc[6][NV];
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
        xi[i] = x + off[i];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_loadu_ps(c + i * ldc + 8 * v);
    }
    for (int64_t j = 0; j < kc; ++j) {
        __m256 bv[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 6
        for (int i = 0; i < 6; ++i) {
            const __m256 av = _mm256_broadcast_ss(xi[i] + j);
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
        }
        b += ldb;
    }
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) _mm256_storeu_ps(c + i * ldc + 8 * v, acc[i][v]);
}

void wgt_6x16(int cols, int64_t kc, const float* x, const int32_t* off, const float* b,
              int64_t ldb, float* c, int64_t ldc) {
    if (cols == 8) return wgt_tile<1>(kc, x, off, b, ldb, c, ldc);
    wgt_tile<2>(kc, x, off, b, ldb, c, ldc);
}

// T taps x NK channels of wgt_lanes on one half (8 lanes, at +8h) of the 16: the AVX-512
// kernel's per-lane FMAs in the same order, so the same bits.
template <int NK, int T>
void lanes_block(int h, int64_t nv, const float* x, const int32_t* off, const float* dy,
                 int64_t ldd, float* acc) {
    const float* xt[T];
    __m256 a[T * NK];
    x += 8 * h;
    dy += 8 * h;
    acc += 8 * h;
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        xt[t] = x + off[t];
#pragma GCC unroll 8
        for (int k = 0; k < NK; ++k) a[t * NK + k] = _mm256_loadu_ps(acc + (t * NK + k) * 16);
    }
    for (int64_t v = 0; v < nv; ++v) {
        __m256 xv[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(xt[t] + 16 * v);
#pragma GCC unroll 8
        for (int k = 0; k < NK; ++k) {
            const __m256 d = _mm256_loadu_ps(dy + k * ldd + 16 * v);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) a[t * NK + k] = _mm256_fmadd_ps(xv[t], d, a[t * NK + k]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
        for (int k = 0; k < NK; ++k) _mm256_storeu_ps(acc + (t * NK + k) * 16, a[t * NK + k]);
}

// All nt taps of NK channels, both halves, TB taps a block (TB * NK <= 12 accumulators).
template <int NK, int TB>
void lanes_taps(int64_t nt, int64_t nv, const float* x, const int32_t* off, const float* dy,
                int64_t ldd, float* acc) {
    for (int h = 0; h < 2; ++h) {
        int64_t i = 0;
        for (; i + TB <= nt; i += TB)
            lanes_block<NK, TB>(h, nv, x, off + i, dy, ldd, acc + i * NK * 16);
        for (; i < nt; ++i) lanes_block<NK, 1>(h, nv, x, off + i, dy, ldd, acc + i * NK * 16);
    }
}

void wgt_lanes(int nk, int64_t nt, int64_t nv, const float* x, const int32_t* off,
               const float* dy, int64_t ldd, float* acc) {
    switch (nk) {
        case 1: return lanes_taps<1, 8>(nt, nv, x, off, dy, ldd, acc);
        case 2: return lanes_taps<2, 6>(nt, nv, x, off, dy, ldd, acc);
        case 3: return lanes_taps<3, 4>(nt, nv, x, off, dy, ldd, acc);
        case 4: return lanes_taps<4, 3>(nt, nv, x, off, dy, ldd, acc);
        case 5: return lanes_taps<5, 2>(nt, nv, x, off, dy, ldd, acc);
        case 6: return lanes_taps<6, 2>(nt, nv, x, off, dy, ldd, acc);
        case 7: return lanes_taps<7, 1>(nt, nv, x, off, dy, ldd, acc);
        default: return lanes_taps<8, 1>(nt, nv, x, off, dy, ldd, acc);
    }
}

// dst[q * ld_dst + k] = src[k * ld_src + q] for k < rows, q < cols, in 8x8 register blocks;
// columns rows..round_up(rows, 8) of dst are set to zero.
void transpose(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows,
               int64_t cols) {
    int64_t k0 = 0;
    for (; k0 + 8 <= rows; k0 += 8) {
        int64_t q0 = 0;
        for (; q0 + 8 <= cols; q0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + (k0 + i) * ld_src + q0);
            avx2::transpose8(r);
            for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + (q0 + t) * ld_dst + k0, r[t]);
        }
        for (; q0 < cols; ++q0)
            for (int64_t k = k0; k < k0 + 8; ++k) dst[q0 * ld_dst + k] = src[k * ld_src + q0];
    }
    if (k0 == rows) return;
    // Last rows % 8 rows: zero registers stand in for the missing rows, so dst columns
    // rows..k0+8 are written as zeros (the caller's row stride leaves room for them).
    const int tail = static_cast<int>(rows - k0);
    int64_t q0 = 0;
    for (; q0 + 8 <= cols; q0 += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i)
            r[i] = i < tail ? _mm256_loadu_ps(src + (k0 + i) * ld_src + q0) : _mm256_setzero_ps();
        avx2::transpose8(r);
        for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + (q0 + t) * ld_dst + k0, r[t]);
    }
    for (; q0 < cols; ++q0)
        for (int64_t k = k0; k < k0 + 8; ++k)
            dst[q0 * ld_dst + k] = k < rows ? src[k * ld_src + q0] : 0.f;
}

void bias_act_row(float* dst, const float* src, int64_t n, float b, bool relu) {
    const __m256 bv = _mm256_set1_ps(b), zero = _mm256_setzero_ps();
    int64_t q = 0;
    if (relu) {
        for (; q + 8 <= n; q += 8)
            _mm256_storeu_ps(dst + q, _mm256_max_ps(_mm256_add_ps(_mm256_loadu_ps(src + q), bv),
                                                    zero));
    } else {
        for (; q + 8 <= n; q += 8)
            _mm256_storeu_ps(dst + q, _mm256_add_ps(_mm256_loadu_ps(src + q), bv));
    }
    for (; q < n; ++q) {
        const float v = src[q] + b;
        dst[q] = !relu ? v : v > 0.f ? v : 0.f;
    }
}

void copy_rows(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; ++r, dst += ldd, src += lds) {
        int64_t q = 0;
        for (; q + 8 <= n; q += 8) _mm256_storeu_ps(dst + q, _mm256_loadu_ps(src + q));
        if (q + 4 <= n) {
            _mm_storeu_ps(dst + q, _mm_loadu_ps(src + q));
            q += 4;
        }
        // at most 3 left: spelled out, so that the compiler does not make it a memcpy call
        if (q < n) dst[q] = src[q];
        if (q + 1 < n) dst[q + 1] = src[q + 1];
        if (q + 2 < n) dst[q + 2] = src[q + 2];
    }
}

void split2(float* even, float* odd, const float* src, int64_t half) {
    int64_t j = 0;
    for (; j + 8 <= half; j += 8) {
        const __m256 a = _mm256_loadu_ps(src + 2 * j), b = _mm256_loadu_ps(src + 2 * j + 8);
        // shuffle_ps picks within 128-bit lanes: [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit
        // quarters reordered to [a0 a2 a4 a6 b0 b2 b4 b6]
        if (even)
            _mm256_storeu_ps(even + j, _mm256_castpd_ps(_mm256_permute4x64_pd(
                _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8)));
        if (odd)
            _mm256_storeu_ps(odd + j, _mm256_castpd_ps(_mm256_permute4x64_pd(
                _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8)));
    }
    for (; j < half; ++j) {
        if (even) even[j] = src[2 * j];
        if (odd) odd[j] = src[2 * j + 1];
    }
}

#else  // never called (compiled() is false), but must link

void fwd_6x16(int, int64_t, const float*, const float*, const int32_t*, float*, int64_t,
              const float*, bool) {}
void wgt_6x16(int, int64_t, const float*, const int32_t*, const float*, int64_t, float*,
              int64_t) {}
void transpose(float*, int64_t, const float*, int64_t, int64_t, int64_t) {}
void wgt_lanes(int, int64_t, int64_t, const float*, const int32_t*, const float*, int64_t,
               float*) {}
void bias_act_row(float*, const float*, int64_t, float, bool) {}
void copy_rows(float*, int64_t, const float*, int64_t, int64_t, int64_t) {}
void split2(float*, float*, const float*, int64_t) {}

#endif

}  // namespace conv_avx2
}  // namespace cpu
}  // namespace cnnkit
