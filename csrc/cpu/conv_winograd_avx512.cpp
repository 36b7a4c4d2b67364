// The Winograd block routine compiled for AVX-512 (conv_winograd_impl.h), the GEMM on the
// AVX-512 direct-convolution tiles.
#include <algorithm>
#include <cstdint>

#include "cpu/conv_direct.h"
#include "cpu/conv_winograd.h"

namespace cnnkit {
namespace cpu {
namespace conv_winograd {
namespace avx512 {

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__)

bool compiled() { return true; }

#define WINO_GEMM(t, rows, cols, kc, a, xx, off, c, ldc)                                     \
    do {                                                                                    \
        if ((t).kind == 1)                                                                  \
            conv_avx512::fwd_12x32(rows, cols, kc, a, xx, off, c, ldc, nullptr, false);     \
        else                                                                                \
            conv_avx512::fwd_panel((t).mr, (t).nr / 16, rows, cols, kc, a, xx, off, c, ldc, \
                                   nullptr, false);                                         \
    } while (0)
#include "cpu/conv_winograd_impl.h"
#undef WINO_GEMM

#else

bool compiled() { return false; }
void run_block(float*, const float*, const float*, int64_t, const int32_t*, const float*, bool,
               const WGeom&, const WTile&, int64_t, int64_t, float*) {}

#endif

}  // namespace avx512
}  // namespace conv_winograd
}  // namespace cpu
}  // namespace cnnkit
