// The Winograd block routine compiled for AVX2/FMA (conv_winograd_impl.h), the GEMM on the
// AVX2 6 x 16 direct-convolution tile.
#include <algorithm>
#include <cstdint>

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
#include "cpu/conv_winograd_impl.h"
#undef WINO_GEMM

#else

bool compiled() { return false; }
void run_block(float*, const float*, const float*, int64_t, const int32_t*, const float*, bool,
               const WGeom&, const WTile&, int64_t, int64_t, float*) {}

#endif

}  // namespace avx2
}  // namespace conv_winograd
}  // namespace cpu
}  // namespace cnnkit
