// Direct convolution for stride 1 and one group (layout and contracts in conv_direct.h).
//
// Why: im2col writes C*R*S*P*Q floats per image and the GEMM packs them again; for the layers
// people train here (LeNet, small CIFAR nets) that copying cost more than the arithmetic. Here
// the micro-kernel reads the padded image in place through a table of tap offsets, so the only
// copies are the padded image (C*Hp*Wp floats) and, for the weight gradient, a transposed dy.
//
// Work split: forward and backward-input run over (image, column block) tasks, each output
// computed by one thread in a fixed order, so results do not depend on the thread count. The
// weight gradient sums over images: images are split into a fixed number of groups (from the
// geometry only), each group accumulates its own partial, and the partials are added in group
// order, again independent of the thread count.
#include "cpu/conv_direct.h"

#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "cpu/gemm.h"
#include "cpu/kernel_set.h"
#include "cpu/scratch.h"

namespace cnnkit {
namespace cpu {
namespace conv_direct {

namespace {

constexpr int64_t kMR = 6;             // output channels per micro-tile (forward), weight panel rows
constexpr int64_t kNR = 16;            // output columns per micro-tile
constexpr int64_t kMR512 = 12;         // the AVX-512 forward tile: two weight panels
constexpr int64_t kNR512 = 32;         // ... by 32 columns
constexpr int64_t kColBlock = 256;     // output columns per forward task (multiple of kNR512)
constexpr int64_t kDepthBlock = 256;   // columns per weight-gradient depth block
constexpr int64_t kMaxGroups = 16;     // image groups of the weight gradient
constexpr int64_t kMaxPartials = int64_t(1) << 23;  // floats of weight-gradient partials
constexpr double kParallelMinMacs = 1 << 18;        // below this, no thread team

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Geometry of one direct convolution: input (N,C,H,W) padded to (Hp,Wp), K output channels,
// R x S taps with dilation, output (P,Q), J = P*Wp output columns per image.
struct DGeom {
    int64_t N, C, H, W, K, R, S, ph, pw, dh, dw;
    int64_t Hp, Wp, P, Q, J, CRS;
};

DGeom make_dgeom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                 int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
    DGeom d{N, C, H, W, K, R, S, ph, pw, dh, dw, 0, 0, 0, 0, 0, 0};
    d.Hp = H + 2 * ph;
    d.Wp = W + 2 * pw;
    d.P = d.Hp - dh * (R - 1);
    d.Q = d.Wp - dw * (S - 1);
    d.J = d.P * d.Wp;
    d.CRS = C * R * S;
    return d;
}

DGeom forward_dgeom(const ConvGeom& g) {
    return make_dgeom(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.pad_h, g.pad_w, g.dil_h, g.dil_w);
}

// Backward-input as a convolution of dy (K channels, P x Q) producing C channels of H x W.
DGeom backward_input_dgeom(const ConvGeom& g) {
    return make_dgeom(g.N, g.K, g.P, g.Q, g.C, g.R, g.S, g.dil_h * (g.R - 1) - g.pad_h,
                      g.dil_w * (g.S - 1) - g.pad_w, g.dil_h, g.dil_w);
}

// Floats of the padded image buffer plus a zero tail the last taps read into: tap (C-1, R-1,
// S-1) sits at C*Hp*Wp - J + dw*(S-1) and flat tiles run up to 31 columns past J (15 for the
// 16-column tiles), so reads stay below C*Hp*Wp + dw*(S-1) + kNR512, and dw*(S-1) = Wp - Q < Wp.
int64_t padded_floats(const DGeom& d) {
    return round_up(d.C * d.Hp * d.Wp + d.Wp + kNR512, 16);
}

bool geometry_ok(const DGeom& d) {
    return d.P > 0 && d.Q > 0 && d.ph >= 0 && d.pw >= 0 && padded_floats(d) < INT32_MAX;
}

bool plain(const ConvGeom& g) {
    return g.stride_h == 1 && g.stride_w == 1 && g.groups == 1 && !conv_is_pointwise(g) &&
           g.dil_h >= 1 && g.dil_w >= 1;
}

int64_t weight_groups(const ConvGeom& g) { return std::min<int64_t>(g.N, kMaxGroups); }

// Weight-gradient micro-tiles: taps x output channels, 6 x 16 (AVX2, portable) or 12 x 32
// (AVX-512); narrow layers (LeNet's conv1 has 6 channels) use 8 (or 16) columns so that fewer
// zero columns are computed.
int64_t wgt_rows(bool wide) { return wide ? kMR512 : kMR; }
int64_t wgt_cols(const ConvGeom& g, bool wide) {
    return g.K <= 8 ? 8 : g.K <= 16 || !wide ? kNR : kNR512;
}

// Floats of one image group's weight-gradient partial, for either tile shape (the workspace is
// sized once, whatever kernel set runs later).
int64_t partial_floats(const ConvGeom& g) {
    const int64_t CRS = g.C * g.R * g.S;
    return std::max(round_up(CRS, kMR) * round_up(g.K, wgt_cols(g, false)),
                    round_up(CRS, kMR512) * round_up(g.K, wgt_cols(g, true)));
}

// The weight gradient's tap-offset table: up to round_up(CRS, 12) entries.
int64_t wgt_offset_floats(int64_t CRS) { return round_up(CRS + kMR512, 16); }

ScratchBuffer& thread_scratch() {
    thread_local ScratchBuffer s;
    return s;
}

// ---- portable micro-kernels (same contracts as conv_avx2) -----------------------------------

void fwd_generic(int rows, int64_t kc, const float* a, const float* x, const int32_t* off,
                 float* c, int64_t ldc, const float* bias, bool relu) {
    float acc[kMR][kNR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        const float* b = x + off[k];
        const float* ak = a + k * kMR;
        for (int i = 0; i < rows; ++i)
            for (int j = 0; j < kNR; ++j) acc[i][j] += ak[i] * b[j];
    }
    for (int i = 0; i < rows; ++i)
        for (int j = 0; j < kNR; ++j) {
            float v = bias ? acc[i][j] + bias[i] : acc[i][j];
            c[i * ldc + j] = relu ? (v > 0.f ? v : 0.f) : v;
        }
}

void wgt_generic(int cols, int64_t kc, const float* x, const int32_t* off, const float* b,
                 int64_t ldb, float* c, int64_t ldc) {
    for (int i = 0; i < kMR; ++i) {
        const float* xi = x + off[i];
        float acc[kNR];
        for (int j = 0; j < cols; ++j) acc[j] = c[i * ldc + j];
        for (int64_t k = 0; k < kc; ++k)
            for (int j = 0; j < cols; ++j) acc[j] += xi[k] * b[k * ldb + j];
        for (int j = 0; j < cols; ++j) c[i * ldc + j] = acc[j];
    }
}

FwdKernel fwd_kernel() {
    return cpu_simd_enabled() && conv_avx2::compiled() ? conv_avx2::fwd_6x16 : fwd_generic;
}
WgtKernel wgt_kernel() {
    return cpu_simd_enabled() && conv_avx2::compiled() ? conv_avx2::wgt_6x16 : wgt_generic;
}

// ---- pieces ---------------------------------------------------------------------------------

// off[c*R*S + r*S + s] = offset of tap (c, r, s) in the padded image; entries [CRS, rows) are 0
// (padding rows of a micro-panel read valid memory and are discarded).
void tap_offsets(int32_t* off, const DGeom& d, int64_t rows) {
    for (int64_t c = 0; c < d.C; ++c)
        for (int64_t r = 0; r < d.R; ++r)
            for (int64_t s = 0; s < d.S; ++s)
                off[(c * d.R + r) * d.S + s] =
                    static_cast<int32_t>(c * d.Hp * d.Wp + r * d.dh * d.Wp + s * d.dw);
    for (int64_t i = d.CRS; i < rows; ++i) off[i] = 0;
}

// Image n of x into the padded buffer; the border (and the slack after it) is already zero.
void pad_image(float* xp, const float* x, const DGeom& d, int64_t n) {
    const float* src = x + n * d.C * d.H * d.W;
    for (int64_t c = 0; c < d.C; ++c)
        for (int64_t h = 0; h < d.H; ++h)
            std::memcpy(xp + (c * d.Hp + h + d.ph) * d.Wp + d.pw, src + (c * d.H + h) * d.W,
                        sizeof(float) * d.W);
}

// Packs weights (rows x cols, element (i, k) from `at`) into 6-row panels, k-major.
template <typename At>
void pack_weights(float* out, int64_t rows, int64_t cols, At at) {
    for (int64_t i0 = 0; i0 < rows; i0 += kMR)
        for (int64_t k = 0; k < cols; ++k)
            for (int64_t i = 0; i < kMR; ++i)
                out[i0 * cols + k * kMR + i] = i0 + i < rows ? at(i0 + i, k) : 0.f;
}

// Output columns are computed 16 at a time. Flat tiles run along j = p*Wp + q straight across
// the wrap-around columns (best when Q is small, e.g. 10 of Wp = 14); row tiles start at every
// output row and skip them (best when Q is a multiple of the tile width nr). Pick the one with
// fewer tiles.
bool row_tiles(const DGeom& d, int64_t nr) {
    return d.P * ((d.Q + nr - 1) / nr) <= (d.J + nr - 1) / nr;
}

// y (N, K, P, Q) = act(conv(x, packed weights) + bias) over the direct geometry d.
void run_forward(float* y, const float* x, const float* wpk, const float* bias, bool relu,
                 const DGeom& d, const int32_t* off) {
    const int64_t Kp = round_up(d.K, kMR), PQ = d.P * d.Q;
    // Tiles of mr channels x nr columns: 12 x 32 with AVX-512 (masked stores for a row's last
    // columns), else 6 x 16 (a row's last columns through a scratch tile).
    const bool wide = use_avx512() && conv_avx512::compiled();
    const int64_t mr = wide ? kMR512 : kMR, nr = wide ? kNR512 : kNR;
    const FwdKernel kern = fwd_kernel();
    auto run_tile = [&](int rows, int cols, const float* a, const float* xj, float* c,
                        int64_t ldc, const float* bk, bool act) {
        if (wide)
            conv_avx512::fwd_12x32(rows, cols, d.CRS, a, xj, off, c, ldc, bk, act);
        else
            kern(rows, d.CRS, a, xj, off, c, ldc, bk, act);
    };
    const double macs = double(d.N) * d.J * d.K * d.CRS;
    const bool rows_mode = row_tiles(d, nr);
    // A task is a block of output columns of one image: whole rows in row mode, kColBlock
    // flat columns otherwise.
    const int64_t tiles_per_row = (d.Q + nr - 1) / nr;
    const int64_t rows_per_task = std::max<int64_t>(1, kColBlock / (tiles_per_row * nr));
    const int64_t jb_size = std::min(kColBlock, round_up(d.J, nr));
    const int64_t blocks = rows_mode ? (d.P + rows_per_task - 1) / rows_per_task
                                     : (d.J + jb_size - 1) / jb_size;
    const int64_t tasks = d.N * blocks;
    const int64_t xp_floats = padded_floats(d);
    const int64_t tile_floats = rows_mode ? kMR * kNR : Kp * jb_size;
    const bool team = !omp_in_parallel() && macs > kParallelMinMacs && tasks > 1;
#pragma omp parallel if (team)
    {
        // The padded image goes last in the scratch, so reading past its tail is caught.
        float* tile = thread_scratch().get(round_up(tile_floats, 16) + xp_floats);
        float* xp = tile + round_up(tile_floats, 16);
        std::memset(xp, 0, sizeof(float) * xp_floats);
        int64_t cur = -1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t n = t / blocks, blk = t % blocks;
            if (n != cur) {
                pad_image(xp, x, d, n);
                cur = n;
            }
            float* yn = y + n * d.K * PQ;
            if (rows_mode) {
                const int64_t p1 = std::min(d.P, (blk + 1) * rows_per_task);
                for (int64_t p = blk * rows_per_task; p < p1; ++p)
                    for (int64_t q0 = 0; q0 < d.Q; q0 += nr) {
                        const int64_t qn = std::min(nr, d.Q - q0);
                        const float* xj = xp + p * d.Wp + q0;
                        for (int64_t k0 = 0; k0 < d.K; k0 += mr) {
                            const int rows = static_cast<int>(std::min(mr, d.K - k0));
                            const float* bk = bias ? bias + k0 : nullptr;
                            float* yk = yn + k0 * PQ + p * d.Q + q0;
                            if (qn == nr || wide) {  // straight to y (masked past qn)
                                run_tile(rows, static_cast<int>(qn), wpk + k0 * d.CRS, xj, yk, PQ,
                                         bk, relu);
                                continue;
                            }
                            kern(rows, d.CRS, wpk + k0 * d.CRS, xj, off, tile, kNR, bk, relu);
                            for (int i = 0; i < rows; ++i)
                                std::memcpy(yk + i * PQ, tile + i * kNR, sizeof(float) * qn);
                        }
                    }
                continue;
            }
            const int64_t j0 = blk * jb_size, jn = std::min(jb_size, d.J - j0);
            for (int64_t jt = 0; jt < jn; jt += nr)
                for (int64_t k0 = 0; k0 < d.K; k0 += mr)
                    run_tile(static_cast<int>(std::min(mr, d.K - k0)), static_cast<int>(nr),
                             wpk + k0 * d.CRS, xp + j0 + jt, tile + k0 * jb_size + jt, jb_size,
                             nullptr, false);
            // Valid columns of the block back to (K, P, Q), adding the bias (and ReLU) as the
            // row tiles' kernel does.
            for (int64_t p = j0 / d.Wp; p * d.Wp < j0 + jn; ++p) {
                const int64_t q0 = std::max<int64_t>(0, j0 - p * d.Wp);
                const int64_t q1 = std::min(d.Q, j0 + jn - p * d.Wp);
                if (q1 <= q0) continue;
                const int64_t src0 = p * d.Wp + q0 - j0;
                for (int64_t k = 0; k < d.K; ++k) {
                    const float* src = tile + k * jb_size + src0;
                    float* dst = yn + k * PQ + p * d.Q + q0;
                    const float bk = bias ? bias[k] : 0.f;
                    if (relu) {
                        for (int64_t q = 0; q < q1 - q0; ++q) {
                            const float v = src[q] + bk;
                            dst[q] = v > 0.f ? v : 0.f;
                        }
                    } else if (bias) {
                        for (int64_t q = 0; q < q1 - q0; ++q) dst[q] = src[q] + bk;
                    } else {  // as the row tiles store it (no + 0.f turning -0 into +0)
                        std::memcpy(dst, src, sizeof(float) * (q1 - q0));
                    }
                }
            }
        }
    }
}

}  // namespace

// ---- public ---------------------------------------------------------------------------------

bool applicable_forward(const ConvGeom& g) { return plain(g) && geometry_ok(forward_dgeom(g)); }

bool applicable_backward_input(const ConvGeom& g) {
    return plain(g) && geometry_ok(backward_input_dgeom(g));
}

bool applicable_backward_weight(const ConvGeom& g) {
    return plain(g) && geometry_ok(forward_dgeom(g)) &&
           weight_groups(g) * partial_floats(g) <= kMaxPartials;
}

int64_t workspace_floats(const ConvGeom& g) {
    int64_t n = 0;
    const int64_t CRS = g.C * g.R * g.S, KRS = g.K * g.R * g.S;
    if (applicable_forward(g)) n = std::max(n, round_up(CRS, 16) + round_up(g.K, kMR) * CRS);
    if (applicable_backward_input(g))
        n = std::max(n, round_up(KRS, 16) + round_up(g.C, kMR) * KRS);
    if (applicable_backward_weight(g))
        n = std::max(n, wgt_offset_floats(CRS) + weight_groups(g) * partial_floats(g));
    return n;
}

void forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
             float* ws, bool relu) {
    const DGeom d = forward_dgeom(g);
    int32_t* off = reinterpret_cast<int32_t*>(ws);
    float* wpk = ws + round_up(d.CRS, 16);
    tap_offsets(off, d, d.CRS);
    pack_weights(wpk, g.K, d.CRS, [&](int64_t k, int64_t crs) { return w[k * d.CRS + crs]; });
    run_forward(y, x, wpk, b, relu, d, off);
}

void backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g, float* ws) {
    const DGeom d = backward_input_dgeom(g);
    const int64_t RS = g.R * g.S, CRS = g.C * RS;
    int32_t* off = reinterpret_cast<int32_t*>(ws);
    float* wpk = ws + round_up(d.CRS, 16);
    tap_offsets(off, d, d.CRS);
    // Row c, column (k, r, s) of the transposed, flipped filter is w[k, c, R-1-r, S-1-s].
    pack_weights(wpk, g.C, d.CRS, [&](int64_t c, int64_t krs) {
        const int64_t k = krs / RS, rs = krs % RS;
        return w[k * CRS + c * RS + (RS - 1 - rs)];
    });
    run_forward(dx, dy, wpk, nullptr, false, d, off);
}

void backward_weight(float* dw, const float* dy, const float* x, const ConvGeom& g, float* ws) {
    const DGeom d = forward_dgeom(g);
    // 12-tap tiles only for more than 8 output channels: at 8 columns they ran 0.74-0.94x the
    // 6-tap AVX2 tiles on LeNet's conv1 (K = 6: half-width vectors, 12-tap padding of 25 taps).
    const bool wide = use_avx512() && conv_avx512::compiled() && g.K > 8;
    const int64_t rows = wgt_rows(wide), cols = wgt_cols(g, wide);
    const int64_t CRSp = round_up(d.CRS, rows), Kp = round_up(g.K, cols), PQ = g.P * g.Q;
    const int64_t groups = weight_groups(g), part_floats = partial_floats(g);
    int32_t* off = reinterpret_cast<int32_t*>(ws);
    float* parts = ws + wgt_offset_floats(d.CRS);
    tap_offsets(off, d, CRSp);
    const int64_t xp_floats = padded_floats(d), dyt_floats = round_up(d.J * Kp, 16);
    const WgtKernel kern = wgt_kernel();
    const bool simd = cpu_simd_enabled() && conv_avx2::compiled();
    const double macs = double(g.N) * d.J * Kp * CRSp;
    const bool team = !omp_in_parallel() && macs > kParallelMinMacs && groups > 1;
#pragma omp parallel if (team)
    {
        float* dyt = thread_scratch().get(dyt_floats + xp_floats);
        float* xp = dyt + dyt_floats;
        // Borders, wrap-around columns (q >= Q) and channel padding stay zero for every image.
        std::memset(dyt, 0, sizeof(float) * (dyt_floats + xp_floats));
#pragma omp for schedule(static)
        for (int64_t gi = 0; gi < groups; ++gi) {
            float* part = parts + gi * part_floats;
            std::memset(part, 0, sizeof(float) * part_floats);
            const int64_t n0 = gi * g.N / groups, n1 = (gi + 1) * g.N / groups;
            for (int64_t n = n0; n < n1; ++n) {
                pad_image(xp, x, d, n);
                // dy^T: row j = p*Wp + q holds dy[n, :, p, q] (K floats, padded to Kp).
                const float* dyn = dy + n * g.K * PQ;
                for (int64_t p = 0; p < g.P; ++p) {
                    if (simd) {
                        conv_avx2::transpose(dyt + p * d.Wp * Kp, Kp, dyn + p * g.Q, PQ, g.K,
                                             g.Q);
                        continue;
                    }
                    for (int64_t k = 0; k < g.K; ++k) {
                        const float* src = dyn + k * PQ + p * g.Q;
                        float* dst = dyt + p * d.Wp * Kp + k;
                        for (int64_t q = 0; q < g.Q; ++q) dst[q * Kp] = src[q];
                    }
                }
                for (int64_t j0 = 0; j0 < d.J; j0 += kDepthBlock) {
                    const int64_t jn = std::min(kDepthBlock, d.J - j0);
                    for (int64_t k0 = 0; k0 < Kp; k0 += cols)
                        for (int64_t i0 = 0; i0 < CRSp; i0 += rows) {
                            if (wide)
                                conv_avx512::wgt_12x32(static_cast<int>(cols), jn, xp + j0,
                                                       off + i0, dyt + j0 * Kp + k0, Kp,
                                                       part + i0 * Kp + k0, Kp);
                            else
                                kern(static_cast<int>(cols), jn, xp + j0, off + i0,
                                     dyt + j0 * Kp + k0, Kp, part + i0 * Kp + k0, Kp);
                        }
                }
            }
        }
        // dw[k, crs] += sum over groups (in group order) of part[crs, k].
#pragma omp for schedule(static)
        for (int64_t k = 0; k < g.K; ++k)
            for (int64_t crs = 0; crs < d.CRS; ++crs) {
                float s = 0.f;
                for (int64_t gi = 0; gi < groups; ++gi) s += parts[gi * part_floats + crs * Kp + k];
                dw[k * d.CRS + crs] += s;
            }
    }
}

}  // namespace conv_direct
}  // namespace cpu
}  // namespace cnnkit
