// Direct ("implicit GEMM") convolution for one group: no column matrix.
//
// The image is copied once into a zero-padded buffer xp (C, Hp, Wp). Output pixel (p, q) gets
// the flat column index j = p * Wp + q, so tap (c, r, s) of every output column reads
// xp[off[c,r,s] + j] with off = c*Hp*Wp + r*dil_h*Wp + s*dil_w: the GEMM's B operand is the
// padded image itself, one row offset per tap. Columns with q >= Q (the Wp - Q "wrap-around"
// columns of each row) are computed and thrown away. Backward-input is the same convolution
// of the padded dy with the flipped, transposed weights; backward-weight reads xp the same way
// against a transposed dy. A strided layer's image is stored split into its stride phases
// (conv_direct.cpp, DGeom), which makes every tap a stride-1 read again.
#pragma once

#include <cstdint>
#include <string>

#include "core/geometry.h"

namespace cnnkit {
namespace cpu {
namespace conv_direct {

// Whether the direct path handles this geometry: one group, not 1x1 stride-1 pointwise; the
// forward and the weight gradient take strides up to 8 (the image split into its stride
// phases), the input gradient stride 1 only.
bool applicable_forward(const ConvGeom& g);
bool applicable_backward_input(const ConvGeom& g);
bool applicable_backward_weight(const ConvGeom& g);

// Strided layers on the direct path (default on; CNNKIT_CONV_STRIDED_DIRECT=0 at start-up
// turns it off): for A/B measurements and tests of both paths.
void set_strided_direct(bool on);
bool strided_direct();

// The AVX-512 forward/backward-input tile forced for every layer ("12x32", "4x80", "8x48",
// "6x64", "16x16", "kpix": the channel-vector tiles), or "" for the per-layer choice;
// CNNKIT_CONV_TILE sets it at start-up. Under the AVX2 set "kpix" forces its channel-vector
// tile and any other name its 6 x 16 column tiles.
// For A/B measurements in one process (bench_conv --kernels avx512@8x48,...). Throws on an
// unknown name.
void set_forced_tile(const std::string& name);
// The tile table of the per-layer choice: "t12" (AMD's), "t16" (Intel's: 16 x 16 tiles where
// they pad no more rows) or "auto" (by the CPU's vendor; CNNKIT_CONV_TILE_TABLE at start-up).
void set_tile_table(const std::string& name);
std::string tile_table_name();

// While one is alive on a thread, forward() on that thread keeps the weight panels it packs and
// reuses them for the same weights (the same pointers to weights and scale, the same shape and
// panel height) instead of packing them again. For a forward run in chunks of images
// (Net::forward_to_host), where nothing can change the parameters between the chunks; never
// keep one across calls that may update them. At most kPackReuseFloats floats are kept (layers
// past that pack as usual); an inner scope on the same thread shares the outer one's panels.
class PackReuse {
  public:
    // images: how many images the whole call computes (all its chunks), 0 if not said; layers
    // that choose an algorithm by the work it amortizes read it (scope_images).
    explicit PackReuse(int64_t images = 0);
    ~PackReuse();
    PackReuse(const PackReuse&) = delete;
    PackReuse& operator=(const PackReuse&) = delete;

  private:
    bool owner_;
};
constexpr int64_t kPackReuseFloats = int64_t(1) << 24;  // 64 MB
// The images of the thread's PackReuse scope (0: none alive, or not said).
int64_t scope_images();
// Forward calls that found their panels already packed (for tests), since the process started.
int64_t pack_reuses();
// For other forward routines that prepare weights once per call (the Winograd filter
// transform): a buffer of `floats` floats kept in the thread's PackReuse scope under the key
// (w, scale, rows, cols, tag), tag < 0 (the direct panels use their panel heights). *fresh
// says whether the caller must fill it (false: an earlier chunk did). Null when no scope is
// alive or its budget is spent; the caller then uses its own workspace.
float* reuse_buffer(const float* w, const float* scale, int64_t rows, int64_t cols, int64_t tag,
                    int64_t floats, bool* fresh);

// Floats of caller workspace the three routines need (0 when no routine applies).
int64_t workspace_floats(const ConvGeom& g);

// relu: y = max(conv + b, 0) in the same pass (the Net fuses Conv2d -> ReLU this way).
// wscale (K floats, may be null): output channel k's weights multiplied by wscale[k] as they
// are packed (a BatchNorm folded into the convolution), the same bits as scaled weights.
void forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
             float* ws, bool relu, const float* wscale = nullptr);
void backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g, float* ws);
// dw accumulated (db is handled by the caller).
void backward_weight(float* dw, const float* dy, const float* x, const ConvGeom& g, float* ws);

// ---- micro-kernels (AVX2/FMA in conv_avx2.cpp, portable twins in conv_direct.cpp) ---------

// c[i][0:16] = act(bias[i] + sum_k a[k*6 + i] * x[off[k] + 0:16]) for i < rows (rows <= 6,
// c overwritten, rows ldc apart); bias may be null; act is ReLU (v > 0 ? v : 0) or identity.
using FwdKernel = void (*)(int rows, int64_t kc, const float* a, const float* x,
                           const int32_t* off, float* c, int64_t ldc, const float* bias,
                           bool relu);
// c[i][0:cols] += sum_j x[off[i] + j] * b[j*ldb + 0:cols] for i < 6, j < kc; cols is 8 or 16.
using WgtKernel = void (*)(int cols, int64_t kc, const float* x, const int32_t* off,
                           const float* b, int64_t ldb, float* c, int64_t ldc);

}  // namespace conv_direct

namespace conv_avx2 {
bool compiled();
void fwd_6x16(int rows, int64_t kc, const float* a, const float* x, const int32_t* off,
              float* c, int64_t ldc, const float* bias, bool relu);
void wgt_6x16(int cols, int64_t kc, const float* x, const int32_t* off, const float* b,
              int64_t ldb, float* c, int64_t ldc);
// Weight-gradient lanes of a narrow layer (nk <= 8 output channels), the products vectorised
// along the output columns: for taps i < nt, channels k < nk and lanes l < 16,
// acc[(i*nk + k)*16 + l] += x[off[i] + 16v + l] * dy[k*ldd + 16v + l], one FMA per v < nv in
// order. The AVX-512 and AVX2 kernels do the same per-lane operations (the same bits).
void wgt_lanes(int nk, int64_t nt, int64_t nv, const float* x, const int32_t* off,
               const float* dy, int64_t ldd, float* acc);
// Channel-vector tile: up to 16 output channels (`rows` of them stored) x np <= kKpixPixels
// output pixels, weights from one 16-row panel (a + k*16 for tap k); pixel i reads
// x[xpix[i] + off[k]], its outputs go to c[cpix[i] + ch * ldc]. As conv_avx512::fwd_kpix
// with kv = 1 (the same operations per element, so the same bits as every other tile).
constexpr int kKpixPixels = 6;
void fwd_kpix(int np, int rows, int64_t kc, const float* a, const float* x, const int32_t* xpix,
              const int32_t* off, float* c, const int32_t* cpix, int64_t ldc, const float* bias,
              bool relu);
// dst[q * ld_dst + k] = src[k * ld_src + q] for k < rows, q < cols; columns
// rows..round_up(rows, 8) of dst are set to zero.
void transpose(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows,
               int64_t cols);
// dst[q] = src[q] + b for q < n, then max(., 0) if relu: the flat tiles' copy-out, with the
// scalar loop's arithmetic (one add, and NaN and -0 to +0 under the ReLU).
void bias_act_row(float* dst, const float* src, int64_t n, float b, bool relu);
// dst[r * ldd + q] = src[r * lds + q] for r < rows, q < n: the padded-image copy, inline
// vector moves instead of a memcpy call per row (ResNet-20 copies 512 rows of 8-32 floats per
// image and layer, and the calls cost more than the bytes).
void copy_rows(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t n);
// even[j] = src[2j], odd[j] = src[2j + 1] for j < half (either may be null): a row of a stride-2
// layer's image split into its two column phases.
void split2(float* even, float* odd, const float* src, int64_t half);
}  // namespace conv_avx2

namespace conv_avx512 {
bool compiled();
// The forward kernel for up to 12 rows x 32 columns: rows < 6 from the 6-row panel at a, rows
// 6..11 from the next one (a + 6*kc); B row k is the 32 floats at x + off[k]; only the first
// `cols` (1..32) columns of each row are stored (masked).
void fwd_12x32(int rows, int cols, int64_t kc, const float* a, const float* x,
               const int32_t* off, float* c, int64_t ldc, const float* bias, bool relu);
// Forward tiles of up to mr rows x 16*nv columns from one mr-row weight panel (a[k*mr + i]),
// (mr, nv) one of (8, 3), (4, 5), (6, 4), (16, 1); otherwise as fwd_12x32.
void fwd_panel(int mr, int nv, int rows, int cols, int64_t kc, const float* a, const float* x,
               const int32_t* off, float* c, int64_t ldc, const float* bias, bool relu);
// The weight-gradient kernel for 12 taps: c[i][0:cols] += sum_j x[off[i] + j] * b[j*ldb + 0:cols]
// for i < 12, j < kc; cols is 8, 16 or 32 (columns past it are neither read nor written).
void wgt_12x32(int cols, int64_t kc, const float* x, const int32_t* off, const float* b,
               int64_t ldb, float* c, int64_t ldc);
// As conv_avx2::wgt_lanes, one 16-lane vector per tap and channel.
void wgt_lanes(int nk, int64_t nt, int64_t nv, const float* x, const int32_t* off,
               const float* dy, int64_t ldd, float* acc);
// Row-major weights w (rows x cols, row i times scale[i] when scale is not null) into
// pr-row panels (pr <= 16) as the forward tiles read them: panel p, column k, row i at
// out[p*pr*cols + k*pr + i], rows past `rows` zero. 16 x 16 blocks through registers.
void pack_panels(float* out, const float* w, int64_t rows, int64_t cols, int64_t pr,
                 const float* scale);
// Channel-vector tiles: 16*kv output channels (kv 1..4) x np output pixels (np <= kpix_max(kv):
// 24, 12, 8, 6), the channels in the vectors and a broadcast input value per pixel and tap, so
// any np pixels make a tile (no wrap-around columns). Weights from 16-row panels
// (a + v*16*kc + k*16 for vector v, tap k); pixel i reads x[xpix[i] + off[k]]; its outputs go
// to c[cpix[i] + (16v + l) * ldc] for channels 16v + l < rows (scattered). Per element the
// same operations in the same order as the other tiles (one FMA per tap, bias, ReLU).
void fwd_kpix(int kv, int np, int rows, int64_t kc, const float* a, const float* x,
              const int32_t* xpix, const int32_t* off, float* c, const int32_t* cpix,
              int64_t ldc, const float* bias, bool relu);
constexpr int kpix_max(int kv) { return kv == 1 ? 24 : kv == 2 ? 12 : kv == 3 ? 8 : 6; }
// As conv_avx2::copy_rows, the tail of each row moved with one masked load and store.
void copy_rows(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows, int64_t n);
// As conv_avx2::split2, 16 output floats per two-register permute.
void split2(float* even, float* odd, const float* src, int64_t half);
}  // namespace conv_avx512

}  // namespace cpu
}  // namespace cnnkit
