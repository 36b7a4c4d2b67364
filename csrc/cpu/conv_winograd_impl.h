// The Winograd F(2x2, 3x3) block routine (conv_winograd.h), included by conv_winograd_avx512.cpp
// and conv_winograd_avx2.cpp inside their own namespaces: the same source compiled for each
// ISA (the transforms are plain loops over tiles that the compiler vectorizes; they only add
// and subtract, so FP contraction cannot change them), the GEMM on that set's micro-kernels.
//
// Needs, before inclusion: WINO_GEMM(tile, rows, cols, kc, a, x, off, c, ldc).

inline int64_t wino_round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

void run_block(float* y, const float* x, const float* u, int64_t upk, const int32_t* off,
               const float* bias, bool relu, const WGeom& wg, const WTile& t, int64_t t0,
               int64_t nt, float* scratch) {
    const int64_t C = wg.C, K = wg.K, Tb = wg.Tb, ld = wg.ld, TW = wg.TW, TT = wg.TH * wg.TW;
    const int64_t H = wg.H, W = wg.W, P = wg.P, Q = wg.Q, HW = H * W, PQ = P * Q;
    float* V = scratch;                    // [16][C][Tb], rows ld apart, matrices vs
    float* M = V + 16 * wg.vs + 128;      // [16][K][Tb], rows ld apart, matrices ms
    float* pl = M + 16 * wg.ms + 128;     // 8 planes of (TH + 1) x TW
    float* Yt = pl + 8 * (wg.TH + 1) * TW;  // 4 x Tb
    const int64_t ntp = wino_round_up(nt, 16);

    // ---- input transform, one image's run of tiles at a time ----
    for (int64_t tb = 0; tb < nt;) {
        const int64_t gt = t0 + tb, n = gt / TT, a = gt % TT, b = std::min(TT, a + nt - tb);
        const int64_t th0 = a / TW, th1 = (b - 1) / TW + 1, nrows = th1 - th0 + 1;
        const int64_t ja = a - th0 * TW, jb = b - th0 * TW, PS = nrows * TW;
        for (int64_t c = 0; c < C; ++c) {
            const float* xc = x + (n * C + c) * HW;
            // plane (rp, o): row r, column tw = padded pixel (2(th0 + r) + rp, 2 tw + o)
            for (int64_t r = 0; r < nrows; ++r)
                for (int64_t rp = 0; rp < 2; ++rp) {
                    const int64_t h = 2 * (th0 + r) + rp - wg.ph;
                    for (int64_t o = 0; o < 4; ++o) {
                        float* dst = pl + (rp * 4 + o) * PS + r * TW;
                        if (h < 0 || h >= H) {
                            for (int64_t tw = 0; tw < TW; ++tw) dst[tw] = 0.f;
                            continue;
                        }
                        const float* row = xc + h * W;
                        const int64_t sh = o - wg.pw;  // column 2 tw + sh of the input
                        // valid tw: 0 <= 2 tw + sh < W
                        const int64_t lo = sh >= 0 ? 0 : (-sh + 1) / 2;
                        const int64_t hi = std::max<int64_t>(lo, std::min(TW, (W - sh + 1) / 2));
                        for (int64_t tw = 0; tw < lo; ++tw) dst[tw] = 0.f;
                        const float* s0 = row + sh;
                        for (int64_t tw = lo; tw < hi; ++tw) dst[tw] = s0[2 * tw];
                        for (int64_t tw = hi; tw < TW; ++tw) dst[tw] = 0.f;
                    }
                }
            float* vc = V + c * ld + tb - ja;
            const float* p0[4];
            const float* p1[4];
            for (int o = 0; o < 4; ++o) {
                p0[o] = pl + o * PS;
                p1[o] = pl + (4 + o) * PS;
            }
            const int64_t CT = wg.vs;
            for (int64_t j = ja; j < jb; ++j) {
                float rr[4][4];  // rr[i][o]: row-transformed row i, column class o
                for (int o = 0; o < 4; ++o) {
                    const float d0 = p0[o][j], d1 = p1[o][j], d2 = p0[o][j + TW],
                                d3 = p1[o][j + TW];
                    rr[0][o] = d0 - d2;
                    rr[1][o] = d1 + d2;
                    rr[2][o] = d2 - d1;
                    rr[3][o] = d1 - d3;
                }
                for (int i = 0; i < 4; ++i) {
                    vc[(i * 4 + 0) * CT + j] = rr[i][0] - rr[i][2];
                    vc[(i * 4 + 1) * CT + j] = rr[i][1] + rr[i][2];
                    vc[(i * 4 + 2) * CT + j] = rr[i][2] - rr[i][1];
                    vc[(i * 4 + 3) * CT + j] = rr[i][1] - rr[i][3];
                }
            }
        }
        tb += b - a;
    }
    if (ntp > nt)
        for (int64_t r = 0; r < 16 * C; ++r)
            for (int64_t j = nt; j < ntp; ++j) V[r / C * wg.vs + r % C * ld + j] = 0.f;

    // ---- 16 GEMMs: M[xi] (K x tiles) = U[xi] (K x C) * V[xi] (C x tiles) ----
    for (int64_t xi = 0; xi < 16; ++xi) {
        const float* ux = u + xi * upk;
        const float* vx = V + xi * wg.vs;
        float* mx = M + xi * wg.ms;
        for (int64_t j0 = 0; j0 < ntp; j0 += t.nr) {
            const int cols = static_cast<int>(std::min<int64_t>(t.nr, ntp - j0));
            for (int64_t k0 = 0; k0 < K; k0 += t.mr) {
                const int rows = static_cast<int>(std::min<int64_t>(t.mr, K - k0));
                WINO_GEMM(t, rows, cols, C, ux + k0 * C, vx + j0, off, mx + k0 * ld + j0, ld);
            }
        }
    }

    // ---- output transform, bias, ReLU, scatter into y ----
    for (int64_t tb = 0; tb < nt;) {
        const int64_t gt = t0 + tb, n = gt / TT, a = gt % TT, b = std::min(TT, a + nt - tb);
        const int64_t th0 = a / TW, th1 = (b - 1) / TW + 1;
        const int64_t nj = b - a;
        for (int64_t k = 0; k < K; ++k) {
            const float* mk = M + k * ld + tb;
            const int64_t KT = wg.ms;
            const float bk = bias ? bias[k] : 0.f;
            for (int64_t j = 0; j < nj; ++j) {
                float tt[2][4];
                for (int jj = 0; jj < 4; ++jj) {
                    const float m0 = mk[(0 * 4 + jj) * KT + j], m1 = mk[(1 * 4 + jj) * KT + j],
                                m2 = mk[(2 * 4 + jj) * KT + j], m3 = mk[(3 * 4 + jj) * KT + j];
                    tt[0][jj] = m0 + m1 + m2;
                    tt[1][jj] = m1 - m2 - m3;
                }
                for (int r = 0; r < 2; ++r) {
                    float v0 = tt[r][0] + tt[r][1] + tt[r][2];
                    float v1 = tt[r][1] - tt[r][2] - tt[r][3];
                    if (bias) {
                        v0 += bk;
                        v1 += bk;
                    }
                    if (relu) {
                        v0 = v0 > 0.f ? v0 : 0.f;
                        v1 = v1 > 0.f ? v1 : 0.f;
                    }
                    Yt[(r * 2 + 0) * Tb + j] = v0;
                    Yt[(r * 2 + 1) * Tb + j] = v1;
                }
            }
            float* yk = y + (n * K + k) * PQ;
            for (int64_t th = th0; th < th1; ++th) {
                const int64_t tw0 = std::max<int64_t>(0, a - th * TW);
                const int64_t tw1 = std::min<int64_t>(TW, b - th * TW);
                const int64_t js = th * TW + tw0 - a;  // index into Yt
                for (int r = 0; r < 2; ++r) {
                    const int64_t p = 2 * th + r;
                    if (p >= P) break;
                    float* out = yk + p * Q;
                    const float* y0 = Yt + (r * 2) * Tb + js;
                    const float* y1 = Yt + (r * 2 + 1) * Tb + js;
                    const int64_t full = std::min(tw1, Q / 2) - tw0;  // tiles with both columns
                    for (int64_t i = 0; i < full; ++i) {
                        out[2 * (tw0 + i)] = y0[i];
                        out[2 * (tw0 + i) + 1] = y1[i];
                    }
                    if (full < tw1 - tw0) out[2 * (tw0 + full)] = y0[full];  // Q odd: last tile
                }
            }
        }
        tb += nj;
    }
}
