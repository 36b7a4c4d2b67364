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

// Channel-vector tile (contract in conv_direct.h): 16 channels in two vectors x 6 pixels, 12
// accumulators; per tap two weight loads and six broadcasts for 12 FMAs, as the 6 x 16 column
// tile, but no wrap-around columns are computed. Outputs leave through an 8 x 8 transpose per
// vector: one masked store of the tile's pixels per channel where the pixels are consecutive
// in the output plane (as run_forward_kpix lays them out), scalar stores otherwise.
void fwd_kpix(int np, int rows, int64_t kc, const float* a, const float* x, const int32_t* xpix,
              const int32_t* off, float* c, const int32_t* cpix, int64_t ldc, const float* bias,
              bool relu) {
    constexpr int NP = kKpixPixels;
    const float* xb[NP];
#pragma GCC unroll 6
    for (int i = 0; i < NP; ++i) xb[i] = x + xpix[i < np ? i : 0];  // spare pixels: recomputed
    // Two named arrays, indexed only by unrolled constants: a runtime index anywhere (the
    // epilogue's vector number) sends all twelve accumulators to the stack in the tap loop.
    __m256 lo[NP], hi[NP];
#pragma GCC unroll 6
    for (int i = 0; i < NP; ++i) lo[i] = hi[i] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const int64_t o = off[k];
        const __m256 w0 = _mm256_loadu_ps(a + k * 16);
        const __m256 w1 = _mm256_loadu_ps(a + k * 16 + 8);
#pragma GCC unroll 6
        for (int i = 0; i < NP; ++i) {
            const __m256 xv = _mm256_broadcast_ss(xb[i] + o);
            lo[i] = _mm256_fmadd_ps(xv, w0, lo[i]);
            hi[i] = _mm256_fmadd_ps(xv, w1, hi[i]);
        }
    }
    bool consecutive = true;
    for (int i = 1; i < np; ++i) consecutive = consecutive && cpix[i] == cpix[0] + i;
    const __m256i mask =
        _mm256_cmpgt_epi32(_mm256_set1_epi32(np), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 zero = _mm256_setzero_ps();
    // Channels ch0 .. ch0 + 7 of the tile (acc[i] = pixel i): bias (one add), ReLU (max(., 0),
    // as the 6 x 16 tile), an 8 x 8 transpose, then a row of pixels per channel.
    auto store8 = [&](int ch0, const __m256* acc) {
        const int nch = rows - ch0 < 8 ? rows - ch0 : 8;
        alignas(32) float bb[8] = {};
        if (bias)
            for (int r = 0; r < nch; ++r) bb[r] = bias[ch0 + r];
        const __m256 bv = _mm256_load_ps(bb);
        __m256 r[8];
#pragma GCC unroll 6
        for (int i = 0; i < NP; ++i) {
            __m256 t = acc[i];
            if (bias) t = _mm256_add_ps(t, bv);
            if (relu) t = _mm256_max_ps(t, zero);
            r[i] = t;
        }
        r[6] = r[7] = zero;
        avx2::transpose8(r);  // r[ch] = channel ch0 + ch at pixels 0..7
        float* cv = c + int64_t(ch0) * ldc;
        if (consecutive) {
            for (int ch = 0; ch < nch; ++ch)
                _mm256_maskstore_ps(cv + ch * ldc + cpix[0], mask, r[ch]);
        } else {
            alignas(32) float t[8];
            for (int ch = 0; ch < nch; ++ch) {
                _mm256_store_ps(t, r[ch]);
                for (int i = 0; i < np; ++i) cv[ch * ldc + cpix[i]] = t[i];
            }
        }
    };
    store8(0, lo);
    if (rows > 8) store8(8, hi);
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
void fwd_kpix(int, int, int64_t, const float*, const float*, const int32_t*, const int32_t*,
              float*, const int32_t*, int64_t, const float*, bool) {}
void bias_act_row(float*, const float*, int64_t, float, bool) {}
void copy_rows(float*, int64_t, const float*, int64_t, int64_t, int64_t) {}
void split2(float*, float*, const float*, int64_t) {}

#endif

}  // namespace conv_avx2
}  // namespace cpu
}  // namespace cnnkit
