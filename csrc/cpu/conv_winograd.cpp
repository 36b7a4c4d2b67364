// Winograd F(2x2, 3x3) driver (conv_winograd.h): applicability, the filter transform, blocking
// and the thread split; the block routine is in conv_winograd_impl.h.
#include "cpu/conv_winograd.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/runtime.h"
#include "cpu/conv_direct.h"
#include "cpu/kernel_set.h"
#include "cpu/scratch.h"

namespace cnnkit {
namespace cpu {
namespace conv_winograd {

namespace {

// Smallest channel count (input and output) sent here: the 16 GEMMs have a depth of C only.
constexpr int64_t kMinChannels = 16;
// The AVX2 routine by default only where both counts are at least 32: on Zen 3 it ran
// ResNet-20's 16-channel 32x32 layers 0.75x the direct tiles' speed, the 32- and 64-channel
// ones 1.1-2.1x (docs/performance.md, "Zen 3").
constexpr int64_t kMinChannelsAvx2 = 32;
// Floats of one block's transformed input and products (16 (C + K) per tile): half the L2,
// at most 512 KB (128 K floats: half of Zen 5's 1 MB L2; also where Intel's 2 MB ones were
// measured) and at least 128 KB. On Zen 3's 512 KB L2 the 512 KB blocks ran the 32-channel
// layers 1.1-1.3x slower than 256 KB ones (docs/performance.md).
constexpr int64_t kMaxBlockFloats = int64_t(1) << 17;
constexpr int64_t kMinBlockFloats = int64_t(1) << 15;

int64_t block_floats() {
    static const int64_t f = [] {
        int64_t l2 = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
        l2 = static_cast<int64_t>(sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
        if (l2 <= 0) return kMaxBlockFloats;
        return std::max(kMinBlockFloats, std::min(kMaxBlockFloats, l2 / 8));
    }();
    return f;
}
constexpr int64_t kMaxBlock = 512;
// Fewest output tiles per call (all images) for which Winograd is chosen (use_forward).
constexpr int64_t kMinTiles = 512;

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// The weight gradient: on unless CNNKIT_CONV_WINOGRAD_WGT=0 at start-up.
bool wgt_on() {
    static const bool on = [] {
        const char* e = std::getenv("CNNKIT_CONV_WINOGRAD_WGT");
        return !(e && std::string(e) == "0");
    }();
    return on;
}
// Image groups of the weight gradient (as the direct path's): at most this many, and as many
// as keep their partials (16 K C floats each) within kMaxWgtPartials; where two groups do not
// fit (K C above 512 x 512), the direct tiles take the layer. Geometry only: the same groups
// at every thread count.
constexpr int64_t kMaxWgtGroups = 16;
constexpr int64_t kMaxWgtPartials = int64_t(1) << 23;  // floats (32 MB)

int64_t wgt_groups(const ConvGeom& g) {
    const int64_t fit = kMaxWgtPartials / (16 * g.K * g.C);
    return std::min({g.N, kMaxWgtGroups, fit});
}

// 1 on, 0 off, -1 this machine's default (default_on): CNNKIT_CONV_WINOGRAD=1|0 at start-up.
std::atomic<int>& mode() {
    static std::atomic<int> m{[] {
        const char* e = std::getenv("CNNKIT_CONV_WINOGRAD");
        if (e && std::string(e) == "1") return 1;
        if (e && std::string(e) == "0") return 0;
        return -1;
    }()};
    return m;
}

// Where it was measured faster: the AVX-512 routine on Intel cores (docs/performance.md,
// "Winograd on the Xeon"), and the AVX2 routine with its register transforms (Zen 3) for
// layers of 32+ channels. AMD's AVX-512 cores have not been measured since the register
// transforms, so they stay on the direct tiles unless asked.
bool default_on() {
    const KernelSet s = kernel_set();
    return (s == KernelSet::AVX512 && avx512::compiled() && cpu_is_intel()) ||
           (s == KernelSet::AVX2 && avx2::compiled());
}

bool set_ok() {
    const KernelSet s = kernel_set();
    return (s == KernelSet::AVX512 && avx512::compiled()) ||
           (s == KernelSet::AVX2 && avx2::compiled());
}

// Stride-1, dilation-1, one-group 3x3 with padding 0..2 (the backward-input is then the same
// convolution of dy padded by 2 - pad).
bool geometry_ok(const ConvGeom& g) {
    return g.R == 3 && g.S == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dil_h == 1 &&
           g.dil_w == 1 && g.groups == 1 && g.pad_h >= 0 && g.pad_h <= 2 && g.pad_w >= 0 &&
           g.pad_w <= 2 && g.P >= 1 && g.Q >= 1 && g.H >= 1 && g.W >= 1 &&
           g.C >= kMinChannels && g.K >= kMinChannels;
}

// Rows of one packed weight matrix for any panel height used (4, 6, 8, 16).
int64_t packed_rows(int64_t rows) {
    return std::max({round_up(rows, 6), round_up(rows, 8), round_up(rows, 16)});
}

int64_t pass_floats(int64_t Ko, int64_t Ci) {
    return 16 * packed_rows(Ko) * Ci + round_up(Ci, 16) + 16;
}

// Blocks of Tb tiles: a multiple of the GEMM tile's width (no partial column tiles but the
// last block's), as many as keep V and M within block_floats(), and with a team of threads at
// least two blocks a thread. Every tile's values are computed by the same operations whatever
// the block (the GEMM's columns are independent), so Tb does not change the results.
WGeom make_wgeom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t ph,
                 int64_t pw, int64_t nr, bool fixed = false) {
    WGeom d{};
    d.N = N; d.C = C; d.H = H; d.W = W; d.K = K; d.ph = ph; d.pw = pw;
    d.P = H + 2 * ph - 2;
    d.Q = W + 2 * pw - 2;
    d.TH = (d.P + 1) / 2;
    d.TW = (d.Q + 1) / 2;
    const int64_t total = N * d.TH * d.TW;
    const int64_t unit = nr % 16 == 0 ? nr : 16;
    int64_t tb = block_floats() / (16 * (C + K)) / unit * unit;
    tb = std::max(unit, std::min(round_up(kMaxBlock, unit), tb));
    // fixed (the weight gradient, whose sums depend on the blocks): no thread term
    const int threads = fixed || omp_in_parallel() ? 1 : omp_get_max_threads();
    if (threads > 1)
        tb = std::min(tb, std::max(unit, round_up((total + 2 * threads - 1) / (2 * threads), unit)));
    d.Tb = std::min(tb, round_up(total, unit));
    d.ld = d.Tb + 16;
    d.vs = C * d.ld + 16;
    d.ms = K * d.ld + 16;
    return d;
}

// The GEMM tile for Ko output rows. AVX-512: 12 x 32 where 12 divides Ko, else 8 x 48 where 8
// does (16 and 32 channels: no partial row tiles), else 12 x 32. CNNKIT_CONV_WINOGRAD_TILE
// forces one for measurements.
WTile choose_tile(int64_t Ko) {
    if (kernel_set() != KernelSet::AVX512) return {0, 6, 16, 6};
    const WTile t12{1, 12, 32, 6}, t8{2, 8, 48, 8};
    static const char* forced = std::getenv("CNNKIT_CONV_WINOGRAD_TILE");
    if (forced) {
        const WTile cands[] = {t12, t8, {2, 4, 80, 4}, {2, 6, 64, 6}, {2, 16, 16, 16}};
        for (const WTile& t : cands)
            if (std::to_string(t.mr) + "x" + std::to_string(t.nr) == forced) return t;
    }
    if (Ko % 12 == 0) return t12;
    if (Ko % 8 == 0) return t8;
    return t12;
}

ScratchBuffer& thread_scratch() {
    thread_local ScratchBuffer s;
    return s;
}

// u[xi] = G g G^T for each (ko, ci), g(ko, ci, r, s) the 3x3 filter; computed in double,
// packed into pr-row panels of Ko x Ci (rows past Ko zero).
template <typename Filt>
void transform_filters(float* u, int64_t upk, int64_t Ko, int64_t Ci, int64_t pr, Filt filt) {
    const int64_t rows = round_up(Ko, pr);
    for (int64_t ko = 0; ko < rows; ++ko)
        for (int64_t ci = 0; ci < Ci; ++ci) {
            double tg[4][3];
            double gg[3][3] = {};
            if (ko < Ko)
                for (int r = 0; r < 3; ++r)
                    for (int s = 0; s < 3; ++s) gg[r][s] = filt(ko, ci, r, s);
            for (int s = 0; s < 3; ++s) {  // G g: rows
                tg[0][s] = gg[0][s];
                tg[1][s] = 0.5 * (gg[0][s] + gg[1][s] + gg[2][s]);
                tg[2][s] = 0.5 * (gg[0][s] - gg[1][s] + gg[2][s]);
                tg[3][s] = gg[2][s];
            }
            const int64_t at = (ko / pr) * pr * Ci + ci * pr + ko % pr;
            for (int i = 0; i < 4; ++i) {
                const double v[4] = {tg[i][0], 0.5 * (tg[i][0] + tg[i][1] + tg[i][2]),
                                     0.5 * (tg[i][0] - tg[i][1] + tg[i][2]), tg[i][2]};
                for (int j = 0; j < 4; ++j) u[(i * 4 + j) * upk + at] = static_cast<float>(v[j]);
            }
        }
}

void run(float* y, const float* x, const float* u, int64_t upk, int32_t* off, const float* bias,
         bool relu, const WGeom& wg, const WTile& t) {
    for (int64_t c = 0; c < wg.C; ++c) off[c] = static_cast<int32_t>(c * wg.ld);
    const BlockFn fn = kernel_set() == KernelSet::AVX512 ? avx512::run_block : avx2::run_block;
    const int64_t total = wg.N * wg.TH * wg.TW, blocks = (total + wg.Tb - 1) / wg.Tb;
    const int64_t sc = block_scratch_floats(wg);
    const bool team = !omp_in_parallel() && blocks > 1;
#pragma omp parallel if (team)
    {
        float* s = thread_scratch().get(sc);
        // the slack past V and M that the widest tiles read (masked lanes): keep it finite
        std::memset(s + 16 * wg.vs, 0, sizeof(float) * 128);
        std::memset(s + 16 * (wg.vs + wg.ms) + 128, 0, sizeof(float) * 128);
#pragma omp for schedule(static)
        for (int64_t bi = 0; bi < blocks; ++bi) {
            const int64_t t0 = bi * wg.Tb;
            fn(y, x, u, upk, off, bias, relu, wg, t, t0, std::min(wg.Tb, total - t0), s);
        }
    }
}

}  // namespace

int64_t block_scratch_floats(const WGeom& wg) {
    // V and M (16 vs + 16 ms) with their slack, then the largest of the routines' tails:
    // AVX2 planes routine 8 planes and 4 output rows of Tb; AVX2 register routine two
    // zero-padded planes of 2 TH + 2 rows (strides below 2 TW + 17); AVX-512 8 planes and 2
    // output row buffers of (TH + 1) TW + 32 floats (twice).
    const int64_t plane = (wg.TH + 1) * wg.TW + 32;
    return 16 * (wg.vs + wg.ms) + 256 +
           std::max({8 * (wg.TH + 1) * wg.TW + 4 * wg.Tb, 12 * plane,
                     2 * ((2 * wg.TH + 2) * (2 * wg.TW + 17) + 16)});
}

void set_enabled(bool on) { mode().store(on ? 1 : 0); }
void set_default() { mode().store(-1); }
bool enabled() {
    const int m = mode().load(std::memory_order_relaxed);
    return m < 0 ? default_on() : m == 1;
}

bool use_forward(const ConvGeom& g) {
    if (!enabled() || !set_ok() || !geometry_ok(g)) return false;
    if (mode().load(std::memory_order_relaxed) == 1) return true;  // asked for: every layer
    if (kernel_set() == KernelSet::AVX2 && std::min(g.C, g.K) < kMinChannelsAvx2) return false;
    // By default, enough tiles to amortize the filter transform (once per call; once per whole call in a
    // chunked eval forward, whose images count): ResNet-20 at batch 1 ran 0.8x the direct
    // tiles' speed with it (its 8x8 layers have 16 tiles).
    const int64_t images = std::max(g.N, conv_direct::scope_images());
    return images * ((g.P + 1) / 2) * ((g.Q + 1) / 2) >= kMinTiles;
}
bool use_backward_input(const ConvGeom& g) { return use_forward(g); }

bool use_backward_weight(const ConvGeom& g) {
    if (!wgt_on() || kernel_set() != KernelSet::AVX2 ||
        !avx2::compiled() || !enabled() || !geometry_ok(g))
        return false;
    // By default from 16 channels (geometry_ok), unlike the forward: on Zen 3 the 16-channel
    // 32x32 layers of ResNet-20 ran 1.2x the direct tiles' speed here (the forward 1.1x, and
    // the network not faster), and calls of kMinTiles tiles or more.
    if (mode().load(std::memory_order_relaxed) != 1 &&
        g.N * ((g.P + 1) / 2) * ((g.Q + 1) / 2) < kMinTiles)
        return false;
    if (g.N < 1 || wgt_groups(g) < std::min<int64_t>(g.N, 2)) return false;
    const WGeom wg = make_wgeom(1, g.C, g.H, g.W, g.K, g.pad_h, g.pad_w, 16, true);
    return avx2::wgt_geometry(wg);
}

void backward_weight(float* dw, const float* dy, const float* x, const ConvGeom& g) {
    const int64_t C = g.C, K = g.K, N = g.N;
    const WGeom wg = make_wgeom(N, C, g.H, g.W, K, g.pad_h, g.pad_w, 16, true);
    const int64_t TT = wg.TH * wg.TW, groups = wgt_groups(g), pf = 16 * K * C;
    // the groups' dU, from the calling thread's buffer
    thread_local ScratchBuffer parts_buf;
    float* parts = parts_buf.get(groups * pf);
    const int64_t sc = block_scratch_floats(wg);
    const bool team = !omp_in_parallel() && groups > 1;
#pragma omp parallel if (team)
    {
        float* s = thread_scratch().get(sc);
#pragma omp for schedule(static)
        for (int64_t gi = 0; gi < groups; ++gi) {
            float* part = parts + gi * pf;
            std::memset(part, 0, sizeof(float) * pf);
            const int64_t e0 = gi * N / groups * TT, e1 = (gi + 1) * N / groups * TT;
            for (int64_t t0 = e0; t0 < e1; t0 += wg.Tb)
                avx2::wgt_block(dy, x, wg, t0, std::min(wg.Tb, e1 - t0), s, part);
        }
        // dU = the groups' sum in group order, into group 0's partial (contiguous runs)
        constexpr int64_t kRun = 1024;
#pragma omp for schedule(static)
        for (int64_t i0 = 0; i0 < pf; i0 += kRun) {
            const int64_t i1 = std::min(pf, i0 + kRun);
            for (int64_t gi = 1; gi < groups; ++gi) {
                const float* src = parts + gi * pf;
                for (int64_t i = i0; i < i1; ++i) parts[i] += src[i];
            }
        }
        // dw[k][c] += G^T dU G
#pragma omp for schedule(static)
        for (int64_t kc = 0; kc < K * C; ++kc) {
            double du[4][4];
            for (int xi = 0; xi < 16; ++xi) du[xi / 4][xi % 4] = parts[xi * K * C + kc];
            // G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1]: rows, then columns
            double tr[3][4];
            for (int j = 0; j < 4; ++j) {
                tr[0][j] = du[0][j] + 0.5 * (du[1][j] + du[2][j]);
                tr[1][j] = 0.5 * (du[1][j] - du[2][j]);
                tr[2][j] = 0.5 * (du[1][j] + du[2][j]) + du[3][j];
            }
            float* o = dw + kc * 9;
            for (int r = 0; r < 3; ++r) {
                o[r * 3 + 0] += static_cast<float>(tr[r][0] + 0.5 * (tr[r][1] + tr[r][2]));
                o[r * 3 + 1] += static_cast<float>(0.5 * (tr[r][1] - tr[r][2]));
                o[r * 3 + 2] += static_cast<float>(0.5 * (tr[r][1] + tr[r][2]) + tr[r][3]);
            }
        }
    }
}

int64_t workspace_floats(const ConvGeom& g) {
    if (!geometry_ok(g)) return 0;
    return std::max(pass_floats(g.K, g.C), pass_floats(g.C, g.K));
}

void forward(float* y, const float* x, const float* w, const float* b, const ConvGeom& g,
             float* ws, bool relu, const float* wscale) {
    const WTile t = choose_tile(g.K);
    const WGeom wg = make_wgeom(g.N, g.C, g.H, g.W, g.K, g.pad_h, g.pad_w, t.nr);
    const int64_t upk = packed_rows(g.K) * g.C;
    int32_t* off = reinterpret_cast<int32_t*>(ws + 16 * upk);
    // The chunks of one eval forward (conv_direct::PackReuse) transform the filters once.
    bool fresh = true;
    float* u = conv_direct::reuse_buffer(w, wscale, g.K, g.C, -1 - t.pr, 16 * upk, &fresh);
    if (!u) u = ws;
    const int64_t C = g.C;
    if (fresh)
        transform_filters(u, upk, g.K, g.C, t.pr, [&](int64_t k, int64_t c, int r, int s) {
            const float v = w[((k * C + c) * 3 + r) * 3 + s];
            return double(wscale ? v * wscale[k] : v);  // rounded as the scaled weight
        });
    run(y, x, u, upk, off, b, relu, wg, t);
}

// dx = the convolution of dy (K channels, P x Q) padded by 2 - pad with the flipped,
// transposed weights w'[c][k][r][s] = w[k][c][2 - r][2 - s].
void backward_input(float* dx, const float* dy, const float* w, const ConvGeom& g, float* ws) {
    const WTile t = choose_tile(g.C);
    const WGeom wg = make_wgeom(g.N, g.K, g.P, g.Q, g.C, 2 - g.pad_h, 2 - g.pad_w, t.nr);
    const int64_t upk = packed_rows(g.C) * g.K;
    float* u = ws;
    int32_t* off = reinterpret_cast<int32_t*>(ws + 16 * upk);
    const int64_t C = g.C;
    transform_filters(u, upk, g.C, g.K, t.pr, [&](int64_t c, int64_t k, int r, int s) {
        return double(w[((k * C + c) * 3 + (2 - r)) * 3 + (2 - s)]);
    });
    run(dx, dy, u, upk, off, nullptr, false, wg, t);
}

}  // namespace conv_winograd
}  // namespace cpu
}  // namespace cnnkit
