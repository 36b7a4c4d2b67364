// The Winograd block routine for AVX-512: transforms vectorized over 16 tiles per register, the
// 16 GEMMs on the AVX-512 direct-convolution tiles (conv_winograd.h).
//
// A vector holds 16 consecutive tiles of one image (row-major tile order). Where the tile rows
// have 16 or more tiles (mode 1), a vector is up to 16 tiles of one row; where they have 8 or 4
// (modes 2, 3), it is 2 or 4 whole rows. In those modes the input patch values d[i][o] of the
// 16 tiles come straight from x: masked loads of the padded rows (zero outside the image),
// split into their even and odd columns by one permute each, with the load addresses and masks
// worked out once per vector for every channel; V = B^T d B is then 32 adds, and the output
// transform's 2 x 2 outputs are interleaved by two permutes and stored straight into y, masked
// at the edges. Other widths (mode 0) go through memory: each padded input row h = 2 r + rp
// split into 4 planes (rp, o), plane[r * TW + tw] = x_pad[h][2 tw + o], one contiguous load per
// d[i][o], and the outputs through a row buffer. The adds and subtractions are the same in every
// mode and set, so F(2x2, 3x3) results differ from the AVX2 routine's only in the GEMM.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/conv_direct.h"
#include "cpu/conv_winograd.h"

namespace cnnkit {
namespace cpu {
namespace conv_winograd {
namespace avx512 {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__)

bool compiled() { return true; }

namespace {

inline int64_t rup(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

inline __mmask16 tail(int64_t n) {
    return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << static_cast<unsigned>(n)) - 1u);
}

void gemm(const WTile& t, int rows, int cols, int64_t kc, const float* a, const float* b,
          const int32_t* off, float* c, int64_t ldc) {
    if (t.kind == 1)
        conv_avx512::fwd_12x32(rows, cols, kc, a, b, off, c, ldc, nullptr, false);
    else
        conv_avx512::fwd_panel(t.mr, t.nr / 16, rows, cols, kc, a, b, off, c, ldc, nullptr,
                               false);
}

// Lanes l of a 16-float load at column c0 with 0 <= c0 + l < W.
inline __mmask16 in_row(int64_t c0, int64_t W) {
    uint32_t m = 0xFFFFu;
    if (c0 < 0) m = c0 <= -16 ? 0u : m & ~((1u << static_cast<unsigned>(-c0)) - 1u);
    if (c0 + 16 > W) m &= W - c0 <= 0 ? 0u : (1u << static_cast<unsigned>(W - c0)) - 1u;
    return static_cast<__mmask16>(m);
}

// V = B^T d B for 16 tiles: d[i][o] the input patch values; stored to 16 rows CT apart.
inline void input_transform(const __m512 d[4][4], float* v, int64_t CT, __mmask16 m) {
    __m512 rr[4][4];
    for (int o = 0; o < 4; ++o) {
        rr[0][o] = _mm512_sub_ps(d[0][o], d[2][o]);
        rr[1][o] = _mm512_add_ps(d[1][o], d[2][o]);
        rr[2][o] = _mm512_sub_ps(d[2][o], d[1][o]);
        rr[3][o] = _mm512_sub_ps(d[1][o], d[3][o]);
    }
    for (int i = 0; i < 4; ++i) {
        float* vi = v + (i * 4) * CT;
        _mm512_mask_storeu_ps(vi, m, _mm512_sub_ps(rr[i][0], rr[i][2]));
        _mm512_mask_storeu_ps(vi + CT, m, _mm512_add_ps(rr[i][1], rr[i][2]));
        _mm512_mask_storeu_ps(vi + 2 * CT, m, _mm512_sub_ps(rr[i][2], rr[i][1]));
        _mm512_mask_storeu_ps(vi + 3 * CT, m, _mm512_sub_ps(rr[i][1], rr[i][3]));
    }
}

// y = A^T M A (+ bias, ReLU) for 16 tiles: m the products of the first of them, rows KT apart
// (xi = 4 i + j); v[r][s] the outputs (2 th + r, 2 tw + s).
inline void output_transform(const float* m, int64_t KT, bool bias, __m512 bk, bool relu,
                             __m512 v[2][2]) {
    __m512 tr[2][4];
    for (int jj = 0; jj < 4; ++jj) {
        const __m512 m0 = _mm512_loadu_ps(m + (0 * 4 + jj) * KT);
        const __m512 m1 = _mm512_loadu_ps(m + (1 * 4 + jj) * KT);
        const __m512 m2 = _mm512_loadu_ps(m + (2 * 4 + jj) * KT);
        const __m512 m3 = _mm512_loadu_ps(m + (3 * 4 + jj) * KT);
        tr[0][jj] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        tr[1][jj] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    const __m512 zero = _mm512_setzero_ps();
    for (int r = 0; r < 2; ++r) {
        __m512 v0 = _mm512_add_ps(_mm512_add_ps(tr[r][0], tr[r][1]), tr[r][2]);
        __m512 v1 = _mm512_sub_ps(_mm512_sub_ps(tr[r][1], tr[r][2]), tr[r][3]);
        if (bias) {
            v0 = _mm512_add_ps(v0, bk);
            v1 = _mm512_add_ps(v1, bk);
        }
        if (relu) {
            v0 = _mm512_max_ps(v0, zero);
            v1 = _mm512_max_ps(v1, zero);
        }
        v[r][0] = v0;
        v[r][1] = v1;
    }
}

// Copies n floats (any n) with masked tails.
inline void copy_floats(float* dst, const float* src, int64_t n) {
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) _mm512_storeu_ps(dst + j, _mm512_loadu_ps(src + j));
    if (j < n) {
        const __mmask16 m = tail(n - j);
        _mm512_mask_storeu_ps(dst + j, m, _mm512_maskz_loadu_ps(m, src + j));
    }
}

}  // namespace

// Scratch (block_scratch_floats): V [16][C][Tb], M [16][K][Tb], then the planes and the output
// row buffers.
void run_block(float* y, const float* x, const float* u, int64_t upk, const int32_t* off,
               const float* bias, bool relu, const WGeom& wg, const WTile& t, int64_t t0,
               int64_t nt, float* scratch) {
    const int64_t C = wg.C, K = wg.K, Tb = wg.Tb, ld = wg.ld, TW = wg.TW, TT = wg.TH * wg.TW;
    const int64_t H = wg.H, W = wg.W, P = wg.P, Q = wg.Q, HW = H * W, PQ = P * Q;
    const int64_t plane = (wg.TH + 1) * TW + 32;  // floats per plane (slack: whole vectors)
    float* V = scratch;
    float* M = V + 16 * wg.vs + 128;
    float* pl = M + 16 * wg.ms + 128;             // 8 planes
    float* yrow = pl + 8 * plane;                  // 2 output row phases of 2 * plane
    const int64_t ntp = rup(nt, 16);
    const int64_t CT = wg.vs, KT = wg.ms;
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);

    // 1: TW >= 16, 2: TW = 8, 3: TW = 4 (registers only); 0: through the planes
    const int mode = TW >= 16 ? 1 : TW == 8 ? 2 : TW == 4 ? 3 : 0;
    // ---- input transform, one image's run of tiles [a, b) at a time ----
    for (int64_t tb = 0; tb < nt;) {
        const int64_t gt = t0 + tb, n = gt / TT, a = gt % TT, b = std::min(TT, a + nt - tb);
        const int64_t th0 = a / TW, th1 = (b - 1) / TW + 1, nrows = th1 - th0 + 1;
        const int64_t base = th0 * TW;  // plane index of tile (th0, 0)
        if (mode != 0) {
            // Straight from x into registers: tile rows of 16 or more tiles a vector per up
            // to 16 tiles of one row (mode 1); 8 or 4 tiles a row, 2 or 4 rows a vector (modes
            // 2, 3; the runs then start at a row, since TW divides the block and image starts).
            // Where each vector's loads go and their masks are the same in every channel: one
            // table per vector, then the channels.
            const float* xn = x + n * C * HW;
            for (int64_t tt = a; tt < b;) {
                const int64_t th = tt / TW, tw0 = tt % TW;
                const int64_t cnt = std::min<int64_t>(mode == 1 ? std::min<int64_t>(16, TW - tw0) : 16, b - tt);
                const __mmask16 m = tail(cnt);
                const int64_t c0 = 2 * tw0 - wg.pw;
                int64_t ld_off[32];
                __mmask16 ld_m[32];
                // load q of patch row i: mode 1 (e0, e1, f0, f1) = row h at c0, c0 + 16, c0 + 2,
                // c0 + 18; mode 2 rows h, h + 2 at c0 and c0 + 2; mode 3 (8 floats each) rows
                // h, h + 2, h + 4, h + 6 at c0, then at c0 + 2
                for (int i = 0; i < 4; ++i) {
                    const int64_t h = 2 * th + i - wg.ph;
                    const int nq = mode == 3 ? 8 : 4;
                    for (int q = 0; q < nq; ++q) {
                        int64_t hr = h, col = c0;
                        if (mode == 1) {
                            col = c0 + (q & 1) * 16 + (q >> 1) * 2;
                        } else if (mode == 2) {
                            hr = h + (q & 1) * 2;
                            col = c0 + (q >> 1) * 2;
                        } else {
                            hr = h + (q & 3) * 2;
                            col = c0 + (q >> 2) * 2;
                        }
                        const bool in = hr >= 0 && hr < H;
                        __mmask16 mm = in ? in_row(col, W) : __mmask16(0);
                        if (mode == 3) mm &= 0xFF;
                        ld_m[i * nq + q] = mm;
                        ld_off[i * nq + q] = mm ? hr * W + col : 0;
                    }
                }
                float* vt = V + tb + (tt - a);
                for (int64_t c = 0; c < C; ++c) {
                    const float* xc = xn + c * HW;
                    __m512 d[4][4];
                    for (int i = 0; i < 4; ++i) {
                        __m512 e0, e1, f0, f1;  // e: the evens and odds of columns c0.., f: c0 + 2..
                        if (mode != 3) {
                            const int64_t* of = ld_off + 4 * i;
                            const __mmask16* mq = ld_m + 4 * i;
                            e0 = _mm512_maskz_loadu_ps(mq[0], xc + of[0]);
                            e1 = _mm512_maskz_loadu_ps(mq[1], xc + of[1]);
                            f0 = _mm512_maskz_loadu_ps(mq[2], xc + of[2]);
                            f1 = _mm512_maskz_loadu_ps(mq[3], xc + of[3]);
                        } else {
                            const int64_t* of = ld_off + 8 * i;
                            const __mmask16* mq = ld_m + 8 * i;
                            auto half = [&](int q) {
                                return _mm256_maskz_loadu_ps(static_cast<__mmask8>(mq[q]), xc + of[q]);
                            };
                            e0 = _mm512_insertf32x8(_mm512_castps256_ps512(half(0)), half(1), 1);
                            e1 = _mm512_insertf32x8(_mm512_castps256_ps512(half(2)), half(3), 1);
                            f0 = _mm512_insertf32x8(_mm512_castps256_ps512(half(4)), half(5), 1);
                            f1 = _mm512_insertf32x8(_mm512_castps256_ps512(half(6)), half(7), 1);
                        }
                        d[i][0] = _mm512_permutex2var_ps(e0, ev, e1);
                        d[i][1] = _mm512_permutex2var_ps(e0, od, e1);
                        d[i][2] = _mm512_permutex2var_ps(f0, ev, f1);
                        d[i][3] = _mm512_permutex2var_ps(f0, od, f1);
                    }
                    input_transform(d, vt + c * ld, CT, m);
                }
                tt += mode == 1 ? cnt : 16;
            }
            tb += b - a;
            continue;
        }
        for (int64_t c = 0; c < C; ++c) {
            const float* xc = x + (n * C + c) * HW;
            for (int64_t r = 0; r < nrows; ++r)
                for (int64_t rp = 0; rp < 2; ++rp) {
                    float* p0 = pl + (rp * 4) * plane + r * TW;
                    const int64_t h = 2 * (th0 + r) + rp - wg.ph;
                    if (h < 0 || h >= H) {
                        for (int o = 0; o < 4; ++o) std::memset(p0 + o * plane, 0, sizeof(float) * TW);
                        continue;
                    }
                    // x_pad[h][j] = row[j - pw], zero outside 0..W-1: masked loads straight
                    // from x (masked-off lanes do not fault)
                    const float* row = xc + h * W;
                    for (int64_t j0 = 0; j0 < TW; j0 += 16) {
                        const int64_t c0 = 2 * j0 - wg.pw;  // x column of padded 2 j0
                        const __m512 a0 = _mm512_maskz_loadu_ps(in_row(c0, W), row + c0);
                        const __m512 a1 = _mm512_maskz_loadu_ps(in_row(c0 + 16, W), row + c0 + 16);
                        const __m512 b0 = _mm512_maskz_loadu_ps(in_row(c0 + 2, W), row + c0 + 2);
                        const __m512 b1 = _mm512_maskz_loadu_ps(in_row(c0 + 18, W), row + c0 + 18);
                        // whole vectors: lanes past the row land where the next row (written
                        // later) or the plane's slack goes
                        _mm512_storeu_ps(p0 + j0, _mm512_permutex2var_ps(a0, ev, a1));
                        _mm512_storeu_ps(p0 + plane + j0, _mm512_permutex2var_ps(a0, od, a1));
                        _mm512_storeu_ps(p0 + 2 * plane + j0, _mm512_permutex2var_ps(b0, ev, b1));
                        _mm512_storeu_ps(p0 + 3 * plane + j0, _mm512_permutex2var_ps(b0, od, b1));
                    }
                }
            float* vc = V + c * ld + tb;
            for (int64_t j = 0; j < b - a; j += 16) {
                const __mmask16 m = tail(b - a - j);
                const int64_t at = a - base + j;
                __m512 d[4][4];  // d[i][o]: plane (i % 2, o) at tile row + i / 2
                for (int i = 0; i < 4; ++i)
                    for (int o = 0; o < 4; ++o)
                        d[i][o] = _mm512_loadu_ps(pl + ((i % 2) * 4 + o) * plane + at + (i / 2) * TW);
                input_transform(d, vc + j, CT, m);
            }
        }
        tb += b - a;
    }
    if (ntp > nt)
        for (int64_t r = 0; r < 16 * C; ++r)
            std::memset(V + r / C * CT + r % C * ld + nt, 0, sizeof(float) * (ntp - nt));

    // ---- 16 GEMMs: M[xi] (K x tiles) = U[xi] (K x C) * V[xi] (C x tiles) ----
    for (int64_t xi = 0; xi < 16; ++xi) {
        const float* ux = u + xi * upk;
        const float* vx = V + xi * CT;
        float* mx = M + xi * KT;
        for (int64_t j0 = 0; j0 < ntp; j0 += t.nr) {
            const int cols = static_cast<int>(std::min<int64_t>(t.nr, ntp - j0));
            for (int64_t k0 = 0; k0 < K; k0 += t.mr) {
                const int rows = static_cast<int>(std::min<int64_t>(t.mr, K - k0));
                gemm(t, rows, cols, C, ux + k0 * C, vx + j0, off, mx + k0 * ld + j0, ld);
            }
        }
    }

    // ---- output transform, bias, ReLU, into y ----
    for (int64_t tb = 0; tb < nt && mode != 0;) {
        // Straight into y, a vector of tiles at a time (mode 1: within one tile row; 2, 3: from
        // a row start), with where its stores go and their masks worked out once for every
        // output channel. Store s: mode 1 (r, half), mode 2 (r, tile row g < 2), mode 3
        // (r, g < 4, 8 floats).
        const int64_t gt = t0 + tb, n = gt / TT, a = gt % TT, b = std::min(TT, a + nt - tb);
        const int64_t nj = b - a;
        float* yn = y + n * K * PQ;
        for (int64_t j = 0; j < nj;) {
            const int64_t tt = a + j, th = tt / TW, tw0 = tt % TW;
            const int64_t cnt = mode == 1 ? std::min<int64_t>(16, TW - tw0) : 16;
            const int64_t valid = std::min(cnt, nj - j);  // tiles of this vector
            int64_t st_off[8];
            __mmask16 st_m[8];
            for (int r = 0; r < 2; ++r)
                for (int g = 0; g < 4; ++g) {
                    int64_t p = 0, q0 = 0, w = 0;
                    if (mode == 1 && g < 2) {
                        p = 2 * th + r;
                        q0 = 2 * tw0 + 16 * g;
                        w = std::min(2 * valid, Q - 2 * tw0) - 16 * g;
                    } else if (mode == 2 && g < 2) {
                        p = 2 * (th + g) + r;
                        w = std::min(2 * (valid - 8 * g), Q);
                    } else if (mode == 3) {
                        p = 2 * (th + g) + r;
                        w = std::min(2 * std::min<int64_t>(4, valid - 4 * g), Q);
                    }
                    const bool ok = p < P && w > 0;
                    st_m[r * 4 + g] = ok ? tail(w) : __mmask16(0);
                    st_off[r * 4 + g] = ok ? p * Q + q0 : 0;
                }
            for (int64_t k = 0; k < K; ++k) {
                const __m512 bk = _mm512_set1_ps(bias ? bias[k] : 0.f);
                __m512 v[2][2];
                output_transform(M + k * ld + tb + j, KT, bias != nullptr, bk, relu, v);
                float* yk = yn + k * PQ;
                for (int r = 0; r < 2; ++r) {
                    const __m512 v0 = v[r][0], v1 = v[r][1];
                    const __m512 zl = _mm512_permutex2var_ps(v0, lo, v1);  // tiles 0-7
                    const __m512 zh = _mm512_permutex2var_ps(v0, hi, v1);  // tiles 8-15
                    const int64_t* so = st_off + 4 * r;
                    const __mmask16* sm = st_m + 4 * r;
                    if (mode != 3) {
                        _mm512_mask_storeu_ps(yk + so[0], sm[0], zl);
                        _mm512_mask_storeu_ps(yk + so[1], sm[1], zh);
                    } else {
                        _mm256_mask_storeu_ps(yk + so[0], static_cast<__mmask8>(sm[0]), _mm512_castps512_ps256(zl));
                        _mm256_mask_storeu_ps(yk + so[1], static_cast<__mmask8>(sm[1]), _mm512_extractf32x8_ps(zl, 1));
                        _mm256_mask_storeu_ps(yk + so[2], static_cast<__mmask8>(sm[2]), _mm512_castps512_ps256(zh));
                        _mm256_mask_storeu_ps(yk + so[3], static_cast<__mmask8>(sm[3]), _mm512_extractf32x8_ps(zh, 1));
                    }
                }
            }
            j += cnt;
        }
        tb += nj;
    }
    for (int64_t tb = 0; tb < nt && mode == 0;) {
        const int64_t gt = t0 + tb, n = gt / TT, a = gt % TT, b = std::min(TT, a + nt - tb);
        const int64_t th0 = a / TW, th1 = (b - 1) / TW + 1;
        const int64_t base = th0 * TW, nj = b - a;
        for (int64_t k = 0; k < K; ++k) {
            const float* mk = M + k * ld + tb;
            const __m512 bk = _mm512_set1_ps(bias ? bias[k] : 0.f);
            // yrow[r][2 (tile - base) + s]: output (2 th + r, 2 tw + s)
            for (int64_t j = 0; j < nj; j += 16) {
                __m512 v[2][2];
                output_transform(mk + j, KT, bias != nullptr, bk, relu, v);
                const int64_t at = 2 * (a - base + j);
                for (int r = 0; r < 2; ++r) {
                    const __m512 v0 = v[r][0], v1 = v[r][1];
                    float* yr = yrow + r * 2 * plane + at;
                    _mm512_storeu_ps(yr, _mm512_permutex2var_ps(v0, lo, v1));
                    _mm512_storeu_ps(yr + 16, _mm512_permutex2var_ps(v0, hi, v1));
                }
            }
            float* yk = y + (n * K + k) * PQ;
            for (int64_t th = th0; th < th1; ++th) {
                const int64_t tw0 = std::max<int64_t>(0, a - th * TW);
                const int64_t tw1 = std::min<int64_t>(TW, b - th * TW);
                const int64_t q0 = 2 * tw0, q1 = std::min(Q, 2 * tw1);
                for (int r = 0; r < 2; ++r) {
                    const int64_t p = 2 * th + r;
                    if (p >= P) break;
                    copy_floats(yk + p * Q + q0, yrow + r * 2 * plane + 2 * (th - th0) * TW + q0,
                                q1 - q0);
                }
            }
        }
        tb += nj;
    }
}

#else

bool compiled() { return false; }
void run_block(float*, const float*, const float*, int64_t, const int32_t*, const float*, bool,
               const WGeom&, const WTile&, int64_t, int64_t, float*) {}

#endif

}  // namespace avx512
}  // namespace conv_winograd
}  // namespace cpu
}  // namespace cnnkit
