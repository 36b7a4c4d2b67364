// Single-precision GEMM on the GPU (the twin of cpu/gemm.cpp; no cuBLAS): BM x BN block tiles
// staged through double-buffered shared memory in BK-deep slices, each thread accumulating a
// TM x TN register tile, float4 global loads wherever the leading dimension and base pointer
// allow. Small outputs with long reductions are split along K; the partial sums are added in a
// fixed order by a second kernel, so results are deterministic (no atomics).
#include "cuda/common.cuh"
#include "cuda/kernels.h"

namespace cnnkit {
namespace cuda {

namespace {

constexpr int kReduceBlock = 256;
// Split-K aims for about this many blocks. A constant rather than the SM count, so the same
// GEMM gives the same bits on every GPU.
constexpr int64_t kSplitTargetBlocks = 256;
constexpr int64_t kSplitMinDepth = 256;  // each split sums at least this many k
constexpr int64_t kMaxSplits = 64;
constexpr int64_t kMaxGridY = 65535;

// ---- the tiled kernel -------------------------------------------------------------------------
// C[z] = alpha * op(A)[:, kz] * op(B)[kz, :] + beta * C for the k-range kz = [z*kchunk,
// (z+1)*kchunk) of block z (one range covering all of K without split-K). Thread (ty, tx) owns
// rows v*(BM/MV) + ty*4 + {0..3} and columns v*(BN/NV) + tx*4 + {0..3}: its float4 reads of a
// shared-memory row are contiguous across the warp. Each C element is a chain of fmaf over k in
// increasing order, whatever the tile shape.
template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), BM * BN >= 128 * 128 ? 2 : 4)
    sgemm_kernel(int64_t M, int64_t N, int64_t K, int64_t kchunk, float alpha,
                 const float* __restrict__ A, int64_t lda, bool vec_a, const float* __restrict__ B,
                 int64_t ldb, bool vec_b, float beta, float* __restrict__ C, int64_t ldc,
                 int64_t c_split_stride, bool vec_c, int64_t m_base) {
    constexpr int T = (BM / TM) * (BN / TN);
    constexpr int MV = TM / 4, NV = TN / 4;
    constexpr int PAD = 4;                             // keeps float4 alignment, spreads banks
    constexpr int GA = BM * BK / 4, GB = BN * BK / 4;  // float4 groups per A / B tile
    constexpr int NA = (GA + T - 1) / T, NB = (GB + T - 1) / T;
    static_assert(TM % 4 == 0 && TN % 4 == 0 && BK % 4 == 0, "tiles are made of float4s");
    static_assert(BM % TM == 0 && BN % TN == 0, "thread tiles must divide the block tile");

    __shared__ __align__(16) float As[2][BK][BM + PAD];  // op(A) tile, k-major
    __shared__ __align__(16) float Bs[2][BK][BN + PAD];  // op(B) tile, k-major

    const int tid = threadIdx.x;
    const int tx = tid % (BN / TN), ty = tid / (BN / TN);
    const int64_t m0 = m_base + int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
    const int64_t kbeg = int64_t(blockIdx.z) * kchunk;
    const int64_t kend = kbeg + kchunk < K ? kbeg + kchunk : K;
    const int64_t ntiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
    C += int64_t(blockIdx.z) * c_split_stride;

    float ra[NA][4], rb[NB][4];

    // global -> registers for the k-slice starting at kt (zeros outside the matrix)
    auto load_tile = [&](int64_t kt) {
#pragma unroll
        for (int i = 0; i < NA; ++i) {
            const int g = tid + i * T;
            ra[i][0] = ra[i][1] = ra[i][2] = ra[i][3] = 0.f;
            if (GA % T != 0 && g >= GA) continue;
            if (!TA) {  // A is (M,K): contiguous along k
                const int row = g / (BK / 4), kq = (g % (BK / 4)) * 4;
                const int64_t gm = m0 + row, gk = kt + kq;
                if (gm >= M) continue;
                const float* src = A + gm * lda + gk;
                if (vec_a && gk + 3 < kend) {
                    float4 t = load_float4(src);
                    ra[i][0] = t.x; ra[i][1] = t.y; ra[i][2] = t.z; ra[i][3] = t.w;
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j) ra[i][j] = gk + j < kend ? src[j] : 0.f;
                }
            } else {  // A is (K,M): contiguous along m
                const int kk = g / (BM / 4), mq = (g % (BM / 4)) * 4;
                const int64_t gk = kt + kk, gm = m0 + mq;
                if (gk >= kend) continue;
                const float* src = A + gk * lda + gm;
                if (vec_a && gm + 3 < M) {
                    float4 t = load_float4(src);
                    ra[i][0] = t.x; ra[i][1] = t.y; ra[i][2] = t.z; ra[i][3] = t.w;
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j) ra[i][j] = gm + j < M ? src[j] : 0.f;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < NB; ++i) {
            const int g = tid + i * T;
            rb[i][0] = rb[i][1] = rb[i][2] = rb[i][3] = 0.f;
            if (GB % T != 0 && g >= GB) continue;
            if (!TB) {  // B is (K,N): contiguous along n
                const int kk = g / (BN / 4), nq = (g % (BN / 4)) * 4;
                const int64_t gk = kt + kk, gn = n0 + nq;
                if (gk >= kend) continue;
                const float* src = B + gk * ldb + gn;
                if (vec_b && gn + 3 < N) {
                    float4 t = load_float4(src);
                    rb[i][0] = t.x; rb[i][1] = t.y; rb[i][2] = t.z; rb[i][3] = t.w;
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j) rb[i][j] = gn + j < N ? src[j] : 0.f;
                }
            } else {  // B is (N,K): contiguous along k
                const int col = g / (BK / 4), kq = (g % (BK / 4)) * 4;
                const int64_t gn = n0 + col, gk = kt + kq;
                if (gn >= N) continue;
                const float* src = B + gn * ldb + gk;
                if (vec_b && gk + 3 < kend) {
                    float4 t = load_float4(src);
                    rb[i][0] = t.x; rb[i][1] = t.y; rb[i][2] = t.z; rb[i][3] = t.w;
                } else {
#pragma unroll
                    for (int j = 0; j < 4; ++j) rb[i][j] = gk + j < kend ? src[j] : 0.f;
                }
            }
        }
    };

    // registers -> shared buffer `buf` (k-major for both operands)
    auto store_tile = [&](int buf) {
#pragma unroll
        for (int i = 0; i < NA; ++i) {
            const int g = tid + i * T;
            if (GA % T != 0 && g >= GA) continue;
            if (!TA) {
                const int row = g / (BK / 4), kq = (g % (BK / 4)) * 4;
#pragma unroll
                for (int j = 0; j < 4; ++j) As[buf][kq + j][row] = ra[i][j];
            } else {
                const int kk = g / (BM / 4), mq = (g % (BM / 4)) * 4;
                store_float4(&As[buf][kk][mq], make_float4(ra[i][0], ra[i][1], ra[i][2], ra[i][3]));
            }
        }
#pragma unroll
        for (int i = 0; i < NB; ++i) {
            const int g = tid + i * T;
            if (GB % T != 0 && g >= GB) continue;
            if (!TB) {
                const int kk = g / (BN / 4), nq = (g % (BN / 4)) * 4;
                store_float4(&Bs[buf][kk][nq], make_float4(rb[i][0], rb[i][1], rb[i][2], rb[i][3]));
            } else {
                const int col = g / (BK / 4), kq = (g % (BK / 4)) * 4;
#pragma unroll
                for (int j = 0; j < 4; ++j) Bs[buf][kq + j][col] = rb[i][j];
            }
        }
    };

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

    if (ntiles > 0) {
        load_tile(kbeg);
        store_tile(0);
        __syncthreads();
    }
    for (int64_t t = 0; t < ntiles; ++t) {
        const int buf = static_cast<int>(t & 1);
        const bool more = t + 1 < ntiles;
        if (more) load_tile(kbeg + (t + 1) * BK);  // in flight while we compute on `buf`
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int v = 0; v < MV; ++v) {
                float4 r = load_float4(&As[buf][k][v * (BM / MV) + ty * 4]);
                a[v * 4 + 0] = r.x; a[v * 4 + 1] = r.y; a[v * 4 + 2] = r.z; a[v * 4 + 3] = r.w;
            }
#pragma unroll
            for (int v = 0; v < NV; ++v) {
                float4 r = load_float4(&Bs[buf][k][v * (BN / NV) + tx * 4]);
                b[v * 4 + 0] = r.x; b[v * 4 + 1] = r.y; b[v * 4 + 2] = r.z; b[v * 4 + 3] = r.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        // `buf ^ 1` was last read in iteration t-1, which every thread finished before the
        // barrier that ended it; this barrier publishes it for iteration t+1.
        if (more) store_tile(buf ^ 1);
        __syncthreads();
    }

    // epilogue: C = alpha * acc + beta * C (C not read when beta == 0)
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int64_t m = m0 + (i / 4) * (BM / MV) + ty * 4 + (i % 4);
        if (m >= M) continue;
        float* crow = C + m * ldc;
#pragma unroll
        for (int v = 0; v < NV; ++v) {
            const int64_t n = n0 + v * (BN / NV) + tx * 4;
            float r[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) r[j] = alpha * acc[i][v * 4 + j];
            float* c = crow + n;
            if (vec_c && n + 3 < N) {
                if (beta != 0.f) {
                    float4 old = load_float4(c);
                    r[0] += beta * old.x; r[1] += beta * old.y;
                    r[2] += beta * old.z; r[3] += beta * old.w;
                }
                store_float4(c, make_float4(r[0], r[1], r[2], r[3]));
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (n + j < N) c[j] = beta != 0.f ? r[j] + beta * c[j] : r[j];
            }
        }
    }
}

// C = alpha * (sum over z of W[z], in z order) + beta * C; W is (splits, M, N).
__global__ void splitk_reduce_kernel(float* C, int64_t ldc, const float* W, int64_t M, int64_t N,
                                     int64_t splits, float alpha, float beta) {
    const int64_t MN = M * N;
    CNN_GRID_LOOP(idx, MN) {
        float s = 0.f;
        for (int64_t z = 0; z < splits; ++z) s += W[z * MN + idx];
        float* c = C + (idx / N) * ldc + idx % N;
        *c = beta != 0.f ? alpha * s + beta * *c : alpha * s;
    }
}

// ---- host side: tile choice, split-K, launch ------------------------------------------------

struct Problem {
    bool ta, tb;
    int64_t M, N, K;
    float alpha;
    const float* A;
    int64_t lda;
    const float* B;
    int64_t ldb;
    float beta;
    float* C;
    int64_t ldc;
};

template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB>
void launch_tiles(const Problem& p, int64_t kchunk, int64_t splits, float alpha, float beta,
                  float* C, int64_t ldc, int64_t c_split_stride, bool vec_c) {
    constexpr int T = (BM / TM) * (BN / TN);
    const bool vec_a = p.lda % 4 == 0 && aligned16(p.A);
    const bool vec_b = p.ldb % 4 == 0 && aligned16(p.B);
    const int64_t nblk = ceil_div(p.N, BN);
    // grid.y is limited to 65535: very tall problems go in slabs of rows
    for (int64_t mb = 0; mb < ceil_div(p.M, BM); mb += kMaxGridY) {
        const int64_t rows = std::min<int64_t>(kMaxGridY, ceil_div(p.M, BM) - mb);
        dim3 grid(static_cast<unsigned>(nblk), static_cast<unsigned>(rows),
                  static_cast<unsigned>(splits));
        CNN_LAUNCH(grid, dim3(T), sgemm_kernel<BM, BN, BK, TM, TN, TA, TB>, p.M, p.N, p.K, kchunk,
                   alpha, p.A, p.lda, vec_a, p.B, p.ldb, vec_b, beta, C, ldc, c_split_stride,
                   vec_c, mb * BM);
    }
}

template <int BM, int BN, int BK, int TM, int TN>
void run(const Problem& p) {
    const int64_t blocks = ceil_div(p.M, BM) * ceil_div(p.N, BN);
    int64_t splits = 1;
    if (blocks < kSplitTargetBlocks / 2 && p.K >= 2 * kSplitMinDepth) {
        splits = std::min(ceil_div(kSplitTargetBlocks, blocks), p.K / kSplitMinDepth);
        splits = std::min(splits, kMaxSplits);
    }
    int64_t kchunk = ceil_div(ceil_div(p.K, splits), BK) * BK;
    if (kchunk == 0) kchunk = BK;  // K == 0: one empty range, C = beta * C
    splits = std::max<int64_t>(1, ceil_div(p.K, kchunk));

    auto go = [&](float alpha, float beta, float* C, int64_t ldc, int64_t stride, bool vec_c) {
        if (!p.ta && !p.tb)
            launch_tiles<BM, BN, BK, TM, TN, false, false>(p, kchunk, splits, alpha, beta, C, ldc, stride, vec_c);
        else if (!p.ta && p.tb)
            launch_tiles<BM, BN, BK, TM, TN, false, true>(p, kchunk, splits, alpha, beta, C, ldc, stride, vec_c);
        else if (p.ta && !p.tb)
            launch_tiles<BM, BN, BK, TM, TN, true, false>(p, kchunk, splits, alpha, beta, C, ldc, stride, vec_c);
        else
            launch_tiles<BM, BN, BK, TM, TN, true, true>(p, kchunk, splits, alpha, beta, C, ldc, stride, vec_c);
    };
    if (splits == 1) {
        go(p.alpha, p.beta, p.C, p.ldc, 0, p.ldc % 4 == 0 && aligned16(p.C));
        return;
    }
    // partial products into a (splits, M, N) scratch, then one fixed-order reduction
    const int64_t MN = p.M * p.N;
    DeviceBuffer w(static_cast<size_t>(splits * MN) * sizeof(float));
    go(1.f, 0.f, w.as<float>(), p.N, MN, p.N % 4 == 0);
    CNN_LAUNCH(dim3(grid_for(MN, kReduceBlock)), dim3(kReduceBlock), splitk_reduce_kernel, p.C,
               p.ldc, w.as<const float>(), p.M, p.N, splits, p.alpha, p.beta);
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    CNN_CHECK(lda >= (trans_a ? M : K) && ldb >= (trans_b ? K : N) && ldc >= N,
              "cuda::sgemm: leading dimension too small");
    Problem p{trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc};
    // Tile shape by problem size (without split-K every shape gives the same bits, see
    // sgemm_kernel; the choice and the split depend on the shape only, never on the GPU):
    //   few rows (conv forward with few filters, weight gradients): 16 x 128
    //   big enough for a full wave of 128 x 128 tiles: 128 x 128, 8 x 8 per thread
    //   otherwise: 64 x 64, 4 x 4 per thread
    if (M <= 16)
        run<16, 128, 16, 4, 4>(p);
    else if (M >= 128 && N >= 128 && ceil_div(M, 128) * ceil_div(N, 128) >= 128)
        run<128, 128, 8, 8, 8>(p);
    else
        run<64, 64, 16, 4, 4>(p);
}

}  // namespace cuda
}  // namespace cnnkit
