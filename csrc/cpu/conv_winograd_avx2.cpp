// The Winograd block routine for AVX2/FMA (conv_winograd.h), the 16 GEMMs on the AVX2 6 x 16
// direct-convolution tile.
//
// Where the tile rows hold a multiple of 8 tiles, or 4 tiles with an even number of tile rows
// (ResNet-20's and the CIFAR nets' 32x32, 16x16 and 8x8 planes), the transforms run in
// registers, 8 tiles a vector: 8 tiles of one row, or 4 tiles of two rows. The patch values
// d[i][o] of the 8 tiles come from a zero-padded copy of the channel's rows (two loads per
// patch row, split into even and odd columns by one in-lane shuffle each), V = B^T d B is 32
// adds, and the output transform's 2 x 2 outputs are interleaved by two in-lane unpacks and
// stored straight into y (masked where the last tile column has one output). The in-lane
// shuffle leaves the 8 tiles in the lane order 0 1 4 5 2 3 6 7; V and M keep that order within
// each group of 8 columns (the GEMM's columns are independent), and the unpacks of the output
// transform give the outputs back in image order. Other widths go through memory
// (conv_winograd_impl.h). The adds and subtractions are the same in both routines and in the
// AVX-512 one, so the results differ between them only in the GEMM, and not at all between
// the two AVX2 routines.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/conv_direct.h"
#include "cpu/conv_winograd.h"

namespace cnnkit {
namespace cpu {
namespace conv_winograd {
namespace avx2 {

#if defined(__AVX2__) && defined(__FMA__)

bool compiled() { return true; }

// 6 x 16 tiles, all 16 columns stored: the block's column count is a multiple of 16.
#define WINO_GEMM(t, rows, cols, kc, a, xx, off, c, ldc)              \
    do {                                                              \
        (void)(cols);                                                 \
        conv_avx2::fwd_6x16(rows, kc, a, xx, off, c, ldc, nullptr, false); \
    } while (0)
namespace planes {
#include "cpu/conv_winograd_impl.h"
}  // namespace planes
#undef WINO_GEMM

namespace {

inline int64_t rup(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// CNNKIT_CONV_WINOGRAD_AVX2=planes at start-up sends every layer through the planes routine
// (the two give the same bits; tests and measurements compare them).
bool planes_forced() {
    static const bool f = [] {
        const char* e = std::getenv("CNNKIT_CONV_WINOGRAD_AVX2");
        return e && std::string(e) == "planes";
    }();
    return f;
}

// Row stride of the padded planes: the loads of a vector reach padded column 2 TW + 1 (mode 1)
// or 9 (mode 2); rounded up to 8 floats, plus 8 where that is a multiple of 32 floats (rows
// 128 bytes apart would fall into few L1 sets).
int64_t wplane_stride(const WGeom& wg) {
    const int64_t w = rup(std::max<int64_t>(2 * wg.TW + 2, 10), 8);
    return w % 32 == 0 ? w + 8 : w;
}

// Lanes l of an 8-float load at column c0 with 0 <= c0 + l < W (all-ones lanes), as the mask of
// a maskload / maskstore.
inline __m256i in_row(int64_t c0, int64_t W) {
    const __m256i col = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(c0)),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_and_si256(_mm256_cmpgt_epi32(col, _mm256_set1_epi32(-1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(W)), col));
}

inline bool all_ones(__m256i m) { return _mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0xFF; }
inline bool all_zero(__m256i m) { return _mm256_movemask_ps(_mm256_castsi256_ps(m)) == 0; }

// V = B^T d B for 8 tiles: d[i][o] the input patch values; stored to 16 rows CT apart.
inline void input_transform(const __m256 d[4][4], float* v, int64_t CT) {
    __m256 rr[4][4];
    for (int o = 0; o < 4; ++o) {
        rr[0][o] = _mm256_sub_ps(d[0][o], d[2][o]);
        rr[1][o] = _mm256_add_ps(d[1][o], d[2][o]);
        rr[2][o] = _mm256_sub_ps(d[2][o], d[1][o]);
        rr[3][o] = _mm256_sub_ps(d[1][o], d[3][o]);
    }
    for (int i = 0; i < 4; ++i) {
        float* vi = v + (i * 4) * CT;
        _mm256_storeu_ps(vi, _mm256_sub_ps(rr[i][0], rr[i][2]));
        _mm256_storeu_ps(vi + CT, _mm256_add_ps(rr[i][1], rr[i][2]));
        _mm256_storeu_ps(vi + 2 * CT, _mm256_sub_ps(rr[i][2], rr[i][1]));
        _mm256_storeu_ps(vi + 3 * CT, _mm256_sub_ps(rr[i][1], rr[i][3]));
    }
}

// y = A^T M A (+ bias, ReLU) for 8 tiles: m the products of the first of them, rows KT apart
// (xi = 4 i + j); v[r][s] the outputs (2 th + r, 2 tw + s).
inline void output_transform(const float* m, int64_t KT, bool bias, __m256 bk, bool relu,
                             __m256 v[2][2]) {
    __m256 tr[2][4];
    for (int jj = 0; jj < 4; ++jj) {
        const __m256 m0 = _mm256_loadu_ps(m + (0 * 4 + jj) * KT);
        const __m256 m1 = _mm256_loadu_ps(m + (1 * 4 + jj) * KT);
        const __m256 m2 = _mm256_loadu_ps(m + (2 * 4 + jj) * KT);
        const __m256 m3 = _mm256_loadu_ps(m + (3 * 4 + jj) * KT);
        tr[0][jj] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
        tr[1][jj] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
    }
    const __m256 zero = _mm256_setzero_ps();
    for (int r = 0; r < 2; ++r) {
        __m256 v0 = _mm256_add_ps(_mm256_add_ps(tr[r][0], tr[r][1]), tr[r][2]);
        __m256 v1 = _mm256_sub_ps(_mm256_sub_ps(tr[r][1], tr[r][2]), tr[r][3]);
        if (bias) {
            v0 = _mm256_add_ps(v0, bk);
            v1 = _mm256_add_ps(v1, bk);
        }
        if (relu) {
            v0 = _mm256_max_ps(v0, zero);
            v1 = _mm256_max_ps(v1, zero);
        }
        v[r][0] = v0;
        v[r][1] = v1;
    }
}

// The register routine's geometry: TW a multiple of 8 (mode 1: a vector is 8 tiles of one
// row) or TW = 4 with TH even (mode 2: 4 tiles of two rows); then every run of an image's
// tiles in a block starts and ends at a multiple of 8 (blocks are multiples of 16 tiles).
int reg_mode(const WGeom& wg, int64_t t0, int64_t nt) {
    const int mode = wg.TW % 8 == 0 ? 1 : (wg.TW == 4 && wg.TH % 2 == 0) ? 2 : 0;
    if (mode == 0 || t0 % 8 != 0 || nt % 8 != 0) return 0;
    return mode;
}

// V = B^T d B of tiles [t0, t0 + nt) into V ([16][C][ld], matrices CT = vs apart), through
// two padded planes at pl; one image's run of tiles [a, b) at a time.
// Each channel's rows of the run are first copied into a zero-padded plane (row stride Wp,
// padded pixel (h, w) at ((h - 2 th0) Wp + w)), so that the 16 loads of a vector are plain
// ones (masked loads at the image's edges cost as much as the GEMM on Zen 3). Two planes
// alternate: channel c + 1 is copied while channel c is transformed, so that no load waits
// on a store it overlaps (store forwarding fails on unaligned overlaps).
void transform_inputs(int mode, const float* x, const WGeom& wg, int64_t t0, int64_t nt, float* V,
                      float* pl) {
    const int64_t C = wg.C, ld = wg.ld, TW = wg.TW, TT = wg.TH * wg.TW;
    const int64_t H = wg.H, W = wg.W, HW = H * W;
    const int64_t CT = wg.vs;
    const int64_t Wp = wplane_stride(wg);
    for (int64_t tb = 0; tb < nt;) {
        const int64_t gt = t0 + tb, n = gt / TT, a = gt % TT, b = std::min(TT, a + nt - tb);
        const int64_t th0 = a / TW, th1 = (b - 1) / TW + 1;
        const int64_t rows = 2 * (th1 - th0) + 2;  // padded rows 2 th0 .. 2 th1 + 1
        float* xp[2] = {pl, pl + rows * Wp + 16};
        std::memset(pl, 0, sizeof(float) * (2 * (rows * Wp + 16)));
        // x rows h0 .. h1 - 1 go to plane rows h + ph - 2 th0, columns pw .. pw + W - 1
        const int64_t h0 = std::max<int64_t>(0, 2 * th0 - wg.ph);
        const int64_t h1 = std::min<int64_t>(H, 2 * th1 + 2 - wg.ph);
        const float* xn = x + n * C * HW;
        auto copy = [&](int64_t c, float* dst) {
            if (h1 > h0)
                conv_avx2::copy_rows(dst + (h0 + wg.ph - 2 * th0) * Wp + wg.pw, Wp,
                                     xn + c * HW + h0 * W, W, h1 - h0, W);
        };
        copy(0, xp[0]);
        for (int64_t c = 0; c < C; ++c) {
            if (c + 1 < C) copy(c + 1, xp[(c + 1) & 1]);
            const float* xc = xp[c & 1];
            float* vc = V + c * ld + tb;
            for (int64_t tt = a; tt < b; tt += 8) {
                const int64_t th = tt / TW, tw0 = tt % TW;  // mode 2: tw0 = 0, th even
                // load q of patch row i: mode 1 (e0, e1, f0, f1) = padded row 2 th + i at
                // columns 2 tw0, + 8, + 2, + 10; mode 2 = rows 2 th + i, + 2 at columns 0, then 2
                const float* r0 = xc + 2 * (th - th0) * Wp + 2 * tw0;
                const int64_t o1 = mode == 1 ? 8 : 2 * Wp, o2 = 2, o3 = o1 + 2;
                __m256 d[4][4];
                for (int i = 0; i < 4; ++i) {
                    const float* ri = r0 + i * Wp;
                    const __m256 e0 = _mm256_loadu_ps(ri), e1 = _mm256_loadu_ps(ri + o1);
                    const __m256 f0 = _mm256_loadu_ps(ri + o2), f1 = _mm256_loadu_ps(ri + o3);
                    // evens / odds of (e0, e1) and (f0, f1): tiles in the lane order 0 1 4 5 2 3 6 7
                    d[i][0] = _mm256_shuffle_ps(e0, e1, _MM_SHUFFLE(2, 0, 2, 0));
                    d[i][1] = _mm256_shuffle_ps(e0, e1, _MM_SHUFFLE(3, 1, 3, 1));
                    d[i][2] = _mm256_shuffle_ps(f0, f1, _MM_SHUFFLE(2, 0, 2, 0));
                    d[i][3] = _mm256_shuffle_ps(f0, f1, _MM_SHUFFLE(3, 1, 3, 1));
                }
                input_transform(d, vc + (tt - a), CT);
            }
        }
        tb += b - a;
    }
}

// Where the 8 tiles from flattened tile gt keep their 2 x 2 outputs in y (and dy): store
// s = 2 r + g of the output transform is output row 2 th + r (mode 2: 2 (th + g) + r) from
// column 2 tw0 + 8 g (mode 2: 0), 8 floats at img + k PQ + off[s], masked past Q (all lanes
// off past P). The forward stores y there; the weight gradient loads dy from there.
struct OutRows {
    int64_t img;  // image n's first output channel
    int64_t off[4];
    __m256i mask[4];
    bool full;
};

inline OutRows out_rows(int mode, const WGeom& wg, int64_t gt) {
    const int64_t TW = wg.TW, TT = wg.TH * wg.TW, P = wg.P, Q = wg.Q;
    const int64_t n = gt / TT, tt = gt % TT, th = tt / TW, tw0 = tt % TW;
    OutRows o;
    o.img = n * wg.K * P * Q;
    o.full = true;
    for (int r = 0; r < 2; ++r)
        for (int g = 0; g < 2; ++g) {
            const int64_t p = mode == 1 ? 2 * th + r : 2 * (th + g) + r;
            const int64_t q0 = mode == 1 ? 2 * tw0 + 8 * g : 0;
            const __m256i mm = p < P ? in_row(q0, Q) : _mm256_setzero_si256();
            o.full = o.full && all_ones(mm);
            o.mask[r * 2 + g] = mm;
            o.off[r * 2 + g] = all_zero(mm) ? 0 : p * Q + q0;
        }
    return o;
}

void run_block_reg(int mode, float* y, const float* x, const float* u, int64_t upk,
                   const int32_t* off, const float* bias, bool relu, const WGeom& wg,
                   const WTile& t, int64_t t0, int64_t nt, float* scratch) {
    const int64_t C = wg.C, K = wg.K, ld = wg.ld, PQ = wg.P * wg.Q;
    float* V = scratch;
    float* M = V + 16 * wg.vs + 128;
    float* pl = M + 16 * wg.ms + 128;  // two padded planes
    const int64_t ntp = rup(nt, 16);
    const int64_t CT = wg.vs, KT = wg.ms;

    transform_inputs(mode, x, wg, t0, nt, V, pl);
    if (ntp > nt)
        for (int64_t r = 0; r < 16 * C; ++r)
            std::memset(V + r / C * CT + r % C * ld + nt, 0, sizeof(float) * (ntp - nt));

    // ---- 16 GEMMs: M[xi] (K x tiles) = U[xi] (K x C) * V[xi] (C x tiles) ----
    for (int64_t xi = 0; xi < 16; ++xi) {
        const float* ux = u + xi * upk;
        const float* vx = V + xi * CT;
        float* mx = M + xi * KT;
        for (int64_t j0 = 0; j0 < ntp; j0 += t.nr)
            for (int64_t k0 = 0; k0 < K; k0 += t.mr) {
                const int rows = static_cast<int>(std::min<int64_t>(t.mr, K - k0));
                conv_avx2::fwd_6x16(rows, C, ux + k0 * C, vx + j0, off, mx + k0 * ld + j0, ld,
                                    nullptr, false);
            }
    }

    // ---- output transform, bias, ReLU, straight into y, 8 tiles at a time ----
    for (int64_t j = 0; j < nt; j += 8) {
        const OutRows o = out_rows(mode, wg, t0 + j);
        float* yn = y + o.img;
        for (int64_t k = 0; k < K; ++k) {
            const __m256 bk = _mm256_set1_ps(bias ? bias[k] : 0.f);
            __m256 v[2][2];
            output_transform(M + k * ld + j, KT, bias != nullptr, bk, relu, v);
            float* yk = yn + k * PQ;
            for (int r = 0; r < 2; ++r) {
                // tiles 0-3 and 4-7, each tile's two outputs side by side
                const __m256 zl = _mm256_unpacklo_ps(v[r][0], v[r][1]);
                const __m256 zh = _mm256_unpackhi_ps(v[r][0], v[r][1]);
                if (o.full) {
                    _mm256_storeu_ps(yk + o.off[r * 2], zl);
                    _mm256_storeu_ps(yk + o.off[r * 2 + 1], zh);
                } else {
                    _mm256_maskstore_ps(yk + o.off[r * 2], o.mask[r * 2], zl);
                    _mm256_maskstore_ps(yk + o.off[r * 2 + 1], o.mask[r * 2 + 1], zh);
                }
            }
        }
    }
}

// ---- weight gradient ------------------------------------------------------------------------

// dM = A dY A^T of tiles [t0, t0 + nt) (nt a multiple of 8) into D ([16][K][ld], matrices ms
// apart), in the lane order of V (0 1 4 5 2 3 6 7 within each 8): the adjoint of the forward's
// output transform, with dy read where that stores y (zero past P and Q).
void transform_output_grads(int mode, const float* dy, const WGeom& wg, int64_t t0, int64_t nt,
                            float* D) {
    const int64_t K = wg.K, ld = wg.ld, PQ = wg.P * wg.Q, KT = wg.ms;
    for (int64_t j = 0; j < nt; j += 8) {
        const OutRows o = out_rows(mode, wg, t0 + j);
        for (int64_t k = 0; k < K; ++k) {
            const float* dk = dy + o.img + k * PQ;
            __m256 v[2][2];  // v[r][s]: output (2 th + r, 2 tw + s) of the 8 tiles
            for (int r = 0; r < 2; ++r) {
                const __m256 zl = o.full ? _mm256_loadu_ps(dk + o.off[r * 2])
                                         : _mm256_maskload_ps(dk + o.off[r * 2], o.mask[r * 2]);
                const __m256 zh =
                    o.full ? _mm256_loadu_ps(dk + o.off[r * 2 + 1])
                           : _mm256_maskload_ps(dk + o.off[r * 2 + 1], o.mask[r * 2 + 1]);
                // the inverse of the output transform's unpacks: even and odd columns
                v[r][0] = _mm256_shuffle_ps(zl, zh, _MM_SHUFFLE(2, 0, 2, 0));
                v[r][1] = _mm256_shuffle_ps(zl, zh, _MM_SHUFFLE(3, 1, 3, 1));
            }
            // A = [1 0; 1 1; 1 -1; 0 -1]: rows t[i][s] = (A v)[i][s], then dM[i][j] = (t A^T)[i][j]
            const __m256 zero = _mm256_setzero_ps();
            __m256 t[4][2];
            for (int s = 0; s < 2; ++s) {
                t[0][s] = v[0][s];
                t[1][s] = _mm256_add_ps(v[0][s], v[1][s]);
                t[2][s] = _mm256_sub_ps(v[0][s], v[1][s]);
                t[3][s] = _mm256_sub_ps(zero, v[1][s]);
            }
            float* dm = D + k * ld + j;
            for (int i = 0; i < 4; ++i) {
                float* di = dm + (i * 4) * KT;
                _mm256_storeu_ps(di, t[i][0]);
                _mm256_storeu_ps(di + KT, _mm256_add_ps(t[i][0], t[i][1]));
                _mm256_storeu_ps(di + 2 * KT, _mm256_sub_ps(t[i][0], t[i][1]));
                _mm256_storeu_ps(di + 3 * KT, _mm256_sub_ps(zero, t[i][1]));
            }
        }
    }
}

// part[k][c] += sum over columns [0, n) of d[k][.] v[c][.] for k < RK, c < RC (rows ld apart,
// part rows ldp apart): 8 lanes per product, summed lanes 0-7 at the end (hadds).
template <int RK, int RC>
void dots(int64_t n, const float* d, const float* v, int64_t ld, float* part, int64_t ldp) {
    __m256 acc[RK][RC];
    for (int i = 0; i < RK; ++i)
        for (int c = 0; c < RC; ++c) acc[i][c] = _mm256_setzero_ps();
    for (int64_t t = 0; t < n; t += 8) {
        __m256 dv[RK];
        for (int i = 0; i < RK; ++i) dv[i] = _mm256_loadu_ps(d + i * ld + t);
        for (int c = 0; c < RC; ++c) {
            const __m256 vc = _mm256_loadu_ps(v + c * ld + t);
            for (int i = 0; i < RK; ++i) acc[i][c] = _mm256_fmadd_ps(dv[i], vc, acc[i][c]);
        }
    }
    for (int i = 0; i < RK; ++i) {
        __m256 a[4];
        for (int c = 0; c < 4; ++c) a[c] = c < RC ? acc[i][c < RC ? c : 0] : _mm256_setzero_ps();
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        const __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        float* p = part + i * ldp;
        if (RC == 4) {
            _mm_storeu_ps(p, _mm_add_ps(_mm_loadu_ps(p), s));
        } else {
            alignas(16) float sv[4];
            _mm_store_ps(sv, s);
            for (int c = 0; c < RC; ++c) p[c] += sv[c];
        }
    }
}

template <int RK>
void dots_rc(int rc, int64_t n, const float* d, const float* v, int64_t ld, float* part,
             int64_t ldp) {
    switch (rc) {
        case 1: return dots<RK, 1>(n, d, v, ld, part, ldp);
        case 2: return dots<RK, 2>(n, d, v, ld, part, ldp);
        case 3: return dots<RK, 3>(n, d, v, ld, part, ldp);
        default: return dots<RK, 4>(n, d, v, ld, part, ldp);
    }
}

// Columns of one pass of the dot products: D's 3 rows and V's C rows of it within ~16 KB of L1
// (64-256 columns; on Zen 3, 64 to 512 measured the same within the drift).
int64_t dot_chunk(int64_t C) {
    return std::max<int64_t>(64, std::min<int64_t>(256, 4096 / std::max<int64_t>(C, 1) / 8 * 8));
}

}  // namespace

bool wgt_geometry(const WGeom& wg) {
    return wg.TW % 8 == 0 || (wg.TW == 4 && wg.TH % 2 == 0);
}

void wgt_block(const float* dy, const float* x, const WGeom& wg, int64_t t0, int64_t nt,
               float* scratch, float* part) {
    const int mode = reg_mode(wg, t0, nt);
    const int64_t C = wg.C, K = wg.K, ld = wg.ld;
    float* V = scratch;
    float* D = V + 16 * wg.vs + 128;
    float* pl = D + 16 * wg.ms + 128;
    transform_inputs(mode, x, wg, t0, nt, V, pl);
    transform_output_grads(mode, dy, wg, t0, nt, D);
    // dU[xi] (K x C) += D[xi] (K x tiles) . V[xi]^T, in column chunks of dot_chunk(C)
    const int64_t chunk = dot_chunk(C);
    for (int64_t xi = 0; xi < 16; ++xi) {
        const float* dx = D + xi * wg.ms;
        const float* vx = V + xi * wg.vs;
        float* px = part + xi * K * C;
        for (int64_t j0 = 0; j0 < nt; j0 += chunk) {
            const int64_t n = std::min(chunk, nt - j0);
            for (int64_t k0 = 0; k0 < K; k0 += 3)
                for (int64_t c0 = 0; c0 < C; c0 += 4) {
                    const int rc = static_cast<int>(std::min<int64_t>(4, C - c0));
                    const float* dk = dx + k0 * ld + j0;
                    const float* vc = vx + c0 * ld + j0;
                    float* p = px + k0 * C + c0;
                    switch (std::min<int64_t>(3, K - k0)) {
                        case 1: dots_rc<1>(rc, n, dk, vc, ld, p, C); break;
                        case 2: dots_rc<2>(rc, n, dk, vc, ld, p, C); break;
                        default: dots_rc<3>(rc, n, dk, vc, ld, p, C); break;
                    }
                }
        }
    }
}

void run_block(float* y, const float* x, const float* u, int64_t upk, const int32_t* off,
               const float* bias, bool relu, const WGeom& wg, const WTile& t, int64_t t0,
               int64_t nt, float* scratch) {
    const int mode = planes_forced() ? 0 : reg_mode(wg, t0, nt);
    if (mode != 0)
        run_block_reg(mode, y, x, u, upk, off, bias, relu, wg, t, t0, nt, scratch);
    else
        planes::run_block(y, x, u, upk, off, bias, relu, wg, t, t0, nt, scratch);
}

#else

bool compiled() { return false; }
void run_block(float*, const float*, const float*, int64_t, const int32_t*, const float*, bool,
               const WGeom&, const WTile&, int64_t, int64_t, float*) {}
bool wgt_geometry(const WGeom&) { return false; }
void wgt_block(const float*, const float*, const WGeom&, int64_t, int64_t, float*, float*) {}

#endif

}  // namespace avx2
}  // namespace conv_winograd
}  // namespace cpu
}  // namespace cnnkit
