// Direct convolution for one group (layout and contracts in conv_direct.h).
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
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/common.h"
#include "core/runtime.h"
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
constexpr int64_t kMaxNR = 80;         // widest forward tile (4 x 80, AVX-512)
constexpr int64_t kMaxPanel = 16;      // tallest weight panel
constexpr int64_t kColBlock = 256;     // output columns per forward task (rounded up to the tile)
constexpr int64_t kDepthBlock = 256;   // columns per weight-gradient depth block
constexpr int64_t kMaxGroups = 16;     // image groups of the weight gradient
constexpr int64_t kMaxPartials = int64_t(1) << 23;  // floats of weight-gradient partials
constexpr int64_t kMaxLaneChannels = 8;  // the weight gradient's lane path (see there)
constexpr int64_t kMaxLaneFloats = int64_t(1) << 16;  // ... and its lanes per thread
// Below this many MACs, no thread team: waking a worker that has gone to sleep (cnnkit's short
// OpenMP spin) costs 10-50 us, and LeNet-5's conv2 at batch 1 (336 K MACs, a few us) made
// 2-thread predict 3-5x slower than 1 thread at 2^18.
constexpr double kParallelMinMacs = 1 << 20;
constexpr int64_t kMaxStride = 8;      // strides the direct path takes (phase tables)

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// Strided layers on the direct path (forward, backward-weight); CNNKIT_CONV_STRIDED_DIRECT=0
// at start-up, or set_strided_direct(false), sends them to im2col + GEMM as before (A/B runs).
std::atomic<bool>& strided_flag() {
    static std::atomic<bool> on{[] {
        const char* e = std::getenv("CNNKIT_CONV_STRIDED_DIRECT");
        return !(e && e[0] == '0' && e[1] == 0);
    }()};
    return on;
}
bool strided_enabled() { return strided_flag().load(std::memory_order_relaxed); }

// Geometry of one direct convolution: input (N,C,H,W) padded to (Hp,Wp), K output channels,
// R x S taps with dilation (dh, dw) and stride (sh, sw), output (P,Q).
//
// With stride 1 the padded image of a channel is one plane of Hs = Hp rows, Ws = Wp apart.
// With a stride, each channel is split into its stride phases: phase (a, b) is the plane of
// padded pixels (i*sh + a, j*sw + b), Hs = ceil(Hp/sh) rows of Ws = ceil(Wp/sw), and only the
// phases some tap reads are stored (a in {r*dh % sh}, b in {s*dw % sw}). Tap (r, s) of output
// (p, q) then reads phase (r*dh % sh, s*dw % sw) at row p + r*dh/sh, column q + s*dw/sw: a
// stride-1 read, so the same micro-kernels run. Output pixel (p, q) is column j = p*Ws + q, of
// J = P*Ws per image (columns q >= Q are computed and thrown away).
struct DGeom {
    int64_t N, C, H, W, K, R, S, ph, pw, dh, dw, sh, sw;
    int64_t Hp, Wp, Hs, Ws, P, Q, J, CRS;
    int64_t nra, nca;         // stored row and column phases per channel
    int8_t rslot[kMaxStride], cslot[kMaxStride];  // phase -> its slot (-1: not stored)
    int8_t rphase[kMaxStride], cphase[kMaxStride];  // slot -> its phase
    int64_t plane() const { return Hs * Ws; }
    int64_t image_floats() const { return C * nra * nca * plane(); }
};

DGeom make_dgeom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                 int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t sh = 1,
                 int64_t sw = 1) {
    DGeom d{};
    d.N = N; d.C = C; d.H = H; d.W = W; d.K = K; d.R = R; d.S = S;
    d.ph = ph; d.pw = pw; d.dh = dh; d.dw = dw; d.sh = sh; d.sw = sw;
    d.Hp = H + 2 * ph;
    d.Wp = W + 2 * pw;
    d.CRS = C * R * S;
    if (sh < 1 || sw < 1 || sh > kMaxStride || sw > kMaxStride || dh < 1 || dw < 1) return d;
    d.Hs = (d.Hp + sh - 1) / sh;
    d.Ws = (d.Wp + sw - 1) / sw;
    const int64_t span_h = d.Hp - dh * (R - 1) - 1, span_w = d.Wp - dw * (S - 1) - 1;
    d.P = span_h < 0 ? 0 : span_h / sh + 1;
    d.Q = span_w < 0 ? 0 : span_w / sw + 1;
    d.J = d.P * d.Ws;
    for (int64_t i = 0; i < kMaxStride; ++i) d.rslot[i] = d.cslot[i] = -1;
    for (int64_t r = 0; r < R; ++r) {
        const int64_t a = r * dh % sh;
        if (d.rslot[a] < 0) d.rslot[a] = 0;
    }
    for (int64_t s = 0; s < S; ++s) {
        const int64_t b = s * dw % sw;
        if (d.cslot[b] < 0) d.cslot[b] = 0;
    }
    for (int64_t a = 0; a < sh; ++a)
        if (d.rslot[a] >= 0) {
            d.rphase[d.nra] = static_cast<int8_t>(a);
            d.rslot[a] = static_cast<int8_t>(d.nra++);
        }
    for (int64_t b = 0; b < sw; ++b)
        if (d.cslot[b] >= 0) {
            d.cphase[d.nca] = static_cast<int8_t>(b);
            d.cslot[b] = static_cast<int8_t>(d.nca++);
        }
    return d;
}

DGeom forward_dgeom(const ConvGeom& g) {
    return make_dgeom(g.N, g.C, g.H, g.W, g.K, g.R, g.S, g.pad_h, g.pad_w, g.dil_h, g.dil_w,
                      g.stride_h, g.stride_w);
}

// Backward-input as a convolution of dy (K channels, P x Q) producing C channels of H x W
// (stride 1 only).
DGeom backward_input_dgeom(const ConvGeom& g) {
    return make_dgeom(g.N, g.K, g.P, g.Q, g.C, g.R, g.S, g.dil_h * (g.R - 1) - g.pad_h,
                      g.dil_w * (g.S - 1) - g.pad_w, g.dil_h, g.dil_w);
}

// Floats of the padded image buffer plus a zero tail the last taps read into: the last tap
// of the last stored plane sits at image_floats() - plane() + (Hs - P)*Ws + Ws - Q at most (a
// tap's row shift is at most Hs - P, its column shift at most Ws - Q) and flat tiles run up to
// 31 columns past J = P*Ws (15 for the 16-column tiles), so reads stay below image_floats() +
// Ws + kMaxNR.
int64_t padded_floats(const DGeom& d) { return round_up(d.image_floats() + d.Ws + kMaxNR, 16); }

bool geometry_ok(const DGeom& d) {
    return d.P > 0 && d.Q > 0 && d.ph >= 0 && d.pw >= 0 && d.nra > 0 && d.nca > 0 &&
           padded_floats(d) < INT32_MAX;
}

// Forward and backward-weight: one group, not a 1x1 stride-1 GEMM, strides up to kMaxStride
// (phase-split image). Backward-input: stride 1 only.
bool plain(const ConvGeom& g) {
    return g.groups == 1 && !conv_is_pointwise(g) && g.dil_h >= 1 && g.dil_w >= 1 &&
           g.stride_h >= 1 && g.stride_w >= 1 &&
           ((g.stride_h == 1 && g.stride_w == 1) ||
            (strided_enabled() && g.stride_h <= kMaxStride && g.stride_w <= kMaxStride));
}

bool plain_stride1(const ConvGeom& g) {
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

// off[c*R*S + r*S + s] = offset of tap (c, r, s) in the padded (phase-split) image; entries
// [CRS, rows) are 0 (padding rows of a micro-panel read valid memory and are discarded).
// (The divisions are taken once per tap row and column, not per entry: this runs on every
// forward, 2% of a batch-1 ResNet-20 predict when it divided per entry.)
void tap_offsets(int32_t* off, const DGeom& d, int64_t rows) {
    const int64_t plane = d.plane(), RS = d.R * d.S;
    int32_t* o = off;
    for (int64_t r = 0; r < d.R; ++r)
        for (int64_t s = 0; s < d.S; ++s) {  // channel 0, then every channel adds its stride
            const int64_t slot = d.rslot[r * d.dh % d.sh] * d.nca + d.cslot[s * d.dw % d.sw];
            *o++ = static_cast<int32_t>(slot * plane + (r * d.dh / d.sh) * d.Ws + s * d.dw / d.sw);
        }
    const int32_t cstride = static_cast<int32_t>(d.nra * d.nca * plane);
    for (int64_t c = 1; c < d.C; ++c)
        for (int64_t i = 0; i < RS; ++i) off[c * RS + i] = off[(c - 1) * RS + i] + cstride;
    for (int64_t i = d.CRS; i < rows; ++i) off[i] = 0;
}

void copy_rows_generic(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows,
                       int64_t n) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * ldd, src + r * lds, sizeof(float) * n);
}

using CopyRows = void (*)(float*, int64_t, const float*, int64_t, int64_t, int64_t);
CopyRows row_copier() {
    if (use_avx512() && conv_avx512::compiled()) return conv_avx512::copy_rows;
    if (cpu_simd_enabled() && conv_avx2::compiled()) return conv_avx2::copy_rows;
    return copy_rows_generic;
}

// (A loop GCC vectorizes, unlike a stride known only at run time.)
void split2_generic(float* de, float* dd, const float* row, int64_t half) {
    if (de && dd) {
        for (int64_t j = 0; j < half; ++j) {
            de[j] = row[2 * j];
            dd[j] = row[2 * j + 1];
        }
    } else if (de) {
        for (int64_t j = 0; j < half; ++j) de[j] = row[2 * j];
    } else {
        for (int64_t j = 0; j < half; ++j) dd[j] = row[2 * j + 1];
    }
}

using Split2 = void (*)(float*, float*, const float*, int64_t);
Split2 splitter2() {
    if (use_avx512() && conv_avx512::compiled()) return conv_avx512::split2;
    if (cpu_simd_enabled() && conv_avx2::compiled()) return conv_avx2::split2;
    return split2_generic;
}

// Image n of x into the padded buffer; the border (and the slack after it) is already zero.
void pad_image(float* xp, const float* x, const DGeom& d, int64_t n) {
    const float* src = x + n * d.C * d.H * d.W;
    const CopyRows copy = row_copier();
    const Split2 split = splitter2();
    if (d.sh == 1 && d.sw == 1) {
        for (int64_t c = 0; c < d.C; ++c)
            copy(xp + (c * d.Hp + d.ph) * d.Wp + d.pw, d.Wp, src + c * d.H * d.W, d.W, d.H, d.W);
        return;
    }
    // Phase (a, b), row i, column j holds padded pixel (i*sh + a, j*sw + b), that is input
    // pixel (i*sh + a - ph, j*sw + b - pw) where it lies inside the image.
    for (int64_t c = 0; c < d.C; ++c)
        for (int64_t ia = 0; ia < d.nra; ++ia) {
            const int64_t a = d.rphase[ia];
            for (int64_t i = 0; i < d.Hs; ++i) {
                const int64_t h = i * d.sh + a - d.ph;
                if (h < 0 || h >= d.H) continue;
                const float* row = src + (c * d.H + h) * d.W;
                float* dst0 = xp + (c * d.nra + ia) * d.nca * d.plane() + i * d.Ws;
                if (d.sw == 1) {
                    copy(dst0 + d.pw, 0, row, 0, 1, d.W);
                    continue;
                }
                if (d.sw == 2) {
                    // Input column w goes to phase (w + pw) % 2, column (w + pw) / 2: the even
                    // columns to phase pw % 2 from column pw / 2, the odd ones to the other
                    // phase from column (pw + 1) / 2.
                    const int64_t be = d.pw & 1, bo = (d.pw + 1) & 1;
                    float* de = d.cslot[be] >= 0
                                    ? dst0 + d.cslot[be] * d.plane() + d.pw / 2 : nullptr;
                    float* dd = d.cslot[bo] >= 0
                                    ? dst0 + d.cslot[bo] * d.plane() + (d.pw + 1) / 2 : nullptr;
                    const int64_t half = d.W / 2;
                    split(de, dd, row, half);
                    if ((d.W & 1) && de) de[half] = row[d.W - 1];
                    continue;
                }
                for (int64_t ib = 0; ib < d.nca; ++ib) {
                    const int64_t b = d.cphase[ib];
                    // columns j with 0 <= j*sw + b - pw < W
                    const int64_t lo = d.pw - b, j0 = lo <= 0 ? 0 : (lo + d.sw - 1) / d.sw;
                    const int64_t j1 = std::min(d.Ws, (d.W + d.pw - b + d.sw - 1) / d.sw);
                    float* dst = dst0 + ib * d.plane();
                    const float* s0 = row + b - d.pw;
                    for (int64_t j = j0; j < j1; ++j) dst[j] = s0[j * d.sw];
                }
            }
        }
}

// Packs weights (rows x cols, element (i, k) from `at`) into pr-row panels, k-major.
template <typename At>
void pack_weights(float* out, int64_t rows, int64_t cols, int64_t pr, At at) {
    for (int64_t i0 = 0; i0 < rows; i0 += pr)
        for (int64_t i = 0; i < pr; ++i)  // row by row (a panel stays in cache)
            for (int64_t k = 0; k < cols; ++k)
                out[i0 * cols + k * pr + i] = i0 + i < rows ? at(i0 + i, k) : 0.f;
}

// pack_weights for a row-major source (row i at w + i * cols), row i scaled by scale[i] when
// scale is not null: the AVX-512 set transposes 16 x 16 blocks in registers (0.42 against
// ~1.0-1.5 ns a float for the scalar loops, whose stores are 64 bytes apart; the packing was
// a sixth of ResNet-20's batch-1 forward), the others read each row once, in order.
void pack_rows(float* out, const float* w, int64_t rows, int64_t cols, int64_t pr,
               const float* scale) {
    if (pr <= 16 && use_avx512() && conv_avx512::compiled())
        return conv_avx512::pack_panels(out, w, rows, cols, pr, scale);
    for (int64_t i0 = 0; i0 < rows; i0 += pr)
        for (int64_t i = 0; i < pr; ++i) {
            float* o = out + i0 * cols + i;
            if (i0 + i < rows) {
                const float* src = w + (i0 + i) * cols;
                if (scale) {
                    const float a = scale[i0 + i];
                    for (int64_t k = 0; k < cols; ++k) o[k * pr] = src[k] * a;
                } else {
                    for (int64_t k = 0; k < cols; ++k) o[k * pr] = src[k];
                }
            } else {
                for (int64_t k = 0; k < cols; ++k) o[k * pr] = 0.f;
            }
        }
}

// Floats of packed weights for `rows` rows in any panel height used here.
int64_t packed_floats(int64_t rows, int64_t cols) {
    return std::max({round_up(rows, kMR), round_up(rows, 8), round_up(rows, kMaxPanel)}) * cols;
}

// The forward tile: up to mr output channels x nr columns, weights in pr-row panels. kind 0:
// the portable/AVX2 6 x 16; 1: AVX-512 12 x 32 over two 6-row panels; 2: AVX-512 mr x nr
// from one mr-row panel (conv_avx512::fwd_panel); 3 and 4: the AVX-512 and AVX2
// channel-vector tiles (mr channels x nr pixels, run_forward_kpix).
struct Tile {
    int kind;
    int64_t mr, nr, pr;
};

// Output columns are computed nr at a time. Flat tiles run along j = p*Ws + q straight across
// the wrap-around columns (best when Q is small, e.g. 10 of Wp = 14); row tiles start at every
// output row and skip them (best when Q is a multiple of the tile width nr). Pick the one with
// fewer tiles.
bool row_tiles(const DGeom& d, int64_t nr) {
    return d.P * ((d.Q + nr - 1) / nr) <= (d.J + nr - 1) / nr;
}

// Output columns the tiles of width nr compute per image (row or flat tiles, as run_forward
// picks them).
int64_t computed_columns(const DGeom& d, int64_t nr) {
    return row_tiles(d, nr) ? d.P * ((d.Q + nr - 1) / nr) * nr : round_up(d.J, nr);
}

// Tile shapes of the AVX-512 set, from one of two tables (the same bits with any tile: each
// output element takes its FMAs in tap order whatever the tile).
//
// Table "t12" (AMD, and the default elsewhere): 12 x 32 (two 6-row panels); 4 x 80 where it
// computes at least 15% fewer columns (small planes: ResNet-20's 8x8 layers compute 96
// columns for 64 outputs in 32-wide tiles, 80 in one 80-wide tile) or for at most 4 output
// channels (12 x 32 then has at most 8 accumulators, too few to cover the FMA latency).
// Measured on Zen 5 (bench_conv --net resnet20, one thread): 64->64 at 8x8 forward 1.23x,
// backward-input 1.15x; 3x3/2 32->64 forward 1.11x; backward-input of the 3-channel first
// layer 1.2x; 4 x 80 lost 10-35% on the 16- and 32-channel 32x32 and 16x16 layers, as did
// 8 x 48, 6 x 64 and 16 x 16 on most shapes.
//
// Table "t16" (Intel): as t12, then 16 x 16 instead of 12 x 32 for more than 8 channels
// where 16-row tiles pad no more rows than 12-row ones (K = 16, 32, 48, 64, ...). Measured
// on an Intel Xeon with AVX-512 and AMX (family 6 model 167; bench_conv --kernels
// avx512#t12,avx512#t16, 5 alternating rounds, one thread): LeNet-5's conv2 forward 1.27x,
// ResNet-20's 32-channel 16x16 layers 1.29x forward and backward-input, its 16-channel 32x32
// layers 1.18x, the 64->64 CIFAR layer 1.03-1.07x; 8x8 layers stay on 4 x 80 (equal there).
// Also in t16 (Intel), the channel-vector tiles (kind 3, "kpix": 16-channel vectors times
// 6-24 pixels, conv_avx512::fwd_kpix) for layers of 48 or more channels within the limits in
// choose_tile: every output pixel is a column (no wrap-around columns) and a tap loads fewer
// values per FMA (4 weight vectors and 6 broadcasts for 24 FMAs, against 17 loads for 16 in
// 16 x 16). Measured on the same Xeon (kpix over the default, forward, one thread): ResNet-20's
// 64-channel 8x8 layers 1.30-1.37x (backward-input 1.25x), its 32 -> 64 stride-2 layer 1.26x,
// 128 at 28x28 1.17-1.23x and 8x8 1.35x, 64 at 56x56 1.10x; where 16 divides the output
// width they do not pay (64 at 32x32 0.85-0.90x, at 16x16 0.97x; 48 at 16x16 won 1.17x, left
// out to keep the rule simple), nor for 256 and 512 channels (0.66-0.80x) or few taps
// (3 -> 64 channels: 0.18x). Not measured on AMD, so not in t12.
// CNNKIT_CONV_TILE=MRxNR (or kpix) forces one tile for every layer,
// CNNKIT_CONV_TILE_TABLE=t12|t16 a table (set_forced_tile / set_tile_table: A/B measurements
// and tests).
constexpr Tile kTiles[] = {{1, 12, 32, 6}, {2, 4, 80, 4}, {2, 8, 48, 8}, {2, 6, 64, 6},
                           {2, 16, 16, 16}};

// The channel-vector tile (kind 3, conv_avx512::fwd_kpix) for K output channels: up to 64
// channels (mr) x as many pixels (nr) as the registers hold; weights in 16-row panels.
Tile kpix_tile(int64_t K) {
    const int kv = static_cast<int>(std::min<int64_t>(4, (K + 15) / 16));
    return {3, 16 * kv, conv_avx512::kpix_max(kv), 16};
}
constexpr int kKpixIndex = 5;  // its index for set_forced_tile ("kpix")

int tile_index(const std::string& name) {
    for (int i = 0; i < 5; ++i)
        if (std::to_string(kTiles[i].mr) + "x" + std::to_string(kTiles[i].nr) == name) return i;
    if (name == "kpix") return kKpixIndex;
    return -1;
}

// -1: the per-layer choice; else the index in kTiles forced for every layer.
std::atomic<int>& forced_tile() {
    static std::atomic<int> t{[] {
        const char* e = std::getenv("CNNKIT_CONV_TILE");
        return e ? tile_index(e) : -1;
    }()};
    return t;
}

// 0: t12, 1: t16 (see above); the default by the CPU's vendor.
std::atomic<int>& tile_table() {
    static std::atomic<int> t{[] {
        const char* e = std::getenv("CNNKIT_CONV_TILE_TABLE");
        if (e && std::string(e) == "t12") return 0;
        if (e && std::string(e) == "t16") return 1;
        return cpu_is_intel() ? 1 : 0;
    }()};
    return t;
}

// The AVX2 set's channel-vector tile (kind 4, conv_avx2::fwd_kpix): 16 channels x 6 pixels
// from 16-row panels, K > 16 in groups of 16.
constexpr Tile kKpixAvx2 = {4, 16, conv_avx2::kKpixPixels, 16};

Tile choose_tile(const DGeom& d, bool wide) {
    const int forced = forced_tile().load(std::memory_order_relaxed);
    if (!wide) {
        // AVX2: the channel-vector tile where the 6 x 16 column tiles compute at least 20%
        // more columns than there are outputs (output rows that 16 does not divide), for
        // whole 16-channel groups (or 48+ channels) over 128 to 1152 taps. Measured on Zen 3
        // (bench_conv --kernels avx2,avx2@kpix, one thread, kpix over 6 x 16): LeNet-5's
        // conv2 forward (16 channels, 10x10, 150 taps) 1.25-1.4x; ResNet-20's 64-channel 8x8
        // layers 1.16x forward and 1.15x backward-input, its 32 -> 64 stride-2 layer 1.16x;
        // where 16 divides the row it loses (16 and 32 channels at 32x32 and 16x16: 0.84x,
        // 64 at 32x32 0.87x), and below 128 taps (3 -> 16 channels: 0.3-0.5x) or for 6
        // channels (LeNet-5's conv2 backward-input: 0.44x). Past 1152 taps (128 channels
        // of 3x3) the 16-row weight panel outgrows L1 and L2's share; not measured there.
        const bool avx2 = cpu_simd_enabled() && conv_avx2::compiled();
        if (avx2 && forced == kKpixIndex) return kKpixAvx2;
        if (avx2 && forced < 0 && (d.K % 16 == 0 || d.K >= 48) && d.CRS >= 128 &&
            d.CRS <= 1152 && computed_columns(d, kNR) * 100 >= d.P * d.Q * 120)
            return kKpixAvx2;
        return {0, kMR, kNR, kMR};
    }
    const Tile t12 = kTiles[0], t4 = kTiles[1], t16 = kTiles[4];
    if (forced == kKpixIndex) return kpix_tile(d.K);
    if (forced >= 0) return kTiles[forced];
    // t16: channel-vector tiles for rows of outputs that 16-column tiles do not divide (they
    // then compute and drop columns; where they divide it, 64 channels at 32x32 ran 0.85-0.90x
    // and at 16x16 0.97x in kpix), 48 or more channels, at least 128 taps (below, the scatter
    // of the outputs costs more than the columns saved: 0.18x for 3 -> 64 channels) and at
    // most 80 K floats of weights per 64-channel group (past that, streaming them from L2 for
    // every tile loses: 0.66-0.80x for 256 and 512 channels).
    if (tile_table().load(std::memory_order_relaxed) == 1 && d.Q % 16 != 0 && d.K >= 48 &&
        d.CRS >= 128 && std::min<int64_t>(64, round_up(d.K, 16)) * d.CRS <= 80 * 1024)
        return kpix_tile(d.K);
    // t16: 6 x 64 for 5 or 6 channels over 128 or more taps, where 12 x 32 computes 12 rows
    // for 6 (LeNet-5's conv2 backward-input: 6 channels of 400 taps, 1.15x); over fewer taps
    // (its conv1 forward, 25) the 6 x 64 tile's stores outweigh the FMAs (0.73x).
    if (tile_table().load(std::memory_order_relaxed) == 1 && d.K > 4 && d.K <= 6 &&
        d.CRS >= 128)
        return kTiles[3];
    if (d.K <= 4) return t4;
    if (computed_columns(d, t4.nr) * 100 <= computed_columns(d, t12.nr) * 85) return t4;
    if (tile_table().load(std::memory_order_relaxed) == 1 && d.K > 8 &&
        round_up(d.K, 16) <= round_up(d.K, 12))
        return t16;
    return t12;
}

// Weights still to be packed (rows x cols, pr-row panels, into out) by the team that runs the
// forward: the panels are split over the threads before the tiles start. Packing alone was a
// fifth of a batch-1 forward (the 64- and 128-channel layers), serial while the team waited.
struct PackJob {
    float* out;
    const float* w;
    const float* scale;
    int64_t rows, cols, pr;
    void run() const {  // inside a parallel region: the threads' share, then a barrier
        const int64_t g = pr == 6 ? 12 : 16;  // rows a pack_panels call handles at once
        const int64_t groups = (rows + g - 1) / g;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < groups; ++i) {
            const int64_t i0 = i * g;
            pack_rows(out + i0 * cols, w + i0 * cols, std::min(g, rows - i0), cols, pr,
                      scale ? scale + i0 : nullptr);
        }
    }
};

// run_forward with channel-vector tiles: tasks of (image, block of pixels), every task all
// output channels in groups of t.mr; any pixels make a tile, so a block is a run of whole tiles
// of consecutive output pixels (p, q), reading the padded image at p*Ws + q (in a strided
// layer's phase layout as well).
void run_forward_kpix(float* y, const float* x, const float* wpk, const float* bias, bool relu,
                      const DGeom& d, const int32_t* off, const Tile& t, const PackJob* job) {
    const int64_t PQ = d.P * d.Q;
    const int kv = static_cast<int>(t.mr / 16), np = static_cast<int>(t.nr);
    // pixel tables: offset in the padded image, offset in the output plane
    static thread_local std::vector<int32_t> pix;
    pix.resize(static_cast<size_t>(2 * PQ));
    int32_t* xpix = pix.data();
    int32_t* cpix = xpix + PQ;
    for (int64_t p = 0; p < d.P; ++p)
        for (int64_t q = 0; q < d.Q; ++q) {
            xpix[p * d.Q + q] = static_cast<int32_t>(p * d.Ws + q);
            cpix[p * d.Q + q] = static_cast<int32_t>(p * d.Q + q);
        }
    const int nthreads = omp_in_parallel() ? 1 : omp_get_max_threads();
    // A task is a block of pixels of one image, a multiple of 16 pixels (so that two threads
    // never write the same cache line of an output row: with tiles handed out one by one, a
    // batch-1 64-channel 8x8 layer ran 2.2x slower on 2 threads than on 1), at most 512, and
    // smaller when there are few images (about 4 tasks a thread). Tiles start at each block's
    // first pixel; any split gives the same bits.
    const int64_t want = 4 * int64_t(nthreads), per_image = (want + d.N - 1) / d.N;
    const int64_t bs = std::min<int64_t>(512, round_up((PQ + per_image - 1) / per_image, 16));
    const int64_t blocks = (PQ + bs - 1) / bs;
    const int64_t tasks = d.N * blocks;
    const double macs = double(d.N) * PQ * d.K * d.CRS;
    const bool team = !omp_in_parallel() && macs > kParallelMinMacs && tasks > 1;
    const int64_t xp_floats = padded_floats(d);
#pragma omp parallel if (team)
    {
        if (job) job->run();
        float* xp = thread_scratch().get(xp_floats);
        std::memset(xp, 0, sizeof(float) * xp_floats);
        int64_t cur = -1;
        const int64_t chunk = d.N < 2 * nthreads ? 1 : (tasks + nthreads - 1) / nthreads;
#pragma omp for schedule(dynamic, chunk)
        for (int64_t task = 0; task < tasks; ++task) {
            const int64_t n = task / blocks, blk = task % blocks;
            if (n != cur) {
                pad_image(xp, x, d, n);
                cur = n;
            }
            float* yn = y + n * d.K * PQ;
            const int64_t i1 = std::min(PQ, (blk + 1) * bs);
            for (int64_t i0 = blk * bs; i0 < i1; i0 += np) {
                const int cnt = static_cast<int>(std::min<int64_t>(np, i1 - i0));
                for (int64_t k0 = 0; k0 < d.K; k0 += t.mr) {
                    const int rows = static_cast<int>(std::min(t.mr, d.K - k0));
                    const float* bk = bias ? bias + k0 : nullptr;
                    if (t.kind == 4)
                        conv_avx2::fwd_kpix(cnt, rows, d.CRS, wpk + k0 * d.CRS, xp, xpix + i0,
                                            off, yn + k0 * PQ, cpix + i0, PQ, bk, relu);
                    else
                        conv_avx512::fwd_kpix(kv, cnt, rows, d.CRS, wpk + k0 * d.CRS, xp,
                                              xpix + i0, off, yn + k0 * PQ, cpix + i0, PQ, bk,
                                              relu);
                }
            }
        }
    }
}

// y (N, K, P, Q) = act(conv(x, packed weights) + bias) over the direct geometry d, with the
// weights packed for tile t.
void run_forward(float* y, const float* x, const float* wpk, const float* bias, bool relu,
                 const DGeom& d, const int32_t* off, const Tile& t,
                 const PackJob* job = nullptr) {
    if (t.kind == 3 || t.kind == 4) return run_forward_kpix(y, x, wpk, bias, relu, d, off, t, job);
    const int64_t PQ = d.P * d.Q;
    // Tiles of mr channels x nr columns: AVX-512 tiles store a row's last columns masked, the
    // 6 x 16 tiles through a scratch tile.
    const bool wide = t.kind != 0;
    const int64_t mr = t.mr, nr = t.nr;
    const FwdKernel kern = fwd_kernel();
    const bool simd_store = kern == conv_avx2::fwd_6x16;  // the AVX2 copy-out of flat tiles
    auto run_tile = [&](int rows, int cols, const float* a, const float* xj, float* c,
                        int64_t ldc, const float* bk, bool act) {
        if (t.kind == 1)
            conv_avx512::fwd_12x32(rows, cols, d.CRS, a, xj, off, c, ldc, bk, act);
        else if (t.kind == 2)
            conv_avx512::fwd_panel(static_cast<int>(mr), static_cast<int>(nr / 16), rows, cols,
                                   d.CRS, a, xj, off, c, ldc, bk, act);
        else
            kern(rows, d.CRS, a, xj, off, c, ldc, bk, act);
    };
    const double macs = double(d.N) * d.J * d.K * d.CRS;
    const bool rows_mode = row_tiles(d, nr);
    // A task is a block of output columns of one image: whole rows in row mode, about
    // kColBlock flat columns (whole tiles, spread evenly over the blocks) otherwise.
    // Few images (batch 1) leave threads idle: then the blocks get smaller, down to a row or
    // a tile, until there are about 4 tasks a thread, and if that is not enough tasks also
    // split the output channels, in groups of whole mr-row tiles. Either way every output is
    // computed by the same tile as in one task (tiles start at multiples of nr in j, rows in
    // row mode, multiples of mr in k): the results do not depend on the thread count.
    // CNNKIT_CONV_KSPLIT=0 turns both splits off (for measurements).
    const int nthreads = omp_in_parallel() ? 1 : omp_get_max_threads();
    static const bool ksplit = [] {
        const char* e = std::getenv("CNNKIT_CONV_KSPLIT");
        return !(e && e[0] == '0');
    }();
    static const bool csplit = [] {  // CNNKIT_CONV_CSPLIT=0: the channel split alone
        const char* e = std::getenv("CNNKIT_CONV_CSPLIT");
        return !(e && e[0] == '0');
    }();
    const int64_t want = ksplit ? 4 * int64_t(nthreads) : 1;  // tasks wanted for the team
    const int64_t per_image = csplit ? (want + d.N - 1) / d.N : 1;  // blocks wanted per image
    const int64_t tiles_per_row = (d.Q + nr - 1) / nr;
    int64_t rows_per_task = std::max<int64_t>(1, kColBlock / (tiles_per_row * nr));
    int64_t jb_size = std::min(round_up(kColBlock, nr), round_up(d.J, nr));
    const int64_t j_tiles = (d.J + nr - 1) / nr;
    if (rows_mode && (d.P + rows_per_task - 1) / rows_per_task < per_image) {
        rows_per_task = std::max<int64_t>(1, d.P / std::min<int64_t>(d.P, per_image));
    } else if (!rows_mode && (d.J + jb_size - 1) / jb_size < per_image) {
        const int64_t j_blocks = std::min(j_tiles, per_image);  // evenly, whole tiles
        jb_size = (j_tiles + j_blocks - 1) / j_blocks * nr;
    }
    const int64_t blocks = rows_mode ? (d.P + rows_per_task - 1) / rows_per_task
                                     : (d.J + jb_size - 1) / jb_size;
    const int64_t k_tiles = (d.K + mr - 1) / mr;
    const int64_t kgroups = std::min<int64_t>(
        k_tiles, std::max<int64_t>(1, (want + d.N * blocks - 1) / (d.N * blocks)));
    const int64_t kg_size = ((k_tiles + kgroups - 1) / kgroups) * mr;
    const int64_t kgn = (d.K + kg_size - 1) / kg_size;
    const int64_t tasks = d.N * blocks * kgn;
    const int64_t xp_floats = padded_floats(d);
    const int64_t tile_floats = rows_mode ? kMR * kNR : d.K * jb_size;
    const bool team = !omp_in_parallel() && macs > kParallelMinMacs && tasks > 1;
#pragma omp parallel if (team)
    {
        if (job) job->run();
        // The padded image goes last in the scratch, so reading past its tail is caught.
        float* tile = thread_scratch().get(round_up(tile_floats, 16) + xp_floats);
        float* xp = tile + round_up(tile_floats, 16);
        std::memset(xp, 0, sizeof(float) * xp_floats);
        int64_t cur = -1;
        // Tasks of unequal size (the last block, the last channel group) are handed out one
        // at a time when there are few images; otherwise in contiguous runs, so that each
        // thread pads each image once.
        const int64_t chunk = csplit && d.N < 2 * nthreads ? 1 : (tasks + nthreads - 1) / nthreads;
#pragma omp for schedule(dynamic, chunk)
        for (int64_t t = 0; t < tasks; ++t) {
            const int64_t n = t / (blocks * kgn), blk = t / kgn % blocks;
            const int64_t kb0 = t % kgn * kg_size, kb1 = std::min(d.K, kb0 + kg_size);
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
                        const float* xj = xp + p * d.Ws + q0;
                        for (int64_t k0 = kb0; k0 < kb1; k0 += mr) {
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
                for (int64_t k0 = kb0; k0 < kb1; k0 += mr)
                    run_tile(static_cast<int>(std::min(mr, d.K - k0)), static_cast<int>(nr),
                             wpk + k0 * d.CRS, xp + j0 + jt, tile + k0 * jb_size + jt, jb_size,
                             nullptr, false);
            // Valid columns of the block back to (K, P, Q), adding the bias (and ReLU) as the
            // row tiles' kernel does.
            for (int64_t p = j0 / d.Ws; p * d.Ws < j0 + jn; ++p) {
                const int64_t q0 = std::max<int64_t>(0, j0 - p * d.Ws);
                const int64_t q1 = std::min(d.Q, j0 + jn - p * d.Ws);
                if (q1 <= q0) continue;
                const int64_t src0 = p * d.Ws + q0 - j0;
                for (int64_t k = kb0; k < kb1; ++k) {
                    const float* src = tile + k * jb_size + src0;
                    float* dst = yn + k * PQ + p * d.Q + q0;
                    const float bk = bias ? bias[k] : 0.f;
                    if ((relu || bias) && simd_store) {
                        conv_avx2::bias_act_row(dst, src, q1 - q0, bk, relu);
                    } else if (relu) {
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

void set_strided_direct(bool on) { strided_flag().store(on); }

void set_tile_table(const std::string& name) {
    CNN_CHECK_ARG(name == "t12" || name == "t16" || name == "auto",
                  "set_tile_table: expected 't12', 't16' or 'auto', got '", name, "'");
    tile_table().store(name == "t12" ? 0 : name == "t16" ? 1 : (cpu_is_intel() ? 1 : 0));
}

std::string tile_table_name() { return tile_table().load() == 1 ? "t16" : "t12"; }

void set_forced_tile(const std::string& name) {
    const int i = name.empty() ? -1 : tile_index(name);
    CNN_CHECK_ARG(name.empty() || i >= 0, "set_forced_tile: unknown tile '", name,
                  "' (12x32, 4x80, 8x48, 6x64, 16x16, kpix or empty)");
    forced_tile().store(i);
}
bool strided_direct() { return strided_enabled(); }

bool applicable_forward(const ConvGeom& g) { return plain(g) && geometry_ok(forward_dgeom(g)); }

bool applicable_backward_input(const ConvGeom& g) {
    return plain_stride1(g) && geometry_ok(backward_input_dgeom(g));
}

bool applicable_backward_weight(const ConvGeom& g) {
    return plain(g) && geometry_ok(forward_dgeom(g)) &&
           weight_groups(g) * partial_floats(g) <= kMaxPartials;
}

int64_t workspace_floats(const ConvGeom& g) {
    int64_t n = 0;
    const int64_t CRS = g.C * g.R * g.S, KRS = g.K * g.R * g.S;
    if (applicable_forward(g)) n = std::max(n, round_up(CRS, 16) + packed_floats(g.K, CRS));
    if (applicable_backward_input(g))
        n = std::max(n, round_up(KRS, 16) + packed_floats(g.C, KRS));
    if (applicable_backward_weight(g))
        n = std::max(n, wgt_offset_floats(CRS) + weight_groups(g) * partial_floats(g));
    return n;
}

namespace {
struct PackedEntry {
    const float* w;
    const float* scale;
    int64_t rows, cols, pr;
    ScratchBuffer panels;
};
struct PackedCache {
    std::vector<std::unique_ptr<PackedEntry>> entries;
    int64_t floats = 0;
    int64_t images = 0;
};
thread_local PackedCache* tl_packed = nullptr;
std::atomic<int64_t> g_pack_reuses{0};

// The thread's PackReuse slot for the key (w, scale, rows, cols, tag) and `floats` floats:
// *fresh false when an earlier chunk filled it; null when no scope is alive or its budget is
// spent.
float* scope_slot(const float* w, const float* scale, int64_t rows, int64_t cols, int64_t tag,
                  int64_t floats, bool* fresh) {
    *fresh = true;
    PackedCache* pc = tl_packed;
    if (!pc) return nullptr;
    for (const auto& e : pc->entries)
        if (e->w == w && e->scale == scale && e->rows == rows && e->cols == cols && e->pr == tag) {
            g_pack_reuses.fetch_add(1, std::memory_order_relaxed);
            *fresh = false;
            return e->panels.get(0);
        }
    if (pc->floats + floats > kPackReuseFloats) return nullptr;
    auto e = std::make_unique<PackedEntry>();
    e->w = w; e->scale = scale; e->rows = rows; e->cols = cols; e->pr = tag;
    float* out = e->panels.get(floats);
    pc->floats += floats;
    pc->entries.push_back(std::move(e));
    return out;
}

// Where the packed panels of w for tile t are: in the thread's PackReuse scope when one is
// alive (*job left empty when an earlier chunk packed them there), else in `fallback`. *job is
// the packing still to do (PackJob::run, by the forward's team).
const float* packed_weights(float* fallback, const float* w, const float* wscale, int64_t rows,
                            int64_t cols, const Tile& t, PackJob* job, bool* fresh) {
    *job = PackJob{fallback, w, wscale, rows, cols, t.pr};
    float* slot = scope_slot(w, wscale, rows, cols, t.pr, packed_floats(rows, cols), fresh);
    if (!*fresh) return slot;
    if (slot) job->out = slot;
    return job->out;
}
}  // namespace

float* reuse_buffer(const float* w, const float* scale, int64_t rows, int64_t cols, int64_t tag,
                    int64_t floats, bool* fresh) {
    *fresh = true;
    if (tag >= 0) return nullptr;  // the direct panels' keys
    return scope_slot(w, scale, rows, cols, tag, floats, fresh);
}

PackReuse::PackReuse(int64_t images) : owner_(tl_packed == nullptr) {
    if (owner_) {
        tl_packed = new PackedCache();
        tl_packed->images = images;
    }
}
int64_t scope_images() { return tl_packed ? tl_packed->images : 0; }
PackReuse::~PackReuse() {
    if (owner_) {
        delete tl_packed;
        tl_packed = nullptr;
    }
}
int64_t pack_reuses() { return g_pack_reuses.load(); }

void forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
             float* ws, bool relu, const float* wscale) {
    const DGeom d = forward_dgeom(g);
    int32_t* off = reinterpret_cast<int32_t*>(ws);
    tap_offsets(off, d, d.CRS);
    const Tile t = choose_tile(d, use_avx512() && conv_avx512::compiled());
    PackJob job;
    bool fresh;
    const float* wpk =
        packed_weights(ws + round_up(d.CRS, 16), w, wscale, g.K, d.CRS, t, &job, &fresh);
    run_forward(y, x, wpk, b, relu, d, off, t, fresh ? &job : nullptr);
}

void backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g, float* ws) {
    const DGeom d = backward_input_dgeom(g);
    const int64_t RS = g.R * g.S, CRS = g.C * RS;
    int32_t* off = reinterpret_cast<int32_t*>(ws);
    float* wpk = ws + round_up(d.CRS, 16);
    tap_offsets(off, d, d.CRS);
    // Row c, column (k, r, s) of the transposed, flipped filter is w[k, c, R-1-r, S-1-s].
    const Tile t = choose_tile(d, use_avx512() && conv_avx512::compiled());
    pack_weights(wpk, g.C, d.CRS, t.pr, [&](int64_t c, int64_t krs) {
        const int64_t k = krs / RS, rs = krs % RS;
        return w[k * CRS + c * RS + (RS - 1 - rs)];
    });
    run_forward(dx, dy, wpk, nullptr, false, d, off, t);
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
    const WgtKernel kern = wgt_kernel();
    const bool simd = cpu_simd_enabled() && conv_avx2::compiled();
    // Narrow layers (at most 8 output channels: LeNet's conv1 has 6) vectorise along the
    // output columns instead of the channels: 16 lanes per tap and channel, kept over the
    // group's images and summed (lane 0 to 15) at its end. The channel tiles above computed
    // 8 or 16 columns for 6 channels and transposed dy for them; LeNet-5's conv1 ran at 17
    // GFLOP/s that way (bench_conv, b256).
    const bool lanes = simd && g.K <= kMaxLaneChannels && g.K * d.CRS * 16 <= kMaxLaneFloats;
    const bool lanes512 = lanes && use_avx512() && conv_avx512::compiled();
    const int64_t J16 = round_up(d.J, 16);
    const int64_t xp_floats = padded_floats(d);
    const int64_t dyt_floats = lanes ? g.K * J16 + g.K * d.CRS * 16 : round_up(d.J * Kp, 16);
    const double macs = double(g.N) * d.J * Kp * CRSp;
    const bool team = !omp_in_parallel() && macs > kParallelMinMacs && groups > 1;
#pragma omp parallel if (team)
    {
        // dy^T (channel tiles), or dy on the padded image's columns and the lanes (lane path)
        float* dyt = thread_scratch().get(dyt_floats + xp_floats);
        float* xp = dyt + dyt_floats;
        float* lane_acc = dyt + g.K * J16;
        // Borders, wrap-around columns (q >= Q) and channel padding stay zero for every image.
        std::memset(dyt, 0, sizeof(float) * (dyt_floats + xp_floats));
#pragma omp for schedule(static)
        for (int64_t gi = 0; gi < groups; ++gi) {
            float* part = parts + gi * part_floats;
            std::memset(part, 0, sizeof(float) * part_floats);
            if (lanes) std::memset(lane_acc, 0, sizeof(float) * g.K * d.CRS * 16);
            const int64_t n0 = gi * g.N / groups, n1 = (gi + 1) * g.N / groups;
            for (int64_t n = n0; n < n1; ++n) {
                pad_image(xp, x, d, n);
                const float* dyn = dy + n * g.K * PQ;
                if (lanes) {
                    // dy[n, k] at column p*Ws + q of channel k's row of J16 floats
                    for (int64_t k = 0; k < g.K; ++k) {
                        if (lanes512)
                            conv_avx512::copy_rows(dyt + k * J16, d.Ws, dyn + k * PQ, g.Q, g.P,
                                                   g.Q);
                        else
                            conv_avx2::copy_rows(dyt + k * J16, d.Ws, dyn + k * PQ, g.Q, g.P,
                                                 g.Q);
                    }
                    if (lanes512)
                        conv_avx512::wgt_lanes(static_cast<int>(g.K), d.CRS, J16 / 16, xp, off,
                                               dyt, J16, lane_acc);
                    else
                        conv_avx2::wgt_lanes(static_cast<int>(g.K), d.CRS, J16 / 16, xp, off,
                                             dyt, J16, lane_acc);
                    continue;
                }
                // dy^T: row j = p*Wp + q holds dy[n, :, p, q] (K floats, padded to Kp).
                for (int64_t p = 0; p < g.P; ++p) {
                    if (simd) {
                        conv_avx2::transpose(dyt + p * d.Ws * Kp, Kp, dyn + p * g.Q, PQ, g.K,
                                             g.Q);
                        continue;
                    }
                    for (int64_t k = 0; k < g.K; ++k) {
                        const float* src = dyn + k * PQ + p * g.Q;
                        float* dst = dyt + p * d.Ws * Kp + k;
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
            if (lanes)  // the group's lanes, summed in lane order, into part[crs, k]
                for (int64_t i = 0; i < d.CRS; ++i)
                    for (int64_t k = 0; k < g.K; ++k) {
                        const float* a = lane_acc + (i * g.K + k) * 16;
                        float s = a[0];
                        for (int l = 1; l < 16; ++l) s += a[l];
                        part[i * Kp + k] = s;
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
