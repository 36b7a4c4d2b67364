// AVX2 bodies of the 2x2 / stride 2 pooling fast paths and the ReLU-family activations, with
// results bit-identical to the portable loops in pool.cpp and activation.cpp. Compiled with
// -mavx2 -mfma -ffp-contract=off (a multiply fused with a following add would round once where
// the portable code rounds twice); those files only call in here after cpu_has_avx2_fma().
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CNNKIT_ELTWISE_HAVE_AVX2 1
#endif

namespace cnnkit {
namespace cpu {
namespace eltwise_avx2 {

// Whether this file was built with AVX2/FMA (CMake adds the flags on x86-64 only).
bool compiled() {
#ifdef CNNKIT_ELTWISE_HAVE_AVX2
    return true;
#else
    return false;
#endif
}

#ifdef CNNKIT_ELTWISE_HAVE_AVX2

namespace {

// Runs one output row of Q outputs as blocks: f8(q) covers outputs [q, q+8), f4(q) [q, q+4),
// f1(q) output q. A short remainder is covered by a last block that overlaps the previous one
// (each output is a pure function of its window, so rewriting it stores the same bits);
// this avoids masked stores, which are microcoded and slow on AMD Zen.
template <typename F8, typename F4, typename F1>
inline void for_row(int64_t Q, F8 f8, F4 f4, F1 f1) {
    int64_t q = 0;
    for (; q + 8 <= Q; q += 8) f8(q);
    if (q == Q) return;
    if (Q >= 8) {
        f8(Q - 8);
    } else if (Q >= 4) {
        f4(0);
        if (Q > 4) f4(Q - 4);
    } else {
        for (q = 0; q < Q; ++q) f1(q);
    }
}

// ---- max-pool 2x2 / stride 2 ----------------------------------------------------------------

// One step of the scalar rule `if (c > best || (c != c && best == best))`: the first maximum
// wins and the first NaN sticks.
inline void take_if_greater(__m256& best, __m256i& arg, __m256 c, __m256i idx) {
    const __m256 gt = _mm256_cmp_ps(c, best, _CMP_GT_OQ);
    const __m256 nan = _mm256_and_ps(_mm256_cmp_ps(c, c, _CMP_UNORD_Q),
                                     _mm256_cmp_ps(best, best, _CMP_ORD_Q));
    const __m256 m = _mm256_or_ps(gt, nan);
    best = _mm256_blendv_ps(best, c, m);
    arg = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(arg), _mm256_castsi256_ps(idx), m));
}
inline void take_if_greater(__m128& best, __m128i& arg, __m128 c, __m128i idx) {
    const __m128 gt = _mm_cmp_ps(c, best, _CMP_GT_OQ);
    const __m128 nan =
        _mm_and_ps(_mm_cmp_ps(c, c, _CMP_UNORD_Q), _mm_cmp_ps(best, best, _CMP_ORD_Q));
    const __m128 m = _mm_or_ps(gt, nan);
    best = _mm_blendv_ps(best, c, m);
    arg = _mm_castps_si128(_mm_blendv_ps(_mm_castsi128_ps(arg), _mm_castsi128_ps(idx), m));
}

// 8 outputs: window tops at r0[0..16), r1 = the row below; `base` is the flat index of r0[0].
// The even/odd split leaves lanes in the order [0 1 4 5 2 3 6 7]; the results are put back in
// order once at the end.
inline void maxpool2x2_8(float* y, int32_t* argmax, const float* r0, const float* r1,
                         int32_t base, int32_t W) {
    const __m256 a0 = _mm256_loadu_ps(r0), a1 = _mm256_loadu_ps(r0 + 8);
    const __m256 b0 = _mm256_loadu_ps(r1), b1 = _mm256_loadu_ps(r1 + 8);
    const __m256i i0 = _mm256_add_epi32(_mm256_set1_epi32(base),
                                        _mm256_setr_epi32(0, 2, 8, 10, 4, 6, 12, 14));
    __m256 best = _mm256_shuffle_ps(a0, a1, 0x88);
    __m256i arg = i0;
    take_if_greater(best, arg, _mm256_shuffle_ps(a0, a1, 0xDD),
                    _mm256_add_epi32(i0, _mm256_set1_epi32(1)));
    take_if_greater(best, arg, _mm256_shuffle_ps(b0, b1, 0x88),
                    _mm256_add_epi32(i0, _mm256_set1_epi32(W)));
    take_if_greater(best, arg, _mm256_shuffle_ps(b0, b1, 0xDD),
                    _mm256_add_epi32(i0, _mm256_set1_epi32(W + 1)));
    best = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(best), 0xD8));
    arg = _mm256_permute4x64_epi64(arg, 0xD8);
    _mm256_storeu_ps(y, best);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(argmax), arg);
}

inline void maxpool2x2_4(float* y, int32_t* argmax, const float* r0, const float* r1,
                         int32_t base, int32_t W) {
    const __m128 a0 = _mm_loadu_ps(r0), a1 = _mm_loadu_ps(r0 + 4);
    const __m128 b0 = _mm_loadu_ps(r1), b1 = _mm_loadu_ps(r1 + 4);
    const __m128i i0 = _mm_add_epi32(_mm_set1_epi32(base), _mm_setr_epi32(0, 2, 4, 6));
    __m128 best = _mm_shuffle_ps(a0, a1, 0x88);
    __m128i arg = i0;
    take_if_greater(best, arg, _mm_shuffle_ps(a0, a1, 0xDD), _mm_add_epi32(i0, _mm_set1_epi32(1)));
    take_if_greater(best, arg, _mm_shuffle_ps(b0, b1, 0x88), _mm_add_epi32(i0, _mm_set1_epi32(W)));
    take_if_greater(best, arg, _mm_shuffle_ps(b0, b1, 0xDD),
                    _mm_add_epi32(i0, _mm_set1_epi32(W + 1)));
    _mm_storeu_ps(y, best);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(argmax), arg);
}

inline void maxpool2x2_1(float* y, int32_t* argmax, const float* r0, const float* r1,
                         int32_t base, int32_t W) {
    float best = r0[0];
    int32_t arg = base;
    if (r0[1] > best || (r0[1] != r0[1] && best == best)) { best = r0[1]; arg = base + 1; }
    if (r1[0] > best || (r1[0] != r1[0] && best == best)) { best = r1[0]; arg = base + W; }
    if (r1[1] > best || (r1[1] != r1[1] && best == best)) { best = r1[1]; arg = base + W + 1; }
    *y = best;
    *argmax = arg;
}

// ---- shared by the 2x2 backward passes ------------------------------------------------------

// Writes even-column values e and odd-column values o, interleaved, to one row.
inline void store_interleaved(float* d, __m256 e, __m256 o) {
    const __m256 lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(d + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}
inline void store_interleaved(float* d, __m128 e, __m128 o) {
    _mm_storeu_ps(d, _mm_unpacklo_ps(e, o));
    _mm_storeu_ps(d + 4, _mm_unpackhi_ps(e, o));
}

// Zeroes what no 2x2 window covers: columns [2Q, W) of the pooled rows and rows [2P, H).
inline void zero_uncovered(float* dx, int64_t H, int64_t W, int64_t P, int64_t Q) {
    if (2 * Q < W)
        for (int64_t h = 0; h < 2 * P; ++h)
            for (int64_t w = 2 * Q; w < W; ++w) dx[h * W + w] = 0.f;
    if (2 * P < H) std::memset(dx + 2 * P * W, 0, sizeof(float) * (H - 2 * P) * W);
}

}  // namespace

// x is one (H,W) plane, y and argmax one (P,Q) plane; 2P <= H, 2Q <= W.
void maxpool2x2_forward_plane(float* y, int32_t* argmax, const float* x, int64_t W, int64_t P,
                              int64_t Q) {
    const int32_t W32 = static_cast<int32_t>(W);
    for (int64_t p = 0; p < P; ++p) {
        const float* r0 = x + 2 * p * W;
        const float* r1 = r0 + W;
        float* yp = y + p * Q;
        int32_t* ap = argmax + p * Q;
        const int32_t row = static_cast<int32_t>(2 * p * W);
        for_row(
            Q,
            [&](int64_t q) {
                maxpool2x2_8(yp + q, ap + q, r0 + 2 * q, r1 + 2 * q, row + int32_t(2 * q), W32);
            },
            [&](int64_t q) {
                maxpool2x2_4(yp + q, ap + q, r0 + 2 * q, r1 + 2 * q, row + int32_t(2 * q), W32);
            },
            [&](int64_t q) {
                maxpool2x2_1(yp + q, ap + q, r0 + 2 * q, r1 + 2 * q, row + int32_t(2 * q), W32);
            });
    }
}

// dy, argmax are one (P,Q) plane with Q >= 8, dx one (H,W) plane (overwritten). Writes every
// dx element directly: inside a window, dx = 0 + dy at the argmax (the same bits as zero fill
// then add, -0 included) and 0 elsewhere. Returns false, with dx partly written, when some
// argmax is not inside its own window; the caller then falls back to fill-and-scatter.
// (For narrower planes fill-and-scatter measured faster: most of dx is the fill either way.)
bool maxpool2x2_backward_plane(float* dx, const float* dy, const int32_t* argmax, int64_t H,
                               int64_t W, int64_t P, int64_t Q) {
    const __m256i step = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i one = _mm256_set1_epi32(1), vW = _mm256_set1_epi32(static_cast<int32_t>(W)),
                  vW1 = _mm256_set1_epi32(static_cast<int32_t>(W + 1));
    __m256i hit_all = _mm256_set1_epi32(-1);  // lanes whose argmax lies inside the window
    auto block = [&](float* d0, float* d1, const float* g, const int32_t* a, int32_t base) {
        const __m256 v = _mm256_add_ps(_mm256_setzero_ps(), _mm256_loadu_ps(g));
        const __m256i off =
            _mm256_sub_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)),
                             _mm256_add_epi32(_mm256_set1_epi32(base), step));
        const __m256i m0 = _mm256_cmpeq_epi32(off, _mm256_setzero_si256());
        const __m256i m1 = _mm256_cmpeq_epi32(off, one);
        const __m256i m2 = _mm256_cmpeq_epi32(off, vW);
        const __m256i m3 = _mm256_cmpeq_epi32(off, vW1);
        hit_all = _mm256_and_si256(
            hit_all, _mm256_or_si256(_mm256_or_si256(m0, m1), _mm256_or_si256(m2, m3)));
        store_interleaved(d0, _mm256_and_ps(_mm256_castsi256_ps(m0), v),
                          _mm256_and_ps(_mm256_castsi256_ps(m1), v));
        store_interleaved(d1, _mm256_and_ps(_mm256_castsi256_ps(m2), v),
                          _mm256_and_ps(_mm256_castsi256_ps(m3), v));
    };
    for (int64_t p = 0; p < P; ++p) {
        float* d0 = dx + 2 * p * W;
        float* d1 = d0 + W;
        const float* g = dy + p * Q;
        const int32_t* a = argmax + p * Q;
        const int32_t row = static_cast<int32_t>(2 * p * W);
        for (int64_t q = 0; q < Q; q += 8) {
            // the last block overlaps the previous one rather than run past the row
            const int64_t qb = q + 8 <= Q ? q : Q - 8;
            block(d0 + 2 * qb, d1 + 2 * qb, g + qb, a + qb, row + int32_t(2 * qb));
        }
    }
    zero_uncovered(dx, H, W, P, Q);
    return _mm256_testc_si256(hit_all, _mm256_set1_epi32(-1)) != 0;
}

// ---- average pool 2x2 / stride 2 / no padding -----------------------------------------------
// Same operations in the same order as the portable loops: forward sums 0 + x00 + x01 + x10 +
// x11 and divides by 4, backward adds dy / 4 to zero. Dividing by 4 is a multiply by 0.25 here
// (the same exact quotient, rounded once).

// x is one (H,W) plane, y one (P,Q) plane; 2P <= H, 2Q <= W.
void avgpool2x2_forward_plane(float* y, const float* x, int64_t W, int64_t P, int64_t Q) {
    for (int64_t p = 0; p < P; ++p) {
        const float* r0 = x + 2 * p * W;
        const float* r1 = r0 + W;
        float* yp = y + p * Q;
        for_row(
            Q,
            [&](int64_t q) {
                const __m256 a0 = _mm256_loadu_ps(r0 + 2 * q), a1 = _mm256_loadu_ps(r0 + 2 * q + 8);
                const __m256 b0 = _mm256_loadu_ps(r1 + 2 * q), b1 = _mm256_loadu_ps(r1 + 2 * q + 8);
                __m256 s = _mm256_add_ps(_mm256_setzero_ps(), _mm256_shuffle_ps(a0, a1, 0x88));
                s = _mm256_add_ps(s, _mm256_shuffle_ps(a0, a1, 0xDD));
                s = _mm256_add_ps(s, _mm256_shuffle_ps(b0, b1, 0x88));
                s = _mm256_add_ps(s, _mm256_shuffle_ps(b0, b1, 0xDD));
                s = _mm256_mul_ps(s, _mm256_set1_ps(0.25f));
                s = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8));
                _mm256_storeu_ps(yp + q, s);
            },
            [&](int64_t q) {
                const __m128 a0 = _mm_loadu_ps(r0 + 2 * q), a1 = _mm_loadu_ps(r0 + 2 * q + 4);
                const __m128 b0 = _mm_loadu_ps(r1 + 2 * q), b1 = _mm_loadu_ps(r1 + 2 * q + 4);
                __m128 s = _mm_add_ps(_mm_setzero_ps(), _mm_shuffle_ps(a0, a1, 0x88));
                s = _mm_add_ps(s, _mm_shuffle_ps(a0, a1, 0xDD));
                s = _mm_add_ps(s, _mm_shuffle_ps(b0, b1, 0x88));
                s = _mm_add_ps(s, _mm_shuffle_ps(b0, b1, 0xDD));
                _mm_storeu_ps(yp + q, _mm_mul_ps(s, _mm_set1_ps(0.25f)));
            },
            [&](int64_t q) {
                float s = 0.f;
                s += r0[2 * q];
                s += r0[2 * q + 1];
                s += r1[2 * q];
                s += r1[2 * q + 1];
                yp[q] = s * 0.25f;
            });
    }
}

// dy is one (P,Q) plane, dx one (H,W) plane (overwritten): each window gets 0 + dy / 4 (the
// portable loop's zero fill then add), uncovered pixels 0.
void avgpool2x2_backward_plane(float* dx, const float* dy, int64_t H, int64_t W, int64_t P,
                               int64_t Q) {
    for (int64_t p = 0; p < P; ++p) {
        float* d0 = dx + 2 * p * W;
        float* d1 = d0 + W;
        const float* g = dy + p * Q;
        for_row(
            Q,
            [&](int64_t q) {
                const __m256 d = _mm256_mul_ps(_mm256_loadu_ps(g + q), _mm256_set1_ps(0.25f));
                const __m256 v = _mm256_add_ps(_mm256_setzero_ps(), d);
                store_interleaved(d0 + 2 * q, v, v);
                store_interleaved(d1 + 2 * q, v, v);
            },
            [&](int64_t q) {
                const __m128 d = _mm_mul_ps(_mm_loadu_ps(g + q), _mm_set1_ps(0.25f));
                const __m128 v = _mm_add_ps(_mm_setzero_ps(), d);
                store_interleaved(d0 + 2 * q, v, v);
                store_interleaved(d1 + 2 * q, v, v);
            },
            [&](int64_t q) {
                const float v = 0.f + g[q] * 0.25f;
                d0[2 * q] = d0[2 * q + 1] = d1[2 * q] = d1[2 * q + 1] = v;
            });
    }
    zero_uncovered(dx, H, W, P, Q);
}

// ---- ReLU family ----------------------------------------------------------------------------
// Same selects as the portable loops: x > 0 (ordered, so NaN and -0 take the other branch).

void relu_forward(float* y, const float* x, int64_t n) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        _mm256_storeu_ps(y + i, _mm256_and_ps(_mm256_cmp_ps(a, zero, _CMP_GT_OQ), a));
        _mm256_storeu_ps(y + i + 8, _mm256_and_ps(_mm256_cmp_ps(b, zero, _CMP_GT_OQ), b));
    }
    for (; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
}

void leaky_relu_forward(float* y, const float* x, int64_t n, float alpha) {
    const __m256 zero = _mm256_setzero_ps(), va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 a = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(y + i, _mm256_blendv_ps(_mm256_mul_ps(va, a), a,
                                                 _mm256_cmp_ps(a, zero, _CMP_GT_OQ)));
    }
    for (; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : alpha * x[i];
}

void relu_backward(float* dx, const float* dy, const float* x, int64_t n) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 m0 = _mm256_cmp_ps(_mm256_loadu_ps(x + i), zero, _CMP_GT_OQ);
        const __m256 m1 = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 8), zero, _CMP_GT_OQ);
        _mm256_storeu_ps(dx + i, _mm256_and_ps(m0, _mm256_loadu_ps(dy + i)));
        _mm256_storeu_ps(dx + i + 8, _mm256_and_ps(m1, _mm256_loadu_ps(dy + i + 8)));
    }
    for (; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : 0.f;
}

void leaky_relu_backward(float* dx, const float* dy, const float* x, int64_t n, float alpha) {
    const __m256 zero = _mm256_setzero_ps(), va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(dy + i);
        const __m256 m = _mm256_cmp_ps(_mm256_loadu_ps(x + i), zero, _CMP_GT_OQ);
        _mm256_storeu_ps(dx + i, _mm256_blendv_ps(_mm256_mul_ps(va, g), g, m));
    }
    for (; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : alpha * dy[i];
}

// ---- residual Add and BatchNorm's per-channel affine ----------------------------------------
// The same selects and roundings as merge.cpp's and norm.cpp's loops: (a + b), x * s then + t
// (two roundings: this file is built with -ffp-contract=off), ReLU as x > 0 ? x : +0.

void add2(float* y, const float* a, const float* b, int64_t n, bool relu) {
    const __m256 zero = _mm256_setzero_ps();
    int64_t i = 0;
    if (relu) {
        for (; i + 16 <= n; i += 16) {
            const __m256 u = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
            const __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
            _mm256_storeu_ps(y + i, _mm256_and_ps(_mm256_cmp_ps(u, zero, _CMP_GT_OQ), u));
            _mm256_storeu_ps(y + i + 8, _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), v));
        }
        for (; i < n; ++i) {
            const float v = a[i] + b[i];
            y[i] = v > 0.f ? v : 0.f;
        }
        return;
    }
    for (; i + 16 <= n; i += 16) {
        const __m256 u = _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        const __m256 v = _mm256_add_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        _mm256_storeu_ps(y + i, u);
        _mm256_storeu_ps(y + i + 8, v);
    }
    for (; i < n; ++i) y[i] = a[i] + b[i];
}

void scale_shift(float* y, const float* x, int64_t n, float s, float t, bool relu) {
    const __m256 zero = _mm256_setzero_ps(), vs = _mm256_set1_ps(s), vt = _mm256_set1_ps(t);
    int64_t i = 0;
    if (relu) {
        for (; i + 16 <= n; i += 16) {
            const __m256 u = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), vt);
            const __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vs), vt);
            _mm256_storeu_ps(y + i, _mm256_and_ps(_mm256_cmp_ps(u, zero, _CMP_GT_OQ), u));
            _mm256_storeu_ps(y + i + 8, _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), v));
        }
        for (; i < n; ++i) {
            const float v = x[i] * s + t;
            y[i] = v > 0.f ? v : 0.f;
        }
        return;
    }
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), vt));
        _mm256_storeu_ps(y + i + 8,
                         _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vs), vt));
    }
    for (; i < n; ++i) y[i] = x[i] * s + t;
}

#else  // !CNNKIT_ELTWISE_HAVE_AVX2: never called (compiled() is false), but must link.

void maxpool2x2_forward_plane(float*, int32_t*, const float*, int64_t, int64_t, int64_t) {}
bool maxpool2x2_backward_plane(float*, const float*, const int32_t*, int64_t, int64_t, int64_t,
                               int64_t) {
    return false;
}
void avgpool2x2_forward_plane(float*, const float*, int64_t, int64_t, int64_t) {}
void avgpool2x2_backward_plane(float*, const float*, int64_t, int64_t, int64_t, int64_t) {}
void relu_forward(float*, const float*, int64_t) {}
void leaky_relu_forward(float*, const float*, int64_t, float) {}
void relu_backward(float*, const float*, const float*, int64_t) {}
void leaky_relu_backward(float*, const float*, const float*, int64_t, float) {}
void add2(float*, const float*, const float*, int64_t, bool) {}
void scale_shift(float*, const float*, int64_t, float, float, bool) {}

#endif

}  // namespace eltwise_avx2
}  // namespace cpu
}  // namespace cnnkit
