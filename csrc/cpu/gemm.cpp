// Single-precision GEMM, BLIS-style: op(A) and op(B) are packed into MR-row / NR-column
// micro-panels inside KC x MC x NC cache blocks, then a register-blocked micro-kernel updates C
// (14x32 AVX-512 in gemm_avx512.cpp, 6x16 AVX2/FMA in gemm_avx2.cpp, 6x16 portable C++ here,
// as the kernel set says); OpenMP over M and N.
#include "cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/common.h"
#include "core/runtime.h"
#include "cpu/kernel_set.h"
#include "cpu/scratch.h"

namespace cnnkit {
namespace cpu {

// ---- interface to gemm_avx2.cpp (compiled with -mavx2 -mfma) --------------------------------

namespace gemm_avx2 {
bool compiled();
void ukernel_rows(int m, int n, int64_t kc, const float* a, const float* b, int64_t ldb,
                  float* c, int64_t ldc, float alpha, float beta, const float* bias);
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
            int64_t kc, float* out);
void pack_b(bool trans, const float* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0,
            int64_t kc, float* out);
void rows_nt(int m, int64_t j0, int64_t j1, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const float* bias);
}  // namespace gemm_avx2

// ---- interface to gemm_avx512.cpp (compiled with -mavx512f/bw/vl/dq -mfma) --------------------

namespace gemm_avx512 {
bool compiled();
int mr();  // micro-tile rows and columns of its kernel
int nr();
void ukernel_rows(int m, int n, int64_t kc, const float* a, const float* b, int64_t ldb,
                  float* c, int64_t ldc, float alpha, float beta, const float* bias);
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
            int64_t kc, float* out);
void pack_b(bool trans, const float* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0,
            int64_t kc, float* out);
void rows_nt(int m, int64_t j0, int64_t j1, int64_t K, float alpha, const float* A, int64_t lda,
             const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const float* bias);
}  // namespace gemm_avx512

namespace {

// ---- blocking parameters --------------------------------------------------------------------

constexpr int kMR = 6;    // micro-tile rows (A micro-panel height) of the generic/AVX2 kernels
constexpr int kNR = 16;   // micro-tile columns (B micro-panel width) of the generic/AVX2 kernels
constexpr int kMaxTile = 16 * 64;  // floats of the largest micro-tile of any kernel set
#ifndef CNNKIT_GEMM_KC
#define CNNKIT_GEMM_KC 256
#endif
#ifndef CNNKIT_GEMM_MC
#define CNNKIT_GEMM_MC 144
#endif
#ifndef CNNKIT_GEMM_NC
#define CNNKIT_GEMM_NC 4080
#endif
constexpr int64_t kKCMax = CNNKIT_GEMM_KC;  // packed depth: A + B micro-panels (KC x 22) in L1
// K up to this stays one depth block: two short blocks (e.g. 2 x 144 for a 3x3x32 conv) cost a
// second pass over C and halve the kernel's run between C updates; measured 0.87-0.89 ->
// 0.94-0.96 of OpenBLAS at 64x4096x288 on one thread. The B micro-panel (24 KB) and the A
// micro-panel (9 KB) still about fit the 32 KB L1.
constexpr int64_t kKCSingleMax = 384;
constexpr int64_t kMCMax = CNNKIT_GEMM_MC;  // A block (MC x KC) packed at a time
constexpr int64_t kNCMax = CNNKIT_GEMM_NC;  // B block (KC x NC) in L3
#ifndef CNNKIT_GEMM_NCS
#define CNNKIT_GEMM_NCS 512
#endif
constexpr int64_t kNCSingle = CNNKIT_GEMM_NCS;
#ifndef CNNKIT_GEMM_DIRECT
#define CNNKIT_GEMM_DIRECT 24
#endif
constexpr int64_t kDirectBRows = CNNKIT_GEMM_DIRECT;
// M*N*K below this per thread: fewer threads. Below it a second thread's fork/join and split
// edge tiles cost about as much as they save (OpenBLAS stays on one thread up to 256K in all).
constexpr int64_t kMinWorkPerThread = 256 * 1024;
constexpr int64_t kL2Bytes = 512 * 1024;  // per core
// AVX2 blocking for M >= kTallM (sgemm): on Zen 3, 1024^3 nt against OpenBLAS in one process,
// medians of 5 alternating pairs, 0.953 -> 0.984 at 1 thread and 0.920 -> 0.976 at 2; 2048^3
// nn 0.91-0.95 -> 0.95-0.98 (docs/performance.md). M = 128 with K = 4096 ran slower with it
// (its single A block keeps B in L2 at depth 256), hence the bound.
constexpr int64_t kTallM = 512;
constexpr int64_t kKCTall = 512;
constexpr int64_t kMCTall = 72;

// Rows [0, m) x columns [0, n) of a micro-tile (1 <= m <= MR, 1 <= n <= NR; n < NR only for a
// kernel with masked_edge): c = alpha * a.b + beta * c, then + bias[j] when bias is not null
// (one more rounding, as a separate pass would do).
using UKernel = void (*)(int m, int n, int64_t kc, const float* a, const float* b, int64_t ldb,
                         float* c, int64_t ldc, float alpha, float beta, const float* bias);
using PackFn = void (*)(bool trans, const float* X, int64_t ldx, int64_t r0, int64_t rows,
                        int64_t k0, int64_t kc, float* out);

// One kernel set's GEMM: micro-tile shape, kernel and packing, and its cache blocking.
struct KernelDesc {
    int mr, nr;
    UKernel uk;
    PackFn pack_a, pack_b;
    bool masked_edge;  // the kernel stores partial tiles itself (masked stores)
    int64_t mc_max;     // A block height
    int64_t kc_max;     // depth block for long K
    int64_t kc_single;  // K up to this is one depth block
};

// AVX-512 blocking, for Zen 4/5's 48 KB L1 and 1-2 MB L2: the depth block is 512 (an A
// micro-panel of 14 x 512 floats is 28 KB), so C is read and written half as often as with
// 256, and the A block is 84 rows (6 micro-panels). Against OpenBLAS's AVX-512 kernels in
// alternating runs, 1 thread: 1024^3 nt 0.88-0.89 -> 1.01, 2048^3 0.90 -> 1.01 (256/144 ->
// 512/84; 384/84 and 256/84 in between, docs/performance.md).
#ifndef CNNKIT_GEMM512_KC
#define CNNKIT_GEMM512_KC 512
#endif
#ifndef CNNKIT_GEMM512_MC
#define CNNKIT_GEMM512_MC 84
#endif

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ---- portable micro-kernel ------------------------------------------------------------------

// Same contract as gemm_avx2::ukernel_rows: c[0:m, 0:NR] = alpha * a.b + beta * c, where a is
// a packed kc x MR panel and b holds kc rows of NR floats, ldb apart. Computes all MR rows (the
// packed rows past m are zero) and stores m.
// Two passes of 8 columns keep the 6x8 accumulators in registers (SSE2 at baseline x86-64);
// the unroll pragmas make GCC vectorize along j instead of shuffling across rows.
void ukernel_generic(int m, int, int64_t kc, const float* a, const float* b, int64_t ldb,
                     float* c, int64_t ldc, float alpha, float beta, const float* bias) {
    constexpr int kHalf = kNR / 2;
    for (int h = 0; h < 2; ++h) {
        float acc[kMR][kHalf] = {};
        for (int64_t k = 0; k < kc; ++k) {
            const float* ak = a + k * kMR;
            const float* bk = b + k * ldb + h * kHalf;
#pragma GCC unroll 6
            for (int i = 0; i < kMR; ++i) {
                const float ai = ak[i];
#pragma GCC unroll 8
                for (int j = 0; j < kHalf; ++j) acc[i][j] += ai * bk[j];
            }
        }
        for (int i = 0; i < m; ++i) {
            float* ci = c + i * ldc + h * kHalf;
            if (beta == 0.f) {
                for (int j = 0; j < kHalf; ++j) ci[j] = alpha * acc[i][j];
            } else {
                for (int j = 0; j < kHalf; ++j) ci[j] = alpha * acc[i][j] + beta * ci[j];
            }
            if (bias)
                for (int j = 0; j < kHalf; ++j) ci[j] += bias[h * kHalf + j];
        }
    }
}

// ---- packing --------------------------------------------------------------------------------

// Rows [i0, i0+mc) x depth [k0, k0+kc) of op(A) into MR-row panels, each kc x MR (k-major);
// rows past mc are zero. Panel p starts at out + p * MR * kc.
void pack_a(bool trans, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0,
            int64_t kc, float* out) {
    for (int64_t ip = 0; ip < mc; ip += kMR) {
        const int64_t m = std::min<int64_t>(kMR, mc - ip);
        float* dst = out + ip * kc;
        if (!trans) {
            const float* src = A + (i0 + ip) * lda + k0;
            for (int64_t k = 0; k < kc; ++k)
                for (int i = 0; i < kMR; ++i) dst[k * kMR + i] = i < m ? src[i * lda + k] : 0.f;
        } else {
            const float* src = A + k0 * lda + i0 + ip;
            for (int64_t k = 0; k < kc; ++k)
                for (int i = 0; i < kMR; ++i) dst[k * kMR + i] = i < m ? src[k * lda + i] : 0.f;
        }
    }
}

// Depth [k0, k0+kc) x columns [j0, j0+nc) of op(B) into NR-column panels, each kc x NR;
// columns past nc are zero. Panel p starts at out + p * NR * kc.
void pack_b(bool trans, const float* B, int64_t ldb, int64_t j0, int64_t nc, int64_t k0,
            int64_t kc, float* out) {
    for (int64_t jp = 0; jp < nc; jp += kNR) {
        const int64_t n = std::min<int64_t>(kNR, nc - jp);
        float* dst = out + jp * kc;
        if (!trans) {
            const float* src = B + k0 * ldb + j0 + jp;
            for (int64_t k = 0; k < kc; ++k)
                for (int j = 0; j < kNR; ++j) dst[k * kNR + j] = j < n ? src[k * ldb + j] : 0.f;
        } else {
            const float* src = B + (j0 + jp) * ldb + k0;
            for (int64_t k = 0; k < kc; ++k)
                for (int j = 0; j < kNR; ++j) dst[k * kNR + j] = j < n ? src[j * ldb + k] : 0.f;
        }
    }
}

// ---- per-thread packing buffers -------------------------------------------------------------

// The calling thread's buffer; OpenMP workers use slices of it, so concurrent callers (and
// nested calls from inside parallel regions) never share one.
ScratchBuffer& pack_buffer() {
    thread_local ScratchBuffer buf;
    return buf;
}

// ---- macro-kernel ---------------------------------------------------------------------------

// Where the macro-kernel finds the NR-column panels of B: packed (panels kc x NR, one after
// another), or read in place from row-major B (rows ldb apart) with only a partial last panel
// packed (`edge`) so the kernel never reads past N.
struct BPanels {
    const float* base;
    int64_t panel_step;  // floats from one panel to the next
    int64_t row_step;    // floats from one k row of a panel to the next
    const float* edge;   // packed last panel when it is partial (in-place B), else nullptr
    bool in_place;       // panels are read from B itself (rows ldb apart)
};

// C[0:mc, 0:nc] (row stride ldc) = alpha * packedA . B + beta * C over one kc block.
//
// Packed B: one A micro-panel (kc x MR, in L1) sweeps all B panels (from L2/L3) before the next,
// so C is walked along its rows: MR rows of nc contiguous floats, which the hardware prefetchers
// stream, instead of a 16-column strip down mc rows (one page per row). Measured against the
// strip order, alternating in one process: 2048^3 on one thread 0.83-0.93 -> 0.93-1.02 of
// OpenBLAS, on two 0.84-0.89 -> 0.95-0.97; 1024^3 two threads 0.91-0.95 -> 0.96-0.99.
// B read in place (few A panels, rows ldb apart): each B panel is loaded into L1 once and
// reused by every A panel, as strided rows are costly to fetch again.
// bias (for columns [0, nc)) is added in the write-back when not null (the last depth block).
void macro_kernel(const KernelDesc& kd, int64_t mc, int64_t nc, int64_t kc, const float* pa,
                  const BPanels& pb, float* C, int64_t ldc, float alpha, float beta,
                  const float* bias) {
    alignas(64) float tile[kMaxTile];
    const int64_t MR = kd.mr, NR = kd.nr;
    auto run_tile = [&](int64_t ir, int64_t jr) {
        const int64_t m = std::min<int64_t>(MR, mc - ir);
        const int64_t n = std::min<int64_t>(NR, nc - jr);
        const bool edge = n < NR && pb.edge;
        const float* a = pa + ir * kc;
        const float* b = edge ? pb.edge : pb.base + jr / NR * pb.panel_step;
        const int64_t ldb = edge ? NR : pb.row_step;
        float* c = C + ir * ldc + jr;
        const float* bj = bias ? bias + jr : nullptr;
        if (n == NR || kd.masked_edge) {  // straight into C, m rows (masked stores past n)
            kd.uk(static_cast<int>(m), static_cast<int>(n), kc, a, b, ldb, c, ldc, alpha, beta,
                  bj);
            return;
        }
        // Right edge: same kernel on a full-width scratch tile, so the arithmetic is identical;
        // the bias is added on the way out (the kernel would read NR of its floats).
        if (beta != 0.f)
            for (int64_t i = 0; i < m; ++i)
                std::memcpy(tile + i * NR, c + i * ldc, n * sizeof(float));
        kd.uk(static_cast<int>(m), static_cast<int>(NR), kc, a, b, ldb, tile, NR, alpha, beta,
              nullptr);
        for (int64_t i = 0; i < m; ++i) {
            if (bj)
                for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = tile[i * NR + j] + bj[j];
            else
                std::memcpy(c + i * ldc, tile + i * NR, n * sizeof(float));
        }
    };
    if (pb.in_place) {
        for (int64_t jr = 0; jr < nc; jr += NR)
            for (int64_t ir = 0; ir < mc; ir += MR) run_tile(ir, jr);
    } else {
        for (int64_t ir = 0; ir < mc; ir += MR)
            for (int64_t jr = 0; jr < nc; jr += NR) run_tile(ir, jr);
    }
}

// ---- driver ---------------------------------------------------------------------------------

struct Problem {
    bool trans_a, trans_b;
    int64_t M, N, K;
    float alpha, beta;
    const float* A;
    int64_t lda;
    const float* B;
    int64_t ldb;
    float* C;
    int64_t ldc;
    const float* bias;  // (N) added to every row of C after the last depth block, or null
    int64_t kc;  // depth block (depends on K only, so sums never depend on the thread count)
    KernelDesc kd;
};

// Threads form a tm x tn grid: M is split among tm row groups, N among tn column groups.
// Threads of one column group share its packed B block (packed together, double-buffered).
struct Plan {
    int tm = 1, tn = 1;
    int64_t nc = 0;          // B block width per column group
    int64_t mc = 0;          // A block height
    int64_t n_chunks = 0;    // NC chunks per column group (same for every group)
    int64_t b_floats = 0;    // floats of one packed B block (one panel when direct_b)
    bool direct_b = false;   // kernel reads B in place (few A panels per thread to reuse it)
};

// Split `panels` micro-panels among `parts`: [first, last) panel of part `idx`.
void split_panels(int64_t panels, int parts, int idx, int64_t* first, int64_t* last) {
    const int64_t base = panels / parts, extra = panels % parts;
    *first = idx * base + std::min<int64_t>(idx, extra);
    *last = *first + base + (idx < extra ? 1 : 0);
}

Plan make_plan(const Problem& p, int nt) {
    const int64_t mr = p.kd.mr, nr = p.kd.nr, mc_max = p.kd.mc_max;
    const int64_t mp = ceil_div(p.M, mr), np = ceil_div(p.N, nr);
    Plan best;
    double best_cost = -1;
    for (int tn = 1; tn <= nt; ++tn) {
        if (nt % tn) continue;
        const int tm = nt / tn;
        const int64_t rows = ceil_div(mp, tm) * mr, cols = ceil_div(np, tn) * nr;
        // A single A block per thread uses each B panel once: keep the B block in L2 then.
        const int64_t nc_max = rows <= mc_max ? kNCSingle : kNCMax;
        const int64_t nc = round_up(ceil_div(cols, ceil_div(cols, nc_max)), nr);
        // Rough cycle model: 16 MACs/cycle, ~1 cycle per packed float, a few us per barrier.
        double cost = double(rows) * cols * p.K / 16.0;
        cost += double(rows) * p.K * ceil_div(cols, nc) + double(cols) * p.K / tm;
        if (tm > 1) cost += 5000.0 * ceil_div(cols, nc) * ceil_div(p.K, p.kc);
        // Shared B block and the one A block per thread (few rows, long K) overflow L2: every
        // kc step streams the whole block from L3 for little reuse, between barriers.
        if (tm > 1 && rows <= mc_max && (nc + rows) * p.kc * 4 > kL2Bytes)
            cost += 0.5 * cols * p.K;
#ifdef CNNKIT_GEMM_FORCE_TN
        if (tn == CNNKIT_GEMM_FORCE_TN) cost = -1e30;
#endif
        if (best_cost < 0 || cost < best_cost) {
            best_cost = cost;
            best.tm = tm;
            best.tn = tn;
            best.nc = nc;
        }
    }
    const int64_t rows = ceil_div(mp, best.tm) * mr;
    const int64_t mblocks = ceil_div(rows, mc_max);
    best.mc = round_up(ceil_div(rows, mblocks), mr);
    best.n_chunks = ceil_div(ceil_div(np, best.tn) * nr, best.nc);
    best.direct_b = !p.trans_b && rows <= kDirectBRows;
    best.b_floats = p.kc * (best.direct_b ? nr : best.nc);
    return best;
}

// The work of thread `tid` in the grid; `bbuf` holds the packed B blocks of all groups
// (2 per group when tm > 1), `abuf` this thread's A block.
void run_thread(const Problem& p, const Plan& plan, int tid, float* bbuf, float* abuf) {
    const int64_t mr = p.kd.mr, nr = p.kd.nr;
    const int im = tid % plan.tm, in = tid / plan.tm;
    int64_t pm0, pm1, pn0, pn1;
    split_panels(ceil_div(p.M, mr), plan.tm, im, &pm0, &pm1);
    split_panels(ceil_div(p.N, nr), plan.tn, in, &pn0, &pn1);
    const int64_t m0 = pm0 * mr, m1 = std::min(p.M, pm1 * mr);
    const int64_t n0 = pn0 * nr, n1 = std::min(p.N, pn1 * nr);
    const bool shared = plan.tm > 1 && !plan.direct_b;

    int64_t iter = 0;
    for (int64_t chunk = 0; chunk < plan.n_chunks; ++chunk) {
        const int64_t j0 = n0 + chunk * plan.nc;
        const int64_t nc = std::max<int64_t>(0, std::min(plan.nc, n1 - j0));
        for (int64_t k0 = 0; k0 < p.K; k0 += p.kc, ++iter) {
            const int64_t kc = std::min(p.kc, p.K - k0);
            BPanels panels{nullptr, nr * kc, nr, nullptr, false};
            if (plan.direct_b) {
                // B in place; only a partial last panel is packed (into this thread's slot).
                float* edge = bbuf + tid * plan.b_floats;
                const int64_t full = nc / nr * nr;
                if (full < nc) p.kd.pack_b(false, p.B, p.ldb, j0 + full, nc - full, k0, kc, edge);
                panels = BPanels{p.B + k0 * p.ldb + j0, nr, p.ldb, full < nc ? edge : nullptr,
                                 true};
            } else if (shared) {
                // Column-group members pack disjoint panel ranges of the block, then sync.
                float* pb = bbuf + (2 * in + (iter & 1)) * plan.b_floats;
                int64_t q0, q1;
                split_panels(ceil_div(nc, nr), plan.tm, im, &q0, &q1);
                const int64_t w = std::min(nc, q1 * nr) - q0 * nr;
                if (w > 0)
                    p.kd.pack_b(p.trans_b, p.B, p.ldb, j0 + q0 * nr, w, k0, kc, pb + q0 * nr * kc);
                panels.base = pb;
#pragma omp barrier
            } else {
                float* pb = bbuf + in * plan.b_floats;
                if (nc > 0) p.kd.pack_b(p.trans_b, p.B, p.ldb, j0, nc, k0, kc, pb);
                panels.base = pb;
            }
            if (nc == 0) continue;
            const float beta = k0 == 0 ? p.beta : 1.f;
            const float* bias = p.bias && k0 + kc == p.K ? p.bias + j0 : nullptr;
            for (int64_t i0 = m0; i0 < m1; i0 += plan.mc) {
                const int64_t mc = std::min(plan.mc, m1 - i0);
                p.kd.pack_a(p.trans_a, p.A, p.lda, i0, mc, k0, kc, abuf);
                macro_kernel(p.kd, mc, nc, kc, abuf, panels, p.C + i0 * p.ldc + j0, p.ldc,
                             p.alpha, beta, bias);
            }
        }
    }
}

KernelDesc kernel_desc(KernelSet s) {
    switch (s) {
        case KernelSet::AVX512:
            return {gemm_avx512::mr(),
                    gemm_avx512::nr(),
                    gemm_avx512::ukernel_rows,
                    gemm_avx512::pack_a,
                    gemm_avx512::pack_b,
                    true,
                    // about CNNKIT_GEMM512_MC rows, a whole number of micro-panels
                    std::max(1, CNNKIT_GEMM512_MC / gemm_avx512::mr()) * gemm_avx512::mr(),
                    CNNKIT_GEMM512_KC,
                    CNNKIT_GEMM512_KC};
        case KernelSet::AVX2:
            return {kMR, kNR, gemm_avx2::ukernel_rows, gemm_avx2::pack_a, gemm_avx2::pack_b, false,
                    kMCMax, kKCMax, kKCSingleMax};
        case KernelSet::Generic: break;
    }
    return {kMR, kNR, ukernel_generic, pack_a, pack_b, false, kMCMax, kKCMax, kKCSingleMax};
}

// C = beta * C (beta == 0: zero fill without reading C), then + bias per column.
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc, const float* bias) {
    for (int64_t i = 0; i < M; ++i) {
        float* c = C + i * ldc;
        if (beta == 0.f)
            std::fill(c, c + N, 0.f);
        else if (beta != 1.f)
            for (int64_t j = 0; j < N; ++j) c[j] *= beta;
        if (bias)
            for (int64_t j = 0; j < N; ++j) c[j] += bias[j];
    }
}

// Runs the whole problem on a team of nt threads; false (nothing done) when the OpenMP runtime
// provides fewer threads than that.
bool run_team(const Problem& p, int nt) {
    // All packing space comes from this thread's buffer: the B block(s), then one A block per
    // thread, each 64-byte aligned.
    const Plan plan = make_plan(p, nt);
    const int64_t b_slots = plan.direct_b ? nt : plan.tm > 1 ? 2 * plan.tn : plan.tn;
    const int64_t b_floats = round_up(b_slots * plan.b_floats, 16);
    const int64_t a_floats = round_up(plan.mc * p.kc, 16);
    float* buf = pack_buffer().get(b_floats + nt * a_floats);
    float* abuf = buf + b_floats;
    if (nt == 1) {
        run_thread(p, plan, 0, buf, abuf);
        return true;
    }
    bool complete = true;
#pragma omp parallel num_threads(nt)
    {
        const int tid = omp_get_thread_num();
        if (omp_get_num_threads() == nt)
            run_thread(p, plan, tid, buf, abuf + tid * a_floats);
        else if (tid == 0)
            complete = false;
    }
    return complete;
}

// ---- skinny A . B^T: a few rows against B stored N x K (Linear at batch 1-4) --------------

// Up to this many rows of A, C = A . B^T is computed as dot products straight from A and B:
// the packed path would pack all of B (the whole weight matrix of a Linear layer) for a tile
// whose rows are mostly padding.
constexpr int64_t kSkinnyRows = 4;

void rows_nt_generic(int m, int64_t j0, int64_t j1, int64_t K, float alpha, const float* A,
                     int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
                     const float* bias) {
    for (int i = 0; i < m; ++i)
        for (int64_t j = j0; j < j1; ++j) {
            float d = 0.f;
            for (int64_t k = 0; k < K; ++k) d += A[i * lda + k] * B[j * ldb + k];
            float r = alpha * d;
            if (beta != 0.f) r += beta * C[i * ldc + j];
            if (bias) r += bias[j];
            C[i * ldc + j] = r;
        }
}

// Each element's sum runs in the same order whatever the split over columns (threads).
void skinny_nt(const Problem& p, int nt) {
    using RowsFn = void (*)(int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                            const float*, int64_t, float, float*, int64_t, const float*);
    RowsFn fn = rows_nt_generic;
    if (kernel_set() == KernelSet::AVX512)
        fn = gemm_avx512::rows_nt;
    else if (kernel_set() == KernelSet::AVX2)
        fn = gemm_avx2::rows_nt;
    const int m = static_cast<int>(p.M);
    nt = static_cast<int>(std::min<int64_t>(nt, ceil_div(p.N, 16)));
    if (nt <= 1) {
        fn(m, 0, p.N, p.K, p.alpha, p.A, p.lda, p.B, p.ldb, p.beta, p.C, p.ldc, p.bias);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int64_t q0, q1;
        split_panels(ceil_div(p.N, 16), omp_get_num_threads(), omp_get_thread_num(), &q0, &q1);
        const int64_t j0 = q0 * 16, j1 = std::min(p.N, q1 * 16);
        if (j0 < j1)
            fn(m, j0, j1, p.K, p.alpha, p.A, p.lda, p.B, p.ldb, p.beta, p.C, p.ldc, p.bias);
    }
}

}  // namespace

// ---- public API -----------------------------------------------------------------------------

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc, const float* bias) {
    CNN_CHECK_ARG(M >= 0 && N >= 0 && K >= 0, "sgemm: negative size M=", M, " N=", N, " K=", K);
    CNN_CHECK_ARG(lda >= (trans_a ? M : K) && ldb >= (trans_b ? K : N) && ldc >= N,
                  "sgemm: leading dimension too small (lda=", lda, " ldb=", ldb, " ldc=", ldc,
                  " for M=", M, " N=", N, " K=", K, ")");
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0.f) {
        scale_c(M, N, beta, C, ldc, bias);
        return;
    }
    Problem p{trans_a, trans_b, M, N, K, alpha, beta, A, lda, B, ldb, C, ldc, bias, 0,
              kernel_desc(kernel_set())};
    if (p.kd.uk == gemm_avx2::ukernel_rows && M >= kTallM) {
        // Tall A under the AVX2 set: depth blocks of 512 and A blocks of 72 rows (a 12 KB A
        // micro-panel in L1, a 144 KB A block in L2), so C is read and written half as often.
        // The depth block depends on the problem only, never on the thread count.
        p.kd.kc_max = kKCTall;
        p.kd.mc_max = kMCTall;
    }
    const int64_t kblocks = K <= p.kd.kc_single ? 1 : ceil_div(K, p.kd.kc_max);
    p.kc = round_up(ceil_div(K, kblocks), 4);

    // Thread count: never more than the work (or the micro-tiles) can keep busy.
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    const double work = double(M) * N * K;
    nt = static_cast<int>(std::min<double>(nt, std::max(1.0, work / kMinWorkPerThread)));
    nt = static_cast<int>(std::min<int64_t>(nt, ceil_div(M, p.kd.mr) * ceil_div(N, p.kd.nr)));

    if (M <= kSkinnyRows && trans_b && !trans_a) {
        skinny_nt(p, static_cast<int>(std::min<double>(
                         omp_in_parallel() ? 1 : omp_get_max_threads(),
                         std::max(1.0, work / kMinWorkPerThread))));
        return;
    }
    if (!run_team(p, nt)) run_team(p, 1);  // the runtime gave us fewer threads than asked
}

bool cpu_simd_enabled() { return use_avx2_or_better(); }

const char* sgemm_kernel_name() {
    switch (kernel_set()) {
        case KernelSet::AVX512: return "avx512";
        case KernelSet::AVX2: return "avx2-fma";
        case KernelSet::Generic: break;
    }
    return "generic";
}

void sgemm_force_generic(bool force) { set_kernel_set(force ? "generic" : "auto"); }

}  // namespace cpu
}  // namespace cnnkit
