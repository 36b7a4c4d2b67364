// AVX-512 micro-kernels of the direct convolution (contracts in conv_direct.h): forward and
// backward-input tiles of 12 output channels x 32 output columns (24 zmm accumulators, the last
// columns of a row stored with a mask), weight-gradient tiles of 12 taps x 32 (or 16, 8)
// output channels. Per element they perform the AVX2 kernels' operations in the same order (one
// FMA per tap or column, then bias and ReLU), so the two sets give the same bits. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma; conv_direct.cpp only
// calls in here when the kernel set is "avx512".
#include <algorithm>
#include <cstdint>

#include "cpu/conv_direct.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__)
#include <immintrin.h>
#define CNNKIT_CONV_HAVE_AVX512 1
#endif

namespace cnnkit {
namespace cpu {
namespace conv_avx512 {

bool compiled() {
#ifdef CNNKIT_CONV_HAVE_AVX512
    return true;
#else
    return false;
#endif
}

#ifdef CNNKIT_CONV_HAVE_AVX512

namespace {

// M (<= 12) output channels x 32 columns; channel i < 6 reads panel a[k*6 + i], channel i >= 6
// the next panel, 6*kc floats on. B row k is the 32 floats at x + off[k].
template <int M>
void fwd_tile(int cols, int64_t kc, const float* a, const float* x, const int32_t* off,
              float* c, int64_t ldc, const float* bias, bool relu) {
    const float* a1 = a + 6 * kc;
    __m512 acc[2 * M];
#pragma GCC unroll 24
    for (int i = 0; i < 2 * M; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const float* b = x + off[k];
        const __m512 b0 = _mm512_loadu_ps(b);
        const __m512 b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
        for (int i = 0; i < M; ++i) {
            const __m512 av = _mm512_set1_ps(i < 6 ? a[i] : a1[i - 6]);
            acc[2 * i] = _mm512_fmadd_ps(av, b0, acc[2 * i]);
            acc[2 * i + 1] = _mm512_fmadd_ps(av, b1, acc[2 * i + 1]);
        }
        a += 6;
        a1 += 6;
    }
    const __mmask16 m0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
    const __mmask16 m1 = cols >= 32   ? __mmask16(0xFFFF)
                         : cols <= 16 ? __mmask16(0)
                                      : __mmask16((1u << (cols - 16)) - 1);
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 12
    for (int i = 0; i < M; ++i) {
        __m512 r0 = acc[2 * i], r1 = acc[2 * i + 1];
        if (bias) {
            const __m512 bv = _mm512_set1_ps(bias[i]);
            r0 = _mm512_add_ps(r0, bv);
            r1 = _mm512_add_ps(r1, bv);
        }
        if (relu) {  // v > 0 ? v : +0 (NaN and -0 to +0), as AVX2's max(v, 0) and the portable
            r0 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r0, zero, _CMP_GT_OQ), r0);
            r1 = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r1, zero, _CMP_GT_OQ), r1);
        }
        _mm512_mask_storeu_ps(c + i * ldc, m0, r0);
        _mm512_mask_storeu_ps(c + i * ldc + 16, m1, r1);
    }
}

template <int M>
inline void dispatch(int rows, int cols, int64_t kc, const float* a, const float* x,
                     const int32_t* off, float* c, int64_t ldc, const float* bias, bool relu) {
    if constexpr (M == 1) {
        fwd_tile<1>(cols, kc, a, x, off, c, ldc, bias, relu);
    } else {
        if (rows >= M) return fwd_tile<M>(cols, kc, a, x, off, c, ldc, bias, relu);
        dispatch<M - 1>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
    }
}

// M (<= PR) output channels x 16*NV columns from one PR-row weight panel (a[k*PR + i]); the
// last columns stored masked (only the first `cols`). The same per-element operations as
// fwd_tile (one FMA per tap in tap order, then bias, then ReLU), so the same bits.
template <int M, int NV, int PR>
void fwd_tile_panel(int cols, int64_t kc, const float* a, const float* x, const int32_t* off,
                    float* c, int64_t ldc, const float* bias, bool relu) {
    __m512 acc[M * NV];
#pragma GCC unroll 32
    for (int i = 0; i < M * NV; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const float* b = x + off[k];
        __m512 bv[NV];
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) bv[v] = _mm512_loadu_ps(b + 16 * v);
#pragma GCC unroll 16
        for (int i = 0; i < M; ++i) {
            const __m512 av = _mm512_set1_ps(a[i]);
#pragma GCC unroll 8
            for (int v = 0; v < NV; ++v) acc[i * NV + v] = _mm512_fmadd_ps(av, bv[v], acc[i * NV + v]);
        }
        a += PR;
    }
    __mmask16 mk[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
        const int r = cols - 16 * v;
        mk[v] = r >= 16 ? __mmask16(0xFFFF) : r <= 0 ? __mmask16(0) : __mmask16((1u << r) - 1);
    }
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < M; ++i) {
        const __m512 bv = bias ? _mm512_set1_ps(bias[i]) : zero;
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) {
            __m512 r = acc[i * NV + v];
            if (bias) r = _mm512_add_ps(r, bv);
            if (relu) r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, zero, _CMP_GT_OQ), r);
            _mm512_mask_storeu_ps(c + i * ldc + 16 * v, mk[v], r);
        }
    }
}

template <int M, int NV, int PR>
inline void dispatch_panel(int rows, int cols, int64_t kc, const float* a, const float* x,
                           const int32_t* off, float* c, int64_t ldc, const float* bias,
                           bool relu) {
    if constexpr (M == 1) {
        fwd_tile_panel<1, NV, PR>(cols, kc, a, x, off, c, ldc, bias, relu);
    } else {
        if (rows >= M) return fwd_tile_panel<M, NV, PR>(cols, kc, a, x, off, c, ldc, bias, relu);
        dispatch_panel<M - 1, NV, PR>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
    }
}

// 12 taps (rows of dw^T) x 16*NV output channels, the B columns past `cols` neither read nor
// stored (mask); the A element of row i at depth j is x[off[i] + j]. Per element the AVX2
// kernel's FMAs in the same order (accumulating onto c).
template <int NV>
void wgt_tile(int cols, int64_t kc, const float* x, const int32_t* off, const float* b,
              int64_t ldb, float* c, int64_t ldc) {
    const float* xi[12];
    __mmask16 mk[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
        const int r = cols - 16 * v;
        mk[v] = r >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << r) - 1);
    }
    __m512 acc[12 * NV];
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) {
        xi[i] = x + off[i];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
            acc[i * NV + v] = _mm512_maskz_loadu_ps(mk[v], c + i * ldc + 16 * v);
    }
    for (int64_t j = 0; j < kc; ++j) {
        __m512 bv[NV];
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_ps(mk[v], b + 16 * v);
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) {
            const __m512 av = _mm512_set1_ps(xi[i][j]);
#pragma GCC unroll 2
            for (int v = 0; v < NV; ++v)
                acc[i * NV + v] = _mm512_fmadd_ps(av, bv[v], acc[i * NV + v]);
        }
        b += ldb;
    }
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v)
            _mm512_mask_storeu_ps(c + i * ldc + 16 * v, mk[v], acc[i * NV + v]);
}

// T taps x NK channels of wgt_lanes: T*NK accumulators of 16 lanes, per vector of pixels T
// loads of x, NK of dy and T*NK FMAs.
template <int NK, int T>
void lanes_block(int64_t nv, const float* x, const int32_t* off, const float* dy, int64_t ldd,
                 float* acc) {
    const float* xt[T];
    __m512 a[T * NK];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        xt[t] = x + off[t];
#pragma GCC unroll 8
        for (int k = 0; k < NK; ++k) a[t * NK + k] = _mm512_loadu_ps(acc + (t * NK + k) * 16);
    }
    for (int64_t v = 0; v < nv; ++v) {
        __m512 xv[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) xv[t] = _mm512_loadu_ps(xt[t] + 16 * v);
#pragma GCC unroll 8
        for (int k = 0; k < NK; ++k) {
            const __m512 d = _mm512_loadu_ps(dy + k * ldd + 16 * v);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) a[t * NK + k] = _mm512_fmadd_ps(xv[t], d, a[t * NK + k]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
        for (int k = 0; k < NK; ++k) _mm512_storeu_ps(acc + (t * NK + k) * 16, a[t * NK + k]);
}

// All nt taps of NK channels, TB taps a block (TB * NK <= 24 accumulators), the last block
// narrower.
template <int NK, int TB>
void lanes_taps(int64_t nt, int64_t nv, const float* x, const int32_t* off, const float* dy,
                int64_t ldd, float* acc) {
    int64_t i = 0;
    for (; i + TB <= nt; i += TB) lanes_block<NK, TB>(nv, x, off + i, dy, ldd, acc + i * NK * 16);
    float* ai = acc + i * NK * 16;
    switch (nt - i) {
        case 0: return;
        case 1: return lanes_block<NK, 1>(nv, x, off + i, dy, ldd, ai);
        case 2: if constexpr (TB > 2) return lanes_block<NK, 2>(nv, x, off + i, dy, ldd, ai); break;
        case 3: if constexpr (TB > 3) return lanes_block<NK, 3>(nv, x, off + i, dy, ldd, ai); break;
        case 4: if constexpr (TB > 4) return lanes_block<NK, 4>(nv, x, off + i, dy, ldd, ai); break;
        case 5: if constexpr (TB > 5) return lanes_block<NK, 5>(nv, x, off + i, dy, ldd, ai); break;
        case 6: if constexpr (TB > 6) return lanes_block<NK, 6>(nv, x, off + i, dy, ldd, ai); break;
        case 7: if constexpr (TB > 7) return lanes_block<NK, 7>(nv, x, off + i, dy, ldd, ai); break;
        default: break;
    }
}

template <int KV, int NP>
void kpix_tile(int np, int rows, int64_t kc, const float* a, const float* x, const int32_t* xpix,
               const int32_t* off, float* c, const int32_t* cpix, int64_t ldc, const float* bias,
               bool relu) {
    const float* xb[NP];
#pragma GCC unroll 24
    for (int i = 0; i < NP; ++i) xb[i] = x + xpix[i < np ? i : 0];  // spare pixels: recomputed
    __m512 acc[KV * NP];
#pragma GCC unroll 24
    for (int i = 0; i < KV * NP; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const int64_t o = off[k];
        __m512 wv[KV];
#pragma GCC unroll 4
        for (int v = 0; v < KV; ++v) wv[v] = _mm512_loadu_ps(a + v * 16 * kc + k * 16);
#pragma GCC unroll 24
        for (int i = 0; i < NP; ++i) {
            const __m512 xv = _mm512_set1_ps(xb[i][o]);
#pragma GCC unroll 4
            for (int v = 0; v < KV; ++v)
                acc[v * NP + i] = _mm512_fmadd_ps(xv, wv[v], acc[v * NP + i]);
        }
    }
    const __m512 zero = _mm512_setzero_ps();
    const __m512i lanes = _mm512_mullo_epi32(_mm512_set1_epi32(static_cast<int>(ldc)),
                                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                               10, 11, 12, 13, 14, 15));
#pragma GCC unroll 4
    for (int v = 0; v < KV; ++v) {
        const int left = rows - 16 * v;
        if (left <= 0) break;
        const __mmask16 mv = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
        const __m512 bv = bias ? _mm512_maskz_loadu_ps(mv, bias + 16 * v) : zero;
        float* cv = c + 16 * v * ldc;
        for (int i = 0; i < np; ++i) {
            __m512 r = acc[v * NP + i];
            if (bias) r = _mm512_add_ps(r, bv);
            if (relu) r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, zero, _CMP_GT_OQ), r);
            _mm512_mask_i32scatter_ps(cv + cpix[i], mv, lanes, r, 4);
        }
    }
}

}  // namespace

void fwd_kpix(int kv, int np, int rows, int64_t kc, const float* a, const float* x,
              const int32_t* xpix, const int32_t* off, float* c, const int32_t* cpix,
              int64_t ldc, const float* bias, bool relu) {
    switch (kv) {
        case 1: return kpix_tile<1, 24>(np, rows, kc, a, x, xpix, off, c, cpix, ldc, bias, relu);
        case 2: return kpix_tile<2, 12>(np, rows, kc, a, x, xpix, off, c, cpix, ldc, bias, relu);
        case 3: return kpix_tile<3, 8>(np, rows, kc, a, x, xpix, off, c, cpix, ldc, bias, relu);
        default: return kpix_tile<4, 6>(np, rows, kc, a, x, xpix, off, c, cpix, ldc, bias, relu);
    }
}

void wgt_lanes(int nk, int64_t nt, int64_t nv, const float* x, const int32_t* off,
               const float* dy, int64_t ldd, float* acc) {
    switch (nk) {
        case 1: return lanes_taps<1, 8>(nt, nv, x, off, dy, ldd, acc);
        case 2: return lanes_taps<2, 8>(nt, nv, x, off, dy, ldd, acc);
        case 3: return lanes_taps<3, 8>(nt, nv, x, off, dy, ldd, acc);
        case 4: return lanes_taps<4, 6>(nt, nv, x, off, dy, ldd, acc);
        case 5: return lanes_taps<5, 4>(nt, nv, x, off, dy, ldd, acc);
        case 6: return lanes_taps<6, 4>(nt, nv, x, off, dy, ldd, acc);
        case 7: return lanes_taps<7, 3>(nt, nv, x, off, dy, ldd, acc);
        default: return lanes_taps<8, 3>(nt, nv, x, off, dy, ldd, acc);
    }
}

void wgt_12x32(int cols, int64_t kc, const float* x, const int32_t* off, const float* b,
               int64_t ldb, float* c, int64_t ldc) {
    if (cols > 16) return wgt_tile<2>(cols, kc, x, off, b, ldb, c, ldc);
    wgt_tile<1>(cols, kc, x, off, b, ldb, c, ldc);
}

void fwd_12x32(int rows, int cols, int64_t kc, const float* a, const float* x,
               const int32_t* off, float* c, int64_t ldc, const float* bias, bool relu) {
    dispatch<12>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
}

void fwd_panel(int mr, int nv, int rows, int cols, int64_t kc, const float* a, const float* x,
               const int32_t* off, float* c, int64_t ldc, const float* bias, bool relu) {
    // A tile of fewer columns than nv vectors computes only the vectors it stores (the same
    // operations per element, so the same bits as the full-width tile).
    const int need = (cols + 15) / 16;
    if (mr == 8 && nv == 3) {
        if (need <= 1) return dispatch_panel<8, 1, 8>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
        if (need == 2) return dispatch_panel<8, 2, 8>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
        return dispatch_panel<8, 3, 8>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
    }
    if (mr == 4 && nv == 5) {
        if (need <= 2) return dispatch_panel<4, 2, 4>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
        if (need == 3) return dispatch_panel<4, 3, 4>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
        return dispatch_panel<4, 5, 4>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
    }
    if (mr == 6 && nv == 4) {
        if (need <= 2) return dispatch_panel<6, 2, 6>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
        return dispatch_panel<6, 4, 6>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
    }
    if (mr == 16 && nv == 1)
        return dispatch_panel<16, 1, 16>(rows, cols, kc, a, x, off, c, ldc, bias, relu);
}

namespace {
// r[i] = row i (16 floats) -> r[k] = column k (row 0's value in lane 0, ...).
inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i + 0], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
        t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xDD);
        t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
        t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xDD);
    }
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
        r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
        r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xDD);
    }
}
}  // namespace

namespace {
// r[k] = column k0 + k of rows i0 .. i0 + nr - 1 of w (times scale[row] when scale is not
// null), rows past nr zero: one 16 x 16 block of the weights through a register transpose.
inline void load_transposed(__m512 r[16], const float* w, const float* scale, int64_t i0,
                            int64_t nr, int64_t cols, int64_t k0, int64_t kn) {
    const __mmask16 load = static_cast<__mmask16>((1u << kn) - 1);
    for (int64_t i = 0; i < 16; ++i) {
        if (i >= nr) {
            r[i] = _mm512_setzero_ps();
            continue;
        }
        r[i] = _mm512_maskz_loadu_ps(load, w + (i0 + i) * cols + k0);
        if (scale) r[i] = _mm512_mul_ps(r[i], _mm512_set1_ps(scale[i0 + i]));
    }
    transpose16(r);
}

// pr = 4 or 8: 16 rows (16 / pr panels) per 16 x 16 transpose, each transposed column split
// into its panels' pieces (with one 4-row panel per transpose, 3/4 of the work was zero rows:
// ResNet-20's 64-channel layers, 80% of its weights, use 4-row panels).
template <int PR>
void pack_panels_split(float* out, const float* w, int64_t rows, int64_t cols,
                       const float* scale) {
    const int64_t rows_p = (rows + PR - 1) / PR * PR;  // rows the panels hold
    for (int64_t i0 = 0; i0 < rows; i0 += 16) {
        const int64_t nr = std::min<int64_t>(16, rows - i0);
        const int np = static_cast<int>(std::min<int64_t>(16, rows_p - i0) / PR);
        for (int64_t k0 = 0; k0 < cols; k0 += 16) {
            const int64_t kn = std::min<int64_t>(16, cols - k0);
            __m512 r[16];
            load_transposed(r, w, scale, i0, nr, cols, k0, kn);
            for (int p = 0; p < np; ++p) {
                float* panel = out + (i0 + p * PR) * cols + k0 * PR;
                for (int64_t k = 0; k < kn; ++k) {
                    if (PR == 8) {
                        _mm256_storeu_ps(panel + k * 8, p == 0 ? _mm512_extractf32x8_ps(r[k], 0)
                                                               : _mm512_extractf32x8_ps(r[k], 1));
                    } else {
                        const __m128 q = p == 0   ? _mm512_extractf32x4_ps(r[k], 0)
                                         : p == 1 ? _mm512_extractf32x4_ps(r[k], 1)
                                         : p == 2 ? _mm512_extractf32x4_ps(r[k], 2)
                                                  : _mm512_extractf32x4_ps(r[k], 3);
                        _mm_storeu_ps(panel + k * 4, q);
                    }
                }
            }
        }
    }
}
}  // namespace

void pack_panels(float* out, const float* w, int64_t rows, int64_t cols, int64_t pr,
                 const float* scale) {
    if (pr == 4) return pack_panels_split<4>(out, w, rows, cols, scale);
    if (pr == 8) return pack_panels_split<8>(out, w, rows, cols, scale);
    const __mmask16 store = static_cast<__mmask16>((1u << pr) - 1);
    for (int64_t i0 = 0; i0 < rows; i0 += pr) {
        const int64_t nr = std::min(pr, rows - i0);
        float* panel = out + i0 * cols;
        for (int64_t k0 = 0; k0 < cols; k0 += 16) {
            const int64_t kn = std::min<int64_t>(16, cols - k0);
            __m512 r[16];
            load_transposed(r, w, scale, i0, nr, cols, k0, kn);
            for (int64_t k = 0; k < kn; ++k) _mm512_mask_storeu_ps(panel + (k0 + k) * pr, store, r[k]);
        }
    }
}

void copy_rows(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t n) {
    const int64_t full = n / 16 * 16;
    const __mmask16 tail = static_cast<__mmask16>((1u << (n % 16)) - 1);
    for (int64_t r = 0; r < rows; ++r, dst += ldd, src += lds) {
        for (int64_t q = 0; q < full; q += 16)
            _mm512_storeu_ps(dst + q, _mm512_loadu_ps(src + q));
        if (tail)
            _mm512_mask_storeu_ps(dst + full, tail, _mm512_maskz_loadu_ps(tail, src + full));
    }
}

void split2(float* even, float* odd, const float* src, int64_t half) {
    const __m512i ie =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io =
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int64_t j = 0; j < half; j += 16) {
        const int64_t n = std::min<int64_t>(16, half - j), m = 2 * n;  // outputs, inputs
        const __mmask16 out = static_cast<__mmask16>((1u << n) - 1);
        const __mmask16 m0 = static_cast<__mmask16>(m >= 16 ? 0xFFFF : (1u << m) - 1);
        const __mmask16 m1 =
            static_cast<__mmask16>(m >= 32 ? 0xFFFF : m <= 16 ? 0 : (1u << (m - 16)) - 1);
        const __m512 a = _mm512_maskz_loadu_ps(m0, src + 2 * j);
        const __m512 b = _mm512_maskz_loadu_ps(m1, src + 2 * j + 16);
        if (even) _mm512_mask_storeu_ps(even + j, out, _mm512_permutex2var_ps(a, ie, b));
        if (odd) _mm512_mask_storeu_ps(odd + j, out, _mm512_permutex2var_ps(a, io, b));
    }
}

#else  // never called (compiled() is false), but must link

void pack_panels(float*, const float*, int64_t, int64_t, int64_t, const float*) {}
void copy_rows(float*, int64_t, const float*, int64_t, int64_t, int64_t) {}
void split2(float*, float*, const float*, int64_t) {}
void fwd_kpix(int, int, int, int64_t, const float*, const float*, const int32_t*, const int32_t*,
              float*, const int32_t*, int64_t, const float*, bool) {}

void fwd_panel(int, int, int, int, int64_t, const float*, const float*, const int32_t*, float*,
               int64_t, const float*, bool) {}

void fwd_12x32(int, int, int64_t, const float*, const float*, const int32_t*, float*, int64_t,
               const float*, bool) {}
void wgt_12x32(int, int64_t, const float*, const int32_t*, const float*, int64_t, float*,
               int64_t) {}
void wgt_lanes(int, int64_t, int64_t, const float*, const int32_t*, const float*, int64_t,
               float*) {}

#endif

}  // namespace conv_avx512
}  // namespace cpu
}  // namespace cnnkit
