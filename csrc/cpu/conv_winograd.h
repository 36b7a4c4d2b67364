// Winograd F(2x2, 3x3) convolution for stride-1, dilation-1, single-group 3x3 layers (forward
// and backward-input on the AVX-512 and AVX2 kernel sets, the weight gradient on the AVX2
// set); the generic set stays on the direct path.
//
// Output tiles of 2x2 read overlapping 4x4 input patches d; per tile and channel the input
// transform V = B^T d B (16 values), per (output, input) channel pair the filter transform
// U = G g G^T (computed in double each call, rounded to float), then for each of the 16
// transform positions one GEMM M = U (K x C) * V (C x tiles) on the direct convolution's
// micro-kernels (B rows addressed through a tap-offset table, no packing), and the output
// transform y = A^T M A (+ bias, optional ReLU). 16 multiplies per tile and channel pair
// instead of 36 (2.25x fewer). Tiles are processed in blocks sized from the geometry only
// (transformed input and products of a block stay in L2); each block is one thread's, so the
// results do not depend on the thread count.
#pragma once

#include <cstdint>

#include "core/geometry.h"

namespace cnnkit {
namespace cpu {
namespace conv_winograd {

// On by default where measured faster than the direct tiles: the AVX-512 kernel set on Intel
// cores (1.1-2x per layer on ResNet-20's, docs/performance.md), and the AVX2 set for layers of
// 32+ input and output channels (Zen 3: 1.1-2.1x). CNNKIT_CONV_WINOGRAD=1|0 at
// start-up, or set_enabled, turns it on or off everywhere (the AVX2 routine included, and on
// for every such layer; by default only calls of at least kMinTiles output tiles, which
// amortize the filter transform); set_default goes back to the machine's default. enabled()
// is whether it is on now.
void set_enabled(bool on);
void set_default();
bool enabled();

// Whether the forward / backward-input of g runs here now (switch, kernel set, geometry).
bool use_forward(const ConvGeom& g);
bool use_backward_input(const ConvGeom& g);
// Whether the weight gradient of g runs here now: the forward's rules, the AVX2 kernel set, and
// tile rows the AVX2 register routine takes (a multiple of 8 tiles, or 4 in pairs of rows).
// CNNKIT_CONV_WINOGRAD_WGT=0 at start-up keeps it on the direct tiles.
bool use_backward_weight(const ConvGeom& g);

// Floats of caller workspace (transformed weights, offset table) for either pass; 0 when the
// geometry never qualifies. Independent of the kernel set and the switch.
int64_t workspace_floats(const ConvGeom& g);

// wscale (K floats, may be null): output channel k's weights multiplied by wscale[k] first (a
// BatchNorm folded into the convolution). Inside a conv_direct::PackReuse scope the
// transformed filters are kept for the next chunk of the same call.
void forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
             float* ws, bool relu, const float* wscale = nullptr);
void backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g, float* ws);
// dw (K, C, 3, 3) accumulated: dU[xi] = sum over tiles of dM[xi] V[xi]^T with dM = A dY A^T
// (the adjoint of the output transform) and V the forward's input transform, then
// dw += G^T dU G (in double). The tiles are summed in image groups fixed by the geometry
// (blocks of Tb tiles, Tb from the L2 size only) and the groups in group order, so the result
// does not depend on the thread count.
void backward_weight(float* dw, const float* dy, const float* x, const ConvGeom& g);

// ---- internals shared with the ISA files ----------------------------------------------------

// One Winograd convolution: input (N, C, H, W) zero-padded by (ph, pw), K output channels of
// P x Q, TH x TW tiles per image, Tb tiles per block. The transformed inputs V [16][C][Tb]
// and products M [16][K][Tb] have rows ld = Tb + 16 floats apart and matrices vs = C ld + 16
// and ms = K ld + 16 apart: with Tb a multiple of 256 the 16 rows of one (channel, tile)
// would otherwise be a multiple of 4 KB apart, all in one L1 set.
struct WGeom {
    int64_t N, C, H, W, K, ph, pw, P, Q, TH, TW, Tb, ld, vs, ms;
};

// The GEMM micro-tile (mr rows x nr columns) and weight panel height pr; kind 0: AVX2 6 x 16,
// 1: AVX-512 12 x 32 (two 6-row panels), 2: AVX-512 mr x nr from one panel.
struct WTile {
    int kind, mr, nr, pr;
};

// Tiles [t0, t0 + nt) of the flattened (image, tile row, tile column) order. u: 16 packed
// weight matrices (pr-row panels of K x C, upk floats apart); off[c] = c * ld.
using BlockFn = void (*)(float* y, const float* x, const float* u, int64_t upk,
                         const int32_t* off, const float* bias, bool relu, const WGeom& wg,
                         const WTile& t, int64_t t0, int64_t nt, float* scratch);
// Floats of per-thread scratch the block routine needs.
int64_t block_scratch_floats(const WGeom& wg);

namespace avx512 { bool compiled(); void run_block(float*, const float*, const float*, int64_t, const int32_t*, const float*, bool, const WGeom&, const WTile&, int64_t, int64_t, float*); }
namespace avx2 {
bool compiled();
void run_block(float*, const float*, const float*, int64_t, const int32_t*, const float*, bool, const WGeom&, const WTile&, int64_t, int64_t, float*);
// The weight gradient's block: part ([16][K][C]) += the block's dM V^T; needs wgt_geometry(wg),
// t0 and nt multiples of 8, and block_scratch_floats(wg) of scratch.
bool wgt_geometry(const WGeom& wg);
void wgt_block(const float* dy, const float* x, const WGeom& wg, int64_t t0, int64_t nt,
               float* scratch, float* part);
}  // namespace avx2

}  // namespace conv_winograd
}  // namespace cpu
}  // namespace cnnkit
